//! The graph section (input, output, every node with its op and attributes) and the constants
//! section (every float initializer, except the weights held as codes).
//!
//! Each [`Op`] variant has a one-byte tag; the match in [`write_op`] is exhaustive, so a new variant
//! does not compile until it has an encoding (and a new format version, `docs/format.md`).

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};

use super::wire::{Reader, Writer};
use crate::error::Result;
use crate::graph::{Binary, Graph, MAX_TENSOR_ELEMENTS, Node, Op, Pool2d, TensorInfo, Unary};

/// An input dimension written as this value is unknown (`None`).
const UNKNOWN_DIM: u64 = u64::MAX;

/// Largest rank of a constant.
const MAX_RANK: usize = 32;

/// Whether initializer `name` is a weight tensor rebuilt from the codes section: read exactly once
/// in the graph, as the weights (input 1) of a Conv, Gemm or MatMul.
pub(crate) fn is_weight_only(graph_nodes: &[Node], name: &str) -> bool {
    let mut reads = graph_nodes.iter().flat_map(|n| {
        n.inputs
            .iter()
            .enumerate()
            .filter(move |(_, i)| *i == name)
            .map(move |(k, _)| (n, k))
    });
    match (reads.next(), reads.next()) {
        (Some((n, 1)), None) => matches!(n.op, Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul),
        _ => false,
    }
}

/// Writes the graph section.
pub(crate) fn write_graph(w: &mut Writer, graph: &Graph) -> Result<()> {
    let input = graph.input();
    w.str(&input.name)?;
    w.count(input.shape.len(), "the input's rank")?;
    for d in &input.shape {
        w.u64(d.map_or(UNKNOWN_DIM, |d| d as u64));
    }
    w.str(&graph.output().name)?;
    w.count(graph.nodes().len(), "nodes")?;
    for node in graph.nodes() {
        w.str(&node.name)?;
        write_op(w, &node.op)?;
        w.count(node.inputs.len(), "a node's inputs")?;
        for i in &node.inputs {
            w.str(i)?;
        }
        w.str(&node.output)?;
    }
    Ok(())
}

/// The graph section's parts, before [`Graph::new`] validates them with the initializers.
pub(crate) struct Topology {
    pub input: TensorInfo,
    pub output: String,
    pub nodes: Vec<Node>,
}

/// Reads the graph section.
pub(crate) fn read_graph(r: &mut Reader<'_>) -> Result<Topology> {
    let name = r.str()?;
    let rank = r.count(8, "input rank")?;
    let mut shape = Vec::with_capacity(rank);
    for _ in 0..rank {
        let at = r.pos();
        let d = r.u64()?;
        shape.push(if d == UNKNOWN_DIM {
            None
        } else {
            Some(usize::try_from(d).map_err(|_| r.err_at(at, format!("input dimension {d}")))?)
        });
    }
    let output = r.str()?;
    // A node takes at least 4 (name) + 1 (tag) + 4 (input count) + 4 (output) bytes.
    let n = r.count(13, "nodes")?;
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str()?;
        let op = read_op(r)?;
        let k = r.count(4, "node inputs")?;
        let inputs = (0..k).map(|_| r.str()).collect::<Result<Vec<_>>>()?;
        let output = r.str()?;
        nodes.push(Node {
            name,
            op,
            inputs,
            output,
        });
    }
    Ok(Topology {
        input: TensorInfo { name, shape },
        output,
        nodes,
    })
}

/// Op tags (one byte each), in the order of [`Op`].
mod tag {
    pub const CONV: u8 = 0;
    pub const GEMM: u8 = 1;
    pub const MATMUL: u8 = 2;
    pub const ADD: u8 = 3;
    pub const RELU: u8 = 4;
    pub const CLIP: u8 = 5;
    pub const MAX_POOL: u8 = 6;
    pub const AVERAGE_POOL: u8 = 7;
    pub const GLOBAL_AVERAGE_POOL: u8 = 8;
    pub const FLATTEN: u8 = 9;
    pub const RESHAPE: u8 = 10;
    pub const SLICE: u8 = 11;
    pub const PAD: u8 = 12;
    pub const CONCAT: u8 = 13;
    pub const IDENTITY: u8 = 14;
    pub const BATCH_NORMALIZATION: u8 = 15;
    pub const SIGMOID: u8 = 16;
    pub const TANH: u8 = 17;
    pub const HARD_SIGMOID: u8 = 18;
    pub const HARD_SWISH: u8 = 19;
    pub const LEAKY_RELU: u8 = 20;
    pub const SUB: u8 = 21;
    pub const MUL: u8 = 22;
    pub const DIV: u8 = 23;
    pub const PRELU: u8 = 24;
    pub const TRANSPOSE: u8 = 25;
    pub const SQUEEZE: u8 = 26;
    pub const UNSQUEEZE: u8 = 27;
    pub const GLOBAL_MAX_POOL: u8 = 28;
    pub const REDUCE_MEAN: u8 = 29;
    pub const SOFTMAX: u8 = 30;
}

fn write_pool(w: &mut Writer, p: &Pool2d) {
    p.kernel
        .iter()
        .chain(&p.stride)
        .chain(&p.pad)
        .chain(&p.dilation)
        .for_each(|&v| w.usize(v));
    w.bool(p.ceil_mode);
}

fn read_pool(r: &mut Reader<'_>) -> Result<Pool2d> {
    let mut v = [0usize; 10];
    for x in &mut v {
        *x = r.usize()?;
    }
    Ok(Pool2d {
        kernel: [v[0], v[1]],
        stride: [v[2], v[3]],
        pad: [v[4], v[5], v[6], v[7]],
        dilation: [v[8], v[9]],
        ceil_mode: r.bool()?,
    })
}

/// An op: its tag, then its attributes in declaration order (`usize` as u64, `f32` as its bits,
/// `bool` as one byte 0/1, lists as a u32 count then the values).
fn write_op(w: &mut Writer, op: &Op) -> Result<()> {
    match op {
        Op::Conv {
            stride,
            pad,
            dilation,
            groups,
        } => {
            w.u8(tag::CONV);
            stride
                .iter()
                .chain(pad)
                .chain(dilation)
                .chain(std::iter::once(groups))
                .for_each(|&v| w.usize(v));
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            w.u8(tag::GEMM);
            w.f32(*alpha);
            w.f32(*beta);
            w.bool(*trans_a);
            w.bool(*trans_b);
        }
        Op::MatMul => w.u8(tag::MATMUL),
        Op::Add => w.u8(tag::ADD),
        Op::Relu => w.u8(tag::RELU),
        Op::Clip { min, max } => {
            w.u8(tag::CLIP);
            w.f32(*min);
            w.f32(*max);
        }
        Op::MaxPool(p) => {
            w.u8(tag::MAX_POOL);
            write_pool(w, p);
        }
        Op::AveragePool {
            pool,
            count_include_pad,
        } => {
            w.u8(tag::AVERAGE_POOL);
            write_pool(w, pool);
            w.bool(*count_include_pad);
        }
        Op::GlobalAveragePool => w.u8(tag::GLOBAL_AVERAGE_POOL),
        Op::Flatten { axis } => {
            w.u8(tag::FLATTEN);
            w.i64(*axis);
        }
        Op::Reshape { shape, allow_zero } => {
            w.u8(tag::RESHAPE);
            w.i64s(shape)?;
            w.bool(*allow_zero);
        }
        Op::Slice {
            starts,
            ends,
            axes,
            steps,
        } => {
            w.u8(tag::SLICE);
            for list in [starts, ends, axes, steps] {
                w.i64s(list)?;
            }
        }
        Op::Pad { pads, value } => {
            w.u8(tag::PAD);
            w.i64s(pads)?;
            w.f32(*value);
        }
        Op::Concat { axis } => {
            w.u8(tag::CONCAT);
            w.i64(*axis);
        }
        Op::Identity => w.u8(tag::IDENTITY),
        Op::BatchNormalization { epsilon } => {
            w.u8(tag::BATCH_NORMALIZATION);
            w.f32(*epsilon);
        }
        Op::Unary(Unary::Sigmoid) => w.u8(tag::SIGMOID),
        Op::Unary(Unary::Tanh) => w.u8(tag::TANH),
        Op::Unary(Unary::HardSigmoid { alpha, beta }) => {
            w.u8(tag::HARD_SIGMOID);
            w.f32(*alpha);
            w.f32(*beta);
        }
        Op::Unary(Unary::HardSwish) => w.u8(tag::HARD_SWISH),
        Op::Unary(Unary::LeakyRelu { alpha }) => {
            w.u8(tag::LEAKY_RELU);
            w.f32(*alpha);
        }
        Op::Binary(Binary::Sub) => w.u8(tag::SUB),
        Op::Binary(Binary::Mul) => w.u8(tag::MUL),
        Op::Binary(Binary::Div) => w.u8(tag::DIV),
        Op::Binary(Binary::PRelu) => w.u8(tag::PRELU),
        Op::Transpose { perm } => {
            w.u8(tag::TRANSPOSE);
            w.usizes(perm)?;
        }
        Op::Squeeze { axes } => {
            w.u8(tag::SQUEEZE);
            w.i64s(axes)?;
        }
        Op::Unsqueeze { axes } => {
            w.u8(tag::UNSQUEEZE);
            w.i64s(axes)?;
        }
        Op::GlobalMaxPool => w.u8(tag::GLOBAL_MAX_POOL),
        Op::ReduceMean { axes, keep_dims } => {
            w.u8(tag::REDUCE_MEAN);
            w.i64s(axes)?;
            w.bool(*keep_dims);
        }
        Op::Softmax { axis, coerce_2d } => {
            w.u8(tag::SOFTMAX);
            w.i64(*axis);
            w.bool(*coerce_2d);
        }
    }
    Ok(())
}

fn read_op(r: &mut Reader<'_>) -> Result<Op> {
    let at = r.pos();
    Ok(match r.u8()? {
        tag::CONV => {
            let mut v = [0usize; 9];
            for x in &mut v {
                *x = r.usize()?;
            }
            Op::Conv {
                stride: [v[0], v[1]],
                pad: [v[2], v[3], v[4], v[5]],
                dilation: [v[6], v[7]],
                groups: v[8],
            }
        }
        tag::GEMM => Op::Gemm {
            alpha: r.f32()?,
            beta: r.f32()?,
            trans_a: r.bool()?,
            trans_b: r.bool()?,
        },
        tag::MATMUL => Op::MatMul,
        tag::ADD => Op::Add,
        tag::RELU => Op::Relu,
        tag::CLIP => Op::Clip {
            min: r.f32()?,
            max: r.f32()?,
        },
        tag::MAX_POOL => Op::MaxPool(read_pool(r)?),
        tag::AVERAGE_POOL => Op::AveragePool {
            pool: read_pool(r)?,
            count_include_pad: r.bool()?,
        },
        tag::GLOBAL_AVERAGE_POOL => Op::GlobalAveragePool,
        tag::FLATTEN => Op::Flatten { axis: r.i64()? },
        tag::RESHAPE => Op::Reshape {
            shape: r.i64s()?,
            allow_zero: r.bool()?,
        },
        tag::SLICE => Op::Slice {
            starts: r.i64s()?,
            ends: r.i64s()?,
            axes: r.i64s()?,
            steps: r.i64s()?,
        },
        tag::PAD => Op::Pad {
            pads: r.i64s()?,
            value: r.f32()?,
        },
        tag::CONCAT => Op::Concat { axis: r.i64()? },
        tag::IDENTITY => Op::Identity,
        tag::BATCH_NORMALIZATION => Op::BatchNormalization { epsilon: r.f32()? },
        tag::SIGMOID => Op::Unary(Unary::Sigmoid),
        tag::TANH => Op::Unary(Unary::Tanh),
        tag::HARD_SIGMOID => Op::Unary(Unary::HardSigmoid {
            alpha: r.f32()?,
            beta: r.f32()?,
        }),
        tag::HARD_SWISH => Op::Unary(Unary::HardSwish),
        tag::LEAKY_RELU => Op::Unary(Unary::LeakyRelu { alpha: r.f32()? }),
        tag::SUB => Op::Binary(Binary::Sub),
        tag::MUL => Op::Binary(Binary::Mul),
        tag::DIV => Op::Binary(Binary::Div),
        tag::PRELU => Op::Binary(Binary::PRelu),
        tag::TRANSPOSE => Op::Transpose { perm: r.usizes()? },
        tag::SQUEEZE => Op::Squeeze { axes: r.i64s()? },
        tag::UNSQUEEZE => Op::Unsqueeze { axes: r.i64s()? },
        tag::GLOBAL_MAX_POOL => Op::GlobalMaxPool,
        tag::REDUCE_MEAN => Op::ReduceMean {
            axes: r.i64s()?,
            keep_dims: r.bool()?,
        },
        tag::SOFTMAX => Op::Softmax {
            axis: r.i64()?,
            coerce_2d: r.bool()?,
        },
        t => return Err(r.err_at(at, format!("unknown op tag {t}"))),
    })
}

/// Writes the constants section: every initializer except the weights rebuilt from codes
/// ([`is_weight_only`]; an initializer no node reads is kept too), sorted by name, each as name, rank (u32), dimensions (u64) and its
/// values as `f32` bits in row-major order.
pub(crate) fn write_constants(w: &mut Writer, graph: &Graph) -> Result<()> {
    let nodes = graph.nodes();
    let kept: Vec<(&str, &ArrayD<f32>)> = graph
        .initializers()
        .filter(|(name, _)| !is_weight_only(nodes, name))
        .collect();
    w.count(kept.len(), "constants")?;
    for (name, a) in kept {
        w.str(name)?;
        w.usizes(a.shape())?;
        // `iter` walks the logical (row-major) order whatever the memory layout.
        a.iter().for_each(|&v| w.f32(v));
    }
    Ok(())
}

/// Reads the constants section. The names must be strictly increasing (so none repeats) and none
/// a weight held as codes: the one encoding [`write_constants`] gives.
pub(crate) fn read_constants(
    r: &mut Reader<'_>,
    nodes: &[Node],
) -> Result<BTreeMap<String, ArrayD<f32>>> {
    // A constant takes at least 4 (name) + 4 (rank) bytes.
    let n = r.count(8, "constants")?;
    let mut out: BTreeMap<String, ArrayD<f32>> = BTreeMap::new();
    for _ in 0..n {
        let at = r.pos();
        let name = r.str()?;
        if out.keys().next_back().is_some_and(|last| *last >= name) {
            return Err(r.err_at(
                at,
                format!("constant '{name}' is out of order or repeated (names must increase)"),
            ));
        }
        if is_weight_only(nodes, &name) {
            return Err(r.err_at(
                at,
                format!("constant '{name}' is a weight tensor the codes section holds"),
            ));
        }
        let dims_at = r.pos();
        let shape = r.usizes()?;
        if shape.len() > MAX_RANK {
            return Err(r.err_at(dims_at, format!("rank {} above {MAX_RANK}", shape.len())));
        }
        let elements = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&e| e <= MAX_TENSOR_ELEMENTS && e.saturating_mul(4) <= r.remaining())
            .ok_or_else(|| {
                r.err_at(
                    dims_at,
                    format!(
                        "constant '{name}' of shape {shape:?} needs more than the {} bytes left",
                        r.remaining()
                    ),
                )
            })?;
        let values = (0..elements).map(|_| r.f32()).collect::<Result<Vec<_>>>()?;
        let array = ArrayD::from_shape_vec(IxDyn(&shape), values)
            .map_err(|e| r.err_at(dims_at, format!("constant '{name}': {e}")))?;
        out.insert(name, array);
    }
    Ok(out)
}
