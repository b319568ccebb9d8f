//! `fixq sweep`: accuracy against weight bits for equal widths, the paper's method and fixq's (per
//! tensor and per channel), as a table on stdout and an SVG plot.

use std::path::{Path, PathBuf};

use clap::Args;
use fixq::eval::{self, Dataset, Evaluation};
use fixq::plan::{self, PlanConfig};
use fixq::{Budget, QuantizeOptions};
use ndarray::{Axis, Ix4, Slice};
use plotters::prelude::*;

use crate::data::{self, Preprocess, Source};
use crate::error::{CliError, CliResult};
use crate::output;
use crate::progress;

/// The shipped model and data `fixq sweep` runs on without arguments (paths from the repository root).
pub const DIGITS_MODEL: &str = "models/digits_cnn.onnx";
/// The digits CNN's held-out test images (labels beside them).
pub const DIGITS_TEST: &str = "data/digits/test-images-idx3-ubyte";
/// The digits CNN's calibration (training) images.
pub const DIGITS_TRAIN: &str = "data/digits/train-images-idx3-ubyte";
/// The digits are 0..16: the CNN was trained on pixels / 16.
pub const DIGITS_SCALE: f32 = 16.0;

/// Arguments of `fixq sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The float model [default: models/digits_cnn.onnx with the shipped digits data, --scale 16].
    pub model: Option<PathBuf>,
    /// Images to score on, with labels (IDX, .npy or an image folder); needed with MODEL.
    #[arg(long, value_name = "DATA")]
    pub data: Option<PathBuf>,
    /// Labels of --data (IDX or .npy) [default: the IDX labels file beside it, or the class folders].
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Calibration images [default: the first --calib-limit images of --data].
    #[arg(long, value_name = "DATA")]
    pub calib: Option<PathBuf>,
    /// Score on the first N images of --data only.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Leave out the first N images of --data (then --limit counts from there).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub skip: usize,

    /// Calibrate on the first N calibration images [default: all of --calib, or 500 of --data].
    #[arg(long, value_name = "N")]
    pub calib_limit: Option<usize>,
    /// Budgets of the paper's method and fixq's, average weight bits per parameter.
    #[arg(long, value_name = "B,...", value_delimiter = ',',
          default_values_t = [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0])]
    pub budgets: Vec<f64>,
    /// Widths of the equal-widths baseline, bits.
    #[arg(long, value_name = "BITS,...", value_delimiter = ',', default_values_t = [1u32, 2, 3, 4, 5, 6, 7, 8])]
    pub equal_bits: Vec<u32>,
    /// The SVG plot to write.
    #[arg(
        short = 'o',
        long = "plot",
        value_name = "SVG",
        default_value = "accuracy_vs_bits.svg"
    )]
    pub plot: PathBuf,
    /// Overwrite the plot if it exists.
    #[arg(long)]
    pub force: bool,
    /// How fixq's plans put weights on their grid: `gptq` (the default) or `nearest`.
    #[arg(long, value_enum, default_value_t = crate::RoundingArg::Gptq)]
    pub rounding: crate::RoundingArg,
    /// fixq's plans leave the biases as they are (no bias correction).
    #[arg(long)]
    pub no_bias_correction: bool,
    #[command(flatten)]
    pub pre: Preprocess,
}

/// One measured plan.
struct Row {
    method: &'static str,
    e: Evaluation,
}

/// The methods, in table and legend order, with their plot colours.
const METHODS: [(&str, RGBColor); 4] = [
    ("equal", RED),
    ("paper", BLUE),
    ("fixq", GREEN),
    ("fixq-pc", MAGENTA),
];

/// Images the float reference keeps per activation point for the per-tensor measurements.
const REFERENCE_PROBE: usize = 256;
/// Images per batch when scoring.
const BATCH: usize = 500;

/// Runs the sweep.
pub fn run(args: &SweepArgs) -> CliResult<()> {
    output::check_writable("--plot", &args.plot, args.force)?;
    if let Some(b) = args.budgets.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
        return Err(CliError::input(
            format!("--budgets {b}"),
            "every budget must be a positive number of bits per weight",
        ));
    }
    if let Some(b) = args.equal_bits.iter().find(|b| !(1..=16).contains(*b)) {
        return Err(CliError::input(
            format!("--equal-bits {b}"),
            "every width must be in 1..=16",
        ));
    }
    let shipped = args.model.is_none();
    if shipped && (args.data.is_some() || args.calib.is_some() || args.labels.is_some()) {
        return Err(CliError::input(
            "--data/--calib/--labels",
            "need a MODEL (without one the sweep runs on the shipped digits CNN and its data)",
        ));
    }
    let model = args.model.clone().unwrap_or_else(|| DIGITS_MODEL.into());
    let (test_path, calib_path) = if shipped {
        (
            PathBuf::from(DIGITS_TEST),
            Some(PathBuf::from(DIGITS_TRAIN)),
        )
    } else {
        let test = args.data.clone().ok_or_else(|| {
            CliError::input(
                format!("MODEL {}", model.display()),
                "a sweep needs --data (images with labels to score on)",
            )
        })?;
        (test, args.calib.clone())
    };
    let default_scale = if shipped { DIGITS_SCALE } else { 1.0 };
    let graph = crate::load_graph("MODEL", &model)?;
    let channels = data::input_channels(&graph);
    let test = data::load(
        &Source {
            flag: "--data",
            path: &test_path,
            labels: args.labels.as_deref(),
            want_labels: true,
            skip: args.skip,
            limit: args.limit,
            channels,
        },
        &args.pre,
        default_scale,
    )?;
    let labels = test.require_labels("--data", &test_path)?.to_vec();
    let calib = match &calib_path {
        Some(p) => {
            data::load(
                &Source {
                    flag: "--calib",
                    path: p,
                    labels: None,
                    want_labels: false,
                    skip: 0,
                    limit: args.calib_limit,
                    channels,
                },
                &args.pre,
                default_scale,
            )?
            .images
        }
        None => {
            let n = args.calib_limit.unwrap_or(500).min(test.len());
            test.images
                .slice_axis(Axis(0), Slice::from(0..n))
                .to_owned()
        }
    };
    let as_4d = |flag: &str, path: &Path, a: ndarray::ArrayD<f32>| {
        a.into_dimensionality::<Ix4>().map_err(|_| {
            CliError::input(
                format!("{flag} {}", path.display()),
                "a sweep needs images [N, C, H, W]",
            )
        })
    };
    let test = Dataset {
        images: as_4d("--data", &test_path, test.images)?,
        labels,
    };
    let calib_what = match &calib_path {
        Some(p) => format!("{} images of {}", calib.shape()[0], p.display()),
        None => format!("the first {} images of --data", calib.shape()[0]),
    };
    println!(
        "model {} ({} weights); scored on {} images of {}; calibrated on {calib_what}",
        model.display(),
        graph.parameter_count(),
        test.len(),
        test_path.display(),
    );

    // Calibration, noise gains and the float reference, once for every plan.
    let data_err = |e| CliError::from_lib(format!("--data {}", test_path.display()), e);
    let calib_err = |e| CliError::from_lib(format!("calibration on {calib_what}"), e);
    let exec = fixq::FloatExecutor::new(&graph);
    let options = QuantizeOptions::default();
    let total = calib.shape()[0] as u64;
    let pb = progress::bar(Some(total), "calibrating");
    // With the layers' input moments and the activations' histograms: fixq's configurations round
    // with GPTQ, correct biases and choose activation steps by exact error.
    let cal = fixq::calib::calibrate_with(
        fixq::calib::Calibration::with_layer_inputs().with_histograms(),
        &exec,
        calib.axis_chunks_iter(Axis(0), options.batch),
        |p| pb.set_position(p.images_done),
    )
    .map_err(calib_err)?;
    pb.finish();
    let sensitivity = options.sensitivity_probe(calib.view());
    let pb = progress::bar(None, "noise gains");
    let gains = plan::noise_gains(&graph, sensitivity.view(), options.seed).map_err(calib_err)?;
    pb.finish();
    let pb = progress::bar(None, "float reference");
    let reference =
        eval::float_reference(&graph, &test, BATCH, REFERENCE_PROBE).map_err(data_err)?;
    pb.finish();

    let mut configs: Vec<(&'static str, f64, PlanConfig)> = Vec::new();
    for &b in &args.equal_bits {
        configs.push((
            "equal",
            f64::from(b),
            PlanConfig::equal(b).with_gains(gains.clone()),
        ));
    }
    for &b in &args.budgets {
        configs.push(("paper", b, PlanConfig::paper(Budget::AvgBitsPerParam(b))));
    }
    for (name, opts) in [
        ("fixq", QuantizeOptions::per_tensor()),
        ("fixq-pc", QuantizeOptions::default()),
    ] {
        let opts = QuantizeOptions {
            rounding: crate::weight_rounding(args.rounding),
            bias_correction: !args.no_bias_correction,
            ..opts
        };
        for &b in &args.budgets {
            let cfg = opts
                .plan_config(Budget::AvgBitsPerParam(b))
                .with_gains(gains.clone());
            configs.push((name, b, cfg));
        }
    }
    let pb = progress::bar(Some(configs.len() as u64), "sweeping");
    let mut rows: Vec<Row> = Vec::new();
    for (method, budget, cfg) in configs {
        pb.inc(1);
        // fixq's configurations carry noise gains: refine them at each plan's own formats. The
        // paper's method keeps its unit-gain Eq. 9.
        let planned = if cfg.gains.is_some() {
            plan::plan_at_operating_point(
                &graph,
                &cal,
                &cfg,
                sensitivity.view(),
                options.operating_point_rounds,
            )
        } else {
            plan::plan(&graph, &cal, &cfg)
        };
        let p = match planned {
            Ok(p) => p,
            // Below the narrowest widths this method allows.
            Err(fixq::Error::Infeasible { .. }) => continue,
            Err(e) => return Err(CliError::failure(format!("{method} at {budget} bits"), e)),
        };
        // A budget that gives an allocation already measured adds nothing.
        if rows
            .iter()
            .any(|r| r.method == method && r.e.model_bits == p.model_bits())
        {
            continue;
        }
        // The weights as the plan's rounding put them on the grid (nearest for equal and paper).
        let rounded = plan::rounded_graph(&graph, &p, &cal, &cfg)
            .map_err(|e| CliError::failure(format!("{method} at {budget} bits"), e))?;
        let e = eval::evaluate_rounded(&graph, &rounded, &p, &test, &reference, BATCH)
            .map_err(data_err)?;
        rows.push(Row { method, e });
    }
    pb.finish_and_clear();

    print_table(&rows, reference.accuracy);
    let svg = plot(&rows, reference.accuracy)
        .map_err(|e| CliError::failure(format!("--plot {}", args.plot.display()), e))?;
    output::write("--plot", &args.plot, svg.as_bytes(), args.force)?;
    println!("\nwrote {}", args.plot.display());
    Ok(())
}

fn print_table(rows: &[Row], float_accuracy: f64) {
    println!("float accuracy {:.2} %\n", 100.0 * float_accuracy);
    println!(
        "| method | bits/weight | weight Mbit | accuracy % | Eq. 9, plan's gains dB | Eq. 9, terms alone dB | measured dB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (method, _) in METHODS {
        for r in rows.iter().filter(|r| r.method == method) {
            println!(
                "| {method} | {:.3} | {:.4} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.e.avg_bits,
                r.e.model_bits as f64 / 1e6,
                100.0 * r.e.accuracy,
                r.e.predicted_output_sqnr_db,
                r.e.operating_point_output_sqnr_db,
                r.e.measured_output_sqnr_db
            );
        }
    }
    println!(
        "\nequal: every weight tensor at one width; paper: Lin et al. (3σ Gaussian steps, κ = 3 dB/bit, closed form); \
         fixq: per-tensor weights in 2..=8 bits; fixq-pc: per-channel mid-rise weights in 1..=7 bits"
    );
}

/// The SVG plot of accuracy against average weight bits, one line per method.
fn plot(rows: &[Row], float_accuracy: f64) -> Result<String, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| s(&e))?;
        let top = 100.0 * float_accuracy;
        let lo = (top - 4.0).max(0.0);
        let mut chart = ChartBuilder::on(&root)
            .caption("top-1 accuracy vs average weight bits", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.8f64..8.2f64, lo..top + 0.5)
            .map_err(|e| s(&e))?;
        chart
            .configure_mesh()
            .x_desc("weight bits per parameter")
            .y_desc("accuracy %")
            .draw()
            .map_err(|e| s(&e))?;
        for (name, color) in METHODS {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.method == name)
                .map(|r| (r.e.avg_bits, (100.0 * r.e.accuracy).max(lo)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            pts.dedup_by(|a, b| a.0 == b.0);
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| s(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| s(&e))?;
        }
        chart
            .draw_series(LineSeries::new(
                vec![(0.8, top), (8.2, top)],
                BLACK.mix(0.4),
            ))
            .map_err(|e| s(&e))?
            .label("float")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| s(&e))?;
        root.present().map_err(|e| s(&e))?;
    }
    Ok(svg)
}
