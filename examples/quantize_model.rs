//! The facade in one screen: quantize the shipped digits CNN for a budget of average weight bits,
//! print the per-tensor report and compare the integer network's accuracy with float.
//!
//! ```sh
//! cargo run --release --example quantize_model            # 2.5 bits per weight
//! cargo run --release --example quantize_model -- 4       # another budget
//! ```
//!
//! The command-line program does this on any model and data (`fixq quantize`), and the
//! accuracy-vs-bits sweep (`fixq sweep`; `docs/cli.md`).

use fixq::eval::{Dataset, accuracy};
use fixq::{Budget, FloatExecutor, Graph, QuantizeOptions, quantize_with_progress};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let budget: f64 = match std::env::args().nth(1) {
        Some(b) => b.parse()?,
        None => 2.5,
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let graph = Graph::from_onnx_file(format!("{root}/models/digits_cnn.onnx"))?;
    let data = |split: &str| {
        Dataset::from_idx(
            format!("{root}/data/digits/{split}-images-idx3-ubyte"),
            format!("{root}/data/digits/{split}-labels-idx1-ubyte"),
            1.0 / 16.0,
            None,
        )
    };
    let (calib, test) = (data("train")?, data("test")?);
    let model = quantize_with_progress(
        &graph,
        calib.images.view().into_dyn(),
        Budget::AvgBitsPerParam(budget),
        &QuantizeOptions::default(),
        |stage| eprintln!("{stage:?}"),
    )?;
    println!("{}\n", model.report());
    let images = test.images.view().into_dyn();
    let float = accuracy(
        &FloatExecutor::new(&graph).run(images.view())?,
        &test.labels,
    )?;
    let fixed = accuracy(&model.run(images)?, &test.labels)?;
    println!(
        "{} test images: float {:.2} %, fixed point {:.2} % at {:.3} bits per weight",
        test.len(),
        100.0 * float,
        100.0 * fixed,
        model.plan().avg_bits_per_param()
    );
    Ok(())
}
