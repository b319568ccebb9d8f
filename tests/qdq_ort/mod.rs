//! Runs a fixq QDQ export (`QuantizedModel::to_onnx_qdq`) in onnxruntime through
//! `scripts/run_qdq_onnx.py` and compares its logits with `QuantizedModel::run`. Shared by
//! `tests/export_onnx.rs` and `examples/reproduce.rs` (included there with `#[path]`).
//!
//! Python or a package missing is a failure naming the fix, never a skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use fixq::QuantizedModel;
use fixq::io::npy;
use ndarray::{ArrayD, ArrayViewD};

/// The command that installs the pinned Python packages.
pub const PIP: &str = "python3 -m pip install -r scripts/requirements.txt";

/// onnxruntime's logits for one session, compared with fixq's.
#[derive(Debug, Clone)]
pub struct Agreement {
    /// Images compared.
    pub images: usize,
    /// Images whose top-1 class is the same (first maximum).
    pub argmax_equal: usize,
    /// Largest |onnxruntime − fixq| over all logits, in output LSBs (the output format's step).
    pub max_lsb: f64,
    /// Logits that differ at all.
    pub differing: usize,
    /// Logits compared.
    pub logits: usize,
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "argmax equal {}/{}, max |diff| {} output LSB, {} of {} logits differ",
            self.argmax_equal, self.images, self.max_lsb, self.differing, self.logits
        )
    }
}

/// Both sessions of one run, and what the script printed.
#[derive(Debug)]
pub struct OrtRun {
    /// onnxruntime with its default graph optimizations (QDQ groups fused into integer kernels).
    pub optimized: Agreement,
    /// onnxruntime with graph optimizations disabled (every Q/DQ node run as written).
    pub reference: Agreement,
    /// The script's report: checker result and operator counts of the graphs the sessions ran.
    pub log: String,
    /// Size of the exported model, bytes.
    pub model_bytes: usize,
    /// The exported model's opset.
    pub opset: String,
}

fn crate_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A fresh, empty directory under the system's temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fixq-qdq-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Writes a little-endian float32 `.npy` (format 1.0, C order).
pub fn write_npy_f32(path: &Path, a: &ArrayViewD<'_, f32>) {
    let shape: Vec<String> = a.shape().iter().map(|d| d.to_string()).collect();
    let tuple = if shape.len() == 1 {
        format!("({},)", shape[0])
    } else {
        format!("({})", shape.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in a.iter() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Top-1 class per row (the first maximum).
pub fn argmax(logits: &ArrayD<f32>) -> Vec<usize> {
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

/// Compares onnxruntime's logits with fixq's, `lsb` being the output format's step.
pub fn compare(fixq: &ArrayD<f32>, ort: &ArrayD<f32>, lsb: f64) -> Agreement {
    assert_eq!(fixq.shape(), ort.shape(), "onnxruntime output shape");
    let argmax_equal = argmax(fixq)
        .iter()
        .zip(argmax(ort))
        .filter(|(a, b)| **a == *b)
        .count();
    let diffs: Vec<f64> = fixq
        .iter()
        .zip(ort.iter())
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs() / lsb)
        .collect();
    Agreement {
        images: fixq.shape()[0],
        argmax_equal,
        max_lsb: diffs.iter().copied().fold(0.0, f64::max),
        differing: diffs.iter().filter(|&&d| d > 0.0).count(),
        logits: diffs.len(),
    }
}

/// Exports `model`, writes it and `images` to a temporary directory, runs the script (the ONNX
/// checker, then onnxruntime with and without graph optimizations) and compares both outputs with
/// `model.run(images)`.
///
/// # Panics
/// Loudly, naming the fix, when `python3` is missing, a package is missing (the pip command), the
/// checker refuses the model, or onnxruntime fails.
pub fn run(model: &QuantizedModel, images: ArrayViewD<'_, f32>, tag: &str) -> OrtRun {
    let dir = temp_dir(tag);
    let onnx_path = dir.join(format!("{tag}.onnx"));
    model.write_onnx_qdq(&onnx_path).expect("QDQ export");
    let model_bytes = std::fs::metadata(&onnx_path).map(|m| m.len()).unwrap_or(0) as usize;
    let input = dir.join("input.npy");
    write_npy_f32(&input, &images);
    let script = crate_path("scripts/run_qdq_onnx.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&onnx_path)
        .arg(&input)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): the QDQ export check needs Python 3 with the pinned \
                 packages; install Python 3, then run `{PIP}`"
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!(
            "{} needs numpy, onnx and onnxruntime: run `{PIP}`\n{stderr}",
            script.display()
        ),
        _ => panic!(
            "{} failed on {} ({}):\n{stdout}{stderr}",
            script.display(),
            onnx_path.display(),
            out.status
        ),
    }
    let fixq = model.run(images).expect("QuantizedModel::run");
    let output = &model.graph().output().name;
    let lsb = model
        .plan()
        .activation(output)
        .expect("the plan formats the output")
        .format
        .step();
    let read = |name: &str| {
        npy::read(dir.join(name))
            .and_then(|a| a.into_f32())
            .unwrap_or_else(|e| panic!("reading onnxruntime's {name}: {e}"))
    };
    let optimized = compare(&fixq, &read("ort_optimized.npy"), lsb);
    let reference = compare(&fixq, &read("ort_reference.npy"), lsb);
    let opset = stdout
        .lines()
        .next()
        .and_then(|l| l.split("opset ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("?")
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    OrtRun {
        optimized,
        reference,
        log: stdout,
        model_bytes,
        opset,
    }
}
