//! Float accuracy and throughput of the bundled LeNet-5 on the MNIST test set.
//!
//! `cargo run --release --example mnist_float` (reads `../shared` relative to the crate root).

use std::path::Path;
use std::time::Instant;

use fixq::io::idx;
use fixq::{FloatExecutor, Graph};
use ndarray::{Axis, s};

fn main() -> fixq::Result<()> {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let graph = Graph::from_onnx_file(shared.join("models/lenet5_mnist.onnx"))?;
    let images = idx::read_images(shared.join("data/mnist/t10k-images-idx3-ubyte.gz"))?;
    let labels = idx::read_labels(shared.join("data/mnist/t10k-labels-idx1-ubyte.gz"))?;
    let exec = FloatExecutor::new(&graph);
    let (n, batch) = (images.shape()[0], 500);
    let start = Instant::now();
    let mut correct = 0usize;
    for first in (0..n).step_by(batch) {
        let last = (first + batch).min(n);
        let x = images
            .slice(s![first..last, .., ..])
            .insert_axis(Axis(1))
            .mapv(|p| f32::from(p) / 255.0);
        let logits = exec.run(x.into_dyn().view())?;
        for (row, &label) in logits.outer_iter().zip(labels.slice(s![first..last])) {
            let best = row
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            correct += usize::from(best.0 == usize::from(label));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "LeNet-5 float: {correct}/{n} correct ({:.2} %), {:.0} images/s ({secs:.2} s, batch {batch}, 1 thread)",
        100.0 * correct as f64 / n as f64,
        n as f64 / secs
    );
    Ok(())
}
