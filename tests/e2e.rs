//! End to end on the digits CNN and data that ship with the crate (`models/digits_cnn.onnx`, calibrated
//! on the first 500 training images, measured on all 450 held-out test images; one image is 0.22
//! points). Everything that plans (statistics, noise gains, the operating point's probe) sees only
//! calibration images; `calibration_and_test_images_are_disjoint` checks that no test image is among
//! them. The same checks on LeNet-5 and all 10,000 MNIST test images, with the thresholds of
//! `docs/reproduction.md`, are `cargo run --release --example reproduce -- --data ../shared`.

mod shipped;

use fixq::calib::Calibration;
use fixq::eval;
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::kernels::KernelChoice;
use fixq::plan::{self, Granularity, PlanConfig};
use fixq::{Budget, Graph, Grid, pack};

struct Setup {
    graph: Graph,
    /// The calibration images (the first 500 of the train split); every statistic, noise gain and
    /// probe of this file comes from them, never from `test`.
    calib: fixq::eval::Dataset,
    cal: Calibration,
    test: fixq::eval::Dataset,
    gains: plan::NoiseGains,
    reference: eval::FloatReference,
}

/// Built once and shared by every test in this file (calibration and noise gains are the slow part).
fn setup() -> &'static Setup {
    static SETUP: std::sync::OnceLock<Setup> = std::sync::OnceLock::new();
    SETUP.get_or_init(build_setup)
}

fn build_setup() -> Setup {
    let graph = shipped::digits_graph();
    let test = shipped::digits("test", None);
    let calib = shipped::digits("train", Some(500));
    let exec = FloatExecutor::new(&graph);
    let mut seen = 0;
    let cal = fixq::calib::calibrate(&exec, calib.batches(100), |p| seen = p.images_done).unwrap();
    assert_eq!((seen, cal.images()), (500, 500));
    let gains = plan::noise_gains(&graph, calib.images.view().into_dyn(), 7).unwrap();
    let reference = eval::float_reference(&graph, &test, 250, 128).unwrap();
    Setup {
        graph,
        calib,
        cal,
        test,
        gains,
        reference,
    }
}

/// The images that plan (calibration, noise gains, probes) and the images that score are disjoint:
/// no test image equals any calibration image, pixel for pixel.
#[test]
fn calibration_and_test_images_are_disjoint() {
    let s = setup();
    let key = |img: ndarray::ArrayView3<'_, f32>| -> Vec<u32> {
        img.iter().map(|v| v.to_bits()).collect()
    };
    let calib: std::collections::HashSet<Vec<u32>> = s.calib.images.outer_iter().map(key).collect();
    let shared = s
        .test
        .images
        .outer_iter()
        .filter(|t| calib.contains(&key(t.view())))
        .count();
    assert_eq!(
        (s.calib.images.shape()[0], s.test.images.shape()[0]),
        (500, 450)
    );
    assert_eq!(
        shared, 0,
        "{shared} test images are also calibration images"
    );
}

fn per_channel(budget: f64, gains: &plan::NoiseGains) -> PlanConfig {
    let mut c = PlanConfig::fixq(Budget::AvgBitsPerParam(budget)).with_gains(gains.clone());
    c.granularity = Granularity::PerChannel;
    c.weight_grid = Grid::MidRise;
    c.weight_bits = 1..=7;
    c
}

#[test]
fn digits_fixed_point_end_to_end() {
    let s = setup();
    // Float: 99.11 % (446 of 450, as onnxruntime).
    assert!(
        s.reference.accuracy > 0.98,
        "float accuracy {}",
        s.reference.accuracy
    );

    // Equal 8-bit weights lose nothing measurable (measured: one image, 98.89 %, output SQNR 32.3 dB);
    // 1-bit two's complement weights destroy the network.
    let e8 = eval::evaluate(
        &s.graph,
        &plan::plan(&s.graph, &s.cal, &PlanConfig::equal(8)).unwrap(),
        &s.test,
        &s.reference,
        250,
    )
    .unwrap();
    assert!(
        (e8.accuracy - s.reference.accuracy).abs() <= 2.0 / 450.0 + 1e-9,
        "8-bit {}",
        e8.accuracy
    );
    assert!(
        e8.measured_output_sqnr_db > 30.0,
        "8-bit output SQNR {}",
        e8.measured_output_sqnr_db
    );
    let e1 = eval::evaluate(
        &s.graph,
        &plan::plan(&s.graph, &s.cal, &PlanConfig::equal(1)).unwrap(),
        &s.test,
        &s.reference,
        250,
    )
    .unwrap();
    assert!(e1.accuracy < 0.2, "1-bit {}", e1.accuracy);

    // fixq, per channel, mid-rise weights at 3.5 bits per weight on average (this network has 48 times
    // fewer weights than LeNet-5, and needs more bits): measured 98.22 %, 0.89 points below float, and
    // Eq. 9 with measured noise gains 16.0 dB against 18.1 dB measured. Accuracy within 1.5 points of
    // float, and the prediction within 5 dB.
    let p = plan::plan(&s.graph, &s.cal, &per_channel(3.5, &s.gains)).unwrap();
    assert!(p.avg_bits_per_param() <= 3.5 + 1e-9);
    let e = eval::evaluate(&s.graph, &p, &s.test, &s.reference, 250).unwrap();
    assert!(
        e.accuracy >= s.reference.accuracy - 0.015,
        "fixq 3.5 bits: {} vs float {}",
        e.accuracy,
        s.reference.accuracy
    );
    assert!(
        (e.predicted_output_sqnr_db - e.measured_output_sqnr_db).abs() < 5.0,
        "predicted {} measured {}",
        e.predicted_output_sqnr_db,
        e.measured_output_sqnr_db
    );
    // Per-tensor measured SQNR next to predictions: every activation point is reported.
    assert_eq!(
        e.tensors.iter().filter(|t| t.kind == "activation").count(),
        5
    );
    assert!(e.tensors.iter().all(|t| t.measured_db.is_finite()));

    // The paper's method at a similar size does far worse than fixq's (measured: 29.8 % at 2.59 bits).
    let paper = plan::plan(
        &s.graph,
        &s.cal,
        &PlanConfig::paper(Budget::AvgBitsPerParam(3.5)),
    )
    .unwrap();
    let ep = eval::evaluate(&s.graph, &paper, &s.test, &s.reference, 250).unwrap();
    assert!(ep.model_bits <= p.model_bits() + p.weight_params());
    assert!(
        ep.accuracy < e.accuracy,
        "paper {} vs fixq {}",
        ep.accuracy,
        e.accuracy
    );

    // Packed weights: the payload is exactly the model size, and they read back to the same outputs.
    let net = FixedNetwork::new(&s.graph, &p).unwrap();
    let bytes = pack::to_bytes(net.weights()).unwrap();
    assert_eq!(pack::payload_bits(net.weights()), p.model_bits());
    assert!(
        (bytes.len() as u64) < p.model_bits().div_ceil(8) + 4096,
        "header too large"
    );
    let back = FixedNetwork::with_options(
        &s.graph,
        &p,
        Some(pack::from_bytes(&bytes).unwrap()),
        KernelChoice::Auto,
    )
    .unwrap();
    let x = s
        .test
        .images
        .slice(ndarray::s![..64, .., .., ..])
        .into_dyn();
    let y = net.run(x.view()).unwrap();
    assert_eq!(y, back.run(x.view()).unwrap());

    // Determinism across runs and across the SIMD and scalar reference kernels.
    assert_eq!(y, net.run(x.view()).unwrap());
    let reference_kernels =
        FixedNetwork::with_options(&s.graph, &p, None, KernelChoice::Reference).unwrap();
    assert_eq!(y, reference_kernels.run(x.view()).unwrap());
    let again = plan::plan(&s.graph, &s.cal, &per_channel(3.5, &s.gains)).unwrap();
    assert_eq!(again, p);
}

/// Eq. 9's additivity at the operating point: the terms measured one at a time (only that tensor
/// quantized at its planned format) add, as 1/SQNR, to within 3 dB of the whole fixed-point network's
/// measured output SQNR, on every kind of allocation, including 2-bit weights (measured on the digits
/// CNN: worst 1.1 dB, equal 3-bit and per-channel 2.5-bit weights).
#[test]
fn eq9_over_terms_measured_alone_is_within_3_db_of_the_network() {
    let s = setup();
    let per_tensor = |b: f64| {
        let mut c = PlanConfig::fixq(Budget::AvgBitsPerParam(b)).with_gains(s.gains.clone());
        c.weight_bits = 2..=8;
        c
    };
    let configs = [
        PlanConfig::equal(3),
        PlanConfig::equal(5),
        per_tensor(2.2),
        per_tensor(3.16),
        per_channel(2.0, &s.gains),
        per_channel(2.5, &s.gains),
        PlanConfig::paper(Budget::AvgBitsPerParam(3.0)),
    ];
    for cfg in configs {
        let p = plan::plan(&s.graph, &s.cal, &cfg).unwrap();
        let e = eval::evaluate(&s.graph, &p, &s.test, &s.reference, 250).unwrap();
        assert!(
            (e.operating_point_output_sqnr_db - e.measured_output_sqnr_db).abs() <= 3.0,
            "{:.3} bits: Eq. 9 over terms alone {:.2} dB, network {:.2} dB",
            e.avg_bits,
            e.operating_point_output_sqnr_db,
            e.measured_output_sqnr_db
        );
        assert!(e.tensors.iter().all(|t| t.alone_output_db.is_finite()));
    }
}

/// Gains corrected at a plan's formats make the planner predict each term exactly as measured alone,
/// and planning at the operating point predicts the network's output SQNR to within 1 dB. Terms,
/// gains and the operating point are measured on calibration images only; the network is scored on
/// the held-out test images.
#[test]
fn gains_refined_at_the_operating_point_reproduce_the_measured_terms() {
    let s = setup();
    // The probe is calibration data (the first 128 calibration images), not the images scored.
    let probe = s
        .calib
        .images
        .slice(ndarray::s![..128, .., .., ..])
        .into_dyn();
    let cfg = PlanConfig::equal(4).with_gains(s.gains.clone());
    let p = plan::plan(&s.graph, &s.cal, &cfg).unwrap();
    let terms = plan::measure_terms(&s.graph, &p, probe.view()).unwrap();
    assert_eq!(terms.iter().filter(|t| t.weights).count(), 4);
    assert_eq!(terms.iter().filter(|t| !t.weights).count(), 5);
    let g = plan::refine_gains(&s.gains, &p, &terms).unwrap();
    let p2 = plan::plan(&s.graph, &s.cal, &cfg.clone().with_gains(g)).unwrap();
    for t in &terms {
        let predicted = if t.weights {
            let w = p2.weight(&t.name).unwrap();
            w.predicted_sqnr_db - w.gain_db
        } else {
            let a = p2.activation(&t.name).unwrap();
            a.predicted_sqnr_db - a.gain_db
        };
        assert!(
            (predicted - t.output_db).abs() < 1e-6,
            "{}: {predicted} vs {}",
            t.name,
            t.output_db
        );
    }
    // 2-bit per-channel weights: at the operating point the prediction is within 1 dB of the integer
    // network (measured with the probe on calibration images: 7.95 dB predicted, 8.21 dB measured on
    // the 450 test images, a 0.26 dB gap; before issue 15 the probe was the first 128 test images:
    // 7.9 / 8.6 dB, asserted within 3 dB. LeNet-5's, where the probe gains alone miss by more than
    // 3 dB, is in examples/reproduce.rs).
    let po = plan::plan_at_operating_point(
        &s.graph,
        &s.cal,
        &per_channel(2.0, &s.gains),
        probe.view(),
        3,
    )
    .unwrap();
    let e = eval::evaluate(&s.graph, &po, &s.test, &s.reference, 250).unwrap();
    println!(
        "operating point: predicted {:.2} dB, measured {:.2} dB",
        po.predicted_output_sqnr_db(),
        e.measured_output_sqnr_db
    );
    assert!(
        (po.predicted_output_sqnr_db() - e.measured_output_sqnr_db).abs() <= 1.0,
        "predicted {} measured {}",
        po.predicted_output_sqnr_db(),
        e.measured_output_sqnr_db
    );
    let err = plan::plan_at_operating_point(&s.graph, &s.cal, &PlanConfig::equal(4), probe, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("noise_gains"), "{err}");
}

/// At the same weight bits, fixq's per-channel allocation is at least as accurate as equal widths, and
/// far more at 2 bits (measured: 95.78 % against 70.00 % at 2 bits, 97.56 / 94.67 at 3, 98.44 / 98.22
/// at 4). LeNet-5's headline (the accuracy of the smallest equal width from 30 % fewer bits) is checked
/// by `examples/reproduce.rs`; this network is too small for it (equal widths first come within 0.3
/// points of float at 5 bits, fixq per channel at 3.5 bits is 0.9 points below).
#[test]
fn fixq_per_channel_beats_equal_widths_at_the_same_bits() {
    let s = setup();
    for b in 2..=4u32 {
        let eq = eval::evaluate(
            &s.graph,
            &plan::plan(&s.graph, &s.cal, &PlanConfig::equal(b)).unwrap(),
            &s.test,
            &s.reference,
            250,
        )
        .unwrap();
        let p = plan::plan(&s.graph, &s.cal, &per_channel(f64::from(b), &s.gains)).unwrap();
        assert!(p.avg_bits_per_param() <= f64::from(b) + 1e-9);
        let e = eval::evaluate(&s.graph, &p, &s.test, &s.reference, 250).unwrap();
        assert!(
            e.accuracy >= eq.accuracy,
            "{b} bits: fixq per channel {} vs equal {}",
            e.accuracy,
            eq.accuracy
        );
        if b == 2 {
            assert!(
                e.accuracy >= eq.accuracy + 0.15,
                "2 bits: fixq per channel {} vs equal {}",
                e.accuracy,
                eq.accuracy
            );
        }
    }
}

#[cfg(feature = "serde")]
#[test]
fn plan_round_trips_through_json() {
    let s = setup();
    let p = plan::plan(&s.graph, &s.cal, &per_channel(3.0, &s.gains)).unwrap();
    let json = p.to_json().unwrap();
    assert_eq!(plan::QuantPlan::from_json(&json).unwrap(), p);
    assert!(plan::QuantPlan::from_json("{\"weights\": 3}").is_err());
}
