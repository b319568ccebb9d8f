//! GPTQ rounding and bias correction on the real ResNet-8 (`../shared`; this file fails, naming the
//! path, without it): calibration on CIFAR-10 test images 0..500, scored on 500..2500, per channel
//! at 4.0 bits per weight, GPTQ + bias correction against nearest rounding. The full-set figures (500..10000) are in `docs/rounding.md`, from
//! `cargo run --release --example rounding -- ../shared resnet8`.
//!
//! Also the save/load round trip of a rounded model (corrected biases included, a bias added where the
//! layer had none) and the error without layer input moments.

mod shipped;

use std::path::PathBuf;

use fixq::eval::{Dataset, accuracy};
use fixq::io::npy::{self, NpyArray};
use fixq::plan::{self, PlanConfig};
use fixq::rounding::WeightRounding;
use fixq::{Budget, Error, FloatExecutor, Graph, QuantizeOptions, QuantizedModel, quantize};
use ndarray::{Axis, Ix4, s};

fn shared() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        p.join("models/resnet8_cifar10.onnx").is_file(),
        "tests/rounding.rs needs ../shared (models/resnet8_cifar10.onnx, data/cifar10) beside the checkout: {} is missing",
        p.display()
    );
    p
}

/// CIFAR-10 test images `lo..hi` as NCHW floats 0..255 (ResNet-8's input), with their labels.
fn cifar(lo: usize, hi: usize) -> Dataset {
    let dir = shared().join("data/cifar10");
    let NpyArray::U8(raw) = npy::read(dir.join("test_images_u8_nhwc.npy")).unwrap() else {
        panic!("CIFAR-10 images: expected u8");
    };
    let NpyArray::U8(labels) = npy::read(dir.join("test_labels_u8.npy")).unwrap() else {
        panic!("CIFAR-10 labels: expected u8");
    };
    let images = raw
        .into_dimensionality::<Ix4>()
        .unwrap()
        .slice_move(s![lo..hi, .., .., ..])
        .permuted_axes([0, 3, 1, 2])
        .mapv(f32::from)
        .as_standard_layout()
        .into_owned();
    Dataset {
        images,
        labels: labels.iter().skip(lo).take(hi - lo).copied().collect(),
    }
}

fn top1(
    run: impl Fn(ndarray::ArrayViewD<'_, f32>) -> fixq::Result<ndarray::ArrayD<f32>>,
    d: &Dataset,
) -> f64 {
    let mut out = Vec::new();
    for b in d.images.axis_chunks_iter(Axis(0), 250) {
        out.push(run(b.into_dyn()).unwrap());
    }
    let views: Vec<_> = out.iter().map(|o| o.view()).collect();
    accuracy(&ndarray::concatenate(Axis(0), &views).unwrap(), &d.labels).unwrap()
}

#[test]
fn resnet8_at_8_and_4_bits_per_channel_keeps_float_accuracy_and_gptq_beats_nearest() {
    let graph = Graph::from_onnx_file(shared().join("models/resnet8_cifar10.onnx")).unwrap();
    let calib = cifar(0, 500);
    let test = cifar(500, 2500);
    let exec = FloatExecutor::new(&graph);
    let float = top1(|x| exec.run(x), &test);
    let budget = Budget::AvgBitsPerParam(4.0);
    let run = |rounding, bias_correction| {
        let options = QuantizeOptions {
            rounding,
            bias_correction,
            ..QuantizeOptions::default()
        };
        let m = quantize(&graph, calib.images.view().into_dyn(), budget, &options).unwrap();
        assert!(m.plan().avg_bits_per_param() <= 4.0);
        (top1(|x| m.run(x), &test), m)
    };
    let (gptq, model) = run(WeightRounding::Gptq, true);
    let (nearest, _) = run(WeightRounding::Nearest, false);
    // Equal 8-bit weights per channel on the same held-out images (issue 11's integration figure).
    let eight = {
        let cal = fixq::calib::calibrate(
            &exec,
            calib
                .images
                .axis_chunks_iter(Axis(0), 100)
                .map(|b| b.into_dyn()),
            |_| {},
        )
        .unwrap();
        let mut cfg = PlanConfig::equal(8);
        cfg.granularity = plan::Granularity::PerChannel;
        let p = plan::plan(&graph, &cal, &cfg).unwrap();
        let net = fixq::exec::FixedNetwork::new(&graph, &p).unwrap();
        top1(|x| net.run(x), &test)
    };
    println!(
        "ResNet-8 images 500..2500: 8 bits per channel {:.2} %",
        100.0 * eight
    );
    // Measured: 75.20 % (float 75.55 %; Intel Xeon, AVX-512).
    assert!(
        (eight - float).abs() <= 0.005,
        "8 bits per channel {eight} more than 0.5 points from float {float}"
    );
    println!(
        "ResNet-8 images 500..2500: float {:.2} %, 4 bits per channel nearest {:.2} %, GPTQ + bias correction {:.2} %",
        100.0 * float,
        100.0 * nearest,
        100.0 * gptq
    );
    // Measured on these images (Intel Xeon, AVX-512): float 75.55 %, nearest 73.40 %, GPTQ + bias
    // correction 74.15 %; on all of 500..10000 see docs/rounding.md. One image is 0.05 points; the
    // bounds leave room for the plan to move with the CPU's float summation order (faer's kernels).
    assert!(
        gptq >= float - 0.02,
        "GPTQ {gptq} more than 2 points below float {float}"
    );
    assert!(
        gptq >= nearest + 0.005,
        "GPTQ {gptq} not 0.5 points above nearest {nearest}"
    );
    // The model's graph holds the rounded weights, not the float ones.
    let w = |g: &Graph| {
        let conv = g.nodes().iter().find(|n| n.op.name() == "Conv").unwrap();
        g.initializer(&conv.inputs[1]).unwrap().to_owned()
    };
    assert_ne!(
        w(&graph),
        w(model.graph()),
        "the model's graph holds the rounded weights"
    );
}

#[test]
fn a_rounded_model_with_added_biases_saves_and_loads_bit_identically() {
    // (A layer without a bias gets `{node}.corrected_bias`: `export`'s unit tests save and load one.)
    let graph = shipped::digits_graph();
    let (calib, test) = (
        shipped::digits("train", None),
        shipped::digits("test", None),
    );
    let options = QuantizeOptions::default();
    assert_eq!(options.rounding, WeightRounding::Gptq);
    assert!(options.bias_correction);
    let model = quantize(
        &graph,
        calib.images.view().into_dyn(),
        Budget::AvgBitsPerParam(2.0),
        &options,
    )
    .unwrap();
    let before = model.run(test.images.view().into_dyn()).unwrap();
    let bytes = model.to_bytes().unwrap();
    let loaded = QuantizedModel::from_bytes(&bytes).unwrap();
    let after = loaded.run(test.images.view().into_dyn()).unwrap();
    assert_eq!(before, after);
    // Bias correction changed at least one bias, and the file kept it bit for bit.
    let biases = |g: &Graph| -> Vec<(String, Vec<u32>)> {
        g.nodes()
            .iter()
            .filter_map(|n| {
                n.inputs
                    .get(2)
                    .and_then(|b| g.initializer(b))
                    .map(|a| (n.name.clone(), a))
            })
            .map(|(n, a)| (n, a.iter().map(|v| v.to_bits()).collect()))
            .collect()
    };
    assert_eq!(biases(model.graph()), biases(loaded.graph()));
    assert_ne!(
        biases(&graph),
        biases(model.graph()),
        "bias correction changed no bias"
    );
}

#[test]
fn gptq_without_layer_inputs_names_the_fix() {
    let graph = shipped::digits_graph();
    let calib = shipped::digits("train", None);
    let exec = FloatExecutor::new(&graph);
    let cal = fixq::calib::calibrate(&exec, calib.batches(256), |_| {}).unwrap();
    let mut config = PlanConfig::fixq(Budget::AvgBitsPerParam(3.0));
    config.rounding = WeightRounding::Gptq;
    let err = plan::plan(&graph, &cal, &config).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { name: "calibration", reason }
            if reason.contains("Calibration::with_layer_inputs()") && reason.contains("GPTQ")),
        "{err}"
    );
    // With the moments the same plan builds, and rounding::apply puts every weight on its grid.
    let cal = fixq::calib::calibrate_with(
        fixq::calib::Calibration::with_layer_inputs(),
        &exec,
        calib.batches(256),
        |_| {},
    )
    .unwrap();
    let p = plan::plan(&graph, &cal, &config).unwrap();
    let rounded = plan::rounded_graph(&graph, &p, &cal, &config).unwrap();
    let net = fixq::exec::FixedNetwork::new(&rounded, &p).unwrap();
    for (wc, node) in net
        .weights()
        .iter()
        .zip(graph.nodes().iter().filter(|n| n.inputs.len() > 1))
    {
        let w = rounded.initializer(&node.inputs[1]).unwrap();
        let deq = wc.codes.dequantize();
        assert_eq!(
            w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            deq.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "layer '{}': the network's codes are the rounded graph's values",
            node.name
        );
    }
}
