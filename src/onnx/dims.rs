//! The shapes of the tensors while a model is imported, in terms of the batch size `N`.
//!
//! Folding a shape computation (`Shape`, `auto_pad = SAME_*`, Pad's `axes`) needs the shape of a
//! tensor before the [`Graph`](crate::graph::Graph) exists. [`Shapes`] runs the graph's own
//! per-node shape inference ([`crate::graph::node_shape`]) on every node as import creates it, at a
//! few probe input shapes:
//!
//! - probe 0 takes every unknown input dimension as 1, the shape [`Graph::new`] validates with;
//! - if the first input dimension (the batch) is unknown, probes at `N = 2` and `N = 7`;
//! - if another input dimension is unknown, probes with those at 2 and at 17 (the batch at 1).
//!
//! A dimension is [`Dim::Fixed`] if it is the same at every probe, [`Dim::Batch`]`(k)` if it is `k`,
//! `2k` and `7k` at the batch probes and the same at the others, and [`Dim::Unknown`] otherwise
//! (it depends on a non-batch unknown, or on `N` other than as a multiple). The probes see what the
//! shape inference sees; a dimension such as `min(N, 7)` (a Slice of the batch axis ending at 7)
//! would pass for `N`, which no exporter writes.
//!
//! [`Graph::new`]: crate::graph::Graph::new

use std::collections::HashMap;
use std::fmt;

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::graph::{Node, TensorInfo, node_shape};

/// The batch sizes of the batch probes.
const BATCH_PROBES: [usize; 2] = [2, 7];
/// The values of the other unknown input dimensions at their probes.
const OTHER_PROBES: [usize; 2] = [2, 17];

/// One dimension of a tensor during import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dim {
    /// The same for every input the declared shape allows.
    Fixed(usize),
    /// `k · N` for the batch size `N` (k >= 1).
    Batch(usize),
    /// Depends on an unknown input dimension other than the batch, or on `N` in another way.
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(d) => write!(f, "{d}"),
            Dim::Batch(1) => write!(f, "N"),
            Dim::Batch(k) => write!(f, "{k}N"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// `[N, 4, ?]`.
pub(super) fn format_dims(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// What is known of one tensor.
#[derive(Debug)]
enum Known {
    /// Its shape at each probe; `None` where inference failed at that probe (not at probe 0).
    Probes(Vec<Option<Vec<usize>>>),
    /// Inference failed at probe 0 for node `node` (this one or one it depends on).
    Failed { node: usize },
    /// It depends on a name that nothing defined before it.
    Undefined(String),
}

/// Shapes of the graph input and of every node output so far, at the probes. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Shapes {
    input: String,
    probes: Vec<Vec<usize>>,
    /// Indices of the batch probes in `probes`, with their batch size.
    batch: Vec<(usize, usize)>,
    tensors: HashMap<String, Known>,
}

impl Shapes {
    /// The probes of `input`'s declared shape.
    pub(super) fn new(input: &TensorInfo) -> Shapes {
        let fill = |batch: usize, other: usize| -> Vec<usize> {
            input
                .shape
                .iter()
                .enumerate()
                .map(|(i, d)| d.unwrap_or(if i == 0 { batch } else { other }))
                .collect()
        };
        let mut probes = vec![fill(1, 1)];
        let mut batch = Vec::new();
        if input.shape.first().is_some_and(Option::is_none) {
            for n in BATCH_PROBES {
                batch.push((probes.len(), n));
                probes.push(fill(n, 1));
            }
        }
        if input.shape.iter().skip(1).any(Option::is_none) {
            for v in OTHER_PROBES {
                probes.push(fill(1, v));
            }
        }
        Shapes {
            input: input.name.clone(),
            probes,
            batch,
            tensors: HashMap::new(),
        }
    }

    /// The shapes at every probe of `name`: the input, a node output seen so far, or an initializer
    /// (the same at every probe).
    fn lookup(&self, name: &str, floats: &HashMap<String, ArrayD<f32>>) -> Known {
        if name == self.input {
            return Known::Probes(self.probes.iter().cloned().map(Some).collect());
        }
        match self.tensors.get(name) {
            Some(Known::Probes(p)) => Known::Probes(p.clone()),
            Some(Known::Failed { node }) => Known::Failed { node: *node },
            Some(Known::Undefined(n)) => Known::Undefined(n.clone()),
            None => match floats.get(name) {
                Some(a) => Known::Probes(vec![Some(a.shape().to_vec()); self.probes.len()]),
                None => Known::Undefined(name.to_string()),
            },
        }
    }

    /// Infers the output of `node` (the `index`-th of the graph being built) at every probe.
    pub(super) fn record(
        &mut self,
        index: usize,
        node: &Node,
        floats: &HashMap<String, ArrayD<f32>>,
    ) {
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for name in &node.inputs {
            match self.lookup(name, floats) {
                Known::Probes(p) => inputs.push(p),
                other => {
                    self.tensors.insert(node.output.clone(), other);
                    return;
                }
            }
        }
        let mut out = Vec::with_capacity(self.probes.len());
        for p in 0..self.probes.len() {
            let shapes: Option<Vec<&[usize]>> = inputs.iter().map(|s| s[p].as_deref()).collect();
            let shape = shapes.and_then(|s| node_shape(node, &s).ok());
            if p == 0 && shape.is_none() {
                self.tensors
                    .insert(node.output.clone(), Known::Failed { node: index });
                return;
            }
            out.push(shape);
        }
        self.tensors.insert(node.output.clone(), Known::Probes(out));
    }

    /// The dimensions of `name` (the input, a node output so far, or an initializer).
    ///
    /// # Errors
    /// The error shape inference gives for the node that could not be inferred, or
    /// `InvalidArgument` if `name` (or a tensor it depends on) is not defined before it.
    pub(super) fn dims(
        &self,
        name: &str,
        nodes: &[Node],
        floats: &HashMap<String, ArrayD<f32>>,
    ) -> Result<Vec<Dim>> {
        let probes = match self.lookup(name, floats) {
            Known::Probes(p) => p,
            Known::Undefined(n) => {
                return Err(Error::InvalidArgument {
                    name: "onnx graph",
                    reason: format!(
                        "'{n}' is read before it is defined (it is not the input, an \
                         initializer or the output of an earlier node)"
                    ),
                });
            }
            Known::Failed { node } => return Err(self.failure(node, nodes, floats)),
        };
        let Some(Some(first)) = probes.first() else {
            return Err(internal(name));
        };
        Ok((0..first.len())
            .map(|i| self.classify(&probes, i, first[i]))
            .collect())
    }

    fn classify(&self, probes: &[Option<Vec<usize>>], i: usize, d0: usize) -> Dim {
        let at = |p: usize| {
            probes
                .get(p)
                .and_then(|s| s.as_ref())
                .filter(|s| s.len() == probes[0].as_ref().map_or(0, Vec::len))
                .map(|s| s[i])
        };
        let mut fixed = true;
        let mut batch = d0 > 0;
        for p in 1..self.probes.len() {
            let Some(d) = at(p) else {
                return Dim::Unknown;
            };
            match self.batch.iter().find(|(q, _)| *q == p) {
                Some(&(_, n)) => {
                    fixed &= d == d0;
                    batch &= d0.checked_mul(n) == Some(d);
                }
                None if d != d0 => return Dim::Unknown,
                None => {}
            }
        }
        match (fixed, batch) {
            (true, _) => Dim::Fixed(d0),
            (false, true) => Dim::Batch(d0),
            (false, false) => Dim::Unknown,
        }
    }

    /// Re-runs the failed inference of `nodes[node]` at probe 0 for its error.
    fn failure(&self, node: usize, nodes: &[Node], floats: &HashMap<String, ArrayD<f32>>) -> Error {
        let Some(n) = nodes.get(node) else {
            return internal(&format!("node #{node}"));
        };
        let mut shapes = Vec::with_capacity(n.inputs.len());
        for name in &n.inputs {
            match self.lookup(name, floats) {
                Known::Probes(p) => match p.into_iter().next().flatten() {
                    Some(s) => shapes.push(s),
                    None => return internal(name),
                },
                _ => return internal(name),
            }
        }
        let views: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        match node_shape(n, &views) {
            Err(e) => e,
            Ok(_) => internal(&n.output),
        }
    }
}

fn internal(name: &str) -> Error {
    Error::Internal {
        reason: format!("import lost track of the shape of '{name}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Op;

    fn input(shape: Vec<Option<usize>>) -> TensorInfo {
        TensorInfo {
            name: "x".into(),
            shape,
        }
    }

    fn node(op: Op, input: &str, output: &str) -> Node {
        Node {
            name: output.into(),
            op,
            inputs: vec![input.into()],
            output: output.into(),
        }
    }

    #[test]
    fn batch_multiples_and_other_unknowns_are_told_apart() {
        let floats = HashMap::new();
        let mut s = Shapes::new(&input(vec![None, Some(4), None, Some(6)]));
        let nodes = vec![
            node(Op::Flatten { axis: 2 }, "x", "f"),
            node(Op::GlobalAveragePool, "x", "g"),
            node(
                Op::Pad {
                    pads: vec![1, 0, 0, 0, 0, 0, 0, 0],
                    value: 0.0,
                },
                "x",
                "p",
            ),
        ];
        for (i, n) in nodes.iter().enumerate() {
            s.record(i, n, &floats);
        }
        let dims = |name| s.dims(name, &nodes, &floats).unwrap();
        use Dim::*;
        assert_eq!(dims("x"), vec![Batch(1), Fixed(4), Unknown, Fixed(6)]);
        assert_eq!(dims("f"), vec![Batch(4), Unknown]);
        assert_eq!(dims("g"), vec![Batch(1), Fixed(4), Fixed(1), Fixed(1)]);
        assert_eq!(dims("p")[0], Unknown);
        assert_eq!(format_dims(&dims("f")), "[4N, ?]");
    }

    #[test]
    fn a_failed_inference_is_reported_when_its_shape_is_needed() {
        let floats = HashMap::new();
        let mut s = Shapes::new(&input(vec![None, Some(3)]));
        let nodes = vec![
            node(Op::GlobalAveragePool, "x", "g"),
            node(Op::Relu, "g", "r"),
        ];
        for (i, n) in nodes.iter().enumerate() {
            s.record(i, n, &floats);
        }
        match s.dims("r", &nodes, &floats) {
            Err(Error::Unsupported(m)) => {
                assert!(m.starts_with("node 'g' (GlobalAveragePool)"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.dims("nope", &nodes, &floats),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
