//! The subcommands that read a `.fixq` model file: `eval`, `run`, `inspect` and `export-onnx`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use fixq::QuantizedModel;
use ndarray::{ArrayD, ArrayViewD, Axis};

use crate::data::{self, Data, Preprocess, Source};
use crate::error::{CliError, CliResult};
use crate::output;
use crate::progress;

/// Images per batch when running a model.
const DEFAULT_BATCH: usize = 100;

/// Reads a `.fixq` model file named by `flag` (a missing, unreadable or malformed file is bad
/// input; the message is the library's, which names the byte offset for a malformed file).
pub fn load_model(flag: &str, path: &Path) -> CliResult<QuantizedModel> {
    QuantizedModel::load(path)
        .map_err(|e| CliError::from_lib(format!("{flag} {}", path.display()), e))
}

/// Writes `model` to `path` (given as `flag`) with [`QuantizedModel::save`] (atomic), checking
/// again first that it may be written.
pub fn save_model(model: &QuantizedModel, flag: &str, path: &Path, force: bool) -> CliResult<()> {
    output::check_writable(flag, path, force)?;
    model
        .save(path)
        .map_err(|e| CliError::from_lib(format!("{flag} {}", path.display()), e))
}

/// Which images of `--data` a model runs on, and in what batches (`eval` and `run`).
#[derive(Debug, Args)]
pub struct Window {
    /// Use the first N images only.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Leave out the first N images (then --limit counts from there).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub skip: usize,
    /// Images per batch.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
}

/// Arguments of `fixq eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The quantized model (.fixq, from `fixq quantize -o`).
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
    #[command(flatten)]
    pub images: Window,
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
    #[command(flatten)]
    pub images: Window,
    /// Where to write the outputs: float32 .npy, [N, ...], C order.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "NPY",
        default_value = "logits.npy"
    )]
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

/// Arguments of `fixq export-onnx`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The quantized model (.fixq).
    pub model: PathBuf,
    /// The ONNX file to write (QDQ form).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Reads `--data` for `model`: image folders decode to the channels its input takes.
fn load_data(
    model: &QuantizedModel,
    path: &Path,
    labels: Option<&Path>,
    want_labels: bool,
    (skip, limit): (usize, Option<usize>),
    pre: &Preprocess,
) -> CliResult<Data> {
    data::load(
        &Source {
            flag: "--data",
            path,
            labels,
            want_labels,
            skip,
            limit,
            channels: data::input_channels(model.graph()),
        },
        pre,
        1.0,
    )
}

/// Checks `--batch`.
fn check_batch(batch: usize) -> CliResult<()> {
    if batch == 0 {
        return Err(CliError::input("--batch 0", "must be at least 1"));
    }
    Ok(())
}

/// Runs `f` over `images` in batches of `batch` (a progress bar labelled `msg`); the outputs
/// joined along axis 0 and the seconds the runs took.
fn run_batches(
    images: &ArrayD<f32>,
    batch: usize,
    msg: &str,
    what: &str,
    f: impl Fn(ArrayViewD<'_, f32>) -> fixq::Result<ArrayD<f32>>,
) -> CliResult<(ArrayD<f32>, f64)> {
    let n = images.shape().first().copied().unwrap_or(0);
    let pb = progress::bar(Some(n as u64), msg);
    let mut seconds = 0.0;
    let mut outs = Vec::new();
    for b in images.axis_chunks_iter(Axis(0), batch) {
        let len = b.shape()[0] as u64;
        let t = Instant::now();
        let y = f(b).map_err(|e| CliError::from_lib(what, e))?;
        seconds += t.elapsed().as_secs_f64();
        pb.inc(len);
        outs.push(y);
    }
    pb.finish_and_clear();
    let views: Vec<_> = outs.iter().map(ArrayD::view).collect();
    let joined = ndarray::concatenate(Axis(0), &views)
        .map_err(|e| CliError::failure(what, format!("joining the batches' outputs: {e}")))?;
    Ok((joined, seconds))
}

/// The top-1 class of every row of `[N, classes]` outputs (the first maximum, as
/// `fixq::eval::accuracy` counts it).
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

/// Correct top-1 classes among `logits` (`[N, classes]`) against `labels`.
fn correct(logits: &ArrayD<f32>, labels: &[u8], what: &str) -> CliResult<usize> {
    if logits.ndim() != 2 {
        return Err(CliError::input(
            what,
            format!(
                "the model's outputs have shape {:?}: accuracy needs [N, classes]",
                logits.shape()
            ),
        ));
    }
    Ok(top1(logits)
        .iter()
        .zip(labels)
        .filter(|(p, y)| **p == usize::from(**y))
        .count())
}

/// `fixq eval`.
pub fn eval(a: &EvalArgs) -> CliResult<()> {
    check_batch(a.images.batch)?;
    let model = load_model("MODEL", &a.model)?;
    let float = a
        .float
        .as_deref()
        .map(|p| crate::load_graph("--float", p))
        .transpose()?;
    let d = load_data(
        &model,
        &a.data,
        a.labels.as_deref(),
        true,
        (a.images.skip, a.images.limit),
        &a.pre,
    )?;
    let labels = d.require_labels("--data", &a.data)?;
    let what = format!("--data {}", a.data.display());
    let n = d.len();
    let (fixed, fixed_s) = run_batches(&d.images, a.images.batch, "fixed point", &what, |b| {
        model.run(b)
    })?;
    let fixed_ok = correct(&fixed, labels, &what)?;
    let mut rows = vec![(
        format!(
            "fixed point ({}, {:.3} bits/weight)",
            a.model.display(),
            model.plan().avg_bits_per_param()
        ),
        fixed_ok,
        fixed_s,
    )];
    let mut agreement = None;
    if let (Some(graph), Some(path)) = (&float, &a.float) {
        let exec = fixq::FloatExecutor::new(graph);
        let (logits, float_s) =
            run_batches(&d.images, a.images.batch, "float", &what, |b| exec.run(b))?;
        if logits.shape() != fixed.shape() {
            return Err(CliError::input(
                format!("--float {}", path.display()),
                format!(
                    "outputs of shape {:?}, the quantized model's {:?}: not the same model",
                    logits.shape(),
                    fixed.shape()
                ),
            ));
        }
        rows.push((
            format!("float32 ({})", path.display()),
            correct(&logits, labels, &what)?,
            float_s,
        ));
        agreement = Some(
            top1(&fixed)
                .iter()
                .zip(top1(&logits))
                .filter(|(p, q)| **p == *q)
                .count(),
        );
    }
    println!("{n} images of {}", a.data.display());
    if !d.classes.is_empty() {
        let classes: Vec<String> = d
            .classes
            .iter()
            .enumerate()
            .map(|(k, c)| format!("{k} {c}"))
            .collect();
        println!("classes (label, folder): {}", classes.join(", "));
    }
    println!();
    println!("| model | top-1 accuracy % | correct | images/s |");
    println!("|---|---|---|---|");
    for (name, ok, seconds) in rows {
        println!(
            "| {name} | {:.2} | {ok} / {n} | {:.0} |",
            100.0 * ok as f64 / n as f64,
            n as f64 / seconds.max(1e-9)
        );
    }
    if let Some(same) = agreement {
        println!(
            "\nsame top-1 class as float: {same} of {n} images ({:.2} %)",
            100.0 * same as f64 / n as f64
        );
    }
    println!(
        "\none thread, batches of {}; images/s counts the model runs only (not reading the data)",
        a.images.batch
    );
    Ok(())
}

/// `fixq run`.
pub fn run(a: &RunArgs) -> CliResult<()> {
    output::check_writable("-o", &a.output, a.force)?;
    check_batch(a.images.batch)?;
    let model = load_model("MODEL", &a.model)?;
    let d = load_data(
        &model,
        &a.data,
        None,
        false,
        (a.images.skip, a.images.limit),
        &a.pre,
    )?;
    let what = format!("--data {}", a.data.display());
    let (out, seconds) = run_batches(&d.images, a.images.batch, "running", &what, |b| {
        model.run(b)
    })?;
    output::write("-o", &a.output, &output::npy_bytes(&out), a.force)?;
    println!(
        "wrote {}: float32 {:?}, {} images in {:.3} s ({:.0} images/s)",
        a.output.display(),
        out.shape(),
        d.len(),
        seconds,
        d.len() as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// `fixq inspect`.
pub fn inspect(a: &InspectArgs) -> CliResult<()> {
    let what = format!("MODEL {}", a.model.display());
    let model = load_model("MODEL", &a.model)?;
    // The report exactly as `fixq quantize` printed it when the model was made.
    println!("{}", model.report());
    let per_channel: Vec<_> = model
        .report()
        .tensors
        .iter()
        .filter(|t| t.formats.len() > 1)
        .collect();
    if !per_channel.is_empty() {
        println!("\n| weights | channel formats (count × format) |");
        println!("|---|---|");
        for t in per_channel {
            println!("| {} | {} |", t.name, formats(&t.formats));
        }
    }
    let plan = model.plan();
    let bits = plan.model_bits();
    let weight_bytes = bits.div_ceil(8);
    let bytes = std::fs::read(&a.model).map_err(|e| CliError::input(&what, e))?;
    let file = bytes.len() as u64;
    println!(
        "\nweights: {} parameters, {bits} bits at {:.3} bits per parameter = {weight_bytes} bytes",
        plan.weight_params(),
        plan.avg_bits_per_param(),
    );
    println!(
        "file: {file} bytes = {weight_bytes} bytes of weight bits + {} bytes besides ({:.1} %)",
        file.saturating_sub(weight_bytes),
        100.0 * file.saturating_sub(weight_bytes) as f64 / file.max(1) as f64
    );
    if let Some(sections) = sections(&bytes) {
        let parts: Vec<String> = sections
            .iter()
            .map(|(name, len)| format!("{name} {len}"))
            .collect();
        println!(
            "sections, bytes: {}; container {} (header, section headers, checksum)",
            parts.join(", "),
            fixq::model_file::FIXED_OVERHEAD_BYTES
        );
    }
    let kernels: Vec<String> = model
        .network()
        .kernels()
        .iter()
        .map(|(node, k)| format!("{node} {}", k.name()))
        .collect();
    if !kernels.is_empty() {
        println!("kernels on this CPU: {}", kernels.join(", "));
    }
    Ok(())
}

/// The body length of each section of a `.fixq` file that has loaded (layout in docs/format.md: a
/// 20-byte header, then per section a 4-byte tag and a u64 length).
fn sections(bytes: &[u8]) -> Option<Vec<(&'static str, u64)>> {
    const NAMES: [&str; 5] = ["graph", "constants", "plan", "weight codes", "report"];
    let mut at = 20usize;
    let mut out = Vec::new();
    for name in NAMES {
        let len = bytes.get(at + 4..at + 12)?;
        let len = u64::from_le_bytes(len.try_into().ok()?);
        out.push((name, len));
        at = at
            .checked_add(12)?
            .checked_add(usize::try_from(len).ok()?)?;
    }
    Some(out)
}

/// The distinct formats of the channels with their counts, in order of first appearance.
fn formats(f: &[fixq::QFormat]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for q in f {
        let s = q.to_string();
        match counts.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} × {s}")).collect();
    format!("{} channels: {}", f.len(), parts.join(", "))
}

/// `fixq export-onnx`.
pub fn export_onnx(a: &ExportArgs) -> CliResult<()> {
    output::check_writable("-o", &a.output, a.force)?;
    let model = load_model("MODEL", &a.model)?;
    let bytes = model
        .to_onnx_qdq()
        .map_err(|e| CliError::from_lib(format!("exporting {}", a.model.display()), e))?;
    output::write("-o", &a.output, &bytes, a.force)?;
    let (ir, opset) = onnx_versions(&bytes);
    let show = |v: Option<i64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
    println!(
        "wrote {}: {} bytes, ONNX QDQ, opset {} (IR version {})",
        a.output.display(),
        bytes.len(),
        show(opset),
        show(ir)
    );
    Ok(())
}

/// The IR version (field 1) and the default-domain opset (field 8, `OperatorSetIdProto` with an
/// empty or `ai.onnx` domain) of a serialized `ModelProto`.
fn onnx_versions(bytes: &[u8]) -> (Option<i64>, Option<i64>) {
    let (mut ir, mut opset) = (None, None);
    for (field, value) in fields(bytes) {
        match (field, value) {
            (1, Field::Varint(v)) => ir = Some(v as i64),
            (8, Field::Bytes(b)) => {
                let mut domain: &[u8] = b"";
                let mut version = None;
                for (f, v) in fields(b) {
                    match (f, v) {
                        (1, Field::Bytes(d)) => domain = d,
                        (2, Field::Varint(v)) => version = Some(v as i64),
                        _ => {}
                    }
                }
                if domain.is_empty() || domain == b"ai.onnx" {
                    opset = version;
                }
            }
            _ => {}
        }
    }
    (ir, opset)
}

/// A protobuf field's value: a varint or a length-delimited body (fixed-width values skipped).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// The top-level fields of a protobuf message, stopping at the first malformed one.
fn fields(mut b: &[u8]) -> Vec<(u64, Field<'_>)> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some(key) = varint(&mut b) else { break };
        let value = match key & 7 {
            0 => match varint(&mut b) {
                Some(v) => Field::Varint(v),
                None => break,
            },
            2 => {
                let Some(len) = varint(&mut b).and_then(|l| usize::try_from(l).ok()) else {
                    break;
                };
                if len > b.len() {
                    break;
                }
                let (body, rest) = b.split_at(len);
                b = rest;
                Field::Bytes(body)
            }
            1 if b.len() >= 8 => {
                b = &b[8..];
                Field::Other
            }
            5 if b.len() >= 4 => {
                b = &b[4..];
                Field::Other
            }
            _ => break,
        };
        out.push((key >> 3, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_table_of_a_short_file_is_none() {
        assert!(sections(&[0u8; 30]).is_none());
    }

    #[test]
    fn onnx_versions_reads_ir_version_and_the_default_opset() {
        // ir_version 10; opset_import { domain "com.x" version 1 }, opset_import { version 21 }.
        let mut b = vec![0x08, 10];
        b.extend([0x42, 9, 0x0a, 5]);
        b.extend(b"com.x");
        b.extend([0x10, 1]);
        b.extend([0x42, 2, 0x10, 21]);
        assert_eq!(onnx_versions(&b), (Some(10), Some(21)));
        assert_eq!(onnx_versions(b"\xff"), (None, None));
    }
}
