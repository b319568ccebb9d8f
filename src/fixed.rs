//! Fixed-point formats ([`QFormat`]), rounding modes, the typed [`Quantizer`] and [`QTensor`].
//!
//! # The format
//! A [`QFormat`] with `bits` = b and `frac_bits` = n stores a real value x as an integer code q with
//! step Δ = 2⁻ⁿ:
//!
//! * **mid-tread** (two's complement, what integer hardware stores): x ≈ q·Δ,
//!   q ∈ [−2ᵇ⁻¹, 2ᵇ⁻¹−1] when signed, q ∈ [0, 2ᵇ−1] when unsigned;
//! * **mid-rise** (the paper's quantizer, Table 1): x ≈ (q + ½)·Δ, q ∈ [−2ᵇ⁻¹, 2ᵇ⁻¹−1], so the levels are
//!   the odd multiples of Δ/2 and zero is not a level. Integer kernels run such a tensor unchanged as the
//!   integer 2q+1 at `frac_bits + 1` ([`QFormat::as_mid_tread_odd`]).
//!
//! `frac_bits` may be negative (a step larger than one), which suits wide activations.
//!
//! # Choosing the step
//! Three rules pick `frac_bits` for a tensor:
//! [`QFormat::paper_rule`] (method.md §3: n = −⌈log₂(ξ·Stepsize(b))⌉ with ξ = 3σ by default),
//! [`QFormat::min_expected_mse`] (best power-of-two step for the fitted family, by the exact MSE of
//! [`crate::table`]) and [`QFormat::min_data_mse`] (best power-of-two step by the exact error over the data).

use ndarray::{Array, ArrayView, Axis, Dimension, RemoveAxis};

use crate::dist::Fit;
use crate::error::{Error, Result};
use crate::table::{self, Family};

/// Largest |frac_bits| accepted, so that the step 2^-n is a normal `f32`.
pub const MAX_ABS_FRAC_BITS: i32 = 100;

/// Signed 8-bit integers (Q8.0): a fallback where a hand-built plan holds no format.
pub(crate) const SIGNED_INT8: QFormat = QFormat {
    bits: 8,
    frac_bits: 0,
    signed: true,
    grid: Grid::MidTread,
};

/// Where the quantization levels sit relative to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Grid {
    /// Levels at q·Δ; zero is a level (two's complement storage).
    MidTread,
    /// Levels at (q + ½)·Δ; zero is a threshold (the paper's quantizer). Signed formats only.
    MidRise,
}

/// A fixed-point number format: bit-width, fractional bits, signedness and grid.
///
/// Constructed only through validating constructors, so every method is infallible.
///
/// # Example
/// ```
/// use fixq::QFormat;
/// let f = QFormat::signed(8, 5)?; // Q2.5: step 1/32, range [-4, 3.96875]
/// assert_eq!(f.step(), 1.0 / 32.0);
/// assert_eq!((f.min_code(), f.max_code()), (-128, 127));
/// assert_eq!(f.max_value(), 127.0 / 32.0);
/// # Ok::<(), fixq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "QFormatFields"))]
pub struct QFormat {
    bits: u32,
    frac_bits: i32,
    signed: bool,
    grid: Grid,
}

/// The fields of a [`QFormat`] as read from JSON, before [`QFormat::new`] checks them, so a file
/// cannot make a format that the validating constructors would refuse.
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
struct QFormatFields {
    bits: u32,
    frac_bits: i32,
    signed: bool,
    grid: Grid,
}

#[cfg(feature = "serde")]
impl TryFrom<QFormatFields> for QFormat {
    type Error = Error;

    fn try_from(f: QFormatFields) -> Result<Self> {
        Self::new(f.bits, f.frac_bits, f.signed, f.grid)
    }
}

impl QFormat {
    /// A format with `bits` ∈ 1..=32 and `frac_bits` ∈ ±[`MAX_ABS_FRAC_BITS`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `bits` or `frac_bits` is out of range, or if `grid` is
    /// [`Grid::MidRise`] with `signed == false` or `bits > 31`.
    pub fn new(bits: u32, frac_bits: i32, signed: bool, grid: Grid) -> Result<Self> {
        if !(1..=32).contains(&bits) {
            return Err(Error::InvalidArgument {
                name: "bits",
                reason: format!("{bits} is outside 1..=32"),
            });
        }
        if !(-MAX_ABS_FRAC_BITS..=MAX_ABS_FRAC_BITS).contains(&frac_bits) {
            return Err(Error::InvalidArgument {
                name: "frac_bits",
                reason: format!(
                    "{frac_bits} is outside -{MAX_ABS_FRAC_BITS}..={MAX_ABS_FRAC_BITS}"
                ),
            });
        }
        if grid == Grid::MidRise && (!signed || bits > 31) {
            return Err(Error::InvalidArgument {
                name: "grid",
                reason: format!(
                    "a mid-rise format must be signed with at most 31 bits (got signed={signed}, bits={bits})"
                ),
            });
        }
        Ok(Self {
            bits,
            frac_bits,
            signed,
            grid,
        })
    }

    /// A signed mid-tread (two's complement) format.
    ///
    /// # Errors
    /// As [`QFormat::new`].
    pub fn signed(bits: u32, frac_bits: i32) -> Result<Self> {
        Self::new(bits, frac_bits, true, Grid::MidTread)
    }

    /// An unsigned mid-tread format (for non-negative tensors such as post-ReLU activations: one more
    /// bit of resolution than a signed format of the same width).
    ///
    /// # Errors
    /// As [`QFormat::new`].
    pub fn unsigned(bits: u32, frac_bits: i32) -> Result<Self> {
        Self::new(bits, frac_bits, false, Grid::MidTread)
    }

    /// A signed mid-rise format: levels at the odd multiples of Δ/2.
    ///
    /// # Errors
    /// As [`QFormat::new`].
    pub fn mid_rise(bits: u32, frac_bits: i32) -> Result<Self> {
        Self::new(bits, frac_bits, true, Grid::MidRise)
    }

    /// Bit-width b (1..=32).
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Fractional bits n; the step is 2⁻ⁿ.
    pub fn frac_bits(&self) -> i32 {
        self.frac_bits
    }
    /// Whether codes may be negative.
    pub fn is_signed(&self) -> bool {
        self.signed
    }
    /// The grid (mid-tread or mid-rise).
    pub fn grid(&self) -> Grid {
        self.grid
    }
    /// Step Δ = 2⁻ⁿ between adjacent levels, in the tensor's units.
    pub fn step(&self) -> f64 {
        pow2(-self.frac_bits)
    }
    /// Smallest integer code.
    pub fn min_code(&self) -> i64 {
        if self.signed {
            -(1i64 << (self.bits - 1))
        } else {
            0
        }
    }
    /// Largest integer code.
    pub fn max_code(&self) -> i64 {
        if self.signed {
            (1i64 << (self.bits - 1)) - 1
        } else {
            (1i64 << self.bits) - 1
        }
    }
    /// The real value a code stands for: q·Δ (mid-tread) or (q+½)·Δ (mid-rise).
    pub fn value_of(&self, code: i64) -> f64 {
        match self.grid {
            Grid::MidTread => code as f64 * self.step(),
            Grid::MidRise => (code as f64 + 0.5) * self.step(),
        }
    }
    /// Smallest representable value.
    pub fn min_value(&self) -> f64 {
        self.value_of(self.min_code())
    }
    /// Largest representable value.
    pub fn max_value(&self) -> f64 {
        self.value_of(self.max_code())
    }
    /// The same bits and signedness with another number of fractional bits.
    ///
    /// # Errors
    /// As [`QFormat::new`].
    pub fn with_frac_bits(&self, frac_bits: i32) -> Result<Self> {
        Self::new(self.bits, frac_bits, self.signed, self.grid)
    }

    /// The mid-tread format that holds a mid-rise tensor's levels exactly as the odd integers 2q+1:
    /// `bits + 1` bits and `frac_bits + 1` fractional bits. Mid-tread formats are returned unchanged.
    /// This is how integer kernels run mid-rise weights.
    ///
    /// # Errors
    /// As [`QFormat::new`] (only for `frac_bits` at its limit).
    pub fn as_mid_tread_odd(&self) -> Result<Self> {
        match self.grid {
            Grid::MidTread => Ok(*self),
            Grid::MidRise => Self::new(self.bits + 1, self.frac_bits + 1, true, Grid::MidTread),
        }
    }

    /// The paper's rule (method.md §3, step 4): with ξ the effective standard deviation,
    /// n = −⌈log₂(ξ · Stepsize(b))⌉, where Stepsize(b) is the optimal Gaussian mid-rise step of
    /// [`table::optimal_step`] for unit variance. The paper used ξ = 3σ ([`PAPER_XI_PER_SIGMA`]).
    ///
    /// `xi` is in the tensor's units (for example `3.0 * fit.std()`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `xi` is not finite and positive or `bits` is outside 1..=16;
    /// as [`QFormat::new`] if the resulting `frac_bits` is out of range.
    pub fn paper_rule(xi: f64, bits: u32, signed: bool) -> Result<Self> {
        positive_finite("xi", xi)?;
        let s = xi * table::optimal_step(Family::Gaussian, bits)?;
        let n = -(s.log2().ceil());
        Self::new(bits, clamp_frac(n)?, signed, Grid::MidTread)
    }

    /// The power-of-two step that minimises the expected MSE of the fitted family
    /// ([`Fit::best_family`], scale [`Fit::effective_std`]), using the exact MSE of
    /// [`table::mse_mid_tread`] (or [`table::mse`] for `grid` = [`Grid::MidRise`]). Candidates: the two
    /// powers of two around the family's optimal step and their neighbours.
    ///
    /// For an unsigned format the fit is taken to describe one-sided data (values ≥ 0, as after a ReLU)
    /// and the error is [`table::mse_unsigned`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `bits` outside 1..=16 or an unsigned mid-rise request.
    pub fn min_expected_mse(fit: &Fit, bits: u32, signed: bool, grid: Grid) -> Result<Self> {
        if !signed && grid == Grid::MidRise {
            return Err(Error::InvalidArgument {
                name: "grid",
                reason: "an unsigned format cannot be mid-rise".into(),
            });
        }
        let family = fit.best_family();
        let sigma = fit.effective_std();
        let opt = match (signed, grid) {
            (true, Grid::MidTread) => table::optimal_step_mid_tread(family, bits)?,
            (true, Grid::MidRise) => table::optimal_step(family, bits)?,
            // One-sided data: close to the signed optimum with one more bit.
            (false, _) => {
                table::optimal_step_mid_tread(family, (bits + 1).min(table::MAX_TABLE_BITS))?
            }
        };
        let centre = -(opt * sigma).log2().round();
        let mut best: Option<(f64, i32)> = None;
        for d in -2..=2 {
            let n = clamp_frac(centre + f64::from(d))?;
            let step = pow2(-n) / sigma;
            let mse = match (signed, grid) {
                (true, Grid::MidTread) => table::mse_mid_tread(family, bits, step)?,
                (true, Grid::MidRise) => table::mse(family, bits, step)?,
                (false, _) => table::mse_unsigned(family, bits, step)?,
            };
            if best.is_none_or(|(m, _)| mse < m) {
                best = Some((mse, n));
            }
        }
        let n = best.map_or(0, |(_, n)| n);
        Self::new(bits, n, signed, grid)
    }

    /// The power-of-two step that minimises the exact squared error over `data` (data-driven rule),
    /// searched over `frac_bits` from the step that covers max|x| down to 2⁻¹⁶ of it.
    ///
    /// # Errors
    /// [`Error::Empty`], [`Error::NonFinite`] for bad data; [`Error::InvalidArgument`] for a bad
    /// `bits`/`grid`; [`Error::ZeroVariance`] if every value is zero.
    pub fn min_data_mse(data: &[f32], bits: u32, signed: bool, grid: Grid) -> Result<Self> {
        Self::new(bits.min(32), 0, signed, grid)?;
        if data.is_empty() {
            return Err(Error::Empty { what: "data" });
        }
        let mut max_abs = 0.0f64;
        for (index, &v) in data.iter().enumerate() {
            if !v.is_finite() {
                return Err(Error::NonFinite {
                    what: "data",
                    index,
                    value: f64::from(v),
                });
            }
            max_abs = max_abs.max(f64::from(v).abs());
        }
        if max_abs == 0.0 {
            return Err(Error::ZeroVariance {
                what: "data",
                count: data.len() as u64,
                value: 0.0,
            });
        }
        // Coarsest useful step: the largest level just reaches max|x|.
        let probe = Self::new(bits, 0, signed, grid)?;
        let top = probe.max_value().max(1.0);
        let n_lo = clamp_frac(-(max_abs / top).log2().ceil())?;
        let mut best: Option<(f64, i32)> = None;
        for n in n_lo..=(n_lo + 16).min(MAX_ABS_FRAC_BITS) {
            let level = NearestLevel::new(Self::new(bits, n, signed, grid)?);
            let err: f64 = data
                .iter()
                .map(|&v| {
                    let x = f64::from(v);
                    let d = x - level.value(x);
                    d * d
                })
                .sum();
            if best.is_none_or(|(e, _)| err < e) {
                best = Some((err, n));
            }
        }
        Self::new(bits, best.map_or(n_lo, |(_, n)| n), signed, grid)
    }

    /// The code for a finite `x` under `rounding` (deterministic modes), saturated to the format's
    /// bounds, and whether it saturated.
    pub fn code_of(&self, x: f64, rounding: Rounding) -> (i64, bool) {
        let mut s = x * pow2(self.frac_bits);
        if self.grid == Grid::MidRise {
            s -= 0.5;
        }
        let (lo, hi) = (self.min_code() as f64, self.max_code() as f64);
        let r = round_f64(s.clamp(lo - 1.0, hi + 1.0), rounding, 0.5);
        if r < lo {
            (self.min_code(), true)
        } else if r > hi {
            (self.max_code(), true)
        } else {
            (r as i64, false)
        }
    }
}

impl std::fmt::Display for QFormat {
    /// `s8.5` (signed, 8 bits, 5 fractional), `u8.-2`, `s4.3r` (mid-rise).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.signed { 's' } else { 'u' };
        let grid = if self.grid == Grid::MidRise { "r" } else { "" };
        f.pad(&format!("{sign}{}.{}{grid}", self.bits, self.frac_bits))
    }
}

/// ξ/σ used by the paper's experiments for every layer (method.md §3).
pub const PAPER_XI_PER_SIGMA: f64 = 3.0;

/// How a scaled value is rounded to an integer code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounding {
    /// Round to nearest, ties to even (the IEEE default; unbiased). The default.
    #[default]
    NearestEven,
    /// Round to nearest, ties away from zero.
    NearestAway,
    /// Truncate toward zero (biased toward zero by up to one step).
    TowardZero,
    /// Stochastic rounding: ⌊s + u⌋ with u uniform in [0, 1) from a seeded generator, so E[Q(x)] = x
    /// inside the range. The same seed gives the same codes.
    Stochastic {
        /// Seed of the per-tensor generator (SplitMix64).
        seed: u64,
    },
}

/// Rounding to a format's nearest level, ties to even, saturated: for every finite `x`,
/// `NearestLevel::new(f).value(x) == f.value_of(f.code_of(x, Rounding::NearestEven).0)`, bit for bit.
///
/// The format's powers of two are computed once, and the rounding of the clamped, scaled value is
/// done by adding and subtracting 1.5·2^52 (exact ties-to-even for |s| < 2^51; codes are within
/// ±2^32), so the hot loops of planning avoid a libm call per element. A non-finite `x` gives NaN
/// for NaN and the saturated level for ±∞.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NearestLevel {
    scale: f64,
    step: f64,
    offset: f64,
    lo: f64,
    hi: f64,
}

impl NearestLevel {
    pub(crate) fn new(f: QFormat) -> Self {
        Self {
            scale: pow2(f.frac_bits),
            step: f.step(),
            offset: if f.grid == Grid::MidRise { 0.5 } else { 0.0 },
            lo: f.min_code() as f64,
            hi: f.max_code() as f64,
        }
    }

    /// The level `x` rounds to, in the tensor's units.
    #[inline]
    pub(crate) fn value(&self, x: f64) -> f64 {
        const ROUNDER: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52
        let s = (x * self.scale - self.offset).clamp(self.lo, self.hi);
        ((s + ROUNDER) - ROUNDER + self.offset) * self.step
    }

    /// [`Self::value`] of an f32, as f32 (fake quantization of float tensors).
    #[inline]
    pub(crate) fn fake_f32(&self, v: f32) -> f32 {
        self.value(f64::from(v)) as f32
    }
}

fn round_f64(s: f64, rounding: Rounding, u: f64) -> f64 {
    match rounding {
        Rounding::NearestEven => s.round_ties_even(),
        Rounding::NearestAway => s.round(),
        Rounding::TowardZero => s.trunc(),
        Rounding::Stochastic { .. } => (s + u).floor(),
    }
}

pub(crate) fn pow2(e: i32) -> f64 {
    libm::ldexp(1.0, e)
}

fn positive_finite(name: &'static str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            name,
            reason: format!("{v} is not finite and positive"),
        })
    }
}

fn clamp_frac(n: f64) -> Result<i32> {
    if n.is_finite() && n.abs() <= f64::from(MAX_ABS_FRAC_BITS) {
        Ok(n as i32)
    } else {
        Err(Error::InvalidArgument {
            name: "frac_bits",
            reason: format!(
                "the rule gives {n}, outside -{MAX_ABS_FRAC_BITS}..={MAX_ABS_FRAC_BITS}"
            ),
        })
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Integer types a [`QTensor`] can store: `i8`, `i16`, `i32`, `u8`, `u16`.
pub trait Storage:
    sealed::Sealed + Copy + Default + std::fmt::Debug + Send + Sync + 'static
{
    /// Smallest value of the type.
    const MIN: i64;
    /// Largest value of the type.
    const MAX: i64;
    /// Name used in messages (`"i8"` …).
    const NAME: &'static str;
    /// Converts a code already known to lie in `MIN..=MAX`.
    fn from_code(code: i64) -> Self;
    /// Widens to `i64`.
    fn to_code(self) -> i64;
    /// Narrows an `i32` already known to lie in `MIN..=MAX` (vectorisable hot-path conversion).
    fn from_i32(v: i32) -> Self;
}

macro_rules! storage {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Storage for $t {
            const MIN: i64 = <$t>::MIN as i64;
            const MAX: i64 = <$t>::MAX as i64;
            const NAME: &'static str = stringify!($t);
            #[inline(always)]
            fn from_code(code: i64) -> Self {
                debug_assert!((<Self as Storage>::MIN..=<Self as Storage>::MAX).contains(&code));
                code as $t
            }
            #[inline(always)]
            fn to_code(self) -> i64 {
                self as i64
            }
            #[inline(always)]
            fn from_i32(v: i32) -> Self {
                v as $t
            }
        }
    )*};
}
storage!(i8, i16, i32, u8, u16);

/// A tensor of integer codes with the format(s) that give them meaning.
///
/// Per-tensor: one [`QFormat`]. Per-channel: one format per index of [`QTensor::channel_axis`]
/// (for OIHW weights, axis 0 = output channel). Every constructor leaves at least one format, so
/// [`QTensor::format`] and [`QTensor::format_of_channel`] always have an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor<T: Storage, D: Dimension> {
    codes: Array<T, D>,
    formats: Vec<QFormat>,
    axis: Option<usize>,
    saturated: u64,
}

impl<T: Storage, D: RemoveAxis> QTensor<T, D> {
    /// Wraps existing codes with a per-tensor format.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the format's code range does not fit in `T` or a code lies
    /// outside the format's range.
    pub fn from_codes(codes: Array<T, D>, format: QFormat) -> Result<Self> {
        check_fits::<T>(&format)?;
        check_codes(&codes, std::slice::from_ref(&format), None)?;
        Ok(Self {
            codes,
            formats: vec![format],
            axis: None,
            saturated: 0,
        })
    }

    /// Wraps existing codes with one format per channel along `axis`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `axis` does not exist or has length 0 (no channel to give a
    /// format); [`Error::ShapeMismatch`] if `formats.len()` differs from the axis length; plus the
    /// errors of [`QTensor::from_codes`].
    pub fn from_codes_per_channel(
        codes: Array<T, D>,
        axis: usize,
        formats: Vec<QFormat>,
    ) -> Result<Self> {
        check_axis(codes.shape(), axis, formats.len())?;
        if formats.is_empty() {
            return Err(Error::InvalidArgument {
                name: "axis",
                reason: format!(
                    "axis {axis} of shape {:?} has length 0: per-channel formats need at least \
                     one channel (use QTensor::from_codes for an empty tensor)",
                    codes.shape()
                ),
            });
        }
        for f in &formats {
            check_fits::<T>(f)?;
        }
        check_codes(&codes, &formats, Some(axis))?;
        Ok(Self {
            codes,
            formats,
            axis: Some(axis),
            saturated: 0,
        })
    }

    /// Wraps codes that the crate itself produced inside the format's range (kernel outputs), skipping
    /// the range scan of [`QTensor::from_codes`]; checked in debug builds.
    pub(crate) fn from_codes_trusted(
        codes: Array<T, D>,
        formats: Vec<QFormat>,
        axis: Option<usize>,
    ) -> Self {
        debug_assert!(!formats.is_empty() && check_codes(&codes, &formats, axis).is_ok());
        Self {
            codes,
            formats,
            axis,
            saturated: 0,
        }
    }

    /// The integer codes.
    pub fn codes(&self) -> &Array<T, D> {
        &self.codes
    }
    /// Consumes the tensor, returning its codes.
    pub fn into_codes(self) -> Array<T, D> {
        self.codes
    }
    /// The format of channel 0 (the only one when per-tensor).
    pub fn format(&self) -> QFormat {
        // Never empty: every constructor checks (see the type's docs).
        self.formats[0]
    }
    /// All formats: one per-tensor, or one per channel along [`QTensor::channel_axis`].
    pub fn formats(&self) -> &[QFormat] {
        &self.formats
    }
    /// The channel axis when per-channel.
    pub fn channel_axis(&self) -> Option<usize> {
        self.axis
    }
    /// The format of channel `c` (the per-tensor format when not per-channel; channel 0's for a `c`
    /// past the last channel).
    pub fn format_of_channel(&self, c: usize) -> QFormat {
        self.formats
            .get(c)
            .copied()
            .unwrap_or_else(|| self.format())
    }
    /// The same tensor with a static dimension type (for example `IxDyn` to `Ix4`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the rank differs.
    pub fn into_dimensionality<E: RemoveAxis>(self) -> Result<QTensor<T, E>> {
        let found = self.codes.shape().to_vec();
        let codes = self
            .codes
            .into_dimensionality::<E>()
            .map_err(|_| Error::ShapeMismatch {
                what: "tensor rank".into(),
                expected: format!("rank {:?}", E::NDIM),
                found: format!("shape {found:?}"),
            })?;
        Ok(QTensor {
            codes,
            formats: self.formats,
            axis: self.axis,
            saturated: self.saturated,
        })
    }

    /// How many values were clipped to the format's bounds when quantizing.
    pub fn saturated(&self) -> u64 {
        self.saturated
    }

    /// The real values the codes stand for, as `f32`.
    pub fn dequantize(&self) -> Array<f32, D> {
        match self.axis {
            None => {
                let f = self.formats[0];
                self.codes.mapv(|q| f.value_of(q.to_code()) as f32)
            }
            Some(axis) => {
                let mut out = self.codes.mapv(|_| 0.0f32);
                for (c, (mut o, q)) in out
                    .axis_iter_mut(Axis(axis))
                    .zip(self.codes.axis_iter(Axis(axis)))
                    .enumerate()
                {
                    let f = self.formats[c];
                    o.zip_mut_with(&q, |o, &q| *o = f.value_of(q.to_code()) as f32);
                }
                out
            }
        }
    }
}

fn check_fits<T: Storage>(f: &QFormat) -> Result<()> {
    if f.min_code() < T::MIN || f.max_code() > T::MAX {
        return Err(Error::InvalidArgument {
            name: "format",
            reason: format!(
                "{f} has codes {}..={} which do not fit in {} ({}..={})",
                f.min_code(),
                f.max_code(),
                T::NAME,
                T::MIN,
                T::MAX
            ),
        });
    }
    Ok(())
}

fn check_axis(shape: &[usize], axis: usize, n: usize) -> Result<()> {
    match shape.get(axis) {
        None => Err(Error::InvalidArgument {
            name: "axis",
            reason: format!("axis {axis} does not exist in a tensor of shape {shape:?}"),
        }),
        Some(&len) if len != n => Err(Error::ShapeMismatch {
            what: format!("per-channel formats along axis {axis}"),
            expected: format!("{len} formats"),
            found: format!("{n} formats"),
        }),
        Some(_) => Ok(()),
    }
}

fn check_codes<T: Storage, D: RemoveAxis>(
    codes: &Array<T, D>,
    formats: &[QFormat],
    axis: Option<usize>,
) -> Result<()> {
    let check = |f: &QFormat, q: T| -> Result<()> {
        let q = q.to_code();
        if q < f.min_code() || q > f.max_code() {
            return Err(Error::InvalidArgument {
                name: "codes",
                reason: format!(
                    "code {q} is outside {f}'s range {}..={}",
                    f.min_code(),
                    f.max_code()
                ),
            });
        }
        Ok(())
    };
    match axis {
        None => codes.iter().try_for_each(|&q| check(&formats[0], q)),
        Some(a) => codes
            .axis_iter(Axis(a))
            .zip(formats)
            .try_for_each(|(lane, f)| lane.iter().try_for_each(|&q| check(f, q))),
    }
}

/// Quantizes `f32` tensors into [`QTensor<T, _>`] with a fixed format (per-tensor or per-channel)
/// and rounding mode.
///
/// The code of x is q = clamp(round(x·2ⁿ − g), q_min, q_max) with g = ½ for mid-rise and 0 for
/// mid-tread; the dequantized value is (q + g)·2⁻ⁿ. Inside the range the error is at most Δ/2 for the
/// nearest modes; values beyond it saturate at the bounds and are counted.
///
/// # Example
/// ```
/// use fixq::{QFormat, Quantizer};
/// use ndarray::array;
/// let q = Quantizer::<i8>::new(QFormat::signed(8, 4)?)?; // step 1/16
/// let t = q.quantize(array![0.5f32, -0.03, 100.0].view())?;
/// assert_eq!(t.codes(), &array![8i8, 0, 127]);
/// assert_eq!(t.saturated(), 1);
/// assert_eq!(t.dequantize()[0], 0.5);
/// # Ok::<(), fixq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Quantizer<T: Storage> {
    formats: Vec<QFormat>,
    axis: Option<usize>,
    rounding: Rounding,
    _t: std::marker::PhantomData<T>,
}

impl<T: Storage> Quantizer<T> {
    /// A per-tensor quantizer with nearest-even rounding.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the format's codes do not fit in `T`.
    pub fn new(format: QFormat) -> Result<Self> {
        check_fits::<T>(&format)?;
        Ok(Self {
            formats: vec![format],
            axis: None,
            rounding: Rounding::NearestEven,
            _t: std::marker::PhantomData,
        })
    }

    /// A per-channel quantizer: `formats[c]` applies to index c along `axis`.
    ///
    /// # Errors
    /// [`Error::Empty`] for no formats; [`Error::InvalidArgument`] if a format does not fit in `T`.
    pub fn per_channel(axis: usize, formats: Vec<QFormat>) -> Result<Self> {
        if formats.is_empty() {
            return Err(Error::Empty { what: "formats" });
        }
        for f in &formats {
            check_fits::<T>(f)?;
        }
        Ok(Self {
            formats,
            axis: Some(axis),
            rounding: Rounding::NearestEven,
            _t: std::marker::PhantomData,
        })
    }

    /// The same quantizer with another rounding mode.
    pub fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// The formats (one, or one per channel).
    pub fn formats(&self) -> &[QFormat] {
        &self.formats
    }

    /// The rounding mode.
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }

    /// Quantizes `x`. The input is not modified.
    ///
    /// # Errors
    /// [`Error::NonFinite`] for NaN or infinite input (index in logical order);
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] if a per-channel axis does not match.
    pub fn quantize<D: RemoveAxis>(&self, x: ArrayView<'_, f32, D>) -> Result<QTensor<T, D>> {
        let mut codes = Array::<T, D>::default(x.raw_dim());
        let mut saturated = 0u64;
        match self.axis {
            None => {
                saturated += self.quantize_lane(&x, &mut codes, &self.formats[0], 0)?;
            }
            Some(axis) => {
                check_axis(x.shape(), axis, self.formats.len())?;
                for (c, (xl, mut ql)) in x
                    .axis_iter(Axis(axis))
                    .zip(codes.axis_iter_mut(Axis(axis)))
                    .enumerate()
                {
                    let mut owned = ql.to_owned();
                    saturated += self.quantize_lane(&xl, &mut owned, &self.formats[c], c as u64)?;
                    ql.assign(&owned);
                }
            }
        }
        Ok(QTensor {
            codes,
            formats: self.formats.clone(),
            axis: self.axis,
            saturated,
        })
    }

    fn quantize_lane<E: Dimension>(
        &self,
        x: &ArrayView<'_, f32, E>,
        out: &mut Array<T, E>,
        f: &QFormat,
        lane: u64,
    ) -> Result<u64> {
        match (x.as_slice(), out.as_slice_mut()) {
            (Some(xs), Some(os)) => quantize_slice(xs, os, f, self.rounding, lane),
            _ => {
                let xs: Vec<f32> = x.iter().copied().collect();
                let mut os = vec![T::default(); xs.len()];
                let n = quantize_slice(&xs, &mut os, f, self.rounding, lane)?;
                for (o, v) in out.iter_mut().zip(os) {
                    *o = v;
                }
                Ok(n)
            }
        }
    }
}

/// 1.5 · 2²³: adding and subtracting it rounds an `f32` of magnitude < 2²² to the nearest integer,
/// ties to even, in the default floating-point environment — and, unlike `round_ties_even`, it
/// vectorises on baseline x86-64.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Rounds a scaled value to the nearest integer (ties to even) within `[lo, hi]`, counting saturation.
///
/// The value is clamped one step beyond the bounds so the magic-number rounding stays exact; the
/// clamped, rounded value plus 1.5·2²³ holds the integer in its low mantissa bits, read with integer
/// arithmetic (no float-to-int conversion, so the loop vectorises). A NaN input gives an arbitrary
/// in-range code; callers reject non-finite input separately.
#[inline(always)]
fn round_clamped(s: f32, lo: f32, hi: f32, sat: &mut u32) -> i32 {
    let s = if s < lo - 1.0 { lo - 1.0 } else { s };
    let s = if s > hi + 1.0 { hi + 1.0 } else { s };
    let r = (s + ROUND_MAGIC) - ROUND_MAGIC;
    *sat += u32::from(r < lo) + u32::from(r > hi);
    let r = if r < lo { lo } else { r };
    let r = if r > hi { hi } else { r };
    (r + ROUND_MAGIC).to_bits() as i32 - ROUND_MAGIC.to_bits() as i32
}

/// The vectorisable body of nearest-even quantization of one chunk: codes into `os`, returns
/// (any non-finite input, saturated count). Written once; [`crate::arch::run_best`] compiles it per
/// ISA through [`QuantizeNearest`].
#[inline(always)]
pub(crate) fn quantize_nearest_body<T: Storage>(
    xs: &[f32],
    os: &mut [T],
    scale: f32,
    off: f32,
    lo: f32,
    hi: f32,
) -> (bool, u64) {
    const W: usize = 16;
    let mut bad = 0u32;
    let mut sat = [0u32; W];
    let (xb, xt) = xs.split_at(xs.len() - xs.len() % W);
    let (ob, ot) = os.split_at_mut(xb.len());
    for (xw, ow) in xb.chunks_exact(W).zip(ob.chunks_exact_mut(W)) {
        for j in 0..W {
            let v = xw[j];
            bad |= u32::from(!v.is_finite());
            ow[j] = T::from_i32(round_clamped(v * scale - off, lo, hi, &mut sat[j]));
        }
    }
    for (o, &v) in ot.iter_mut().zip(xt) {
        bad |= u32::from(!v.is_finite());
        *o = T::from_i32(round_clamped(v * scale - off, lo, hi, &mut sat[0]));
    }
    (bad != 0, sat.iter().map(|&s| u64::from(s)).sum())
}

/// [`quantize_nearest_body`] as a loop body for [`crate::arch::run_best`].
pub(crate) struct QuantizeNearest<'a, T> {
    pub xs: &'a [f32],
    pub os: &'a mut [T],
    pub scale: f32,
    pub off: f32,
    pub lo: f32,
    pub hi: f32,
}

impl<T: Storage> crate::arch::Body for QuantizeNearest<'_, T> {
    type Output = (bool, u64);
    #[inline(always)]
    fn run(self) -> (bool, u64) {
        quantize_nearest_body(self.xs, self.os, self.scale, self.off, self.lo, self.hi)
    }
}

/// Quantizes a contiguous slice; returns the number of saturated values.
fn quantize_slice<T: Storage>(
    xs: &[f32],
    os: &mut [T],
    f: &QFormat,
    rounding: Rounding,
    lane: u64,
) -> Result<u64> {
    let lo = f.min_code();
    let hi = f.max_code();
    let offset = if f.grid() == Grid::MidRise { 0.5 } else { 0.0 };
    // Fast path: nearest-even with codes below 2^22 in f32 arithmetic.
    if rounding == Rounding::NearestEven && hi <= (1 << 21) && lo >= -(1 << 21) {
        let scale = pow2(f.frac_bits()) as f32;
        let off = offset as f32;
        let (lo_f, hi_f) = (lo as f32, hi as f32);
        let mut saturated = 0u64;
        const CHUNK: usize = 1024;
        for (ci, (xc, oc)) in xs.chunks(CHUNK).zip(os.chunks_mut(CHUNK)).enumerate() {
            let (bad, sat) = crate::arch::run_best(QuantizeNearest {
                xs: xc,
                os: oc,
                scale,
                off,
                lo: lo_f,
                hi: hi_f,
            });
            if bad {
                let index = xc.iter().position(|v| !v.is_finite()).unwrap_or(0);
                return Err(Error::NonFinite {
                    what: "tensor to quantize",
                    index: ci * CHUNK + index,
                    value: f64::from(xc[index]),
                });
            }
            saturated += sat;
        }
        return Ok(saturated);
    }
    let mut rng = SplitMix64::new(match rounding {
        Rounding::Stochastic { seed } => seed ^ lane.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        _ => 0,
    });
    let mut saturated = 0;
    for (index, (o, &v)) in os.iter_mut().zip(xs).enumerate() {
        if !v.is_finite() {
            return Err(Error::NonFinite {
                what: "tensor to quantize",
                index,
                value: f64::from(v),
            });
        }
        let u = if matches!(rounding, Rounding::Stochastic { .. }) {
            rng.next_unit()
        } else {
            0.5
        };
        let s = f64::from(v) * pow2(f.frac_bits()) - offset;
        let r = round_f64(s.clamp(lo as f64 - 1.0, hi as f64 + 1.0), rounding, u);
        let q = if r < lo as f64 {
            saturated += 1;
            lo
        } else if r > hi as f64 {
            saturated += 1;
            hi
        } else {
            r as i64
        };
        *o = T::from_code(q);
    }
    Ok(saturated)
}

/// SplitMix64 (Steele, Lea & Flood 2014): a small, fast, seedable generator for stochastic rounding.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub(crate) fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn nearest_level_is_code_of_then_value_of_bit_for_bit() {
        let mut rng = SplitMix64::new(11);
        let mut formats = Vec::new();
        for bits in [1u32, 2, 3, 4, 7, 8, 12, 16, 31, 32] {
            for n in [-40, -7, -1, 0, 1, 3, 9, 30, 60] {
                for (signed, grid) in [
                    (true, Grid::MidTread),
                    (false, Grid::MidTread),
                    (true, Grid::MidRise),
                ] {
                    if let Ok(f) = QFormat::new(bits, n, signed, grid) {
                        formats.push(f);
                    }
                }
            }
        }
        assert!(formats.len() > 200);
        for f in formats {
            let level = NearestLevel::new(f);
            let step = f.step();
            let span = f.max_value().abs().max(f.min_value().abs()) * 1.5;
            for k in 0..400 {
                let x = match k % 4 {
                    // Exact ties of both grids and values just beside them.
                    0 => (k as f64 / 8.0 - 25.0) * step * 0.5,
                    1 => (k as f64 - 200.0) * step * 0.5 + step * 1e-9,
                    2 => (rng.next_unit() * 2.0 - 1.0) * span,
                    _ => (rng.next_unit() * 2.0 - 1.0) * 1e30,
                };
                let want = f.value_of(f.code_of(x, Rounding::NearestEven).0);
                assert_eq!(level.value(x).to_bits(), want.to_bits(), "{f} at {x}");
            }
            for x in [f64::INFINITY, f64::NEG_INFINITY] {
                let want = f.value_of(f.code_of(x, Rounding::NearestEven).0);
                assert_eq!(level.value(x), want, "{f} at {x}");
            }
        }
    }

    #[test]
    fn formats_validate() {
        assert!(QFormat::signed(0, 0).is_err());
        assert!(QFormat::signed(33, 0).is_err());
        assert!(QFormat::signed(8, 101).is_err());
        assert!(QFormat::new(8, 0, false, Grid::MidRise).is_err());
        let u = QFormat::unsigned(8, 8).unwrap();
        assert_eq!((u.min_code(), u.max_code()), (0, 255));
        assert_eq!(u.max_value(), 255.0 / 256.0);
        let r = QFormat::mid_rise(2, 0).unwrap();
        assert_eq!((r.min_value(), r.max_value()), (-1.5, 1.5));
        let odd = r.as_mid_tread_odd().unwrap();
        assert_eq!((odd.bits(), odd.frac_bits()), (3, 1));
        assert_eq!(QFormat::signed(4, -2).unwrap().step(), 4.0);
        assert_eq!(QFormat::signed(8, 5).unwrap().to_string(), "s8.5");
    }

    #[test]
    fn rounding_modes() {
        let f = QFormat::signed(8, 0).unwrap();
        let x = array![2.5f32, -2.5, 1.5, 0.7, -0.7];
        let q = |r| {
            Quantizer::<i8>::new(f)
                .unwrap()
                .with_rounding(r)
                .quantize(x.view())
                .unwrap()
        };
        assert_eq!(q(Rounding::NearestEven).codes(), &array![2i8, -2, 2, 1, -1]);
        assert_eq!(q(Rounding::NearestAway).codes(), &array![3i8, -3, 2, 1, -1]);
        assert_eq!(q(Rounding::TowardZero).codes(), &array![2i8, -2, 1, 0, 0]);
        let s1 = q(Rounding::Stochastic { seed: 7 });
        let s2 = q(Rounding::Stochastic { seed: 7 });
        assert_eq!(s1, s2);
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let f = QFormat::signed(8, 0).unwrap();
        let x = ndarray::Array1::from_elem(100_000, 0.3f32);
        let t = Quantizer::<i8>::new(f)
            .unwrap()
            .with_rounding(Rounding::Stochastic { seed: 1 })
            .quantize(x.view())
            .unwrap();
        let mean = t.dequantize().mean().unwrap();
        assert!((mean - 0.3).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn mid_rise_levels_and_saturation() {
        let f = QFormat::mid_rise(2, 0).unwrap(); // levels -1.5 -0.5 0.5 1.5
        let x = array![0.1f32, -0.1, 1.2, -7.0, 7.0];
        let t = Quantizer::<i8>::new(f).unwrap().quantize(x.view()).unwrap();
        assert_eq!(t.dequantize(), array![0.5f32, -0.5, 1.5, -1.5, 1.5]);
        assert_eq!(t.saturated(), 2);
    }

    #[test]
    fn non_finite_is_an_error_with_index() {
        let f = QFormat::signed(8, 0).unwrap();
        let mut x = ndarray::Array1::<f32>::zeros(3000);
        x[2100] = f32::NAN;
        match Quantizer::<i8>::new(f).unwrap().quantize(x.view()) {
            Err(Error::NonFinite { index, .. }) => assert_eq!(index, 2100),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn per_channel_and_fit_checks() {
        let w = array![[1.0f32, 2.0], [0.25, 0.5]];
        let fs = vec![
            QFormat::signed(8, 4).unwrap(),
            QFormat::signed(8, 6).unwrap(),
        ];
        let t = Quantizer::<i8>::per_channel(0, fs)
            .unwrap()
            .quantize(w.view())
            .unwrap();
        assert_eq!(t.codes(), &array![[16i8, 32], [16, 32]]);
        assert_eq!(t.dequantize(), w);
        assert!(Quantizer::<i8>::new(QFormat::signed(9, 0).unwrap()).is_err());
        assert!(Quantizer::<u8>::new(QFormat::signed(8, 0).unwrap()).is_err());
        assert!(Quantizer::<i16>::new(QFormat::unsigned(8, 0).unwrap()).is_ok());
        let bad = Quantizer::<i8>::per_channel(0, vec![QFormat::signed(8, 0).unwrap(); 3]).unwrap();
        assert!(matches!(
            bad.quantize(w.view()),
            Err(Error::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn fast_and_slow_paths_agree() {
        // i32 storage with 20 bits takes the fast path; 24 bits takes the slow one. Compare on the
        // same scaled values.
        let xs: Vec<f32> = (0..5000).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        for bits in [2, 8, 16] {
            let f = QFormat::signed(bits, bits as i32 - 3).unwrap();
            let mut fast = vec![0i32; xs.len()];
            let n = quantize_slice(&xs, &mut fast, &f, Rounding::NearestEven, 0).unwrap();
            let mut m = 0;
            for (i, &x) in xs.iter().enumerate() {
                let (c, s) = f.code_of(f64::from(x), Rounding::NearestEven);
                assert_eq!(i64::from(fast[i]), c, "bits {bits} x {x}");
                m += u64::from(s);
            }
            assert_eq!(n, m);
        }
    }
}

#[cfg(test)]
mod isa_tests {
    use super::QuantizeNearest;
    use crate::arch::run_best;
    use crate::dist::ChunkStats;

    #[test]
    fn isa_compilations_are_bit_identical() {
        let xs: Vec<f32> = (0..10_000)
            .map(|i| ((i as f32) * 0.7131).sin() * 40.0 + if i % 17 == 0 { 0.0 } else { 0.1 })
            .collect();
        let portable = crate::dist::chunk_f32(&xs[..4093]).unwrap();
        let fast = run_best(ChunkStats(&xs[..4093])).unwrap();
        assert_eq!(format!("{portable:?}"), format!("{fast:?}"));
        let mut a = vec![0i8; xs.len()];
        let mut b = vec![0i8; xs.len()];
        let r1 = crate::fixed::quantize_nearest_body(&xs, &mut a, 0.5, 0.0, -128.0, 127.0);
        let r2 = run_best(QuantizeNearest {
            xs: &xs,
            os: &mut b,
            scale: 0.5,
            off: 0.0,
            lo: -128.0,
            hi: 127.0,
        });
        assert_eq!(r1, r2);
        assert_eq!(a, b);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_path_runs_where_available() {
        // The project machine has AVX2 + FMA: CI must not silently test only the portable path.
        if std::env::var_os("CI").is_some() {
            assert!(
                crate::arch::numerics_isa() == "avx2+fma",
                "CI machine lacks AVX2/FMA: the fast numerics path is untested"
            );
        }
    }
}
