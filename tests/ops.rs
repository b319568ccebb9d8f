//! Every per-op fixture of `scripts/op_fixtures.py` (`tests/fixtures/ops/`, outputs from onnxruntime):
//! imported and run by the float executor, the output matches onnxruntime's; or, for the ops import
//! does not take yet ([`NOT_YET`]), import refuses the model with `Unsupported` naming the op.

mod shipped;

use std::fs;

use fixq::exec::FloatExecutor;
use fixq::io::npy;
use fixq::{Error, Graph};
use ndarray::ArrayD;

/// Cases whose op (or variant) import does not support yet, with what the error must name. All four
/// need the input's shape during import (shape-computing chains folded for the declared input size,
/// `auto_pad = SAME_*` pads, Pad's `axes` against the input rank).
const NOT_YET: &[(&str, &str)] = &[
    ("constantofshape_add", "(op Shape)"),
    ("constantofshape_pads", "(op ConstantOfShape)"),
    ("conv_same_upper", "auto_pad 'SAME_UPPER'"),
    ("pad_axes_opset18", "the 'axes' input"),
    ("shape_chain_flatten", "(op Shape)"),
    ("shape_chain_flatten_opset11", "(op Shape)"),
    ("shape_chain_nc", "(op Shape)"),
];

const NETWORKS: &[&str] = &["resnet_a", "mobilenetv2", "squeezenet"];

fn f32_npy(path: &str) -> ArrayD<f32> {
    npy::read(path).unwrap().into_f32().unwrap()
}

/// max |a - b| / max(max |b|, 1e-3).
fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn every_op_fixture_matches_onnxruntime_or_is_refused_by_name() {
    let dir = shipped::path("tests/fixtures/ops");
    let mut cases: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".onnx").map(str::to_string)
        })
        .filter(|c| !NETWORKS.contains(&c.as_str()))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 100,
        "only {} fixtures found in {dir}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let base = format!("{dir}/{case}");
        let not_yet = NOT_YET.iter().find(|(c, _)| c == case).map(|(_, op)| *op);
        let graph = Graph::from_onnx_file(format!("{base}.onnx"));
        match (graph, not_yet) {
            (Ok(graph), None) => {
                let x = f32_npy(&format!("{base}.input.npy"));
                let want = f32_npy(&format!("{base}.output.npy"));
                match FloatExecutor::new(&graph).run(x.view()) {
                    Ok(y) if y.shape() != want.shape() => failures.push(format!(
                        "{case}: shape {:?}, onnxruntime {:?}",
                        y.shape(),
                        want.shape()
                    )),
                    Ok(y) => {
                        let e = rel_err(&y, &want);
                        if e > 1e-5 {
                            failures.push(format!("{case}: relative error {e:e}"));
                        }
                    }
                    Err(e) => failures.push(format!("{case}: run failed: {e}")),
                }
            }
            (Err(e), None) => failures.push(format!("{case}: import failed: {e}")),
            (Err(Error::Unsupported(msg)), Some(op)) if msg.contains(op) => {}
            (Err(e), Some(op)) => {
                failures.push(format!("{case}: expected Unsupported naming {op}, got {e}"))
            }
            (Ok(_), Some(_)) => failures.push(format!("{case}: imports now; drop it from NOT_YET")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
