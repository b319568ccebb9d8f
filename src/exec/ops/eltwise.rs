//! Element-wise ops: Add (residual sums, inputs brought to one format), and Relu / Clip when they do
//! not follow a weighted layer (then they requantize to their own output format).

use std::marker::PhantomData;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use super::shape::shift_round;
use super::{
    Grad, Inputs, IntOp, Lower, Lowered, OpFamily, broadcast_zip, clip_code, reduce_to_shape,
};
use crate::error::{Error, Result};
use crate::exec::act::{Act, Code, Kind, Visit2, Visit3, dispatch2, dispatch3, wrong_storage};
use crate::fixed::QTensor;
use crate::graph::Op;
use crate::kernels::{Activation, OutputStage, Scratch, add as add_codes};

/// Add, Relu, Clip.
pub(super) struct Elementwise;

impl OpFamily for Elementwise {
    fn eval_float(
        &self,
        op: &Op,
        x: &[ArrayViewD<'_, f32>],
        out_shape: &[usize],
    ) -> Result<ArrayD<f32>> {
        match *op {
            Op::Add => add(&x[0], &x[1], out_shape),
            Op::BatchNormalization { epsilon } => batch_norm(x, epsilon),
            Op::Clip { min, max } => Ok(x[0].mapv(|v| clip(v, min, max))),
            _ => Ok(x[0].mapv(|v| if v < 0.0 { 0.0 } else { v })),
        }
    }

    fn vjp_float(&self, op: &Op, g: &Grad<'_, '_>) -> Result<Vec<Option<ArrayD<f32>>>> {
        let mut out: Vec<Option<ArrayD<f32>>> = vec![None; g.x.len()];
        match *op {
            Op::Add => {
                for (i, o) in out.iter_mut().enumerate().take(2) {
                    if g.needs(i) {
                        *o = Some(reduce_to_shape(&g.dy, g.x[i].shape())?);
                    }
                }
            }
            Op::BatchNormalization { epsilon } => {
                if g.need.iter().skip(1).any(|&n| n) {
                    return Err(Error::Unsupported(
                        "BatchNormalization: backward pass to non-constant statistics".into(),
                    ));
                }
                if g.needs(0) {
                    let mut d = g.dy.to_owned();
                    for (c, mut plane) in d.axis_iter_mut(ndarray::Axis(1)).enumerate() {
                        let s = f64::from(g.x[1][c])
                            / (f64::from(g.x[4][c]) + f64::from(epsilon)).sqrt();
                        let s = s as f32;
                        plane.mapv_inplace(|v| v * s);
                    }
                    out[0] = Some(d);
                }
            }
            Op::Clip { min, max } => {
                if g.needs(0) {
                    out[0] = Some(masked(&g.dy, &g.x[0], |v| v > min && v < max));
                }
            }
            _ => {
                if g.needs(0) {
                    out[0] = Some(masked(&g.dy, &g.x[0], |v| v > 0.0));
                }
            }
        }
        Ok(out)
    }

    fn lower_fixed(&self, cx: &Lower<'_>) -> Result<Lowered> {
        let of = cx.format_of(&cx.node.output)?;
        let stage = OutputStage::new(of);
        let ka = Kind::of(cx.in_format()?)?;
        let op = match cx.node.op {
            Op::BatchNormalization { .. } => {
                return Err(cx.unsupported(
                    "a BatchNormalization that does not follow a Conv or Gemm does not run in integers yet",
                ));
            }
            Op::Add => {
                let fb = cx
                    .in_formats
                    .get(1)
                    .copied()
                    .ok_or_else(|| cx.unsupported("Add needs two activation inputs"))?;
                dispatch3(ka, Kind::of(fb)?, Kind::of(of)?, BuildAdd(stage))
            }
            Op::Clip { min, max } => {
                let act = Activation::Clip {
                    min: clip_code(of, f64::from(min), true),
                    max: clip_code(of, f64::from(max), false),
                };
                dispatch2(ka, Kind::of(of)?, BuildRequant(stage.with_activation(act)))
            }
            _ => dispatch2(
                ka,
                Kind::of(of)?,
                BuildRequant(stage.with_activation(Activation::Relu)),
            ),
        };
        Ok(Lowered {
            op,
            format: of,
            observed: true,
        })
    }
}

/// `dy` where `keep(x)`, else 0 (the backward pass of Relu and Clip).
pub(super) fn masked(
    dy: &ArrayViewD<'_, f32>,
    x: &ArrayViewD<'_, f32>,
    keep: impl Fn(f32) -> bool,
) -> ArrayD<f32> {
    let mut d = dy.to_owned();
    ndarray::Zip::from(&mut d).and(x).for_each(|d, &v| {
        if !keep(v) {
            *d = 0.0;
        }
    });
    d
}

/// Applies Relu or Clip in place (identity for anything else).
pub(super) fn apply_unary_in_place(op: &Op, x: &mut ArrayD<f32>) {
    match *op {
        Op::Relu => x.mapv_inplace(|v| if v < 0.0 { 0.0 } else { v }),
        Op::Clip { min, max } => x.mapv_inplace(|v| clip(v, min, max)),
        _ => {}
    }
}

struct BuildRequant(OutputStage);

impl Visit2 for BuildRequant {
    type Out = Arc<dyn IntOp>;
    fn visit<A: Code, O: Code>(self) -> Self::Out {
        Arc::new(Requant::<A, O>(self.0, PhantomData))
    }
}

/// Requantizes codes to the stage's format (ties to even, as the element-wise kernels), then saturates to its
/// range and activation.
#[derive(Debug)]
struct Requant<A, O>(OutputStage, PhantomData<fn(A) -> O>);

impl<A: Code, O: Code> IntOp for Requant<A, O> {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let a = x.get(0)?;
        let fi = a.format();
        let codes = A::view(a).ok_or_else(|| wrong_storage(x.step))?;
        let fo = self.0.format;
        let shift = fi.frac_bits() - fo.frac_bits();
        let (mut lo, mut hi) = (fo.min_code(), fo.max_code());
        match self.0.activation {
            Activation::Identity => {}
            Activation::Relu => lo = lo.max(0),
            Activation::Clip { min, max } => {
                lo = lo.max(min);
                hi = hi.min(max);
            }
        }
        let out = codes.mapv(|q| O::from_code(shift_round(q.to_code(), shift).clamp(lo, hi)));
        Ok(O::wrap(out, fo))
    }
}

struct BuildAdd(OutputStage);

impl Visit3 for BuildAdd {
    type Out = Arc<dyn IntOp>;
    fn visit<A: Code, B: Code, O: Code>(self) -> Self::Out {
        Arc::new(AddStep::<A, B, O>(self.0, PhantomData))
    }
}

/// A residual sum of `A` and `B` codes into `O` codes.
#[derive(Debug)]
struct AddStep<A, B, O>(OutputStage, PhantomData<fn(A, B) -> O>);

impl<A: Code, B: Code, O: Code> IntOp for AddStep<A, B, O> {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let (a, b) = (x.get(0)?, x.get(1)?);
        let (fa, fb) = (a.format(), b.format());
        let va = A::view(a).ok_or_else(|| wrong_storage(x.step))?;
        let vb = B::view(b).ok_or_else(|| wrong_storage(x.step))?;
        // Both operands were produced by the network's own steps in their formats: no range scan.
        let qa = QTensor::from_codes_trusted(va.to_owned(), vec![fa], None);
        let qb = QTensor::from_codes_trusted(vb.to_owned(), vec![fb], None);
        let y = add_codes::<A, B, O, _>(&qa, &qb, self.0)?;
        Ok(O::wrap(y.into_codes(), self.0.format))
    }
}

// ---------------------------------------------------------------- f32

/// Element-wise sum with broadcasting to `out_shape`.
pub(super) fn add(
    a: &ArrayViewD<'_, f32>,
    b: &ArrayViewD<'_, f32>,
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
    broadcast_zip(a, b, out_shape, |x, y| x + y)
}

/// `min(max(v, min), max)`, keeping NaN.
pub(super) fn clip(v: f32, min: f32, max: f32) -> f32 {
    if v < min {
        min
    } else if v > max {
        max
    } else {
        v
    }
}

/// y = scale_c·(x − mean_c)/√(var_c + ε) + bias_c over channel axis 1, computed in f64 per channel.
pub(super) fn batch_norm(x: &[ArrayViewD<'_, f32>], epsilon: f32) -> Result<ArrayD<f32>> {
    let per_channel = |k: usize| -> Vec<f64> { x[k].iter().map(|&v| f64::from(v)).collect() };
    let (scale, bias, mean, var) = (
        per_channel(1),
        per_channel(2),
        per_channel(3),
        per_channel(4),
    );
    let eps = f64::from(epsilon);
    let (a, b): (Vec<f32>, Vec<f32>) = (0..scale.len())
        .map(|c| {
            let s = scale[c] / (var[c] + eps).sqrt();
            (s as f32, (bias[c] - s * mean[c]) as f32)
        })
        .unzip();
    let mut out = x[0].to_owned();
    for (c, mut plane) in out.axis_iter_mut(ndarray::Axis(1)).enumerate() {
        let (ac, bc) = (a[c], b[c]);
        plane.mapv_inplace(|v| ac * v + bc);
    }
    Ok(out)
}
