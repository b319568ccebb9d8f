//! Writes real plan JSON and bit-packed weight files for the digits CNN, as seeds for the fuzzers in
//! `fuzz/` (see docs/reliability.md).
//!
//! ```sh
//! cargo run --release --features serde --example fuzz_seeds -- fuzz/seeds
//! ```
//! writes `plan_per_tensor.json`, `plan_per_channel.json`, `per_tensor.fixqpack` and
//! `per_channel.fixqpack` into the given folder.

use fixq::eval::Dataset;
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::plan::{self, Granularity, PlanConfig};
use fixq::{Budget, Graph, Grid, pack};

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
    println!("wrote seeds to {out}");
    Ok(())
}
