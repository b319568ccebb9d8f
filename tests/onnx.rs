//! ONNX import and the float executor, cross-checked against onnxruntime fixtures
//! (`scripts/onnxruntime_fixture.py`, `scripts/cifar10_subset.py`) on the models and data that ship
//! with the crate. LeNet-5 on MNIST is checked by `examples/reproduce.rs`.
#![cfg(all(feature = "onnx", feature = "gzip"))]

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

fn value_info(name: &str, dims: &[i64]) -> Vec<u8> {
    let shape: Vec<u8> = dims
        .iter()
        .flat_map(|&d| bytes_field(1, &int_field(1, d)))
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
        bytes_field(8, &int_field(2, 13)),
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
            &[string_attr("auto_pad", "SAME_UPPER")],
        )],
        &[tensor("w", &[1, 1, 1, 1], &weights(1))],
        &[1, 1, 2, 2],
        &[1, 1, 2, 2],
    );
    let err = Graph::from_onnx_bytes(&same).unwrap_err().to_string();
    assert!(
        err.contains("node 'c1' (op Conv)") && err.contains("SAME_UPPER"),
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
