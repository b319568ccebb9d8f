//! The subcommands that read a `.fixq` model file: `eval`, `run`, `inspect`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use fixq::QuantizedModel;
use ndarray::{ArrayD, Axis};

use crate::data::{self, Data, Preprocess, Source};
use crate::error::{CliError, CliResult};
use crate::output;

/// Images per batch when running a model.
const DEFAULT_BATCH: usize = 100;

/// Reads a `.fixq` model file named by `flag`.
pub fn load_model(flag: &str, path: &Path) -> CliResult<QuantizedModel> {
    let what = format!("{flag} {}", path.display());
    let bytes = std::fs::read(path).map_err(|e| CliError::input(&what, e))?;
    QuantizedModel::from_bytes(&bytes).map_err(|e| CliError::from_lib(&what, e))
}

/// Writes `model` to `path` (given as `flag`) atomically, never over an existing file unless `force`.
pub fn save_model(model: &QuantizedModel, flag: &str, path: &Path, force: bool) -> CliResult<()> {
    let bytes = model
        .to_bytes()
        .map_err(|e| CliError::failure(format!("{flag} {}", path.display()), e))?;
    output::write(flag, path, &bytes, force)
}

/// Arguments of `fixq eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The quantized model (.fixq, from `fixq quantize`).
    pub model: PathBuf,
    /// Images with labels (IDX, .npy or an image folder).
    #[arg(long, value_name = "DATA")]
    pub data: PathBuf,
    /// Labels of --data (IDX or .npy) [default: the IDX labels file beside it, or the class folders].
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Also run the float model (ONNX) on the same images: its accuracy, speed and agreement.
    #[arg(long, value_name = "MODEL.onnx")]
    pub float: Option<PathBuf>,
    /// Use the first N images only.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Leave out the first N images (then --limit counts from there).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub skip: usize,

    /// Images per batch.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    #[command(flatten)]
    pub pre: Preprocess,
}

/// Arguments of `fixq run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The quantized model (.fixq).
    pub model: PathBuf,
    /// Images (IDX, .npy or an image folder).
    #[arg(long, value_name = "DATA")]
    pub data: PathBuf,
    /// Use the first N images only.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Leave out the first N images (then --limit counts from there).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub skip: usize,

    /// Images per batch.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Where to write the outputs, float32 .npy `[N, ...]`.
    #[arg(short = 'o', long = "output", value_name = "NPY", default_value = "logits.npy")]
    pub output: PathBuf,
    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub pre: Preprocess,
}

/// Arguments of `fixq inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The quantized model (.fixq).
    pub model: PathBuf,
}

fn load_data(
    path: &Path,
    labels: Option<&Path>,
    want_labels: bool,
    skip: usize,
    limit: Option<usize>,
    pre: &Preprocess,
    channels: Option<usize>,
) -> CliResult<Data> {
    data::load(
        &Source {
            flag: "--data",
            path,
            labels,
            want_labels,
            skip,
            limit,
            channels,
        },
        pre,
        1.0,
    )
}

/// Runs `f` over `images` in batches; the outputs joined and the seconds it took.
fn run_batches(
    images: &ArrayD<f32>,
    batch: usize,
    what: &str,
    f: impl Fn(ndarray::ArrayViewD<'_, f32>) -> fixq::Result<ArrayD<f32>>,
) -> CliResult<(ArrayD<f32>, f64)> {
    if batch == 0 {
        return Err(CliError::input("--batch 0", "must be at least 1"));
    }
    let t = Instant::now();
    let mut outs = Vec::new();
    for b in images.axis_chunks_iter(Axis(0), batch) {
        outs.push(f(b).map_err(|e| CliError::from_lib(what, e))?);
    }
    let seconds = t.elapsed().as_secs_f64();
    let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
    let joined = ndarray::concatenate(Axis(0), &views)
        .map_err(|e| CliError::failure(what, format!("joining the batches' outputs: {e}")))?;
    Ok((joined, seconds))
}

/// The top-1 class of every row of `[N, classes]` outputs.
fn top1(logits: &ArrayD<f32>) -> Vec<usize> {
    logits
        .outer_iter()
        .map(|row| {
            let mut best = 0;
            for (k, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = k;
                }
            }
            best
        })
        .collect()
}

/// `fixq eval`.
pub fn eval(a: &EvalArgs) -> CliResult<()> {
    let model = load_model("MODEL", &a.model)?;
    let float = a
        .float
        .as_deref()
        .map(|p| crate::load_graph("--float", p))
        .transpose()?;
    let channels = float.as_ref().and_then(data::input_channels);
    let d = load_data(&a.data, a.labels.as_deref(), true, a.skip, a.limit, &a.pre, channels)?;
    let labels = d.require_labels("--data", &a.data)?;
    let what = format!("--data {}", a.data.display());
    let n = d.len();
    let (fixed, fixed_s) = run_batches(&d.images, a.batch, &what, |b| model.run(b))?;
    let acc = fixq::eval::accuracy(&fixed, labels).map_err(|e| CliError::from_lib(&what, e))?;
    println!(
        "fixed point: top-1 accuracy {:.2} % ({} of {n}) at {:.3} weight bits per parameter; {:.0} images/s (batch {})",
        100.0 * acc,
        (acc * n as f64).round(),
        model.plan().avg_bits_per_param(),
        n as f64 / fixed_s,
        a.batch
    );
    if let (Some(graph), Some(path)) = (&float, &a.float) {
        let exec = fixq::FloatExecutor::new(graph);
        let (logits, float_s) = run_batches(&d.images, a.batch, &what, |b| exec.run(b))?;
        let facc =
            fixq::eval::accuracy(&logits, labels).map_err(|e| CliError::from_lib(&what, e))?;
        let agree = top1(&fixed)
            .iter()
            .zip(top1(&logits))
            .filter(|(a, b)| **a == *b)
            .count();
        println!(
            "float32 ({}): top-1 accuracy {:.2} % ({} of {n}); {:.0} images/s (batch {})",
            path.display(),
            100.0 * facc,
            (facc * n as f64).round(),
            n as f64 / float_s,
            a.batch
        );
        println!(
            "same top-1 class as float: {agree} of {n} ({:.2} %)",
            100.0 * agree as f64 / n as f64
        );
    }
    Ok(())
}

/// `fixq run`.
pub fn run(a: &RunArgs) -> CliResult<()> {
    output::check_writable("-o", &a.output, a.force)?;
    let model = load_model("MODEL", &a.model)?;
    let d = load_data(&a.data, None, false, a.skip, a.limit, &a.pre, None)?;
    let what = format!("--data {}", a.data.display());
    let (out, seconds) = run_batches(&d.images, a.batch, &what, |b| model.run(b))?;
    output::write("-o", &a.output, &output::npy_bytes(&out), a.force)?;
    println!(
        "wrote {}: float32 {:?}, {} images in {:.3} s ({:.0} images/s)",
        a.output.display(),
        out.shape(),
        d.len(),
        seconds,
        d.len() as f64 / seconds
    );
    Ok(())
}

/// `fixq inspect`.
pub fn inspect(a: &InspectArgs) -> CliResult<()> {
    let model = load_model("MODEL", &a.model)?;
    let report = model.report();
    println!("| tensor | kind | bits | formats | predicted SQNR dB | measured SQNR dB |");
    println!("|---|---|---|---|---|---|");
    for t in &report.tensors {
        println!(
            "| {} | {} | {:.2} | {} | {:.2} | {:.2} |",
            t.name,
            if t.weights { "weights" } else { "activation" },
            t.bits,
            formats(&t.formats),
            t.predicted_sqnr_db,
            t.measured_sqnr_db
        );
    }
    println!(
        "output SQNR: predicted {:.2} dB, measured {:.2} dB on {} calibration images",
        report.predicted_output_sqnr_db, report.measured_output_sqnr_db, report.probe_images
    );
    let plan = model.plan();
    let file_bytes = std::fs::metadata(&a.model)
        .map_err(|e| CliError::input(format!("MODEL {}", a.model.display()), e))?
        .len();
    println!(
        "weights: {} parameters at {:.3} bits each = {} bits ({} bytes) in the plan",
        plan.weight_params(),
        plan.avg_bits_per_param(),
        plan.model_bits(),
        plan.model_bits().div_ceil(8)
    );
    println!(
        "file: {file_bytes} bytes ({} bytes beyond the plan's weight bits: graph, biases, plan, report, headers)",
        file_bytes.saturating_sub(plan.model_bits().div_ceil(8))
    );
    let kernels: Vec<String> = model
        .network()
        .kernels()
        .iter()
        .map(|(node, k)| format!("{node}: {}", k.name()))
        .collect();
    if !kernels.is_empty() {
        println!("kernels on this CPU: {}", kernels.join(", "));
    }
    Ok(())
}

/// One format, or the distinct formats of the channels with their counts.
fn formats(f: &[fixq::QFormat]) -> String {
    if let [one] = f {
        return one.to_string();
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for q in f {
        let s = q.to_string();
        match counts.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n}× {s}")).collect();
    format!("{} channels: {}", f.len(), parts.join(", "))
}
