//! How long planning takes, stage by stage: from loading an ONNX model to a finished `QuantPlan`.
//!
//! ```sh
//! # ResNet-8 from ../shared on 500 CIFAR-10 images (raw 0..255 pixels, as it was trained):
//! taskset -c 0 cargo run --release --example plan_timing -- \
//!     --model ../shared/models/resnet8_cifar10.onnx --images ../shared/data/cifar10/test_images_u8_nhwc.npy
//! # A 20-layer CIFAR ResNet with random weights (python3 scripts/op_fixtures.py --resnet-depth 20 56 --out /tmp/resnets):
//! taskset -c 0 cargo run --release --example plan_timing -- \
//!     --model /tmp/resnets/resnet20.onnx --images ../shared/data/cifar10/test_images_u8_nhwc.npy --scale 255
//! ```
//!
//! Images are a `[N, 32, 32, 3]` u8 `.npy` (NHWC), fed NCHW as `pixel / scale`; the first `--count`
//! (default 500) calibrate; `--nearest` rounds to nearest without bias correction. Prints one line per stage with its wall time, then the plan's size and
//! predicted output SQNR. The line marked `=` is the planning time: loading, calibration, noise
//! gains and planning at the operating point.

use std::time::Instant;

use fixq::io::npy::{self, NpyArray};
use fixq::quantize::Stage;
use fixq::{Budget, Graph, QuantizeOptions};
use ndarray::{Ix4, s};

const MEASURING: &str = "fixed network + report";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model = String::from("models/resnet8_cifar10.onnx");
    let mut images = String::from("data/cifar10/test_images_u8_nhwc.npy");
    let (mut scale, mut count, mut budget) = (1.0f32, 500usize, 4.0f64);
    let mut options = QuantizeOptions::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = val()?,
            "--images" => images = val()?,
            "--scale" => scale = val()?.parse()?,
            "--count" => count = val()?.parse()?,
            "--budget" => budget = val()?.parse()?,
            // Round to nearest without bias correction (the default is GPTQ with it).
            "--nearest" => {
                options.rounding = fixq::rounding::WeightRounding::Nearest;
                options.bias_correction = false;
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let t0 = Instant::now();
    let graph = Graph::from_onnx_file(&model)?;
    let NpyArray::U8(raw) = npy::read(&images)? else {
        return Err(format!("{images}: expected u8 pixels").into());
    };
    let raw = raw.into_dimensionality::<Ix4>()?;
    let n = count.min(raw.shape()[0]);
    let x = raw
        .slice(s![..n, .., .., ..])
        .permuted_axes([0, 3, 1, 2])
        .mapv(|v| f32::from(v) / scale)
        .as_standard_layout()
        .into_owned()
        .into_dyn();
    println!(
        "{model}: {} weights, {n} calibration images",
        graph.parameter_count()
    );
    println!("{:>8.2} s  load", t0.elapsed().as_secs_f64());
    let mut last = ("", Instant::now());
    let mut stage = |name: &'static str| {
        if last.0 != name {
            if !last.0.is_empty() {
                println!("{:>8.2} s  {}", last.1.elapsed().as_secs_f64(), last.0);
            }
            if name == MEASURING {
                println!(
                    "{:>8.2} s  = from loading the model to the finished QuantPlan",
                    t0.elapsed().as_secs_f64()
                );
            }
            last = (name, Instant::now());
        }
    };
    let m = fixq::quantize_with_progress(
        &graph,
        x.view(),
        Budget::AvgBitsPerParam(budget),
        &options,
        |s| {
            stage(match s {
                Stage::Calibrating { .. } => "calibration",
                Stage::NoiseGains => "noise gains",
                Stage::Planning => "planning at the operating point",
                Stage::Measuring => MEASURING,
                _ => "other",
            })
        },
    )?;
    stage("");
    println!("{:>8.2} s  total", t0.elapsed().as_secs_f64());
    println!(
        "plan: {:.3} bits per weight, predicted {:.2} dB, measured {:.2} dB",
        m.plan().avg_bits_per_param(),
        m.report().predicted_output_sqnr_db,
        m.report().measured_output_sqnr_db
    );
    Ok(())
}
