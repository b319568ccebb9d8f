//! `fixq`: quantize trained CNNs (ONNX) to fixed point and run them in integers, from the command
//! line. `fixq --help` lists the subcommands; `docs/cli.md` is the reference.
//!
//! Errors print one line on stderr, `fixq: error: {what}: {why}`, and exit with status 2 for bad
//! input (arguments, unreadable or malformed files, an output that exists without `--force`) or 1
//! for any other failure.

mod data;
mod error;
mod model_cmds;
mod output;
mod progress;
mod sweep;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fixq::plan::Granularity;
use fixq::{Budget, Graph, QuantizeOptions};

use crate::data::{Preprocess, Source};
use crate::error::{CliError, CliResult, EXIT_INPUT};

/// Fixed-point quantization of trained CNNs by SQNR: quantize, evaluate, run, inspect, export.
#[derive(Debug, Parser)]
#[command(name = "fixq", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Quantize an ONNX model for a bit budget from calibration images and print the per-tensor
    /// report.
    Quantize(QuantizeArgs),
    /// Top-1 accuracy and speed of a quantized model (.fixq) on labelled images, beside the float
    /// model's with --float.
    Eval(model_cmds::EvalArgs),
    /// Run a quantized model (.fixq) on images and write its outputs as float32 .npy.
    Run(model_cmds::RunArgs),
    /// The per-tensor table of a quantized model (.fixq) and its file size against the weight bits.
    Inspect(model_cmds::InspectArgs),
    /// Write a quantized model (.fixq) as a standard QDQ ONNX model that onnxruntime runs.
    ExportOnnx(model_cmds::ExportArgs),
    /// Accuracy against weight bits: equal widths, the paper's method and fixq's, and an SVG plot
    /// (without arguments: the shipped digits CNN).
    Sweep(sweep::SweepArgs),
}

#[derive(Debug, Args)]
struct QuantizeArgs {
    /// The float model (ONNX).
    model: PathBuf,
    /// Calibration images (IDX, .npy or an image folder).
    #[arg(long, value_name = "DATA")]
    calib: PathBuf,
    /// Calibrate on the first N images only.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Leave out the first N images (then --limit counts from there).
    #[arg(long, value_name = "N", default_value_t = 0)]
    skip: usize,

    /// Average weight bits per parameter.
    #[arg(long, value_name = "BITS", allow_negative_numbers = true)]
    budget: f64,
    /// Per-channel mid-rise weights in 1..=7 bits (the default).
    #[arg(long, conflicts_with = "per_tensor")]
    per_channel: bool,
    /// Per-tensor two's complement weights in 2..=8 bits (the paper's granularity).
    #[arg(long)]
    per_tensor: bool,
    /// How weights go to their grid: `gptq` (error feedback from the layers' calibration inputs, the
    /// default) or `nearest`.
    #[arg(long, value_enum, default_value_t = RoundingArg::Gptq)]
    rounding: RoundingArg,
    /// Leave the biases as they are (no bias correction of the rounding's mean output shift).
    #[arg(long)]
    no_bias_correction: bool,
    /// How activation steps are chosen: `histogram` (least squared error over the calibration
    /// images, the default) or `fitted` (from the fitted distribution family).
    #[arg(long, value_enum, default_value_t = RangesArg::Histogram)]
    activation_ranges: RangesArg,
    /// The model file (.fixq) to write [without -o only the report is printed].
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Overwrite the output if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    pre: Preprocess,
}

/// `--activation-ranges`' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RangesArg {
    Histogram,
    Fitted,
}

/// `--rounding`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoundingArg {
    Gptq,
    Nearest,
}

/// The library's rounding for a `--rounding` value.
fn weight_rounding(r: RoundingArg) -> fixq::rounding::WeightRounding {
    match r {
        RoundingArg::Gptq => fixq::rounding::WeightRounding::Gptq,
        RoundingArg::Nearest => fixq::rounding::WeightRounding::Nearest,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(EXIT_INPUT)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // clap's message without its usage block: one line.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("fixq: error: {first} (see fixq --help)");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let result = match &cli.command {
        Command::Quantize(a) => quantize(a),
        Command::Eval(a) => model_cmds::eval(a),
        Command::Run(a) => model_cmds::run(a),
        Command::Inspect(a) => model_cmds::inspect(a),
        Command::ExportOnnx(a) => model_cmds::export_onnx(a),
        Command::Sweep(a) => sweep::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fixq: error: {e}");
            ExitCode::from(e.status)
        }
    }
}

/// Reads an ONNX model named by `flag`.
fn load_graph(flag: &str, path: &Path) -> CliResult<Graph> {
    Graph::from_onnx_file(path)
        .map_err(|e| CliError::from_lib(format!("{flag} {}", path.display()), e))
}

fn quantize(a: &QuantizeArgs) -> CliResult<()> {
    if let Some(out) = &a.output {
        output::check_writable("-o", out, a.force)?;
    }
    if !(a.budget.is_finite() && a.budget > 0.0) {
        return Err(CliError::input(
            format!("--budget {}", a.budget),
            "must be a positive number of bits per weight",
        ));
    }
    let graph = load_graph("MODEL", &a.model)?;
    let calib = data::load(
        &Source {
            flag: "--calib",
            path: &a.calib,
            labels: None,
            want_labels: false,
            skip: a.skip,
            limit: a.limit,
            channels: data::input_channels(&graph),
        },
        &a.pre,
        1.0,
    )?;
    let mut options = if a.per_tensor {
        QuantizeOptions::per_tensor()
    } else {
        QuantizeOptions::default()
    };
    options.rounding = weight_rounding(a.rounding);
    options.bias_correction = !a.no_bias_correction;
    options.activation_step = match a.activation_ranges {
        RangesArg::Histogram => fixq::plan::StepRule::MinDataMse,
        RangesArg::Fitted => fixq::plan::StepRule::MinExpectedMse,
    };
    debug_assert!(a.per_tensor || options.granularity == Granularity::PerChannel);
    let mut stages = progress::Stages::default();
    let model = fixq::quantize_with_progress(
        &graph,
        calib.images.view(),
        Budget::AvgBitsPerParam(a.budget),
        &options,
        |s| stages.on(s),
    );
    stages.finish();
    let model = model.map_err(|e| match e {
        fixq::Error::Infeasible { .. } => CliError::input(format!("--budget {}", a.budget), e),
        e => CliError::from_lib(
            format!(
                "quantizing {} on --calib {}",
                a.model.display(),
                a.calib.display()
            ),
            e,
        ),
    })?;
    println!("{}", model.report());
    if let Some(out) = &a.output {
        model_cmds::save_model(&model, "-o", out, a.force)?;
        let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        println!("wrote {} ({bytes} bytes)", out.display());
    }
    Ok(())
}
