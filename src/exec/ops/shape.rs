//! Shape ops: Flatten, Reshape, Identity, Slice and Pad move codes and keep their input's format
//! (Pad's value must be a code of it); Concat brings its inputs to its own output format (round half
//! up, as the kernels requantize) and joins them.

use std::marker::PhantomData;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};

use super::{Grad, Inputs, IntOp, Lower, Lowered, OpFamily, contiguous, shape_err};
use crate::error::Result;
use crate::exec::act::{Act, Code, Kind, Visit1, dispatch1, wrong_storage};
use crate::fixed::QFormat;
use crate::graph::shape::{axis as resolve_axis, slice_plan};
use crate::graph::{Node, Op};
use crate::kernels::Scratch;

/// Flatten, Reshape, Identity, Slice, Pad, Concat.
pub(super) struct ShapeOps;

impl OpFamily for ShapeOps {
    fn eval_float(
        &self,
        op: &Op,
        x: &[ArrayViewD<'_, f32>],
        out_shape: &[usize],
    ) -> Result<ArrayD<f32>> {
        match op {
            Op::Flatten { .. } | Op::Reshape { .. } => reshape(&x[0], out_shape),
            Op::Slice {
                starts,
                ends,
                axes,
                steps,
            } => slice(&x[0], starts, ends, axes, steps),
            Op::Pad { pads, value } => pad(&x[0], pads, *value, out_shape),
            Op::Concat { axis } => concat(x, *axis),
            _ => Ok(x[0].to_owned()),
        }
    }

    fn vjp_float(&self, op: &Op, g: &Grad<'_, '_>) -> Result<Vec<Option<ArrayD<f32>>>> {
        let mut out: Vec<Option<ArrayD<f32>>> = vec![None; g.x.len()];
        match op {
            Op::Concat { axis } => {
                let a = resolve_axis(*axis, g.dy.ndim(), false)?;
                let mut at = 0;
                for (i, x) in g.x.iter().enumerate() {
                    let len = x.shape()[a];
                    if g.needs(i) {
                        let part = g.dy.slice_axis(Axis(a), Slice::from(at..at + len));
                        out[i] = Some(part.to_owned());
                    }
                    at += len;
                }
            }
            _ if !g.needs(0) => {}
            Op::Slice {
                starts,
                ends,
                axes,
                steps,
            } => {
                let mut dx = ArrayD::<f32>::zeros(g.x[0].raw_dim());
                let plan = slice_plan(g.x[0].shape(), starts, ends, axes, steps)?;
                let mut v = dx.view_mut();
                for (ax, first, len, step) in plan {
                    v.slice_axis_inplace(Axis(ax), slice_of(first, len, step));
                }
                v.assign(&g.dy);
                out[0] = Some(dx);
            }
            Op::Pad { pads, .. } => {
                // The adjoint of padding: the part of dy that came from x, where it came from.
                let x = &g.x[0];
                let r = x.ndim();
                let mut dx = ArrayD::<f32>::zeros(x.raw_dim());
                if !g.dy.is_empty() {
                    let src_range = |ax: usize| -> (usize, usize) {
                        let d = x.shape()[ax] as i64;
                        let lo = (-pads[ax]).clamp(0, d);
                        let hi = (d + pads[ax + r]).clamp(lo, d);
                        (lo as usize, hi as usize)
                    };
                    let from = g.dy.slice_each_axis(|a| {
                        let (lo, hi) = src_range(a.axis.index());
                        let at = pads[a.axis.index()].max(0) as usize;
                        Slice::new(at as isize, Some((at + hi - lo) as isize), 1)
                    });
                    dx.slice_each_axis_mut(|a| {
                        let (lo, hi) = src_range(a.axis.index());
                        Slice::new(lo as isize, Some(hi as isize), 1)
                    })
                    .assign(&from);
                }
                out[0] = Some(dx);
            }
            // Flatten, Reshape, Identity: the same elements in the same order.
            _ => {
                out[0] = Some(
                    ArrayD::from_shape_vec(g.x[0].raw_dim(), contiguous(&g.dy).into_owned())
                        .map_err(shape_err)?,
                );
            }
        }
        Ok(out)
    }

    fn lower_fixed(&self, cx: &Lower<'_>) -> Result<Lowered> {
        let in_fmt = cx.in_format()?;
        let op: Arc<dyn IntOp> = match &cx.node.op {
            Op::Flatten { .. } | Op::Reshape { .. } => Arc::new(Reshape(cx.node.clone())),
            Op::Identity => Arc::new(Identity),
            Op::Slice { .. } => Arc::new(SliceStep(cx.node.op.clone())),
            Op::Pad { pads, value } => {
                let code = f64::from(*value) / in_fmt.step();
                if code.fract() != 0.0
                    || code < in_fmt.min_code() as f64
                    || code > in_fmt.max_code() as f64
                {
                    return Err(cx.unsupported(&format!(
                        "pad value {value} is not a code of the input format {in_fmt}"
                    )));
                }
                Arc::new(PadStep {
                    pads: pads.clone(),
                    code: code as i64,
                })
            }
            Op::Concat { axis } => {
                let of = cx.format_of(&cx.node.output)?;
                let step = ConcatStep {
                    axis: *axis,
                    out: of,
                };
                return Ok(Lowered {
                    op: dispatch1(Kind::of(of)?, BuildConcat(step)),
                    format: of,
                    observed: true,
                });
            }
            _ => return Err(cx.unsupported("not supported by the fixed-point network")),
        };
        Ok(Lowered {
            op,
            format: in_fmt,
            observed: false,
        })
    }
}

/// Flatten or Reshape: the node, whose output shape `graph::shape::infer` gives for the run's input.
#[derive(Debug)]
pub(super) struct Reshape(pub(super) Node);

impl IntOp for Reshape {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let a = x.take_first()?;
        let shape = crate::graph::shape::infer(&self.0, &[a.shape()])?;
        a.reshape(&shape)
    }
}

/// A Slice of codes (format kept).
#[derive(Debug)]
struct SliceStep(Op);

impl IntOp for SliceStep {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let Op::Slice {
            starts,
            ends,
            axes,
            steps,
        } = &self.0
        else {
            return Err(wrong_storage(x.step));
        };
        struct S<'a>(&'a Act, [&'a [i64]; 4]);
        impl Visit1 for S<'_> {
            type Out = Result<Act>;
            fn visit<A: Code>(self) -> Result<Act> {
                let v = A::view(self.0).ok_or_else(|| wrong_storage("slice"))?;
                let [st, en, ax, sp] = self.1;
                Ok(A::wrap(slice(&v, st, en, ax, sp)?, self.0.format()))
            }
        }
        let a = x.get(0)?;
        dispatch1(Kind::of(a.format())?, S(a, [starts, ends, axes, steps]))
    }
}

/// A constant Pad of codes (format kept; the value is the code `code`).
#[derive(Debug)]
struct PadStep {
    pads: Vec<i64>,
    code: i64,
}

impl IntOp for PadStep {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        struct P<'a>(&'a Act, &'a PadStep);
        impl Visit1 for P<'_> {
            type Out = Result<Act>;
            fn visit<A: Code>(self) -> Result<Act> {
                let v = A::view(self.0).ok_or_else(|| wrong_storage("pad"))?;
                let out_shape = crate::graph::shape::pad(v.shape(), &self.1.pads)?;
                let y = pad(&v, &self.1.pads, A::from_code(self.1.code), &out_shape)?;
                Ok(A::wrap(y, self.0.format()))
            }
        }
        let a = x.get(0)?;
        dispatch1(Kind::of(a.format())?, P(a, self))
    }
}

/// Concat: every input requantized to the output format, then joined.
#[derive(Debug, Clone, Copy)]
struct ConcatStep {
    axis: i64,
    out: QFormat,
}

struct BuildConcat(ConcatStep);

impl Visit1 for BuildConcat {
    type Out = Arc<dyn IntOp>;
    fn visit<O: Code>(self) -> Self::Out {
        Arc::new(Concat::<O>(self.0, PhantomData))
    }
}

#[derive(Debug)]
struct Concat<O>(ConcatStep, PhantomData<fn() -> O>);

impl<O: Code> IntOp for Concat<O> {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let fo = self.0.out;
        let parts = (0..x.ids.len())
            .map(|i| {
                let a = x.get(i)?;
                let shift = a.format().frac_bits() - fo.frac_bits();
                Ok(a.codes_i64().mapv(|q| {
                    O::from_code(shift_round(q, shift).clamp(fo.min_code(), fo.max_code()))
                }))
            })
            .collect::<Result<Vec<ArrayD<O>>>>()?;
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        Ok(O::wrap(concat(&views, self.0.axis)?, fo))
    }
}

/// q·2^(−shift), rounding ties to even for right shifts (unbiased where ties are frequent:
/// [`crate::kernels::reference::shift_right_even`]).
pub(crate) fn shift_round(q: i64, shift: i32) -> i64 {
    if shift > 0 {
        // q >> s, then up where the remainder passes half (or is half and the quotient odd): exact
        // in i64, as (q >> s) << s never exceeds |q|.
        let s = shift.min(63) as u32;
        let f = q >> s;
        let r = q - (f << s);
        let half = 1i64 << (s - 1);
        f + i64::from(r > half || (r == half && f & 1 == 1))
    } else {
        q << (-shift).min(40) as u32
    }
}

/// Passes its input through (also a Relu/Clip fused into the preceding weighted layer).
#[derive(Debug)]
pub(crate) struct Identity;

impl IntOp for Identity {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        x.take_first()
    }
}

// ---------------------------------------------------------------- f32

/// Row-major reinterpretation (Flatten, Reshape).
pub(super) fn reshape(x: &ArrayViewD<'_, f32>, out_shape: &[usize]) -> Result<ArrayD<f32>> {
    ArrayD::from_shape_vec(IxDyn(out_shape), contiguous(x).into_owned()).map_err(shape_err)
}

/// ONNX Slice (any element type: float values or integer codes).
pub(super) fn slice<T: Clone>(
    x: &ArrayViewD<'_, T>,
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
) -> Result<ArrayD<T>> {
    let plan = slice_plan(x.shape(), starts, ends, axes, steps)?;
    let mut v = x.view();
    for (ax, first, len, step) in plan {
        v.slice_axis_inplace(Axis(ax), slice_of(first, len, step));
    }
    Ok(v.to_owned())
}

/// The ndarray slice of `len` elements from `first` by `step` (negative: backwards).
fn slice_of(first: usize, len: usize, step: i64) -> Slice {
    if len == 0 {
        Slice::new(0, Some(0), 1)
    } else if step > 0 {
        let last = first + (len - 1) * step as usize;
        Slice::new(first as isize, Some(last as isize + 1), step as isize)
    } else {
        let last = first - (len - 1) * step.unsigned_abs() as usize;
        Slice::new(last as isize, Some(first as isize + 1), step as isize)
    }
}

/// Constant padding; negative pads crop (any element type).
pub(super) fn pad<T: Clone>(
    x: &ArrayViewD<'_, T>,
    pads: &[i64],
    value: T,
    out_shape: &[usize],
) -> Result<ArrayD<T>> {
    let r = x.ndim();
    let mut out = ArrayD::from_elem(IxDyn(out_shape), value);
    if out.is_empty() {
        return Ok(out);
    }
    // Per axis: the part of the input kept, and where it lands in the output.
    let src_range = |ax: usize| -> (usize, usize) {
        let d = x.shape()[ax] as i64;
        let lo = (-pads[ax]).clamp(0, d);
        let hi = (d + pads[ax + r]).clamp(lo, d);
        (lo as usize, hi as usize)
    };
    let src = x.slice_each_axis(|a| {
        let (lo, hi) = src_range(a.axis.index());
        Slice::new(lo as isize, Some(hi as isize), 1)
    });
    let mut dst = out.slice_each_axis_mut(|a| {
        let (lo, hi) = src_range(a.axis.index());
        let at = pads[a.axis.index()].max(0) as usize;
        Slice::new(at as isize, Some((at + hi - lo) as isize), 1)
    });
    dst.assign(&src);
    Ok(out)
}

/// Join along `axis` (any element type).
pub(super) fn concat<T: Clone>(xs: &[ArrayViewD<'_, T>], axis: i64) -> Result<ArrayD<T>> {
    let a = resolve_axis(axis, xs.first().map_or(0, |x| x.ndim()), false)?;
    ndarray::concatenate(Axis(a), xs).map_err(shape_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    #[test]
    fn pads_and_crops() {
        let x = Array::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let y = pad(&x.view(), &[1, -1, 0, 2], 9.0, &[3, 4]).unwrap();
        assert_eq!(
            y.as_slice().unwrap(),
            &[9.0, 9.0, 9.0, 9.0, 2.0, 3.0, 9.0, 9.0, 5.0, 6.0, 9.0, 9.0]
        );
    }

    #[test]
    fn negative_step_slice_reverses() {
        let x = Array::from_shape_vec(IxDyn(&[5]), vec![0.0, 1.0, 2.0, 3.0, 4.0]).unwrap();
        let y = slice(&x.view(), &[-1], &[i64::MIN], &[0], &[-2]).unwrap();
        assert_eq!(y.as_slice().unwrap(), &[4.0, 2.0, 0.0]);
    }
}

#[cfg(test)]
mod integer_tests {
    use super::shift_round;

    #[test]
    fn shift_round_is_ties_to_even_and_exact_left_shift() {
        assert_eq!(shift_round(5, 1), 2); // 2.5 -> 2
        assert_eq!(shift_round(7, 1), 4); // 3.5 -> 4
        assert_eq!(shift_round(-5, 1), -2); // -2.5 -> -2
        assert_eq!(shift_round(-6, 2), -2); // -1.5 -> -2
        assert_eq!(shift_round(-7, 2), -2); // -1.75 -> -2
        assert_eq!(shift_round(9, 3), 1); // 1.125 -> 1
        assert_eq!(shift_round(7, 0), 7);
        assert_eq!(shift_round(-3, -2), -12);
        // The i64 form agrees with the 128-bit reference, extremes included.
        for s in 1..=63 {
            for q in [
                i64::MIN,
                i64::MIN + 1,
                -65536,
                -32769,
                -3,
                -1,
                0,
                1,
                3,
                32767,
                65535,
                i64::MAX,
            ]
            .into_iter()
            .chain((-300..300).map(|k| k * 7))
            {
                let want = crate::kernels::reference::shift_right_even(i128::from(q), s as u32);
                assert_eq!(i128::from(shift_round(q, s)), want, "q {q} s {s}");
            }
        }
    }
}
