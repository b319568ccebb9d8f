//! Sub, Mul, Div and PRelu in integers, with NumPy broadcasting; either operand may be a constant
//! of the graph (a per-channel scale, a mean to subtract, a PReLU slope).
//!
//! All formats here have power-of-two steps 2^−e (mid-tread: value = q·2^−e). With input codes
//! `a` (2^−ea), `b` (2^−eb) and output 2^−eo, each op computes its exact rational result and rounds
//! it once to the output grid (ties to even, [`crate::kernels::reference::shift_right_even`]), then
//! saturates:
//!
//! - Sub: d = a·2^(e−ea) − b·2^(e−eb) at e = max(ea, eb); y = ⌊d·2^(eo−e)⌉.
//! - Mul: y = ⌊a·b·2^(eo−ea−eb)⌉.
//! - Div: y = ⌊a·2^(eo−ea+eb) / b⌉ (b = 0: the end of the output range on a's side, 0 for 0/0).
//! - PRelu (b the slope): y = ⌊a·2^(eo−ea)⌉ for a ≥ 0, ⌊a·b·2^(eo−ea−eb)⌉ otherwise.
//!
//! So the integer result is within half an output step of the exact result for the values the
//! codes stand for (inside the output range). A constant operand is first quantized to 16 bits
//! (signed, mid-tread, the finest power-of-two step that holds its largest magnitude), which adds
//! at most 2^−16 of its range. The arithmetic is 128-bit per element: these ops are rare in CNNs
//! (squeeze-and-excite gates, input normalisation) and never in a residual hot path.

use ndarray::{ArrayD, IxDyn, Zip};

use super::{Inputs, IntOp, Lower};
use crate::error::{Error, Result};
use crate::exec::act::{Act, Code, Kind, Visit1, dispatch1};
use crate::fixed::{Grid, QFormat, Rounding};
use crate::graph::Binary;
use crate::kernels::Scratch;
use crate::kernels::reference::shift_right_even;

/// The largest shift (either way) between formats that the step accepts: results then stay far
/// inside 128 bits (|codes| < 2^16, so |a·b·2^40| < 2^72).
const MAX_SHIFT: i32 = 40;

/// One operand of a binary step: a network value (its slot's position among the step's inputs)
/// or a constant's codes.
#[derive(Debug, Clone)]
pub(super) enum Operand {
    Value(QFormat),
    Constant(ArrayD<i64>, QFormat),
}

impl Operand {
    fn format(&self) -> QFormat {
        match self {
            Operand::Value(f) | Operand::Constant(_, f) => *f,
        }
    }
}

/// The two operands of a binary node, in input order: its activations' formats, or its constants
/// quantized to 16 bits (negated first with `negate_constants`, for an Add run as a Sub).
///
/// # Errors
/// [`Error::Unsupported`] (naming the node) where an activation's format is unknown; as
/// [`quantize_constant`].
pub(super) fn operands(cx: &Lower<'_>, negate_constants: bool) -> Result<(Operand, Operand)> {
    let mut values = cx.in_formats.iter();
    let mut operand = |i: usize| -> Result<Operand> {
        match cx.constants.get(i).copied().flatten() {
            Some(c) if negate_constants => quantize_constant(&cx.node.inputs[i], &c.mapv(|v| -v)),
            Some(c) => quantize_constant(&cx.node.inputs[i], c),
            None => values
                .next()
                .map(|&f| Operand::Value(f))
                .ok_or_else(|| cx.unsupported("input format unknown")),
        }
    };
    Ok((operand(0)?, operand(1)?))
}

/// A constant quantized to 16 bits: the finest power-of-two step at which its largest magnitude
/// still fits.
///
/// # Errors
/// [`Error::InvalidArgument`] for a NaN or infinite constant.
pub(super) fn quantize_constant(name: &str, c: &ArrayD<f32>) -> Result<Operand> {
    if let Some(i) = c.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidArgument {
            name: "constant",
            reason: format!("constant '{name}' holds a NaN or infinite value at flat index {i}"),
        });
    }
    let m = c.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let frac = if m == 0.0 {
        0
    } else {
        // 2^15 − 1 ≥ m·2^e: e = ⌊log2((2^15 − 1)/m)⌋, kept within the shifts the steps take.
        ((f64::from((1 << 15) - 1) / m).log2().floor() as i32).clamp(-24, 24)
    };
    let f = QFormat::signed(16, frac)?;
    let codes = c.mapv(|v| f.code_of(f64::from(v), Rounding::NearestEven).0);
    Ok(Operand::Constant(codes, f))
}

/// The prepared binary step.
#[derive(Debug)]
pub(super) struct BinaryStep {
    op: Binary,
    a: Operand,
    b: Operand,
    out: QFormat,
}

impl BinaryStep {
    /// Checks the formats: mid-tread grids, shifts within [`MAX_SHIFT`].
    ///
    /// # Errors
    /// [`Error::Unsupported`] (the caller names the node) for a mid-rise format or formats too far
    /// apart; [`Error::InvalidArgument`] for an output format the activations cannot hold.
    pub(super) fn new(op: Binary, a: Operand, b: Operand, out: QFormat) -> Result<Self> {
        Kind::of(out)?;
        let (fa, fb) = (a.format(), b.format());
        if [fa, fb, out].iter().any(|f| f.grid() == Grid::MidRise) {
            return Err(Error::Unsupported(
                "mid-rise formats in integer Sub/Mul/Div/PRelu".into(),
            ));
        }
        let (ea, eb, eo) = (fa.frac_bits(), fb.frac_bits(), out.frac_bits());
        let shifts = [ea - eb, eo - ea - eb, eo - ea + eb, eo - ea, eo - eb];
        if shifts.iter().any(|s| s.abs() > MAX_SHIFT) {
            return Err(Error::Unsupported(format!(
                "operand formats {fa} and {fb} and output {out} are more than 2^{MAX_SHIFT} apart"
            )));
        }
        Ok(Self { op, a, b, out })
    }

    /// The output code for input codes `a` and `b`: the scalar definition (module docs).
    pub(super) fn code(&self, a: i64, b: i64) -> i64 {
        let (ea, eb, eo) = (
            self.a.format().frac_bits(),
            self.b.format().frac_bits(),
            self.out.frac_bits(),
        );
        let (lo, hi) = (self.out.min_code(), self.out.max_code());
        let (a, b) = (i128::from(a), i128::from(b));
        let v = match self.op {
            Binary::Sub => {
                let e = ea.max(eb);
                let d = (a << (e - ea)) - (b << (e - eb));
                scale(d, eo - e)
            }
            Binary::Mul => scale(a * b, eo - ea - eb),
            Binary::PRelu if a >= 0 => scale(a, eo - ea),
            Binary::PRelu => scale(a * b, eo - ea - eb),
            Binary::Div => {
                if b == 0 {
                    // ±∞ saturates to the range's end; 0/0 (NaN in float) gives 0.
                    match a.signum() {
                        1 => i128::from(hi),
                        -1 => i128::from(lo),
                        _ => 0,
                    }
                } else {
                    let k = eo - ea + eb;
                    let (n, d) = if k >= 0 { (a << k, b) } else { (a, b << -k) };
                    div_even(n, d)
                }
            }
        };
        v.clamp(i128::from(lo), i128::from(hi)) as i64
    }

    fn operand(&self, which: &Operand, x: &Inputs<'_>, next: &mut usize) -> Result<ArrayD<i64>> {
        Ok(match which {
            Operand::Constant(c, _) => c.clone(),
            Operand::Value(_) => {
                let v = x.get(*next)?.codes_i64();
                *next += 1;
                v
            }
        })
    }
}

/// Codes already saturated to `f`'s range, stored in `f`'s activation type.
fn wrap_codes(y: ArrayD<i64>, f: QFormat) -> Result<Act> {
    struct W(ArrayD<i64>, QFormat);
    impl Visit1 for W {
        type Out = Act;
        fn visit<O: Code>(self) -> Act {
            O::wrap(self.0.mapv(O::from_code), self.1)
        }
    }
    Ok(dispatch1(Kind::of(f)?, W(y, f)))
}

/// v·2^s rounded to an integer (ties to even) for either sign of `s`.
fn scale(v: i128, s: i32) -> i128 {
    if s >= 0 {
        v << s
    } else {
        shift_right_even(v, (-s) as u32)
    }
}

/// n/d rounded to the nearest integer, ties to even (d ≠ 0).
fn div_even(n: i128, d: i128) -> i128 {
    let (n, d) = if d < 0 { (-n, -d) } else { (n, d) };
    let q = n.div_euclid(d);
    let r = n - q * d; // 0 ≤ r < d
    q + i128::from(2 * r > d || (2 * r == d && q & 1 == 1))
}

impl IntOp for BinaryStep {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let mut next = 0;
        let a = self.operand(&self.a, x, &mut next)?;
        let b = self.operand(&self.b, x, &mut next)?;
        let mismatch = || Error::ShapeMismatch {
            what: format!("operands of '{}'", x.step),
            expected: "shapes that broadcast".into(),
            found: format!("{:?} and {:?}", a.shape(), b.shape()),
        };
        let shape = crate::graph::shape::broadcast(a.shape(), b.shape())?;
        let av = a.broadcast(IxDyn(&shape)).ok_or_else(mismatch)?;
        let bv = b.broadcast(IxDyn(&shape)).ok_or_else(mismatch)?;
        let mut y = ArrayD::<i64>::zeros(IxDyn(&shape));
        Zip::from(&mut y)
            .and(&av)
            .and(&bv)
            .for_each(|y, &a, &b| *y = self.code(a, b));
        wrap_codes(y, self.out)
    }
}

/// A per-channel affine map y = s_c·x + t_c over axis 1 (a BatchNormalization that import could
/// not fold into a Conv or Gemm): `s` and `t` quantized to 16 bits each, the exact result of the
/// codes, a·s·2^−(ea+es) + t·2^−et, rounded once to the output format (ties to even).
#[derive(Debug)]
pub(super) struct AffineStep {
    input: QFormat,
    scale: Vec<i64>,
    scale_format: QFormat,
    shift: Vec<i64>,
    shift_format: QFormat,
    out: QFormat,
}

impl AffineStep {
    /// From the real per-channel scale and shift.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for non-finite or differently sized parameters, or an output
    /// format the activations cannot hold; [`Error::Unsupported`] for mid-rise formats or formats
    /// more than 2^40 apart.
    pub(super) fn new(
        name: &str,
        input: QFormat,
        scale: &[f64],
        shift: &[f64],
        out: QFormat,
    ) -> Result<Self> {
        Kind::of(out)?;
        if scale.len() != shift.len() {
            return Err(Error::InvalidArgument {
                name: "BatchNormalization",
                reason: format!(
                    "'{name}': {} scales for {} shifts",
                    scale.len(),
                    shift.len()
                ),
            });
        }
        let q = |v: &[f64], what: &str| -> Result<(Vec<i64>, QFormat)> {
            let a =
                ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.iter().map(|&x| x as f32).collect())
                    .map_err(|e| Error::Internal {
                        reason: e.to_string(),
                    })?;
            match quantize_constant(&format!("{name} {what}"), &a)? {
                Operand::Constant(c, f) => Ok((c.iter().copied().collect(), f)),
                Operand::Value(_) => Err(Error::Internal {
                    reason: "a constant quantized to a value".into(),
                }),
            }
        };
        let (scale, scale_format) = q(scale, "scale")?;
        let (shift, shift_format) = q(shift, "shift")?;
        if [input, out].iter().any(|f| f.grid() == Grid::MidRise) {
            return Err(Error::Unsupported(
                "mid-rise formats in an integer BatchNormalization".into(),
            ));
        }
        let (ea, es, et, eo) = (
            input.frac_bits(),
            scale_format.frac_bits(),
            shift_format.frac_bits(),
            out.frac_bits(),
        );
        let e = (ea + es).max(et);
        if [e - ea - es, e - et, eo - e]
            .iter()
            .any(|s| s.abs() > MAX_SHIFT)
        {
            return Err(Error::Unsupported(format!(
                "input {input}, parameters and output {out} are more than 2^{MAX_SHIFT} apart"
            )));
        }
        Ok(Self {
            input,
            scale,
            scale_format,
            shift,
            shift_format,
            out,
        })
    }

    /// The output code of input code `a` in channel `c`.
    pub(super) fn code(&self, a: i64, c: usize) -> i64 {
        let (ea, es, et, eo) = (
            self.input.frac_bits(),
            self.scale_format.frac_bits(),
            self.shift_format.frac_bits(),
            self.out.frac_bits(),
        );
        let e = (ea + es).max(et);
        let v = ((i128::from(a) * i128::from(self.scale[c])) << (e - ea - es))
            + (i128::from(self.shift[c]) << (e - et));
        scale(v, eo - e).clamp(
            i128::from(self.out.min_code()),
            i128::from(self.out.max_code()),
        ) as i64
    }
}

impl IntOp for AffineStep {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let a = x.get(0)?.codes_i64();
        if a.ndim() < 2 || a.shape()[1] != self.scale.len() {
            return Err(Error::ShapeMismatch {
                what: format!("input of '{}'", x.step),
                expected: format!("[N, {}, ...]", self.scale.len()),
                found: format!("{:?}", a.shape()),
            });
        }
        let mut y = a;
        for (c, mut lane) in y.axis_iter_mut(ndarray::Axis(1)).enumerate() {
            lane.mapv_inplace(|q| self.code(q, c));
        }
        wrap_codes(y, self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(op: Binary, fa: QFormat, fb: QFormat, fo: QFormat) -> BinaryStep {
        BinaryStep::new(op, Operand::Value(fa), Operand::Value(fb), fo).unwrap()
    }

    /// Every code pair of two 6-bit formats: the integer result is the exact result rounded once
    /// (within half an output step, ties to even), or saturated.
    #[test]
    fn every_code_pair_is_the_exact_result_rounded_once() {
        let fa = QFormat::signed(6, 3).unwrap();
        let fb = QFormat::signed(6, 4).unwrap();
        let fo = QFormat::signed(8, 4).unwrap();
        for op in [Binary::Sub, Binary::Mul, Binary::Div, Binary::PRelu] {
            let s = step(op, fa, fb, fo);
            for a in fa.min_code()..=fa.max_code() {
                for b in fb.min_code()..=fb.max_code() {
                    let (x, y) = (fa.value_of(a), fb.value_of(b));
                    let exact = match op {
                        Binary::Sub => x - y,
                        Binary::Mul => x * y,
                        Binary::Div if b == 0 => continue,
                        Binary::Div => x / y,
                        Binary::PRelu => {
                            if x >= 0.0 {
                                x
                            } else {
                                x * y
                            }
                        }
                    };
                    let c = s.code(a, b);
                    let want = fo.code_of(exact, Rounding::NearestEven).0;
                    assert_eq!(c, want, "{op:?} {a} {b}: {exact}");
                    if exact < fo.max_value() && exact > fo.min_value() {
                        assert!((fo.value_of(c) - exact).abs() <= fo.step() / 2.0);
                    }
                }
            }
        }
    }

    /// Every input code of every channel: the exact affine result of the quantized parameters,
    /// rounded once, and within half an output step plus the parameters' rounding of float.
    #[test]
    fn affine_is_the_exact_result_rounded_once() {
        let fi = QFormat::signed(8, 4).unwrap();
        let fo = QFormat::signed(8, 3).unwrap();
        let (s, t) = ([0.8, -1.7, 0.05], [0.3, -2.25, 1.0]);
        let step = AffineStep::new("bn", fi, &s, &t, fo).unwrap();
        for c in 0..3 {
            for a in fi.min_code()..=fi.max_code() {
                let sq = step.scale_format.value_of(step.scale[c]);
                let tq = step.shift_format.value_of(step.shift[c]);
                let exact = fi.value_of(a) * sq + tq;
                assert_eq!(step.code(a, c), fo.code_of(exact, Rounding::NearestEven).0);
                let float = fi.value_of(a) * s[c] + t[c];
                if float.abs() < fo.max_value() - fo.step() {
                    let err = (fo.value_of(step.code(a, c)) - float).abs();
                    assert!(err <= fo.step() / 2.0 + 1e-3, "c {c} a {a}: {err}");
                }
            }
        }
        let e = AffineStep::new("bn", fi, &s, &t[..2], fo).unwrap_err();
        assert!(e.to_string().contains("3 scales for 2 shifts"), "{e}");
    }

    #[test]
    fn division_by_zero_saturates_with_the_dividend_sign() {
        let f = QFormat::signed(8, 4).unwrap();
        let s = step(Binary::Div, f, f, f);
        assert_eq!(s.code(5, 0), 127);
        assert_eq!(s.code(-5, 0), -128);
        assert_eq!(s.code(0, 0), 0);
        assert_eq!(div_even(5, 2), 2);
        assert_eq!(div_even(7, 2), 4);
        assert_eq!(div_even(-5, 2), -2);
        assert_eq!(div_even(5, -2), -2);
    }

    #[test]
    fn constants_get_sixteen_bits_and_bad_ones_are_refused() {
        let c = ndarray::arr1(&[0.5f32, -3.0, 1.25]).into_dyn();
        let Operand::Constant(codes, f) = quantize_constant("k", &c).unwrap() else {
            panic!("not a constant");
        };
        assert_eq!(f.frac_bits(), 13); // 3·2^13 = 24,576 ≤ 32,767 < 3·2^14
        assert_eq!(codes.as_slice().unwrap(), &[4096, -24576, 10240]);
        let bad = ndarray::arr1(&[1.0f32, f32::NAN]).into_dyn();
        let e = quantize_constant("k", &bad).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("'k'"),
            "{e}"
        );
        let far = QFormat::signed(8, 60).unwrap();
        let e = BinaryStep::new(
            Binary::Mul,
            Operand::Value(far),
            Operand::Value(QFormat::signed(8, -10).unwrap()),
            QFormat::signed(8, 0).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
    }
}
