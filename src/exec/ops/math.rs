//! Element-wise functions (Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu), broadcasting
//! Sub/Mul/Div/PRelu, layout moves (Transpose, Squeeze, Unsqueeze), reductions (GlobalMaxPool,
//! ReduceMean) and Softmax.
//!
//! In integers: the element-wise functions are lookup tables over the input codes ([`super::lut`]);
//! Sub/Mul/Div/PRelu compute the exact result and round it once ([`super::arith`]; a constant
//! operand is quantized to 16 bits); the layout moves and GlobalMaxPool move codes and keep the
//! format; ReduceMean over H and W is the integer global average pool; Softmax runs only as the
//! network's last op, on the dequantized output ([`crate::exec::FixedNetwork::run`]).

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};

use super::arith::{BinaryStep, operands};
use super::lut::BuildLut;
use super::{
    Grad, Inputs, IntOp, Lower, Lowered, OpFamily, broadcast_zip, contiguous, reduce_to_shape,
    shape_err,
};
use crate::error::{Error, Result};
use crate::exec::act::{Act, Code, Kind, Visit1, dispatch1, dispatch2, wrong_storage};
use crate::graph::shape::axis as resolve_axis;
use crate::graph::{Binary, Op, Unary};
use crate::kernels::Scratch;

/// Unary and binary functions, layout moves, reductions, Softmax.
pub(super) struct MathOps;

impl OpFamily for MathOps {
    fn lower_fixed(&self, cx: &Lower<'_>) -> Result<Lowered> {
        let keep = |op: Arc<dyn IntOp>| -> Result<Lowered> {
            Ok(Lowered {
                op,
                format: cx.in_format()?,
                observed: false,
            })
        };
        match &cx.node.op {
            Op::Unary(f) => {
                let (fi, fo) = (cx.in_format()?, cx.format_of(&cx.node.output)?);
                let op = dispatch2(Kind::of(fi)?, Kind::of(fo)?, BuildLut(*f, fi, fo))
                    .map_err(|e| cx.unsupported(&e.to_string()))?;
                Ok(Lowered {
                    op,
                    format: fo,
                    observed: true,
                })
            }
            Op::Binary(f) => {
                let fo = cx.format_of(&cx.node.output)?;
                let (a, b) = operands(cx, false)?;
                let step = BinaryStep::new(*f, a, b, fo).map_err(|e| match e {
                    Error::Unsupported(why) => cx.unsupported(&why),
                    e => e,
                })?;
                Ok(Lowered {
                    op: Arc::new(step),
                    format: fo,
                    observed: true,
                })
            }
            Op::Transpose { perm } => keep(Arc::new(TransposeStep(perm.clone()))),
            Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                keep(Arc::new(super::shape::Reshape(cx.node.clone())))
            }
            Op::GlobalMaxPool => keep(Arc::new(GlobalMax)),
            Op::ReduceMean { axes, keep_dims } => {
                let rank = cx.out_shape.len() + if *keep_dims { 0 } else { axes.len() };
                let mut axes = axes
                    .iter()
                    .map(|&a| resolve_axis(a, rank, false))
                    .collect::<Result<Vec<_>>>()?;
                axes.sort_unstable();
                axes.dedup();
                if rank != 4 || axes != [2, 3] {
                    return Err(cx.unsupported(
                        "ReduceMean runs in integers only over axes 2 and 3 of an NCHW tensor",
                    ));
                }
                let fo = cx.format_of(&cx.node.output)?;
                let pool = super::pool::global_average(cx.in_format()?, fo)?;
                Ok(Lowered {
                    op: Arc::new(ReduceMeanStep {
                        pool,
                        keep_dims: *keep_dims,
                    }),
                    format: fo,
                    observed: true,
                })
            }
            Op::Softmax { .. } if cx.is_output => keep(Arc::new(super::Identity)),
            Op::Softmax { .. } => Err(cx.unsupported(
                "Softmax runs in the fixed-point network only as its last op (on the dequantized output)",
            )),
            _ => Err(cx.unsupported("not supported by the fixed-point network")),
        }
    }

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
                reason: format!("{} is not a math op", other.name()),
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
                    reason: format!("{} is not a math op", other.name()),
                });
            }
        }
        Ok(out)
    }
}

/// Transpose of codes (format kept; the output in row-major order).
#[derive(Debug)]
struct TransposeStep(Vec<usize>);

impl IntOp for TransposeStep {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        struct T<'a>(&'a Act, &'a [usize]);
        impl Visit1 for T<'_> {
            type Out = Result<Act>;
            fn visit<A: Code>(self) -> Result<Act> {
                let v = A::view(self.0).ok_or_else(|| wrong_storage("transpose"))?;
                let reversed: Vec<usize> = (0..v.ndim()).rev().collect();
                let perm = if self.1.is_empty() { &reversed } else { self.1 };
                if perm.len() != v.ndim() {
                    return Err(Error::ShapeMismatch {
                        what: "Transpose permutation".into(),
                        expected: format!("{} axes", v.ndim()),
                        found: format!("{perm:?}"),
                    });
                }
                let y = v
                    .permuted_axes(IxDyn(perm))
                    .as_standard_layout()
                    .into_owned();
                Ok(A::wrap(y, self.0.format()))
            }
        }
        let a = x.get(0)?;
        dispatch1(Kind::of(a.format())?, T(a, &self.0))
    }
}

/// GlobalMaxPool of codes: the largest code of each N×C plane (format kept; the maximum of codes
/// is the code of the maximum, as the grid is monotone).
#[derive(Debug)]
struct GlobalMax;

impl IntOp for GlobalMax {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        struct G<'a>(&'a Act);
        impl Visit1 for G<'_> {
            type Out = Result<Act>;
            fn visit<A: Code>(self) -> Result<Act> {
                let v = A::view(self.0).ok_or_else(|| wrong_storage("global max pool"))?;
                if v.ndim() != 4 || v.shape()[2] * v.shape()[3] == 0 {
                    return Err(Error::ShapeMismatch {
                        what: "GlobalMaxPool input".into(),
                        expected: "a non-empty N×C×H×W tensor".into(),
                        found: format!("{:?}", v.shape()),
                    });
                }
                let (n, c) = (v.shape()[0], v.shape()[1]);
                let mut y = ArrayD::<A>::default(IxDyn(&[n, c, 1, 1]));
                for i in 0..n {
                    for j in 0..c {
                        let plane = v.index_axis(Axis(0), i);
                        if let Some(m) = plane.index_axis(Axis(0), j).iter().copied().max() {
                            y[[i, j, 0, 0]] = m;
                        }
                    }
                }
                Ok(A::wrap(y, self.0.format()))
            }
        }
        let a = x.get(0)?;
        dispatch1(Kind::of(a.format())?, G(a))
    }
}

/// ReduceMean over H and W: the integer global average pool, then without the reduced axes unless
/// `keep_dims`.
#[derive(Debug)]
struct ReduceMeanStep {
    pool: Arc<dyn IntOp>,
    keep_dims: bool,
}

impl IntOp for ReduceMeanStep {
    fn run(&self, x: &mut Inputs<'_>, scratch: &mut Scratch) -> Result<Act> {
        let y = self.pool.run(x, scratch)?;
        if self.keep_dims {
            return Ok(y);
        }
        let s = y.shape().to_vec();
        y.reshape(&s[..2])
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
