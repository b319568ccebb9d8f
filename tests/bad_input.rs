//! The bad-input matrix of docs/reliability.md: one test per row, each asserting the error (and its
//! message) the user gets, or the result where the input is legitimate. Messages are printed so that
//! `cargo test --test bad_input -- --nocapture` reproduces the table's "message" column.

mod common;

use common::{invalid, shape_mismatch, unsupported};

use fixq::calib::{self, Calibration};
use fixq::eval::Dataset;
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::plan::{self, PlanConfig, QuantPlan};
use fixq::{Budget, Error, Graph, LayerSpec, QFormat, Quantizer, SqnrCurve, dist};
use ndarray::{Array2, ArrayD, IxDyn};

fn root(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

fn digits() -> Graph {
    Graph::from_onnx_file(root("models/digits_cnn.onnx")).unwrap()
}

fn digits_calib(n: usize) -> Dataset {
    Dataset::from_idx(
        root("data/digits/train-images-idx3-ubyte"),
        root("data/digits/train-labels-idx1-ubyte"),
        1.0 / 16.0,
        Some(n),
    )
    .unwrap()
}

fn calibration(graph: &Graph, n: usize) -> Calibration {
    let d = digits_calib(n);
    calib::calibrate(&FloatExecutor::new(graph), d.batches(64), |_| {}).unwrap()
}

/// Unwraps the error and prints it as a matrix row (`ROW name | message`, the table's message
/// column). Each test then matches the variant and checks its fields.
fn row<T: std::fmt::Debug>(name: &str, r: fixq::Result<T>) -> Error {
    match r {
        Err(e) => {
            println!("ROW {name} | {e}");
            e
        }
        Ok(v) => panic!("{name}: expected an error, got Ok({v:?})"),
    }
}

/// `(format, offset, reason)` of a `Malformed`.
fn malformed(e: Error) -> (&'static str, u64, String) {
    match e {
        Error::Malformed {
            format,
            offset,
            reason,
        } => (format, offset, reason),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

/// The text of an `Unsupported`.
/// `(reason, nearest)` of an `Infeasible`.
fn infeasible(e: Error) -> (String, f64) {
    match e {
        Error::Infeasible { reason, nearest } => (reason, nearest),
        other => panic!("expected Infeasible, got {other:?}"),
    }
}

#[test]
fn nan_weight_is_named_by_plan() {
    let mut g = digits();
    let cal = calibration(&g, 64);
    let mut w = g.initializer("conv1.weight").unwrap().clone();
    w[[0, 0, 1, 1]] = f32::NAN;
    g.set_initializer("conv1.weight", w).unwrap();
    let before = g.initializer("conv1.weight").unwrap().clone();
    let e = row(
        "nan_weight_is_named_by_plan",
        plan::plan(&g, &cal, &PlanConfig::fixq(Budget::AvgBitsPerParam(4.0))),
    );
    assert_eq!(
        invalid(e),
        (
            "weights",
            "tensor 'conv1.weight' holds the non-finite value NaN at flat index 4".into()
        )
    );
    // Nothing the user gave is changed.
    assert!(g.initializer("conv1.weight").unwrap()[[0, 0, 1, 1]].is_nan());
    assert_eq!(
        before.shape(),
        g.initializer("conv1.weight").unwrap().shape()
    );
}

#[test]
fn infinite_weight_is_named_by_plan() {
    let mut g = digits();
    let cal = calibration(&g, 64);
    let mut w = g.initializer("linear2.weight").unwrap().clone();
    let columns = w.shape()[1];
    w[[1, 2]] = f32::INFINITY;
    g.set_initializer("linear2.weight", w).unwrap();
    let e = row(
        "infinite_weight_is_named_by_plan",
        plan::plan(&g, &cal, &PlanConfig::fixq(Budget::AvgBitsPerParam(4.0))),
    );
    assert_eq!(
        invalid(e),
        (
            "weights",
            format!(
                "tensor 'linear2.weight' holds the non-finite value inf at flat index {}",
                columns + 2
            )
        )
    );
}

#[test]
fn nan_activation_in_calibration_names_the_tensor_and_adds_nothing() {
    let g = digits();
    let exec = FloatExecutor::new(&g);
    let mut cal = calibration(&g, 64);
    let images = cal.images();
    let mut x = digits_calib(4).images.into_dyn();
    x[[2, 0, 3, 3]] = f32::NAN;
    let e = row(
        "nan_activation_in_calibration_names_the_tensor_and_adds_nothing",
        cal.observe(&exec, x.view()),
    );
    // Flat index of [2, 0, 3, 3] in [4, 1, 8, 8]: 2·64 + 3·8 + 3.
    assert_eq!(
        invalid(e),
        (
            "activation",
            "tensor 'input' holds the non-finite value NaN at flat index 155".into()
        )
    );
    assert_eq!(cal.images(), images);
}

#[test]
fn infinite_input_to_fixed_network_is_refused() {
    let g = digits();
    let p = plan::plan(&g, &calibration(&g, 64), &PlanConfig::equal(8)).unwrap();
    let net = FixedNetwork::new(&g, &p).unwrap();
    let mut x = digits_calib(1).images.into_dyn();
    x[[0, 0, 0, 0]] = f32::NEG_INFINITY;
    match row(
        "infinite_input_to_fixed_network_is_refused",
        net.run(x.view()),
    ) {
        Error::NonFinite { what, index, value } => {
            assert_eq!((what, index), ("tensor to quantize", 0));
            assert_eq!(value, f64::NEG_INFINITY);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_tensor_cannot_be_fitted() {
    match row("empty_tensor_cannot_be_fitted", dist::fit(&[])) {
        Error::Empty { what } => assert_eq!(what, "data"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_calibration_is_refused() {
    let g = digits();
    let none: Vec<ndarray::ArrayViewD<'_, f32>> = Vec::new();
    match row(
        "empty_calibration_is_refused",
        calib::calibrate(&FloatExecutor::new(&g), none, |_| {}),
    ) {
        Error::Empty { what } => assert_eq!(what, "calibration batches"),
        other => panic!("{other:?}"),
    }
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 1, 8, 8]));
    match row(
        "empty_calibration_is_refused (empty batch)",
        Calibration::new().observe(&FloatExecutor::new(&g), empty.view()),
    ) {
        Error::Empty { what } => assert_eq!(what, "calibration batch"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn constant_tensor_has_zero_variance() {
    match row("constant_tensor_has_zero_variance", dist::fit(&[0.25; 100])) {
        Error::ZeroVariance { what, count, value } => {
            assert_eq!((what, count, value), ("data", 100, 0.25));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn constant_weight_layer_is_refused_naming_the_tensor() {
    // A dead (all-zero) layer: no quantization step can be fitted to it, so planning refuses it and
    // says what to do, rather than planning a format for nothing.
    let mut g = digits();
    let cal = calibration(&g, 64);
    let w = g.initializer("conv2.weight").unwrap().mapv(|_| 0.0);
    let count = w.len();
    g.set_initializer("conv2.weight", w).unwrap();
    let e = row(
        "constant_weight_layer_is_refused_naming_the_tensor",
        plan::plan(&g, &cal, &PlanConfig::fixq(Budget::AvgBitsPerParam(4.0))),
    );
    assert_eq!(count, 4608);
    assert_eq!(
        invalid(e),
        (
            "tensor",
            "tensor 'conv2.weight' is constant (4608 values all equal 0): no step can be fitted; \
             fold it into a bias or remove the layer"
                .into()
        )
    );
}

#[test]
fn calibration_set_of_one_image_plans() {
    let g = digits();
    let cal = calibration(&g, 1);
    assert_eq!(cal.images(), 1);
    let p = plan::plan(&g, &cal, &PlanConfig::fixq(Budget::AvgBitsPerParam(4.0))).unwrap();
    assert!(p.avg_bits_per_param() <= 4.0 + 1e-9);
    assert!(p.avg_bits_per_param() >= 3.5, "{}", p.avg_bits_per_param());
    println!(
        "ROW calibration_set_of_one_image_plans | Ok: {:.2} bits per weight",
        p.avg_bits_per_param()
    );
}

#[test]
fn wrong_input_shape_is_a_shape_mismatch() {
    let g = digits();
    let x = ArrayD::<f32>::zeros(IxDyn(&[1, 3, 8, 8]));
    let e = row(
        "wrong_input_shape_is_a_shape_mismatch",
        FloatExecutor::new(&g).run(x.view()),
    );
    assert_eq!(
        shape_mismatch(e),
        (
            "input 'input'".into(),
            "[?, 1, 8, 8]".into(),
            "[1, 3, 8, 8]".into()
        )
    );
    let p = plan::plan(&g, &calibration(&g, 16), &PlanConfig::equal(8)).unwrap();
    let e = row(
        "wrong_input_shape_is_a_shape_mismatch (fixed)",
        FixedNetwork::new(&g, &p).unwrap().run(x.view()),
    );
    // The same message as the float executor's: the input is checked before anything runs.
    assert_eq!(
        shape_mismatch(e),
        (
            "input 'input'".into(),
            "[?, 1, 8, 8]".into(),
            "[1, 3, 8, 8]".into()
        )
    );
}

#[test]
fn replacing_weights_with_other_channel_count_is_refused() {
    let mut g = digits();
    let w = ArrayD::<f32>::zeros(IxDyn(&[8, 1, 3, 3]));
    let e = row(
        "replacing_weights_with_other_channel_count_is_refused",
        g.set_initializer("conv1.weight", w),
    );
    assert_eq!(
        shape_mismatch(e),
        (
            "initializer 'conv1.weight'".into(),
            "[16, 1, 3, 3]".into(),
            "[8, 1, 3, 3]".into()
        )
    );
    assert_eq!(
        g.initializer("conv1.weight").unwrap().shape(),
        &[16, 1, 3, 3]
    );
}

#[test]
fn per_channel_formats_must_match_channels() {
    let f = QFormat::signed(4, 2).unwrap();
    let q = Quantizer::<i8>::per_channel(0, vec![f; 3]).unwrap();
    let e = row(
        "per_channel_formats_must_match_channels",
        q.quantize(Array2::<f32>::zeros((2, 5)).view()),
    );
    assert_eq!(
        shape_mismatch(e),
        (
            "per-channel formats along axis 0".into(),
            "2 formats".into(),
            "3 formats".into()
        )
    );
}

#[test]
fn bits_outside_range_are_refused() {
    let e = row("bits_outside_range_are_refused (0)", QFormat::signed(0, 0));
    assert_eq!(invalid(e), ("bits", "0 is outside 1..=32".into()));
    let e = row(
        "bits_outside_range_are_refused (33)",
        QFormat::signed(33, 0),
    );
    assert_eq!(invalid(e), ("bits", "33 is outside 1..=32".into()));
    let nine = QFormat::signed(9, 0).unwrap();
    let e = row(
        "bits_outside_range_are_refused (i8 storage)",
        Quantizer::<i8>::new(nine),
    );
    assert_eq!(
        invalid(e),
        (
            "format",
            "s9.0 has codes -256..=255 which do not fit in i8 (-128..=127)".into()
        )
    );
    let seventeen = QFormat::signed(17, 0).unwrap();
    let e = row(
        "bits_outside_range_are_refused (i16 storage)",
        Quantizer::<i16>::new(seventeen),
    );
    assert_eq!(
        invalid(e),
        (
            "format",
            "s17.0 has codes -65536..=65535 which do not fit in i16 (-32768..=32767)".into()
        )
    );
    let mut cfg = PlanConfig::fixq(Budget::AvgBitsPerParam(4.0));
    cfg.weight_bits = 0..=20;
    let g = digits();
    let e = row(
        "bits_outside_range_are_refused (plan)",
        plan::plan(&g, &calibration(&g, 16), &cfg),
    );
    assert_eq!(
        invalid(e),
        (
            "weight_bits",
            "0..=20 must be a non-empty range within 1..=8 for the i8 kernels (MidTread grid)"
                .into()
        )
    );
}

#[test]
fn infeasible_budget_names_the_nearest_feasible_value() {
    let layers = [LayerSpec::new(
        "a",
        100,
        SqnrCurve::Linear {
            kappa_db_per_bit: 6.0,
            offset_db: 0.0,
        },
    )
    .bits_range(1..=8)];
    let e = row(
        "infeasible_budget_names_the_nearest_feasible_value (SQNR)",
        fixq::allocate_bits(&layers, Budget::MinSqnrDb(100.0)),
    );
    assert_eq!(
        infeasible(e),
        (
            "target 100 dB exceeds the best reachable 48 dB".into(),
            48.0
        )
    );
    let e = row(
        "infeasible_budget_names_the_nearest_feasible_value (size)",
        fixq::allocate_bits(&layers, Budget::AvgBitsPerParam(0.5)),
    );
    assert_eq!(
        infeasible(e),
        (
            "50 bits (100 params) is below the smallest reachable 100 bits".into(),
            1.0
        )
    );
    let g = digits();
    let e = row(
        "infeasible_budget_names_the_nearest_feasible_value (plan)",
        plan::plan(
            &g,
            &calibration(&g, 16),
            &PlanConfig::fixq(Budget::AvgBitsPerParam(0.2)),
        ),
    );
    // 0.2 bits for each of the 13584 planned weights, against at least 1 bit each.
    assert_eq!(
        infeasible(e),
        (
            "2716 bits (13584 params) is below the smallest reachable 13584 bits".into(),
            1.0
        )
    );
}

#[test]
fn overflow_prone_formats_are_refused() {
    // Bias codes at n_x + n_w = 40 fractional bits cannot fit the 32-bit accumulator.
    let g = digits();
    let text = include_str!("../fuzz/seeds/plan_per_tensor.json").replacen(
        "\"frac_bits\": 3",
        "\"frac_bits\": 40",
        1,
    );
    let p = QuantPlan::from_json(&text).unwrap();
    match row(
        "overflow_prone_formats_are_refused (bias)",
        FixedNetwork::new(&g, &p),
    ) {
        Error::AccumulatorOverflow { reason } => assert_eq!(
            reason,
            "node 'conv1': 16 bias values do not fit a 32-bit accumulator at n_x + n_w fractional \
             bits"
        ),
        other => panic!("{other:?}"),
    }
    // The kernels' own bound (max|x|·Σ|w| + |b| <= 2^62 in a 64-bit accumulator) cannot be
    // exceeded by any tensor that fits in memory with 16-bit codes: K would need 2^32 weights.
}

#[test]
fn unsupported_onnx_op_is_named() {
    let e = row(
        "unsupported_onnx_op_is_named",
        Graph::from_onnx_bytes(&common::model("LSTM", &[], &[])),
    );
    assert_eq!(unsupported(e), "node 'n0' (op LSTM): unsupported op");
}

#[test]
fn unsupported_onnx_dtype_is_named() {
    let half = common::tensor("w", 10, &[4], &[0; 8]); // FLOAT16
    let e = row(
        "unsupported_onnx_dtype_is_named",
        Graph::from_onnx_bytes(&common::model("Add", &["w"], &[half])),
    );
    assert_eq!(
        unsupported(e),
        "initializer 'w': data type FLOAT16 (only FLOAT weights, INT64 shapes and BOOL flags are supported)"
    );
}

#[test]
fn truncated_files_are_malformed() {
    let onnx = std::fs::read(root("models/digits_cnn.onnx")).unwrap();
    let e = row(
        "truncated_files_are_malformed (onnx)",
        Graph::from_onnx_bytes(&onnx[..onnx.len() / 2]),
    );
    let (format, offset, reason) = malformed(e);
    assert_eq!((format, offset), ("onnx", 25));
    assert_eq!(
        reason,
        format!(
            "length-delimited field claims 55713 bytes but only {} remain",
            onnx.len() / 2 - offset as usize
        )
    );
    let idx = std::fs::read(root("data/digits/test-images-idx3-ubyte")).unwrap();
    let e = row(
        "truncated_files_are_malformed (idx)",
        fixq::io::idx::parse(&idx[..idx.len() - 1]),
    );
    assert_eq!(
        malformed(e),
        (
            "idx",
            16,
            "dimensions [450, 8, 8] need 28800 bytes but 28799 follow the header".into()
        )
    );
    let npy = std::fs::read(root("tests/fixtures/ops_output.npy")).unwrap();
    let e = row(
        "truncated_files_are_malformed (npy)",
        fixq::io::npy::parse(&npy[..100]),
    );
    assert_eq!(
        malformed(e),
        (
            "npy",
            10,
            "header claims 118 bytes but the file ends first".into()
        )
    );
    let packed = std::fs::read(root("fuzz/seeds/per_tensor.fixqpack")).unwrap();
    let e = row(
        "truncated_files_are_malformed (pack)",
        fixq::pack::from_bytes(&packed[..packed.len() - 1]),
    );
    let (format, offset, reason) = malformed(e);
    assert_eq!(format, "fixq packed weights");
    // The last tensor's payload starts at `offset` and is one byte short.
    assert_eq!(
        reason,
        format!(
            "truncated: {} more bytes needed, {} left",
            packed.len() - offset as usize,
            packed.len() - offset as usize - 1
        )
    );
    let plan = include_str!("../fuzz/seeds/plan_per_tensor.json");
    let e = row(
        "truncated_files_are_malformed (plan json)",
        QuantPlan::from_json(&plan[..plan.len() / 2]),
    );
    // Truncated input: the error is at the end of the text.
    let (format, offset, reason) = malformed(e);
    assert_eq!(format, "plan json");
    assert_eq!(offset, (plan.len() / 2) as u64);
    let line = plan[..plan.len() / 2].matches('\n').count() + 1;
    assert!(
        reason.starts_with(&format!("EOF while parsing a value at line {line} column ")),
        "{reason}"
    );
}

#[test]
fn corrupt_files_are_malformed() {
    let mut onnx = std::fs::read(root("models/digits_cnn.onnx")).unwrap();
    onnx[0] = 0xff;
    let e = row(
        "corrupt_files_are_malformed (onnx)",
        Graph::from_onnx_bytes(&onnx),
    );
    assert_eq!(
        malformed(e),
        ("onnx", 0, "unsupported wire type 7 in field 143".into())
    );
    let e = row(
        "corrupt_files_are_malformed (idx magic)",
        fixq::io::idx::parse(&[1, 2, 8, 1, 0, 0, 0, 1, 7]),
    );
    assert_eq!(
        malformed(e),
        ("idx", 0, "bad magic [01, 02, 08, 01]".into())
    );
    let e = row(
        "corrupt_files_are_malformed (idx type)",
        fixq::io::idx::parse(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]),
    );
    assert_eq!(
        unsupported(e),
        "IDX data type 0x0d (only 0x08, unsigned byte)"
    );
    let mut packed = std::fs::read(root("fuzz/seeds/per_tensor.fixqpack")).unwrap();
    packed[0] = b'X';
    let e = row(
        "corrupt_files_are_malformed (pack)",
        fixq::pack::from_bytes(&packed),
    );
    assert_eq!(
        malformed(e),
        (
            "fixq packed weights",
            0,
            "not a fixq packed weight file (bad magic)".into()
        )
    );
    let e = row(
        "corrupt_files_are_malformed (safetensors)",
        fixq::io::safetensors::parse(b"\x02\x00\x00\x00\x00\x00\x00\x00[]"),
    );
    assert_eq!(
        malformed(e),
        ("safetensors", 8, "header is not a JSON object".into())
    );
    match row(
        "corrupt_files_are_malformed (missing file)",
        Graph::from_onnx_file("/nonexistent/model.onnx"),
    ) {
        Error::Io { path, source } => {
            assert_eq!(path, "/nonexistent/model.onnx");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn nan_in_sqnr_inputs_is_refused() {
    match row(
        "nan_in_sqnr_inputs_is_refused",
        fixq::sqnr::measure_db(&[1.0, f32::NAN], &[1.0, 1.0]),
    ) {
        Error::NonFinite { what, index, value } => {
            assert_eq!((what, index), ("reference", 1));
            assert!(value.is_nan(), "{value}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn corrupt_or_truncated_model_file_is_malformed() {
    use fixq::graph::{Node, Op, TensorInfo};
    use fixq::{QuantizeOptions, QuantizedModel};
    let w = Array2::from_shape_fn((4, 8), |(o, i)| ((o * 8 + i) as f32 * 0.37).sin()).into_dyn();
    let input = TensorInfo {
        name: "x".into(),
        shape: vec![None, Some(8)],
    };
    let fc = Node {
        name: "fc".into(),
        op: Op::MatMul,
        inputs: vec!["x".into(), "w".into()],
        output: "y".into(),
    };
    let w = w
        .permuted_axes(vec![1, 0])
        .as_standard_layout()
        .into_owned();
    let graph = Graph::new(input, "y", vec![fc], vec![("w".into(), w)]).unwrap();
    let images =
        Array2::from_shape_fn((16, 8), |(n, i)| ((n * 8 + i) as f32 * 0.9).cos()).into_dyn();
    let model = fixq::quantize(
        &graph,
        images.view(),
        Budget::AvgBitsPerParam(4.0),
        &QuantizeOptions::default(),
    )
    .unwrap();
    let bytes = model.to_bytes().unwrap();
    let n = bytes.len();
    let mut bad = bytes.clone();
    bad[40] ^= 0xff;
    match row("corrupt model file", QuantizedModel::from_bytes(&bad)) {
        Error::Malformed {
            format,
            offset,
            reason,
        } => {
            assert_eq!(format, "fixq model file");
            assert_eq!(offset as usize, n - 4);
            assert!(
                reason.starts_with("checksum mismatch: the file stores CRC-32 0x"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    match row(
        "truncated model file",
        QuantizedModel::from_bytes(&bytes[..n - 1]),
    ) {
        Error::Malformed { offset, reason, .. } => {
            assert_eq!(offset as usize, n - 1);
            assert_eq!(
                reason,
                format!(
                    "truncated: the header declares {n} bytes, the file has {}",
                    n - 1
                )
            );
        }
        other => panic!("{other:?}"),
    }
}
