//! Calibrates LeNet-5 over all 10,000 MNIST test images and nothing else, so its peak resident memory
//! can be measured (docs/reliability.md, "Bounded memory"):
//!
//! ```sh
//! cargo build --release --example calib_memory
//! /usr/bin/time -v target/release/examples/calib_memory ../shared
//! ```

use fixq::Graph;
use fixq::eval::Dataset;
use fixq::exec::FloatExecutor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shared = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../shared".into());
    let graph = Graph::from_onnx_file(format!("{shared}/models/lenet5_mnist.onnx"))?;
    let data = Dataset::from_idx(
        format!("{shared}/data/mnist/t10k-images-idx3-ubyte.gz"),
        format!("{shared}/data/mnist/t10k-labels-idx1-ubyte.gz"),
        1.0 / 255.0,
        None,
    )?;
    let cal = fixq::calib::calibrate(&FloatExecutor::new(&graph), data.batches(100), |_| {})?;
    println!(
        "calibrated {} images over {} tensors",
        cal.images(),
        cal.tensor_names().count()
    );
    Ok(())
}
