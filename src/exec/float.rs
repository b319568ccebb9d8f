//! The `f32` reference executor.

use ndarray::{ArrayD, ArrayViewD};

use super::ops;
use crate::error::Result;
use crate::graph::{Graph, Op};

/// Where a node input comes from.
#[derive(Debug, Clone, Copy)]
enum Source<'g> {
    Input,
    Initializer(&'g ArrayD<f32>),
    Node(usize),
}

/// Runs a [`Graph`] in `f32`, NCHW, for any batch size `N >= 1`.
///
/// Convolutions are lowered to matrix products (im2col per image and group, then `sgemm` from the
/// `matrixmultiply` crate through [`ndarray::linalg::general_mat_mul`]); 1x1 stride-1 unpadded
/// convolutions skip im2col. Intermediate activations are freed after their last reader.
///
/// # Examples
/// ```
/// use fixq::graph::{Graph, Node, Op, TensorInfo};
/// use fixq::exec::FloatExecutor;
/// use ndarray::{ArrayD, IxDyn};
///
/// let input = TensorInfo { name: "x".into(), shape: vec![None, Some(3)] };
/// let relu = Node { name: "r".into(), op: Op::Relu, inputs: vec!["x".into()], output: "y".into() };
/// let graph = Graph::new(input, "y", vec![relu], vec![]).unwrap();
/// let exec = FloatExecutor::new(&graph);
/// let x = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![-1.0, 0.5, 2.0]).unwrap();
/// let mut seen = Vec::new();
/// let y = exec.run_with(x.view(), |name, node, act| seen.push((name.to_string(), node, act.len()))).unwrap();
/// assert_eq!(y.as_slice().unwrap(), &[0.0, 0.5, 2.0]);
/// assert_eq!(seen, vec![("y".to_string(), 0, 3)]);
/// ```
#[derive(Debug, Clone)]
pub struct FloatExecutor<'g> {
    graph: &'g Graph,
    sources: Vec<Vec<Source<'g>>>,
    /// Node outputs that can be dropped after each node runs.
    frees: Vec<Vec<usize>>,
    output: Source<'g>,
}

impl<'g> FloatExecutor<'g> {
    /// Prepares `graph` for execution. Cannot fail: the graph was validated when built.
    pub fn new(graph: &'g Graph) -> Self {
        let nodes = graph.nodes();
        let resolve = |name: &str, before: usize| -> Source<'g> {
            if let Some(j) = nodes[..before].iter().rposition(|n| n.output == name) {
                Source::Node(j)
            } else if let Some(a) = graph.initializer(name) {
                Source::Initializer(a)
            } else {
                Source::Input
            }
        };
        let sources: Vec<Vec<Source<'g>>> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| n.inputs.iter().map(|name| resolve(name, i)).collect())
            .collect();
        let output = resolve(&graph.output().name, nodes.len());
        let mut last_use: Vec<Option<usize>> = vec![None; nodes.len()];
        for (i, srcs) in sources.iter().enumerate() {
            for s in srcs {
                if let Source::Node(j) = *s {
                    last_use[j] = Some(i);
                }
            }
        }
        let mut frees = vec![Vec::new(); nodes.len()];
        for (j, last) in last_use.iter().enumerate() {
            let keep = matches!(output, Source::Node(o) if o == j);
            if let (Some(i), false) = (last, keep) {
                frees[*i].push(j);
            }
        }
        FloatExecutor {
            graph,
            sources,
            frees,
            output,
        }
    }

    /// The graph being run.
    pub fn graph(&self) -> &'g Graph {
        self.graph
    }

    /// Runs the graph on `input` (shape must fit the graph's declared input shape) and returns the
    /// output.
    ///
    /// # Errors
    /// `ShapeMismatch` (or `Unsupported`) from [`Graph::infer_shapes`] if `input`'s shape does not
    /// fit; nothing is computed in that case.
    pub fn run(&self, input: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.run_with(input, |_, _, _| {})
    }

    /// As [`FloatExecutor::run`], calling `observer(tensor_name, node_index, activation)` on the output
    /// of every node, in execution order, as soon as it is computed (the graph input itself is not
    /// passed). Calibration uses this to feed statistics accumulators.
    ///
    /// # Errors
    /// As [`FloatExecutor::run`].
    pub fn run_with<F>(&self, input: ArrayViewD<'_, f32>, mut observer: F) -> Result<ArrayD<f32>>
    where
        F: FnMut(&str, usize, &ArrayViewD<'_, f32>),
    {
        self.run_with_mut(input, |name, i, out| observer(name, i, &out.view()))
    }

    /// As [`FloatExecutor::run_with`], but the observer may modify each node's output before later
    /// nodes read it — for example to inject noise of a known power and measure how it reaches the
    /// output (the noise gains of [`crate::plan`]).
    ///
    /// # Errors
    /// As [`FloatExecutor::run`].
    pub fn run_with_mut<F>(
        &self,
        input: ArrayViewD<'_, f32>,
        mut observer: F,
    ) -> Result<ArrayD<f32>>
    where
        F: FnMut(&str, usize, &mut ArrayD<f32>),
    {
        let shapes = self.graph.infer_shapes(input.shape())?;
        let mut values: Vec<Option<ArrayD<f32>>> = vec![None; self.graph.nodes().len()];
        for (i, node) in self.graph.nodes().iter().enumerate() {
            // Element-wise unary ops reuse their input's buffer when this node is its last reader.
            if let Some(j) = self.in_place_source(i)
                && let Some(mut out) = values[j].take()
            {
                ops::apply_unary_in_place(&node.op, &mut out);
                observer(&node.output, i, &mut out);
                values[i] = Some(out);
                continue;
            }
            let args: Vec<ArrayViewD<'_, f32>> = self.sources[i]
                .iter()
                .map(|s| match *s {
                    Source::Input => Ok(input.view()),
                    Source::Initializer(a) => Ok(a.view()),
                    Source::Node(j) => values[j]
                        .as_ref()
                        .map(ArrayD::view)
                        .ok_or_else(|| freed(node.name.as_str())),
                })
                .collect::<Result<_>>()?;
            let mut out = ops::eval_float(&node.op, &args, &shapes[i])?;
            drop(args);
            observer(&node.output, i, &mut out);
            values[i] = Some(out);
            for &j in &self.frees[i] {
                values[j] = None;
            }
        }
        match self.output {
            Source::Input => Ok(input.to_owned()),
            Source::Initializer(a) => Ok(a.clone()),
            Source::Node(j) => values[j].take().ok_or_else(|| freed("output")),
        }
    }
}

/// Every value of one forward pass, kept for [`FloatExecutor::backward`].
#[derive(Debug, Clone)]
pub struct Tape {
    input: ArrayD<f32>,
    values: Vec<ArrayD<f32>>,
}

impl Tape {
    /// The graph input the pass ran on.
    pub fn input(&self) -> &ArrayD<f32> {
        &self.input
    }
    /// The output of node `i` (graph order).
    pub fn value(&self, i: usize) -> Option<&ArrayD<f32>> {
        self.values.get(i)
    }
}

/// The gradients of one backward pass: ∂L/∂t for the graph input and every node output t that
/// reaches the graph output (`None` for those that do not).
#[derive(Debug, Clone)]
pub struct Gradients {
    /// ∂L/∂input.
    pub input: Option<ArrayD<f32>>,
    /// ∂L/∂(output of node i), graph order.
    pub nodes: Vec<Option<ArrayD<f32>>>,
}

impl<'g> FloatExecutor<'g> {
    /// Runs the graph on `input` like [`FloatExecutor::run`] and keeps every node's output (no value
    /// is freed or overwritten) for a backward pass. Memory: the sum of all activations of the batch.
    ///
    /// # Errors
    /// As [`FloatExecutor::run`].
    pub fn run_taped(&self, input: ArrayViewD<'_, f32>) -> Result<Tape> {
        let shapes = self.graph.infer_shapes(input.shape())?;
        let mut values: Vec<ArrayD<f32>> = Vec::with_capacity(self.graph.nodes().len());
        for (i, node) in self.graph.nodes().iter().enumerate() {
            let args = self.args(i, input.view(), &values)?;
            let out = ops::eval_float(&node.op, &args, &shapes[i])?;
            drop(args);
            values.push(out);
        }
        Ok(Tape {
            input: input.to_owned(),
            values,
        })
    }

    /// The output of a taped pass.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if `tape` is from another graph.
    pub fn tape_output<'t>(&'t self, tape: &'t Tape) -> Result<&'t ArrayD<f32>> {
        match self.output {
            Source::Input => Ok(&tape.input),
            Source::Initializer(a) => Ok(a),
            Source::Node(j) => tape.values.get(j).ok_or_else(|| freed("output")),
        }
    }

    /// Back-propagates `d_output` (∂L/∂output, the output's shape) through the taped pass: the
    /// vector-Jacobian products of every node in reverse order, summed where a value has several
    /// readers. Initializers get no gradient.
    ///
    /// # Errors
    /// [`crate::Error::Unsupported`] naming the node if an op on the path has no backward pass;
    /// [`crate::Error::ShapeMismatch`] if `d_output` does not have the output's shape.
    ///
    /// # Example
    /// ```
    /// use fixq::graph::{Graph, Node, Op, TensorInfo};
    /// use fixq::exec::FloatExecutor;
    /// use ndarray::{ArrayD, IxDyn};
    ///
    /// let input = TensorInfo { name: "x".into(), shape: vec![None, Some(3)] };
    /// let relu = Node { name: "r".into(), op: Op::Relu, inputs: vec!["x".into()], output: "y".into() };
    /// let graph = Graph::new(input, "y", vec![relu], vec![])?;
    /// let exec = FloatExecutor::new(&graph);
    /// let x = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![-1.0, 0.5, 2.0])?;
    /// let tape = exec.run_taped(x.view())?;
    /// let dy = ArrayD::from_elem(IxDyn(&[1, 3]), 1.0f32);
    /// let g = exec.backward(&tape, dy.view())?;
    /// assert_eq!(g.input.unwrap().as_slice().unwrap(), &[0.0, 1.0, 1.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backward(&self, tape: &Tape, d_output: ArrayViewD<'_, f32>) -> Result<Gradients> {
        let n = self.graph.nodes().len();
        let out = self.tape_output(tape)?;
        if out.shape() != d_output.shape() {
            return Err(crate::Error::ShapeMismatch {
                what: "output gradient".into(),
                expected: format!("{:?}", out.shape()),
                found: format!("{:?}", d_output.shape()),
            });
        }
        let mut grads: Vec<Option<ArrayD<f32>>> = vec![None; n];
        let mut input_grad: Option<ArrayD<f32>> = None;
        let add_to = |slot: &mut Option<ArrayD<f32>>, g: ArrayD<f32>| match slot {
            Some(acc) => *acc += &g,
            None => *slot = Some(g),
        };
        match self.output {
            Source::Input => input_grad = Some(d_output.to_owned()),
            Source::Initializer(_) => {}
            Source::Node(j) => grads[j] = Some(d_output.to_owned()),
        }
        for i in (0..n).rev() {
            let Some(dy) = grads[i].take() else {
                continue;
            };
            let node = &self.graph.nodes()[i];
            let args = self.args(i, tape.input.view(), &tape.values)?;
            let need: Vec<bool> = self.sources[i]
                .iter()
                .map(|s| !matches!(s, Source::Initializer(_)))
                .collect();
            let g = ops::Grad {
                x: &args,
                y: tape.values[i].view(),
                dy: dy.view(),
                need: &need,
            };
            let dx = ops::vjp_float(&node.op, &g).map_err(|e| match e {
                crate::Error::Unsupported(why) => crate::Error::Unsupported(format!(
                    "node '{}' ({}): {why}",
                    node.name,
                    node.op.name()
                )),
                other => other,
            })?;
            for (s, d) in self.sources[i].iter().zip(dx) {
                let Some(d) = d else { continue };
                match *s {
                    Source::Input => add_to(&mut input_grad, d),
                    Source::Node(j) => add_to(&mut grads[j], d),
                    Source::Initializer(_) => {}
                }
            }
            grads[i] = Some(dy);
        }
        Ok(Gradients {
            input: input_grad,
            nodes: grads,
        })
    }

    /// The change of node `i`'s output, in the taped pass, when its constant input `which` (a
    /// weight) changes by `d`: the node evaluated on its first two inputs with `which` replaced by
    /// `d` and no bias — exact for Conv, Gemm and MatMul, which are linear in their weights.
    pub(crate) fn weight_delta(
        &self,
        tape: &Tape,
        i: usize,
        which: usize,
        d: ArrayViewD<'_, f32>,
    ) -> Result<ArrayD<f32>> {
        let node = &self.graph.nodes()[i];
        let args = self.args(i, tape.input.view(), &tape.values)?;
        if which >= args.len().min(2) {
            return Err(crate::Error::Internal {
                reason: format!("node '{}' has no input {which}", node.name),
            });
        }
        let args: Vec<ArrayViewD<'_, f32>> = args
            .into_iter()
            .take(2)
            .enumerate()
            .map(|(k, a)| if k == which { d.view() } else { a })
            .collect();
        ops::eval_float(&node.op, &args, tape.values[i].shape())
    }

    /// The arguments of node `i` from the graph input and the values computed so far.
    fn args<'a>(
        &'a self,
        i: usize,
        input: ArrayViewD<'a, f32>,
        values: &'a [ArrayD<f32>],
    ) -> Result<Vec<ArrayViewD<'a, f32>>> {
        self.sources[i]
            .iter()
            .map(move |s| match *s {
                Source::Input => Ok(input.clone()),
                Source::Initializer(a) => Ok(a.view()),
                Source::Node(j) => values
                    .get(j)
                    .map(ArrayD::view)
                    .ok_or_else(|| freed(self.graph.nodes()[i].name.as_str())),
            })
            .collect()
    }
}

impl FloatExecutor<'_> {
    /// The node whose output node `i` may overwrite: `i` is element-wise unary and the last reader.
    fn in_place_source(&self, i: usize) -> Option<usize> {
        let unary = matches!(
            self.graph.nodes()[i].op,
            Op::Relu | Op::Clip { .. } | Op::Identity
        );
        match self.sources[i][..] {
            [Source::Node(j)] if unary && self.frees[i].contains(&j) => Some(j),
            _ => None,
        }
    }
}

/// An internal invariant broke (a value was freed too early); reported rather than panicking.
fn freed(what: &str) -> crate::Error {
    crate::Error::InvalidArgument {
        name: "graph",
        reason: format!("internal: value for '{what}' was not available"),
    }
}
