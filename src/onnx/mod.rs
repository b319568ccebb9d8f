//! ONNX import: a hand-written protocol-buffer reader and the mapping from ONNX nodes to [`Op`]s.
//!
//! Entry points are [`Graph::from_onnx_file`] and [`Graph::from_onnx_bytes`]. The writing half
//! (`write`: wire format, `encode`: the messages) serves the QDQ export of a quantized model
//! (`QuantizedModel::to_onnx_qdq`, `docs/export.md`). Supported operators,
//! attributes and the BatchNormalization folding rule are listed in `docs/onnx.md`.
//!
//! Import resolves every shape-like input (Reshape's shape, Slice's starts/ends/axes/steps, Pad's
//! pads, Clip's bounds) from initializers, `Constant` nodes or folded shape computations into typed
//! attributes, folds each BatchNormalization into the Conv or Gemm before it, turns Dropout into
//! Identity, and drops initializers that no remaining node reads.
//!
//! Some of that needs the shapes of tensors while the graph is being built: `Shape` chains
//! (`fold`), `auto_pad = SAME_*` and Pad's `axes`. `dims` tracks them for the declared input shape,
//! with the batch size `N` kept symbolic.

mod dims;
pub(crate) mod encode;
mod fold;
mod proto;
mod wire;
mod write;

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::graph::{Binary, Graph, Node, Op, Pool2d, TensorInfo, Unary};
use dims::{Dim, Shapes, format_dims};
use fold::{Elem, Folded, format_elems};
use proto::{AttributeProto, NodeProto, TensorProto, attr_type};
use wire::malformed;

/// Oldest default-domain opset accepted (opset 7 dropped the legacy `consumed_inputs`/broadcast
/// attributes whose semantics import does not model).
const MIN_OPSET: i64 = 7;

impl Graph {
    /// Reads an ONNX model file (feature `onnx`).
    ///
    /// # Errors
    /// - `Io` if the file cannot be read.
    /// - everything [`Graph::from_onnx_bytes`] reports.
    pub fn from_onnx_file(path: impl AsRef<Path>) -> Result<Graph> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Graph::from_onnx_bytes(&bytes)
    }

    /// Decodes a serialized ONNX `ModelProto` (feature `onnx`).
    ///
    /// # Errors
    /// - `Malformed { format: "onnx", offset, .. }` for truncated or corrupt bytes (a length that
    ///   runs past the end, a bad varint, tensor data that does not match its shape, ...).
    /// - `Unsupported` naming the node and operator for an operator, attribute value or data type
    ///   outside the supported set, e.g. `node 'up1' (op ConvTranspose): unsupported op`.
    /// - `InvalidArgument` / `ShapeMismatch` if the decoded graph fails validation
    ///   (see [`Graph::new`]).
    ///
    /// # Examples
    /// ```
    /// let err = fixq::Graph::from_onnx_bytes(&[0x3a, 0x05, 0x0a]).unwrap_err();
    /// assert!(err.to_string().contains("malformed onnx"));
    /// ```
    pub fn from_onnx_bytes(bytes: &[u8]) -> Result<Graph> {
        let model = proto::model(bytes)?;
        let Some(graph) = model.graph else {
            return Err(malformed(bytes.len() as u64, "the model has no graph"));
        };
        match model.opset {
            None => {
                return Err(malformed(
                    bytes.len() as u64,
                    "the model imports no default-domain opset",
                ));
            }
            Some(v) if v < MIN_OPSET => {
                return Err(Error::Unsupported(format!(
                    "opset {v} (fixq reads opset {MIN_OPSET} and later)"
                )));
            }
            Some(_) => {}
        }
        Importer {
            opset: model.opset.unwrap_or(MIN_OPSET),
            ..Importer::default()
        }
        .run(graph)
    }
}

enum Constant {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

/// Converts a tensor, checking its claimed size against the bytes actually present before
/// allocating anything.
fn constant(t: &TensorProto<'_>, what: &str) -> Result<Constant> {
    if t.external {
        return Err(Error::Unsupported(format!(
            "{what}: tensor data stored outside the file"
        )));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        dims.push(
            usize::try_from(d)
                .map_err(|_| malformed(t.offset, format!("{what}: negative dimension {d}")))?,
        );
    }
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize / 8)
        .ok_or_else(|| {
            malformed(
                t.offset,
                format!("{what}: element count of shape {dims:?} overflows"),
            )
        })?;
    let short = |found: usize, unit: &str, at: u64| {
        malformed(
            at,
            format!(
                "{what}: shape {dims:?} needs {count} elements but the data holds {found} {unit}"
            ),
        )
    };
    match t.data_type {
        proto::DT_FLOAT => {
            let data = match t.raw_data {
                Some((raw, at)) if raw.len() != count * 4 => {
                    return Err(short(raw.len(), "bytes", at));
                }
                Some((raw, _)) => raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                None if t.float_data.len() != count => {
                    return Err(short(t.float_data.len(), "floats", t.offset));
                }
                None => t.float_data.clone(),
            };
            let array = ArrayD::from_shape_vec(IxDyn(&dims), data)
                .map_err(|e| malformed(t.offset, format!("{what}: {e}")))?;
            Ok(Constant::F32(array))
        }
        proto::DT_INT64 => {
            let data = match t.raw_data {
                Some((raw, at)) if raw.len() != count * 8 => {
                    return Err(short(raw.len(), "bytes", at));
                }
                Some((raw, _)) => raw
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
                None if t.int64_data.len() != count => {
                    return Err(short(t.int64_data.len(), "int64s", t.offset));
                }
                None => t.int64_data.clone(),
            };
            let array = ArrayD::from_shape_vec(IxDyn(&dims), data)
                .map_err(|e| malformed(t.offset, format!("{what}: {e}")))?;
            Ok(Constant::I64(array))
        }
        proto::DT_BOOL => {
            // Flags such as Dropout's training_mode: one byte per value.
            let data: Vec<i64> = match t.raw_data {
                Some((raw, at)) if raw.len() != count => return Err(short(raw.len(), "bytes", at)),
                Some((raw, _)) => raw.iter().map(|&b| i64::from(b != 0)).collect(),
                None => {
                    return Err(Error::Unsupported(format!(
                        "{what}: BOOL data outside raw_data"
                    )));
                }
            };
            let array = ArrayD::from_shape_vec(IxDyn(&dims), data)
                .map_err(|e| malformed(t.offset, format!("{what}: {e}")))?;
            Ok(Constant::I64(array))
        }
        other => Err(Error::Unsupported(format!(
            "{what}: data type {} (only FLOAT weights, INT64 shapes and BOOL flags are supported)",
            dtype_name(other)
        ))),
    }
}

fn dtype_name(code: i32) -> String {
    let names = [
        "UNDEFINED",
        "FLOAT",
        "UINT8",
        "INT8",
        "UINT16",
        "INT16",
        "INT32",
        "INT64",
        "STRING",
        "BOOL",
        "FLOAT16",
        "DOUBLE",
        "UINT32",
        "UINT64",
        "COMPLEX64",
        "COMPLEX128",
        "BFLOAT16",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| names.get(i))
        .map_or_else(|| format!("#{code}"), |s| (*s).to_string())
}

/// One ONNX node being converted, with its name in the graph and its label for messages.
struct NodeCtx<'n, 'a> {
    proto: &'n NodeProto<'a>,
    name: String,
    label: String,
}

impl NodeCtx<'_, '_> {
    fn unsupported(&self, what: impl std::fmt::Display) -> Error {
        Error::Unsupported(format!("{}: {what}", self.label))
    }

    /// Names the node in a `ShapeMismatch` or `Unsupported` from a helper that does not know it.
    fn locate(&self, e: Error) -> Error {
        match e {
            Error::ShapeMismatch {
                what,
                expected,
                found,
            } => Error::ShapeMismatch {
                what: format!("{}: {what}", self.label),
                expected,
                found,
            },
            Error::Unsupported(m) => self.unsupported(m),
            other => other,
        }
    }

    fn invalid(&self, what: impl std::fmt::Display) -> Error {
        Error::InvalidArgument {
            name: "onnx node",
            reason: format!("{}: {what}", self.label),
        }
    }

    /// Rejects attributes outside `known`.
    fn only_attributes(&self, known: &[&str]) -> Result<()> {
        match self
            .proto
            .attributes
            .iter()
            .find(|a| !known.contains(&a.name.as_str()))
        {
            Some(a) => Err(self.unsupported(format!("unsupported attribute '{}'", a.name))),
            None => Ok(()),
        }
    }

    fn attr(&self, name: &str, kind: i64) -> Result<Option<&AttributeProto<'_>>> {
        match self.proto.attributes.iter().find(|a| a.name == name) {
            Some(a) if a.kind != kind && a.kind != 0 => Err(self.invalid(format!(
                "attribute '{name}' has type {} instead of {kind}",
                a.kind
            ))),
            found => Ok(found),
        }
    }

    fn int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.attr(name, attr_type::INT)?.map_or(default, |a| a.i))
    }

    fn float(&self, name: &str, default: f32) -> Result<f32> {
        Ok(self.attr(name, attr_type::FLOAT)?.map_or(default, |a| a.f))
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        Ok(self.attr(name, attr_type::INTS)?.map(|a| a.ints.clone()))
    }

    fn string(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .attr(name, attr_type::STRING)?
            .map(|a| String::from_utf8_lossy(&a.s).into_owned()))
    }

    /// A list attribute of exactly `n` non-negative values, or `default`.
    fn sizes<const N: usize>(&self, name: &str, default: [usize; N]) -> Result<[usize; N]> {
        let Some(v) = self.ints(name)? else {
            return Ok(default);
        };
        if v.len() != N {
            return Err(self.unsupported(format!(
                "attribute '{name}' has {} values; only 2-D (NCHW) operators are supported",
                v.len()
            )));
        }
        let mut out = default;
        for (o, &x) in out.iter_mut().zip(&v) {
            *o = usize::try_from(x)
                .map_err(|_| self.invalid(format!("attribute '{name}' holds {x}")))?;
        }
        Ok(out)
    }

    /// The `i`-th input name if present and non-empty.
    fn input(&self, i: usize) -> Option<&str> {
        self.proto
            .inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn required_input(&self, i: usize) -> Result<String> {
        self.input(i)
            .map(str::to_owned)
            .ok_or_else(|| self.invalid(format!("input {i} is missing")))
    }
}

#[derive(Default)]
struct Importer {
    /// The model's default-domain opset.
    opset: i64,
    floats: HashMap<String, ArrayD<f32>>,
    ints: HashMap<String, ArrayD<i64>>,
    /// Integer values computed at import that depend on the batch size (`fold`).
    batch_ints: HashMap<String, ArrayD<Elem>>,
    /// Float fills of a batch-dependent shape (in `floats` with 1 at those dimensions): the
    /// shape they stand for.
    batch_filled: HashMap<String, Vec<Dim>>,
    nodes: Vec<Node>,
    /// Shapes of the input and the node outputs so far.
    shapes: Shapes,
    /// Number of node inputs and graph outputs that read each name.
    uses: HashMap<String, usize>,
}

impl Importer {
    fn run(mut self, graph: proto::GraphProto<'_>) -> Result<Graph> {
        for t in graph.initializers {
            let name = t.name.clone();
            match constant(&t, &format!("initializer '{name}'"))? {
                Constant::F32(a) => {
                    self.floats.insert(name, a);
                }
                Constant::I64(a) => {
                    self.ints.insert(name, a);
                }
            }
        }
        for n in &graph.nodes {
            for i in n.inputs.iter().filter(|s| !s.is_empty()) {
                *self.uses.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &graph.outputs {
            *self.uses.entry(o.name.clone()).or_default() += 1;
        }
        let inputs: Vec<_> = graph
            .inputs
            .iter()
            .filter(|v| !self.floats.contains_key(&v.name) && !self.ints.contains_key(&v.name))
            .collect();
        let [input] = inputs[..] else {
            return Err(Error::Unsupported(format!(
                "the model has {} non-initializer inputs; exactly one is supported",
                inputs.len()
            )));
        };
        if input.elem_type != proto::DT_FLOAT {
            return Err(Error::Unsupported(format!(
                "input '{}' has data type {}; only FLOAT is supported",
                input.name,
                dtype_name(input.elem_type)
            )));
        }
        let Some(dims) = &input.shape else {
            return Err(Error::Unsupported(format!(
                "input '{}' has no declared shape",
                input.name
            )));
        };
        let input = TensorInfo {
            name: input.name.clone(),
            shape: dims
                .iter()
                .map(|d| d.and_then(|d| usize::try_from(d).ok()).filter(|&d| d > 0))
                .collect(),
        };
        self.shapes = Shapes::new(&input);
        let [output] = &graph.outputs[..] else {
            return Err(Error::Unsupported(format!(
                "the model has {} outputs; exactly one is supported",
                graph.outputs.len()
            )));
        };
        for (i, n) in graph.nodes.iter().enumerate() {
            let label = if n.name.is_empty() {
                format!("node '{}_{i}' (op {})", n.op_type, n.op_type)
            } else {
                format!("node '{}' (op {})", n.name, n.op_type)
            };
            let name = if n.name.is_empty() {
                format!("{}_{i}", n.op_type)
            } else {
                n.name.clone()
            };
            let ctx = NodeCtx {
                proto: n,
                name,
                label,
            };
            self.node(&ctx)?;
        }
        let mut inits = Vec::new();
        for node in &self.nodes {
            for name in &node.inputs {
                if let Some(a) = self.floats.remove(name) {
                    inits.push((name.clone(), a));
                }
            }
        }
        let graph =
            Graph::new(input, output.name.clone(), self.nodes, inits)?.fold_batch_norms()?;
        if let (Some(declared), true) = (
            &output.shape,
            graph.output().shape.iter().all(Option::is_some),
        ) {
            let inferred = &graph.output().shape;
            let differs = declared.len() != inferred.len()
                || declared.iter().zip(inferred).any(|(d, i)| matches!((d, i), (Some(d), Some(i)) if usize::try_from(*d).ok() != Some(*i)));
            if differs {
                return Err(Error::ShapeMismatch {
                    what: format!("output '{}'", output.name),
                    expected: format!("{declared:?} (declared in the model)"),
                    found: format!("{inferred:?} (inferred)"),
                });
            }
        }
        Ok(graph)
    }

    fn int_const(&self, ctx: &NodeCtx<'_, '_>, i: usize) -> Result<Option<Vec<i64>>> {
        let Some(name) = ctx.input(i) else {
            return Ok(None);
        };
        if let Some(a) = self.batch_ints.get(name) {
            return Err(ctx.unsupported(format!(
                "input '{name}' is {}, which depends on the batch size N (only Reshape's shape \
                 may, as 0 or -1 at position 0)",
                format_elems(a)
            )));
        }
        match self.ints.get(name) {
            Some(a) => Ok(Some(a.iter().copied().collect())),
            None => Err(ctx.unsupported(format!("input '{name}' must be a constant INT64 tensor"))),
        }
    }

    /// An integer constant (initializer, `Constant` or folded), batch-dependent or not.
    fn int_value(&self, name: &str) -> Option<ArrayD<Elem>> {
        self.batch_ints
            .get(name)
            .cloned()
            .or_else(|| self.ints.get(name).map(|a| a.mapv(Elem::Int)))
    }

    /// The dimensions of any tensor: a constant's own, the shape a batch-dependent fill stands
    /// for, or the tracked shape of the input or a node output.
    fn dims_of(&self, name: &str) -> Result<Vec<Dim>> {
        let fixed = |s: &[usize]| s.iter().map(|&d| Dim::Fixed(d)).collect();
        if let Some(full) = self.batch_filled.get(name) {
            return Ok(full.clone());
        }
        if let Some(a) = self.ints.get(name) {
            return Ok(fixed(a.shape()));
        }
        if let Some(a) = self.batch_ints.get(name) {
            return Ok(fixed(a.shape()));
        }
        self.shapes.dims(name, &self.nodes, &self.floats)
    }

    /// A fill of a batch-dependent shape is held with 1 in place of each `k·N`; that is the same
    /// only where an element-wise op broadcasts it back against a tensor of that batch size.
    fn check_batch_filled(&self, ctx: &NodeCtx<'_, '_>, op: &Op, inputs: &[String]) -> Result<()> {
        for (j, name) in inputs.iter().enumerate() {
            let Some(full) = self.batch_filled.get(name) else {
                continue;
            };
            let other = match (op, inputs) {
                (Op::Add | Op::Binary(_), [a, b]) => Some(if j == 0 { b } else { a }),
                _ => None,
            };
            let restored = match other {
                Some(o) if !self.batch_filled.contains_key(o) => {
                    let od = self.dims_of(o)?;
                    full.iter().rev().enumerate().all(|(i, d)| match d {
                        Dim::Batch(_) => od.len() > i && od[od.len() - 1 - i] == *d,
                        _ => true,
                    })
                }
                _ => false,
            };
            if !restored {
                let kept: Vec<usize> = self
                    .floats
                    .get(name)
                    .map_or(Vec::new(), |a| a.shape().to_vec());
                return Err(ctx.unsupported(format!(
                    "input '{name}' is a ConstantOfShape of the batch-dependent shape {}, which \
                     import keeps as {kept:?}; only an Add, Sub, Mul, Div or PRelu with a tensor \
                     of that batch size (which broadcasts it back) may read it",
                    format_dims(full)
                )));
            }
        }
        Ok(())
    }

    fn float_scalar(&self, ctx: &NodeCtx<'_, '_>, i: usize) -> Result<Option<f32>> {
        let Some(name) = ctx.input(i) else {
            return Ok(None);
        };
        match self.floats.get(name) {
            Some(a) if a.len() == 1 => Ok(a.iter().next().copied()),
            _ => Err(ctx.unsupported(format!("input '{name}' must be a constant FLOAT scalar"))),
        }
    }

    /// Rejects extra outputs (e.g. MaxPool indices, Dropout mask) that anything reads.
    fn single_output(&self, ctx: &NodeCtx<'_, '_>) -> Result<String> {
        let outs = &ctx.proto.outputs;
        let first = outs
            .first()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ctx.invalid("no output"))?;
        if let Some(extra) = outs[1..]
            .iter()
            .find(|o| !o.is_empty() && self.uses.get(*o).copied().unwrap_or(0) > 0)
        {
            return Err(ctx.unsupported(format!(
                "output '{extra}' is read, but only the first output is supported"
            )));
        }
        Ok(first.clone())
    }

    fn push(&mut self, name: String, op: Op, inputs: Vec<String>, output: String) {
        let node = Node {
            name,
            op,
            inputs,
            output,
        };
        self.shapes.record(self.nodes.len(), &node, &self.floats);
        self.nodes.push(node);
    }

    fn node(&mut self, ctx: &NodeCtx<'_, '_>) -> Result<()> {
        let n = ctx.proto;
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(ctx.unsupported(format!("operator domain '{}'", n.domain)));
        }
        if n.op_type == "Constant" {
            return self.constant_node(ctx);
        }
        if let Some(value) = fold::fold(self, ctx)? {
            let output = self.single_output(ctx)?;
            self.store_folded(output, value);
            return Ok(());
        }
        let Some((_, build)) = OPS.iter().find(|(op, _)| *op == n.op_type) else {
            return Err(ctx.unsupported("unsupported op"));
        };
        let output = self.single_output(ctx)?;
        let (op, inputs) = build(self, ctx)?;
        self.check_batch_filled(ctx, &op, &inputs)?;
        self.push(ctx.name.clone(), op, inputs, output);
        Ok(())
    }

    /// Keeps a folded node's value: plain integers with the other integer constants, values that
    /// depend on the batch size apart, float values as initializers.
    fn store_folded(&mut self, output: String, value: Folded) {
        match value {
            Folded::Ints(a) => {
                if a.iter().all(|e| matches!(e, Elem::Int(_))) {
                    let plain = a.mapv(|e| match e {
                        Elem::Int(v) => v,
                        Elem::Batch(_) => 0,
                    });
                    self.ints.insert(output, plain);
                } else {
                    self.batch_ints.insert(output, a);
                }
            }
            Folded::Floats(a) => {
                self.floats.insert(output, a);
            }
            Folded::BatchFilled { reduced, full } => {
                self.floats.insert(output.clone(), reduced);
                self.batch_filled.insert(output, full);
            }
        }
    }

    fn constant_node(&mut self, ctx: &NodeCtx<'_, '_>) -> Result<()> {
        let output = self.single_output(ctx)?;
        let [a] = &ctx.proto.attributes[..] else {
            return Err(ctx.invalid("a Constant needs exactly one attribute"));
        };
        let scalar = IxDyn(&[]);
        let value = match (a.name.as_str(), a.kind) {
            ("value", attr_type::TENSOR) | ("value", 0) => {
                let Some(t) = &a.t else {
                    return Err(ctx.invalid("attribute 'value' holds no tensor"));
                };
                constant(t, &ctx.label)?
            }
            ("value_float", _) => Constant::F32(ArrayD::from_elem(scalar, a.f)),
            ("value_int", _) => Constant::I64(ArrayD::from_elem(scalar, a.i)),
            ("value_floats", _) => Constant::F32(
                ArrayD::from_shape_vec(IxDyn(&[a.floats.len()]), a.floats.clone())
                    .map_err(|e| ctx.invalid(e))?,
            ),
            ("value_ints", _) => Constant::I64(
                ArrayD::from_shape_vec(IxDyn(&[a.ints.len()]), a.ints.clone())
                    .map_err(|e| ctx.invalid(e))?,
            ),
            (other, _) => return Err(ctx.unsupported(format!("constant attribute '{other}'"))),
        };
        match value {
            Constant::F32(v) => {
                self.floats.insert(output, v);
            }
            Constant::I64(v) => {
                self.ints.insert(output, v);
            }
        }
        Ok(())
    }
}

/// Builds one op from its ONNX node: the op and its input tensor names.
type Builder = fn(&Importer, &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)>;

/// Every ONNX operator import maps to an [`Op`], with its builder (`Constant` makes no node:
/// `Importer::node` handles it). BatchNormalization becomes a node that the graph pass
/// [`Graph::fold_batch_norms`] folds into the layer before it where it can.
const OPS: &[(&str, Builder)] = &[
    ("Conv", op_conv),
    ("Gemm", op_gemm),
    ("MatMul", op_matmul_add),
    ("Add", op_matmul_add),
    ("Relu", op_no_attribute),
    ("Identity", op_no_attribute),
    ("GlobalAveragePool", op_no_attribute),
    ("Dropout", op_dropout),
    ("Clip", op_clip),
    ("MaxPool", op_pool),
    ("AveragePool", op_pool),
    ("Flatten", op_flatten),
    ("Reshape", op_reshape),
    ("Slice", op_slice),
    ("Pad", op_pad),
    ("Concat", op_concat),
    ("BatchNormalization", op_batch_norm),
    ("Sigmoid", op_unary),
    ("Tanh", op_unary),
    ("HardSigmoid", op_unary),
    ("HardSwish", op_unary),
    ("LeakyRelu", op_unary),
    ("Sub", op_binary),
    ("Mul", op_binary),
    ("Div", op_binary),
    ("PRelu", op_binary),
    ("Transpose", op_transpose),
    ("Squeeze", op_squeeze_unsqueeze),
    ("Unsqueeze", op_squeeze_unsqueeze),
    ("GlobalMaxPool", op_global_max_pool),
    ("ReduceMean", op_reduce_mean),
    ("Softmax", op_softmax),
];

/// The first `count` inputs, each required.
fn data_inputs(ctx: &NodeCtx<'_, '_>, count: usize) -> Result<Vec<String>> {
    (0..count).map(|i| ctx.required_input(i)).collect()
}

fn op_conv(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&[
        "auto_pad",
        "dilations",
        "group",
        "kernel_shape",
        "pads",
        "strides",
    ])?;
    let groups =
        usize::try_from(ctx.int("group", 1)?).map_err(|_| ctx.invalid("negative group"))?;
    let mut inputs = data_inputs(ctx, 2)?;
    if let Some(b) = ctx.input(2) {
        inputs.push(b.to_owned());
    }
    for w in &inputs[1..] {
        if !imp.floats.contains_key(w) {
            return Err(
                ctx.unsupported(format!("weights/bias '{w}' are not a constant initializer"))
            );
        }
    }
    if let (Some(ks), Some(w)) = (ctx.ints("kernel_shape")?, imp.floats.get(&inputs[1])) {
        let spatial: Vec<i64> = w.shape().iter().skip(2).map(|&d| d as i64).collect();
        if ks != spatial {
            return Err(Error::ShapeMismatch {
                what: format!("{}: kernel_shape", ctx.label),
                expected: format!("{spatial:?} (the spatial dims of weights '{}')", inputs[1]),
                found: format!("{ks:?}"),
            });
        }
    }
    let kernel = match imp.floats.get(&inputs[1]).map(ArrayD::shape) {
        Some(&[_, _, kh, kw]) => [kh, kw],
        _ => ctx.sizes("kernel_shape", [1, 1])?,
    };
    let stride = ctx.sizes("strides", [1, 1])?;
    let dilation = ctx.sizes("dilations", [1, 1])?;
    let op = Op::Conv {
        stride,
        pad: pads(imp, ctx, kernel, stride, dilation)?,
        dilation,
        groups,
    };
    Ok((op, inputs))
}

/// The explicit pads `[top, left, bottom, right]` of a Conv or pool: the `pads` attribute
/// (`auto_pad = NOTSET`), none (`VALID`), or for `SAME_UPPER` / `SAME_LOWER` the pads that give
/// `ceil(in / stride)` outputs along each spatial axis of the input's declared size. The total
/// along an axis is (ONNX)
///
/// ```text
/// total = max(0, (ceil(in / stride) - 1) · stride + (kernel - 1) · dilation + 1 - in)
/// ```
///
/// and SAME_UPPER puts `total / 2` (rounded down) at the beginning, SAME_LOWER rounded up. With
/// `auto_pad` set, the `pads` attribute is ignored, as onnxruntime does.
fn pads(
    imp: &Importer,
    ctx: &NodeCtx<'_, '_>,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
) -> Result<[usize; 4]> {
    let mode = ctx.string("auto_pad")?.unwrap_or_default();
    let lower = match mode.as_str() {
        "" | "NOTSET" => return ctx.sizes("pads", [0; 4]),
        "VALID" => return Ok([0; 4]),
        "SAME_UPPER" => false,
        "SAME_LOWER" => true,
        other => {
            return Err(ctx.unsupported(format!(
                "auto_pad '{other}' (NOTSET, VALID, SAME_UPPER or SAME_LOWER)"
            )));
        }
    };
    let x = ctx.required_input(0)?;
    let dims = imp.dims_of(&x)?;
    let &[_, _, h, w] = &dims[..] else {
        return Err(ctx.unsupported(format!(
            "auto_pad '{mode}' needs a 4-D NCHW input, but '{x}' has shape {}",
            format_dims(&dims)
        )));
    };
    let (Dim::Fixed(h), Dim::Fixed(w)) = (h, w) else {
        return Err(ctx.unsupported(format!(
            "auto_pad '{mode}' needs the input's height and width, but '{x}' has shape {}: they \
             must be fixed by the declared input shape",
            format_dims(&dims)
        )));
    };
    let mut pad = [0; 4];
    for (axis, len) in [h, w].into_iter().enumerate() {
        let total =
            same_pad_total(len, kernel[axis], stride[axis], dilation[axis]).ok_or_else(|| {
                ctx.unsupported(format!(
                    "auto_pad '{mode}': the padding of a window of {} taps at stride {} and \
                     dilation {} over {len} elements overflows",
                    kernel[axis], stride[axis], dilation[axis]
                ))
            })?;
        let small = total / 2;
        let (begin, end) = if lower {
            (total - small, small)
        } else {
            (small, total - small)
        };
        pad[axis] = begin;
        pad[axis + 2] = end;
    }
    Ok(pad)
}

/// The total SAME padding along one axis (see [`pads`]); 0 for a zero kernel, stride or dilation,
/// which [`Graph::new`] refuses. `None` on overflow.
fn same_pad_total(len: usize, kernel: usize, stride: usize, dilation: usize) -> Option<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return Some(0);
    }
    let outputs = len.div_ceil(stride);
    let needed = outputs
        .saturating_sub(1)
        .checked_mul(stride)?
        .checked_add((kernel - 1).checked_mul(dilation)?)?
        .checked_add(1)?;
    Some(needed.saturating_sub(len))
}

fn op_gemm(_: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&["alpha", "beta", "transA", "transB"])?;
    let mut inputs = data_inputs(ctx, 2)?;
    if let Some(c) = ctx.input(2) {
        inputs.push(c.to_owned());
    }
    let op = Op::Gemm {
        alpha: ctx.float("alpha", 1.0)?,
        beta: ctx.float("beta", 1.0)?,
        trans_a: ctx.int("transA", 0)? != 0,
        trans_b: ctx.int("transB", 0)? != 0,
    };
    Ok((op, inputs))
}

fn op_matmul_add(_: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    let op_type = ctx.proto.op_type.as_str();
    ctx.only_attributes(&[])?;
    Ok((
        if op_type == "Add" {
            Op::Add
        } else {
            Op::MatMul
        },
        data_inputs(ctx, 2)?,
    ))
}

fn op_no_attribute(_: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    let op_type = ctx.proto.op_type.as_str();
    ctx.only_attributes(&[])?;
    let op = match op_type {
        "Relu" => Op::Relu,
        "Identity" => Op::Identity,
        _ => Op::GlobalAveragePool,
    };
    Ok((op, data_inputs(ctx, 1)?))
}

fn op_dropout(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&["ratio", "seed", "is_test"])?;
    if let Some(flag) = ctx.input(2)
        && imp
            .int_const(ctx, 2)?
            .is_some_and(|v| v.iter().any(|&t| t != 0))
    {
        return Err(ctx.unsupported(format!("training_mode '{flag}' is true")));
    }
    Ok((Op::Identity, data_inputs(ctx, 1)?))
}

fn op_clip(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&["min", "max"])?;
    let min = match imp.float_scalar(ctx, 1)? {
        Some(v) => v,
        None => ctx.float("min", f32::NEG_INFINITY)?,
    };
    let max = match imp.float_scalar(ctx, 2)? {
        Some(v) => v,
        None => ctx.float("max", f32::INFINITY)?,
    };
    Ok((Op::Clip { min, max }, data_inputs(ctx, 1)?))
}

fn op_pool(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    let op_type = ctx.proto.op_type.as_str();
    let mut known = vec![
        "auto_pad",
        "ceil_mode",
        "dilations",
        "kernel_shape",
        "pads",
        "strides",
    ];
    known.push(if op_type == "MaxPool" {
        "storage_order"
    } else {
        "count_include_pad"
    });
    ctx.only_attributes(&known)?;
    if ctx.ints("kernel_shape")?.is_none() {
        return Err(ctx.invalid("attribute 'kernel_shape' is required"));
    }
    let kernel = ctx.sizes("kernel_shape", [1, 1])?;
    let stride = ctx.sizes("strides", [1, 1])?;
    let dilation = ctx.sizes("dilations", [1, 1])?;
    let pool = Pool2d {
        kernel,
        stride,
        pad: pads(imp, ctx, kernel, stride, dilation)?,
        dilation,
        ceil_mode: ctx.int("ceil_mode", 0)? != 0,
    };
    let op = if op_type == "MaxPool" {
        Op::MaxPool(pool)
    } else {
        Op::AveragePool {
            pool,
            count_include_pad: ctx.int("count_include_pad", 0)? != 0,
        }
    };
    Ok((op, data_inputs(ctx, 1)?))
}

fn op_flatten(_: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&["axis"])?;
    Ok((
        Op::Flatten {
            axis: ctx.int("axis", 1)?,
        },
        data_inputs(ctx, 1)?,
    ))
}

fn op_reshape(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&["allowzero", "shape"])?;
    let allow_zero = ctx.int("allowzero", 0)? != 0;
    let shape = match (ctx.ints("shape")?, ctx.input(1)) {
        (Some(s), _) => s,
        (None, Some(t)) if imp.batch_ints.contains_key(t) => {
            fold::batch_reshape(imp, ctx, &imp.batch_ints[t], allow_zero)?
        }
        (None, _) => imp
            .int_const(ctx, 1)?
            .ok_or_else(|| ctx.invalid("no target shape"))?,
    };
    Ok((Op::Reshape { shape, allow_zero }, data_inputs(ctx, 1)?))
}

fn op_slice(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    let (starts, ends, axes, steps) = slice_parameters(imp, ctx)?;
    Ok((
        Op::Slice {
            starts,
            ends,
            axes,
            steps,
        },
        data_inputs(ctx, 1)?,
    ))
}

/// Slice's `(starts, ends, axes, steps)`: attributes (opset < 10) or constant inputs, axes and steps
/// defaulted.
type SliceParameters = (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>);

fn slice_parameters(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<SliceParameters> {
    ctx.only_attributes(&["starts", "ends", "axes"])?;
    let (starts, ends, axes, steps) = match ctx.ints("starts")? {
        Some(starts) => (
            starts,
            ctx.ints("ends")?.unwrap_or_default(),
            ctx.ints("axes")?,
            None,
        ),
        None => (
            imp.int_const(ctx, 1)?
                .ok_or_else(|| ctx.invalid("no starts"))?,
            imp.int_const(ctx, 2)?
                .ok_or_else(|| ctx.invalid("no ends"))?,
            imp.int_const(ctx, 3)?,
            imp.int_const(ctx, 4)?,
        ),
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    Ok((starts, ends, axes, steps))
}

fn op_pad(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&["mode", "pads", "value"])?;
    if let Some(mode) = ctx.string("mode")?
        && mode != "constant"
    {
        return Err(ctx.unsupported(format!("mode '{mode}' (only constant)")));
    }
    let (mut pads, value) = match ctx.ints("pads")? {
        Some(p) => (p, ctx.float("value", 0.0)?),
        None => (
            imp.int_const(ctx, 1)?
                .ok_or_else(|| ctx.invalid("no pads"))?,
            imp.float_scalar(ctx, 2)?.unwrap_or(0.0),
        ),
    };
    let inputs = data_inputs(ctx, 1)?;
    if let Some(axes) = imp.int_const(ctx, 3)? {
        let rank = imp.dims_of(&inputs[0])?.len();
        pads = pads_on_axes(ctx, &inputs[0], rank, &pads, &axes)?;
    }
    Ok((Op::Pad { pads, value }, inputs))
}

/// Pad-18's `pads` for the listed `axes` (`[b_0, .., b_{m-1}, e_0, .., e_{m-1}]`, axes negative from
/// the end) as pads for every axis of a rank-`rank` input, 0 on the others.
fn pads_on_axes(
    ctx: &NodeCtx<'_, '_>,
    input: &str,
    rank: usize,
    pads: &[i64],
    axes: &[i64],
) -> Result<Vec<i64>> {
    let m = axes.len();
    if pads.len() != 2 * m {
        return Err(Error::ShapeMismatch {
            what: format!("{}: pads", ctx.label),
            expected: format!("{} values (begin and end for each of the {m} axes)", 2 * m),
            found: format!("{pads:?}"),
        });
    }
    let r = rank as i64;
    let mut full = vec![0; 2 * rank];
    let mut seen = vec![false; rank];
    for (j, &a) in axes.iter().enumerate() {
        let resolved = if a < 0 { a.checked_add(r) } else { Some(a) };
        let Some(i) = resolved.filter(|i| (0..r).contains(i)).map(|i| i as usize) else {
            return Err(Error::ShapeMismatch {
                what: format!("{}: axes", ctx.label),
                expected: format!("axes in -{r}..{r} (input '{input}' has rank {rank})"),
                found: format!("{axes:?}"),
            });
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err(Error::ShapeMismatch {
                what: format!("{}: axes", ctx.label),
                expected: "distinct axes".into(),
                found: format!("{axes:?} (axis {i} twice)"),
            });
        }
        full[i] = pads[j];
        full[i + rank] = pads[j + m];
    }
    Ok(full)
}

fn op_concat(_: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&["axis"])?;
    let Some(axis) = ctx.attr("axis", attr_type::INT)?.map(|a| a.i) else {
        return Err(ctx.invalid("attribute 'axis' is required"));
    };
    let inputs = data_inputs(ctx, ctx.proto.inputs.len())?;
    Ok((Op::Concat { axis }, inputs))
}

/// BatchNormalization (inference): a node with constant per-channel parameters, folded later by
/// [`Graph::fold_batch_norms`] where it follows a Conv or Gemm.
fn op_batch_norm(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&[
        "epsilon",
        "momentum",
        "spatial",
        "training_mode",
        "consumed_inputs",
        "is_test",
    ])?;
    if ctx.int("training_mode", 0)? != 0 || ctx.int("spatial", 1)? != 1 {
        return Err(ctx.unsupported("training_mode or non-spatial BatchNormalization"));
    }
    let inputs = data_inputs(ctx, 5)?;
    for name in &inputs[1..] {
        if imp.floats.get(name).is_none_or(|a| a.ndim() != 1) {
            return Err(ctx.unsupported(format!(
                "parameter '{name}' must be a constant 1-D FLOAT tensor"
            )));
        }
    }
    let op = Op::BatchNormalization {
        epsilon: ctx.float("epsilon", 1e-5)?,
    };
    Ok((op, inputs))
}

fn op_unary(_: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    let f = match ctx.proto.op_type.as_str() {
        "Sigmoid" => Unary::Sigmoid,
        "Tanh" => Unary::Tanh,
        "HardSwish" => Unary::HardSwish,
        "HardSigmoid" => {
            ctx.only_attributes(&["alpha", "beta"])?;
            Unary::HardSigmoid {
                alpha: ctx.float("alpha", 0.2)?,
                beta: ctx.float("beta", 0.5)?,
            }
        }
        _ => {
            ctx.only_attributes(&["alpha"])?;
            Unary::LeakyRelu {
                alpha: ctx.float("alpha", 0.01)?,
            }
        }
    };
    if !matches!(f, Unary::HardSigmoid { .. } | Unary::LeakyRelu { .. }) {
        ctx.only_attributes(&[])?;
    }
    Ok((Op::Unary(f), data_inputs(ctx, 1)?))
}

fn op_binary(_: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&[])?;
    let f = match ctx.proto.op_type.as_str() {
        "Sub" => Binary::Sub,
        "Mul" => Binary::Mul,
        "Div" => Binary::Div,
        _ => Binary::PRelu,
    };
    Ok((Op::Binary(f), data_inputs(ctx, 2)?))
}

fn op_transpose(_: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&["perm"])?;
    let perm = ctx
        .ints("perm")?
        .unwrap_or_default()
        .into_iter()
        .map(|p| usize::try_from(p).map_err(|_| ctx.invalid(format!("negative perm entry {p}"))))
        .collect::<Result<Vec<_>>>()?;
    Ok((Op::Transpose { perm }, data_inputs(ctx, 1)?))
}

fn op_squeeze_unsqueeze(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    Ok((squeeze_unsqueeze(imp, ctx)?, data_inputs(ctx, 1)?))
}

/// Squeeze or Unsqueeze with its axes from the attribute (opset < 13) or the constant input.
fn squeeze_unsqueeze(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<Op> {
    ctx.only_attributes(&["axes"])?;
    let axes = match ctx.ints("axes")? {
        Some(a) => a,
        None => imp.int_const(ctx, 1)?.unwrap_or_default(),
    };
    if ctx.proto.op_type == "Squeeze" {
        Ok(Op::Squeeze { axes })
    } else if axes.is_empty() {
        Err(ctx.invalid("Unsqueeze needs axes"))
    } else {
        Ok(Op::Unsqueeze { axes })
    }
}

fn op_global_max_pool(_: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&[])?;
    Ok((Op::GlobalMaxPool, data_inputs(ctx, 1)?))
}

fn op_reduce_mean(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&["axes", "keepdims", "noop_with_empty_axes"])?;
    let axes = match ctx.ints("axes")? {
        Some(a) => a,
        None => imp.int_const(ctx, 1)?.unwrap_or_default(),
    };
    if axes.is_empty() && ctx.int("noop_with_empty_axes", 0)? != 0 {
        return Ok((Op::Identity, data_inputs(ctx, 1)?));
    }
    let op = Op::ReduceMean {
        axes,
        keep_dims: ctx.int("keepdims", 1)? != 0,
    };
    Ok((op, data_inputs(ctx, 1)?))
}

fn op_softmax(imp: &Importer, ctx: &NodeCtx<'_, '_>) -> Result<(Op, Vec<String>)> {
    ctx.only_attributes(&["axis"])?;
    let coerce_2d = imp.opset < 13;
    let op = Op::Softmax {
        axis: ctx.int("axis", if coerce_2d { 1 } else { -1 })?,
        coerce_2d,
    };
    Ok((op, data_inputs(ctx, 1)?))
}
