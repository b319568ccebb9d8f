//! ONNX import and the float executor, cross-checked against onnxruntime fixtures
//! (`scripts/onnxruntime_fixture.py`, `scripts/cifar10_subset.py`) on the models and data that ship
//! with the crate. LeNet-5 on MNIST is checked by `examples/reproduce.rs`.
#![cfg(all(feature = "onnx", feature = "gzip"))]

mod common;
mod shipped;

use std::path::{Path, PathBuf};

use fixq::io::npy;
use fixq::{Error, FloatExecutor, Graph};
use ndarray::{ArrayD, IxDyn, s};

/// Relative tolerance of the float executor against onnxruntime: `max |a - b| / max |b|`.
const REL_TOL: f32 = 1e-4;
/// Per element: `|a - b| <= REL_TOL * max(|b|, ABS_FLOOR)`.
const ABS_FLOOR: f32 = 1.0;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn f32_npy(path: &Path) -> ArrayD<f32> {
    npy::read(path).unwrap().into_f32().unwrap()
}

/// Returns (max |a-b| / max |b|, worst per-element ratio |a-b| / (REL_TOL * max(|b|, floor))).
fn agreement(a: &ArrayD<f32>, b: &ArrayD<f32>) -> (f32, f32) {
    assert_eq!(a.shape(), b.shape());
    let max_b = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| {
        m.max((x - y).abs() / (REL_TOL * y.abs().max(ABS_FLOOR)))
    });
    (max_diff / max_b, worst)
}

/// The float executor on a real network with BatchNorm (folded), residual adds, Keras-style
/// asymmetric padding and average pooling, against onnxruntime's logits on the shipped CIFAR-10 subset
/// (`scripts/cifar10_subset.py --ort`). LeNet-5's own cross-check is in `examples/reproduce.rs`.
#[test]
fn resnet8_matches_onnxruntime_on_the_cifar10_subset() {
    let graph = shipped::resnet8_graph();
    // 77,360 Conv and Gemm weights plus 346 biases (the seven BatchNorms fold into their convolutions).
    assert_eq!(graph.parameter_count(), 77_706);
    let data = shipped::cifar10_subset();
    let expected = f32_npy(&fixture("resnet8_ort_logits.npy"));
    let got = FloatExecutor::new(&graph)
        .run(data.images.view().into_dyn())
        .unwrap();
    let (rel, worst) = agreement(&got, &expected);
    println!(
        "resnet8 vs onnxruntime: max|a-b|/max|b| = {rel:.3e}, worst per-element ratio = {worst:.3}"
    );
    assert!(rel <= REL_TOL, "relative error {rel:e}");
    assert!(worst <= 1.0, "per-element error ratio {worst}");
    assert_eq!(shipped::argmax(&got), shipped::argmax(&expected));
}

#[test]
fn ops_model_matches_onnxruntime() {
    let graph = Graph::from_onnx_file(fixture("ops_model.onnx")).unwrap();
    // All three BatchNormalization nodes were folded away.
    assert!(
        graph
            .nodes()
            .iter()
            .all(|n| n.name != "bn_a" && n.name != "bn_b" && n.name != "bn_g")
    );
    assert_eq!(graph.output().shape, vec![None, Some(5)]);
    let x = f32_npy(&fixture("ops_input.npy"));
    let expected = f32_npy(&fixture("ops_output.npy"));
    let mut observed = Vec::new();
    let got = FloatExecutor::new(&graph)
        .run_with(x.view(), |name, i, act| {
            observed.push((name.to_string(), i, act.shape().to_vec()))
        })
        .unwrap();
    assert_eq!(observed.len(), graph.nodes().len());
    assert_eq!(observed.last().map(|o| o.0.as_str()), Some("y"));
    let (rel, worst) = agreement(&got, &expected);
    println!(
        "ops model vs onnxruntime: max|a-b|/max|b| = {rel:.3e}, worst per-element ratio = {worst:.3}"
    );
    assert!(rel <= REL_TOL, "relative error {rel:e}");
    assert!(worst <= 1.0, "per-element error ratio {worst}");
    // Batch of one gives the same rows.
    let one = FloatExecutor::new(&graph)
        .run(x.slice(s![1..2, .., .., ..]).into_dyn())
        .unwrap();
    assert_eq!(one, got.slice(s![1..2, ..]).into_dyn());
}

/// The shipped digits CNN's float accuracy on its 450 held-out images equals onnxruntime's
/// (`models/MODELS.md`); LeNet-5's 98.89 % on all 10,000 MNIST images is in `examples/reproduce.rs`.
#[test]
fn digits_cnn_float_accuracy_is_446_of_450_as_with_onnxruntime() {
    let graph = shipped::digits_graph();
    let test = shipped::digits("test", None);
    assert_eq!(test.len(), 450);
    let logits = FloatExecutor::new(&graph)
        .run(test.images.view().into_dyn())
        .unwrap();
    let correct = shipped::argmax(&logits)
        .iter()
        .zip(&test.labels)
        .filter(|(p, y)| **p == usize::from(**y))
        .count();
    assert_eq!(
        correct, 446,
        "expected 99.11 % (446 of 450) as measured with onnxruntime"
    );
}

#[test]
fn every_truncation_of_a_model_is_an_error() {
    let bytes = std::fs::read(fixture("ops_model.onnx")).unwrap();
    for len in 0..bytes.len() {
        match Graph::from_onnx_bytes(&bytes[..len]) {
            Err(Error::Malformed { format: "onnx", .. }) => {}
            other => panic!("prefix of {len} bytes gave {other:?}"),
        }
    }
    assert!(Graph::from_onnx_bytes(&bytes).is_ok());
}

#[test]
fn truncations_of_resnet8_are_errors() {
    let bytes = std::fs::read(shipped::path("models/resnet8_cifar10.onnx")).unwrap();
    for len in (0..bytes.len())
        .step_by(4099)
        .chain(bytes.len() - 64..bytes.len())
    {
        assert!(
            Graph::from_onnx_bytes(&bytes[..len]).is_err(),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn byte_flips_never_panic() {
    let bytes = std::fs::read(fixture("ops_model.onnx")).unwrap();
    let x = f32_npy(&fixture("ops_input.npy"));
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        let mut corrupt = bytes.clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() % corrupt.len() as u64) as usize;
            corrupt[at] ^= 1 << (next() % 8);
        }
        match Graph::from_onnx_bytes(&corrupt) {
            Ok(g) => {
                ok += 1;
                // A graph that validates must also run (or refuse) without panicking.
                let _ = FloatExecutor::new(&g).run(x.view());
            }
            Err(_) => err += 1,
        }
    }
    println!("byte flips: {ok} still valid, {err} rejected");
    assert!(err > 0);
}

/// The same for the op fixtures whose import folds shape computations, tracks shapes or computes
/// pads from them: every flipped model imports and runs, or is refused, without panicking (and
/// without allocating what a flipped shape value claims).
#[test]
fn byte_flips_of_shape_computing_models_never_panic() {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for case in [
        "constantofshape_add",
        "constantofshape_pads",
        "conv_same_upper",
        "pad_axes_opset18",
        "shape_chain_flatten",
        "shape_chain_flatten_opset11",
        "shape_chain_nc",
    ] {
        let bytes = std::fs::read(fixture(&format!("ops/{case}.onnx"))).unwrap();
        let x = f32_npy(&fixture(&format!("ops/{case}.input.npy")));
        for _ in 0..500 {
            let mut corrupt = bytes.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() % corrupt.len() as u64) as usize;
                corrupt[at] ^= 1 << (next() % 8);
            }
            match Graph::from_onnx_bytes(&corrupt) {
                Ok(g) => {
                    ok += 1;
                    let _ = FloatExecutor::new(&g).run(x.view());
                }
                Err(_) => err += 1,
            }
        }
    }
    println!("byte flips: {ok} still valid, {err} rejected");
    assert!(ok > 0 && err > 0);
}

// ---- hand-encoded models ---------------------------------------------------------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(field: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(field << 3 | 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

fn int_field(field: u64, v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(field << 3, &mut out);
    varint(v as u64, &mut out);
    out
}

/// A float `ValueInfoProto`; a negative dimension is symbolic (`dim_param` "N" for the first, "D<i>"
/// for the others).
fn value_info(name: &str, dims: &[i64]) -> Vec<u8> {
    let shape: Vec<u8> = dims
        .iter()
        .enumerate()
        .flat_map(|(i, &d)| {
            let dim = if d >= 0 {
                int_field(1, d)
            } else if i == 0 {
                bytes_field(2, b"N")
            } else {
                bytes_field(2, format!("D{i}").as_bytes())
            };
            bytes_field(1, &dim)
        })
        .collect();
    let tensor_type = [int_field(1, 1), bytes_field(2, &shape)].concat();
    [
        bytes_field(1, name.as_bytes()),
        bytes_field(2, &bytes_field(1, &tensor_type)),
    ]
    .concat()
}

fn tensor(name: &str, dims: &[i64], raw: &[u8]) -> Vec<u8> {
    let mut t: Vec<u8> = dims.iter().flat_map(|&d| int_field(1, d)).collect();
    t.extend(int_field(2, 1));
    t.extend(bytes_field(8, name.as_bytes()));
    t.extend(bytes_field(9, raw));
    t
}

fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        n.extend(bytes_field(1, i.as_bytes()));
    }
    for o in outputs {
        n.extend(bytes_field(2, o.as_bytes()));
    }
    n.extend(bytes_field(3, name.as_bytes()));
    n.extend(bytes_field(4, op.as_bytes()));
    for a in attrs {
        n.extend(bytes_field(5, a));
    }
    n
}

fn string_attr(name: &str, value: &str) -> Vec<u8> {
    [
        bytes_field(1, name.as_bytes()),
        bytes_field(4, value.as_bytes()),
        int_field(20, 3),
    ]
    .concat()
}

fn model(nodes: &[Vec<u8>], inits: &[Vec<u8>], input: &[i64], output: &[i64]) -> Vec<u8> {
    model_at(13, nodes, inits, input, output)
}

fn model_at(
    opset: i64,
    nodes: &[Vec<u8>],
    inits: &[Vec<u8>],
    input: &[i64],
    output: &[i64],
) -> Vec<u8> {
    let mut g = Vec::new();
    for n in nodes {
        g.extend(bytes_field(1, n));
    }
    for t in inits {
        g.extend(bytes_field(5, t));
    }
    g.extend(bytes_field(11, &value_info("x", input)));
    g.extend(bytes_field(12, &value_info("y", output)));
    [
        int_field(1, 8),
        bytes_field(7, &g),
        bytes_field(8, &int_field(2, opset)),
    ]
    .concat()
}

fn weights(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
        .collect()
}

#[test]
fn hand_encoded_conv_relu_runs() {
    let m = model(
        &[
            node("conv", "Conv", &["x", "w"], &["c"], &[]),
            node("relu", "Relu", &["c"], &["y"], &[]),
        ],
        &[tensor("w", &[2, 1, 1, 1], &weights(2))],
        &[1, 1, 2, 2],
        &[1, 2, 2, 2],
    );
    let g = Graph::from_onnx_bytes(&m).unwrap();
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2, 2]), vec![1.0, -2.0, 3.0, 4.0]).unwrap();
    let y = FloatExecutor::new(&g).run(x.view()).unwrap();
    assert_eq!(
        y.as_slice().unwrap(),
        &[0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.3, 0.4]
    );
}

#[test]
fn unsupported_op_names_node_and_op() {
    let m = model(
        &[node("conv3", "ConvTranspose", &["x", "w"], &["y"], &[])],
        &[tensor("w", &[1, 1, 1, 1], &weights(1))],
        &[1, 1, 2, 2],
        &[1, 1, 2, 2],
    );
    let err = Graph::from_onnx_bytes(&m).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)));
    assert!(
        err.to_string()
            .contains("node 'conv3' (op ConvTranspose): unsupported op"),
        "{err}"
    );
}

#[test]
fn unsupported_attributes_and_dynamic_weights_are_named() {
    let same = model(
        &[node(
            "c1",
            "Conv",
            &["x", "w"],
            &["y"],
            &[string_attr("auto_pad", "SAME")],
        )],
        &[tensor("w", &[1, 1, 1, 1], &weights(1))],
        &[1, 1, 2, 2],
        &[1, 1, 2, 2],
    );
    let err = Graph::from_onnx_bytes(&same).unwrap_err().to_string();
    assert!(
        err.contains(
            "node 'c1' (op Conv): auto_pad 'SAME' (NOTSET, VALID, SAME_UPPER or SAME_LOWER)"
        ),
        "{err}"
    );
    let dynamic = model(
        &[node("c2", "Conv", &["x", "x"], &["y"], &[])],
        &[],
        &[1, 1, 1, 1],
        &[1, 1, 1, 1],
    );
    let err = Graph::from_onnx_bytes(&dynamic).unwrap_err().to_string();
    assert!(
        err.contains("node 'c2' (op Conv)") && err.contains("constant"),
        "{err}"
    );
}

#[test]
fn huge_claimed_tensor_is_rejected_without_allocating() {
    let m = model(
        &[node("conv", "Conv", &["x", "w"], &["y"], &[])],
        &[tensor("w", &[1 << 20, 1 << 20, 1, 1], &weights(1))],
        &[1, 1, 2, 2],
        &[1, 1, 2, 2],
    );
    let err = Graph::from_onnx_bytes(&m).unwrap_err();
    assert!(
        matches!(err, Error::Malformed { format: "onnx", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("1099511627776 elements"), "{err}");
}

#[test]
fn set_initializer_checks_name_and_shape() {
    let mut graph = Graph::from_onnx_file(fixture("ops_model.onnx")).unwrap();
    let w = graph.initializer("wm").unwrap().clone();
    assert!(graph.set_initializer("wm", w.mapv(|v| v * 2.0)).is_ok());
    assert!(matches!(
        graph.set_initializer("wm", ArrayD::zeros(IxDyn(&[2, 2]))),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        graph.set_initializer("nope", w.clone()),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(
        graph
            .set_initializers(vec![("wm".to_string(), w.clone()), ("nope".to_string(), w)])
            .is_err()
    );
}

#[test]
fn batch_norm_folds_into_gemm_without_transpose() {
    // y = BN(x [1,2] . B [2,3] + c [3])
    let b = [1.0f32, -2.0, 0.5, 3.0, 0.25, -1.0];
    let c = [0.1f32, -0.2, 0.3];
    let (gamma, beta, mean, var) = (
        [1.5f32, 0.5, 2.0],
        [0.1f32, 0.2, -0.3],
        [0.05f32, -0.1, 0.2],
        [0.9f32, 1.1, 0.3],
    );
    let raw = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let m = model(
        &[
            node("fc", "Gemm", &["x", "B", "C"], &["g"], &[]),
            node(
                "bn",
                "BatchNormalization",
                &["g", "s", "bb", "m", "v"],
                &["y"],
                &[],
            ),
        ],
        &[
            tensor("B", &[2, 3], &raw(&b)),
            tensor("C", &[3], &raw(&c)),
            tensor("s", &[3], &raw(&gamma)),
            tensor("bb", &[3], &raw(&beta)),
            tensor("m", &[3], &raw(&mean)),
            tensor("v", &[3], &raw(&var)),
        ],
        &[1, 2],
        &[1, 3],
    );
    let g = Graph::from_onnx_bytes(&m).unwrap();
    assert_eq!(g.nodes().len(), 1);
    let x = [0.7f32, -1.3];
    let y = FloatExecutor::new(&g)
        .run(
            ArrayD::from_shape_vec(IxDyn(&[1, 2]), x.to_vec())
                .unwrap()
                .view(),
        )
        .unwrap();
    for n in 0..3 {
        let z = x[0] * b[n] + x[1] * b[3 + n] + c[n];
        let want = gamma[n] * (z - mean[n]) / (var[n] + 1e-5).sqrt() + beta[n];
        assert!(
            (y[[0, n].as_slice()] - want).abs() < 1e-6,
            "column {n}: {} vs {want}",
            y[[0, n].as_slice()]
        );
    }
}

fn ints_attr(name: &str, values: &[i64]) -> Vec<u8> {
    let mut a = bytes_field(1, name.as_bytes());
    for &v in values {
        a.extend(int_field(8, v));
    }
    a.extend(int_field(20, 7));
    a
}

#[test]
fn conv_kernel_shape_must_match_the_weights() {
    let w: Vec<u8> = (0..9)
        .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
        .collect();
    let conv = |ks: &[i64]| {
        model(
            &[node(
                "c",
                "Conv",
                &["x", "w"],
                &["y"],
                &[ints_attr("kernel_shape", ks)],
            )],
            &[tensor("w", &[1, 1, 3, 3], &w)],
            &[1, 1, 6, 6],
            &[1, 1, 4, 4],
        )
    };
    assert!(Graph::from_onnx_bytes(&conv(&[3, 3])).is_ok());
    match Graph::from_onnx_bytes(&conv(&[5, 5])).unwrap_err() {
        fixq::Error::ShapeMismatch {
            what,
            expected,
            found,
        } => {
            assert_eq!(what, "node 'c' (op Conv): kernel_shape");
            assert!(expected.starts_with("[3, 3]"), "{expected}");
            assert_eq!(found, "[5, 5]");
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

// ---- shapes during import: folded shape chains, auto_pad SAME_*, Pad-18 axes -------------------

fn int64s(name: &str, dims: &[i64], values: &[i64]) -> Vec<u8> {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut t: Vec<u8> = dims.iter().flat_map(|&d| int_field(1, d)).collect();
    t.extend(int_field(2, 7));
    t.extend(bytes_field(8, name.as_bytes()));
    t.extend(bytes_field(9, &raw));
    t
}

fn int_attr(name: &str, v: i64) -> Vec<u8> {
    [
        bytes_field(1, name.as_bytes()),
        int_field(3, v),
        int_field(20, 2),
    ]
    .concat()
}

fn float_tensor_attr(name: &str, value: f32) -> Vec<u8> {
    let mut t = int_field(1, 1);
    t.extend(int_field(2, 1));
    t.extend(bytes_field(9, &value.to_le_bytes()));
    [
        bytes_field(1, name.as_bytes()),
        bytes_field(5, &t),
        int_field(20, 4),
    ]
    .concat()
}

fn ramp(shape: &[usize]) -> ArrayD<f32> {
    let n = shape.iter().product::<usize>();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()).unwrap()
}

/// `Reshape(x, Concat(Unsqueeze(<dim>), rest))` where `<dim>` is computed from `Shape(x)[0]` by
/// `arith` (nodes reading `n` and writing `d`).
fn batch_chain(arith: Vec<Vec<u8>>, extra: Vec<Vec<u8>>, rest: &[i64], input: &[i64]) -> Vec<u8> {
    let mut nodes = vec![
        node("shape", "Shape", &["x"], &["s"], &[]),
        node(
            "gather",
            "Gather",
            &["s", "zero"],
            &["n"],
            &[int_attr("axis", 0)],
        ),
    ];
    nodes.extend(arith);
    nodes.push(node("unsq", "Unsqueeze", &["d", "axes0"], &["d1"], &[]));
    nodes.push(node(
        "cat",
        "Concat",
        &["d1", "rest"],
        &["t"],
        &[int_attr("axis", 0)],
    ));
    nodes.push(node("reshape", "Reshape", &["x", "t"], &["y"], &[]));
    let mut inits = vec![
        int64s("zero", &[], &[0]),
        int64s("axes0", &[1], &[0]),
        int64s("rest", &[rest.len() as i64], rest),
    ];
    inits.extend(extra);
    model(&nodes, &inits, input, &[-1, -1])
}

#[test]
fn batch_dependent_shape_arithmetic_folds_to_minus_one_in_the_batch_position() {
    // x.view(4 * x.size(0), 36) on [N, 4, 6, 6]: 4N has to become -1.
    let m = batch_chain(
        vec![node("times4", "Mul", &["n", "four"], &["d"], &[])],
        vec![int64s("four", &[], &[4])],
        &[36],
        &[-1, 4, 6, 6],
    );
    let g = Graph::from_onnx_bytes(&m).unwrap();
    assert_eq!(g.nodes().len(), 1);
    assert_eq!(
        g.nodes()[0].op,
        fixq::graph::Op::Reshape {
            shape: vec![-1, 36],
            allow_zero: false
        }
    );
    for n in [1, 3] {
        let x = ramp(&[n, 4, 6, 6]);
        let y = FloatExecutor::new(&g).run(x.view()).unwrap();
        assert_eq!(y.shape(), &[4 * n, 36]);
        assert_eq!(y.as_slice().unwrap(), x.as_slice().unwrap());
    }
}

#[test]
fn shape_chain_that_depends_on_the_batch_unfoldably_is_refused() {
    // N + 1 is not a multiple of N: refused where it is computed.
    let plus1 = batch_chain(
        vec![node("plus1", "Add", &["n", "one"], &["d"], &[])],
        vec![int64s("one", &[], &[1])],
        &[-1],
        &[-1, 4, 6, 6],
    );
    let msg = common::unsupported(Graph::from_onnx_bytes(&plus1).unwrap_err());
    assert!(
        msg.starts_with("node 'plus1' (op Add): N + 1 depends on the batch size N"),
        "{msg}"
    );
    // N at position 1 of the target shape: neither a copy nor the inferred dimension of the batch.
    let m = model(
        &[
            node("shape", "Shape", &["x"], &["s"], &[]),
            node("gather", "Gather", &["s", "zero"], &["n"], &[]),
            node("unsq", "Unsqueeze", &["n", "axes0"], &["n1"], &[]),
            node(
                "cat",
                "Concat",
                &["four", "n1", "m1"],
                &["t"],
                &[int_attr("axis", 0)],
            ),
            node("reshape", "Reshape", &["x", "t"], &["y"], &[]),
        ],
        &[
            int64s("zero", &[], &[0]),
            int64s("axes0", &[1], &[0]),
            int64s("four", &[1], &[4]),
            int64s("m1", &[1], &[-1]),
        ],
        &[-1, 4, 6, 6],
        &[4, -1, 36],
    );
    let msg = common::unsupported(Graph::from_onnx_bytes(&m).unwrap_err());
    assert!(
        msg.starts_with(
            "node 'reshape' (op Reshape): the target shape [4, N, -1] depends on the batch size N"
        ),
        "{msg}"
    );
    assert!(msg.contains("position 1 is N"), "{msg}");
    // 2N at position 0 with another -1: it could only become -1 itself.
    let twice = batch_chain(
        vec![node("times2", "Mul", &["two", "n"], &["d"], &[])],
        vec![int64s("two", &[], &[2])],
        &[-1],
        &[-1, 4, 6, 6],
    );
    let msg = common::unsupported(Graph::from_onnx_bytes(&twice).unwrap_err());
    assert!(
        msg.contains("[2N, -1]") && msg.contains("position 1 already is -1"),
        "{msg}"
    );
    // A batch-dependent value anywhere but Reshape's shape (here Pad's pads).
    let m = model(
        &[
            node("shape", "Shape", &["x"], &["s"], &[]),
            node("pad", "Pad", &["x", "s"], &["y"], &[]),
        ],
        &[],
        &[-1, 4],
        &[-1, -1],
    );
    let msg = common::unsupported(Graph::from_onnx_bytes(&m).unwrap_err());
    assert_eq!(
        msg,
        "node 'pad' (op Pad): input 's' is [N, 4], which depends on the batch size N (only \
         Reshape's shape may, as 0 or -1 at position 0)"
    );
    // A fill of shape [N, 4] read by something that would not broadcast it back.
    let m = model(
        &[
            node("shape", "Shape", &["x"], &["s"], &[]),
            node(
                "fill",
                "ConstantOfShape",
                &["s"],
                &["f"],
                &[float_tensor_attr("value", 1.0)],
            ),
            node("cat", "Concat", &["x", "f"], &["y"], &[int_attr("axis", 1)]),
        ],
        &[],
        &[-1, 4],
        &[-1, 8],
    );
    let msg = common::unsupported(Graph::from_onnx_bytes(&m).unwrap_err());
    assert!(
        msg.starts_with("node 'cat' (op Concat): input 'f' is a ConstantOfShape of the batch-dependent shape [N, 4], which import keeps as [1, 4]"),
        "{msg}"
    );
}

#[test]
fn folded_values_claiming_huge_sizes_are_refused_without_allocating() {
    let fill = |dims: &[i64], value: Vec<u8>| {
        model(
            &[
                node("fill", "ConstantOfShape", &["s"], &["f"], &[value]),
                node("add", "Add", &["x", "f"], &["y"], &[]),
            ],
            &[int64s("s", &[dims.len() as i64], dims)],
            &[-1, 4],
            &[-1, 4],
        )
    };
    let msg = common::unsupported(
        Graph::from_onnx_bytes(&fill(
            &[0, 1 << 40, 1 << 40],
            float_tensor_attr("value", 1.0),
        ))
        .unwrap_err(),
    );
    assert!(
        msg.starts_with("node 'fill' (op ConstantOfShape): a fill of shape [0, 1099511627776, 1099511627776] would hold more than"),
        "{msg}"
    );
    let int_value = [
        bytes_field(1, b"value"),
        bytes_field(5, &int64s("", &[1], &[0])),
        int_field(20, 4),
    ]
    .concat();
    let msg =
        common::unsupported(Graph::from_onnx_bytes(&fill(&[1 << 30], int_value)).unwrap_err());
    assert!(
        msg.starts_with("node 'fill' (op ConstantOfShape): the integer result of shape [1073741824] has more than 1048576 elements"),
        "{msg}"
    );
}

#[test]
fn shape_of_a_tensor_with_a_non_fixed_non_batch_dimension_is_refused() {
    let chain = |of: &str, pre: Vec<Vec<u8>>| {
        let mut nodes = pre;
        nodes.extend([
            node("shape", "Shape", &[of], &["s"], &[]),
            node("gather", "Gather", &["s", "zero"], &["n"], &[]),
            node("unsq", "Unsqueeze", &["n", "axes0"], &["n1"], &[]),
            node(
                "cat",
                "Concat",
                &["n1", "m1"],
                &["t"],
                &[int_attr("axis", 0)],
            ),
            node("reshape", "Reshape", &[of, "t"], &["y"], &[]),
        ]);
        model(
            &nodes,
            &[
                int64s("zero", &[], &[0]),
                int64s("axes0", &[1], &[0]),
                int64s("m1", &[1], &[-1]),
            ],
            &[-1, 4, -1, -1],
            &[-1, -1],
        )
    };
    let msg = common::unsupported(Graph::from_onnx_bytes(&chain("x", vec![])).unwrap_err());
    assert_eq!(
        msg,
        "node 'shape' (op Shape): dimension 2 of 'x' (shape [N, 4, ?, ?]) is not fixed by the \
         declared input shape; import folds shapes only for a fixed input size (every dimension \
         but the batch)"
    );
    // After a global pool the same chain sees [N, 4, 1, 1], which is fixed but for N.
    let pooled = chain(
        "g",
        vec![node("gap", "GlobalAveragePool", &["x"], &["g"], &[])],
    );
    let g = Graph::from_onnx_bytes(&pooled).unwrap();
    let y = FloatExecutor::new(&g)
        .run(ramp(&[3, 4, 5, 7]).view())
        .unwrap();
    assert_eq!(y.shape(), &[3, 4]);
}

#[test]
fn same_auto_pad_needs_a_fixed_spatial_size_and_puts_the_odd_pad_by_its_mode() {
    let conv = |mode: &str, input: &[i64]| {
        model(
            &[node(
                "c1",
                "Conv",
                &["x", "w"],
                &["y"],
                &[string_attr("auto_pad", mode), ints_attr("strides", &[2, 2])],
            )],
            &[tensor(
                "w",
                &[1, 1, 2, 2],
                &[1.0f32; 4].map(f32::to_le_bytes).concat(),
            )],
            input,
            &[-1, 1, -1, -1],
        )
    };
    let msg = common::unsupported(
        Graph::from_onnx_bytes(&conv("SAME_UPPER", &[-1, 1, -1, 5])).unwrap_err(),
    );
    assert_eq!(
        msg,
        "node 'c1' (op Conv): auto_pad 'SAME_UPPER' needs the input's height and width, but 'x' \
         has shape [N, 1, ?, 5]: they must be fixed by the declared input shape"
    );
    // 2x2 stride 2 on 5x5: 3 outputs per axis, total pad (3 - 1) * 2 + 2 - 5 = 1.
    for (mode, pad) in [("SAME_UPPER", [0, 0, 1, 1]), ("SAME_LOWER", [1, 1, 0, 0])] {
        let g = Graph::from_onnx_bytes(&conv(mode, &[-1, 1, 5, 5])).unwrap();
        assert!(
            matches!(g.nodes()[0].op, fixq::graph::Op::Conv { pad: p, .. } if p == pad),
            "{mode}: {:?}",
            g.nodes()[0].op
        );
        let x = ArrayD::from_elem(IxDyn(&[2, 1, 5, 5]), 1.0f32);
        let y = FloatExecutor::new(&g).run(x.view()).unwrap();
        assert_eq!(y.shape(), &[2, 1, 3, 3]);
        // The window that hangs over the padding sums 2 ones: last (UPPER) or first (LOWER).
        let (full, edge) = if mode == "SAME_UPPER" {
            ([0, 0, 0, 0], [0, 0, 2, 0])
        } else {
            ([0, 0, 2, 2], [0, 0, 0, 2])
        };
        assert_eq!(y[IxDyn(&full)], 4.0, "{mode}");
        assert_eq!(y[IxDyn(&edge)], 2.0, "{mode}");
    }
    // Pools take auto_pad too: MaxPool 3x3 stride 1 SAME_UPPER keeps 4x4.
    let pool = model(
        &[node(
            "mp",
            "MaxPool",
            &["x"],
            &["y"],
            &[
                string_attr("auto_pad", "SAME_UPPER"),
                ints_attr("kernel_shape", &[3, 3]),
            ],
        )],
        &[],
        &[-1, 2, 4, 4],
        &[-1, 2, 4, 4],
    );
    let g = Graph::from_onnx_bytes(&pool).unwrap();
    assert!(matches!(&g.nodes()[0].op, fixq::graph::Op::MaxPool(p) if p.pad == [1, 1, 1, 1]));
}

#[test]
fn pad_axes_out_of_range_are_refused() {
    let pad = |axes: &[i64]| {
        model_at(
            18,
            &[node("p", "Pad", &["x", "pads", "", "axes"], &["y"], &[])],
            &[
                int64s("pads", &[4], &[1, 0, 1, 2]),
                int64s("axes", &[2], axes),
            ],
            &[-1, 4, 6, 6],
            &[-1, -1, -1, -1],
        )
    };
    let (what, expected, found) =
        common::shape_mismatch(Graph::from_onnx_bytes(&pad(&[1, 4])).unwrap_err());
    assert_eq!(what, "node 'p' (op Pad): axes");
    assert_eq!(expected, "axes in -4..4 (input 'x' has rank 4)");
    assert_eq!(found, "[1, 4]");
    let (_, expected, found) =
        common::shape_mismatch(Graph::from_onnx_bytes(&pad(&[-5, 1])).unwrap_err());
    assert!(
        expected.contains("-4..4") && found == "[-5, 1]",
        "{expected} {found}"
    );
    let (_, expected, found) =
        common::shape_mismatch(Graph::from_onnx_bytes(&pad(&[1, -3])).unwrap_err());
    assert_eq!(
        (expected.as_str(), found.as_str()),
        ("distinct axes", "[1, -3] (axis 1 twice)")
    );
    // Negative axes count from the end: [-3, -1] are axes 1 and 3.
    let g = Graph::from_onnx_bytes(&pad(&[-3, -1])).unwrap();
    assert!(
        matches!(&g.nodes()[0].op, fixq::graph::Op::Pad { pads, .. } if pads == &[0, 1, 0, 0, 0, 1, 0, 2])
    );
}
