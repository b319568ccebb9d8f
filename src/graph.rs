//! The crate's own network graph: typed operators over named tensors, validated at construction.
//!
//! A [`Graph`] has one float input, one output, a list of [`Node`]s in topological order (every
//! input of a node is the graph input, an initializer, or the output of an earlier node) and a set
//! of float initializers (weights and biases). Each node has exactly one output. Activations are
//! NCHW: batch, channels, height, width.
//!
//! [`Graph::new`] checks that every name is defined before use, that output names are unique, that
//! attributes are in range and that shapes agree (by running [`Graph::infer_shapes`] on the declared
//! input shape, with unknown dimensions taken as 1). After that, every method that can still fail
//! says why in its docs.

use std::collections::{BTreeMap, HashMap, HashSet};

use ndarray::ArrayD;

use crate::error::{Error, Result};

// Size limits. Shapes come from files, so every size is bounded here, in one place, before any
// arithmetic on it: with each input dimension at most 2^24 and every tensor at most 2^31 elements,
// shape inference's checked products and sums never come near `usize::MAX`.

/// Largest number of elements any tensor may have (2^31, i.e. 8 GiB of `f32`), and largest size of
/// any one dimension of any tensor; shape inference rejects graphs whose activations would exceed it
/// rather than attempting the allocation.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 31;

/// Largest size of one dimension of the graph input, declared or given (2^24 = 16 777 216).
pub const MAX_INPUT_DIM: usize = 1 << 24;

/// Largest number of elements of one sample of the graph input (2^28 = 268 435 456, 1 GiB of
/// `f32`): the product of every input dimension but the first, which is the batch.
pub const MAX_SAMPLE_ELEMENTS: usize = 1 << 28;

/// A 2-D sliding window shared by pooling operators.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool2d {
    /// Window size `[height, width]`, each >= 1.
    pub kernel: [usize; 2],
    /// Step between windows `[vertical, horizontal]`, each >= 1.
    pub stride: [usize; 2],
    /// Implicit padding `[top, left, bottom, right]` (ONNX order: all begins, then all ends).
    pub pad: [usize; 4],
    /// Spacing between window taps `[vertical, horizontal]`, each >= 1 (1 = dense).
    pub dilation: [usize; 2],
    /// Round the output size up instead of down (ONNX `ceil_mode`); a window that would start
    /// entirely in the bottom/right padding is dropped.
    pub ceil_mode: bool,
}

/// An operator with its attributes, resolved to plain values at import.
///
/// Inputs of each node, in order (`[..]` = optional; weights must be initializers where noted):
/// - `Conv`: `x [N,C,H,W]`, `w [O,C/groups,kh,kw]` (initializer), `[b [O]]` (initializer).
/// - `Gemm`: `a [M,K]` (or `[K,M]` if `trans_a`), `b [K,N]` (or `[N,K]` if `trans_b`), `[c]`
///   broadcastable to `[M,N]`.
/// - `MatMul`: `a [...,M,K]`, `b [K,N]` or `b [...,K,N]` with the same leading dimensions.
/// - `Add`: two tensors with NumPy-broadcastable shapes.
/// - `Concat`: one or more tensors.
/// - every other operator: one tensor.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Op {
    /// 2-D convolution (cross-correlation) with optional bias.
    Conv {
        /// Step between output positions `[vertical, horizontal]`, each >= 1.
        stride: [usize; 2],
        /// Zero padding `[top, left, bottom, right]`.
        pad: [usize; 4],
        /// Spacing between kernel taps `[vertical, horizontal]`, each >= 1.
        dilation: [usize; 2],
        /// Number of channel groups, >= 1; divides both input and output channels.
        groups: usize,
    },
    /// General matrix product `y = alpha * op(a) * op(b) + beta * c`.
    Gemm {
        /// Scale of the product.
        alpha: f32,
        /// Scale of `c`.
        beta: f32,
        /// Use `a` transposed.
        trans_a: bool,
        /// Use `b` transposed (PyTorch `Linear` exports `trans_b = true`, weights `[out, in]`).
        trans_b: bool,
    },
    /// Matrix product with NumPy semantics for leading (batch) dimensions.
    MatMul,
    /// Element-wise sum with NumPy broadcasting.
    Add,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, min), max)`.
    Clip {
        /// Lower bound (may be `-inf`).
        min: f32,
        /// Upper bound (may be `+inf`), >= `min`.
        max: f32,
    },
    /// 2-D max pooling; padding never wins the max.
    MaxPool(Pool2d),
    /// 2-D average pooling.
    AveragePool {
        /// The window.
        pool: Pool2d,
        /// Count padding positions in the divisor (ONNX `count_include_pad`).
        count_include_pad: bool,
    },
    /// Mean over all spatial positions: `[N,C,H,W] -> [N,C,1,1]`.
    GlobalAveragePool,
    /// Collapse to 2-D: dimensions before `axis` form the rows, the rest the columns.
    Flatten {
        /// Split point, in `-rank..=rank` (negative counts from the end).
        axis: i64,
    },
    /// Reinterpret the element order under a new shape (ONNX rules: `0` copies the input
    /// dimension unless `allow_zero`, one `-1` is inferred).
    Reshape {
        /// Target shape.
        shape: Vec<i64>,
        /// Take `0` literally instead of copying the input dimension.
        allow_zero: bool,
    },
    /// Strided sub-range along some axes (ONNX `Slice` rules: negative indices count from the end,
    /// out-of-range bounds are clamped, steps may be negative).
    Slice {
        /// First index per listed axis.
        starts: Vec<i64>,
        /// One-past-last index per listed axis.
        ends: Vec<i64>,
        /// Axes the other lists refer to (negative counts from the end), all distinct.
        axes: Vec<i64>,
        /// Step per listed axis, non-zero.
        steps: Vec<i64>,
    },
    /// Constant padding: `pads = [b_0, .., b_{r-1}, e_0, .., e_{r-1}]` elements added before and
    /// after each axis (negative values crop).
    Pad {
        /// Begin and end counts for every axis.
        pads: Vec<i64>,
        /// The fill value.
        value: f32,
    },
    /// Join along an axis.
    Concat {
        /// The axis, in `-rank..rank`.
        axis: i64,
    },
    /// Pass the input through (also what `Dropout` becomes at inference).
    Identity,
    /// Inference batch normalization over channels (axis 1), per channel c:
    /// y = scale_c·(x − mean_c)/√(var_c + ε) + bias_c. Inputs: x, scale, bias, mean, var (one value per
    /// channel each). ONNX import folds it into the Conv or Gemm before it wherever it can
    /// ([`Graph::fold_batch_norms`]); what remains runs in the float executor.
    BatchNormalization {
        /// ε, added to the variance.
        epsilon: f32,
    },
    /// An element-wise function of one input.
    Unary(Unary),
    /// An element-wise function of two inputs with NumPy broadcasting.
    Binary(Binary),
    /// Permute the axes: output axis i is input axis `perm[i]`.
    Transpose {
        /// A permutation of `0..rank`.
        perm: Vec<usize>,
    },
    /// Remove size-1 axes (all of them when `axes` is empty).
    Squeeze {
        /// Axes, in `-rank..rank`.
        axes: Vec<i64>,
    },
    /// Insert size-1 axes at `axes` of the output.
    Unsqueeze {
        /// Axes of the output, in `-out_rank..out_rank`.
        axes: Vec<i64>,
    },
    /// Maximum over H and W: `[N, C, H, W]` → `[N, C, 1, 1]`.
    GlobalMaxPool,
    /// Mean over `axes` (all when empty), keeping them as size 1 or removing them.
    ReduceMean {
        /// Axes, in `-rank..rank`.
        axes: Vec<i64>,
        /// Whether reduced axes stay as size 1.
        keep_dims: bool,
    },
    /// Softmax along `axis` (opset ≥ 13) or, with `coerce_2d` (opset < 13), over the flattened axes
    /// from `axis` on.
    Softmax {
        /// The axis, in `-rank..rank`.
        axis: i64,
        /// Opset < 13 semantics.
        coerce_2d: bool,
    },
}

/// Element-wise functions of one input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    /// 1/(1 + e^−x).
    Sigmoid,
    /// tanh x.
    Tanh,
    /// max(0, min(1, αx + β)).
    HardSigmoid {
        /// α.
        alpha: f32,
        /// β.
        beta: f32,
    },
    /// x · max(0, min(1, x/6 + 1/2)).
    HardSwish,
    /// x for x ≥ 0, αx otherwise.
    LeakyRelu {
        /// α.
        alpha: f32,
    },
}

/// Element-wise functions of two inputs (NumPy broadcasting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// a − b.
    Sub,
    /// a · b.
    Mul,
    /// a / b.
    Div,
    /// a for a ≥ 0, b·a otherwise (b the slope).
    PRelu,
}

impl Op {
    /// The ONNX operator name this corresponds to.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "Conv",
            Op::Gemm { .. } => "Gemm",
            Op::MatMul => "MatMul",
            Op::Add => "Add",
            Op::Relu => "Relu",
            Op::Clip { .. } => "Clip",
            Op::MaxPool(_) => "MaxPool",
            Op::AveragePool { .. } => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::Flatten { .. } => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Slice { .. } => "Slice",
            Op::Pad { .. } => "Pad",
            Op::Concat { .. } => "Concat",
            Op::Identity => "Identity",
            Op::BatchNormalization { .. } => "BatchNormalization",
            Op::Unary(Unary::Sigmoid) => "Sigmoid",
            Op::Unary(Unary::Tanh) => "Tanh",
            Op::Unary(Unary::HardSigmoid { .. }) => "HardSigmoid",
            Op::Unary(Unary::HardSwish) => "HardSwish",
            Op::Unary(Unary::LeakyRelu { .. }) => "LeakyRelu",
            Op::Binary(Binary::Sub) => "Sub",
            Op::Binary(Binary::Mul) => "Mul",
            Op::Binary(Binary::Div) => "Div",
            Op::Binary(Binary::PRelu) => "PRelu",
            Op::Transpose { .. } => "Transpose",
            Op::Squeeze { .. } => "Squeeze",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::GlobalMaxPool => "GlobalMaxPool",
            Op::ReduceMean { .. } => "ReduceMean",
            Op::Softmax { .. } => "Softmax",
        }
    }

    /// Allowed number of inputs, inclusive.
    fn arity(&self) -> (usize, usize) {
        match self {
            Op::Conv { .. } | Op::Gemm { .. } => (2, 3),
            Op::MatMul | Op::Add | Op::Binary(_) => (2, 2),
            Op::BatchNormalization { .. } => (5, 5),
            Op::Concat { .. } => (1, usize::MAX),
            _ => (1, 1),
        }
    }
}

/// One operator application.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Name for messages and per-layer settings (need not be unique, but ONNX exports usually are).
    pub name: String,
    /// The operator.
    pub op: Op,
    /// Names of the input tensors, in the order documented on [`Op`].
    pub inputs: Vec<String>,
    /// Name of the single output tensor; unique in the graph.
    pub output: String,
}

/// A named tensor with a possibly partly unknown shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dimensions; `None` for a symbolic one such as the batch size.
    pub shape: Vec<Option<usize>>,
}

/// A validated float network. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Graph {
    input: TensorInfo,
    output: TensorInfo,
    nodes: Vec<Node>,
    initializers: BTreeMap<String, ArrayD<f32>>,
}

fn invalid(reason: String) -> Error {
    Error::InvalidArgument {
        name: "graph",
        reason,
    }
}

fn mismatch(what: String, expected: String, found: String) -> Error {
    Error::ShapeMismatch {
        what,
        expected,
        found,
    }
}

impl Graph {
    /// Builds and validates a graph.
    ///
    /// `nodes` must be in topological order. Initializers that no node reads are kept (they cost
    /// only memory).
    ///
    /// # Errors
    /// - `InvalidArgument` if a name is empty, defined twice, or read before it is defined; if an
    ///   operator has the wrong number of inputs, an out-of-range attribute, or a `Conv` whose
    ///   weights or bias are not initializers; or if `output` is never produced.
    /// - `Unsupported` if a declared input dimension exceeds [`MAX_INPUT_DIM`] or the declared
    ///   dimensions after the first multiply to more than [`MAX_SAMPLE_ELEMENTS`] (unknown ones
    ///   count as 1).
    /// - `ShapeMismatch` / `Unsupported` from shape inference on the declared input shape.
    ///
    /// # Examples
    /// ```
    /// use fixq::graph::{Graph, Node, Op, TensorInfo};
    /// let input = TensorInfo { name: "x".into(), shape: vec![None, Some(4)] };
    /// let relu = Node { name: "r".into(), op: Op::Relu, inputs: vec!["x".into()], output: "y".into() };
    /// let g = Graph::new(input, "y", vec![relu], vec![]).unwrap();
    /// assert_eq!(g.output().shape, vec![None, Some(4)]);
    /// ```
    pub fn new(
        input: TensorInfo,
        output: impl Into<String>,
        nodes: Vec<Node>,
        initializers: Vec<(String, ArrayD<f32>)>,
    ) -> Result<Graph> {
        let output = output.into();
        if input.name.is_empty() || output.is_empty() {
            return Err(invalid("input and output names must not be empty".into()));
        }
        check_input_dims(&input.name, &input.shape)?;
        let mut inits = BTreeMap::new();
        for (name, array) in initializers {
            if name.is_empty() || name == input.name {
                return Err(invalid(format!(
                    "initializer name '{name}' is empty or the input's"
                )));
            }
            if inits.insert(name.clone(), array).is_some() {
                return Err(invalid(format!("initializer '{name}' defined twice")));
            }
        }
        let mut defined: HashSet<&str> = HashSet::new();
        defined.insert(&input.name);
        for node in &nodes {
            check_arity(node)?;
            for name in &node.inputs {
                if !defined.contains(name.as_str()) && !inits.contains_key(name) {
                    return Err(invalid(format!(
                        "node '{}' reads '{name}', which is not the input, an initializer or the \
                         output of an earlier node",
                        node.name
                    )));
                }
            }
            if let Op::Conv { .. } = node.op {
                for name in &node.inputs[1..] {
                    if !inits.contains_key(name) {
                        return Err(invalid(format!(
                            "node '{}' (Conv): weight/bias '{name}' must be an initializer",
                            node.name
                        )));
                    }
                }
            }
            check_attributes(node)?;
            if node.output.is_empty()
                || inits.contains_key(&node.output)
                || !defined.insert(&node.output)
            {
                return Err(invalid(format!(
                    "node '{}' output '{}' is empty or already defined",
                    node.name, node.output
                )));
            }
        }
        if !defined.contains(output.as_str()) {
            return Err(invalid(format!(
                "output '{output}' is not produced by any node or the input"
            )));
        }
        let mut graph = Graph {
            input,
            output: TensorInfo {
                name: output,
                shape: Vec::new(),
            },
            nodes,
            initializers: inits,
        };
        graph.output.shape = graph.derive_output_shape()?;
        Ok(graph)
    }

    /// Output shape for the declared input: dimensions that change when the unknown input
    /// dimensions change are reported as unknown.
    fn derive_output_shape(&self) -> Result<Vec<Option<usize>>> {
        let with = |fill: usize| -> Vec<usize> {
            self.input.shape.iter().map(|d| d.unwrap_or(fill)).collect()
        };
        let one = self.output_shape_for(&with(1))?;
        if self.input.shape.iter().all(Option::is_some) {
            return Ok(one.into_iter().map(Some).collect());
        }
        match self.output_shape_for(&with(2)) {
            Ok(two) if two.len() == one.len() => Ok(one
                .iter()
                .zip(&two)
                .map(|(a, b)| (a == b).then_some(*a))
                .collect()),
            _ => Ok(one.into_iter().map(Some).collect()),
        }
    }

    fn output_shape_for(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        let shapes = self.infer_shapes(input_shape)?;
        Ok(self
            .shape_of(&self.output.name, input_shape, &shapes)
            .unwrap_or_default())
    }

    /// Shape of a tensor by name given the per-node shapes from [`Graph::infer_shapes`].
    fn shape_of(
        &self,
        name: &str,
        input_shape: &[usize],
        node_shapes: &[Vec<usize>],
    ) -> Option<Vec<usize>> {
        if name == self.input.name {
            return Some(input_shape.to_vec());
        }
        if let Some(i) = self.nodes.iter().position(|n| n.output == name) {
            return node_shapes.get(i).cloned();
        }
        self.initializers.get(name).map(|a| a.shape().to_vec())
    }

    /// The graph input.
    pub fn input(&self) -> &TensorInfo {
        &self.input
    }

    /// The graph output; its shape is inferred from the input's (unknown input dimensions that
    /// reach the output, such as the batch size, are `None`).
    pub fn output(&self) -> &TensorInfo {
        &self.output
    }

    /// The nodes in execution (topological) order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// An initializer by name.
    pub fn initializer(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.initializers.get(name)
    }

    /// All initializers, sorted by name.
    pub fn initializers(&self) -> impl Iterator<Item = (&str, &ArrayD<f32>)> {
        self.initializers.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of float parameters held in initializers.
    pub fn parameter_count(&self) -> usize {
        self.initializers.values().map(ArrayD::len).sum()
    }

    /// Replaces an initializer's values, e.g. with weights read by [`crate::io::safetensors::read`]
    /// or [`crate::io::npy::read`].
    ///
    /// # Errors
    /// - `InvalidArgument` if no initializer is called `name`.
    /// - `ShapeMismatch` if `array`'s shape differs from the current one.
    pub fn set_initializer(&mut self, name: &str, array: ArrayD<f32>) -> Result<()> {
        let Some(slot) = self.initializers.get_mut(name) else {
            return Err(Error::InvalidArgument {
                name: "initializer",
                reason: format!("the graph has no initializer '{name}'"),
            });
        };
        if slot.shape() != array.shape() {
            return Err(mismatch(
                format!("initializer '{name}'"),
                format!("{:?}", slot.shape()),
                format!("{:?}", array.shape()),
            ));
        }
        *slot = array;
        Ok(())
    }

    /// Replaces several initializers at once; either all are replaced or, on error, none.
    ///
    /// # Errors
    /// As [`Graph::set_initializer`], for the first offending entry.
    pub fn set_initializers(
        &mut self,
        arrays: impl IntoIterator<Item = (String, ArrayD<f32>)>,
    ) -> Result<()> {
        let arrays: Vec<_> = arrays.into_iter().collect();
        for (name, array) in &arrays {
            match self.initializers.get(name) {
                None => {
                    return Err(Error::InvalidArgument {
                        name: "initializer",
                        reason: format!("the graph has no initializer '{name}'"),
                    });
                }
                Some(old) if old.shape() != array.shape() => {
                    return Err(mismatch(
                        format!("initializer '{name}'"),
                        format!("{:?}", old.shape()),
                        format!("{:?}", array.shape()),
                    ));
                }
                Some(_) => {}
            }
        }
        for (name, array) in arrays {
            self.initializers.insert(name, array);
        }
        Ok(())
    }

    /// Output shape of every node, indexed like [`Graph::nodes`], for a concrete input shape.
    ///
    /// # Errors
    /// - `ShapeMismatch` if `input_shape` contradicts a known input dimension or rank, or if an
    ///   operator's inputs do not fit together (e.g. Conv channels vs weights).
    /// - `Unsupported` for a shape the executor does not handle (e.g. non-4-D Conv input), an
    ///   input beyond [`MAX_INPUT_DIM`], [`MAX_SAMPLE_ELEMENTS`] or [`MAX_TENSOR_ELEMENTS`], or an
    ///   output larger than [`MAX_TENSOR_ELEMENTS`].
    ///
    /// # Examples
    /// ```
    /// # use fixq::graph::{Graph, Node, Op, TensorInfo};
    /// let input = TensorInfo { name: "x".into(), shape: vec![None, Some(2), Some(3)] };
    /// let flat = Node { name: "f".into(), op: Op::Flatten { axis: 1 }, inputs: vec!["x".into()], output: "y".into() };
    /// let g = Graph::new(input, "y", vec![flat], vec![]).unwrap();
    /// assert_eq!(g.infer_shapes(&[5, 2, 3]).unwrap(), vec![vec![5, 6]]);
    /// assert!(g.infer_shapes(&[5, 3, 3]).is_err());
    /// ```
    pub fn infer_shapes(&self, input_shape: &[usize]) -> Result<Vec<Vec<usize>>> {
        let declared = &self.input.shape;
        let fits = declared.len() == input_shape.len()
            && declared
                .iter()
                .zip(input_shape)
                .all(|(d, &s)| d.is_none_or(|d| d == s));
        if !fits {
            return Err(mismatch(
                format!("input '{}'", self.input.name),
                format_dims(declared),
                format!("{input_shape:?}"),
            ));
        }
        let given: Vec<Option<usize>> = input_shape.iter().copied().map(Some).collect();
        check_input_dims(&self.input.name, &given)?;
        if input_shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .is_none_or(|n| n > MAX_TENSOR_ELEMENTS)
        {
            return Err(Error::Unsupported(format!(
                "input '{}' of shape {input_shape:?} has more than {MAX_TENSOR_ELEMENTS} elements",
                self.input.name
            )));
        }
        let mut known: HashMap<&str, usize> = HashMap::new();
        let mut out: Vec<Vec<usize>> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let shapes: Vec<&[usize]> = node
                .inputs
                .iter()
                .map(|name| {
                    if *name == self.input.name {
                        input_shape
                    } else if let Some(&j) = known.get(name.as_str()) {
                        &out[j][..]
                    } else {
                        self.initializers.get(name).map_or(&[][..], |a| a.shape())
                    }
                })
                .collect();
            let shape = infer_named(node, &shapes)?;
            known.insert(&node.output, i);
            out.push(shape);
        }
        Ok(out)
    }
}

/// A node's output shape from its input shapes, with the node named in errors and the output held to
/// [`MAX_TENSOR_ELEMENTS`] (what [`Graph::infer_shapes`] does for each node).
fn infer_named(node: &Node, shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let shape = crate::graph::shape::infer(node, shapes).map_err(|e| match e {
        Error::ShapeMismatch {
            what,
            expected,
            found,
        } => Error::ShapeMismatch {
            what: format!("node '{}' ({}): {what}", node.name, node.op.name()),
            expected,
            found,
        },
        Error::Unsupported(r) => {
            Error::Unsupported(format!("node '{}' ({}): {r}", node.name, node.op.name()))
        }
        other => other,
    })?;
    let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if elements.is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
        return Err(Error::Unsupported(format!(
            "node '{}' ({}): output shape {shape:?} exceeds {MAX_TENSOR_ELEMENTS} elements",
            node.name,
            node.op.name()
        )));
    }
    Ok(shape)
}

/// One node on its own: the checks [`Graph::new`] makes that need no other node (number of inputs,
/// attribute ranges), then its output shape for the given input shapes, as
/// [`Graph::infer_shapes`] computes it. ONNX import tracks shapes with it while it folds the
/// shape-computing parts of a model, before the graph exists.
///
/// # Errors
/// As [`Graph::new`] (`InvalidArgument`) and [`Graph::infer_shapes`] (`ShapeMismatch`,
/// `Unsupported`), naming the node.
pub(crate) fn node_shape(node: &Node, shapes: &[&[usize]]) -> Result<Vec<usize>> {
    check_arity(node)?;
    check_attributes(node)?;
    if shapes.len() != node.inputs.len() {
        return Err(Error::Internal {
            reason: format!(
                "node '{}' ({}): {} input shapes for {} inputs",
                node.name,
                node.op.name(),
                shapes.len(),
                node.inputs.len()
            ),
        });
    }
    infer_named(node, shapes)
}

fn check_arity(node: &Node) -> Result<()> {
    let (lo, hi) = node.op.arity();
    let n = node.inputs.len();
    if n < lo || n > hi {
        return Err(invalid(format!(
            "node '{}' ({}) has {n} inputs; it takes {lo}..={}",
            node.name,
            node.op.name(),
            hi.min(64)
        )));
    }
    Ok(())
}

fn format_dims(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The input size limits: each known dimension at most [`MAX_INPUT_DIM`], the known dimensions
/// after the first (the batch) at most [`MAX_SAMPLE_ELEMENTS`] together. With every factor at most
/// 2^24 and the running product saturating, nothing here can overflow.
fn check_input_dims(name: &str, dims: &[Option<usize>]) -> Result<()> {
    if let Some((i, d)) = dims
        .iter()
        .enumerate()
        .find_map(|(i, d)| d.filter(|&d| d > MAX_INPUT_DIM).map(|d| (i, d)))
    {
        return Err(Error::Unsupported(format!(
            "input '{name}' of shape {}: dimension {i} is {d}, more than the {MAX_INPUT_DIM} \
             fixq accepts",
            format_dims(dims)
        )));
    }
    let mut sample = 1usize;
    for d in dims.iter().skip(1).flatten() {
        sample = sample.saturating_mul(*d);
        if sample > MAX_SAMPLE_ELEMENTS {
            return Err(Error::Unsupported(format!(
                "input '{name}' of shape {}: one sample (every dimension but the first) has more \
                 than the {MAX_SAMPLE_ELEMENTS} elements fixq accepts",
                format_dims(dims)
            )));
        }
    }
    Ok(())
}

/// Range checks that need no shapes.
fn check_attributes(node: &Node) -> Result<()> {
    let bad_window =
        |p: &Pool2d| p.kernel.contains(&0) || p.stride.contains(&0) || p.dilation.contains(&0);
    let problem = match &node.op {
        Op::Conv {
            stride,
            dilation,
            groups,
            ..
        } if stride.contains(&0) || dilation.contains(&0) || *groups == 0 => {
            Some("stride, dilation and groups must be >= 1")
        }
        Op::MaxPool(p) | Op::AveragePool { pool: p, .. } if bad_window(p) => {
            Some("kernel, stride and dilation must be >= 1")
        }
        Op::Clip { min, max } if min.is_nan() || max.is_nan() || min > max => {
            Some("min must be <= max and neither NaN")
        }
        Op::Slice {
            starts,
            ends,
            axes,
            steps,
        } if ends.len() != starts.len()
            || axes.len() != starts.len()
            || steps.len() != starts.len() =>
        {
            Some("starts, ends, axes and steps must have the same length")
        }
        Op::Slice { steps, .. } if steps.contains(&0) => Some("steps must be non-zero"),
        Op::Pad { pads, .. } if pads.len() % 2 != 0 => Some("pads must have an even length"),
        Op::Reshape { shape, .. }
            if shape.iter().filter(|&&d| d == -1).count() > 1 || shape.iter().any(|&d| d < -1) =>
        {
            Some("shape may hold at most one -1 and no other negative value")
        }
        _ => None,
    };
    match problem {
        Some(what) => Err(invalid(format!(
            "node '{}' ({}): {what}",
            node.name,
            node.op.name()
        ))),
        None => Ok(()),
    }
}

mod passes;
mod query;
pub(crate) mod shape;

pub use query::activation_points;
pub(crate) use query::{LayerWeights, layer_weights, matrix_to_shape};
