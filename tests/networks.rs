//! The random-weight test networks of `scripts/op_fixtures.py` (CIFAR-shaped ResNet with option-A
//! shortcuts, MobileNetV2-style inverted residuals, SqueezeNet-style fire modules): the float executor
//! matches onnxruntime's outputs, and each runs in the fixed-point network at 8 bits (per-channel
//! weights, 8-bit activations), calibrated on 64 images of the shipped CIFAR-10 subset and measured on
//! the fixture's 4 other images.
//!
//! Measured output SQNR (this commit): resnet_a 28.09 dB, mobilenetv2 22.56 dB, squeezenet 27.32 dB;
//! the floors below keep about 2 dB of margin. Issue 11 asks for 30 dB: with power-of-two activation
//! steps from fitted families that is reached only at 10-12-bit activations (resnet_a 36.1 dB at 10
//! bits), so the 8-bit figure waits for data-driven activation ranges (issue 12).

mod shipped;

use fixq::calib::Calibration;
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::io::npy;
use fixq::plan::{self, Granularity, PlanConfig};
use fixq::{Graph, sqnr};
use ndarray::{ArrayD, Axis, s};

const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

fn f32_npy(rel: &str) -> ArrayD<f32> {
    npy::read(shipped::path(rel)).unwrap().into_f32().unwrap()
}

/// Calibration images: 64 of the shipped subset (CIFAR-10 test images 500..564), normalised as the
/// fixtures' inputs are (CIFAR-10 test images 0..3).
fn calibration_images() -> ArrayD<f32> {
    let raw = shipped::cifar10_subset().images;
    let mut x = raw.slice(s![..64, .., .., ..]).mapv(|v| v / 255.0);
    for (c, mut plane) in x.axis_iter_mut(Axis(1)).enumerate() {
        plane.mapv_inplace(|v| (v - MEAN[c]) / STD[c]);
    }
    x.into_dyn()
}

/// (float max error relative to the largest |logit|, fixed-point output SQNR in dB).
fn check(name: &str) -> (f32, f64) {
    let base = format!("tests/fixtures/ops/{name}");
    let graph = Graph::from_onnx_file(shipped::path(&format!("{base}.onnx"))).unwrap();
    let x = f32_npy(&format!("{base}.input.npy"));
    let want = f32_npy(&format!("{base}.output.npy"));
    let exec = FloatExecutor::new(&graph);
    let float = exec.run(x.view()).unwrap();
    assert_eq!(float.shape(), want.shape(), "{name}");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = float
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    let mut cal = Calibration::new();
    cal.observe(&exec, calibration_images().view()).unwrap();
    let config = PlanConfig {
        granularity: Granularity::PerChannel,
        ..PlanConfig::equal(8)
    };
    let plan = plan::plan(&graph, &cal, &config).unwrap();
    let net = FixedNetwork::new(&graph, &plan).unwrap_or_else(|e| panic!("{name}: {e}"));
    let fixed = net.run(x.view()).unwrap();
    let db = sqnr::measure_db(float.as_slice().unwrap(), fixed.as_slice().unwrap()).unwrap();
    (err, db)
}

#[test]
fn resnet_with_option_a_shortcuts_runs_in_integers() {
    let (err, db) = check("resnet_a");
    assert!(err < 1e-5, "float vs onnxruntime: {err}");
    assert!(db >= 26.0, "8-bit output SQNR {db:.2} dB");
}

#[test]
fn mobilenet_v2_blocks_run_in_integers() {
    let (err, db) = check("mobilenetv2");
    assert!(err < 1e-5, "float vs onnxruntime: {err}");
    assert!(db >= 20.5, "8-bit output SQNR {db:.2} dB");
}

#[test]
fn squeezenet_fire_modules_run_in_integers() {
    let (err, db) = check("squeezenet");
    assert!(err < 1e-5, "float vs onnxruntime: {err}");
    assert!(db >= 25.0, "8-bit output SQNR {db:.2} dB");
}
