//! Float-only ops (the integer network refuses them, naming the node): element-wise functions
//! (Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu), broadcasting Sub/Mul/Div/PRelu, layout moves
//! (Transpose, Squeeze, Unsqueeze), reductions (GlobalMaxPool, ReduceMean) and Softmax.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};

use super::{OpFamily, broadcast_zip, contiguous, shape_err};
use crate::error::{Error, Result};
use crate::graph::shape::axis as resolve_axis;
use crate::graph::{Binary, Op, Unary};

/// The float-only ops.
pub(super) struct FloatOnly;

impl OpFamily for FloatOnly {
    fn eval_float(
        &self,
        op: &Op,
        x: &[ArrayViewD<'_, f32>],
        out_shape: &[usize],
    ) -> Result<ArrayD<f32>> {
        match op {
            Op::Unary(f) => Ok(x[0].mapv(|v| unary(*f, v))),
            Op::Binary(f) => binary(*f, &x[0], &x[1], out_shape),
            Op::Transpose { perm } => {
                let reversed: Vec<usize> = (0..x[0].ndim()).rev().collect();
                let perm = if perm.is_empty() { &reversed } else { perm };
                Ok(x[0]
                    .view()
                    .permuted_axes(IxDyn(perm))
                    .as_standard_layout()
                    .into_owned())
            }
            Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                ArrayD::from_shape_vec(IxDyn(out_shape), contiguous(&x[0]).into_owned())
                    .map_err(shape_err)
            }
            Op::GlobalMaxPool => reduce(&x[0], &[2, 3], out_shape, Reduce::Max),
            Op::ReduceMean { axes, .. } => {
                let r = x[0].ndim();
                let mut axes = axes
                    .iter()
                    .map(|&a| resolve_axis(a, r, false))
                    .collect::<Result<Vec<_>>>()?;
                if axes.is_empty() {
                    axes = (0..r).collect();
                }
                reduce(&x[0], &axes, out_shape, Reduce::Mean)
            }
            Op::Softmax { axis, coerce_2d } => softmax(&x[0], *axis, *coerce_2d),
            other => Err(Error::Internal {
                reason: format!("{} is not a float-only op", other.name()),
            }),
        }
    }
}

fn unary(f: Unary, v: f32) -> f32 {
    match f {
        Unary::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        Unary::Tanh => v.tanh(),
        Unary::HardSigmoid { alpha, beta } => (alpha * v + beta).clamp(0.0, 1.0),
        Unary::HardSwish => v * (v / 6.0 + 0.5).clamp(0.0, 1.0),
        Unary::LeakyRelu { alpha } => {
            if v >= 0.0 {
                v
            } else {
                alpha * v
            }
        }
    }
}

fn binary(
    f: Binary,
    a: &ArrayViewD<'_, f32>,
    b: &ArrayViewD<'_, f32>,
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
    broadcast_zip(a, b, out_shape, |x, y| match f {
        Binary::Sub => x - y,
        Binary::Mul => x * y,
        Binary::Div => x / y,
        Binary::PRelu => {
            if x >= 0.0 {
                x
            } else {
                y * x
            }
        }
    })
}

#[derive(Clone, Copy)]
enum Reduce {
    Max,
    Mean,
}

/// Max or mean over `axes` (accumulated in f64 for the mean), reshaped to `out_shape`.
fn reduce(
    x: &ArrayViewD<'_, f32>,
    axes: &[usize],
    out_shape: &[usize],
    how: Reduce,
) -> Result<ArrayD<f32>> {
    let mut sorted = axes.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    let mut acc = x.mapv(f64::from);
    for &a in &sorted {
        acc = match how {
            Reduce::Max => acc.fold_axis(Axis(a), f64::NEG_INFINITY, |m, &v| m.max(v)),
            Reduce::Mean => {
                let n = acc.shape()[a] as f64;
                acc.sum_axis(Axis(a)) / n
            }
        };
    }
    let values: Vec<f32> = acc.iter().map(|&v| v as f32).collect();
    ArrayD::from_shape_vec(IxDyn(out_shape), values).map_err(shape_err)
}

/// Softmax along `axis`, or over the flattened axes from `axis` on (`coerce_2d`).
fn softmax(x: &ArrayViewD<'_, f32>, axis: i64, coerce_2d: bool) -> Result<ArrayD<f32>> {
    let r = x.ndim();
    let a = resolve_axis(axis, r, coerce_2d)?;
    let mut out = x.as_standard_layout().into_owned();
    let normalise = |lane: &mut [f32]| {
        let m = lane.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0f32;
        for v in lane.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        for v in lane.iter_mut() {
            *v /= sum;
        }
    };
    if coerce_2d {
        let inner: usize = x.shape()[a..].iter().product();
        if let Some(s) = out.as_slice_mut() {
            for row in s.chunks_mut(inner.max(1)) {
                normalise(row);
            }
        }
    } else {
        for mut lane in out.lanes_mut(Axis(a)) {
            let mut v: Vec<f32> = lane.to_vec();
            normalise(&mut v);
            lane.iter_mut().zip(v).for_each(|(o, n)| *o = n);
        }
    }
    Ok(out)
}
