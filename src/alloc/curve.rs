//! Per-layer SQNR-versus-bit-width curves and the dB-to-noise conversion every solver shares.

use crate::error::{Error, Result};

/// Widest bit-width any curve or layer may use, in bits.
pub const MAX_BITS: u32 = 64;

/// Largest magnitude, in dB, accepted for a curve value. `|sqnr_db| <= 1000` keeps every noise power
/// `10^(-sqnr_db/10)` between `1e-100` and `1e100`, so sums of noise powers can neither overflow nor
/// underflow to zero.
pub const SQNR_DB_LIMIT: f64 = 1000.0;

/// The SQNR of one tensor (a layer's weights or activations) as a function of its bit-width.
///
/// `gamma_dB(b)`, in dB, for integer bit-widths `b`. The paper models it as linear in `b` (Eq. 2,
/// `gamma_dB ~= kappa * b`); measured curves need not be linear, concave or even monotone, and every
/// solver in [`crate::alloc`] accepts them as they are.
///
/// Curves are plain data and are validated when used, by [`crate::allocate_bits`]: every value must
/// be finite with `|value| <= `[`SQNR_DB_LIMIT`], and the domain must lie within `1..=`[`MAX_BITS`].
///
/// # Example
/// ```
/// use fixq::SqnrCurve;
/// let linear = SqnrCurve::Linear { kappa_db_per_bit: 3.0, offset_db: 0.0 };
/// assert_eq!(linear.sqnr_db(8), Some(24.0));
/// let table = SqnrCurve::Table { min_bits: 2, sqnr_db: vec![7.3, 12.1, 17.5] };
/// assert_eq!(table.sqnr_db(3), Some(12.1));
/// assert_eq!(table.sqnr_db(5), None);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SqnrCurve {
    /// `gamma_dB(b) = kappa_db_per_bit * b + offset_db` (the paper's Eq. 2 with an offset), defined
    /// for `b` in `1..=`[`MAX_BITS`].
    Linear {
        /// Slope, in dB per bit (the paper's `kappa`; about 6.02 for a uniform input, 2 to 4 measured
        /// on real layers, 3 in the paper's experiments).
        kappa_db_per_bit: f64,
        /// Value at `b = 0` of the line, in dB.
        offset_db: f64,
    },
    /// Measured or tabulated values: `sqnr_db[k]` is the SQNR in dB at `min_bits + k` bits. Defined
    /// for `b` in `min_bits..min_bits + sqnr_db.len()`.
    Table {
        /// Bit-width of the first entry, `>= 1`.
        min_bits: u32,
        /// One SQNR value in dB per bit-width, from `min_bits` upwards.
        sqnr_db: Vec<f64>,
    },
}

impl SqnrCurve {
    /// Builds a [`SqnrCurve::Table`] by evaluating `sqnr_db_at(bits)` for every `bits` in
    /// `min_bits..=max_bits`, e.g. by quantizing the real tensor at each width and measuring its SQNR.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `min_bits == 0`, `min_bits > max_bits` or `max_bits > MAX_BITS`,
    /// or a value exceeds [`SQNR_DB_LIMIT`] in magnitude; [`Error::NonFinite`] (with `index` the offset
    /// from `min_bits`) if a value is NaN or infinite; any error `sqnr_db_at` returns, unchanged.
    ///
    /// # Example
    /// ```
    /// use fixq::SqnrCurve;
    /// // A tensor whose SQNR grows by 5 dB per bit and saturates at 40 dB.
    /// let curve = SqnrCurve::from_fn(2, 12, |bits| Ok((5.0 * f64::from(bits)).min(40.0)))?;
    /// assert_eq!(curve.sqnr_db(12), Some(40.0));
    /// # Ok::<(), fixq::Error>(())
    /// ```
    pub fn from_fn(
        min_bits: u32,
        max_bits: u32,
        mut sqnr_db_at: impl FnMut(u32) -> Result<f64>,
    ) -> Result<SqnrCurve> {
        if min_bits == 0 || min_bits > max_bits || max_bits > MAX_BITS {
            return Err(Error::InvalidArgument {
                name: "bits",
                reason: format!(
                    "need 1 <= min_bits <= max_bits <= {MAX_BITS}, got {min_bits}..={max_bits}"
                ),
            });
        }
        let mut values = Vec::with_capacity((max_bits - min_bits + 1) as usize);
        for bits in min_bits..=max_bits {
            let value = sqnr_db_at(bits)?;
            check_value(value, (bits - min_bits) as usize)?;
            values.push(value);
        }
        Ok(SqnrCurve::Table {
            min_bits,
            sqnr_db: values,
        })
    }

    /// The SQNR in dB at `bits`, or `None` if `bits` is outside the curve's domain.
    ///
    /// The value is returned as stored or computed; it is not validated here.
    pub fn sqnr_db(&self, bits: u32) -> Option<f64> {
        match self {
            SqnrCurve::Linear {
                kappa_db_per_bit,
                offset_db,
            } => {
                if (1..=MAX_BITS).contains(&bits) {
                    Some(kappa_db_per_bit * f64::from(bits) + offset_db)
                } else {
                    None
                }
            }
            SqnrCurve::Table { min_bits, sqnr_db } => {
                let k = bits.checked_sub(*min_bits)? as usize;
                sqnr_db.get(k).copied()
            }
        }
    }

    /// The domain `(first, last)` of bit-widths, or `None` for an empty table or an invalid
    /// `min_bits` (0 or beyond [`MAX_BITS`]).
    pub(crate) fn domain(&self) -> Option<(u32, u32)> {
        match self {
            SqnrCurve::Linear { .. } => Some((1, MAX_BITS)),
            SqnrCurve::Table { min_bits, sqnr_db } => {
                if *min_bits == 0 || sqnr_db.is_empty() {
                    return None;
                }
                let len = u32::try_from(sqnr_db.len()).ok()?;
                let last = min_bits.checked_add(len - 1)?;
                Some((*min_bits, last.min(MAX_BITS)))
            }
        }
    }

    /// Least-squares line `(kappa_db_per_bit, offset_db)` through the curve's values on `lo..=hi`
    /// (which must lie in the domain), used by the paper's closed form. `None` if `lo == hi`.
    pub(crate) fn line_fit(&self, lo: u32, hi: u32) -> Option<(f64, f64)> {
        match self {
            SqnrCurve::Linear {
                kappa_db_per_bit,
                offset_db,
            } => Some((*kappa_db_per_bit, *offset_db)),
            SqnrCurve::Table { .. } => {
                if lo >= hi {
                    return None;
                }
                let count = f64::from(hi - lo + 1);
                let mean_b = (f64::from(lo) + f64::from(hi)) / 2.0;
                let mut mean_g = 0.0;
                for b in lo..=hi {
                    mean_g += self.sqnr_db(b)?;
                }
                mean_g /= count;
                let (mut sxy, mut sxx) = (0.0, 0.0);
                for b in lo..=hi {
                    let dx = f64::from(b) - mean_b;
                    sxy += dx * (self.sqnr_db(b)? - mean_g);
                    sxx += dx * dx;
                }
                let kappa = sxy / sxx;
                Some((kappa, mean_g - kappa * mean_b))
            }
        }
    }
}

/// Checks one curve value: finite and within [`SQNR_DB_LIMIT`].
pub(crate) fn check_value(value: f64, index: usize) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::NonFinite {
            what: "sqnr_db curve",
            index,
            value,
        });
    }
    if value.abs() > SQNR_DB_LIMIT {
        return Err(Error::InvalidArgument {
            name: "sqnr_db",
            reason: format!("curve value {value} dB at index {index} exceeds +-{SQNR_DB_LIMIT} dB"),
        });
    }
    Ok(())
}

/// Noise power relative to signal power, `1 / SQNR = 10^(-sqnr_db / 10)`, for `|sqnr_db| <= 1000`.
///
/// This is the one conversion every solver, the exhaustive reference and the reported figures use,
/// so that they agree to the last bit. It is `2^y` with `y = -sqnr_db * log2(10) / 10`, split as
/// `2^k * e^(f ln 2)` with `k` the nearest integer and `|f| <= 1/2`; the exponential is a degree-13
/// Taylor polynomial (truncation error below `1e-17`) evaluated by Estrin's scheme, and `2^k` is built
/// from its bits, so the function is branch-free and vectorizes. The relative error is below `1e-13`,
/// dominated by the rounding of `y` itself, as it would be for `f64::powf`.
#[inline(always)]
pub(crate) fn noise_from_db(sqnr_db: f64) -> f64 {
    const LOG2_10_OVER_10: f64 = std::f64::consts::LOG2_10 / 10.0;
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: adding it rounds to an integer
    const C: [f64; 14] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let y = -sqnr_db * LOG2_10_OVER_10;
    let shifted = y + ROUND;
    let k = shifted - ROUND;
    // The low bits of `shifted` hold k as a two's-complement integer.
    let k_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let g = (y - k) * std::f64::consts::LN_2;
    // e^g, |g| <= 0.347, by Estrin's scheme.
    let g2 = g * g;
    let g4 = g2 * g2;
    let g8 = g4 * g4;
    let p01 = C[0] + C[1] * g;
    let p23 = C[2] + C[3] * g;
    let p45 = C[4] + C[5] * g;
    let p67 = C[6] + C[7] * g;
    let p89 = C[8] + C[9] * g;
    let p1011 = C[10] + C[11] * g;
    let p1213 = C[12] + C[13] * g;
    let p03 = p01 + p23 * g2;
    let p47 = p45 + p67 * g2;
    let p811 = p89 + p1011 * g2;
    let p07 = p03 + p47 * g4;
    let p813 = p811 + p1213 * g4;
    let p = p07 + p813 * g8;
    // |k| <= 333 for |sqnr_db| <= 1000, so 2^k is a normal number.
    let scale = f64::from_bits(k_int.wrapping_add(1023) << 52);
    p * scale
}

/// `10 log10(1 / noise)`, the SQNR in dB of a relative noise power.
#[inline]
pub(crate) fn db_from_noise(noise: f64) -> f64 {
    -10.0 * noise.log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_from_db_matches_powf() {
        let mut db = -SQNR_DB_LIMIT;
        while db <= SQNR_DB_LIMIT {
            let want = 10f64.powf(-db / 10.0);
            let got = noise_from_db(db);
            assert!(((got - want) / want).abs() < 1e-13, "{db}: {got} vs {want}");
            db += 0.37;
        }
        assert_eq!(noise_from_db(0.0), 1.0);
        assert!((noise_from_db(10.0) - 0.1).abs() < 1e-16);
    }

    #[test]
    fn from_fn_validates() {
        assert!(SqnrCurve::from_fn(0, 4, |_| Ok(1.0)).is_err());
        assert!(SqnrCurve::from_fn(5, 4, |_| Ok(1.0)).is_err());
        assert!(SqnrCurve::from_fn(1, 65, |_| Ok(1.0)).is_err());
        assert!(matches!(
            SqnrCurve::from_fn(1, 4, |b| Ok(if b == 3 { f64::NAN } else { 1.0 })),
            Err(Error::NonFinite { index: 2, .. })
        ));
        assert!(SqnrCurve::from_fn(1, 4, |_| Ok(2000.0)).is_err());
        let c = SqnrCurve::from_fn(3, 5, |b| Ok(f64::from(b))).unwrap();
        assert_eq!(
            c,
            SqnrCurve::Table {
                min_bits: 3,
                sqnr_db: vec![3.0, 4.0, 5.0]
            }
        );
    }

    #[test]
    fn domain_and_lookup() {
        let t = SqnrCurve::Table {
            min_bits: 2,
            sqnr_db: vec![1.0, 2.0],
        };
        assert_eq!(t.domain(), Some((2, 3)));
        assert_eq!(t.sqnr_db(1), None);
        assert_eq!(t.sqnr_db(3), Some(2.0));
        let l = SqnrCurve::Linear {
            kappa_db_per_bit: 3.0,
            offset_db: 1.0,
        };
        assert_eq!(l.sqnr_db(0), None);
        assert_eq!(l.sqnr_db(65), None);
        assert_eq!(
            SqnrCurve::Table {
                min_bits: 0,
                sqnr_db: vec![1.0]
            }
            .domain(),
            None
        );
        assert_eq!(
            SqnrCurve::Table {
                min_bits: 1,
                sqnr_db: vec![]
            }
            .domain(),
            None
        );
    }

    #[test]
    fn line_fit_recovers_line() {
        let t = SqnrCurve::from_fn(1, 8, |b| Ok(2.5 * f64::from(b) - 1.0)).unwrap();
        let (k, o) = t.line_fit(1, 8).unwrap();
        assert!((k - 2.5).abs() < 1e-12 && (o + 1.0).abs() < 1e-12);
        assert_eq!(t.line_fit(3, 3), None);
    }
}
