//! Element-wise ops: Add (residual sums, inputs brought to one format), and Relu / Clip when they do
//! not follow a weighted layer (then they requantize to their own output format).

use std::marker::PhantomData;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::{
    Grad, Inputs, IntOp, Lower, Lowered, OpFamily, broadcast_zip, clip_code, reduce_to_shape,
};
use crate::error::{Error, Result};
use crate::exec::act::{Act, Code, Kind, Visit2, Visit3, dispatch2, dispatch3, wrong_storage};
use crate::fixed::QFormat;
use crate::graph::Op;
use crate::kernels::{Activation, AddPlan, OutputStage, Rescale, Scratch};

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
        let op: Arc<dyn IntOp> = match cx.node.op {
            Op::BatchNormalization { epsilon } => {
                // y = a_c·x + b_c with a_c = γ_c/√(σ²_c + ε), b_c = β_c − a_c·μ_c, in f64.
                let param = |i: usize| -> Result<Vec<f64>> {
                    cx.constants
                        .get(i)
                        .copied()
                        .flatten()
                        .map(|v| v.iter().map(|&x| f64::from(x)).collect())
                        .ok_or_else(|| {
                            cx.unsupported("its scale, bias, mean and variance must be constants")
                        })
                };
                let (g, b, m, v) = (param(1)?, param(2)?, param(3)?, param(4)?);
                let eps = f64::from(epsilon);
                let a: Vec<f64> = g
                    .iter()
                    .zip(&v)
                    .map(|(g, v)| g / (v + eps).sqrt())
                    .collect();
                let t: Vec<f64> = b
                    .iter()
                    .zip(&m)
                    .zip(&a)
                    .map(|((b, m), a)| b - a * m)
                    .collect();
                let step =
                    super::arith::AffineStep::new(&cx.node.name, cx.in_format()?, &a, &t, of)
                        .map_err(|e| match e {
                            Error::Unsupported(why) => cx.unsupported(&why),
                            e => e,
                        })?;
                Arc::new(step)
            }
            // a + c for a constant c: a − (−c), the exact integer Sub of `arith`.
            Op::Add if cx.constants.iter().any(Option::is_some) => {
                let (a, b) = super::arith::operands(cx, true)?;
                // Sub is not commutative: keep the activation first (c + a = a − (−c)).
                let (a, b) = if matches!(a, super::arith::Operand::Constant(..)) {
                    (b, a)
                } else {
                    (a, b)
                };
                let step = super::arith::BinaryStep::new(crate::graph::Binary::Sub, a, b, of)
                    .map_err(|e| match e {
                        Error::Unsupported(why) => cx.unsupported(&why),
                        e => e,
                    })?;
                Arc::new(step)
            }
            Op::Add => {
                let fb = cx
                    .in_formats
                    .get(1)
                    .copied()
                    .ok_or_else(|| cx.unsupported("Add needs two activation inputs"))?;
                struct Prepare(QFormat, QFormat, OutputStage);
                impl Visit3 for Prepare {
                    type Out = Result<AddPlan>;
                    fn visit<A: Code, B: Code, O: Code>(self) -> Result<AddPlan> {
                        AddPlan::new::<A, B, O>(self.0, self.1, self.2)
                    }
                }
                let (kb, ko) = (Kind::of(fb)?, Kind::of(of)?);
                let plan = dispatch3(ka, kb, ko, Prepare(cx.in_format()?, fb, stage))?;
                dispatch3(ka, kb, ko, BuildAdd(plan))
            }
            Op::Clip { min, max } => {
                let act = Activation::Clip {
                    min: clip_code(of, f64::from(min), true),
                    max: clip_code(of, f64::from(max), false),
                };
                dispatch2(
                    ka,
                    Kind::of(of)?,
                    BuildRequant(cx.in_format()?, stage.with_activation(act)),
                )?
            }
            _ => dispatch2(
                ka,
                Kind::of(of)?,
                BuildRequant(cx.in_format()?, stage.with_activation(Activation::Relu)),
            )?,
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

struct BuildRequant(QFormat, OutputStage);

impl Visit2 for BuildRequant {
    type Out = Result<Arc<dyn IntOp>>;
    fn visit<A: Code, O: Code>(self) -> Self::Out {
        let r = Rescale::new::<A, O>(self.0, self.1)?;
        Ok(Arc::new(Requant::<A, O>(r, PhantomData)))
    }
}

/// Requantizes codes to the stage's format (ties to even, as the element-wise kernels), then saturates to its
/// range and activation; the memory order of its input is kept.
#[derive(Debug)]
struct Requant<A, O>(Rescale, PhantomData<fn(A) -> O>);

impl<A: Code, O: Code> IntOp for Requant<A, O> {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let codes = A::view(x.get(0)?).ok_or_else(|| wrong_storage(x.step))?;
        let layout = MemoryOrder::of(&codes);
        let owned;
        let src = match layout.slice(&codes) {
            Some(s) => s,
            None => {
                owned = layout.copy_into(&codes);
                &owned[..]
            }
        };
        let mut out = vec![O::default(); src.len()];
        self.0.run(src, &mut out)?;
        Ok(O::wrap(
            layout.array(codes.shape(), out)?,
            self.0.output_format(),
        ))
    }
}

struct BuildAdd(AddPlan);

impl Visit3 for BuildAdd {
    type Out = Arc<dyn IntOp>;
    fn visit<A: Code, B: Code, O: Code>(self) -> Self::Out {
        Arc::new(AddStep::<A, B, O>(self.0, PhantomData))
    }
}

/// A residual sum of `A` codes and `B` codes into `O` codes, over the operands' common memory order
/// (channels-last when the first operand is, so the next convolution needs no transpose).
#[derive(Debug)]
struct AddStep<A, B, O>(AddPlan, PhantomData<fn(A, B) -> O>);

impl<A: Code, B: Code, O: Code> IntOp for AddStep<A, B, O> {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let (a, b) = (x.get(0)?, x.get(1)?);
        let va = A::view(a).ok_or_else(|| wrong_storage(x.step))?;
        let vb = B::view(b).ok_or_else(|| wrong_storage(x.step))?;
        if va.shape() != vb.shape() {
            return Err(Error::ShapeMismatch {
                what: format!("operands of '{}'", x.step),
                expected: format!("{:?}", va.shape()),
                found: format!("{:?}", vb.shape()),
            });
        }
        // Both operands were produced by the network's own steps in their formats: no range scan.
        let layout = MemoryOrder::of(&va);
        let sa = layout.slice(&va);
        let sb_owned;
        let sb = match layout.slice(&vb) {
            Some(s) => s,
            None => {
                sb_owned = layout.copy_into(&vb);
                &sb_owned[..]
            }
        };
        let sa_owned;
        let sa = match sa {
            Some(s) => s,
            None => {
                sa_owned = layout.copy_into(&va);
                &sa_owned[..]
            }
        };
        let mut out = vec![O::default(); sa.len()];
        self.0.run(sa, sb, &mut out)?;
        Ok(O::wrap(
            layout.array(va.shape(), out)?,
            self.0.output_format(),
        ))
    }
}

/// The memory order an element-wise step works in: row-major, or channels-last (an NCHW-shaped
/// view of NHWC memory, as the convolutions leave their outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemoryOrder {
    RowMajor,
    ChannelsLast,
}

impl MemoryOrder {
    fn of<T>(a: &ArrayViewD<'_, T>) -> Self {
        if a.ndim() == 4
            && !a.is_standard_layout()
            && a.view()
                .permuted_axes(IxDyn(&[0, 2, 3, 1]))
                .is_standard_layout()
        {
            MemoryOrder::ChannelsLast
        } else {
            MemoryOrder::RowMajor
        }
    }
    /// The elements in this order, borrowed, if `a` is stored so.
    fn slice<'a, T>(self, a: &'a ArrayViewD<'_, T>) -> Option<&'a [T]> {
        match self {
            MemoryOrder::RowMajor => a.as_slice(),
            MemoryOrder::ChannelsLast if MemoryOrder::of(a) == self => a.as_slice_memory_order(),
            MemoryOrder::ChannelsLast => None,
        }
    }
    /// The elements in this order, copied.
    fn copy_into<T: Copy>(self, a: &ArrayViewD<'_, T>) -> Vec<T> {
        match self {
            MemoryOrder::RowMajor => a.iter().copied().collect(),
            MemoryOrder::ChannelsLast => a
                .view()
                .permuted_axes(IxDyn(&[0, 2, 3, 1]))
                .iter()
                .copied()
                .collect(),
        }
    }
    /// An array of logical shape `shape` over `v`, stored in this order.
    fn array<T>(self, shape: &[usize], v: Vec<T>) -> Result<ArrayD<T>> {
        Ok(match self {
            MemoryOrder::RowMajor => ArrayD::from_shape_vec(IxDyn(shape), v)?,
            MemoryOrder::ChannelsLast => {
                let nhwc = [shape[0], shape[2], shape[3], shape[1]];
                ArrayD::from_shape_vec(IxDyn(&nhwc), v)?.permuted_axes(IxDyn(&[0, 3, 1, 2]))
            }
        })
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
