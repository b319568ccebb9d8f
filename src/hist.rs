//! Streaming value histograms whose bins are fine enough that the error of every power-of-two
//! quantizer an activation can have is computed exactly from them.
//!
//! # Bins
//! A finite `f32` x = ±m·2^e (1 ≤ m < 2) falls in the bin of its sign, its exponent e and the top
//! [`MANTISSA_BITS`] = 8 bits of its mantissa: bins of width 2^(e−8) inside each octave
//! [2^e, 2^(e+1)) (zero and the subnormals share the lowest octave). The layout does not depend on
//! the data, so two histograms of the same tensor merge by adding their bins
//! ([`Histogram::merge`]), like [`crate::dist::FitAccumulator`]. Each bin holds its count, Σx and
//! Σx² (in `f64`), so a bin whose values all round to one level q contributes exactly
//!
//! ```text
//! Σ (x − q)² = Σx² − 2q·Σx + n·q²                                                  (H1)
//! ```
//!
//! # Exactness
//! For a mid-tread step Δ = 2^−n the rounding thresholds (k + ½)·Δ are multiples of Δ/2 (mid-rise:
//! multiples of Δ). Bin edges are multiples of the bin width, so a bin narrower than Δ/2 never
//! straddles a threshold; a wider bin lies at |x| ≥ 2^8·Δ, beyond every level of a format whose
//! largest code magnitude is at most 256, where every value saturates to one level. Hence (H1) summed
//! over the bins is the exact squared error of the calibration values for any format with
//! `max(|min_code|, max_code) ≤ 256` ([`Histogram::is_exact_for`]): unsigned formats up to 8 bits,
//! signed ones up to 9. [`Histogram::min_mse_format`] searches the power-of-two steps of such a
//! format; [`Histogram::sqnr_db`] gives its exact SQNR, 10·log₁₀(Σx² / Σ(x − Q(x))²).
//!
//! Memory: 6 KiB per octave the data reaches (at most 2·256 octaves), allocated on first use.
//!
//! # Example
//! ```
//! use fixq::hist::Histogram;
//! use fixq::fixed::{Grid, QFormat};
//!
//! let data: Vec<f32> = (0..1000).map(|i| ((i * 37) % 1000) as f32 / 250.0).collect(); // 0..4
//! let mut h = Histogram::new();
//! h.push_slice(&data)?;
//! let f = h.min_mse_format(8, false, Grid::MidTread)?;
//! assert_eq!(f.frac_bits(), 6); // Δ = 1/64: 255 levels cover [0, 3.98]
//! // (H1) is exact: the same error as quantizing every value.
//! let direct: f64 = data.iter().map(|&v| {
//!     let x = f64::from(v);
//!     let q = (x / f.step()).round().clamp(0.0, 255.0) * f.step();
//!     (x - q) * (x - q)
//! }).sum();
//! assert!((h.squared_error(f)? - direct).abs() <= 1e-9 * direct);
//! # Ok::<(), fixq::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::fixed::{Grid, MAX_ABS_FRAC_BITS, NearestLevel, QFormat};

/// Mantissa bits that select a bin inside an octave.
pub const MANTISSA_BITS: u32 = 8;

const BINS_PER_OCTAVE: usize = 1 << MANTISSA_BITS;
/// Octaves: sign (1 bit) and biased exponent (8 bits).
const OCTAVES: usize = 1 << 9;
/// Largest code magnitude for which the bins give the exact error (see the module docs).
const MAX_EXACT_CODE: i64 = 1 << MANTISSA_BITS;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bin {
    count: u64,
    sum: f64,
    sum_sq: f64,
}

/// A mergeable histogram of one tensor's values (see the module docs for the bins and why they are
/// exact).
#[derive(Clone, PartialEq)]
pub struct Histogram {
    octaves: Vec<Option<Box<[Bin; BINS_PER_OCTAVE]>>>,
    count: u64,
    max_abs: f64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("max_abs", &self.max_abs)
            .field(
                "octaves_used",
                &self.octaves.iter().filter(|o| o.is_some()).count(),
            )
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            octaves: vec![None; OCTAVES],
            count: 0,
            max_abs: 0.0,
        }
    }

    /// Values seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest |x| seen (0 when empty).
    pub fn max_abs(&self) -> f64 {
        self.max_abs
    }

    /// Adds `data`. On error nothing is added.
    ///
    /// # Errors
    /// [`Error::NonFinite`] for NaN or ±∞ (with its index in `data`).
    pub fn push_slice(&mut self, data: &[f32]) -> Result<()> {
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "data",
                index,
                value: f64::from(data[index]),
            });
        }
        let mut max_abs = self.max_abs;
        for &v in data {
            let bits = v.to_bits();
            let octave = (bits >> (32 - 9)) as usize;
            let bin = ((bits >> (23 - MANTISSA_BITS)) as usize) & (BINS_PER_OCTAVE - 1);
            let o = self.octaves[octave].get_or_insert_with(|| Box::new([Bin::default(); 256]));
            let x = f64::from(v);
            let b = &mut o[bin];
            b.count += 1;
            b.sum += x;
            b.sum_sq += x * x;
            max_abs = max_abs.max(x.abs());
        }
        self.count += data.len() as u64;
        self.max_abs = max_abs;
        Ok(())
    }

    /// Adds another histogram's bins, as if its values had been pushed here.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.octaves.iter_mut().zip(&other.octaves) {
            if let Some(t) = theirs {
                let m = mine.get_or_insert_with(|| Box::new([Bin::default(); 256]));
                for (a, b) in m.iter_mut().zip(t.iter()) {
                    a.count += b.count;
                    a.sum += b.sum;
                    a.sum_sq += b.sum_sq;
                }
            }
        }
        self.count += other.count;
        self.max_abs = self.max_abs.max(other.max_abs);
    }

    fn bins(&self) -> impl Iterator<Item = &Bin> {
        self.octaves
            .iter()
            .flatten()
            .flat_map(|o| o.iter())
            .filter(|b| b.count > 0)
    }

    /// Σx² of the values seen.
    pub fn energy(&self) -> f64 {
        self.bins().map(|b| b.sum_sq).sum()
    }

    /// Whether [`Histogram::squared_error`] is exact for `format` (its largest code magnitude is at
    /// most 256: unsigned up to 8 bits, signed up to 9).
    pub fn is_exact_for(format: QFormat) -> bool {
        format.max_code() <= MAX_EXACT_CODE && -format.min_code() <= MAX_EXACT_CODE
    }

    /// Σ(x − Q(x))² over the values seen, Q rounding to the nearest level of `format` and
    /// saturating; exact by (H1).
    ///
    /// # Errors
    /// [`Error::Empty`] when nothing was pushed; [`Error::InvalidArgument`] when `format` is wider
    /// than [`Histogram::is_exact_for`] allows.
    pub fn squared_error(&self, format: QFormat) -> Result<f64> {
        if self.count == 0 {
            return Err(Error::Empty { what: "histogram" });
        }
        if !Self::is_exact_for(format) {
            return Err(Error::InvalidArgument {
                name: "format",
                reason: format!(
                    "{format} has codes beyond ±{MAX_EXACT_CODE}, where the histogram's bins are \
                     no longer exact"
                ),
            });
        }
        let level = NearestLevel::new(format);
        Ok(self
            .bins()
            .map(|b| {
                let q = level.value(b.sum / b.count as f64);
                (b.sum_sq - 2.0 * q * b.sum + b.count as f64 * q * q).max(0.0)
            })
            .sum())
    }

    /// 10·log₁₀(Σx² / Σ(x − Q(x))²) in dB for `format` (+∞ when every value is a level).
    ///
    /// # Errors
    /// As [`Histogram::squared_error`]; [`Error::ZeroVariance`] when every value seen is zero.
    pub fn sqnr_db(&self, format: QFormat) -> Result<f64> {
        let err = self.squared_error(format)?;
        let energy = self.energy();
        if energy == 0.0 {
            return Err(Error::ZeroVariance {
                what: "histogram",
                count: self.count,
                value: 0.0,
            });
        }
        Ok(if err == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (energy / err).log10()
        })
    }

    /// The power-of-two step of a `bits`-wide format (sign and grid as given) with the least squared
    /// error over the values seen, searched from the coarsest step whose largest level reaches
    /// max|x| through 16 finer ones (ties to the coarser step).
    ///
    /// # Errors
    /// [`Error::Empty`] when nothing was pushed; [`Error::ZeroVariance`] when every value is zero;
    /// [`Error::InvalidArgument`] for a format [`QFormat::new`] refuses or one wider than
    /// [`Histogram::is_exact_for`] allows.
    pub fn min_mse_format(&self, bits: u32, signed: bool, grid: Grid) -> Result<QFormat> {
        let probe = QFormat::new(bits, 0, signed, grid)?;
        if self.count == 0 {
            return Err(Error::Empty { what: "histogram" });
        }
        if self.max_abs == 0.0 {
            return Err(Error::ZeroVariance {
                what: "histogram",
                count: self.count,
                value: 0.0,
            });
        }
        let top = probe.max_value().max(1.0);
        let n_lo = (-(self.max_abs / top).log2().ceil())
            .clamp(-f64::from(MAX_ABS_FRAC_BITS), f64::from(MAX_ABS_FRAC_BITS))
            as i32;
        let mut best: Option<(f64, QFormat)> = None;
        for n in n_lo..=(n_lo + 16).min(MAX_ABS_FRAC_BITS) {
            let f = probe.with_frac_bits(n)?;
            let err = self.squared_error(f)?;
            if best.is_none_or(|(e, _)| err < e) {
                best = Some((err, f));
            }
        }
        Ok(best.map_or(probe, |(_, f)| f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct error of quantizing every value.
    fn direct(data: &[f32], f: QFormat) -> f64 {
        let level = NearestLevel::new(f);
        data.iter()
            .map(|&v| {
                let x = f64::from(v);
                (x - level.value(x)).powi(2)
            })
            .sum()
    }

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) as f32
            })
            .collect()
    }

    #[test]
    fn error_is_exact_for_every_exact_format() {
        // Signed, heavy-tailed data with exact zeros and values on rounding thresholds.
        let u = lcg(20_000, 7);
        let mut data: Vec<f32> = u
            .iter()
            .map(|&p| {
                let t = (f64::from(p) - 0.5) * 1.999;
                (t / (1.0 - t * t / 4.0)).powi(3) as f32
            })
            .collect();
        data.extend([0.0, 0.0, 0.375, -0.375, 0.125, 1.5, -1.5]);
        let mut h = Histogram::new();
        h.push_slice(&data).unwrap();
        for bits in 2..=9 {
            for n in -3..=12 {
                for (signed, grid) in [(true, Grid::MidTread), (true, Grid::MidRise)] {
                    if grid == Grid::MidRise && bits > 8 {
                        continue;
                    }
                    let f = QFormat::new(bits, n, signed, grid).unwrap();
                    let want = direct(&data, f);
                    let got = h.squared_error(f).unwrap();
                    assert!(
                        (got - want).abs() <= 1e-9 * want.max(1e-30),
                        "{f}: histogram {got} vs direct {want}"
                    );
                }
            }
        }
        // Unsigned formats on one-sided data, up to 8 bits.
        let pos: Vec<f32> = data.iter().map(|v| v.abs()).collect();
        let mut hp = Histogram::new();
        hp.push_slice(&pos).unwrap();
        for bits in 1..=8 {
            for n in -2..=12 {
                let f = QFormat::unsigned(bits, n).unwrap();
                let (got, want) = (hp.squared_error(f).unwrap(), direct(&pos, f));
                assert!((got - want).abs() <= 1e-9 * want.max(1e-30), "{f}");
            }
        }
    }

    #[test]
    fn merge_equals_one_push_and_search_matches_brute_force() {
        let data: Vec<f32> = lcg(5000, 3).iter().map(|v| v * v * 6.0).collect();
        let mut all = Histogram::new();
        all.push_slice(&data).unwrap();
        let (a, b) = data.split_at(1234);
        let mut ha = Histogram::new();
        ha.push_slice(a).unwrap();
        let mut hb = Histogram::new();
        hb.push_slice(b).unwrap();
        ha.merge(&hb);
        assert_eq!(ha.count(), all.count());
        let f8 = QFormat::unsigned(8, 5).unwrap();
        let (m, o) = (
            ha.squared_error(f8).unwrap(),
            all.squared_error(f8).unwrap(),
        );
        assert!((m - o).abs() <= 1e-9 * o);
        for bits in [3, 4, 6, 8] {
            let got = all.min_mse_format(bits, false, Grid::MidTread).unwrap();
            let brute = (-4..=20)
                .map(|n| QFormat::unsigned(bits, n).unwrap())
                .min_by(|x, y| direct(&data, *x).total_cmp(&direct(&data, *y)))
                .unwrap();
            assert_eq!(got, brute, "{bits} bits");
            assert_eq!(
                got,
                QFormat::min_data_mse(&data, bits, false, Grid::MidTread).unwrap()
            );
        }
    }

    #[test]
    fn bad_input_and_wide_formats_are_refused() {
        let mut h = Histogram::new();
        assert!(matches!(
            h.squared_error(QFormat::unsigned(8, 0).unwrap()),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            h.push_slice(&[1.0, f32::NAN]),
            Err(Error::NonFinite { index: 1, .. })
        ));
        assert_eq!(h.count(), 0, "a refused push adds nothing");
        h.push_slice(&[0.0, 0.0]).unwrap();
        assert!(matches!(
            h.min_mse_format(8, false, Grid::MidTread),
            Err(Error::ZeroVariance { count: 2, .. })
        ));
        h.push_slice(&[1.0]).unwrap();
        let wide = QFormat::signed(10, 0).unwrap();
        assert!(!Histogram::is_exact_for(wide));
        let Err(Error::InvalidArgument { name, reason }) = h.squared_error(wide) else {
            panic!("a 10-bit signed format must be refused");
        };
        assert_eq!(name, "format");
        assert!(
            reason.contains("s10.0") && reason.contains("±256"),
            "{reason}"
        );
        assert!(Histogram::is_exact_for(QFormat::signed(9, 0).unwrap()));
        assert!(Histogram::is_exact_for(QFormat::unsigned(8, 0).unwrap()));
        assert!(!Histogram::is_exact_for(QFormat::unsigned(9, 0).unwrap()));
    }
}
