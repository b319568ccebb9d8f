//! Shape ops: Flatten, Reshape and Identity move codes (keeping their format); Slice, Pad and Concat
//! run in the float executor only.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};

use super::{Inputs, IntOp, Lower, Lowered, OpFamily, contiguous, shape_err};
use crate::error::Result;
use crate::exec::act::Act;
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

    fn lower_fixed(&self, cx: &Lower<'_>) -> Result<Lowered> {
        let op: Arc<dyn IntOp> = match cx.node.op {
            Op::Flatten { .. } | Op::Reshape { .. } => Arc::new(Reshape(cx.node.clone())),
            Op::Identity => Arc::new(Identity),
            _ => return Err(cx.unsupported("not supported by the fixed-point network")),
        };
        Ok(Lowered {
            op,
            format: cx.in_format()?,
            observed: false,
        })
    }
}

/// Flatten or Reshape: the node, whose output shape `graph::shape::infer` gives for the run's input.
#[derive(Debug)]
struct Reshape(Node);

impl IntOp for Reshape {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let a = x.take_first()?;
        let shape = crate::graph::shape::infer(&self.0, &[a.shape()])?;
        a.reshape(&shape)
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

/// ONNX Slice.
pub(super) fn slice(
    x: &ArrayViewD<'_, f32>,
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
) -> Result<ArrayD<f32>> {
    let plan = slice_plan(x.shape(), starts, ends, axes, steps)?;
    let mut v = x.view();
    for (ax, first, len, step) in plan {
        let s = if len == 0 {
            Slice::new(0, Some(0), 1)
        } else if step > 0 {
            let last = first + (len - 1) * step as usize;
            Slice::new(first as isize, Some(last as isize + 1), step as isize)
        } else {
            let last = first - (len - 1) * step.unsigned_abs() as usize;
            Slice::new(last as isize, Some(first as isize + 1), step as isize)
        };
        v.slice_axis_inplace(Axis(ax), s);
    }
    Ok(v.to_owned())
}

/// Constant padding; negative pads crop.
pub(super) fn pad(
    x: &ArrayViewD<'_, f32>,
    pads: &[i64],
    value: f32,
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
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

/// Join along `axis`.
pub(super) fn concat(xs: &[ArrayViewD<'_, f32>], axis: i64) -> Result<ArrayD<f32>> {
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
