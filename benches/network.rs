//! The fixed-point LeNet-5 against the float executor, one thread, batch 1 and 64.
//!
//! Needs `../shared` (the LeNet-5 model and the MNIST test set) beside the crate and panics with the
//! missing path otherwise. Ids are `lenet5/{float,fixed}/batch{N}`; throughput is in images.
//! Run: `taskset -c 0 cargo bench --bench network`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fixq::eval::Dataset;
use fixq::exec::{FixedNetwork, FloatExecutor};
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

criterion_group!(benches, lenet);
criterion_main!(benches);
