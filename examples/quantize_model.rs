//! The main job: quantize a trained CNN to fixed point with the fewest bits its accuracy allows.
//!
//! ```sh
//! cargo run --release --example quantize_model              # the digits CNN that ships with the crate
//! cargo run --release --example quantize_model -- \
//!     --model ../shared/models/lenet5_mnist.onnx \
//!     --images ../shared/data/mnist/t10k-images-idx3-ubyte.gz \
//!     --labels ../shared/data/mnist/t10k-labels-idx1-ubyte.gz --scale 255 --calib-count 500
//! ```
//!
//! Steps: calibrate activation statistics on the calibration images (a progress bar on stderr),
//! measure noise gains, print the plan fixq chooses at the chosen budget, then sweep
//! (a) equal bit-widths, (b) the paper's method (ξ = 3σ Gaussian steps, κ = 3 closed form, rounded) and
//! (c) fixq (fitted steps, measured curves with noise gains refined at each plan's own formats, exact
//! allocation; per tensor, and per channel with mid-rise weights), running the integer network on every test image. Prints the
//! accuracy-vs-weight-bits table and writes it as an SVG plot, writes the chosen plan's weights
//! bit-packed and checks that they read back to the same network.

mod common;

use std::io::Write;
use std::time::Instant;

use common::fixq_config;
use fixq::eval::{self, Dataset, Evaluation};
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::plan::{self, PlanConfig, QuantPlan};
use fixq::{Budget, Graph, pack};
use plotters::prelude::*;

struct Args {
    model: String,
    images: String,
    labels: String,
    calib_images: Option<String>,
    calib_labels: Option<String>,
    scale: f32,
    calib_count: usize,
    limit: Option<usize>,
    budget: f64,
    out: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: "models/digits_cnn.onnx".into(),
        images: "data/digits/test-images-idx3-ubyte".into(),
        labels: "data/digits/test-labels-idx1-ubyte".into(),
        calib_images: Some("data/digits/train-images-idx3-ubyte".into()),
        calib_labels: Some("data/digits/train-labels-idx1-ubyte".into()),
        scale: 16.0,
        calib_count: usize::MAX,
        limit: None,
        budget: 2.5,
        out: "target/fixq-report".into(),
    };
    let mut it = std::env::args().skip(1);
    let mut user_data = false;
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = val()?,
            "--images" | "--data" => {
                a.images = val()?;
                user_data = true;
            }
            "--labels" => a.labels = val()?,
            "--calib-images" => a.calib_images = Some(val()?),
            "--calib-labels" => a.calib_labels = Some(val()?),
            "--scale" => a.scale = val()?.parse().map_err(|e| format!("--scale: {e}"))?,
            "--calib-count" => {
                a.calib_count = val()?.parse().map_err(|e| format!("--calib-count: {e}"))?
            }
            "--limit" => a.limit = Some(val()?.parse().map_err(|e| format!("--limit: {e}"))?),
            "--budget" => a.budget = val()?.parse().map_err(|e| format!("--budget: {e}"))?,
            "--out" => a.out = val()?,
            "-h" | "--help" => {
                return Err("usage: quantize_model [--model m.onnx --images i.idx[.gz] --labels l.idx[.gz] \
                            [--calib-images ... --calib-labels ...] [--scale 255] [--calib-count 500] [--limit N] \
                            [--budget bits-per-weight] [--out dir]]"
                    .into());
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    if user_data && a.calib_images.as_deref() == Some("data/digits/train-images-idx3-ubyte") {
        // The user's data without a separate calibration set: calibrate on its first images.
        a.calib_images = None;
        a.calib_labels = None;
        if a.calib_count == usize::MAX {
            a.calib_count = 500;
        }
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let graph = Graph::from_onnx_file(&args.model)?;
    let test = Dataset::from_idx(&args.images, &args.labels, 1.0 / args.scale, args.limit)?;
    let calib = match (&args.calib_images, &args.calib_labels) {
        (Some(i), Some(l)) => Dataset::from_idx(i, l, 1.0 / args.scale, Some(args.calib_count))?,
        _ => Dataset::from_idx(
            &args.images,
            &args.labels,
            1.0 / args.scale,
            Some(args.calib_count),
        )?,
    };
    println!(
        "model {} ({} weights), {} test images, {} calibration images",
        args.model,
        graph.parameter_count(),
        test.len(),
        calib.len()
    );

    // 1. Calibration, with a progress bar.
    let exec = FloatExecutor::new(&graph);
    let total = calib.len() as u64;
    let cal = fixq::calib::calibrate(&exec, calib.batches(100), |p| {
        progress("calibrating", p.images_done, total)
    })?;
    eprintln!();
    let probe = calib
        .images
        .slice(ndarray::s![..calib.len().min(500), .., .., ..])
        .into_dyn();
    let gains = plan::noise_gains(&graph, probe.view(), 7)?;

    // 2. The float reference and fixq's plan at the chosen budget.
    let reference = eval::float_reference(&graph, &test, 500, 256)?;
    println!("float accuracy {:.2} %", 100.0 * reference.accuracy);
    let chosen_cfg = fixq_config(Budget::AvgBitsPerParam(args.budget), &gains, true);
    let chosen = plan::plan_at_operating_point(&graph, &cal, &chosen_cfg, probe.view(), ROUNDS)?;
    println!(
        "\nfixq plan at {} bits per weight (per-channel, mid-rise weights, 8-bit activations):\n{chosen}\n",
        args.budget
    );
    let e = eval::evaluate(&graph, &chosen, &test, &reference, 500)?;
    print_tensors(&e);

    // 3. Bit-packed weights, read back, same network.
    let net = FixedNetwork::new(&graph, &chosen)?;
    let path = format!("{}/weights.fixqpack", args.out);
    pack::write(&path, net.weights())?;
    let size = std::fs::metadata(&path)?.len();
    let back = FixedNetwork::with_options(
        &graph,
        &chosen,
        Some(pack::read(&path)?),
        fixq::kernels::KernelChoice::Auto,
    )?;
    let x = test
        .images
        .slice(ndarray::s![..test.len().min(64), .., .., ..])
        .into_dyn();
    let same = net.run(x.view())? == back.run(x.view())?;
    println!(
        "\npacked weights: {path}: {size} bytes = {} payload bits + {} header bytes (plan: {} bits); read back identical: {same}",
        pack::payload_bits(net.weights()),
        size - pack::payload_bits(net.weights()).div_ceil(8),
        chosen.model_bits()
    );

    // 4. Speed: fixed-point against float, one thread, batch 1 and 64.
    for batch in [1usize, 64] {
        let xb = test
            .images
            .slice(ndarray::s![..batch.min(test.len()), .., .., ..])
            .into_dyn();
        let reps = (2048 / batch).max(4);
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(exec.run(xb.view())?);
        }
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(net.run(xb.view())?);
        }
        let q = t.elapsed().as_secs_f64();
        let n = (reps * xb.shape()[0]) as f64;
        println!(
            "batch {batch:>2}: float {:>8.0} images/s, fixed point {:>8.0} images/s ({:.2}x)",
            n / f,
            n / q,
            f / q
        );
    }

    // 5. The sweep.
    let mut rows: Vec<(String, Evaluation)> = Vec::new();
    let mut sweep = |name: &str, cfg: PlanConfig| -> Result<(), Box<dyn std::error::Error>> {
        // fixq's configurations carry noise gains: refine them at each plan's own formats. The
        // paper's method keeps its unit-gain Eq. 9.
        let planned = if cfg.gains.is_some() {
            plan::plan_at_operating_point(&graph, &cal, &cfg, probe.view(), ROUNDS)
        } else {
            plan::plan(&graph, &cal, &cfg)
        };
        match planned {
            Ok(p) => {
                // Budgets that give an allocation already measured add nothing.
                if rows
                    .iter()
                    .any(|(n, e)| n == name && e.model_bits == p.model_bits())
                {
                    return Ok(());
                }
                let e = eval::evaluate(&graph, &p, &test, &reference, 500)?;
                progress_line(name, &p, &e);
                rows.push((name.to_string(), e));
            }
            Err(fixq::Error::Infeasible { .. }) => {} // below the narrowest widths this method allows
            Err(e) => return Err(e.into()),
        }
        Ok(())
    };
    println!(
        "\n{:<10} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "method", "budget", "bits/wt", "Mbit", "acc %", "pred dB", "op. dB", "meas dB"
    );
    for b in 1..=8 {
        sweep("equal", PlanConfig::equal(b).with_gains(gains.clone()))?;
    }
    let budgets = [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0];
    for &avg in &budgets {
        sweep("paper", PlanConfig::paper(Budget::AvgBitsPerParam(avg)))?;
    }
    for &avg in &budgets {
        sweep(
            "fixq",
            fixq_config(Budget::AvgBitsPerParam(avg), &gains, false),
        )?;
    }
    for &avg in &budgets {
        sweep(
            "fixq-pc",
            fixq_config(Budget::AvgBitsPerParam(avg), &gains, true),
        )?;
    }
    let svg = format!("{}/accuracy_vs_bits.svg", args.out);
    plot(&svg, &rows, reference.accuracy)?;
    println!("\nwrote {svg}");
    Ok(())
}

/// Rounds of gain refinement at the operating point (`plan::plan_at_operating_point`).
const ROUNDS: usize = 3;

fn progress(what: &str, done: u64, total: u64) {
    let width = 40;
    let filled = (done * width / total.max(1)).min(width) as usize;
    eprint!(
        "\r{what} [{}{}] {done}/{total}",
        "#".repeat(filled),
        ".".repeat(width as usize - filled)
    );
    let _ = std::io::stderr().flush();
}

fn progress_line(name: &str, p: &QuantPlan, e: &Evaluation) {
    let budget = format!("{:.2}", p.avg_bits_per_param());
    println!(
        "{name:<10} {budget:>7} {:>10.3} {:>10.4} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        e.avg_bits,
        e.model_bits as f64 / 1e6,
        100.0 * e.accuracy,
        e.predicted_output_sqnr_db,
        e.operating_point_output_sqnr_db,
        e.measured_output_sqnr_db
    );
}

fn print_tensors(e: &Evaluation) {
    println!(
        "{:<10} {:<10} {:>6} {:>12} {:>14} {:>12} {:>10}",
        "tensor", "kind", "bits", "own pred dB", "cum. pred dB", "measured dB", "alone dB"
    );
    for t in &e.tensors {
        println!(
            "{:<10} {:<10} {:>6.2} {:>12.2} {:>14.2} {:>12.2} {:>10.2}",
            t.name,
            t.kind,
            t.bits,
            t.predicted_db,
            t.predicted_cumulative_db,
            t.measured_db,
            t.alone_output_db
        );
    }
    println!(
        "output: predicted {:.2} dB (Eq. 9 at the operating point {:.2} dB), measured {:.2} dB; accuracy {:.2} % at {:.3} bits per weight",
        e.predicted_output_sqnr_db,
        e.operating_point_output_sqnr_db,
        e.measured_output_sqnr_db,
        100.0 * e.accuracy,
        e.avg_bits
    );
}

fn plot(
    path: &str,
    rows: &[(String, Evaluation)],
    float_acc: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let lo = (100.0 * float_acc - 4.0).max(0.0);
    let mut chart = ChartBuilder::on(&root)
        .caption("top-1 accuracy vs average weight bits", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.8f64..8.2f64, lo..100.0 * float_acc + 0.5)?;
    chart
        .configure_mesh()
        .x_desc("weight bits per parameter")
        .y_desc("accuracy %")
        .draw()?;
    let series = [
        ("equal", RED),
        ("paper", BLUE),
        ("fixq", GREEN),
        ("fixq-pc", MAGENTA),
    ];
    for (name, color) in series {
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, e)| (e.avg_bits, (100.0 * e.accuracy).max(lo)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts.dedup_by(|a, b| a.0 == b.0);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.8, 100.0 * float_acc), (8.2, 100.0 * float_acc)],
            BLACK.mix(0.4),
        ))?
        .label("float")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
