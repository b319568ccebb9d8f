//! Signal-to-quantization-noise ratio: measurement, prediction for a fitted tensor, and the paper's
//! aggregation across layers (Eq. 9).
//!
//! * SQNR = E\[x²\] / E\[(x − Q(x))²\]; in dB, 10·log₁₀(SQNR) ([`measure_db`]).
//! * For a tensor fitted by [`crate::dist`], [`predict_db`] gives the expected SQNR of a given
//!   power-of-two [`QFormat`] from the exact quantizer error of the fitted family ([`crate::table`]),
//!   overload included.
//! * Noise from independent sources adds (Eq. 6 and 9):
//!   1/SQNR_out = Σᵢ 1/SQNRᵢ ([`network_db`]). The worst term dominates; two equal terms cost 3 dB.
//!
//! # Example
//! ```
//! use fixq::sqnr;
//! let out = sqnr::network_db(&[30.0, 30.0])?;
//! assert!((out - (30.0 - 10.0 * 2f64.log10())).abs() < 1e-12); // two equal terms: −3.01 dB
//! # Ok::<(), fixq::Error>(())
//! ```

use crate::alloc::SqnrCurve;
use crate::dist::Fit;
use crate::error::{Error, Result};
use crate::fixed::{Grid, QFormat, Quantizer};
use crate::table::{self, Family};

/// dB → linear power ratio: 10^(dB/10).
pub fn db_to_linear(db: f64) -> f64 {
    10f64.powf(db / 10.0)
}

/// Linear power ratio → dB: 10·log₁₀(ratio). Zero gives −∞, +∞ gives +∞.
pub fn linear_to_db(ratio: f64) -> f64 {
    10.0 * ratio.log10()
}

/// Measured SQNR in dB of `approx` against `reference`: 10·log₁₀(Σr² / Σ(r − a)²), accumulated in f64.
/// Identical inputs give +∞ (no noise).
///
/// # Errors
/// [`Error::ShapeMismatch`] for different lengths, [`Error::Empty`], [`Error::NonFinite`] for NaN/±∞
/// in either input, [`Error::ZeroVariance`] when the reference is all zeros (SQNR undefined).
pub fn measure_db(reference: &[f32], approx: &[f32]) -> Result<f64> {
    if reference.len() != approx.len() {
        return Err(Error::ShapeMismatch {
            what: "sqnr::measure_db inputs".into(),
            expected: format!("{} values", reference.len()),
            found: format!("{} values", approx.len()),
        });
    }
    if reference.is_empty() {
        return Err(Error::Empty { what: "reference" });
    }
    let (mut signal, mut noise) = (0f64, 0f64);
    for (i, (&r, &a)) in reference.iter().zip(approx).enumerate() {
        if !r.is_finite() {
            return Err(Error::NonFinite {
                what: "reference",
                index: i,
                value: f64::from(r),
            });
        }
        if !a.is_finite() {
            return Err(Error::NonFinite {
                what: "approx",
                index: i,
                value: f64::from(a),
            });
        }
        let (r, a) = (f64::from(r), f64::from(a));
        signal += r * r;
        noise += (r - a) * (r - a);
    }
    if signal == 0.0 {
        return Err(Error::ZeroVariance {
            what: "reference",
            count: reference.len() as u64,
            value: 0.0,
        });
    }
    Ok(linear_to_db(signal / noise))
}

/// Predicted SQNR in dB of quantizing a tensor with fit `fit` in format `format`.
///
/// Signal power is the tensor's E\[x²\] = rms². The noise of the non-zero part (fraction 1 − z) is
/// σ² · MSE_family(b, Δ/σ) with the best family and its fitted σ ([`Fit::effective_std`]), using the
/// mid-tread error for two's complement formats, the mid-rise error for [`Grid::MidRise`], and the
/// one-sided error ([`table::mse_unsigned`]) for unsigned formats. Exact zeros cost nothing on a
/// mid-tread grid and Δ²/4 each on a mid-rise grid.
///
/// Unsigned formats assume non-negative data (a ReLU output); signed ones, data symmetric about zero.
///
/// # Errors
/// [`Error::InvalidArgument`] if `format.bits()` exceeds 16 (the tables' range).
pub fn predict_db(fit: &Fit, format: QFormat) -> Result<f64> {
    predict_db_for(fit, fit.best_family(), format)
}

/// [`predict_db`] with the family chosen by the caller (for example the paper's Gaussian assumption).
///
/// # Errors
/// As [`predict_db`].
pub fn predict_db_for(fit: &Fit, family: Family, format: QFormat) -> Result<f64> {
    let sigma = fit.scale_std(family);
    let step = format.step() / sigma;
    let z = fit.zero_fraction();
    let unit_mse = match (format.is_signed(), format.grid()) {
        (false, _) => table::mse_unsigned(family, format.bits(), step)?,
        (true, Grid::MidTread) => table::mse_mid_tread(family, format.bits(), step)?,
        (true, Grid::MidRise) => table::mse(family, format.bits(), step)?,
    };
    let mut noise = (1.0 - z) * sigma * sigma * unit_mse;
    if format.grid() == Grid::MidRise {
        noise += z * format.step() * format.step() / 4.0;
    }
    let signal = fit.rms() * fit.rms();
    Ok(linear_to_db(signal / noise))
}

/// The paper's Eq. 9: output SQNR in dB of independent noise terms, 1/SQNR_out = Σ 1/SQNRᵢ.
/// A term of +∞ dB (noise-free) contributes nothing; all +∞ gives +∞.
///
/// # Errors
/// [`Error::Empty`] for no terms; [`Error::NonFinite`] for a NaN or −∞ term.
pub fn network_db(terms_db: &[f64]) -> Result<f64> {
    if terms_db.is_empty() {
        return Err(Error::Empty { what: "terms_db" });
    }
    let mut inv = 0f64;
    for (i, &t) in terms_db.iter().enumerate() {
        if t.is_nan() || t == f64::NEG_INFINITY {
            return Err(Error::NonFinite {
                what: "terms_db",
                index: i,
                value: t,
            });
        }
        inv += 1.0 / db_to_linear(t);
    }
    Ok(-linear_to_db(inv))
}

/// Largest SQNR the curve helpers report, in dB: an exact reconstruction (+∞) is reported as this,
/// within the allocator's [`crate::alloc::SQNR_DB_LIMIT`].
pub const CURVE_CAP_DB: f64 = 300.0;

impl SqnrCurve {
    /// The predicted curve of a fitted tensor: at each width in `bits`, the format chosen by
    /// [`QFormat::min_expected_mse`] and its [`predict_db`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty range or widths outside 1..=16 (or a mid-rise request for
    /// unsigned data).
    ///
    /// # Example
    /// ```
    /// use fixq::{dist, Grid, SqnrCurve};
    /// let w: Vec<f32> = (0..4096).map(|i| ((i as f32) * 0.731).sin() * 0.1).collect();
    /// let curve = SqnrCurve::from_fit(&dist::fit(&w)?, 2..=8, true, Grid::MidTread)?;
    /// let (four, five) = (curve.sqnr_db(4).unwrap(), curve.sqnr_db(5).unwrap());
    /// assert!(five - four > 4.0 && five - four < 7.0); // about 5-6 dB per bit
    /// # Ok::<(), fixq::Error>(())
    /// ```
    pub fn from_fit(
        fit: &Fit,
        bits: std::ops::RangeInclusive<u32>,
        signed: bool,
        grid: Grid,
    ) -> Result<SqnrCurve> {
        SqnrCurve::from_fn(*bits.start(), *bits.end(), |b| {
            let f = QFormat::min_expected_mse(fit, b, signed, grid)?;
            Ok(predict_db(fit, f)?.min(CURVE_CAP_DB))
        })
    }

    /// The measured curve of a real tensor: at each width in `bits`, quantize `data` with the format of
    /// [`QFormat::min_data_mse`] and [`measure_db`] the result.
    ///
    /// # Errors
    /// As [`QFormat::min_data_mse`] and [`measure_db`]; [`Error::InvalidArgument`] for an empty range.
    pub fn measured(
        data: &[f32],
        bits: std::ops::RangeInclusive<u32>,
        signed: bool,
        grid: Grid,
    ) -> Result<SqnrCurve> {
        SqnrCurve::from_fn(*bits.start(), *bits.end(), |b| {
            let f = QFormat::min_data_mse(data, b, signed, grid)?;
            measure_format_db(data, f)
        })
    }
}

/// Measured SQNR (dB, capped at [`CURVE_CAP_DB`]) of quantizing `data` in `format` (through `i32` codes).
///
/// # Errors
/// As [`measure_db`] and [`Quantizer::quantize`].
pub fn measure_format_db(data: &[f32], format: QFormat) -> Result<f64> {
    let q = Quantizer::<i32>::new(format)?.quantize(ndarray::ArrayView1::from(data))?;
    let back = q.dequantize();
    Ok(measure_db(data, back.as_slice().unwrap_or(&[]))?.min(CURVE_CAP_DB))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measure_errors_and_values() {
        assert!(measure_db(&[1.0], &[1.0, 2.0]).is_err());
        assert!(measure_db(&[], &[]).is_err());
        assert!(measure_db(&[0.0, 0.0], &[0.0, 1.0]).is_err());
        assert!(measure_db(&[1.0, f32::NAN], &[1.0, 1.0]).is_err());
        assert_eq!(measure_db(&[1.0, 2.0], &[1.0, 2.0]).unwrap(), f64::INFINITY);
        let db = measure_db(&[1.0, -1.0], &[1.1, -0.9]).unwrap();
        assert!((db - 20.0).abs() < 1e-4, "{db}");
    }

    #[test]
    fn network_db_basics() {
        assert!(network_db(&[]).is_err());
        assert!(network_db(&[f64::NAN]).is_err());
        assert_eq!(network_db(&[f64::INFINITY]).unwrap(), f64::INFINITY);
        assert!((network_db(&[20.0, f64::INFINITY]).unwrap() - 20.0).abs() < 1e-12);
    }
}
