//! Graph queries shared by the executors and the planner: which tensors are weights, which are
//! activation points (tensors that get their own fixed-point format).

use ndarray::{Array2, ArrayD, Ix2};

use super::{Graph, Op};
use crate::error::{Error, Result};

/// A weighted layer's constant weights, as a 2-D `[out, fan_in]` matrix view of the original tensor
/// (OIHW for Conv, so rows are output channels), plus its bias.
#[derive(Debug, Clone)]
pub(crate) struct LayerWeights {
    pub node_index: usize,
    pub node: String,
    pub weight_name: String,
    /// `[out, fan_in]`, rows = output channels (the original OIHW or `[out, in]` order).
    pub matrix: Array2<f32>,
    /// Bias per output channel (zeros when absent).
    pub bias: Vec<f32>,
    /// The original weight shape (OIHW for Conv, `[out, in]` for dense).
    pub shape: Vec<usize>,
    /// Whether the initializer is stored `[in, out]` (Gemm with transB = 0, MatMul).
    pub stored_transposed: bool,
}

/// The constant weights of every Conv, Gemm and MatMul, in graph order.
pub(crate) fn layer_weights(graph: &Graph) -> Result<Vec<LayerWeights>> {
    let mut out = Vec::new();
    for (i, node) in graph.nodes().iter().enumerate() {
        let init = |k: usize| node.inputs.get(k).and_then(|n| graph.initializer(n));
        let missing = || {
            Error::Unsupported(format!(
                "node '{}' ({}): weights must be a constant initializer",
                node.name,
                node.op.name()
            ))
        };
        match &node.op {
            Op::Conv { .. } => {
                let w = init(1).ok_or_else(missing)?;
                let shape = w.shape().to_vec();
                let o = shape[0];
                let fan: usize = shape[1..].iter().product();
                let matrix = w
                    .to_shape((o, fan))
                    .map_err(|e| shape_err(&node.name, e))?
                    .to_owned();
                let bias = init(2)
                    .map(|b| b.iter().copied().collect())
                    .unwrap_or_else(|| vec![0.0; o]);
                out.push(LayerWeights {
                    node_index: i,
                    node: node.name.clone(),
                    weight_name: node.inputs[1].clone(),
                    matrix,
                    bias,
                    shape,
                    stored_transposed: false,
                });
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                if *trans_a {
                    return Err(Error::Unsupported(format!(
                        "node '{}' (Gemm): transA = 1 is not supported by the fixed-point network",
                        node.name
                    )));
                }
                let b = init(1).ok_or_else(missing)?;
                let b2 = b
                    .view()
                    .into_dimensionality::<Ix2>()
                    .map_err(|e| shape_err(&node.name, e))?;
                let w = if *trans_b {
                    b2.to_owned()
                } else {
                    b2.t().to_owned()
                };
                let w = w.mapv(|v| v * alpha);
                let o = w.nrows();
                let bias = match init(2) {
                    Some(c) if c.len() == o => c.iter().map(|v| v * beta).collect(),
                    Some(c) if c.len() == 1 => {
                        vec![c.iter().next().copied().unwrap_or(0.0) * beta; o]
                    }
                    Some(c) => {
                        return Err(Error::Unsupported(format!(
                            "node '{}' (Gemm): bias of shape {:?} is not per output",
                            node.name,
                            c.shape()
                        )));
                    }
                    None if node.inputs.len() > 2 => return Err(missing()),
                    None => vec![0.0; o],
                };
                out.push(LayerWeights {
                    node_index: i,
                    node: node.name.clone(),
                    weight_name: node.inputs[1].clone(),
                    shape: vec![o, w.ncols()],
                    matrix: w,
                    bias,
                    stored_transposed: !*trans_b,
                });
            }
            Op::MatMul => {
                let b = init(1).ok_or_else(missing)?;
                let b2 = b
                    .view()
                    .into_dimensionality::<Ix2>()
                    .map_err(|e| shape_err(&node.name, e))?;
                let w = b2.t().to_owned();
                let o = w.nrows();
                out.push(LayerWeights {
                    node_index: i,
                    node: node.name.clone(),
                    weight_name: node.inputs[1].clone(),
                    shape: vec![o, w.ncols()],
                    matrix: w,
                    bias: vec![0.0; o],
                    stored_transposed: true,
                });
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(Error::Unsupported(
            "the graph has no Conv, Gemm or MatMul with constant weights to quantize".into(),
        ));
    }
    Ok(out)
}

fn shape_err(node: &str, e: ndarray::ShapeError) -> Error {
    Error::ShapeMismatch {
        what: format!("weights of node '{node}'"),
        expected: "a 2-D (Gemm/MatMul) or 4-D (Conv) constant".into(),
        found: e.to_string(),
    }
}

/// The tensors that get their own activation format, in graph order: the graph input, then for each
/// node that produces a new quantized tensor, its output — where a weighted layer is followed by a
/// `Relu` or `Clip` that is its output's only reader, the activation's output instead (fused).
/// Returns `(tensor name, producing node index or None for the input)`.
pub fn activation_points(graph: &Graph) -> Vec<(String, Option<usize>)> {
    let nodes = graph.nodes();
    let readers = |t: &str| {
        nodes
            .iter()
            .filter(|n| n.inputs.iter().any(|i| i == t))
            .count()
    };
    let mut points = vec![(graph.input().name.clone(), None)];
    let mut fused: Vec<bool> = vec![false; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        match node.op {
            Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul => {
                let next = nodes
                    .iter()
                    .enumerate()
                    .skip(i + 1)
                    .find(|(_, n)| n.inputs.first() == Some(&node.output));
                let fuse = match next {
                    Some((j, n)) => {
                        matches!(n.op, Op::Relu | Op::Clip { .. })
                            && readers(&node.output) == 1
                            && node.output != graph.output().name
                            && {
                                fused[j] = true;
                                true
                            }
                    }
                    None => false,
                };
                if !fuse {
                    points.push((node.output.clone(), Some(i)));
                }
            }
            Op::Relu | Op::Clip { .. } if fused[i] => points.push((node.output.clone(), Some(i))),
            Op::Add
            | Op::AveragePool { .. }
            | Op::GlobalAveragePool
            | Op::Relu
            | Op::Clip { .. }
            | Op::Concat { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::BatchNormalization { .. }
            | Op::ReduceMean { .. } => points.push((node.output.clone(), Some(i))),
            _ => {}
        }
    }
    points
}

/// Reshapes a layer's `[out, fan_in]` matrix back to the weight's original shape.
pub(crate) fn matrix_to_shape(m: &Array2<f32>, shape: &[usize]) -> Result<ArrayD<f32>> {
    m.to_shape(shape.to_vec())
        .map(|v| v.to_owned())
        .map_err(|e| Error::ShapeMismatch {
            what: "weight matrix".into(),
            expected: format!("{shape:?}"),
            found: e.to_string(),
        })
}
