//! Whole networks, one thread: the fixed-point LeNet-5 against the float executor at batch 1 and 64,
//! and the MLPerf Tiny ResNet-8 (float, and fixed point under per-channel plans at 8 bits and at 4.0
//! bits per weight) at batch 1 and 32, the shapes `../shared/bench/peers_resnet8.py` times
//! onnxruntime and TFLite on.
//!
//! Needs `../shared` (the models, the MNIST and CIFAR-10 test sets) beside the crate and panics with
//! the missing path otherwise. Ids are `lenet5/{float,fixed}/batch{N}` and
//! `resnet8/{float,fixed8,fixed4}/batch{N}`; throughput is in images.
//! Run: `taskset -c 0 cargo bench --bench network` (one group: append `-- resnet8`).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fixq::eval::Dataset;
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::io::npy::{self, NpyArray};
use fixq::plan::{self, Granularity, PlanConfig};
use fixq::{Budget, Graph, Grid};

/// `../shared/{rel}`, which must exist: panics naming the path otherwise (never skips silently).
fn shared(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(rel);
    assert!(
        p.exists(),
        "{} is missing: this benchmark needs the shared LeNet-5 model and MNIST data at ../shared beside the crate",
        p.display()
    );
    p
}

fn lenet(c: &mut Criterion) {
    let graph = Graph::from_onnx_file(shared("models/lenet5_mnist.onnx")).unwrap();
    let images = shared("data/mnist/t10k-images-idx3-ubyte.gz");
    let labels = shared("data/mnist/t10k-labels-idx1-ubyte.gz");
    let data = Dataset::from_idx(&images, &labels, 1.0 / 255.0, Some(256)).unwrap();
    let exec = FloatExecutor::new(&graph);
    let cal = fixq::calib::calibrate(&exec, data.batches(64), |_| {}).unwrap();
    // The operating point of docs/reproduction.md: per channel, mid-rise, 2.5 bits per weight.
    let mut cfg = PlanConfig::fixq(Budget::AvgBitsPerParam(2.5));
    cfg.granularity = Granularity::PerChannel;
    cfg.weight_grid = Grid::MidRise;
    cfg.weight_bits = 1..=7;
    let plan = plan::plan(&graph, &cal, &cfg).unwrap();
    let net = FixedNetwork::new(&graph, &plan).unwrap();

    let mut g = c.benchmark_group("lenet5");
    g.measurement_time(Duration::from_secs(4));
    for batch in [1usize, 64] {
        let x = data
            .images
            .slice(ndarray::s![..batch, .., .., ..])
            .into_dyn();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("float/batch{batch}"), |b| {
            b.iter(|| black_box(exec.run(black_box(x.view())).unwrap()))
        });
        g.bench_function(format!("fixed/batch{batch}"), |b| {
            b.iter(|| black_box(net.run(black_box(x.view())).unwrap()))
        });
    }
    g.finish();
}

/// The first `n` CIFAR-10 test images as NCHW floats in 0..=255 (what the Keras ResNet-8 takes).
fn cifar(n: usize) -> ndarray::ArrayD<f32> {
    let NpyArray::U8(raw) = npy::read(shared("data/cifar10/test_images_u8_nhwc.npy")).unwrap()
    else {
        panic!("CIFAR-10 images: expected u8");
    };
    raw.slice_axis(ndarray::Axis(0), ndarray::Slice::from(..n))
        .permuted_axes(ndarray::IxDyn(&[0, 3, 1, 2]))
        .mapv(f32::from)
        .as_standard_layout()
        .into_owned()
}

fn resnet8(c: &mut Criterion) {
    let graph = Graph::from_onnx_file(shared("models/resnet8_cifar10.onnx")).unwrap();
    let x = cifar(500);
    let exec = FloatExecutor::new(&graph);
    let cal =
        fixq::calib::calibrate(&exec, x.axis_chunks_iter(ndarray::Axis(0), 50), |_| {}).unwrap();
    let per_channel = |mut cfg: PlanConfig| {
        cfg.granularity = Granularity::PerChannel;
        plan::plan(&graph, &cal, &cfg).unwrap()
    };
    let nets = [
        ("fixed8", per_channel(PlanConfig::equal(8))),
        (
            "fixed4",
            per_channel(PlanConfig::fixq(Budget::AvgBitsPerParam(4.0))),
        ),
    ]
    .map(|(name, p)| (name, FixedNetwork::new(&graph, &p).unwrap()));

    let mut g = c.benchmark_group("resnet8");
    g.measurement_time(Duration::from_secs(4));
    for batch in [1usize, 32] {
        let xb = x.slice_axis(ndarray::Axis(0), ndarray::Slice::from(..batch));
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("float/batch{batch}"), |b| {
            b.iter(|| black_box(exec.run(black_box(xb.view())).unwrap()))
        });
        for (name, net) in &nets {
            g.bench_function(format!("{name}/batch{batch}"), |b| {
                b.iter(|| black_box(net.run(black_box(xb.view())).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, lenet, resnet8);
criterion_main!(benches);
