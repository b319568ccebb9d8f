//! The random-weight test networks of `scripts/op_fixtures.py` (CIFAR-shaped ResNet with option-A
//! shortcuts, MobileNetV2-style inverted residuals, SqueezeNet-style fire modules): the float executor
//! matches onnxruntime's outputs on the fixture's inputs, and each runs in the fixed-point network at
//! 8 bits (per-channel weights, 8-bit activations), calibrated on images 0..64 of the shipped CIFAR-10
//! subset and measured on its images 64..200 (136 images the calibration did not see).
//!
//! Activation steps by exact MSE over the calibration histograms (`StepRule::MinDataMse`), and
//! against the fitted rule (`MinExpectedMse`). Measured output SQNR (this commit, release build),
//! histogram / fitted: resnet_a 34.78 / 32.98 dB, mobilenetv2 23.45 / 22.45 dB, squeezenet
//! 30.72 / 29.97 dB. The floors below keep about 2 dB of margin.
//!
//! mobilenetv2 misses issue 11's 30 dB at 8 bits for a reason the plan cannot remove: its random
//! weights amplify noise about 2 dB per block, and its 8-bit input alone (every other tensor float)
//! limits the output to 29.8 dB; the sum of all its terms measured alone (Eq. 9) is 23.1 dB, what the
//! integer network reaches.

mod shipped;

use fixq::calib::Calibration;
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::io::npy;
use fixq::plan::{self, Granularity, PlanConfig, StepRule};
use fixq::{Graph, sqnr};
use ndarray::{ArrayD, Axis, s};

const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

fn f32_npy(rel: &str) -> ArrayD<f32> {
    npy::read(shipped::path(rel)).unwrap().into_f32().unwrap()
}

/// Images `from..to` of the shipped subset (CIFAR-10 test images 500..700), normalised as the
/// fixtures' inputs are (CIFAR-10 test images 0..3).
fn subset_images(from: usize, to: usize) -> ArrayD<f32> {
    let raw = shipped::cifar10_subset().images;
    let mut x = raw.slice(s![from..to, .., .., ..]).mapv(|v| v / 255.0);
    for (c, mut plane) in x.axis_iter_mut(Axis(1)).enumerate() {
        plane.mapv_inplace(|v| (v - MEAN[c]) / STD[c]);
    }
    x.into_dyn()
}

/// (float max error relative to the largest |logit| on the fixture's inputs, fixed-point output
/// SQNR in dB on the held-out images) with activation steps from the histograms or the fitted rule.
fn check(name: &str, histogram: bool) -> (f32, f64) {
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
    let mut cal = Calibration::new().with_histograms();
    cal.observe(&exec, subset_images(0, 64).view()).unwrap();
    let config = PlanConfig {
        granularity: Granularity::PerChannel,
        activation_step: if histogram {
            StepRule::MinDataMse
        } else {
            StepRule::MinExpectedMse
        },
        ..PlanConfig::equal(8)
    };
    let plan = plan::plan(&graph, &cal, &config).unwrap();
    let net = FixedNetwork::new(&graph, &plan).unwrap_or_else(|e| panic!("{name}: {e}"));
    let held = subset_images(64, 200);
    let want = exec.run(held.view()).unwrap();
    let got = net.run(held.view()).unwrap();
    let db = sqnr::measure_db(want.as_slice().unwrap(), got.as_slice().unwrap()).unwrap();
    eprintln!("{name} histogram={histogram}: {db:.2} dB");
    (err, db)
}

/// Both rules' SQNR, after checking the float output; the histogram's must not be worse.
fn both(name: &str) -> (f64, f64) {
    let (err, hist) = check(name, true);
    assert!(err < 1e-5, "{name}: float vs onnxruntime: {err}");
    let (_, fitted) = check(name, false);
    assert!(
        hist >= fitted - 0.5,
        "{name}: histogram steps {hist:.2} dB vs fitted {fitted:.2} dB"
    );
    (hist, fitted)
}

#[test]
fn resnet_with_option_a_shortcuts_runs_in_integers() {
    let (db, _) = both("resnet_a");
    assert!(db >= 32.5, "8-bit output SQNR {db:.2} dB");
}

#[test]
fn mobilenet_v2_blocks_run_in_integers() {
    let (db, _) = both("mobilenetv2");
    assert!(db >= 21.5, "8-bit output SQNR {db:.2} dB");
}

#[test]
fn squeezenet_fire_modules_run_in_integers() {
    let (db, _) = both("squeezenet");
    assert!(db >= 28.5, "8-bit output SQNR {db:.2} dB");
}
