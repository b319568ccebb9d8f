//! The operators, one module per family, each with its `f32` implementation (what the op computes:
//! the reference for [`super::FloatExecutor`]) beside its integer lowering for
//! [`super::FixedNetwork`].
//!
//! | module | ops |
//! |---|---|
//! | `conv` | Conv, Gemm, MatMul (weighted layers; Relu/Clip after them fused into the output stage) |
//! | `pool` | MaxPool, AveragePool, GlobalAveragePool |
//! | `eltwise` | Add, Relu, Clip, BatchNormalization where import could not fold it (an integer per-channel affine, `arith`) |
//! | `shape` | Flatten, Reshape, Identity, Slice, Pad, Concat |
//! | `math` | Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu (lookup tables, `lut`), Sub, Mul, Div, PRelu (`arith`), Transpose, Squeeze, Unsqueeze, GlobalMaxPool, ReduceMean, Softmax (last op only) |
//!
//! An op is registered by one line in [`family`]; its module implements [`OpFamily`]: `eval_float`
//! always, `lower_fixed` where the integer network runs it (the default refuses, naming the node).

mod arith;
mod conv;
mod eltwise;
mod lut;
mod math;
mod pool;
mod shape;

use std::borrow::Cow;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, Axis};

use super::act::Act;
use crate::error::{Error, Result};
use crate::fixed::QFormat;
use crate::graph::{LayerWeights, Node, Op};
use crate::kernels::{KernelChoice, KernelId, Scratch};
use crate::pack::WeightCodes;
use crate::quant_plan::QuantPlan;

/// An operator family: its float semantics and its integer lowering.
pub(crate) trait OpFamily: Sync {
    /// Evaluates `op` on inputs whose shapes shape inference checked; `out_shape` is the inferred one.
    fn eval_float(
        &self,
        op: &Op,
        x: &[ArrayViewD<'_, f32>],
        out_shape: &[usize],
    ) -> Result<ArrayD<f32>>;

    /// Builds the integer step of `cx.node` (formats, kernels, weights prepared once).
    ///
    /// # Errors
    /// [`Error::Unsupported`] (naming the node) by default: the op does not run in integers.
    fn lower_fixed(&self, cx: &Lower<'_>) -> Result<Lowered> {
        Err(cx.unsupported("not supported by the fixed-point network"))
    }

    /// The vector-Jacobian product of `op` at its inputs `x` and output `y`: given `dy`, a vector
    /// over the output (∂L/∂y for some scalar L), returns ∂L/∂xᵢ = (∂y/∂xᵢ)ᵀ·dy for every input i
    /// with `need[i]` (`None` for the others). Where the op is not differentiable (a ReLU at 0, a
    /// max tie) it takes one side, as frameworks do.
    ///
    /// # Errors
    /// [`Error::Unsupported`] by default: the op has no backward pass (planning then measures
    /// sensitivities with forward passes only, [`crate::plan`]).
    fn vjp_float(&self, op: &Op, g: &Grad<'_, '_>) -> Result<Vec<Option<ArrayD<f32>>>> {
        let _ = g;
        Err(Error::Unsupported(format!(
            "{}: no backward pass",
            op.name()
        )))
    }
}

/// What [`OpFamily::vjp_float`] is given: the forward inputs and output, and the output's gradient.
pub(crate) struct Grad<'a, 'v> {
    /// The op's inputs, as the forward pass saw them.
    pub x: &'a [ArrayViewD<'v, f32>],
    /// The op's output.
    pub y: ArrayViewD<'a, f32>,
    /// ∂L/∂y, the shape of `y`.
    pub dy: ArrayViewD<'a, f32>,
    /// Which inputs need a gradient.
    pub need: &'a [bool],
}

impl Grad<'_, '_> {
    /// Whether input `i` needs a gradient.
    pub(crate) fn needs(&self, i: usize) -> bool {
        self.need.get(i).copied().unwrap_or(false)
    }
}

/// The family of `op`: the registration table of every operator.
pub(crate) fn family(op: &Op) -> &'static dyn OpFamily {
    match op {
        Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul => &conv::Weighted,
        Op::MaxPool(_) | Op::AveragePool { .. } | Op::GlobalAveragePool => &pool::Pooling,
        Op::Add | Op::Relu | Op::Clip { .. } | Op::BatchNormalization { .. } => {
            &eltwise::Elementwise
        }
        Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Identity
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. } => &shape::ShapeOps,
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Transpose { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::GlobalMaxPool
        | Op::ReduceMean { .. }
        | Op::Softmax { .. } => &math::MathOps,
    }
}

/// One prepared integer step: runs on the activations of its inputs.
pub(crate) trait IntOp: std::fmt::Debug + Send + Sync {
    /// Computes the step's output from its inputs.
    fn run(&self, x: &mut Inputs<'_>, scratch: &mut Scratch) -> Result<Act>;
    /// The kernel a weighted layer selected.
    fn kernel(&self) -> Option<KernelId> {
        None
    }
}

/// A lowered node: its step and the format of what it produces.
#[derive(Debug)]
pub(crate) struct Lowered {
    pub op: Arc<dyn IntOp>,
    pub format: QFormat,
    /// Whether the output is an activation point (reported to observers).
    pub observed: bool,
}

/// The inputs of one step at run time: slots of the network's values.
pub(crate) struct Inputs<'a> {
    pub(crate) slots: &'a mut [Option<Act>],
    pub(crate) ids: &'a [usize],
    /// Whether this step is the last reader of its first input (so it may take it).
    pub(crate) owns_first: bool,
    pub(crate) step: &'a str,
}

impl Inputs<'_> {
    fn missing(&self) -> Error {
        Error::Internal {
            reason: format!("step '{}' reads a tensor that was not computed", self.step),
        }
    }
    /// Input `i`.
    pub(crate) fn get(&self, i: usize) -> Result<&Act> {
        self.ids
            .get(i)
            .and_then(|&s| self.slots.get(s))
            .and_then(Option::as_ref)
            .ok_or_else(|| self.missing())
    }
    /// The first input, moved out when this step is its last reader, else copied.
    pub(crate) fn take_first(&mut self) -> Result<Act> {
        let s = *self.ids.first().ok_or_else(|| self.missing())?;
        let v = if self.owns_first {
            self.slots.get_mut(s).and_then(Option::take)
        } else {
            self.slots.get(s).and_then(Clone::clone)
        };
        v.ok_or_else(|| self.missing())
    }
}

/// What lowering one node may look at.
pub(crate) struct Lower<'a> {
    pub node: &'a Node,
    /// Formats of the node's data inputs (activations), in input order.
    pub in_formats: &'a [QFormat],
    /// The inferred output shape at the model's declared input size.
    pub out_shape: &'a [usize],
    /// The inferred shapes of the data inputs there, in input order.
    pub in_shapes: Vec<&'a [usize]>,
    pub plan: &'a QuantPlan,
    /// The layer's weights (weighted layers only).
    pub weights: Option<(&'a LayerWeights, &'a WeightCodes)>,
    /// The Relu/Clip that follows a weighted layer and is fused into its output stage.
    pub fused: Option<&'a Node>,
    pub choice: KernelChoice,
    /// For each of the node's inputs, its value where it is a constant of the graph.
    pub constants: Vec<Option<&'a ArrayD<f32>>>,
    /// Whether the node produces the graph's output.
    pub is_output: bool,
}

impl Lower<'_> {
    /// An [`Error::Unsupported`] naming the node and op.
    pub(crate) fn unsupported(&self, why: &str) -> Error {
        Error::Unsupported(format!(
            "node '{}' ({}): {why}",
            self.node.name,
            self.node.op.name()
        ))
    }
    /// The plan's format for activation `tensor`.
    pub(crate) fn format_of(&self, tensor: &str) -> Result<QFormat> {
        self.plan
            .activation(tensor)
            .map(|a| a.format)
            .ok_or_else(|| Error::InvalidArgument {
                name: "plan",
                reason: format!("the plan has no format for activation '{tensor}'"),
            })
    }
    /// The format of data input 0.
    pub(crate) fn in_format(&self) -> Result<QFormat> {
        self.in_formats
            .first()
            .copied()
            .ok_or_else(|| self.unsupported("input format unknown"))
    }
}

/// Evaluates one operator in `f32` (the float executor's only entry into the ops).
pub(crate) fn eval_float(
    op: &Op,
    x: &[ArrayViewD<'_, f32>],
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
    family(op).eval_float(op, x, out_shape)
}

/// The vector-Jacobian product of one operator in `f32` ([`OpFamily::vjp_float`]).
pub(crate) fn vjp_float(op: &Op, g: &Grad<'_, '_>) -> Result<Vec<Option<ArrayD<f32>>>> {
    family(op).vjp_float(op, g)
}

/// Sums `g` (the gradient over a broadcast result) down to `shape`, the operand's own shape under
/// NumPy broadcasting: axes the operand lacks or has as 1 are summed.
pub(crate) fn reduce_to_shape(g: &ArrayViewD<'_, f32>, shape: &[usize]) -> Result<ArrayD<f32>> {
    let mut acc = g.to_owned();
    let lead = acc.ndim().saturating_sub(shape.len());
    for _ in 0..lead {
        acc = acc.sum_axis(Axis(0));
    }
    for (a, &d) in shape.iter().enumerate() {
        if d == 1 && acc.shape()[a] != 1 {
            acc = acc.sum_axis(Axis(a)).insert_axis(Axis(a));
        }
    }
    if acc.shape() != shape {
        return Err(Error::ShapeMismatch {
            what: "broadcast gradient".into(),
            expected: format!("{shape:?}"),
            found: format!("{:?}", g.shape()),
        });
    }
    Ok(acc)
}

/// Applies an element-wise unary op in place (identity for anything else): the float executor's
/// in-place path for Relu and Clip.
pub(crate) fn apply_unary_in_place(op: &Op, x: &mut ArrayD<f32>) {
    eltwise::apply_unary_in_place(op, x);
}

pub(super) fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::ShapeMismatch {
        what: "executor (internal)".into(),
        expected: "consistent shapes".into(),
        found: e.to_string(),
    }
}

/// The elements in row-major order, borrowed when the view is already contiguous.
pub(super) fn contiguous<'a>(a: &'a ArrayViewD<'_, f32>) -> Cow<'a, [f32]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}

pub(super) fn dims4(s: &[usize]) -> [usize; 4] {
    let mut d = [0; 4];
    for (o, &v) in d.iter_mut().zip(s) {
        *o = v;
    }
    d
}

/// Range of output positions `o` in `0..out` whose input index `o * stride + offset - pad` lies in
/// `0..len`.
pub(super) fn valid_range(
    out: usize,
    len: usize,
    stride: usize,
    offset: usize,
    pad: usize,
) -> (usize, usize) {
    let lo = if pad > offset {
        (pad - offset).div_ceil(stride)
    } else {
        0
    };
    let hi = if len + pad > offset {
        (len + pad - offset).div_ceil(stride)
    } else {
        0
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// `f(a, b)` element by element, both operands broadcast (NumPy rules) to `out_shape`.
pub(crate) fn broadcast_zip(
    a: &ArrayViewD<'_, f32>,
    b: &ArrayViewD<'_, f32>,
    out_shape: &[usize],
    f: impl Fn(f32, f32) -> f32,
) -> Result<ArrayD<f32>> {
    let incompatible = || Error::ShapeMismatch {
        what: "broadcast operands".into(),
        expected: format!("shapes broadcastable to {out_shape:?}"),
        found: format!("{:?} and {:?}", a.shape(), b.shape()),
    };
    let ab = a
        .broadcast(ndarray::IxDyn(out_shape))
        .ok_or_else(incompatible)?;
    let bb = b
        .broadcast(ndarray::IxDyn(out_shape))
        .ok_or_else(incompatible)?;
    let mut out = ArrayD::<f32>::zeros(ndarray::IxDyn(out_shape));
    ndarray::Zip::from(&mut out)
        .and(&ab)
        .and(&bb)
        .for_each(|o, &x, &y| *o = f(x, y));
    Ok(out)
}

/// The output code of a clip bound `v` in format `f`: the first code at or above a lower bound, the
/// last at or below an upper one (infinite bounds: the format's range).
pub(crate) fn clip_code(f: QFormat, v: f64, lower: bool) -> i64 {
    if !v.is_finite() {
        return if lower { f.min_code() } else { f.max_code() };
    }
    let s = v / f.step();
    let c = if lower { s.ceil() } else { s.floor() };
    c.clamp(f.min_code() as f64, f.max_code() as f64) as i64
}

pub(crate) use conv::{PositionSampling, layer_input_samples, quantize_bias};
pub(crate) use shape::Identity;
