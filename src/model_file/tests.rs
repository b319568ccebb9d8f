//! The graph and constants sections on a graph holding every op kind; the container's checks are
//! tested on real models in `tests/model_file.rs`.

use std::collections::BTreeSet;

use ndarray::{ArrayD, Dimension, IxDyn};

use super::topology::{read_constants, read_graph, write_constants, write_graph};
use super::wire::{Reader, Writer};
use crate::error::Error;
use crate::graph::{Binary, Graph, Node, Op, Pool2d, TensorInfo, Unary};

fn node(name: &str, op: Op, inputs: &[&str]) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        output: format!("{name}_out"),
    }
}

fn filled(shape: &[usize], scale: f32) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(shape), |d| {
        (d.as_array_view().iter().sum::<usize>() as f32 + 1.0) * scale
    })
}

/// A valid graph that uses each of the 31 op kinds at least once, with unusual attribute values
/// (negative axes, NaN-free but odd floats, `ceil_mode`, signed zero).
fn every_op_graph() -> Graph {
    let pool = Pool2d {
        kernel: [1, 1],
        stride: [1, 1],
        pad: [0, 0, 0, 0],
        dilation: [1, 1],
        ceil_mode: true,
    };
    let nodes = vec![
        node(
            "conv",
            Op::Conv {
                stride: [1, 1],
                pad: [0, 0, 0, 0],
                dilation: [1, 1],
                groups: 1,
            },
            &["x", "cw", "cb"],
        ),
        node(
            "bn",
            Op::BatchNormalization { epsilon: 1e-5 },
            &["conv_out", "s", "b", "m", "v"],
        ),
        node("relu", Op::Relu, &["bn_out"]),
        node(
            "clip",
            Op::Clip {
                min: f32::NEG_INFINITY,
                max: 6.0,
            },
            &["relu_out"],
        ),
        node("maxpool", Op::MaxPool(pool.clone()), &["clip_out"]),
        node(
            "avgpool",
            Op::AveragePool {
                pool,
                count_include_pad: true,
            },
            &["maxpool_out"],
        ),
        node("add", Op::Add, &["avgpool_out", "maxpool_out"]),
        node("sigmoid", Op::Unary(Unary::Sigmoid), &["add_out"]),
        node("tanh", Op::Unary(Unary::Tanh), &["sigmoid_out"]),
        node(
            "hsig",
            Op::Unary(Unary::HardSigmoid {
                alpha: 0.2,
                beta: -0.0,
            }),
            &["tanh_out"],
        ),
        node("hswish", Op::Unary(Unary::HardSwish), &["hsig_out"]),
        node(
            "leaky",
            Op::Unary(Unary::LeakyRelu { alpha: 0.01 }),
            &["hswish_out"],
        ),
        node("sub", Op::Binary(Binary::Sub), &["leaky_out", "add_out"]),
        node("mul", Op::Binary(Binary::Mul), &["sub_out", "add_out"]),
        node("div", Op::Binary(Binary::Div), &["mul_out", "add_out"]),
        node("prelu", Op::Binary(Binary::PRelu), &["div_out", "slope"]),
        node(
            "pad",
            Op::Pad {
                pads: vec![0, 0, 1, 0, 0, 0, 0, 1],
                value: -1.5,
            },
            &["prelu_out"],
        ),
        node(
            "slice",
            Op::Slice {
                starts: vec![0, -5],
                ends: vec![4, i64::MAX],
                axes: vec![2, -1],
                steps: vec![1, 1],
            },
            &["pad_out"],
        ),
        node(
            "concat",
            Op::Concat { axis: -3 },
            &["slice_out", "slice_out"],
        ),
        node(
            "transpose",
            Op::Transpose {
                perm: vec![0, 1, 3, 2],
            },
            &["concat_out"],
        ),
        node("gap", Op::GlobalAveragePool, &["transpose_out"]),
        node("gmp", Op::GlobalMaxPool, &["transpose_out"]),
        node("add2", Op::Add, &["gap_out", "gmp_out"]),
        node("squeeze", Op::Squeeze { axes: vec![2, 3] }, &["add2_out"]),
        node(
            "unsqueeze",
            Op::Unsqueeze { axes: vec![-1] },
            &["squeeze_out"],
        ),
        node(
            "mean",
            Op::ReduceMean {
                axes: vec![2],
                keep_dims: false,
            },
            &["unsqueeze_out"],
        ),
        node(
            "reshape",
            Op::Reshape {
                shape: vec![0, -1],
                allow_zero: false,
            },
            &["mean_out"],
        ),
        node("flatten", Op::Flatten { axis: 1 }, &["reshape_out"]),
        node("identity", Op::Identity, &["flatten_out"]),
        node(
            "gemm",
            Op::Gemm {
                alpha: 0.5,
                beta: 2.0,
                trans_a: false,
                trans_b: true,
            },
            &["identity_out", "gw", "gb"],
        ),
        node("matmul", Op::MatMul, &["gemm_out", "mw"]),
        node(
            "softmax",
            Op::Softmax {
                axis: -1,
                coerce_2d: true,
            },
            &["matmul_out"],
        ),
    ];
    let inits = vec![
        ("cw".to_string(), filled(&[2, 2, 1, 1], 0.25)),
        ("cb".to_string(), filled(&[2], -0.125)),
        ("s".to_string(), filled(&[2], 1.0)),
        ("b".to_string(), filled(&[2], 0.5)),
        ("m".to_string(), filled(&[2], 0.1)),
        ("v".to_string(), filled(&[2], 2.0)),
        ("slope".to_string(), filled(&[2, 1, 1], 0.3)),
        ("gw".to_string(), filled(&[3, 4], 0.7)),
        ("gb".to_string(), filled(&[3], 0.01)),
        ("mw".to_string(), filled(&[3, 3], -0.2)),
        // Read by no node: written all the same (nothing the user gave is dropped).
        (
            "unused".to_string(),
            ArrayD::from_elem(IxDyn(&[]), f32::NAN),
        ),
    ];
    let input = TensorInfo {
        name: "x".into(),
        shape: vec![None, Some(2), Some(4), Some(4)],
    };
    Graph::new(input, "softmax_out", nodes, inits).unwrap()
}

fn sections(g: &Graph) -> (Vec<u8>, Vec<u8>) {
    let mut a = Writer::default();
    write_graph(&mut a, g).unwrap();
    let mut b = Writer::default();
    write_constants(&mut b, g).unwrap();
    (a.bytes, b.bytes)
}

#[test]
fn a_graph_with_every_op_kind_round_trips() {
    let g = every_op_graph();
    let names: BTreeSet<&str> = g.nodes().iter().map(|n| n.op.name()).collect();
    assert_eq!(names.len(), 31, "{names:?}");
    let (gb, cb) = sections(&g);

    let mut r = Reader::new(&gb, 0, gb.len(), "graph section");
    let topo = read_graph(&mut r).unwrap();
    r.finish().unwrap();
    assert_eq!(topo.input, *g.input());
    assert_eq!(topo.output, g.output().name);
    assert_eq!(topo.nodes, g.nodes());

    let mut r = Reader::new(&cb, 0, cb.len(), "constants section");
    let constants = read_constants(&mut r, &topo.nodes).unwrap();
    r.finish().unwrap();
    // The Gemm's and MatMul's weights go as codes; the Conv's `cw` too; everything else is kept
    // bit for bit (NaN included).
    let kept: Vec<&str> = constants.keys().map(String::as_str).collect();
    assert_eq!(kept, ["b", "cb", "gb", "m", "s", "slope", "unused", "v"]);
    for (name, a) in &constants {
        let orig = g.initializer(name).unwrap();
        assert_eq!(a.shape(), orig.shape());
        let bits = |x: &ArrayD<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(orig), "{name}");
    }
    let mut inits: Vec<(String, ArrayD<f32>)> = constants.into_iter().collect();
    for w in ["cw", "gw", "mw"] {
        inits.push((w.into(), g.initializer(w).unwrap().clone()));
    }
    let again = Graph::new(topo.input, topo.output, topo.nodes, inits).unwrap();
    assert_eq!(sections(&again), (gb, cb));
}

#[test]
fn every_truncation_of_the_graph_section_is_an_error_at_or_before_the_cut() {
    let (gb, _) = sections(&every_op_graph());
    for cut in 0..gb.len() {
        let mut r = Reader::new(&gb, 0, cut, "graph section");
        match read_graph(&mut r) {
            Err(Error::Malformed { offset, reason, .. }) => {
                assert!(offset as usize <= cut, "cut {cut}: offset {offset}");
                assert!(reason.starts_with("graph section: "), "{reason}");
            }
            other => panic!("cut {cut}: {:?}", other.map(|t| t.nodes.len())),
        }
    }
}

#[test]
fn an_unknown_op_tag_a_bad_flag_and_a_huge_count_are_named() {
    let g = every_op_graph();
    let (gb, _) = sections(&g);
    // The first node's tag follows: input name (4 + 1), rank (4), 4 dims (32), output name
    // (4 + 11), node count (4), node name (4 + 4).
    let tag_at = 5 + 4 + 32 + 15 + 4 + 8;
    assert_eq!(gb[tag_at], 0, "Conv's tag");
    let mut bad = gb.clone();
    bad[tag_at] = 200;
    let mut r = Reader::new(&bad, 0, bad.len(), "graph section");
    match read_graph(&mut r) {
        Err(Error::Malformed { offset, reason, .. }) => {
            assert_eq!(offset as usize, tag_at);
            assert_eq!(reason, "graph section: unknown op tag 200");
        }
        other => panic!("{:?}", other.map(|t| t.nodes.len())),
    }
    // The node count claims 2^32 - 1 nodes: refused before allocating.
    let count_at = 5 + 4 + 32 + 15;
    let mut bad = gb.clone();
    bad[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut r = Reader::new(&bad, 0, bad.len(), "graph section");
    match read_graph(&mut r) {
        Err(Error::Malformed { offset, reason, .. }) => {
            assert_eq!(offset as usize, count_at);
            assert!(
                reason.starts_with("graph section: nodes: 4294967295 entries of at least 13 bytes"),
                "{reason}"
            );
        }
        other => panic!("{:?}", other.map(|t| t.nodes.len())),
    }
}

#[test]
fn constants_out_of_order_or_holding_a_weight_are_refused() {
    let g = every_op_graph();
    let mut w = Writer::default();
    w.u32(2);
    for name in ["v", "b"] {
        w.str(name).unwrap();
        w.usizes(&[2]).unwrap();
        w.f32(1.0);
        w.f32(2.0);
    }
    let mut r = Reader::new(&w.bytes, 0, w.bytes.len(), "constants section");
    match read_constants(&mut r, g.nodes()) {
        Err(Error::Malformed { offset, reason, .. }) => {
            assert_eq!(offset, 4 + 5 + 12 + 8);
            assert_eq!(
                reason,
                "constants section: constant 'b' is out of order or repeated (names must increase)"
            );
        }
        other => panic!("{other:?}"),
    }
    let mut w = Writer::default();
    w.u32(1);
    w.str("gw").unwrap();
    w.usizes(&[0]).unwrap();
    let mut r = Reader::new(&w.bytes, 0, w.bytes.len(), "constants section");
    match read_constants(&mut r, g.nodes()) {
        Err(Error::Malformed {
            offset: 4, reason, ..
        }) => assert_eq!(
            reason,
            "constants section: constant 'gw' is a weight tensor the codes section holds"
        ),
        other => panic!("{other:?}"),
    }
}
