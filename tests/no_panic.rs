//! No panic from the public API on any input: every property feeds arbitrary values (NaN, infinities,
//! subnormals, extremes, zero and odd sizes within a memory cap) and asserts only that the call returns
//! `Ok` or `Err`. `catch_unwind` turns a panic into a failure that names the input.

use std::panic::{AssertUnwindSafe, catch_unwind};

use fixq::kernels::{
    self, Activation, Conv2d, Conv2dParams, Dense, KernelChoice, OutputStage, Pool2dParams,
};
use fixq::{
    Budget, Family, FitAccumulator, Grid, LayerSpec, QFormat, QTensor, Quantizer, SqnrCurve,
    allocate_bits, dist, pack, sqnr, table,
};
use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Runs `f`, failing the property with `what` and the panic message if it panics.
fn no_panic<R>(what: impl std::fmt::Debug, f: impl FnOnce() -> R) -> Result<(), TestCaseError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(TestCaseError::fail(format!("panicked on {what:?}: {msg}")))
        }
    }
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-0.0),
        Just(f64::MIN_POSITIVE / 4.0),
        Just(f64::MAX),
        Just(f64::MIN),
        -1e6f64..1e6,
        any::<f64>(),
    ]
}

fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(0.0f32),
        Just(f32::MIN_POSITIVE / 4.0),
        Just(f32::MAX),
        Just(f32::MIN),
        -10.0f32..10.0,
        any::<f32>(),
    ]
}

fn family() -> impl Strategy<Value = Family> {
    prop_oneof![
        Just(Family::Uniform),
        Just(Family::Gaussian),
        Just(Family::Laplacian),
        Just(Family::Gamma),
    ]
}

fn bits() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..=40, Just(u32::MAX)]
}

fn frac() -> impl Strategy<Value = i32> {
    prop_oneof![-120i32..=120, Just(i32::MIN), Just(i32::MAX)]
}

fn format() -> impl Strategy<Value = Option<QFormat>> {
    (bits(), frac(), any::<bool>(), any::<bool>()).prop_map(|(b, n, s, rise)| {
        QFormat::new(b, n, s, if rise { Grid::MidRise } else { Grid::MidTread }).ok()
    })
}

fn int_format(max_bits: u32, signed: bool) -> impl Strategy<Value = QFormat> {
    (1..=max_bits, -8i32..=8).prop_filter_map("valid", move |(b, n)| {
        QFormat::new(b, n, signed, Grid::MidTread).ok()
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn table_functions(fam in family(), b in bits(), step in any_f64(), x in any_f64()) {
        no_panic((fam, b, step, x), || {
            let _ = table::mse(fam, b, step);
            let _ = table::mse_mid_tread(fam, b, step);
            let _ = table::mse_unsigned(fam, b, step);
            let _ = table::optimal_step(fam, b);
            let _ = table::optimal_sqnr_db(fam, b);
            let _ = table::optimal_step_mid_tread(fam, b);
            let _ = table::optimal_sqnr_db_mid_tread(fam, b);
            let _ = table::kappa_db_per_bit(fam, b);
            let _ = (fam.pdf(x), fam.cdf(x), fam.excess_kurtosis(), fam.from_uniforms(x, step));
        })?;
    }

    #[test]
    fn fitting(data in prop::collection::vec(any_f32(), 0..64), more in prop::collection::vec(any_f64(), 0..16), b in bits()) {
        no_panic((&data, &more, b), || {
            if let Ok(f) = dist::fit(&data) {
                let _ = (f.mean(), f.std(), f.best_family(), f.effective_std(), f.gaussian_equivalent_xi(b));
                for fam in [Family::Uniform, Family::Gaussian, Family::Laplacian, Family::Gamma] {
                    let _ = (f.scale_std(fam), f.log_likelihood(fam));
                }
                for g in [Grid::MidTread, Grid::MidRise] {
                    let _ = QFormat::min_expected_mse(&f, b, true, g);
                    let _ = SqnrCurve::from_fit(&f, 1..=b.min(20), true, g);
                }
                let _ = QFormat::paper_rule(f.effective_std(), b, f.is_non_negative());
            }
            let _ = dist::fit_f64(&more);
            let mut acc = FitAccumulator::new();
            let _ = acc.push_slice(&data);
            let _ = acc.push_slice_f64(&more);
            let mut other = FitAccumulator::new();
            let _ = other.push_slice(&data);
            acc.merge(&other);
            let _ = (acc.count(), acc.fit());
        })?;
    }

    #[test]
    fn formats_and_rules(b in bits(), n in frac(), signed in any::<bool>(), xi in any_f64(), x in any_f64(), code in any::<i64>(), data in prop::collection::vec(any_f32(), 0..32)) {
        no_panic((b, n, signed, xi, x, code, &data), || {
            for g in [Grid::MidTread, Grid::MidRise] {
                if let Ok(f) = QFormat::new(b, n, signed, g) {
                    let _ = (f.step(), f.min_code(), f.max_code(), f.value_of(code), f.min_value(), f.max_value());
                    let _ = (f.with_frac_bits(n.wrapping_add(1)), f.as_mid_tread_odd(), f.to_string());
                    let _ = f.code_of(x, fixq::Rounding::default());
                }
                let _ = QFormat::min_data_mse(&data, b, signed, g);
            }
            let _ = (QFormat::signed(b, n), QFormat::unsigned(b, n), QFormat::mid_rise(b, n));
            let _ = QFormat::paper_rule(xi, b, signed);
        })?;
    }

    #[test]
    fn quantize_and_measure(f in format(), data in prop::collection::vec(any_f32(), 0..48), cols in 1usize..5, other in prop::collection::vec(any_f32(), 0..48)) {
        no_panic((f, &data, cols, &other), || {
            let _ = sqnr::measure_db(&data, &other);
            let _ = sqnr::network_db(&other.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
            let _ = (sqnr::db_to_linear(f64::from(cols as u32)), sqnr::linear_to_db(-1.0));
            let Some(f) = f else { return };
            let _ = sqnr::measure_format_db(&data, f);
            if let Ok(fit) = dist::fit(&data) {
                let _ = sqnr::predict_db(&fit, f);
                let _ = sqnr::predict_db_for(&fit, Family::Laplacian, f);
            }
            let rows = data.len() / cols;
            let a = Array2::from_shape_vec((rows, cols), data[..rows * cols].to_vec()).unwrap_or_default();
            if let Ok(t) = Quantizer::<i8>::new(f).and_then(|q| q.quantize(a.view())) {
                let _ = t.dequantize();
            }
            if let Ok(q) = Quantizer::<i16>::new(f) { let _ = q.quantize(a.view()); }
            if let Ok(q) = Quantizer::<u8>::new(f) { let _ = q.quantize(a.view()); }
            if let Ok(q) = Quantizer::<i8>::per_channel(1, vec![f; cols]) { let _ = q.quantize(a.view()); }
            let _ = Quantizer::<i8>::per_channel(5, vec![f; cols]);
        })?;
    }

    #[test]
    fn allocation(specs in prop::collection::vec((any::<u64>(), any_f64(), any_f64(), 0u32..20, 0u32..20, any::<u64>()), 0..6), target in any_f64(), max_bits in any::<u64>(), which in 0u8..3) {
        no_panic((&specs, target, max_bits, which), || {
            let layers: Vec<LayerSpec> = specs.iter().map(|&(params, k, off, lo, hi, cost)| {
                LayerSpec::new("l", params % (1 << 40), SqnrCurve::Linear { kappa_db_per_bit: k, offset_db: off })
                    .bits_range(lo..=hi)
                    .cost_per_bit(cost)
            }).collect();
            let budget = match which {
                0 => Budget::MinSqnrDb(target),
                1 => Budget::MaxModelBits(max_bits),
                _ => Budget::AvgBitsPerParam(target),
            };
            let _ = allocate_bits(&layers, budget);
            let _ = fixq::pareto_front(&layers);
            let _ = SqnrCurve::from_fn(1, 8, |b| Ok(target * f64::from(b)));
        })?;
    }

    #[test]
    fn kernels_small_shapes(
        dims in (1usize..3, 1usize..4, 1usize..4, 1usize..5, 1usize..5, 1usize..4, 1usize..4),
        stride in 0usize..3, pad in 0usize..3, dil in 0usize..3, groups in 0usize..3,
        wf in int_format(8, true), xf in int_format(8, false), of in int_format(16, true),
        codes in prop::collection::vec(any::<i8>(), 256),
        relu in any::<bool>(),
    ) {
        let (n, cin, cout, h, w, kh, kw) = dims;
        no_panic((dims, stride, pad, dil, groups, wf, xf, of), || {
            let wt = Array4::from_shape_fn((cout, cin, kh, kw), |(a, b, c, d)| codes[(a * 31 + b * 7 + c * 3 + d) % 256]);
            let Ok(wq) = QTensor::from_codes(wt, wf) else { return };
            let x = Array4::from_shape_fn((n, cin, h, w), |(a, b, c, d)| codes[(a * 13 + b * 5 + c * 11 + d) % 256] as u8);
            let Ok(xq) = QTensor::from_codes(x, xf) else { return };
            let stage = OutputStage::new(of).with_activation(if relu { Activation::Relu } else { Activation::Identity });
            let params = Conv2dParams { stride: [stride, 1], padding: [pad, 0, pad, 1], dilation: [1, dil], groups };
            for choice in [KernelChoice::Reference, KernelChoice::Auto] {
                if let Ok(conv) = Conv2d::<u8, i16>::new(&wq, None, xf, stage, params, choice) {
                    let _ = conv.output_shape([n, cin, h, w]);
                    let _ = conv.forward(&xq);
                }
                let d = Array2::from_shape_fn((cout, cin * h * w), |(a, b)| codes[(a * 17 + b) % 256]);
                if let (Ok(dq), Ok(xd)) = (QTensor::from_codes(d, wf), QTensor::from_codes(xq.codes().clone().into_shape_with_order((n, cin * h * w)).unwrap_or_default(), xf)) {
                    let bias = QTensor::from_codes(Array1::from_elem(cout, 3i32), QFormat::signed(32, xf.frac_bits() + wf.frac_bits()).unwrap_or(wf));
                    if let Ok(dense) = Dense::<u8, i16>::new(&dq, bias.as_ref().ok(), xf, stage, choice) {
                        let _ = dense.forward(&xd);
                    }
                }
            }
            let pool = Pool2dParams::new(kh, stride).with_padding(pad);
            let _ = kernels::max_pool2d(&xq, pool);
            let _ = kernels::avg_pool2d::<u8, u8>(&xq, pool, relu, OutputStage::new(xf));
            let _ = kernels::avg_pool2d::<u8, i16>(&xq, pool, !relu, OutputStage::new(of));
            let _ = kernels::global_avg_pool::<u8, i16>(&xq, OutputStage::new(of));
            let _ = kernels::add::<u8, u8, i8, _>(&xq, &xq, OutputStage::new(of));
        })?;
    }

    #[test]
    fn readers_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        no_panic(&bytes, || {
            let _ = fixq::io::idx::parse(&bytes);
            let _ = fixq::io::npy::parse(&bytes);
            let _ = fixq::io::safetensors::parse(&bytes);
            let _ = pack::from_bytes(&bytes);
            let _ = fixq::Graph::from_onnx_bytes(&bytes);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = fixq::plan::QuantPlan::from_json(s);
            }
        })?;
    }

    #[test]
    fn readers_on_mutated_real_files(which in 0usize..4, at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let files: [&[u8]; 4] = [
            include_bytes!("../models/digits_cnn.onnx"),
            include_bytes!("../data/digits/test-labels-idx1-ubyte"),
            include_bytes!("fixtures/ops_output.npy"),
            include_bytes!("../fuzz/seeds/two.safetensors"),
        ];
        let mut b = files[which].to_vec();
        let i = at.index(b.len());
        b[i] = byte;
        b.truncate(cut.index(b.len() + 1));
        no_panic((which, i, byte, b.len()), || {
            let _ = fixq::Graph::from_onnx_bytes(&b);
            let _ = fixq::io::idx::parse(&b);
            let _ = fixq::io::npy::parse(&b);
            let _ = fixq::io::safetensors::parse(&b);
        })?;
    }
}

#[test]
fn extreme_shapes_are_refused_not_allocated() {
    // A QTensor over an empty array and a quantizer over zero-size axes give Ok or Err.
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 5]));
    let f = QFormat::signed(8, 4).unwrap();
    let _ = Quantizer::<i8>::new(f).unwrap().quantize(empty.view());
    let _ = Quantizer::<i8>::per_channel(0, vec![]);
}
