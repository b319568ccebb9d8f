//! Constant folding of the integer subgraphs that only compute shapes, pads and indices.
//!
//! Exporters write `x.view(x.size(0), -1)` as `Shape → Gather → Unsqueeze → Concat → Reshape`, and
//! build pads or fills with `ConstantOfShape`. Import evaluates such nodes once, for the model's
//! declared input size, instead of adding them to the graph: a node is folded when its data input
//! is an integer constant (an initializer, a `Constant`, or an earlier folded node), and `Shape`
//! and `ConstantOfShape` always are. Shapes come from [`super::dims::Shapes`].
//!
//! The batch size `N` stays unknown: an integer is an [`Elem`], a number or a multiple `k·N`. Only
//! arithmetic that keeps that form folds (`N·4`, `4N / 2`, `N - N`); anything else (`N + 1`, `N·N`,
//! `8 / N`) is refused naming the node. Where a batch-dependent value ends up decides the rest:
//!
//! - Reshape's shape with `k·N` at position 0 becomes `0` (copy) when it is the input's own batch
//!   dimension, else `-1` when the rest of the shape accounts for every other element
//!   ([`batch_reshape`]); at any other position it is refused.
//! - a float `ConstantOfShape` of a batch-dependent shape is kept with 1 in place of each `k·N`;
//!   only an element-wise Add/Sub/Mul/Div/PRelu against a tensor with that batch dimension may read
//!   it (`Importer::check_batch_filled`), since broadcasting then restores it.
//! - every other input that takes an integer constant (pads, axes, starts, ...) refuses it.

use std::fmt;

use ndarray::{ArrayD, Axis, IxDyn};

use super::dims::{Dim, format_dims};
use super::proto::{self, attr_type};
use super::{Constant, Importer, NodeCtx, constant};
use crate::error::{Error, Result};
use crate::graph::{MAX_SAMPLE_ELEMENTS, Node, Op, node_shape, shape};

/// Largest integer tensor import computes (2^20 elements). Shape values, pads and indices have a
/// handful; the limit is checked before anything is allocated, so a small file cannot make import
/// allocate much more than it holds.
pub(super) const MAX_FOLDED_INTS: usize = 1 << 20;

/// One element of an integer tensor computed at import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Elem {
    /// A number.
    Int(i64),
    /// `k · N` for the batch size `N`, `k != 0`.
    Batch(i64),
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Elem::Int(v) => write!(f, "{v}"),
            Elem::Batch(1) => write!(f, "N"),
            Elem::Batch(-1) => write!(f, "-N"),
            Elem::Batch(k) => write!(f, "{k}N"),
        }
    }
}

/// `[N, -1]`.
pub(super) fn format_elems(a: &ArrayD<Elem>) -> String {
    let parts: Vec<String> = a.iter().map(Elem::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// What a folded node produced.
pub(super) enum Folded {
    /// An integer tensor.
    Ints(ArrayD<Elem>),
    /// A float constant.
    Floats(ArrayD<f32>),
    /// A float fill of a batch-dependent shape `full`, kept with 1 at its `k·N` dimensions.
    BatchFilled {
        reduced: ArrayD<f32>,
        full: Vec<Dim>,
    },
}

type Folder = fn(&Importer, &NodeCtx<'_, '_>) -> Result<Folded>;

/// The folded operators, and which inputs must be integer constants for a node to be folded
/// (`Always` for the ones that always are).
const FOLDS: &[(&str, When, Folder)] = &[
    ("Shape", When::Always, fold_shape),
    ("ConstantOfShape", When::Always, fold_constant_of_shape),
    ("Gather", When::First, fold_gather),
    ("Cast", When::First, fold_cast),
    ("Identity", When::First, fold_identity),
    ("Unsqueeze", When::First, fold_reshaping),
    ("Squeeze", When::First, fold_reshaping),
    ("Flatten", When::First, fold_reshaping),
    ("Reshape", When::First, fold_reshaping),
    ("Slice", When::First, fold_slice),
    ("Concat", When::Any, fold_concat),
    ("Add", When::Any, fold_arithmetic),
    ("Sub", When::Any, fold_arithmetic),
    ("Mul", When::Any, fold_arithmetic),
    ("Div", When::Any, fold_arithmetic),
];

#[derive(Clone, Copy)]
enum When {
    Always,
    /// The first input is an integer constant.
    First,
    /// Some input is.
    Any,
}

/// Folds the node if it computes on integer constants (see the module docs); `None` if it is a
/// graph node.
pub(super) fn fold(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Option<Folded>> {
    let Some(&(_, when, folder)) = FOLDS.iter().find(|(op, ..)| *op == ctx.proto.op_type) else {
        return Ok(None);
    };
    let is_int = |i: usize| {
        ctx.input(i)
            .is_some_and(|n| imp.ints.contains_key(n) || imp.batch_ints.contains_key(n))
    };
    let folds = match when {
        When::Always => true,
        When::First => is_int(0),
        When::Any => (0..ctx.proto.inputs.len()).any(is_int),
    };
    if folds {
        folder(imp, ctx).map(Some)
    } else {
        Ok(None)
    }
}

/// Input `i`, which must be an integer constant.
fn int_input(imp: &Importer, ctx: &NodeCtx<'_, '_>, i: usize) -> Result<ArrayD<Elem>> {
    let name = ctx.required_input(i)?;
    imp.int_value(&name).ok_or_else(|| {
        ctx.unsupported(format!(
            "input '{name}' must be an integer constant (the node computes on shape values)"
        ))
    })
}

/// Input `i` as plain numbers: refused if it depends on the batch size.
fn numbers(ctx: &NodeCtx<'_, '_>, a: &ArrayD<Elem>, what: &str) -> Result<Vec<i64>> {
    a.iter()
        .map(|e| match e {
            Elem::Int(v) => Ok(*v),
            Elem::Batch(_) => Err(ctx.unsupported(format!(
                "{what} {} depends on the batch size N",
                format_elems(a)
            ))),
        })
        .collect()
}

fn ints_array(shape: Vec<usize>, data: Vec<Elem>, ctx: &NodeCtx<'_, '_>) -> Result<Folded> {
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .map(Folded::Ints)
        .map_err(|e| ctx.invalid(e))
}

/// The product of the axis lengths with 0 counted as 1: an array of this shape holds at most
/// that many elements, and ndarray requires it to fit `isize` even where the array is empty.
fn volume(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d.max(1)))
}

/// Refuses a result of more than [`MAX_FOLDED_INTS`] elements before it is allocated.
fn check_count(ctx: &NodeCtx<'_, '_>, shape: &[usize]) -> Result<()> {
    match volume(shape) {
        Some(n) if n <= MAX_FOLDED_INTS => Ok(()),
        _ => Err(ctx.unsupported(format!(
            "the integer result of shape {shape:?} has more than {MAX_FOLDED_INTS} elements"
        ))),
    }
}

/// The output shape `op` gives for `inputs`, by the graph's shape inference (which checks the
/// attributes), with the node named.
fn infer(ctx: &NodeCtx<'_, '_>, op: Op, inputs: &[&[usize]]) -> Result<Vec<usize>> {
    let node = Node {
        name: ctx.name.clone(),
        op,
        inputs: (0..inputs.len()).map(|i| format!("#{i}")).collect(),
        output: String::new(),
    };
    node_shape(&node, inputs)
}

/// `Shape` (with opset 15's `start` and `end`): the dimensions of any tensor, each fixed by the
/// declared input shape or a multiple of the batch size.
fn fold_shape(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Folded> {
    ctx.only_attributes(&["start", "end"])?;
    let name = ctx.required_input(0)?;
    let dims = imp.dims_of(&name)?;
    let rank = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v.saturating_add(rank) } else { v }).clamp(0, rank) as usize;
    let start = clamp(ctx.int("start", 0)?);
    let end = clamp(ctx.int("end", rank)?);
    let mut out = Vec::new();
    for (i, d) in dims.iter().enumerate().take(end).skip(start) {
        out.push(match *d {
            Dim::Fixed(d) => Elem::Int(d as i64),
            Dim::Batch(k) => Elem::Batch(k as i64),
            Dim::Unknown => {
                return Err(ctx.unsupported(format!(
                    "dimension {i} of '{name}' (shape {}) is not fixed by the declared input \
                     shape; import folds shapes only for a fixed input size (every dimension but \
                     the batch)",
                    format_dims(&dims)
                )));
            }
        });
    }
    ints_array(vec![out.len()], out, ctx)
}

/// `ConstantOfShape`: a fill of a constant shape; a float fill of a batch-dependent shape is kept
/// with 1 in place of each `k·N` dimension.
fn fold_constant_of_shape(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Folded> {
    ctx.only_attributes(&["value"])?;
    let shape = int_input(imp, ctx, 0)?;
    if shape.ndim() != 1 {
        return Err(ctx.invalid(format!(
            "the shape input must be 1-D, found shape {:?}",
            shape.shape()
        )));
    }
    let value = match ctx.attr("value", attr_type::TENSOR)? {
        None => Constant::F32(ArrayD::from_elem(IxDyn(&[1]), 0.0)),
        Some(a) => match &a.t {
            Some(t) => constant(t, &format!("{}: attribute 'value'", ctx.label))?,
            None => return Err(ctx.invalid("attribute 'value' holds no tensor")),
        },
    };
    let mut full = Vec::with_capacity(shape.len());
    let mut reduced = Vec::with_capacity(shape.len());
    for &e in &shape {
        let (d, r) = match e {
            Elem::Int(v) if v >= 0 => (Dim::Fixed(v as usize), v as usize),
            Elem::Batch(k) if k > 0 => (Dim::Batch(k as usize), 1),
            _ => {
                return Err(ctx.invalid(format!(
                    "shape {} holds a negative dimension",
                    format_elems(&shape)
                )));
            }
        };
        full.push(d);
        reduced.push(r);
    }
    let batch = full.iter().any(|d| matches!(d, Dim::Batch(_)));
    let count = volume(&reduced);
    match value {
        Constant::F32(v) if v.len() == 1 => {
            if count.is_none_or(|n| n > MAX_SAMPLE_ELEMENTS) {
                return Err(ctx.unsupported(format!(
                    "a fill of shape {} would hold more than {MAX_SAMPLE_ELEMENTS} elements",
                    format_elems(&shape)
                )));
            }
            let fill = ArrayD::from_elem(IxDyn(&reduced), v.iter().copied().next().unwrap_or(0.0));
            Ok(if batch {
                Folded::BatchFilled {
                    reduced: fill,
                    full,
                }
            } else {
                Folded::Floats(fill)
            })
        }
        Constant::I64(v) if v.len() == 1 => {
            if batch {
                return Err(ctx.unsupported(format!(
                    "an integer fill of the batch-dependent shape {} (only float fills of such \
                     shapes fold)",
                    format_elems(&shape)
                )));
            }
            check_count(ctx, &reduced)?;
            let v = v.iter().copied().next().unwrap_or(0);
            Ok(Folded::Ints(ArrayD::from_elem(
                IxDyn(&reduced),
                Elem::Int(v),
            )))
        }
        _ => Err(ctx.invalid("attribute 'value' must hold exactly one element")),
    }
}

/// `Gather` of an integer tensor with constant indices.
fn fold_gather(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Folded> {
    ctx.only_attributes(&["axis"])?;
    let data = int_input(imp, ctx, 0)?;
    let indices = int_input(imp, ctx, 1)?;
    let idx = numbers(ctx, &indices, "the indices")?;
    let a = shape::axis(ctx.int("axis", 0)?, data.ndim(), false).map_err(|e| ctx.locate(e))?;
    let len = data.shape()[a];
    let mut at = Vec::with_capacity(idx.len());
    for &i in &idx {
        let j = if i < 0 {
            i.checked_add(len as i64)
        } else {
            Some(i)
        };
        match j.and_then(|j| usize::try_from(j).ok()).filter(|&j| j < len) {
            Some(j) => at.push(j),
            None => {
                return Err(ctx.invalid(format!(
                    "index {i} is out of range for axis {a} of length {len}"
                )));
            }
        }
    }
    let mut out_shape = data.shape()[..a].to_vec();
    out_shape.extend(indices.shape());
    out_shape.extend(&data.shape()[a + 1..]);
    check_count(ctx, &out_shape)?;
    let picked = data.select(Axis(a), &at);
    ints_array(out_shape, picked.iter().copied().collect(), ctx)
}

/// `Cast` of an integer constant: to an integer type (the values must fit it) or, for plain
/// numbers, to FLOAT.
fn fold_cast(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Folded> {
    ctx.only_attributes(&["to", "saturate"])?;
    let data = int_input(imp, ctx, 0)?;
    let Some(to) = ctx.attr("to", attr_type::INT)?.map(|a| a.i) else {
        return Err(ctx.invalid("attribute 'to' is required"));
    };
    let range: Option<(i64, i64)> = match i32::try_from(to).unwrap_or(-1) {
        2 => Some((0, u8::MAX.into())),
        3 => Some((i8::MIN.into(), i8::MAX.into())),
        4 => Some((0, u16::MAX.into())),
        5 => Some((i16::MIN.into(), i16::MAX.into())),
        6 => Some((i32::MIN.into(), i32::MAX.into())),
        12 => Some((0, u32::MAX.into())),
        proto::DT_INT64 | 13 => Some((i64::MIN, i64::MAX)),
        proto::DT_FLOAT => None,
        other => {
            return Err(ctx.unsupported(format!(
                "Cast of an integer constant to {} (only integer types and FLOAT)",
                super::dtype_name(other)
            )));
        }
    };
    match range {
        Some((lo, hi)) => {
            if let Some(v) = data.iter().find_map(|e| match *e {
                Elem::Int(v) if v < lo || v > hi => Some(v),
                Elem::Int(_) => None,
                Elem::Batch(k) if k < 0 && lo == 0 => Some(k),
                Elem::Batch(_) => None,
            }) {
                return Err(ctx.unsupported(format!(
                    "value {v} does not fit {}",
                    super::dtype_name(to as i32)
                )));
            }
            Ok(Folded::Ints(data))
        }
        None => {
            let v = numbers(ctx, &data, "the value")?;
            let f = ArrayD::from_shape_vec(data.raw_dim(), v.iter().map(|&v| v as f32).collect())
                .map_err(|e| ctx.invalid(e))?;
            Ok(Folded::Floats(f))
        }
    }
}

fn fold_identity(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Folded> {
    ctx.only_attributes(&[])?;
    Ok(Folded::Ints(int_input(imp, ctx, 0)?))
}

/// `Unsqueeze`, `Squeeze`, `Flatten` and `Reshape` of an integer tensor: the elements in order
/// under the shape the graph's shape inference gives.
fn fold_reshaping(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Folded> {
    let data = int_input(imp, ctx, 0)?;
    let op = match ctx.proto.op_type.as_str() {
        "Unsqueeze" | "Squeeze" => super::squeeze_unsqueeze(imp, ctx)?,
        "Flatten" => {
            ctx.only_attributes(&["axis"])?;
            Op::Flatten {
                axis: ctx.int("axis", 1)?,
            }
        }
        _ => {
            ctx.only_attributes(&["allowzero"])?;
            let target = int_input(imp, ctx, 1)?;
            Op::Reshape {
                shape: numbers(ctx, &target, "the target shape")?,
                allow_zero: ctx.int("allowzero", 0)? != 0,
            }
        }
    };
    let shape = infer(ctx, op, &[data.shape()])?;
    ints_array(shape, data.iter().copied().collect(), ctx)
}

/// `Slice` of an integer tensor (Gather-free `shape[2:]` and the like).
fn fold_slice(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Folded> {
    let data = int_input(imp, ctx, 0)?;
    let (starts, ends, axes, steps) = super::slice_parameters(imp, ctx)?;
    let plan = shape::slice_plan(data.shape(), &starts, &ends, &axes, &steps);
    // The graph's checks first (equal lengths, non-zero steps), then the plan's own errors.
    infer(
        ctx,
        Op::Slice {
            starts: starts.clone(),
            ends: ends.clone(),
            axes: axes.clone(),
            steps: steps.clone(),
        },
        &[data.shape()],
    )?;
    let mut out = data;
    for (ax, start, len, step) in plan.map_err(|e| ctx.locate(e))? {
        let at: Vec<usize> = (0..len)
            .map(|k| (start as i64 + k as i64 * step) as usize)
            .collect();
        out = out.select(Axis(ax), &at);
    }
    Ok(Folded::Ints(out))
}

fn fold_concat(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Folded> {
    ctx.only_attributes(&["axis"])?;
    let Some(axis) = ctx.attr("axis", attr_type::INT)?.map(|a| a.i) else {
        return Err(ctx.invalid("attribute 'axis' is required"));
    };
    let parts = (0..ctx.proto.inputs.len())
        .map(|i| int_input(imp, ctx, i))
        .collect::<Result<Vec<_>>>()?;
    let shapes: Vec<&[usize]> = parts.iter().map(ArrayD::shape).collect();
    let shape = infer(ctx, Op::Concat { axis }, &shapes)?;
    check_count(ctx, &shape)?;
    let a = shape::axis(axis, shape.len(), false).map_err(|e| ctx.locate(e))?;
    let views: Vec<_> = parts.iter().map(ArrayD::view).collect();
    ndarray::concatenate(Axis(a), &views)
        .map(Folded::Ints)
        .map_err(|e| ctx.invalid(e))
}

/// `Add`, `Sub`, `Mul`, `Div` of integer constants, NumPy broadcasting; integer division truncates
/// toward zero (as onnxruntime's does).
fn fold_arithmetic(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Folded> {
    ctx.only_attributes(&[])?;
    let a = int_input(imp, ctx, 0)?;
    let b = int_input(imp, ctx, 1)?;
    let shape = shape::broadcast(a.shape(), b.shape()).map_err(|e| ctx.locate(e))?;
    check_count(ctx, &shape)?;
    let (Some(wa), Some(wb)) = (a.broadcast(IxDyn(&shape)), b.broadcast(IxDyn(&shape))) else {
        return Err(ctx.invalid(format!(
            "shapes {:?} and {:?} do not broadcast",
            a.shape(),
            b.shape()
        )));
    };
    let op = ctx.proto.op_type.as_str();
    let data = wa
        .iter()
        .zip(wb.iter())
        .map(|(&x, &y)| arithmetic(ctx, op, x, y))
        .collect::<Result<Vec<_>>>()?;
    ints_array(shape, data, ctx)
}

/// `x op y` for `op` in Add, Sub, Mul, Div, where the result is a number or a multiple of `N`.
fn arithmetic(ctx: &NodeCtx<'_, '_>, op: &str, x: Elem, y: Elem) -> Result<Elem> {
    use Elem::{Batch, Int};
    let sign = match op {
        "Add" => "+",
        "Sub" => "-",
        "Mul" => "*",
        _ => "/",
    };
    let overflow = || ctx.unsupported(format!("{x} {sign} {y} overflows int64"));
    let batch = |k: Option<i64>| match k {
        Some(0) => Ok(Int(0)),
        Some(k) => Ok(Batch(k)),
        None => Err(overflow()),
    };
    match (op, x, y) {
        ("Add", Int(a), Int(b)) => a.checked_add(b).map(Int).ok_or_else(overflow),
        ("Sub", Int(a), Int(b)) => a.checked_sub(b).map(Int).ok_or_else(overflow),
        ("Mul", Int(a), Int(b)) => a.checked_mul(b).map(Int).ok_or_else(overflow),
        ("Div", _, Int(0)) => Err(ctx.invalid(format!("{x} / 0"))),
        ("Div", Int(a), Int(b)) => a.checked_div(b).map(Int).ok_or_else(overflow),
        ("Add" | "Sub", Batch(k), Int(0)) | ("Add", Int(0), Batch(k)) => Ok(Batch(k)),
        ("Sub", Int(0), Batch(k)) => batch(k.checked_neg()),
        ("Add", Batch(k), Batch(j)) => batch(k.checked_add(j)),
        ("Sub", Batch(k), Batch(j)) => batch(k.checked_sub(j)),
        ("Mul", Batch(k), Int(c)) | ("Mul", Int(c), Batch(k)) => batch(k.checked_mul(c)),
        ("Div", Batch(k), Int(c)) if k.wrapping_rem(c) == 0 => batch(k.checked_div(c)),
        // k·N / j·N = k / j exactly, for every N.
        ("Div", Batch(k), Batch(j)) => k.checked_div(j).map(Int).ok_or_else(overflow),
        _ => Err(ctx.unsupported(format!(
            "{x} {sign} {y} depends on the batch size N other than as a multiple k·N of it; \
             import folds shape arithmetic only to numbers and such multiples"
        ))),
    }
}

/// Reshape's `target` that depends on the batch size, as a shape the graph holds: `k·N` at
/// position 0 becomes `0` (copy) if it is the input's own first dimension (`k = 1`, no
/// `allowzero`), otherwise `-1` if the other entries account for every other element of the input.
///
/// # Errors
/// `Unsupported` naming the node and the reason when neither applies: `k·N` at another position,
/// `-1` already taken, an input whose size is not a multiple of `N`, or element counts that agree
/// only for some `N`.
pub(super) fn batch_reshape(
    imp: &Importer,
    ctx: &NodeCtx<'_, '_>,
    target: &ArrayD<Elem>,
    allow_zero: bool,
) -> Result<Vec<i64>> {
    let shown = format_elems(target);
    let refuse = |why: String| {
        ctx.unsupported(format!(
            "the target shape {shown} depends on the batch size N, and {why}; import folds a \
             batch-dependent shape only into 0 (copy) or -1 at position 0"
        ))
    };
    if target.ndim() != 1 {
        return Err(ctx.invalid(format!(
            "the target shape must be 1-D, found shape {:?}",
            target.shape()
        )));
    }
    let t: Vec<Elem> = target.iter().copied().collect();
    if let Some(i) = t.iter().skip(1).position(|e| matches!(e, Elem::Batch(_))) {
        return Err(refuse(format!(
            "position {} is {} (not the batch position 0)",
            i + 1,
            t[i + 1]
        )));
    }
    let Some(&Elem::Batch(k)) = t.first() else {
        return Err(Error::Internal {
            reason: format!("{}: {shown} does not depend on N", ctx.label),
        });
    };
    let rest: Vec<i64> = t[1..]
        .iter()
        .map(|e| match e {
            Elem::Int(v) => *v,
            Elem::Batch(_) => 0,
        })
        .collect();
    let data = ctx.required_input(0)?;
    let input = imp.dims_of(&data)?;
    let with = |first: i64| std::iter::once(first).chain(rest.iter().copied()).collect();
    if k == 1 && !allow_zero && input.first() == Some(&Dim::Batch(1)) {
        return Ok(with(0));
    }
    if k < 0 {
        return Err(refuse(format!("position 0 is negative ({})", t[0])));
    }
    if let Some(i) = rest.iter().position(|&v| v == -1) {
        return Err(refuse(format!(
            "position 0 ({}) is not the input's first dimension, so it could only become -1, \
             but position {} already is -1",
            t[0],
            i + 1
        )));
    }
    // The input holds N·s elements; the target N·k·p.
    let multiple = || {
        refuse(format!(
            "the input '{data}' of shape {} does not hold a multiple k·N of N elements",
            format_dims(&input)
        ))
    };
    let (mut s, mut batch_dims) = (1u128, 0);
    for d in &input {
        let f = match d {
            Dim::Fixed(d) => *d,
            Dim::Batch(k) => {
                batch_dims += 1;
                *k
            }
            Dim::Unknown => return Err(multiple()),
        };
        s = s.checked_mul(f as u128).ok_or_else(multiple)?;
    }
    if batch_dims != 1 {
        return Err(multiple());
    }
    let mut p = k as u128;
    for (j, &v) in rest.iter().enumerate() {
        let f = match v {
            0 if !allow_zero => match input.get(j + 1) {
                Some(Dim::Fixed(d)) => *d as u128,
                _ => {
                    return Err(refuse(format!(
                        "its 0 at position {} copies a dimension of '{data}' (shape {}) that is \
                         not fixed",
                        j + 1,
                        format_dims(&input)
                    )));
                }
            },
            // Negative values other than -1 are the graph's to refuse.
            v => u128::try_from(v).unwrap_or(1),
        };
        p = p
            .checked_mul(f)
            .ok_or_else(|| refuse("it overflows".into()))?;
    }
    if p != s {
        return Err(refuse(format!(
            "it holds {p}·N elements where the input '{data}' (shape {}) holds {s}·N",
            format_dims(&input)
        )));
    }
    Ok(with(-1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::NodeProto;

    fn with_ctx<T>(f: impl FnOnce(&NodeCtx<'_, '_>) -> T) -> T {
        let proto = NodeProto::default();
        let ctx = NodeCtx {
            proto: &proto,
            name: "n".into(),
            label: "node 'n' (op Mul)".into(),
        };
        f(&ctx)
    }

    #[test]
    fn arithmetic_keeps_numbers_and_multiples_of_the_batch() {
        use Elem::{Batch, Int};
        with_ctx(|ctx| {
            let ok = |op, x, y| arithmetic(ctx, op, x, y).unwrap();
            assert_eq!(ok("Mul", Batch(1), Int(4)), Batch(4));
            assert_eq!(ok("Mul", Int(0), Batch(3)), Int(0));
            assert_eq!(ok("Div", Batch(4), Int(2)), Batch(2));
            assert_eq!(ok("Div", Batch(6), Batch(4)), Int(1));
            assert_eq!(ok("Sub", Batch(2), Batch(2)), Int(0));
            assert_eq!(ok("Sub", Int(0), Batch(1)), Batch(-1));
            assert_eq!(ok("Add", Batch(1), Int(0)), Batch(1));
            assert_eq!(ok("Div", Int(-7), Int(2)), Int(-3));
            for (op, x, y) in [
                ("Add", Batch(1), Int(1)),
                ("Mul", Batch(1), Batch(1)),
                ("Div", Batch(3), Int(2)),
                ("Div", Int(8), Batch(1)),
                ("Sub", Int(1), Batch(1)),
            ] {
                match arithmetic(ctx, op, x, y) {
                    Err(Error::Unsupported(m)) => {
                        assert!(m.contains("depends on the batch size N"), "{m}")
                    }
                    other => panic!("{op} {x} {y}: {other:?}"),
                }
            }
            for (op, x, y) in [
                ("Mul", Int(i64::MAX), Int(2)),
                ("Div", Int(i64::MIN), Int(-1)),
                ("Mul", Batch(i64::MAX), Int(2)),
                ("Div", Batch(i64::MIN), Int(-1)),
            ] {
                match arithmetic(ctx, op, x, y) {
                    Err(Error::Unsupported(m)) => assert!(m.ends_with("overflows int64"), "{m}"),
                    other => panic!("{op} {x} {y}: {other:?}"),
                }
            }
            assert!(matches!(
                arithmetic(ctx, "Div", Batch(1), Int(0)),
                Err(Error::InvalidArgument { .. })
            ));
        });
    }

    #[test]
    fn sizes_count_empty_axes_as_one() {
        assert_eq!(volume(&[0, 4, 5]), Some(20));
        assert_eq!(volume(&[]), Some(1));
        assert_eq!(volume(&[0, 1 << 40, 1 << 40]), None);
        with_ctx(|ctx| {
            assert!(check_count(ctx, &[0, MAX_FOLDED_INTS + 1]).is_err());
            assert!(check_count(ctx, &[0, MAX_FOLDED_INTS]).is_ok());
        });
    }
}
