//! Compiling a graph and a plan into the fixed-point network's steps, in small passes:
//! weight codes ([`resolve_weights`]) → fusion of Relu/Clip into weighted layers ([`fuse_activations`])
//! → value slots ([`slot_of`]) → per-op lowering ([`lower_all`], through [`super::ops::family`]).

use std::collections::HashSet;
use std::sync::Arc;

use super::ops::{self, IntOp, Lower};
use crate::error::{Error, Result};
use crate::fixed::{QFormat, Quantizer};
use crate::graph::{Graph, LayerWeights, Node, Op, activation_points, matrix_to_shape};
use crate::kernels::KernelChoice;
use crate::pack::WeightCodes;
use crate::quant_plan::QuantPlan;

/// One prepared step of the integer network.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub name: String,
    pub op: Arc<dyn IntOp>,
    /// Indices into the value slots: 0 is the input, k + 1 the output of node k.
    pub inputs: Vec<usize>,
    /// The tensor this step produces (for observers), and whether it is an activation point.
    pub output: String,
    pub observed: bool,
    /// The format of the codes it produces.
    pub format: QFormat,
}

/// The weight codes of every weighted layer: `given` (checked against the graph), or quantized here
/// at the plan's formats.
pub(crate) fn resolve_weights(
    layers: &[LayerWeights],
    plan: &QuantPlan,
    given: Option<Vec<WeightCodes>>,
) -> Result<Vec<WeightCodes>> {
    let Some(w) = given else {
        return layers
            .iter()
            .map(|lw| {
                let wp = plan.require_weight(&lw.node)?;
                let w = matrix_to_shape(&lw.matrix, &lw.shape)?;
                let codes = if wp.formats.len() == 1 {
                    Quantizer::<i8>::new(wp.formats[0])?.quantize(w.view())?
                } else {
                    Quantizer::<i8>::per_channel(0, wp.formats.clone())?.quantize(w.view())?
                };
                Ok(WeightCodes {
                    node: lw.node.clone(),
                    codes,
                })
            })
            .collect();
    };
    if w.len() != layers.len() {
        return Err(Error::ShapeMismatch {
            what: "weight tensors".into(),
            expected: format!("{} (one per weighted layer)", layers.len()),
            found: format!("{}", w.len()),
        });
    }
    for (wc, lw) in w.iter().zip(layers) {
        if wc.node != lw.node || wc.codes.codes().shape() != lw.shape.as_slice() {
            return Err(Error::ShapeMismatch {
                what: format!("weights of node '{}'", lw.node),
                expected: format!("node '{}' shape {:?}", lw.node, lw.shape),
                found: format!("node '{}' shape {:?}", wc.node, wc.codes.codes().shape()),
            });
        }
    }
    Ok(w)
}

/// For each node, the index of the Relu/Clip fused into it (a weighted layer whose output is not an
/// activation point: the next node reading it is its activation, see [`activation_points`]).
pub(crate) fn fuse_activations(graph: &Graph) -> Result<Vec<Option<usize>>> {
    let points: HashSet<String> = activation_points(graph)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let nodes = graph.nodes();
    let mut fused = vec![None; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        if !matches!(node.op, Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul)
            || points.contains(&node.output)
        {
            continue;
        }
        let j = nodes
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(_, n)| n.inputs.first() == Some(&node.output))
            .map(|(j, _)| j)
            .ok_or_else(|| unsupported(node, "output has no activation point"))?;
        fused[i] = Some(j);
    }
    Ok(fused)
}

/// The value slot of tensor `name` as read by node `before`: 0 for the graph input, k + 1 for the
/// output of node k (the latest one before `before`), `None` for a constant.
pub(crate) fn slot_of(graph: &Graph, name: &str, before: usize) -> Option<usize> {
    let nodes = graph.nodes();
    if let Some(j) = nodes[..before].iter().rposition(|n| n.output == name) {
        Some(j + 1)
    } else if name == graph.input().name {
        Some(0)
    } else {
        None
    }
}

fn unsupported(node: &Node, why: &str) -> Error {
    Error::Unsupported(format!("node '{}' ({}): {why}", node.name, node.op.name()))
}

/// The data inputs of node `i` as slots: a weighted layer's first input, every input of other ops.
fn data_slots(graph: &Graph, i: usize) -> Result<Vec<usize>> {
    let node = &graph.nodes()[i];
    match node.op {
        Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul => {
            let s = node
                .inputs
                .first()
                .and_then(|n| slot_of(graph, n, i))
                .ok_or_else(|| unsupported(node, "its data input must be an activation"))?;
            Ok(vec![s])
        }
        // A constant operand of Add/Sub/Mul/Div/PRelu, and a BatchNormalization's parameters, are
        // quantized into the step itself.
        Op::Binary(_) | Op::BatchNormalization { .. } | Op::Add => {
            let slots: Vec<usize> = node
                .inputs
                .iter()
                .filter_map(|n| slot_of(graph, n, i))
                .collect();
            if slots.is_empty() {
                return Err(unsupported(node, "no input is an activation"));
            }
            Ok(slots)
        }
        _ => node
            .inputs
            .iter()
            .map(|n| {
                slot_of(graph, n, i).ok_or_else(|| {
                    unsupported(
                        node,
                        "an input is a constant; the integer network takes constants only as Conv/Gemm/MatMul weights",
                    )
                })
            })
            .collect(),
    }
}

/// Everything [`lower_all`] reads.
pub(crate) struct Sources<'a> {
    pub graph: &'a Graph,
    pub plan: &'a QuantPlan,
    pub layers: &'a [LayerWeights],
    pub weights: &'a [WeightCodes],
    pub input_format: QFormat,
    pub choice: KernelChoice,
}

/// Lowers every node in graph order.
pub(crate) fn lower_all(src: &Sources<'_>) -> Result<Vec<Step>> {
    let graph = src.graph;
    let nodes = graph.nodes();
    let fused = fuse_activations(graph)?;
    let fused_into: HashSet<usize> = fused.iter().flatten().copied().collect();
    let input_shape: Vec<usize> = graph.input().shape.iter().map(|d| d.unwrap_or(1)).collect();
    let shapes = graph.infer_shapes(&input_shape)?;
    // The format each slot holds, tracked as steps are lowered.
    let mut slot_fmt: Vec<Option<QFormat>> = vec![None; nodes.len() + 1];
    slot_fmt[0] = Some(src.input_format);
    let mut steps = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let inputs = if fused_into.contains(&i) {
            // A Relu/Clip fused into the preceding layer: its codes pass through.
            let s = node
                .inputs
                .first()
                .and_then(|n| slot_of(graph, n, i))
                .ok_or_else(|| unsupported(node, "input not found"))?;
            vec![s]
        } else {
            data_slots(graph, i)?
        };
        let in_formats = inputs
            .iter()
            .map(|&s| slot_fmt[s].ok_or_else(|| unsupported(node, "input format unknown")))
            .collect::<Result<Vec<_>>>()?;
        let lowered = if fused_into.contains(&i) {
            ops::Lowered {
                op: Arc::new(ops::Identity),
                format: in_formats[0],
                observed: true,
            }
        } else {
            let weights = src
                .layers
                .iter()
                .position(|l| l.node_index == i)
                .map(|li| (&src.layers[li], &src.weights[li]));
            let cx = Lower {
                node,
                in_formats: &in_formats,
                out_shape: &shapes[i],
                in_shapes: inputs
                    .iter()
                    .map(|&s| {
                        if s == 0 {
                            &input_shape[..]
                        } else {
                            &shapes[s - 1][..]
                        }
                    })
                    .collect(),
                plan: src.plan,
                weights,
                fused: fused[i].map(|j| &nodes[j]),
                choice: src.choice,
                constants: node
                    .inputs
                    .iter()
                    .map(|n| match slot_of(graph, n, i) {
                        Some(_) => None,
                        None => graph.initializer(n),
                    })
                    .collect(),
                is_output: node.output == graph.output().name,
            };
            ops::family(&node.op).lower_fixed(&cx)?
        };
        slot_fmt[i + 1] = Some(lowered.format);
        steps.push(Step {
            name: node.name.clone(),
            op: lowered.op,
            inputs,
            output: node.output.clone(),
            observed: lowered.observed,
            format: lowered.format,
        });
    }
    Ok(steps)
}
