//! The bad-input matrix of docs/reliability.md: one test per row, each asserting the error (and its
//! message) the user gets, or the result where the input is legitimate. Messages are printed so that
//! `cargo test --test bad_input -- --nocapture` reproduces the table's "message" column.

mod common;

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

/// Unwraps the error, prints it as a matrix row, and checks it contains `expected`.
fn row<T: std::fmt::Debug>(name: &str, r: fixq::Result<T>, expected: &str) -> Error {
    let e = match r {
        Err(e) => e,
        Ok(v) => panic!("{name}: expected an error containing {expected:?}, got Ok({v:?})"),
    };
    println!("ROW {name} | {e}");
    assert!(e.to_string().contains(expected), "{name}: {e}");
    e
}

#[test]
fn nan_weight_is_named_by_plan() {
    let mut g = digits();
    let cal = calibration(&g, 64);
    let mut w = g.initializer("conv1.weight").unwrap().clone();
    w[[0, 0, 1, 1]] = f32::NAN;
    g.set_initializer("conv1.weight", w).unwrap();
    let before = g.initializer("conv1.weight").unwrap().clone();
    row(
        "nan_weight_is_named_by_plan",
        plan::plan(&g, &cal, &PlanConfig::fixq(Budget::AvgBitsPerParam(4.0))),
        "invalid weights: tensor 'conv1.weight' holds the non-finite value NaN at flat index 4",
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
    w[[1, 2]] = f32::INFINITY;
    g.set_initializer("linear2.weight", w).unwrap();
    row(
        "infinite_weight_is_named_by_plan",
        plan::plan(&g, &cal, &PlanConfig::fixq(Budget::AvgBitsPerParam(4.0))),
        "invalid weights: tensor 'linear2.weight' holds the non-finite value inf at flat index",
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
    row(
        "nan_activation_in_calibration_names_the_tensor_and_adds_nothing",
        cal.observe(&exec, x.view()),
        "non-finite value NaN",
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
    row(
        "infinite_input_to_fixed_network_is_refused",
        net.run(x.view()),
        "non-finite",
    );
}

#[test]
fn empty_tensor_cannot_be_fitted() {
    row(
        "empty_tensor_cannot_be_fitted",
        dist::fit(&[]),
        "empty input",
    );
}

#[test]
fn empty_calibration_is_refused() {
    let g = digits();
    let none: Vec<ndarray::ArrayViewD<'_, f32>> = Vec::new();
    row(
        "empty_calibration_is_refused",
        calib::calibrate(&FloatExecutor::new(&g), none, |_| {}),
        "calibration batches has no elements",
    );
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 1, 8, 8]));
    row(
        "empty_calibration_is_refused (empty batch)",
        Calibration::new().observe(&FloatExecutor::new(&g), empty.view()),
        "empty",
    );
}

#[test]
fn constant_tensor_has_zero_variance() {
    row(
        "constant_tensor_has_zero_variance",
        dist::fit(&[0.25; 100]),
        "zero variance: all 100 values",
    );
}

#[test]
fn constant_weight_layer_still_plans() {
    // A dead (all-zero) layer is legitimate: it must plan, not fail on zero variance.
    let mut g = digits();
    let cal = calibration(&g, 64);
    let w = g.initializer("conv2.weight").unwrap().mapv(|_| 0.0);
    g.set_initializer("conv2.weight", w).unwrap();
    let r = plan::plan(&g, &cal, &PlanConfig::fixq(Budget::AvgBitsPerParam(4.0)));
    match r {
        Ok(p) => println!(
            "ROW constant_weight_layer_still_plans | Ok: {} bits",
            p.model_bits()
        ),
        Err(e) => {
            println!("ROW constant_weight_layer_still_plans | {e}");
            assert!(e.to_string().contains("conv2"), "{e}");
        }
    }
}

#[test]
fn calibration_set_of_one_image_plans() {
    let g = digits();
    let cal = calibration(&g, 1);
    assert_eq!(cal.images(), 1);
    let p = plan::plan(&g, &cal, &PlanConfig::fixq(Budget::AvgBitsPerParam(4.0))).unwrap();
    assert!(p.avg_bits_per_param() <= 4.0 + 1e-9);
    println!(
        "ROW calibration_set_of_one_image_plans | Ok: {:.2} bits per weight",
        p.avg_bits_per_param()
    );
}

#[test]
fn wrong_input_shape_is_a_shape_mismatch() {
    let g = digits();
    let x = ArrayD::<f32>::zeros(IxDyn(&[1, 3, 8, 8]));
    row(
        "wrong_input_shape_is_a_shape_mismatch",
        FloatExecutor::new(&g).run(x.view()),
        "shape mismatch",
    );
    let p = plan::plan(&g, &calibration(&g, 16), &PlanConfig::equal(8)).unwrap();
    row(
        "wrong_input_shape_is_a_shape_mismatch (fixed)",
        FixedNetwork::new(&g, &p).unwrap().run(x.view()),
        "shape mismatch",
    );
}

#[test]
fn replacing_weights_with_other_channel_count_is_refused() {
    let mut g = digits();
    let w = ArrayD::<f32>::zeros(IxDyn(&[8, 1, 3, 3]));
    row(
        "replacing_weights_with_other_channel_count_is_refused",
        g.set_initializer("conv1.weight", w),
        "conv1.weight",
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
    row(
        "per_channel_formats_must_match_channels",
        q.quantize(Array2::<f32>::zeros((2, 5)).view()),
        "shape mismatch",
    );
}

#[test]
fn bits_outside_range_are_refused() {
    row(
        "bits_outside_range_are_refused (0)",
        QFormat::signed(0, 0),
        "invalid bits: 0 is outside 1..=32",
    );
    row(
        "bits_outside_range_are_refused (33)",
        QFormat::signed(33, 0),
        "invalid bits: 33 is outside 1..=32",
    );
    let nine = QFormat::signed(9, 0).unwrap();
    row(
        "bits_outside_range_are_refused (i8 storage)",
        Quantizer::<i8>::new(nine),
        "9",
    );
    let seventeen = QFormat::signed(17, 0).unwrap();
    row(
        "bits_outside_range_are_refused (i16 storage)",
        Quantizer::<i16>::new(seventeen),
        "17",
    );
    let mut cfg = PlanConfig::fixq(Budget::AvgBitsPerParam(4.0));
    cfg.weight_bits = 0..=20;
    let g = digits();
    row(
        "bits_outside_range_are_refused (plan)",
        plan::plan(&g, &calibration(&g, 16), &cfg),
        "bits",
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
    row(
        "infeasible_budget_names_the_nearest_feasible_value (SQNR)",
        fixq::allocate_bits(&layers, Budget::MinSqnrDb(100.0)),
        "infeasible budget: target 100 dB exceeds the best reachable 48 dB; nearest feasible value is 48",
    );
    row(
        "infeasible_budget_names_the_nearest_feasible_value (size)",
        fixq::allocate_bits(&layers, Budget::AvgBitsPerParam(0.5)),
        "infeasible budget",
    );
    let g = digits();
    row(
        "infeasible_budget_names_the_nearest_feasible_value (plan)",
        plan::plan(
            &g,
            &calibration(&g, 16),
            &PlanConfig::fixq(Budget::AvgBitsPerParam(0.2)),
        ),
        "infeasible budget",
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
    row(
        "overflow_prone_formats_are_refused (bias)",
        FixedNetwork::new(&g, &p),
        "accumulator overflow possible",
    );
    // The kernels' own bound (max|x|·Σ|w| + |b| <= 2^62 in a 64-bit accumulator) cannot be
    // exceeded by any tensor that fits in memory with 16-bit codes: K would need 2^32 weights.
}

#[test]
fn unsupported_onnx_op_is_named() {
    row(
        "unsupported_onnx_op_is_named",
        Graph::from_onnx_bytes(&common::model("LSTM", &[], &[])),
        "unsupported: ",
    );
}

#[test]
fn unsupported_onnx_dtype_is_named() {
    let half = common::tensor("w", 10, &[4], &[0; 8]); // FLOAT16
    row(
        "unsupported_onnx_dtype_is_named",
        Graph::from_onnx_bytes(&common::model("Add", &["w"], &[half])),
        "unsupported: ",
    );
}

#[test]
fn truncated_files_are_malformed() {
    let onnx = std::fs::read(root("models/digits_cnn.onnx")).unwrap();
    row(
        "truncated_files_are_malformed (onnx)",
        Graph::from_onnx_bytes(&onnx[..onnx.len() / 2]),
        "malformed onnx data",
    );
    let idx = std::fs::read(root("data/digits/test-images-idx3-ubyte")).unwrap();
    row(
        "truncated_files_are_malformed (idx)",
        fixq::io::idx::parse(&idx[..idx.len() - 1]),
        "malformed idx data at byte 16: dimensions [450, 8, 8] need Some(28800) bytes but 28799 follow the header",
    );
    let npy = std::fs::read(root("tests/fixtures/ops_output.npy")).unwrap();
    row(
        "truncated_files_are_malformed (npy)",
        fixq::io::npy::parse(&npy[..100]),
        "malformed npy data",
    );
    let packed = std::fs::read(root("fuzz/seeds/per_tensor.fixqpack")).unwrap();
    row(
        "truncated_files_are_malformed (pack)",
        fixq::pack::from_bytes(&packed[..packed.len() - 1]),
        "malformed",
    );
    let plan = include_str!("../fuzz/seeds/plan_per_tensor.json");
    row(
        "truncated_files_are_malformed (plan json)",
        QuantPlan::from_json(&plan[..plan.len() / 2]),
        "malformed plan json data",
    );
}

#[test]
fn corrupt_files_are_malformed() {
    let mut onnx = std::fs::read(root("models/digits_cnn.onnx")).unwrap();
    onnx[0] = 0xff;
    row(
        "corrupt_files_are_malformed (onnx)",
        Graph::from_onnx_bytes(&onnx),
        "malformed onnx data",
    );
    row(
        "corrupt_files_are_malformed (idx magic)",
        fixq::io::idx::parse(&[1, 2, 8, 1, 0, 0, 0, 1, 7]),
        "malformed idx data at byte 0: bad magic",
    );
    row(
        "corrupt_files_are_malformed (idx type)",
        fixq::io::idx::parse(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]),
        "unsupported: IDX data type 0x0d",
    );
    let mut packed = std::fs::read(root("fuzz/seeds/per_tensor.fixqpack")).unwrap();
    packed[0] = b'X';
    row(
        "corrupt_files_are_malformed (pack)",
        fixq::pack::from_bytes(&packed),
        "magic",
    );
    row(
        "corrupt_files_are_malformed (safetensors)",
        fixq::io::safetensors::parse(b"\x02\x00\x00\x00\x00\x00\x00\x00[]"),
        "malformed safetensors data at byte 8: header is not a JSON object",
    );
    row(
        "corrupt_files_are_malformed (missing file)",
        Graph::from_onnx_file("/nonexistent/model.onnx"),
        "I/O error on /nonexistent/model.onnx",
    );
}

#[test]
fn nan_in_sqnr_inputs_is_refused() {
    row(
        "nan_in_sqnr_inputs_is_refused",
        fixq::sqnr::measure_db(&[1.0, f32::NAN], &[1.0, 1.0]),
        "non-finite",
    );
}
