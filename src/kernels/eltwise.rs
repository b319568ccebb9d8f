//! Element-wise residual [`add`] (the reference over tensors) and [`AddPlan`] (the same sum over
//! slices, with its arithmetic width chosen once from the formats).

use ndarray::{Array, Dimension, RemoveAxis, Zip};

use super::reference::requantize_even_wide;
use super::{Activation8or16, OutputStage};
use crate::error::{Error, Result};
use crate::fixed::QTensor;

/// Largest difference of fractional bits [`add`] accepts between its inputs.
pub const MAX_ADD_FRAC_GAP: i32 = 64;

/// Residual addition y = sat(round(a·2^−n_a + b·2^−n_b) at n_y), correctly rounded.
///
/// Both inputs are first aligned exactly to the finer format n = max(n_a, n_b) (left shifts, 128-bit),
/// summed, and rounded once to the output format (ties to even: an aligning shift of one bit makes
/// every odd sum a tie, and ties toward +∞ would raise the output's mean by a quarter step), then
/// saturated to the output stage (format bits and fused activation). Shapes must be equal (no broadcasting).
///
/// # Errors
/// [`Error::ShapeMismatch`] for different shapes; [`Error::Unsupported`] for per-channel or mid-rise
/// inputs; [`Error::InvalidArgument`] if n_a and n_b differ by more than [`MAX_ADD_FRAC_GAP`], or for
/// output format errors.
///
/// # Example
/// ```
/// use fixq::kernels::{add, OutputStage};
/// use fixq::{QFormat, QTensor};
/// use ndarray::array;
/// let a = QTensor::from_codes(array![3i8, -3], QFormat::signed(8, 1)?)?; // 1.5, -1.5
/// let b = QTensor::from_codes(array![1u8, 1], QFormat::unsigned(8, 2)?)?; // 0.25, 0.25
/// let y = add::<i8, u8, i8, _>(&a, &b, OutputStage::new(QFormat::signed(4, 0)?))?;
/// assert_eq!(y.codes(), &array![2i8, -1]); // 1.75 -> 2, -1.25 -> -1
/// # Ok::<(), fixq::Error>(())
/// ```
pub fn add<
    A: Activation8or16,
    B: Activation8or16,
    O: Activation8or16,
    D: Dimension + RemoveAxis,
>(
    a: &QTensor<A, D>,
    b: &QTensor<B, D>,
    output: OutputStage,
) -> Result<QTensor<O, D>> {
    if a.codes().shape() != b.codes().shape() {
        return Err(Error::ShapeMismatch {
            what: "add operands".into(),
            expected: format!("{:?}", a.codes().shape()),
            found: format!("{:?}", b.codes().shape()),
        });
    }
    let (fa, fb) = (a.format(), b.format());
    if a.channel_axis().is_some() || b.channel_axis().is_some() {
        return Err(Error::Unsupported("add of per-channel formats".into()));
    }
    super::check_input_format::<A>(fa)?;
    super::check_input_format::<B>(fb)?;
    let (na, nb) = (fa.frac_bits(), fb.frac_bits());
    if (na - nb).abs() > MAX_ADD_FRAC_GAP {
        return Err(Error::InvalidArgument {
            name: "add formats",
            reason: format!("fractional bits {na} and {nb} differ by more than {MAX_ADD_FRAC_GAP}"),
        });
    }
    let (lo, hi) = output.code_range::<O>()?;
    let n = na.max(nb);
    let (sa, sb) = ((n - na) as u32, (n - nb) as u32);
    let shift = n - output.format.frac_bits();
    let mut out = Array::<O, D>::default(a.codes().raw_dim());
    Zip::from(&mut out)
        .and(a.codes())
        .and(b.codes())
        .for_each(|o, &x, &y| {
            let v = (i128::from(x.to_code()) << sa) + (i128::from(y.to_code()) << sb);
            *o = O::from_code(requantize_even_wide(v, shift, lo, hi));
        });
    QTensor::from_codes(out, output.format)
}

/// The integer width an [`AddPlan`] computes in, proven from the formats at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddWidth {
    /// Every aligned sum, its rounding and any left shift stay below 2³⁰ in magnitude.
    I32,
    /// Every aligned sum and any left shift stay below 2⁶², the right shift is at most 62: scalar
    /// `i64` ([`requantize_even_i64`]), bit-identical to the reference.
    I64,
    /// The reference's 128-bit arithmetic.
    I128,
}

/// [`super::reference::requantize_even_wide`] in `i64`: exact when |v| < 2⁶², |v·2^(−shift)| < 2⁶²
/// for a left shift, and a right shift of at most 62 (what [`AddWidth::I64`] and `Rescale`'s
/// 64-bit path prove at construction).
#[inline(always)]
fn requantize_even_i64(v: i64, shift: i32, lo: i64, hi: i64) -> i64 {
    let v = if shift > 0 {
        let s = shift as u32;
        let q = v >> s;
        let r = v - (q << s);
        let half = 1i64 << (s - 1);
        q + i64::from(r > half || (r == half && q & 1 == 1))
    } else {
        v << (-shift) as u32
    };
    v.clamp(lo, hi)
}

/// A residual sum between fixed formats, prepared once: y = sat(round(a·2^−n_a + b·2^−n_b) at n_y),
/// bit-identical to [`add`] (ties to even, the output stage's range and activation).
///
/// Where the formats allow, i.e. when |a|·2^s_a + |b|·2^s_b (s = the aligning left shifts, |code| at
/// most the storage's largest magnitude) and the output's left shift keep every intermediate below
/// 2³⁰, [`AddPlan::run`] works in `i32` lanes that the compiler vectorizes; otherwise it runs the
/// 128-bit reference arithmetic per element. Both are checked against [`add`] on extreme codes.
///
/// # Example
/// ```
/// use fixq::kernels::{AddPlan, OutputStage};
/// use fixq::QFormat;
/// // 1.5 + 0.25 and -1.5 + 0.25 into a 4-bit integer format: 1.75 -> 2, -1.25 -> -1.
/// let p = AddPlan::new::<i8, u8, i8>(
///     QFormat::signed(8, 1)?,
///     QFormat::unsigned(8, 2)?,
///     OutputStage::new(QFormat::signed(4, 0)?),
/// )?;
/// let mut y = [0i8; 2];
/// p.run(&[3i8, -3], &[1u8, 1], &mut y)?;
/// assert_eq!(y, [2, -1]);
/// # Ok::<(), fixq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddPlan {
    sa: u32,
    sb: u32,
    /// Right shift from the aligned sum to the output (negative: a left shift).
    shift: i32,
    lo: i64,
    hi: i64,
    width: AddWidth,
    format: crate::QFormat,
}

impl AddPlan {
    /// Prepares the sum of `A` codes at `fa` and `B` codes at `fb` into `O` codes at `output`.
    ///
    /// # Errors
    /// As [`add`]: [`Error::Unsupported`] for mid-rise formats, [`Error::InvalidArgument`] for formats
    /// that do not fit their storage, fractional bits more than [`MAX_ADD_FRAC_GAP`] apart, or an
    /// empty output range.
    pub fn new<A: Activation8or16, B: Activation8or16, O: Activation8or16>(
        fa: crate::QFormat,
        fb: crate::QFormat,
        output: OutputStage,
    ) -> Result<Self> {
        super::check_input_format::<A>(fa)?;
        super::check_input_format::<B>(fb)?;
        let (na, nb) = (fa.frac_bits(), fb.frac_bits());
        if (na - nb).abs() > MAX_ADD_FRAC_GAP {
            return Err(Error::InvalidArgument {
                name: "add formats",
                reason: format!(
                    "fractional bits {na} and {nb} differ by more than {MAX_ADD_FRAC_GAP}"
                ),
            });
        }
        let (lo, hi) = output.code_range::<O>()?;
        let n = na.max(nb);
        let (sa, sb) = ((n - na) as u32, (n - nb) as u32);
        let shift = n - output.format.frac_bits();
        let mag = |min: i64, max: i64, s: u32| -> i128 {
            i128::from(min.unsigned_abs().max(max.unsigned_abs())) << s.min(100)
        };
        // |aligned sum| bound, then after the output's left shift (if any).
        let sum = mag(A::MIN, A::MAX, sa) + mag(B::MIN, B::MAX, sb);
        let widest = if shift < 0 {
            sum << (-shift).min(100) as u32
        } else {
            sum
        };
        let width = if widest < 1 << 30 && shift <= 30 {
            AddWidth::I32
        } else if widest < 1 << 62 && shift <= 62 {
            AddWidth::I64
        } else {
            AddWidth::I128
        };
        Ok(Self {
            sa,
            sb,
            shift,
            lo,
            hi,
            width,
            format: output.format,
        })
    }

    /// The output format.
    pub fn output_format(&self) -> crate::QFormat {
        self.format
    }

    /// Whether [`AddPlan::run`] takes the 32-bit lanes (else the 128-bit arithmetic).
    pub fn is_narrow(&self) -> bool {
        self.width == AddWidth::I32
    }

    /// `out[i]` = the sum of `a[i]` and `b[i]` (element by element, any common memory order).
    ///
    /// Codes outside the formats given to [`AddPlan::new`] give saturated (never undefined) outputs
    /// in the 128-bit path and may differ from [`add`] in the 32-bit one; the network passes only
    /// codes its own steps produced in those formats.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the three slices differ in length.
    pub fn run<A: Activation8or16, B: Activation8or16, O: Activation8or16>(
        &self,
        a: &[A],
        b: &[B],
        out: &mut [O],
    ) -> Result<()> {
        if a.len() != b.len() || a.len() != out.len() {
            return Err(Error::ShapeMismatch {
                what: "add operands".into(),
                expected: format!("{} elements in each of a, b and out", a.len()),
                found: format!("{}, {} and {}", a.len(), b.len(), out.len()),
            });
        }
        match self.width {
            AddWidth::I32 => crate::arch::run_best(NarrowAdd { p: self, a, b, out }),
            AddWidth::I64 => {
                for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                    let v = (x.to_code() << self.sa) + (y.to_code() << self.sb);
                    *o = O::from_code(requantize_even_i64(v, self.shift, self.lo, self.hi));
                }
            }
            AddWidth::I128 => {
                for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                    let v =
                        (i128::from(x.to_code()) << self.sa) + (i128::from(y.to_code()) << self.sb);
                    *o = O::from_code(requantize_even_wide(v, self.shift, self.lo, self.hi));
                }
            }
        }
        Ok(())
    }
}

/// A change of format prepared once: y = sat(round(x·2^(n_y − n_x))) at the stage's format and
/// activation, ties to even (the network's stand-alone Relu/Clip and its format changes).
///
/// The reference is the 128-bit ties-to-even requantization of the element-wise paths;
/// [`Rescale::run`] uses `i32` lanes (vectorized) when |x|·2^(−shift) < 2³⁰ and the right shift is
/// at most 30, else 128-bit arithmetic.
///
/// # Example
/// ```
/// use fixq::kernels::{Activation, OutputStage, Rescale};
/// use fixq::QFormat;
/// // From 4 to 2 fractional bits with ReLU: 0.625 -> 0.5 (2.5 ties to 2), -1 -> 0.
/// let r = Rescale::new::<i8, u8>(
///     QFormat::signed(8, 4)?,
///     OutputStage::new(QFormat::unsigned(8, 2)?).with_activation(Activation::Relu),
/// )?;
/// let mut y = [0u8; 2];
/// r.run(&[10i8, -16], &mut y)?;
/// assert_eq!(y, [2, 0]);
/// # Ok::<(), fixq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescale {
    shift: i32,
    lo: i64,
    hi: i64,
    narrow: bool,
    /// |x·2^(−shift)| < 2⁶² and the right shift is at most 62: the scalar `i64` path.
    fits_i64: bool,
    format: crate::QFormat,
}

impl Rescale {
    /// Prepares the change from `A` codes at `input` to `O` codes at `output`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for mid-rise formats; [`Error::InvalidArgument`] for formats that do
    /// not fit their storage or an empty output range.
    pub fn new<A: Activation8or16, O: Activation8or16>(
        input: crate::QFormat,
        output: OutputStage,
    ) -> Result<Self> {
        super::check_input_format::<A>(input)?;
        let (lo, hi) = output.code_range::<O>()?;
        let shift = input.frac_bits() - output.format.frac_bits();
        let mag = i128::from(A::MIN.unsigned_abs().max(A::MAX.unsigned_abs()));
        let widest = if shift < 0 {
            mag << (-shift).min(100) as u32
        } else {
            mag
        };
        Ok(Self {
            shift,
            lo,
            hi,
            narrow: widest < 1 << 30 && shift <= 30,
            fits_i64: widest < 1 << 62 && shift <= 62,
            format: output.format,
        })
    }

    /// The output format.
    pub fn output_format(&self) -> crate::QFormat {
        self.format
    }

    /// Whether [`Rescale::run`] takes the 32-bit lanes.
    pub fn is_narrow(&self) -> bool {
        self.narrow
    }

    /// `out[i]` = `x[i]` in the output format.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the slices differ in length.
    pub fn run<A: Activation8or16, O: Activation8or16>(
        &self,
        x: &[A],
        out: &mut [O],
    ) -> Result<()> {
        if x.len() != out.len() {
            return Err(Error::ShapeMismatch {
                what: "rescale".into(),
                expected: format!("{} output elements", x.len()),
                found: format!("{}", out.len()),
            });
        }
        if self.narrow {
            crate::arch::run_best(NarrowRescale { p: self, x, out });
        } else if self.fits_i64 {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = O::from_code(requantize_even_i64(
                    v.to_code(),
                    self.shift,
                    self.lo,
                    self.hi,
                ));
            }
        } else {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = O::from_code(requantize_even_wide(
                    i128::from(v.to_code()),
                    self.shift,
                    self.lo,
                    self.hi,
                ));
            }
        }
        Ok(())
    }
}

struct NarrowRescale<'a, A, O> {
    p: &'a Rescale,
    x: &'a [A],
    out: &'a mut [O],
}

impl<A: Activation8or16, O: Activation8or16> crate::arch::Body for NarrowRescale<'_, A, O> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (lo, hi) = (self.p.lo as i32, self.p.hi as i32);
        let lanes = self.out.iter_mut().zip(self.x);
        if self.p.shift > 0 {
            let s = self.p.shift as u32;
            let half_m1 = (1i32 << (s - 1)) - 1;
            for (o, &x) in lanes {
                let v = i32::from(x.to_i16());
                *o = O::from_i32(((v + half_m1 + ((v >> s) & 1)) >> s).clamp(lo, hi));
            }
        } else {
            let s = (-self.p.shift) as u32;
            for (o, &x) in lanes {
                *o = O::from_i32((i32::from(x.to_i16()) << s).clamp(lo, hi));
            }
        }
    }
}

/// The 32-bit path of [`AddPlan::run`] as a loop body compiled per ISA ([`crate::arch::run_best`]).
struct NarrowAdd<'a, A, B, O> {
    p: &'a AddPlan,
    a: &'a [A],
    b: &'a [B],
    out: &'a mut [O],
}

impl<A: Activation8or16, B: Activation8or16, O: Activation8or16> crate::arch::Body
    for NarrowAdd<'_, A, B, O>
{
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let p = self.p;
        let (sa, sb, lo, hi) = (p.sa, p.sb, p.lo as i32, p.hi as i32);
        let lanes = self.out.iter_mut().zip(self.a).zip(self.b);
        let sum = |x: A, y: B| (i32::from(x.to_i16()) << sa) + (i32::from(y.to_i16()) << sb);
        if p.shift > 0 {
            // Ties to even, branch-free: ⌊(v + 2^(s−1) − 1 + q₀)/2^s⌋ with q₀ the low bit of
            // ⌊v/2^s⌋ (a remainder above half, or exactly half with q₀ = 1, carries into the quotient).
            let s = p.shift as u32;
            let half_m1 = (1i32 << (s - 1)) - 1;
            for ((o, &x), &y) in lanes {
                let v = sum(x, y);
                let r = (v + half_m1 + ((v >> s) & 1)) >> s;
                *o = O::from_i32(r.clamp(lo, hi));
            }
        } else {
            let s = (-p.shift) as u32;
            for ((o, &x), &y) in lanes {
                *o = O::from_i32((sum(x, y) << s).clamp(lo, hi));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QFormat;
    use crate::kernels::Activation;
    use ndarray::array;

    #[test]
    fn add_aligns_rounds_and_saturates() {
        let a = QTensor::from_codes(
            array![100i8, -100, 1, -1, 0],
            QFormat::signed(8, 0).unwrap(),
        )
        .unwrap();
        let b = QTensor::from_codes(array![1i16, 1, 1, -1, 3], QFormat::signed(16, 1).unwrap())
            .unwrap();
        // a + b/2 at frac 1: 200.5·2 -> s8 saturates; left shift of the result.
        let y = add::<i8, i16, i16, _>(&a, &b, OutputStage::new(QFormat::signed(12, 1).unwrap()))
            .unwrap();
        assert_eq!(y.codes(), &array![201i16, -199, 3, -3, 3]);
        // Round to frac -1 (step 2): 100.5/2 = 50.25 -> 50; -99.5/2 = -49.75 -> -50; 1.5/2 -> 1 (0.75);
        // -1.5/2 = -0.75 -> -1; 1.5/2 -> 1.
        let y = add::<i8, i16, i8, _>(&a, &b, OutputStage::new(QFormat::signed(8, -1).unwrap()))
            .unwrap();
        assert_eq!(y.codes(), &array![50i8, -50, 1, -1, 1]);
        // Ties to even: 0.5 -> 0, -0.5 -> 0, 1.5 -> 2, -1.5 -> -2, 2.5 -> 2.
        let h =
            QTensor::from_codes(array![1i8, -1, 3, -3, 5], QFormat::signed(8, 1).unwrap()).unwrap();
        let z =
            QTensor::from_codes(array![0u8, 0, 0, 0, 0], QFormat::unsigned(8, 0).unwrap()).unwrap();
        let y =
            add::<i8, u8, i8, _>(&h, &z, OutputStage::new(QFormat::signed(8, 0).unwrap())).unwrap();
        assert_eq!(y.codes(), &array![0i8, 0, 2, -2, 2]);
        // 4-bit output with ReLU.
        let y = add::<i8, i16, i8, _>(
            &a,
            &b,
            OutputStage::new(QFormat::signed(4, 0).unwrap()).with_activation(Activation::Relu),
        )
        .unwrap();
        assert_eq!(y.codes(), &array![7i8, 0, 2, 0, 2]);
        // Shape mismatch.
        let c = QTensor::from_codes(array![1i8], QFormat::signed(8, 0).unwrap()).unwrap();
        assert!(
            add::<i8, i8, i8, _>(&a, &c, OutputStage::new(QFormat::signed(8, 0).unwrap())).is_err()
        );
    }

    /// Every code of `a`'s and `b`'s formats (a grid through the full range, extremes included).
    fn codes<T: Activation8or16>(f: QFormat, n: usize) -> Vec<T> {
        let (lo, hi) = (f.min_code(), f.max_code());
        let span = (hi - lo) as usize;
        (0..n)
            .map(|i| T::from_code(lo + ((i * 7919) % (span + 1)) as i64))
            .chain([T::from_code(lo), T::from_code(hi)])
            .collect()
    }

    fn plan_matches_reference<A: Activation8or16, B: Activation8or16, O: Activation8or16>(
        fa: QFormat,
        fb: QFormat,
        stage: OutputStage,
    ) -> AddWidth {
        let n = 997;
        let a = codes::<A>(fa, n);
        let mut b = codes::<B>(fb, n);
        b.reverse();
        let qa = QTensor::from_codes(ndarray::Array1::from(a.clone()), fa).unwrap();
        let qb = QTensor::from_codes(ndarray::Array1::from(b.clone()), fb).unwrap();
        let want = add::<A, B, O, _>(&qa, &qb, stage).unwrap();
        let p = AddPlan::new::<A, B, O>(fa, fb, stage).unwrap();
        let mut got = vec![O::default(); a.len()];
        p.run(&a, &b, &mut got).unwrap();
        assert_eq!(
            got.as_slice(),
            want.codes().as_slice().unwrap(),
            "{fa} + {fb} -> {stage:?}"
        );
        p.width
    }

    #[test]
    fn plan_is_bit_exact_with_add_on_every_width() {
        let f = |s: bool, bits, frac| {
            if s {
                QFormat::signed(bits, frac).unwrap()
            } else {
                QFormat::unsigned(bits, frac).unwrap()
            }
        };
        let relu = |o: QFormat| OutputStage::new(o).with_activation(Activation::Relu);
        // The usual residual: signed conv output + unsigned shortcut, a few bits apart.
        assert_eq!(
            AddWidth::I32,
            plan_matches_reference::<i8, u8, u8>(
                f(true, 8, 4),
                f(false, 8, 5),
                relu(f(false, 8, 4))
            )
        );
        assert_eq!(
            AddWidth::I32,
            plan_matches_reference::<i8, i8, i8>(
                f(true, 8, 2),
                f(true, 8, 7),
                OutputStage::new(f(true, 8, 3))
            )
        );
        // Left shift to a finer output, and 16-bit codes.
        assert_eq!(
            AddWidth::I32,
            plan_matches_reference::<i16, i8, i16>(
                f(true, 12, 3),
                f(true, 8, 0),
                OutputStage::new(f(true, 16, 6))
            )
        );
        assert_eq!(
            AddWidth::I32,
            plan_matches_reference::<i16, i16, i8>(
                f(true, 16, 0),
                f(true, 16, 14),
                OutputStage::new(f(true, 4, -2))
            )
        );
        // Far-apart formats: the 64-bit path (2^15·2^40 < 2^62), then the 128-bit one.
        assert_eq!(
            AddWidth::I64,
            plan_matches_reference::<i16, i16, i16>(
                f(true, 16, 0),
                f(true, 16, 40),
                OutputStage::new(f(true, 16, 10))
            )
        );
        assert_eq!(
            AddWidth::I64,
            plan_matches_reference::<i16, i8, i8>(
                f(true, 16, 0),
                f(true, 8, 45),
                OutputStage::new(f(true, 8, 2))
            )
        );
        assert_eq!(
            AddWidth::I128,
            plan_matches_reference::<i16, i16, i16>(
                f(true, 16, 0),
                f(true, 16, 60),
                OutputStage::new(f(true, 16, 50))
            )
        );
        assert_ne!(
            AddWidth::I32,
            plan_matches_reference::<i8, i8, i16>(
                f(true, 8, 0),
                f(true, 8, 0),
                OutputStage::new(f(true, 16, 40))
            )
        );
        let p = AddPlan::new::<i8, i8, i8>(
            f(true, 8, 0),
            f(true, 8, 0),
            OutputStage::new(f(true, 8, 0)),
        )
        .unwrap();
        let err = p.run(&[1i8, 2], &[1i8], &mut [0i8; 2]).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    }

    fn rescale_matches_reference<A: Activation8or16, O: Activation8or16>(
        fi: QFormat,
        stage: OutputStage,
    ) -> AddWidth {
        let x = codes::<A>(fi, 997);
        let r = Rescale::new::<A, O>(fi, stage).unwrap();
        let mut got = vec![O::default(); x.len()];
        r.run(&x, &mut got).unwrap();
        let (lo, hi) = stage.code_range::<O>().unwrap();
        let shift = fi.frac_bits() - stage.format.frac_bits();
        for (&v, &g) in x.iter().zip(&got) {
            let want = requantize_even_wide(i128::from(v.to_code()), shift, lo, hi);
            assert_eq!(g.to_code(), want, "{v:?} {fi} -> {stage:?}");
        }
        match (r.narrow, r.fits_i64) {
            (true, _) => AddWidth::I32,
            (false, true) => AddWidth::I64,
            (false, false) => AddWidth::I128,
        }
    }

    #[test]
    fn rescale_is_bit_exact_with_the_reference_on_every_width() {
        let s = |bits, frac| QFormat::signed(bits, frac).unwrap();
        let u = |bits, frac| QFormat::unsigned(bits, frac).unwrap();
        let relu = |o: QFormat| OutputStage::new(o).with_activation(Activation::Relu);
        assert_eq!(
            AddWidth::I32,
            rescale_matches_reference::<i8, u8>(s(8, 4), relu(u(8, 3)))
        );
        assert_eq!(
            AddWidth::I32,
            rescale_matches_reference::<i8, u8>(s(8, 4), relu(u(8, 4)))
        );
        assert_eq!(
            AddWidth::I32,
            rescale_matches_reference::<u8, i8>(u(8, 0), OutputStage::new(s(8, 3)))
        );
        assert_eq!(
            AddWidth::I32,
            rescale_matches_reference::<i16, i8>(s(16, 20), OutputStage::new(s(6, -10)))
        );
        assert_eq!(
            AddWidth::I64,
            rescale_matches_reference::<i16, i16>(s(16, 0), OutputStage::new(s(16, 20)))
        );
        assert_eq!(
            AddWidth::I64,
            rescale_matches_reference::<i16, i8>(s(16, 40), OutputStage::new(s(8, 0)))
        );
        assert_eq!(
            AddWidth::I128,
            rescale_matches_reference::<i16, i16>(s(16, -20), OutputStage::new(s(16, 30)))
        );
        let clip = OutputStage::new(s(8, 2)).with_activation(Activation::Clip { min: -3, max: 9 });
        assert_eq!(
            AddWidth::I32,
            rescale_matches_reference::<i8, i8>(s(8, 5), clip)
        );
    }
}
