//! Optimal uniform quantizers for unit-variance densities (the paper's Table 1, computed).
//!
//! # The quantizers
//! With N = 2ᵇ levels and step Δ (unit-variance input X with symmetric density p):
//!
//! * **mid-rise** (paper, Table 1): levels ±(k − ½)Δ, k = 1..N/2; thresholds at multiples of Δ; the
//!   outer cells are open. Its mean-squared error is [`mse`].
//! * **mid-tread** (two's complement): levels qΔ, q = −N/2..N/2−1; thresholds at (q + ½)Δ. Its error is
//!   [`mse_mid_tread`]. The positive side has one level fewer than the negative side.
//! * **unsigned** (one-sided data, e.g. after a ReLU, density 2p(x) on x ≥ 0): levels qΔ,
//!   q = 0..N−1. Its error is [`mse_unsigned`].
//!
//! # How the numbers are computed
//! Every error is a sum over cells of ∫(x − y)²p(x)dx, written with the closed-form partial moments
//! Tⱼ(x) = ∫ₓ^∞ tʲ p(t) dt of each family (erfc and exp only; no sampling, no quadrature).
//! The optimal step solves dMSE/dΔ = 0. Because every threshold lies midway between its two levels,
//! the boundary terms of the derivative cancel and
//!
//! > dMSE/dΔ = −2 Σ_cells ℓ ∫_cell (x − ℓΔ) p(x) dx          (ℓ = the cell's level in steps)
//!
//! whose root is found by bracketing and bisection to a relative precision of 1e-12 in Δ. This avoids
//! minimising a flat function directly (which limits the step to about √ε relative precision).
//! Results are cached per family, bit-width and grid after the first call.
//!
//! # Example
//! ```
//! use fixq::{table, Family};
//! let step = table::optimal_step(Family::Gaussian, 2)?;
//! assert!((step - 0.9957).abs() < 1e-4); // Max (1960)
//! let db = table::optimal_sqnr_db(Family::Gaussian, 8)?;
//! assert!(db > 40.0 && db < 41.0);
//! # Ok::<(), fixq::Error>(())
//! ```

use std::f64::consts::{PI, SQRT_2};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Largest bit-width the tables cover.
pub const MAX_TABLE_BITS: u32 = 16;

/// √3: half-width of the unit-variance uniform density.
const SQRT_3: f64 = 1.732_050_807_568_877_2;
/// Rate k of the shape-½ Gamma density with unit variance: k = √3 / 2.
const GAMMA_K: f64 = SQRT_3 / 2.0;

/// A symmetric, zero-mean, unit-variance density family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Family {
    /// Uniform on [−√3, √3]. Excess kurtosis −1.2.
    Uniform,
    /// Standard normal. Excess kurtosis 0.
    Gaussian,
    /// Laplacian p(x) = e^(−√2|x|)/√2. Excess kurtosis 3.
    Laplacian,
    /// The speech-coding Gamma density of shape ½: p(x) = √k / (2√(π|x|)) · e^(−k|x|), k = √3/2.
    /// Excess kurtosis 26/3 ≈ 8.67.
    Gamma,
}

impl Family {
    /// All four families, in order of increasing kurtosis.
    pub const ALL: [Family; 4] = [
        Family::Uniform,
        Family::Gaussian,
        Family::Laplacian,
        Family::Gamma,
    ];

    /// Probability density at `x` (unit variance). Infinite at 0 for [`Family::Gamma`].
    pub fn pdf(self, x: f64) -> f64 {
        let a = x.abs();
        match self {
            Family::Uniform => {
                if a <= SQRT_3 {
                    1.0 / (2.0 * SQRT_3)
                } else {
                    0.0
                }
            }
            Family::Gaussian => (-0.5 * x * x).exp() / (2.0 * PI).sqrt(),
            Family::Laplacian => (-SQRT_2 * a).exp() / SQRT_2,
            Family::Gamma => GAMMA_K.sqrt() / (2.0 * (PI * a).sqrt()) * (-GAMMA_K * a).exp(),
        }
    }

    /// Cumulative distribution P(X ≤ x) (unit variance).
    pub fn cdf(self, x: f64) -> f64 {
        let t = self.tail0(x.abs());
        if x >= 0.0 { 1.0 - t } else { t }
    }

    /// Excess kurtosis E\[X⁴\]/E\[X²\]² − 3.
    pub fn excess_kurtosis(self) -> f64 {
        match self {
            Family::Uniform => -1.2,
            Family::Gaussian => 0.0,
            Family::Laplacian => 3.0,
            Family::Gamma => 26.0 / 3.0,
        }
    }

    /// Maps two independent uniform variates u₁ ∈ (0, 1], u₂ ∈ [0, 1) to one unit-variance sample
    /// of the family (inverse cdf for Uniform and Laplacian; Box–Muller for Gaussian; the Gamma is
    /// z²/(2k) for a Box–Muller normal z, with the sign of the independent second normal).
    /// For test data and benchmarks; u₁ outside (0, 1] is clamped into it.
    pub fn from_uniforms(self, u1: f64, u2: f64) -> f64 {
        let u1 = if u1 > 0.0 && u1 <= 1.0 {
            u1
        } else {
            f64::MIN_POSITIVE.max(u1.clamp(0.0, 1.0))
        };
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * PI * u2;
        match self {
            Family::Uniform => (2.0 * u1 - 1.0) * SQRT_3,
            Family::Gaussian => r * theta.cos(),
            Family::Laplacian => {
                let m = -u1.ln() / SQRT_2;
                if u2 < 0.5 { m } else { -m }
            }
            Family::Gamma => {
                let z = r * theta.cos();
                let m = z * z / (2.0 * GAMMA_K);
                if theta.sin() >= 0.0 { m } else { -m }
            }
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Uniform => "uniform",
            Family::Gaussian => "gaussian",
            Family::Laplacian => "laplacian",
            Family::Gamma => "gamma",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// T₀(x) = P(X > x) for x ≥ 0.
    fn tail0(self, x: f64) -> f64 {
        match self {
            Family::Uniform => (SQRT_3 - x).max(0.0) / (2.0 * SQRT_3),
            Family::Gaussian => 0.5 * libm::erfc(x / SQRT_2),
            Family::Laplacian => 0.5 * (-SQRT_2 * x).exp(),
            Family::Gamma => 0.5 * libm::erfc((GAMMA_K * x).sqrt()),
        }
    }

    /// T₁(x) = ∫ₓ^∞ t p(t) dt for x ≥ 0.
    fn tail1(self, x: f64) -> f64 {
        match self {
            Family::Uniform => {
                let x = x.min(SQRT_3);
                (3.0 - x * x) / (4.0 * SQRT_3)
            }
            Family::Gaussian => (-0.5 * x * x).exp() / (2.0 * PI).sqrt(),
            Family::Laplacian => 0.5 * (-SQRT_2 * x).exp() * (x + 1.0 / SQRT_2),
            Family::Gamma => {
                // c k^(-3/2) Γ(3/2, z), z = kx, Γ(3/2, z) = ½√π erfc(√z) + √z e^(−z), c = √k / (2√π).
                let z = GAMMA_K * x;
                let g32 = 0.5 * PI.sqrt() * libm::erfc(z.sqrt()) + z.sqrt() * (-z).exp();
                g32 / (2.0 * PI.sqrt() * GAMMA_K)
            }
        }
    }

    /// T₂(x) = ∫ₓ^∞ t² p(t) dt for x ≥ 0.
    fn tail2(self, x: f64) -> f64 {
        match self {
            Family::Uniform => {
                let x = x.min(SQRT_3);
                (3.0 * SQRT_3 - x * x * x) / (6.0 * SQRT_3)
            }
            Family::Gaussian => self.tail0(x) + x * (-0.5 * x * x).exp() / (2.0 * PI).sqrt(),
            Family::Laplacian => 0.5 * (-SQRT_2 * x).exp() * (x * x + SQRT_2 * x + 1.0),
            Family::Gamma => {
                let z = GAMMA_K * x;
                let g32 = 0.5 * PI.sqrt() * libm::erfc(z.sqrt()) + z.sqrt() * (-z).exp();
                let g52 = 1.5 * g32 + z * z.sqrt() * (-z).exp();
                g52 / (2.0 * PI.sqrt() * GAMMA_K * GAMMA_K)
            }
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which quantizer grid a table entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MidRise,
    MidTread,
}

/// Error and derivative term of one half-line (x ≥ 0) with levels ℓᵢ·Δ and thresholds midway.
///
/// `levels` are the level positions in steps (ℓ₀ < ℓ₁ < …); the first cell starts at 0 and the last
/// is open. Returns (∫(x − Q(x))² p, Σ ℓ ∫_cell (x − ℓΔ) p).
fn half_line(family: Family, step: f64, levels: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let mut it = levels.peekable();
    let mut lower = 0.0f64;
    let (mut t0a, mut t1a, mut t2a) = (family.tail0(0.0), family.tail1(0.0), family.tail2(0.0));
    let (mut err, mut deriv) = (0.0f64, 0.0f64);
    while let Some(l) = it.next() {
        let (t0b, t1b, t2b, upper) = match it.peek() {
            Some(&next) => {
                let upper = 0.5 * (l + next) * step;
                (
                    family.tail0(upper),
                    family.tail1(upper),
                    family.tail2(upper),
                    upper,
                )
            }
            None => (0.0, 0.0, 0.0, f64::INFINITY),
        };
        let y = l * step;
        let m0 = t0a - t0b;
        let m1 = t1a - t1b;
        let m2 = t2a - t2b;
        err += m2 - 2.0 * y * m1 + y * y * m0;
        deriv += l * (m1 - y * m0);
        (t0a, t1a, t2a) = (t0b, t1b, t2b);
        lower = upper;
        if t0a == 0.0 && t2a == 0.0 {
            // Nothing left beyond: the remaining cells carry no probability.
            break;
        }
    }
    let _ = lower;
    (err.max(0.0), deriv)
}

fn check_bits(bits: u32) -> Result<()> {
    if (1..=MAX_TABLE_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            name: "bits",
            reason: format!("{bits} is outside 1..={MAX_TABLE_BITS}"),
        })
    }
}

fn check_step(step: f64) -> Result<()> {
    if step.is_finite() && step > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            name: "step",
            reason: format!("{step} is not finite and positive"),
        })
    }
}

fn eval(family: Family, kind: Kind, bits: u32, step: f64) -> (f64, f64) {
    let half = 1u64 << (bits - 1);
    match kind {
        Kind::MidRise => {
            let (e, d) = half_line(family, step, (0..half).map(|k| k as f64 + 0.5));
            (2.0 * e, 2.0 * d)
        }
        Kind::MidTread => {
            let (ep, dp) = half_line(family, step, (0..half).map(|q| q as f64));
            let (en, dn) = half_line(family, step, (0..=half).map(|q| q as f64));
            (ep + en, dp + dn)
        }
    }
}

/// Exact mean-squared error of the symmetric mid-rise quantizer with 2^`bits` levels and step `step`
/// on a unit-variance input of `family` (levels ±(k − ½)·step, outer cells open).
///
/// Units: `step` in standard deviations; the result is in variance units (SQNR = 1/MSE).
///
/// # Errors
/// [`Error::InvalidArgument`] for `bits` outside 1..=16 or a `step` that is not finite and positive.
pub fn mse(family: Family, bits: u32, step: f64) -> Result<f64> {
    check_bits(bits)?;
    check_step(step)?;
    Ok(eval(family, Kind::MidRise, bits, step).0)
}

/// Exact mean-squared error of the mid-tread (two's complement) quantizer with levels q·`step`,
/// q = −2^(bits−1)..2^(bits−1)−1, on a unit-variance input of `family`.
///
/// # Errors
/// As [`mse`].
pub fn mse_mid_tread(family: Family, bits: u32, step: f64) -> Result<f64> {
    check_bits(bits)?;
    check_step(step)?;
    Ok(eval(family, Kind::MidTread, bits, step).0)
}

/// Exact mean-squared error of the unsigned quantizer with levels q·`step`, q = 0..2^bits − 1, on
/// one-sided data: |X| for X of `family` (density 2p(x) on x ≥ 0, E\[X²\] = 1), as after a ReLU.
///
/// # Errors
/// As [`mse`].
pub fn mse_unsigned(family: Family, bits: u32, step: f64) -> Result<f64> {
    check_bits(bits)?;
    check_step(step)?;
    let top = (1u64 << bits) - 1;
    Ok(2.0 * half_line(family, step, (0..=top).map(|q| q as f64)).0)
}

#[derive(Debug, Clone, Copy)]
struct Optimum {
    step: f64,
    mse: f64,
}

static CACHE: [[OnceLock<Optimum>; MAX_TABLE_BITS as usize]; 8] =
    [const { [const { OnceLock::new() }; MAX_TABLE_BITS as usize] }; 8];

fn optimum(family: Family, kind: Kind, bits: u32) -> Result<Optimum> {
    check_bits(bits)?;
    let slot = family.index() * 2 + usize::from(kind == Kind::MidTread);
    Ok(*CACHE[slot][bits as usize - 1].get_or_init(|| solve(family, kind, bits)))
}

/// Root of dMSE/dΔ, bracketed from a range guess, then bisected in log Δ.
fn solve(family: Family, kind: Kind, bits: u32) -> Optimum {
    let g = |step: f64| eval(family, kind, bits, step).1 - 0.0;
    // dMSE/dΔ = -2 g(Δ): g > 0 while the step is too small (overload dominates), < 0 beyond.
    let levels = (1u64 << bits) as f64;
    let mut lo = 4.0 / levels;
    let mut hi = lo;
    while g(lo) <= 0.0 && lo > 1e-12 {
        lo *= 0.5;
    }
    while g(hi) > 0.0 && hi < 1e6 {
        hi *= 1.5;
    }
    if hi <= lo {
        hi = lo * 1.5;
    }
    for _ in 0..200 {
        let mid = (lo * hi).sqrt();
        if g(mid) > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi / lo - 1.0 < 1e-13 {
            break;
        }
    }
    let step = (lo * hi).sqrt();
    Optimum {
        step,
        mse: eval(family, kind, bits, step).0,
    }
}

/// The step (in standard deviations) that minimises [`mse`] for `family` at `bits` (Table 1 of the
/// paper for 1..=4 bits, and Max (1960) for the Gaussian). Relative precision better than 1e-9.
/// Note the paper's Uniform column is for U[−1, 1]; this is for unit variance (multiply by 1/√3
/// to compare).
///
/// # Errors
/// [`Error::InvalidArgument`] for `bits` outside 1..=16.
pub fn optimal_step(family: Family, bits: u32) -> Result<f64> {
    Ok(optimum(family, Kind::MidRise, bits)?.step)
}

/// SQNR in dB of the optimal mid-rise quantizer: −10·log₁₀(min MSE).
///
/// # Errors
/// As [`optimal_step`].
pub fn optimal_sqnr_db(family: Family, bits: u32) -> Result<f64> {
    Ok(-10.0 * optimum(family, Kind::MidRise, bits)?.mse.log10())
}

/// The step that minimises [`mse_mid_tread`].
///
/// # Errors
/// As [`optimal_step`].
pub fn optimal_step_mid_tread(family: Family, bits: u32) -> Result<f64> {
    Ok(optimum(family, Kind::MidTread, bits)?.step)
}

/// SQNR in dB of the optimal mid-tread quantizer.
///
/// # Errors
/// As [`optimal_step`].
pub fn optimal_sqnr_db_mid_tread(family: Family, bits: u32) -> Result<f64> {
    Ok(-10.0 * optimum(family, Kind::MidTread, bits)?.mse.log10())
}

/// κ(b) = SQNR*(b) − SQNR*(b−1) in dB per bit for the optimal mid-rise quantizer (with SQNR*(0) = 0 dB,
/// the zero quantizer): the dB the b-th bit buys. The paper's Eq. 2 uses a constant κ.
///
/// # Errors
/// As [`optimal_step`].
pub fn kappa_db_per_bit(family: Family, bits: u32) -> Result<f64> {
    let here = optimal_sqnr_db(family, bits)?;
    let below = if bits == 1 {
        0.0
    } else {
        optimal_sqnr_db(family, bits - 1)?
    };
    Ok(here - below)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_start_at_half_and_moments_integrate() {
        for f in Family::ALL {
            assert!((f.tail0(0.0) - 0.5).abs() < 1e-15, "{f}");
            assert!((f.tail2(0.0) - 0.5).abs() < 1e-14, "{f} variance");
            assert!(f.tail0(50.0) < 1e-15);
            assert!((f.cdf(0.0) - 0.5).abs() < 1e-15);
        }
    }

    #[test]
    fn numerical_tails_match_pdf() {
        // T0 is the integral of the pdf: check by the midpoint rule away from singularities.
        for f in Family::ALL {
            let (a, b) = (0.3, 1.1);
            let n = 20000;
            let h = (b - a) / n as f64;
            let s: f64 = (0..n).map(|i| f.pdf(a + (i as f64 + 0.5) * h) * h).sum();
            assert!((s - (f.tail0(a) - f.tail0(b))).abs() < 1e-8, "{f}: {s}");
            let s1: f64 = (0..n)
                .map(|i| {
                    let x = a + (i as f64 + 0.5) * h;
                    x * f.pdf(x) * h
                })
                .sum();
            assert!((s1 - (f.tail1(a) - f.tail1(b))).abs() < 1e-8, "{f}: {s1}");
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(optimal_step(Family::Gaussian, 0).is_err());
        assert!(optimal_step(Family::Gaussian, 17).is_err());
        assert!(mse(Family::Gaussian, 4, 0.0).is_err());
        assert!(mse(Family::Gaussian, 4, f64::NAN).is_err());
        assert!(mse(Family::Gaussian, 4, -1.0).is_err());
        assert!(mse_unsigned(Family::Gaussian, 4, f64::INFINITY).is_err());
    }

    #[test]
    fn uniform_optimum_is_the_full_range() {
        for bits in 1..=8 {
            let s = optimal_step(Family::Uniform, bits).unwrap();
            let exact = 2.0 * SQRT_3 / (1u64 << bits) as f64;
            assert!((s / exact - 1.0).abs() < 1e-9, "{bits}: {s} vs {exact}");
            let db = optimal_sqnr_db(Family::Uniform, bits).unwrap();
            assert!((db - 20.0 * (2f64).log10() * bits as f64).abs() < 1e-6);
        }
    }

    #[test]
    fn kappa_falls_with_kurtosis() {
        let k: Vec<f64> = Family::ALL
            .iter()
            .map(|&f| kappa_db_per_bit(f, 6).unwrap())
            .collect();
        assert!((k[0] - 6.0206).abs() < 1e-3);
        assert!(k[1] > 5.0 && k[1] < k[0]);
        assert!(k[2] < k[1] && k[3] < k[2], "{k:?}");
    }
}
