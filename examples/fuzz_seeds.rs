//! Writes real plan JSON, bit-packed weight files and `.fixq` model files for the digits CNN, as
//! seeds for the fuzzers in `fuzz/` (see docs/reliability.md).
//!
//! ```sh
//! cargo run --release --features serde --example fuzz_seeds -- fuzz/seeds
//! ```
//! writes `plan_per_tensor.json`, `plan_per_channel.json`, `per_tensor.fixqpack`,
//! `per_channel.fixqpack`, `per_tensor.fixq` and `per_channel.fixq` into the given folder.

use fixq::eval::Dataset;
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::plan::{self, Granularity, PlanConfig};
use fixq::{Budget, Graph, Grid, QuantizeOptions, pack, quantize};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).ok_or("usage: fuzz_seeds OUT_DIR")?;
    std::fs::create_dir_all(&out)?;
    let root = env!("CARGO_MANIFEST_DIR");
    let graph = Graph::from_onnx_file(format!("{root}/models/digits_cnn.onnx"))?;
    let calib = Dataset::from_idx(
        format!("{root}/data/digits/train-images-idx3-ubyte"),
        format!("{root}/data/digits/train-labels-idx1-ubyte"),
        1.0 / 16.0,
        Some(200),
    )?;
    let cal = fixq::calib::calibrate(&FloatExecutor::new(&graph), calib.batches(100), |_| {})?;
    let per_tensor = PlanConfig::fixq(Budget::AvgBitsPerParam(4.0));
    let mut per_channel = per_tensor.clone();
    per_channel.granularity = Granularity::PerChannel;
    per_channel.weight_grid = Grid::MidRise;
    per_channel.weight_bits = 1..=7;
    for (name, cfg) in [("per_tensor", per_tensor), ("per_channel", per_channel)] {
        let p = plan::plan(&graph, &cal, &cfg)?;
        std::fs::write(format!("{out}/plan_{name}.json"), p.to_json()?)?;
        let net = FixedNetwork::new(&graph, &p)?;
        pack::write(format!("{out}/{name}.fixqpack"), net.weights())?;
    }
    for (name, options) in [
        ("per_tensor", QuantizeOptions::per_tensor()),
        ("per_channel", QuantizeOptions::default()),
    ] {
        let options = QuantizeOptions {
            probe_images: 50,
            operating_point_rounds: 1,
            ..options
        };
        let images = calib.images.view().into_dyn();
        let model = quantize(&graph, images, Budget::AvgBitsPerParam(4.0), &options)?;
        model.save(format!("{out}/{name}.fixq"))?;
    }
    println!("wrote seeds to {out}");
    Ok(())
}
