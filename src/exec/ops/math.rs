//! Float-only ops (the integer network refuses them, naming the node): element-wise functions
//! (Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu), broadcasting Sub/Mul/Div/PRelu, layout moves
//! (Transpose, Squeeze, Unsqueeze), reductions (GlobalMaxPool, ReduceMean) and Softmax.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};

use super::{Grad, OpFamily, broadcast_zip, contiguous, reduce_to_shape, shape_err};
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

    fn vjp_float(&self, op: &Op, g: &Grad<'_, '_>) -> Result<Vec<Option<ArrayD<f32>>>> {
        let mut out: Vec<Option<ArrayD<f32>>> = vec![None; g.x.len()];
        match op {
            Op::Binary(f) => {
                let (a, b) = (&g.x[0], &g.x[1]);
                let shape = g.dy.shape().to_vec();
                // ∂y/∂a and ∂y/∂b element by element, over the broadcast shape, times dy.
                let da = |x: f32, y: f32| -> f32 {
                    match f {
                        Binary::Sub => 1.0,
                        Binary::Mul => y,
                        Binary::Div => 1.0 / y,
                        Binary::PRelu => {
                            if x >= 0.0 {
                                1.0
                            } else {
                                y
                            }
                        }
                    }
                };
                let db = |x: f32, y: f32| -> f32 {
                    match f {
                        Binary::Sub => -1.0,
                        Binary::Mul => x,
                        Binary::Div => -x / (y * y),
                        Binary::PRelu => {
                            if x >= 0.0 {
                                0.0
                            } else {
                                x
                            }
                        }
                    }
                };
                for (i, o) in out.iter_mut().enumerate().take(2) {
                    if g.needs(i) {
                        let mut d = if i == 0 {
                            broadcast_zip(a, b, &shape, da)?
                        } else {
                            broadcast_zip(a, b, &shape, db)?
                        };
                        d *= &g.dy;
                        *o = Some(reduce_to_shape(&d.view(), g.x[i].shape())?);
                    }
                }
            }
            _ if !g.needs(0) => {}
            Op::Unary(f) => {
                let mut d = g.dy.to_owned();
                ndarray::Zip::from(&mut d)
                    .and(&g.x[0])
                    .and(&g.y)
                    .for_each(|d, &x, &y| *d *= unary_slope(*f, x, y));
                out[0] = Some(d);
            }
            Op::Transpose { perm } => {
                let r = g.x[0].ndim();
                let reversed: Vec<usize> = (0..r).rev().collect();
                let perm = if perm.is_empty() { &reversed } else { perm };
                let mut inverse = vec![0; r];
                for (i, &p) in perm.iter().enumerate() {
                    inverse[p] = i;
                }
                out[0] = Some(
                    g.dy.view()
                        .permuted_axes(IxDyn(&inverse))
                        .as_standard_layout()
                        .into_owned(),
                );
            }
            Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                out[0] = Some(
                    ArrayD::from_shape_vec(g.x[0].raw_dim(), contiguous(&g.dy).into_owned())
                        .map_err(shape_err)?,
                );
            }
            Op::GlobalMaxPool => {
                // Each plane's gradient goes to its first maximum.
                let x = contiguous(&g.x[0]);
                let dy = contiguous(&g.dy);
                let planes = dy.len().max(1);
                let hw = x.len() / planes;
                let mut dx = vec![0f32; x.len()];
                for (p, &d) in dy.iter().enumerate() {
                    let plane = &x[p * hw..(p + 1) * hw];
                    let best = plane
                        .iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                        )
                        .0;
                    if hw > 0 {
                        dx[p * hw + best] += d;
                    }
                }
                out[0] = Some(ArrayD::from_shape_vec(g.x[0].raw_dim(), dx).map_err(shape_err)?);
            }
            Op::ReduceMean { axes, .. } => {
                let r = g.x[0].ndim();
                let mut axes = axes
                    .iter()
                    .map(|&a| resolve_axis(a, r, false))
                    .collect::<Result<Vec<_>>>()?;
                if axes.is_empty() {
                    axes = (0..r).collect();
                }
                // dy with the reduced axes as size 1, spread evenly over them.
                let kept: Vec<usize> = (0..r)
                    .map(|a| {
                        if axes.contains(&a) {
                            1
                        } else {
                            g.x[0].shape()[a]
                        }
                    })
                    .collect();
                let count: usize = (0..r)
                    .filter(|a| axes.contains(a))
                    .map(|a| g.x[0].shape()[a])
                    .product();
                let d = ArrayD::from_shape_vec(IxDyn(&kept), contiguous(&g.dy).into_owned())
                    .map_err(shape_err)?;
                let spread = d
                    .broadcast(g.x[0].raw_dim())
                    .ok_or_else(|| Error::Internal {
                        reason: "ReduceMean backward: broadcast failed".into(),
                    })?
                    .mapv(|v| v / count.max(1) as f32);
                out[0] = Some(spread);
            }
            Op::Softmax { axis, coerce_2d } => {
                // dx = y ⊙ (dy − Σ dy ⊙ y) over each softmax lane.
                let r = g.x[0].ndim();
                let a = resolve_axis(*axis, r, *coerce_2d)?;
                let y = g.y.as_standard_layout().into_owned();
                let dy = g.dy.as_standard_layout().into_owned();
                let mut dx = y.clone();
                let lane_grad = |yl: &[f32], dl: &[f32], out: &mut [f32]| {
                    let dot: f32 = yl.iter().zip(dl).map(|(y, d)| y * d).sum();
                    for ((o, &y), &d) in out.iter_mut().zip(yl).zip(dl) {
                        *o = y * (d - dot);
                    }
                };
                if *coerce_2d {
                    let inner: usize = g.x[0].shape()[a..].iter().product::<usize>().max(1);
                    if let (Some(ys), Some(ds), Some(xs)) =
                        (y.as_slice(), dy.as_slice(), dx.as_slice_mut())
                    {
                        for ((yl, dl), ol) in ys
                            .chunks(inner)
                            .zip(ds.chunks(inner))
                            .zip(xs.chunks_mut(inner))
                        {
                            lane_grad(yl, dl, ol);
                        }
                    }
                } else {
                    for ((yl, dl), mut ol) in y
                        .lanes(Axis(a))
                        .into_iter()
                        .zip(dy.lanes(Axis(a)))
                        .zip(dx.lanes_mut(Axis(a)))
                    {
                        let (yv, dv) = (yl.to_vec(), dl.to_vec());
                        let mut o = vec![0f32; yv.len()];
                        lane_grad(&yv, &dv, &mut o);
                        ol.iter_mut().zip(o).for_each(|(t, v)| *t = v);
                    }
                }
                out[0] = Some(dx);
            }
            other => {
                return Err(Error::Internal {
                    reason: format!("{} is not a float-only op", other.name()),
                });
            }
        }
        Ok(out)
    }
}

/// dy/dx of [`unary`] at input `x` with output `y`.
fn unary_slope(f: Unary, x: f32, y: f32) -> f32 {
    match f {
        Unary::Sigmoid => y * (1.0 - y),
        Unary::Tanh => 1.0 - y * y,
        Unary::HardSigmoid { alpha, beta } => {
            let t = alpha * x + beta;
            if t > 0.0 && t < 1.0 { alpha } else { 0.0 }
        }
        Unary::HardSwish => {
            if x <= -3.0 {
                0.0
            } else if x >= 3.0 {
                1.0
            } else {
                (2.0 * x + 3.0) / 6.0
            }
        }
        Unary::LeakyRelu { alpha } => {
            if x >= 0.0 {
                1.0
            } else {
                alpha
            }
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
