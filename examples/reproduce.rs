//! The full real-data checks, in one command: LeNet-5 on all 10,000 MNIST test images and the
//! MLPerf Tiny ResNet-8 on the CIFAR-10 test set, read from the shared data folder.
//!
//! ```sh
//! cargo run --release --example reproduce -- --data ../shared    # --data defaults to ../shared
//! ```
//!
//! Prints markdown tables (float and fixed-point accuracy, predicted and measured output SQNR) and a
//! table of every checked figure against its threshold. Exits with status 1 and one line per miss on
//! stderr (`reproduce: FAILED <figure>: measured <m>, threshold <t>`) when a figure misses its
//! threshold, and with status 2, naming the path, when the data folder or a file in it is missing:
//! nothing is skipped. `cargo test` covers the same code on the models and data that ship with the
//! crate; this is the check on the full data sets (`docs/reproduction.md`). Two to three minutes on
//! one core of the project machine (release build).
//!
//! Checked, LeNet-5 (calibration on the first 500 test images, measured on all 10,000):
//! - the float executor: 98.89 % (9,889 images, as onnxruntime), logits within 1e-4 of onnxruntime's on
//!   16 images (`tests/fixtures/lenet5_ort_*.npy`), every truncation of the file an error;
//! - equal 8-bit weights within 0.3 points of float and above 30 dB output SQNR; fixq per channel at
//!   2.5 bits per weight within 0.5 points of float, Eq. 9 with probe noise gains within 5 dB of the
//!   measured output SQNR, and more accurate than the paper's method at the same budget;
//! - Eq. 9 over the terms measured alone within 3 dB of the network on seven kinds of allocation; at
//!   the operating point, per-channel 2-bit weights predicted within 3 dB;
//! - fixq per channel at 70 % of the bits of the smallest equal width within 0.3 points of float is
//!   within 0.3 points of it;
//! - a byte-identical plan and bit-identical outputs across runs and kernels (and rayon thread counts,
//!   with feature `rayon`).
//!
//! Checked, ResNet-8 (calibration on test images 0..500, measured on 500..10000, as
//! `../shared/data/cifar10/README.md` asks): float accuracy, and 8-bit weights per channel and per
//! tensor against float.
//!
//! Checked, the QDQ export (`QuantizedModel::to_onnx_qdq`, `docs/export.md`): LeNet-5 quantized by
//! fixq's default method at 4 bits per weight, exported and run in onnxruntime through
//! `scripts/run_qdq_onnx.py` (needs `python3 -m pip install -r scripts/requirements.txt`) on the
//! first 1,000 test images: top-1 agreement with fixq; the largest logit difference is printed.

mod common;
#[path = "../tests/qdq_ort/mod.rs"]
mod qdq_ort;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::fixq_config;
use fixq::eval::{self, Dataset, Evaluation, FloatReference};
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::io::npy::{self, NpyArray};
use fixq::kernels::KernelChoice;
use fixq::plan::{self, CurveSource, Granularity, PlanConfig, QuantPlan, StepRule};
use fixq::{Budget, Graph};
use ndarray::{ArrayD, Axis, Ix4, s};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const LENET: &str = "models/lenet5_mnist.onnx";
const MNIST_IMAGES: &str = "data/mnist/t10k-images-idx3-ubyte.gz";
const MNIST_LABELS: &str = "data/mnist/t10k-labels-idx1-ubyte.gz";
const RESNET8: &str = "models/resnet8_cifar10.onnx";
const CIFAR_IMAGES: &str = "data/cifar10/test_images_u8_nhwc.npy";
const CIFAR_LABELS: &str = "data/cifar10/test_labels_u8.npy";

/// Calibration images (the first of each test set), as the peers' figures in `MODELS.md`.
const CALIB: usize = 500;
/// Float against onnxruntime: `max |a - b| / max |b|`, and per element against `max(|b|, 1)`.
const ORT_REL_TOL: f32 = 1e-4;
/// Rounds of gain refinement at the operating point (`plan::plan_at_operating_point`).
const ROUNDS: usize = 3;

fn main() {
    let data = match parse_args() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("reproduce: {e}");
            std::process::exit(2);
        }
    };
    for rel in [
        LENET,
        MNIST_IMAGES,
        MNIST_LABELS,
        RESNET8,
        CIFAR_IMAGES,
        CIFAR_LABELS,
    ] {
        let p = data.join(rel);
        if !p.is_file() {
            eprintln!(
                "reproduce: {} is missing: the reproduction needs the shared data folder (LeNet-5, MNIST, \
                 ResNet-8, CIFAR-10; see README.md); pass --data DIR (default ../shared)",
                p.display()
            );
            std::process::exit(2);
        }
    }
    let t = Instant::now();
    let mut checks = Checks::default();
    if let Err(e) = run(&data, &mut checks) {
        eprintln!("reproduce: error: {e}");
        std::process::exit(2);
    }
    checks.print();
    println!("\nrun time {:.0} s", t.elapsed().as_secs_f64());
    let failed: Vec<&Check> = checks.rows.iter().filter(|c| !c.ok).collect();
    for c in &failed {
        eprintln!(
            "reproduce: FAILED {}: measured {}, threshold {}",
            c.figure, c.measured, c.threshold
        );
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
    println!(
        "all {} checked figures within their thresholds",
        checks.rows.len()
    );
}

fn parse_args() -> Result<PathBuf, String> {
    let mut data = PathBuf::from("../shared");
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--data" => data = it.next().ok_or("--data needs a value")?.into(),
            "-h" | "--help" => {
                return Err(
                    "usage: reproduce [--data DIR]   (DIR holds models/ and data/ as \
                            ../shared does; default ../shared)"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    if !data.is_dir() {
        return Err(format!(
            "{} is missing: the reproduction needs the shared data folder (LeNet-5, MNIST, ResNet-8, \
             CIFAR-10; see README.md); pass --data DIR (default ../shared)",
            data.display()
        ));
    }
    Ok(data)
}

fn run(data: &Path, checks: &mut Checks) -> Res<()> {
    println!("# fixq reproduction: {}\n", data.display());
    lenet(data, checks)?;
    resnet8(data, checks)?;
    Ok(())
}

// ---- checks ----------------------------------------------------------------------------------

struct Check {
    figure: String,
    measured: String,
    threshold: String,
    ok: bool,
}

#[derive(Default)]
struct Checks {
    rows: Vec<Check>,
}

impl Checks {
    fn push(&mut self, figure: impl Into<String>, measured: String, threshold: String, ok: bool) {
        self.rows.push(Check {
            figure: figure.into(),
            measured,
            threshold,
            ok,
        });
    }

    /// `measured >= threshold`.
    fn at_least(&mut self, figure: impl Into<String>, measured: f64, threshold: f64, unit: &str) {
        let ok = measured >= threshold;
        self.push(
            figure,
            format!("{}{unit}", num(measured)),
            format!(">= {}{unit}", num(threshold)),
            ok,
        );
    }

    /// `measured <= threshold`.
    fn at_most(&mut self, figure: impl Into<String>, measured: f64, threshold: f64, unit: &str) {
        let ok = measured <= threshold;
        self.push(
            figure,
            format!("{}{unit}", num(measured)),
            format!("<= {}{unit}", num(threshold)),
            ok,
        );
    }

    /// `measured == expected`.
    fn equal<T: PartialEq + Display>(
        &mut self,
        figure: impl Into<String>,
        measured: T,
        expected: T,
    ) {
        let ok = measured == expected;
        self.push(figure, measured.to_string(), format!("= {expected}"), ok);
    }

    fn print(&self) {
        println!("\n## Checked figures\n");
        println!("| figure | measured | threshold | result |");
        println!("|---|---|---|---|");
        for c in &self.rows {
            println!(
                "| {} | {} | {} | {} |",
                c.figure,
                c.measured,
                c.threshold,
                if c.ok { "ok" } else { "**FAILED**" }
            );
        }
    }
}

/// Two decimals; whole numbers from 1,000 up without; small tolerances in scientific notation.
fn num(x: f64) -> String {
    if x.abs() >= 1000.0 && x == x.round() {
        format!("{x:.0}")
    } else if x != 0.0 && x.abs() < 0.01 {
        format!("{x:.2e}")
    } else {
        format!("{x:.2}")
    }
}

/// One row of an accuracy table.
fn row(name: &str, e: &Evaluation) {
    println!(
        "| {name} | {:.3} | {:.4} | {:.2} | {:.2} | {:.2} | {:.2} |",
        e.avg_bits,
        e.model_bits as f64 / 1e6,
        100.0 * e.accuracy,
        e.predicted_output_sqnr_db,
        e.operating_point_output_sqnr_db,
        e.measured_output_sqnr_db
    );
}

fn table_header() {
    println!(
        "| plan | bits/weight | weight Mbit | accuracy % | Eq. 9, plan's gains dB | Eq. 9, terms alone dB | measured dB |"
    );
    println!("|---|---|---|---|---|---|---|");
}

fn pct(x: f64) -> f64 {
    100.0 * x
}

// ---- LeNet-5 on MNIST ------------------------------------------------------------------------

fn lenet(data: &Path, checks: &mut Checks) -> Res<()> {
    let t = Instant::now();
    let graph = Graph::from_onnx_file(data.join(LENET))?;
    let (images, labels) = (data.join(MNIST_IMAGES), data.join(MNIST_LABELS));
    let test = Dataset::from_idx(&images, &labels, 1.0 / 255.0, None)?;
    let calib = Dataset::from_idx(&images, &labels, 1.0 / 255.0, Some(CALIB))?;

    // The float executor: parameters, onnxruntime's logits, accuracy, truncated files.
    checks.equal("LeNet-5 parameters", graph.parameter_count(), 648_226);
    let fixture = |name: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    };
    let indices: Vec<usize> = match npy::read(fixture("lenet5_ort_indices.npy"))? {
        NpyArray::I64(a) => a.iter().map(|&i| i as usize).collect(),
        other => return Err(format!("lenet5_ort_indices.npy has dtype {}", other.dtype()).into()),
    };
    let expected = npy::read(fixture("lenet5_ort_logits.npy"))?.into_f32()?;
    let x = test.images.select(Axis(0), &indices).into_dyn();
    let got = FloatExecutor::new(&graph).run(x.view())?;
    let (rel, worst) = agreement(&got, &expected);
    checks.at_most(
        "LeNet-5 float vs onnxruntime, 16 images: largest error / largest logit",
        f64::from(rel),
        f64::from(ORT_REL_TOL),
        "",
    );
    checks.at_most(
        "LeNet-5 float vs onnxruntime: worst error / (1e-4 max(logit, 1))",
        f64::from(worst),
        1.0,
        "",
    );
    let reference = eval::float_reference(&graph, &test, 500, 256)?;
    let correct = (reference.accuracy * test.len() as f64).round() as usize;
    checks.equal(
        "LeNet-5 float, correct of 10,000 (onnxruntime: 9,889)",
        correct,
        9889,
    );
    let bytes = std::fs::read(data.join(LENET))?;
    let prefixes: Vec<usize> = (0..bytes.len())
        .step_by(4099)
        .chain(bytes.len() - 64..bytes.len())
        .collect();
    let rejected = prefixes
        .iter()
        .filter(|&&len| Graph::from_onnx_bytes(&bytes[..len]).is_err())
        .count();
    checks.equal(
        format!("LeNet-5 truncated files rejected (of {})", prefixes.len()),
        rejected,
        prefixes.len(),
    );

    // Fixed point: calibration, probe noise gains, then the plans the checks need, each measured on
    // all 10,000 images.
    let exec = FloatExecutor::new(&graph);
    let cal = fixq::calib::calibrate(&exec, calib.batches(100), |_| {})?;
    let gains = plan::noise_gains(&graph, calib.images.view().into_dyn(), 7)?;
    let measure = |p: &QuantPlan| eval::evaluate(&graph, p, &test, &reference, 500);
    let make = |cfg: &PlanConfig| plan::plan(&graph, &cal, cfg);

    println!(
        "## LeNet-5 on MNIST (10,000 test images, calibration on the first {CALIB})\n\n\
         Float accuracy {:.2} % ({correct} / 10,000). fixq-pc: per channel, mid-rise weights in 1..=7 bits; \
         fixq: per tensor, 2..=8 bits; both with noise gains from a 30 dB probe unless marked \
         \"operating point\".\n",
        pct(reference.accuracy)
    );
    table_header();
    let mut equal: Vec<(u32, Evaluation)> = Vec::new();
    for b in [1, 3, 5, 8] {
        let e = measure(&make(&PlanConfig::equal(b))?)?;
        row(&format!("equal {b}"), &e);
        equal.push((b, e));
    }
    let equal_at = |equal: &[(u32, Evaluation)], b: u32| -> Option<Evaluation> {
        equal.iter().find(|(w, _)| *w == b).map(|(_, e)| e.clone())
    };

    // fixq per channel at 2.5 bits, the paper's method at the same budget.
    let pc25 = make(&fixq_config(Budget::AvgBitsPerParam(2.5), &gains, true))?;
    let e_pc25 = measure(&pc25)?;
    row("fixq-pc 2.5", &e_pc25);
    let paper25 = measure(&make(&PlanConfig::paper(Budget::AvgBitsPerParam(2.5)))?)?;
    row("paper 2.5", &paper25);
    let mut additivity: Vec<(String, Evaluation)> = Vec::new();
    for (name, cfg) in [
        (
            "fixq 2.2",
            fixq_config(Budget::AvgBitsPerParam(2.2), &gains, false),
        ),
        (
            "fixq 3.16",
            fixq_config(Budget::AvgBitsPerParam(3.16), &gains, false),
        ),
        (
            "fixq-pc 2.0",
            fixq_config(Budget::AvgBitsPerParam(2.0), &gains, true),
        ),
        ("paper 3.0", PlanConfig::paper(Budget::AvgBitsPerParam(3.0))),
    ] {
        let e = measure(&make(&cfg)?)?;
        row(name, &e);
        additivity.push((name.to_string(), e));
    }
    let probe = test.images.slice(s![..128, .., .., ..]).into_dyn();
    let op20 = plan::plan_at_operating_point(
        &graph,
        &cal,
        &fixq_config(Budget::AvgBitsPerParam(2.0), &gains, true),
        probe.view(),
        ROUNDS,
    )?;
    let e_op20 = measure(&op20)?;
    row("fixq-pc 2.0, operating point", &e_op20);

    // fixq per channel at 70 % of the bits of the smallest equal width within 0.3 points of float.
    let mut smallest = None;
    for b in 2..=8u32 {
        let e = match equal_at(&equal, b) {
            Some(e) => e,
            None => {
                let e = measure(&make(&PlanConfig::equal(b))?)?;
                row(&format!("equal {b}"), &e);
                equal.push((b, e.clone()));
                e
            }
        };
        if e.accuracy >= reference.accuracy - 0.003 {
            smallest = Some((b, e));
            break;
        }
    }
    let Some((b_eq, e_eq)) = smallest else {
        return Err("no equal width from 2 to 8 bits comes within 0.3 points of float".into());
    };
    let target = 0.7 * f64::from(b_eq);
    let pc_target = make(&fixq_config(Budget::AvgBitsPerParam(target), &gains, true))?;
    let e_target = measure(&pc_target)?;
    row(&format!("fixq-pc {target:.1}"), &e_target);

    // The checks.
    let e8 = equal_at(&equal, 8).ok_or("equal 8 not measured")?;
    let e1 = equal_at(&equal, 1).ok_or("equal 1 not measured")?;
    let float_pct = pct(reference.accuracy);
    checks.at_most(
        "LeNet-5 equal 8-bit: accuracy minus float, absolute",
        (pct(e8.accuracy) - float_pct).abs(),
        0.3,
        " points",
    );
    checks.at_least(
        "LeNet-5 equal 8-bit: measured output SQNR",
        e8.measured_output_sqnr_db,
        30.0,
        " dB",
    );
    checks.at_most(
        "LeNet-5 equal 1-bit: accuracy",
        pct(e1.accuracy),
        20.0,
        " %",
    );
    checks.at_most(
        "LeNet-5 fixq-pc 2.5: bits per weight",
        pc25.avg_bits_per_param(),
        2.5 + 1e-9,
        "",
    );
    checks.at_least(
        "LeNet-5 fixq-pc 2.5: accuracy (threshold float - 0.5 points)",
        pct(e_pc25.accuracy),
        float_pct - 0.5,
        " %",
    );
    checks.at_most(
        "LeNet-5 fixq-pc 2.5: Eq. 9 with probe gains vs measured SQNR, absolute difference",
        (e_pc25.predicted_output_sqnr_db - e_pc25.measured_output_sqnr_db).abs(),
        5.0,
        " dB",
    );
    let activations = e_pc25
        .tensors
        .iter()
        .filter(|t| t.kind == "activation" && t.measured_db.is_finite())
        .count();
    checks.equal(
        "LeNet-5 fixq-pc 2.5: activation points measured",
        activations,
        5,
    );
    checks.at_most(
        "LeNet-5 paper 2.5: model bits (threshold fixq-pc 2.5 plus 1 bit per weight)",
        paper25.model_bits as f64,
        (pc25.model_bits() + pc25.weight_params()) as f64,
        "",
    );
    checks.at_most(
        "LeNet-5 paper 2.5: accuracy (threshold below fixq-pc 2.5)",
        pct(paper25.accuracy),
        pct(e_pc25.accuracy) - 0.01,
        " %",
    );
    let mut all_alone: Vec<(String, &Evaluation)> = Vec::new();
    for b in [3, 5] {
        if let Some((_, e)) = equal.iter().find(|(w, _)| *w == b) {
            all_alone.push((format!("equal {b}"), e));
        }
    }
    all_alone.push(("fixq-pc 2.5".into(), &e_pc25));
    all_alone.extend(additivity.iter().map(|(n, e)| (n.clone(), e)));
    for (name, e) in all_alone {
        checks.at_most(
            format!("LeNet-5 {name}: Eq. 9 over terms alone vs measured SQNR, absolute difference"),
            (e.operating_point_output_sqnr_db - e.measured_output_sqnr_db).abs(),
            3.0,
            " dB",
        );
    }
    checks.at_most(
        "LeNet-5 fixq-pc 2.0 at the operating point: predicted vs measured SQNR, absolute difference",
        (op20.predicted_output_sqnr_db() - e_op20.measured_output_sqnr_db).abs(),
        3.0,
        " dB",
    );
    checks.at_most(
        format!("LeNet-5 fixq-pc {target:.1}: bits per weight"),
        pc_target.avg_bits_per_param(),
        target + 1e-9,
        "",
    );
    checks.at_least(
        format!(
            "LeNet-5 fixq-pc {target:.1}, 70 % of equal {b_eq} (the smallest within 0.3 points of float): \
             accuracy (threshold equal {b_eq} - 0.3 points)"
        ),
        pct(e_target.accuracy),
        pct(e_eq.accuracy) - 0.3,
        " %",
    );

    lenet_determinism(&graph, &test, &calib, checks)?;
    lenet_qdq(&graph, &test, &calib, checks)?;
    println!("\n(LeNet-5: {:.0} s)\n", t.elapsed().as_secs_f64());
    Ok(())
}

/// The QDQ export of fixq's default method at 4 bits per weight, run in onnxruntime (with and without
/// its graph optimizations) on the first 1,000 test images, against `QuantizedModel::run`.
fn lenet_qdq(graph: &Graph, test: &Dataset, calib: &Dataset, checks: &mut Checks) -> Res<()> {
    let model = fixq::quantize(
        graph,
        calib.images.view().into_dyn(),
        Budget::AvgBitsPerParam(4.0),
        &fixq::QuantizeOptions::default(),
    )?;
    let n = test.len().min(1000);
    let x = test.images.slice_axis(Axis(0), (0..n).into());
    let r = qdq_ort::run(&model, x.into_dyn(), "lenet5");
    println!(
        "\n## LeNet-5 QDQ export in onnxruntime (fixq default method, 4 bits per weight, {n} images)\n\n\
         {} bytes, opset {}\n\n| session | agreement |\n|---|---|\n| optimized | {} |\n| reference | {} |",
        r.model_bytes, r.opset, r.optimized, r.reference
    );
    for (name, a, min) in [
        ("optimized", &r.optimized, 98.0),
        ("no graph optimizations", &r.reference, 99.0),
    ] {
        checks.at_least(
            format!("LeNet-5 QDQ export in onnxruntime ({name}): top-1 agreement with fixq"),
            pct(a.argmax_equal as f64 / a.images as f64),
            min,
            " %",
        );
    }
    Ok(())
}

/// Returns (max |a-b| / max |b|, worst per-element ratio |a-b| / (tol max(|b|, 1))).
fn agreement(a: &ArrayD<f32>, b: &ArrayD<f32>) -> (f32, f32) {
    if a.shape() != b.shape() {
        return (f32::INFINITY, f32::INFINITY);
    }
    let max_b = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| {
        m.max((x - y).abs() / (ORT_REL_TOL * y.abs().max(1.0)))
    });
    (max_diff / max_b, worst)
}

/// As `tests/determinism.rs` does for the shipped models: the cheapest plan (equal 8-bit widths,
/// fitted steps), calibrated on 200 images and run on 32 others.
fn lenet_determinism(
    graph: &Graph,
    test: &Dataset,
    calib: &Dataset,
    checks: &mut Checks,
) -> Res<()> {
    let probe = calib.images.slice(s![..16, .., .., ..]).into_dyn();
    let gains = plan::noise_gains(graph, probe.view(), 3)?;
    let gains_again = plan::noise_gains(graph, probe.view(), 3)?;
    let mut cfg = PlanConfig::equal(8).with_gains(gains.clone());
    cfg.weight_step = StepRule::MinExpectedMse;
    cfg.curve = CurveSource::Linear {
        kappa_db_per_bit: 3.0,
    };
    let small = Dataset {
        images: calib.images.slice(s![..200, .., .., ..]).to_owned(),
        labels: calib.labels[..200].to_vec(),
    };
    let make = || -> Res<QuantPlan> {
        let cal = fixq::calib::calibrate(&FloatExecutor::new(graph), small.batches(64), |_| {})?;
        Ok(plan::plan(graph, &cal, &cfg)?)
    };
    let (a, b) = (make()?, make()?);
    let x = test.images.slice(s![200..232, .., .., ..]).into_dyn();
    let bits = |choice: KernelChoice| -> Res<Vec<u32>> {
        let net = FixedNetwork::with_options(graph, &a, None, choice)?;
        Ok(net.run(x.view())?.iter().map(|v| v.to_bits()).collect())
    };
    let reference = bits(KernelChoice::Reference)?;
    let same = |ok: bool| if ok { "identical" } else { "differ" };
    checks.push(
        "LeNet-5 noise gains, run to run",
        same(gains == gains_again).into(),
        "identical".into(),
        gains == gains_again,
    );
    checks.push(
        "LeNet-5 plan, run to run",
        same(plan_bytes(&a) == plan_bytes(&b)).into(),
        "identical".into(),
        plan_bytes(&a) == plan_bytes(&b),
    );
    let again = bits(KernelChoice::Reference)? == reference;
    checks.push(
        "LeNet-5 outputs, reference kernels run to run",
        same(again).into(),
        "bit-identical".into(),
        again,
    );
    let simd = bits(KernelChoice::Auto)? == reference;
    checks.push(
        "LeNet-5 outputs, SIMD vs reference kernels",
        same(simd).into(),
        "bit-identical".into(),
        simd,
    );
    #[cfg(feature = "rayon")]
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let ok = pool.install(|| bits(KernelChoice::Auto))? == reference;
        checks.push(
            format!("LeNet-5 outputs with {threads} rayon threads"),
            same(ok).into(),
            "bit-identical".into(),
            ok,
        );
    }
    Ok(())
}

/// The plan as bytes: its JSON with feature `serde`, its `Debug` text otherwise.
fn plan_bytes(p: &QuantPlan) -> String {
    #[cfg(feature = "serde")]
    {
        p.to_json()
            .unwrap_or_else(|e| format!("unserialisable: {e}"))
    }
    #[cfg(not(feature = "serde"))]
    {
        format!("{p:?}")
    }
}

// ---- ResNet-8 on CIFAR-10 --------------------------------------------------------------------

fn u8_npy(path: PathBuf) -> Res<ArrayD<u8>> {
    match npy::read(&path)? {
        NpyArray::U8(a) => Ok(a),
        other => Err(format!("{}: dtype {}, expected |u1", path.display(), other.dtype()).into()),
    }
}

/// CIFAR-10 test images `range` as ResNet-8 takes them: raw pixels 0..255 as float, NCHW.
fn cifar(images: &ndarray::Array4<u8>, labels: &[u8], range: std::ops::Range<usize>) -> Dataset {
    Dataset {
        images: images
            .slice(s![range.clone(), .., .., ..])
            .permuted_axes([0, 3, 1, 2])
            .mapv(f32::from)
            .as_standard_layout()
            .into_owned(),
        labels: labels[range].to_vec(),
    }
}

fn top1(logits: &ArrayD<f32>) -> Vec<usize> {
    logits
        .outer_iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0
        })
        .collect()
}

fn resnet8(data: &Path, checks: &mut Checks) -> Res<()> {
    let t = Instant::now();
    let graph = Graph::from_onnx_file(data.join(RESNET8))?;
    let images = u8_npy(data.join(CIFAR_IMAGES))?.into_dimensionality::<Ix4>()?;
    let labels: Vec<u8> = u8_npy(data.join(CIFAR_LABELS))?.iter().copied().collect();
    let n = labels.len();
    if images.shape() != [n, 32, 32, 3] || n <= CALIB {
        return Err(format!(
            "CIFAR-10: images {:?} and {n} labels, expected [N, 32, 32, 3] with N > {CALIB}",
            images.shape()
        )
        .into());
    }
    let calib = cifar(&images, &labels, 0..CALIB);
    let test = cifar(&images, &labels, CALIB..n);
    checks.equal("ResNet-8 parameters", graph.parameter_count(), 77_706);

    let reference: FloatReference = eval::float_reference(&graph, &test, 500, 256)?;
    // All 10,000 images, to compare with onnxruntime's published figure.
    let calib_logits = FloatExecutor::new(&graph).run(calib.images.view().into_dyn())?;
    let correct_test = (reference.accuracy * test.len() as f64).round() as usize;
    let correct_all = correct_test
        + (eval::accuracy(&calib_logits, &calib.labels)? * calib.len() as f64).round() as usize;

    let exec = FloatExecutor::new(&graph);
    let cal = fixq::calib::calibrate(&exec, calib.batches(100), |_| {})?;
    let float_top1 = top1(&reference.logits);
    let mut rows = Vec::new();
    for (name, granularity) in [
        ("8-bit per channel", Granularity::PerChannel),
        ("8-bit per tensor", Granularity::PerTensor),
    ] {
        let mut cfg = PlanConfig::equal(8);
        cfg.granularity = granularity;
        let p = plan::plan(&graph, &cal, &cfg)?;
        let e = eval::evaluate(&graph, &p, &test, &reference, 500)?;
        let net = FixedNetwork::new(&graph, &p)?;
        let mut agree = 0;
        for (b, chunk) in test.batches(500).enumerate() {
            let y = net.run(chunk)?;
            agree += top1(&y)
                .iter()
                .zip(&float_top1[b * 500..])
                .filter(|(a, f)| a == f)
                .count();
        }
        rows.push((name, e, agree as f64 / test.len() as f64));
    }

    println!(
        "## ResNet-8 on CIFAR-10 (test images {CALIB}..{n}, calibration on 0..{CALIB})\n\n\
         Float accuracy {:.2} % ({correct_test} / {}); on all {n} images {:.2} % ({correct_all}; \
         onnxruntime: 75.48 %). 8-bit weights (mid-tread, fitted steps) and 8-bit activations.\n",
        pct(reference.accuracy),
        test.len(),
        100.0 * correct_all as f64 / n as f64
    );
    table_header();
    for (name, e, _) in &rows {
        row(name, e);
    }
    println!("\n| plan | top-1 agreement with float % |\n|---|---|");
    for (name, _, agree) in &rows {
        println!("| {name} | {:.2} |", pct(*agree));
    }
    println!(
        "\nPeers on all 10,000 images (`MODELS.md`): TFLite int8 75.42 %, onnxruntime int8 per tensor \
         74.55 %, per channel 73.38 %."
    );

    let float_pct = pct(reference.accuracy);
    checks.at_least(
        "ResNet-8 float accuracy, images 500..10000",
        float_pct,
        75.0,
        " %",
    );
    checks.at_most(
        "ResNet-8 float, all 10,000: correct images, distance from onnxruntime's 7,548",
        (correct_all as f64 - 7548.0).abs(),
        2.0,
        " images",
    );
    for (name, e, agree) in &rows {
        let (drop, agree_min, sqnr_min) = if name.contains("channel") {
            (0.5, 95.0, 25.0)
        } else {
            (1.0, 92.0, 21.0)
        };
        checks.at_least(
            format!("ResNet-8 {name}: accuracy (threshold float - {drop:.1} points)"),
            pct(e.accuracy),
            float_pct - drop,
            " %",
        );
        checks.at_least(
            format!("ResNet-8 {name}: top-1 agreement with float"),
            pct(*agree),
            agree_min,
            " %",
        );
        checks.at_least(
            format!("ResNet-8 {name}: measured output SQNR"),
            e.measured_output_sqnr_db,
            sqnr_min,
            " dB",
        );
    }
    println!("\n(ResNet-8: {:.0} s)", t.elapsed().as_secs_f64());
    Ok(())
}
