//! Fuzz target: arbitrary text must give `Ok` or `Err`, never a panic, hang or huge allocation. A plan
//! that parses must also survive the fixed-point network's constructor and one inference on the
//! digits model (with `Ok` or `Err`), and serialise back to the same plan.
#![no_main]

use std::sync::OnceLock;

use fixq::Graph;
use fixq::exec::FixedNetwork;
use fixq::plan::QuantPlan;
use libfuzzer_sys::fuzz_target;

fn digits() -> Option<&'static Graph> {
    static GRAPH: OnceLock<Option<Graph>> = OnceLock::new();
    GRAPH
        .get_or_init(|| Graph::from_onnx_bytes(include_bytes!("../../models/digits_cnn.onnx")).ok())
        .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(plan) = QuantPlan::from_json(text) else {
        return;
    };
    let _ = (
        plan.model_bits(),
        plan.avg_bits_per_param(),
        plan.to_string(),
    );
    for w in plan.weights() {
        let _ = w.format_of_channel(usize::MAX);
    }
    let again = plan.to_json().expect("a parsed plan serialises");
    let back = QuantPlan::from_json(&again).expect("a serialised plan parses back");
    assert_eq!(plan.to_json().ok(), back.to_json().ok());
    let graph = digits().expect("the digits model imports");
    if let Ok(net) = FixedNetwork::new(graph, &plan) {
        let x = ndarray::ArrayD::<f32>::from_elem(ndarray::IxDyn(&[1, 1, 8, 8]), 0.5);
        let _ = net.run(x.view());
    }
});
