//! The two ways of measuring how each tensor's noise reaches the output, side by side: noise gains
//! ([`fixq::plan::noise_gains_with`]) and the Eq. 9 terms at a plan's formats
//! ([`fixq::plan::measure_terms_with`]), by one forward pass per tensor and by backward passes.
//!
//! ```sh
//! cargo run --release --example sensitivity -- ../shared
//! ```
//!
//! For LeNet-5 (MNIST, probe = the first 500 test images), the digits CNN (its shipped training
//! images) and ResNet-8 (CIFAR-10 images 0..500): per tensor, the forward and backward figures and
//! their difference in dB, the largest difference, and each method's wall time.

use std::time::Instant;

use fixq::eval::Dataset;
use fixq::io::npy::{self, NpyArray};
use fixq::plan::{self, Granularity, PlanConfig, Sensitivity};
use fixq::{Budget, Graph};
use ndarray::{ArrayD, Ix4, s};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn compare(name: &str, graph: &Graph, probe: &ArrayD<f32>, budget: f64) -> Res<()> {
    println!("\n## {name} ({} probe images)\n", probe.shape()[0]);
    let t = Instant::now();
    let fwd = plan::noise_gains_with(graph, probe.view(), 7, Sensitivity::Forward)?;
    let t_fwd = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let bwd = plan::noise_gains_with(graph, probe.view(), 7, Sensitivity::Backward)?;
    let t_bwd = t.elapsed().as_secs_f64();
    println!("| gain | tensor | forward dB | backward dB | difference |\n|---|---|---:|---:|---:|");
    let mut worst = 0f64;
    for (kind, f, b) in [
        ("weights", &fwd.weights, &bwd.weights),
        ("coherent", &fwd.weights_coherent, &bwd.weights_coherent),
        ("offset", &fwd.weights_offset, &bwd.weights_offset),
        ("activation", &fwd.activations, &bwd.activations),
    ] {
        for ((n, gf), (_, gb)) in f.iter().zip(b) {
            println!("| {kind} | {n} | {gf:.2} | {gb:.2} | {:+.2} |", gb - gf);
            worst = worst.max((gb - gf).abs());
        }
    }
    println!(
        "\nnoise gains: largest difference {worst:.2} dB; forward {t_fwd:.2} s, backward {t_bwd:.2} s"
    );
    let mut cal = fixq::calib::Calibration::new();
    cal.observe(&fixq::FloatExecutor::new(graph), probe.view())?;
    let mut cfg = PlanConfig::fixq(Budget::AvgBitsPerParam(budget)).with_gains(fwd);
    cfg.granularity = Granularity::PerChannel;
    cfg.weight_grid = fixq::Grid::MidRise;
    cfg.weight_bits = 1..=7;
    let p = plan::plan(graph, &cal, &cfg)?;
    let t = Instant::now();
    let tf = plan::measure_terms_with(graph, &p, probe.view(), Sensitivity::Forward)?;
    let t_fwd = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let tb = plan::measure_terms_with(graph, &p, probe.view(), Sensitivity::Backward)?;
    let t_bwd = t.elapsed().as_secs_f64();
    println!(
        "\nterms at the per-channel plan for {budget} bits per weight:\n\n| tensor | bits | forward dB | backward dB | difference |\n|---|---:|---:|---:|---:|"
    );
    let mut worst = 0f64;
    for (f, b) in tf.iter().zip(&tb) {
        let bits = if f.weights {
            p.weight(&f.name).map_or(0.0, |w| {
                w.bits.iter().map(|&b| f64::from(b)).sum::<f64>() / w.bits.len().max(1) as f64
            })
        } else {
            p.activation(&f.name)
                .map_or(0.0, |a| f64::from(a.format.bits()))
        };
        println!(
            "| {} | {bits:.2} | {:.2} | {:.2} | {:+.2} |",
            f.name,
            f.output_db,
            b.output_db,
            b.output_db - f.output_db
        );
        worst = worst.max((b.output_db - f.output_db).abs());
    }
    let net = |t: &[plan::TermMeasure]| -> f64 {
        fixq::sqnr::network_db(&t.iter().map(|m| m.output_db).collect::<Vec<_>>())
            .unwrap_or(f64::NAN)
    };
    println!(
        "\nterms: largest difference {worst:.2} dB; Eq. 9 over them {:.2} dB forward, {:.2} dB backward; forward {t_fwd:.2} s, backward {t_bwd:.2} s",
        net(&tf),
        net(&tb)
    );
    Ok(())
}

fn main() -> Res<()> {
    let shared = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../shared".into());
    let lenet = Graph::from_onnx_file(format!("{shared}/models/lenet5_mnist.onnx"))?;
    let mnist = Dataset::from_idx(
        format!("{shared}/data/mnist/t10k-images-idx3-ubyte.gz"),
        format!("{shared}/data/mnist/t10k-labels-idx1-ubyte.gz"),
        1.0 / 255.0,
        Some(500),
    )?;
    compare("LeNet-5", &lenet, &mnist.images.clone().into_dyn(), 3.0)?;
    let digits = Graph::from_onnx_file("models/digits_cnn.onnx")?;
    let d = Dataset::from_idx(
        "data/digits/train-images-idx3-ubyte",
        "data/digits/train-labels-idx1-ubyte",
        1.0 / 16.0,
        Some(500),
    )?;
    compare("digits CNN", &digits, &d.images.clone().into_dyn(), 3.0)?;
    let resnet = Graph::from_onnx_file(format!("{shared}/models/resnet8_cifar10.onnx"))?;
    let NpyArray::U8(raw) = npy::read(format!("{shared}/data/cifar10/test_images_u8_nhwc.npy"))?
    else {
        return Err("CIFAR-10 images: expected u8".into());
    };
    let raw = raw.into_dimensionality::<Ix4>()?;
    let x = raw
        .slice(s![..500, .., .., ..])
        .permuted_axes([0, 3, 1, 2])
        .mapv(f32::from)
        .as_standard_layout()
        .into_owned()
        .into_dyn();
    compare("ResNet-8", &resnet, &x, 4.0)?;
    Ok(())
}
