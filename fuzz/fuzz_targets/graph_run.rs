//! Fuzz target: ONNX bytes through import, the float executor on a small generated input, planning at
//! 8 bits and the fixed-point network. Every stage must give `Ok` or `Err`, never a panic, a hang or a
//! huge allocation; a model that imports must either run or say why not.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Inputs larger than this many elements are not run (import already bounds every shape).
const MAX_INPUT_ELEMENTS: usize = 1 << 14;

fuzz_target!(|data: &[u8]| {
    let Ok(graph) = fixq::Graph::from_onnx_bytes(data) else {
        return;
    };
    // The declared input at batch 2, unknown dimensions as 3.
    let shape: Vec<usize> = std::iter::once(2)
        .chain(graph.input().shape.iter().skip(1).map(|d| d.unwrap_or(3)))
        .collect();
    if shape.iter().product::<usize>() > MAX_INPUT_ELEMENTS {
        return;
    }
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|k| ((k * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let Ok(x) = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), values) else {
        return;
    };
    let exec = fixq::exec::FloatExecutor::new(&graph);
    if exec.run(x.view()).is_err() {
        return;
    }
    let mut cal = fixq::calib::Calibration::new();
    if cal.observe(&exec, x.view()).is_err() {
        return;
    }
    let Ok(plan) = fixq::plan::plan(&graph, &cal, &fixq::plan::PlanConfig::equal(8)) else {
        return;
    };
    if let Ok(net) = fixq::exec::FixedNetwork::new(&graph, &plan) {
        let _ = net.run(x.view());
    }
});
