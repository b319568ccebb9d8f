//! Every per-op fixture of `scripts/op_fixtures.py` (`tests/fixtures/ops/`, outputs from onnxruntime):
//! imported and run by the float executor, the output matches onnxruntime's. The shape-dependent
//! cases (shape chains folded at import, `auto_pad = SAME_*`, Pad-18's `axes`) also run in the
//! fixed-point network where their ops do.

mod shipped;

use std::fs;

use fixq::calib::Calibration;
use fixq::exec::FixedNetwork;
use fixq::exec::FloatExecutor;
use fixq::graph::Op;
use fixq::io::npy;
use fixq::plan::{self, PlanConfig};
use fixq::{Graph, sqnr};
use ndarray::{ArrayD, Axis};

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
fn every_op_fixture_matches_onnxruntime() {
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
        match Graph::from_onnx_file(format!("{base}.onnx")) {
            Ok(graph) => {
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
            Err(e) => failures.push(format!("{case}: import failed: {e}")),
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

/// The cases whose import needs the input's shape, with the ops left in the graph once import has
/// folded the shape computations, and whether they have weights (so that they can be planned and
/// run in the fixed-point network).
const SHAPE_DEPENDENT: &[(&str, &[&str], bool)] = &[
    ("constantofshape_add", &["Add"], false),
    ("constantofshape_pads", &["Pad"], false),
    ("conv_same_upper", &["Conv"], true),
    ("pad_axes_opset18", &["Pad"], false),
    ("shape_chain_flatten", &["Conv", "Reshape"], true),
    (
        "shape_chain_flatten_opset11",
        &["Relu", "Reshape", "Gemm"],
        true,
    ),
    ("shape_chain_nc", &["Reshape"], false),
];

fn op_of<'g>(graph: &'g Graph, name: &str) -> &'g Op {
    &graph
        .nodes()
        .iter()
        .find(|n| n.op.name() == name)
        .unwrap()
        .op
}

#[test]
fn shape_computations_fold_into_attributes() {
    let dir = shipped::path("tests/fixtures/ops");
    let graph = |case: &str| Graph::from_onnx_file(format!("{dir}/{case}.onnx")).unwrap();
    for (case, ops, _) in SHAPE_DEPENDENT {
        let names: Vec<&str> = graph(case).nodes().iter().map(|n| n.op.name()).collect();
        assert_eq!(&names, ops, "{case}");
    }
    // x.view(x.size(0), -1): the batch copied, the rest inferred.
    for (case, shape) in [
        ("shape_chain_flatten", vec![0, -1]),
        ("shape_chain_flatten_opset11", vec![0, -1]),
        ("shape_chain_nc", vec![0, 4, -1]),
    ] {
        assert_eq!(
            op_of(&graph(case), "Reshape"),
            &Op::Reshape {
                shape,
                allow_zero: false
            },
            "{case}"
        );
    }
    // 3x3 stride 2 on 8x8, SAME_UPPER: total pad 1 per axis, at the end.
    assert!(matches!(
        op_of(&graph("conv_same_upper"), "Conv"),
        Op::Conv {
            pad: [0, 0, 1, 1],
            ..
        }
    ));
    // Pad-18 pads [1, 0, 1, 2] (begins, then ends) on axes [1, 3] of a 4-D input.
    assert!(matches!(
        op_of(&graph("pad_axes_opset18"), "Pad"),
        Op::Pad { pads, .. } if pads == &[0, 1, 0, 0, 0, 1, 0, 2]
    ));
    assert!(matches!(
        op_of(&graph("constantofshape_pads"), "Pad"),
        Op::Pad { pads, .. } if pads == &[0, 0, 1, 1, 0, 0, 1, 2]
    ));
    // ConstantOfShape(Shape(x)) is kept as a [1, 4, 6, 6] fill that the Add broadcasts.
    let add = graph("constantofshape_add");
    let fill = add.initializer(&add.nodes()[0].inputs[1]).unwrap();
    assert_eq!(fill.shape(), &[1, 4, 6, 6]);
    assert!(fill.iter().all(|&v| v == 0.25));
}

/// The cases with weights run in the fixed-point network at 8 bits (measured 36.8-43.3 dB output
/// SQNR against the float executor; the floor keeps margin), on batch sizes other than the
/// fixture's too.
#[test]
fn shape_dependent_cases_with_weights_run_in_integers() {
    let dir = shipped::path("tests/fixtures/ops");
    for (case, _, weighted) in SHAPE_DEPENDENT {
        if !weighted {
            continue;
        }
        let base = format!("{dir}/{case}");
        let graph = Graph::from_onnx_file(format!("{base}.onnx")).unwrap();
        let x = f32_npy(&format!("{base}.input.npy"));
        let exec = FloatExecutor::new(&graph);
        let mut cal = Calibration::new();
        cal.observe(&exec, x.view()).unwrap();
        let plan = plan::plan(&graph, &cal, &PlanConfig::equal(8)).unwrap();
        let net = FixedNetwork::new(&graph, &plan).unwrap_or_else(|e| panic!("{case}: {e}"));
        let three =
            ndarray::concatenate(Axis(0), &[x.view(), x.slice_axis(Axis(0), (0..1).into())])
                .unwrap();
        for input in [x.view(), x.slice_axis(Axis(0), (0..1).into()), three.view()] {
            let float = exec.run(input.view()).unwrap();
            let fixed = net.run(input.view()).unwrap();
            assert_eq!(fixed.shape(), float.shape(), "{case}");
            let db =
                sqnr::measure_db(float.as_slice().unwrap(), fixed.as_slice().unwrap()).unwrap();
            assert!(db >= 30.0, "{case}: 8-bit output SQNR {db:.1} dB");
        }
    }
}
