//! Eq. 9 on LeNet-5, with noise gains from the 30 dB probe and at the operating point.
//!
//! For fixq's per-tensor and per-channel configurations at several budgets: the plan made with the
//! probe gains, and the plan re-made with gains corrected at its own formats
//! ([`fixq::plan::plan_at_operating_point`]); for each, the plan's Eq. 9 prediction, Eq. 9 over the
//! terms measured alone, the fixed-point network's measured output SQNR, and top-1 accuracy.
//!
//! `cargo run --release --example eq9_terms -- ../shared [TEST_IMAGES]`

mod common;

use fixq::eval::{self, Dataset};
use fixq::exec::FloatExecutor;
use fixq::plan;
use fixq::{Budget, Graph};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let shared = args.get(1).map_or("../shared", String::as_str);
    let n: usize = args.get(2).map_or(Ok(10_000), |s| s.parse())?;
    let graph = Graph::from_onnx_file(format!("{shared}/models/lenet5_mnist.onnx"))?;
    let img = format!("{shared}/data/mnist/t10k-images-idx3-ubyte.gz");
    let lab = format!("{shared}/data/mnist/t10k-labels-idx1-ubyte.gz");
    let test = Dataset::from_idx(&img, &lab, 1.0 / 255.0, Some(n))?;
    let calib = Dataset::from_idx(&img, &lab, 1.0 / 255.0, Some(500))?;
    let exec = FloatExecutor::new(&graph);
    let cal = fixq::calib::calibrate(&exec, calib.batches(100), |_| {})?;
    let probe = calib.images.view().into_dyn();
    let gains = plan::noise_gains(&graph, probe.view(), 7)?;
    let reference = eval::float_reference(&graph, &test, 500, 256)?;
    println!(
        "{:<8} {:>6} {:<9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "method", "budget", "gains", "bits/wt", "acc %", "pred dB", "op. dB", "meas dB"
    );
    for per_channel in [false, true] {
        for b in [2.0, 2.25, 2.5, 3.0, 3.2, 4.0] {
            let c = common::fixq_config(Budget::AvgBitsPerParam(b), &gains, per_channel);
            for refine in [false, true] {
                let p = if refine {
                    plan::plan_at_operating_point(&graph, &cal, &c, probe.view(), 3)?
                } else {
                    plan::plan(&graph, &cal, &c)?
                };
                let e = eval::evaluate(&graph, &p, &test, &reference, 500)?;
                println!(
                    "{:<8} {:>6.2} {:<9} {:>8.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                    if per_channel { "fixq-pc" } else { "fixq" },
                    b,
                    if refine { "op-point" } else { "30 dB" },
                    e.avg_bits,
                    100.0 * e.accuracy,
                    e.predicted_output_sqnr_db,
                    e.operating_point_output_sqnr_db,
                    e.measured_output_sqnr_db
                );
            }
        }
    }
    Ok(())
}
