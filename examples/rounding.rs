//! Round to nearest against error-compensating (GPTQ-style) rounding and bias correction, per
//! channel and per tensor, at several budgets, on the three real networks: accuracy on images the
//! calibration did not see, the output SQNR predicted and measured, and the time `fixq::quantize`
//! takes.
//!
//! ```sh
//! taskset -c 0 cargo run --release --example rounding -- ../shared            # all three networks
//! taskset -c 0 cargo run --release --example rounding -- ../shared resnet8 4 3 # one, chosen budgets
//! taskset -c 0 cargo run --release --example rounding -- ../shared resnet8 4 --ranges
//! taskset -c 0 cargo run --release --example rounding -- ../shared resnet8 8 6 4 --equal
//! ```
//!
//! Every method chooses activation steps by exact error over the calibration histograms (the
//! default); `--ranges` instead runs GPTQ + bias correction with those against the fitted rule;
//! `--equal` gives every weight tensor the budget's width (integer budgets) instead of allocating.
//!
//! Networks: `resnet8` (../shared/models/resnet8_cifar10.onnx, calibration on CIFAR-10 test images
//! 0..500, scored on 500..10000), `lenet` (../shared/models/lenet5_mnist.onnx, MNIST test images
//! 0..500 / 500..10000), `digits` (models/digits_cnn.onnx with the shipped data: calibration on its
//! training images, scored on its test set). Prints one Markdown row per network, granularity,
//! budget and method.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fixq::eval::{Dataset, accuracy};
use fixq::io::npy::{self, NpyArray};
use fixq::plan::StepRule;
use fixq::rounding::WeightRounding;
use fixq::{Budget, FloatExecutor, Graph, QuantizeOptions};
use ndarray::{Axis, Ix4, s};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Net {
    name: &'static str,
    graph: Graph,
    calib: ndarray::ArrayD<f32>,
    test: Dataset,
    budgets: Vec<f64>,
}

fn cifar(shared: &Path) -> Res<(ndarray::Array4<f32>, Vec<u8>)> {
    let NpyArray::U8(raw) = npy::read(shared.join("data/cifar10/test_images_u8_nhwc.npy"))? else {
        return Err("CIFAR-10 images: expected u8".into());
    };
    let labels = match npy::read(shared.join("data/cifar10/test_labels_u8.npy"))? {
        NpyArray::U8(l) => l.iter().copied().collect(),
        other => return Err(format!("CIFAR-10 labels: dtype {}", other.dtype()).into()),
    };
    let x = raw
        .into_dimensionality::<Ix4>()?
        .permuted_axes([0, 3, 1, 2])
        .mapv(f32::from)
        .as_standard_layout()
        .into_owned();
    Ok((x, labels))
}

fn split(d: &Dataset, n: usize) -> (ndarray::ArrayD<f32>, Dataset) {
    let calib = d.images.slice(s![..n, .., .., ..]).to_owned().into_dyn();
    let test = Dataset {
        images: d.images.slice(s![n.., .., .., ..]).to_owned(),
        labels: d.labels[n..].to_vec(),
    };
    (calib, test)
}

fn load(shared: &Path, which: &str, budgets: &[f64]) -> Res<Net> {
    let or = |d: &[f64]| {
        if budgets.is_empty() {
            d.to_vec()
        } else {
            budgets.to_vec()
        }
    };
    Ok(match which {
        "resnet8" => {
            let (x, labels) = cifar(shared)?;
            let (calib, test) = split(&Dataset { images: x, labels }, 500);
            Net {
                name: "ResNet-8",
                graph: Graph::from_onnx_file(shared.join("models/resnet8_cifar10.onnx"))?,
                calib,
                test,
                budgets: or(&[4.0, 3.0, 2.5]),
            }
        }
        "lenet" => {
            let d = Dataset::from_idx(
                shared.join("data/mnist/t10k-images-idx3-ubyte.gz"),
                shared.join("data/mnist/t10k-labels-idx1-ubyte.gz"),
                1.0 / 255.0,
                None,
            )?;
            let (calib, test) = split(&d, 500);
            Net {
                name: "LeNet-5",
                graph: Graph::from_onnx_file(shared.join("models/lenet5_mnist.onnx"))?,
                calib,
                test,
                budgets: or(&[3.0, 2.0, 1.5]),
            }
        }
        "digits" => {
            let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let train = Dataset::from_idx(
                here.join("data/digits/train-images-idx3-ubyte"),
                here.join("data/digits/train-labels-idx1-ubyte"),
                1.0 / 16.0,
                None,
            )?;
            let test = Dataset::from_idx(
                here.join("data/digits/test-images-idx3-ubyte"),
                here.join("data/digits/test-labels-idx1-ubyte"),
                1.0 / 16.0,
                None,
            )?;
            Net {
                name: "digits CNN",
                graph: Graph::from_onnx_file(here.join("models/digits_cnn.onnx"))?,
                calib: train.images.into_dyn(),
                test,
                budgets: or(&[3.0, 2.0, 1.5]),
            }
        }
        other => return Err(format!("unknown network {other} (resnet8, lenet, digits)").into()),
    })
}

fn score(
    run: impl Fn(ndarray::ArrayViewD<'_, f32>) -> fixq::Result<ndarray::ArrayD<f32>>,
    d: &Dataset,
) -> Res<f64> {
    let mut logits = Vec::new();
    for b in d.images.axis_chunks_iter(Axis(0), 250) {
        logits.push(run(b.into_dyn())?);
    }
    let views: Vec<_> = logits.iter().map(|l| l.view()).collect();
    let all = ndarray::concatenate(Axis(0), &views)?;
    Ok(accuracy(&all, &d.labels)? * 100.0)
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let shared = PathBuf::from(args.next().unwrap_or_else(|| "../shared".into()));
    let rest: Vec<String> = args.collect();
    // `--ranges`: only GPTQ + bias correction, with histogram against fitted activation steps.
    let ranges = rest.iter().any(|a| a == "--ranges");
    // `--equal`: every weight tensor at the budget's width (weight_bits = b..=b), not allocated.
    let equal = rest.iter().any(|a| a == "--equal");
    let nets: Vec<&str> = rest
        .iter()
        .map(String::as_str)
        .filter(|a| a.parse::<f64>().is_err() && !a.starts_with("--"))
        .collect();
    let budgets: Vec<f64> = rest.iter().filter_map(|a| a.parse().ok()).collect();
    let nets = if nets.is_empty() {
        vec!["resnet8", "lenet", "digits"]
    } else {
        nets
    };
    println!(
        "| network | granularity | budget | method | bits/weight | accuracy % | output SQNR predicted / measured dB | quantize s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for which in nets {
        let net = load(&shared, which, &budgets)?;
        let exec = FloatExecutor::new(&net.graph);
        let float = score(|x| exec.run(x), &net.test)?;
        println!("| {} | float | | | 32 | {float:.2} | | |", net.name);
        for (gran, base) in [
            ("per channel", QuantizeOptions::default()),
            ("per tensor", QuantizeOptions::per_tensor()),
        ] {
            for &budget in &net.budgets {
                let methods = if ranges {
                    vec![
                        (
                            "GPTQ + BC, histogram ranges",
                            WeightRounding::Gptq,
                            true,
                            StepRule::MinDataMse,
                        ),
                        (
                            "GPTQ + BC, fitted ranges",
                            WeightRounding::Gptq,
                            true,
                            StepRule::MinExpectedMse,
                        ),
                    ]
                } else {
                    vec![
                        (
                            "nearest",
                            WeightRounding::Nearest,
                            false,
                            StepRule::MinDataMse,
                        ),
                        (
                            "nearest + bias corr.",
                            WeightRounding::Nearest,
                            true,
                            StepRule::MinDataMse,
                        ),
                        ("GPTQ", WeightRounding::Gptq, false, StepRule::MinDataMse),
                        (
                            "GPTQ + bias corr.",
                            WeightRounding::Gptq,
                            true,
                            StepRule::MinDataMse,
                        ),
                    ]
                };
                for (method, rounding, bc, activation_step) in methods {
                    let mut opts = QuantizeOptions {
                        rounding,
                        bias_correction: bc,
                        activation_step,
                        ..base.clone()
                    };
                    if equal {
                        opts.weight_bits = budget as u32..=budget as u32;
                    }
                    let t = Instant::now();
                    let m = fixq::quantize(
                        &net.graph,
                        net.calib.view(),
                        Budget::AvgBitsPerParam(budget),
                        &opts,
                    );
                    let secs = t.elapsed().as_secs_f64();
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            println!(
                                "| {} | {gran} | {budget} | {method} | | {e} | | |",
                                net.name
                            );
                            continue;
                        }
                    };
                    let acc = score(|x| m.run(x), &net.test)?;
                    let r = m.report();
                    println!(
                        "| {} | {gran} | {budget} | {method} | {:.3} | {acc:.2} | {:.2} / {:.2} | {secs:.1} |",
                        net.name,
                        r.avg_bits_per_param,
                        r.predicted_output_sqnr_db,
                        r.measured_output_sqnr_db
                    );
                }
            }
        }
    }
    Ok(())
}
