//! No panic from the public API on any input: every property feeds arbitrary values (NaN, infinities,
//! subnormals, extremes, zero and odd sizes within a memory cap) and asserts only that the call returns
//! `Ok` or `Err`. `catch_unwind` turns a panic into a failure that names the input.

use std::panic::{AssertUnwindSafe, catch_unwind};

use fixq::calib::Calibration;
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::graph::{Node, Op, Pool2d, TensorInfo};
use fixq::kernels::{
    self, Activation, Conv2d, Conv2dParams, Dense, KernelChoice, KernelId, OutputStage,
    Pool2dParams,
};
use fixq::plan::{self, PlanConfig};
use fixq::{
    Budget, Family, FitAccumulator, Graph, Grid, LayerSpec, QFormat, QTensor, Quantizer, SqnrCurve,
    allocate_bits, dist, pack, sqnr, table,
};
use ndarray::{Array1, Array2, Array4, ArrayD, Ix1, Ix2, Ix4, IxDyn};
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
    prop_oneof![0u32..=64, Just(u32::MAX)]
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

/// Sizes for strides, dilations and groups: the small ones that run, and extremes that must be refused
/// (or refused at run time) without any allocation of that size.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 1usize..=3,
        1 => Just(0),
        1 => Just(kernels::MAX_EXTENT / 2),
        1 => Just(kernels::MAX_EXTENT + 1),
        1 => Just(1 << 40),
        1 => Just(usize::MAX),
    ]
}

/// Padding: small per side, or one of the extremes on every side (so that no accepted padding makes
/// a call allocate or compute anything large: a padded plane past `MAX_ELEMENTS` is refused).
fn padding() -> impl Strategy<Value = [usize; 4]> {
    prop_oneof![
        4 => [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2],
        1 => Just([kernels::MAX_EXTENT; 4]),
        1 => Just([kernels::MAX_EXTENT + 1, 0, 0, 0]),
        1 => Just([0, 0, 0, usize::MAX]),
        1 => Just([usize::MAX; 4]),
    ]
}

fn choice() -> impl Strategy<Value = KernelChoice> {
    prop_oneof![
        Just(KernelChoice::Auto),
        Just(KernelChoice::Reference),
        prop::sample::select(KernelId::ALL.to_vec()).prop_map(KernelChoice::Force),
    ]
}

/// A shape of `rank` dimensions, each small (including 0), or one huge dimension beside zeros, so
/// the array holds no elements. (Huge means past `kernels::MAX_ELEMENTS`: a zero-size batch of 2^24
/// images padded to 2x2 would be a legitimate output of 2^26 elements, too slow for this test.)
fn dims(rank: usize) -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        4 => prop::collection::vec(1usize..4, rank),
        1 => prop::collection::vec(0usize..4, rank),
        1 => (0..rank, prop::sample::select(vec![1usize << 40, isize::MAX as usize]))
            .prop_map(move |(at, big)| {
                let mut d = vec![0; rank];
                d[at] = big;
                d
            }),
    ]
}

/// A format for a layer: mostly one that fits 8-bit storage (`signed` or not), sometimes any.
fn layer_format(signed: bool) -> impl Strategy<Value = Option<QFormat>> {
    prop_oneof![
        3 => int_format(8, signed).prop_map(Some),
        1 => format(),
    ]
}

/// i64 attributes (pads, axes, starts, shapes): small and extreme values.
fn attr() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => -3i64..=3,
        1 => prop::sample::select(vec![i64::MIN, i64::MAX, 1 << 31, -(1 << 31), 1 << 24]),
    ]
}

/// The element count of `shape`; 0 where a zero dimension stands beside dimensions whose product
/// would overflow (such a shape holds no elements either way).
fn numel(shape: &[usize]) -> usize {
    if shape.contains(&0) {
        return 0;
    }
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(usize::MAX)
}

/// A float tensor of `shape` from `seed` values (NaN and infinities among them); an empty one if
/// `shape` holds more than 2^16 elements.
fn filled(shape: &[usize], seed: &[f32]) -> ArrayD<f32> {
    let n = numel(shape);
    if n > 1 << 16 {
        return ArrayD::zeros(IxDyn(&[0]));
    }
    let v = (0..n).map(|i| seed[(i + i / 5) % seed.len()]).collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])))
}

fn node(name: &str, op: Op, inputs: &[&str]) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        output: name.into(),
    }
}

/// One node under test, by kind, with arbitrary attributes.
#[derive(Debug, Clone)]
enum OneOp {
    Conv {
        stride: [usize; 2],
        pad: [usize; 4],
        dilation: [usize; 2],
        groups: usize,
        w: Vec<usize>,
    },
    Pool {
        kind: u8,
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 4],
        dilation: [usize; 2],
        ceil: bool,
    },
    Pad(Vec<i64>),
    Flatten(i64),
    Reshape(Vec<i64>, bool),
    Slice(Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>),
    Gemm(Vec<usize>),
}

fn one_op() -> impl Strategy<Value = OneOp> {
    prop_oneof![
        (
            [size(), size()],
            padding(),
            [size(), size()],
            size(),
            dims(4)
        )
            .prop_map(|(stride, pad, dilation, groups, w)| OneOp::Conv {
                stride,
                pad,
                dilation,
                groups,
                w
            }),
        (
            0u8..4,
            [size(), size()],
            [size(), size()],
            padding(),
            [size(), size()],
            any::<bool>()
        )
            .prop_map(|(kind, kernel, stride, pad, dilation, ceil)| OneOp::Pool {
                kind,
                kernel,
                stride,
                pad,
                dilation,
                ceil
            }),
        prop::collection::vec(attr(), 0..10).prop_map(OneOp::Pad),
        attr().prop_map(OneOp::Flatten),
        (prop::collection::vec(attr(), 0..5), any::<bool>())
            .prop_map(|(s, z)| OneOp::Reshape(s, z)),
        (
            prop::collection::vec(attr(), 0..3),
            prop::collection::vec(attr(), 0..3),
            prop::collection::vec(attr(), 0..3),
            prop::collection::vec(attr(), 0..3)
        )
            .prop_map(|(a, b, c, d)| OneOp::Slice(a, b, c, d)),
        dims(2).prop_map(OneOp::Gemm),
    ]
}

/// The graph `x -> op -> relu` (a Gemm gets a Flatten first), or the error `Graph::new` gives.
///
/// With `fit`, the weights' input dimension is made to match the input and their values are finite,
/// so that most such graphs get through planning to the fixed-point network.
fn one_op_graph(
    input: &[Option<usize>],
    op: &OneOp,
    seed: &[f32],
    fit: bool,
) -> fixq::Result<Graph> {
    let pool = |kernel, stride, pad, dilation, ceil_mode| Pool2d {
        kernel,
        stride,
        pad,
        dilation,
        ceil_mode,
    };
    let mut inits = Vec::new();
    let mut nodes = Vec::new();
    let finite = [0.5, -0.75, 0.25, 1.0, -0.125, 0.0, 0.375];
    let wseed: &[f32] = if fit { &finite } else { seed };
    let features = input
        .iter()
        .skip(1)
        .try_fold(1usize, |a, d| a.checked_mul((*d)?));
    // A 1x1 convolution first, so that graphs whose op has no weights still have a layer to plan.
    let mut from = "x";
    if let (true, [_, Some(c), _, _]) = (
        fit && !matches!(op, OneOp::Conv { .. } | OneOp::Gemm(_)),
        input,
    ) && *c <= 3
    {
        inits.push(("w0".to_string(), filled(&[*c, *c, 1, 1], &finite)));
        nodes.push(node(
            "pre",
            Op::Conv {
                stride: [1, 1],
                pad: [0; 4],
                dilation: [1, 1],
                groups: 1,
            },
            &["x", "w0"],
        ));
        from = "pre";
    }
    let main = match op.clone() {
        OneOp::Conv {
            stride,
            pad,
            dilation,
            groups,
            mut w,
        } => {
            if let (true, Some(Some(c))) = (fit, input.get(1)) {
                w = w.iter().map(|&d| d.clamp(1, 3)).collect();
                w[1] = c / groups.max(1);
                w[0] = w[0].clamp(1, 3) * groups.clamp(1, 3);
            }
            inits.push(("w".to_string(), filled(&w, wseed)));
            node(
                "op",
                Op::Conv {
                    stride,
                    pad,
                    dilation,
                    groups,
                },
                &["x", "w"],
            )
        }
        OneOp::Pool {
            kind,
            kernel,
            stride,
            pad,
            dilation,
            ceil,
        } => {
            let p = pool(kernel, stride, pad, dilation, ceil);
            let op = match kind {
                0 => Op::MaxPool(p),
                1 => Op::AveragePool {
                    pool: p,
                    count_include_pad: ceil,
                },
                2 => Op::GlobalAveragePool,
                _ => Op::GlobalMaxPool,
            };
            node("op", op, &[from])
        }
        OneOp::Pad(pads) => node("op", Op::Pad { pads, value: 0.0 }, &[from]),
        OneOp::Flatten(axis) => node("op", Op::Flatten { axis }, &[from]),
        OneOp::Reshape(shape, allow_zero) => node("op", Op::Reshape { shape, allow_zero }, &[from]),
        OneOp::Slice(starts, ends, axes, steps) => node(
            "op",
            Op::Slice {
                starts,
                ends,
                axes,
                steps,
            },
            &[from],
        ),
        OneOp::Gemm(mut w) => {
            nodes.push(node("flat", Op::Flatten { axis: 1 }, &["x"]));
            if let (true, Some(f)) = (fit, features) {
                w = vec![w[0].clamp(1, 3), f];
            }
            inits.push(("w".to_string(), filled(&w, wseed)));
            node(
                "op",
                Op::Gemm {
                    alpha: 1.0,
                    beta: 1.0,
                    trans_a: false,
                    trans_b: true,
                },
                &["flat", "w"],
            )
        }
    };
    nodes.push(main);
    nodes.push(node("relu", Op::Relu, &["op"]));
    Graph::new(
        TensorInfo {
            name: "x".into(),
            shape: input.to_vec(),
        },
        "relu",
        nodes,
        inits,
    )
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

// Every public constructor and run method on arguments at their extremes: shapes with zero or huge
// dimensions, pads, strides, dilations and groups up to `usize::MAX`, formats of 0..=64 bits and
// `i32::MIN`/`MAX` fractional bits, every kernel choice. Fewer cases: each builds layers or graphs.
proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn kernels_at_extreme_params(
        w in dims(4), x in dims(4), stride in [size(), size()], pad in padding(), dil in [size(), size()],
        groups in size(), ch in choice(), wf in layer_format(true), xf in layer_format(false), of in layer_format(true),
        codes in prop::collection::vec(any::<i8>(), 64), relu in any::<bool>(), fit in any::<bool>(),
    ) {
        // Mostly an input whose channels fit the weights, so that the calls get past the first check.
        let mut x = x;
        if fit && groups <= 3 && w[1] <= 3 {
            x[1] = w[1].saturating_mul(groups);
        }
        no_panic((&w, &x, stride, pad, dil, groups, ch, wf, xf, of), || {
            let (Some(wf), Some(xf), Some(of)) = (wf, xf, of) else { return };
            // Codes inside the formats, so that the tensors can be built.
            let code = |i: usize, f: QFormat| i64::from(codes[i % codes.len()]).clamp(f.min_code(), f.max_code());
            let Ok(wt) = Array4::from_shape_vec((w[0], w[1], w[2], w[3]), (0..numel(&w)).map(|i| code(i, wf).clamp(-128, 127) as i8).collect()) else { return };
            let Ok(xt) = Array4::from_shape_vec((x[0], x[1], x[2], x[3]), (0..numel(&x)).map(|i| code(i, xf).clamp(0, 127) as u8).collect()) else { return };
            let stage = OutputStage::new(of).with_activation(if relu { Activation::Relu } else { Activation::Identity });
            let params = Conv2dParams { stride, padding: pad, dilation: dil, groups };
            let wq = QTensor::from_codes(wt.clone(), wf);
            let wq16 = QTensor::from_codes(wt.mapv(i16::from), wf);
            let xq = QTensor::from_codes(xt.clone(), xf);
            let xs = QTensor::from_codes(xt.mapv(|v| v as i8), xf);
            let bias = QTensor::from_codes(Array1::from_elem(w[0].min(64), 1i32), QFormat::signed(32, xf.frac_bits().saturating_add(wf.frac_bits())).unwrap_or(wf));
            if let Ok(wq) = &wq {
                let _ = Conv2d::<u8, i16>::bias_formats(wq, xf);
                if let Ok(conv) = Conv2d::<u8, i16>::new(wq, bias.as_ref().ok(), xf, stage, params, ch) {
                    let _ = (conv.kernel(), conv.accumulator_bound(), conv.output_shape([x[0], x[1], x[2], x[3]]));
                    if let Ok(xq) = &xq { let _ = conv.forward(xq); }
                }
                if let (Ok(conv), Ok(xs)) = (Conv2d::<i8, u8>::new(wq, None, xf, stage, params, ch), &xs) {
                    let _ = conv.forward(xs);
                }
                let d = wq.codes().clone().into_shape_with_order((w[0], numel(&w[1..]))).unwrap_or_default();
                if let Ok(dq) = QTensor::from_codes(d, wf)
                    && let Ok(dense) = Dense::<u8, i8>::new(&dq, bias.as_ref().ok(), xf, stage, ch)
                {
                    let xd = xt.clone().into_shape_with_order((x[0], numel(&x[1..]))).unwrap_or_default();
                    if let Ok(xd) = QTensor::from_codes(xd, xf) { let _ = dense.forward(&xd); }
                }
            }
            if let (Ok(wq), Ok(xq)) = (&wq16, &xq) {
                let x16 = QTensor::from_codes(xq.codes().mapv(i16::from), xf);
                if let (Ok(conv), Ok(x16)) = (Conv2d::<i16, i16>::new(wq, None, xf, stage, params, ch), x16) {
                    let _ = conv.forward(&x16);
                }
            }
            for kernel in [[dil[0], dil[0]], [stride[1], dil[1]], [w[2], w[3]]] {
                let p = Pool2dParams { kernel, stride, padding: pad };
                if let Ok(xq) = &xq {
                    let _ = kernels::max_pool2d(xq, p);
                    let _ = kernels::avg_pool2d::<u8, i16>(xq, p, relu, stage);
                    let _ = kernels::global_avg_pool::<u8, i8>(xq, stage);
                    let _ = kernels::add::<u8, u8, i8, _>(xq, xq, stage);
                }
                if let Ok(xs) = &xs {
                    let _ = kernels::max_pool2d(xs, p);
                    let _ = kernels::avg_pool2d::<i8, u8>(xs, p, !relu, stage);
                }
            }
        })?;
    }

    #[test]
    fn qtensors_and_packing(shape in dims(3), axis in prop_oneof![0usize..4, Just(usize::MAX)], fmts in prop::collection::vec(format(), 0..5), codes in prop::collection::vec(any::<i8>(), 1..32), c in prop_oneof![0usize..5, Just(usize::MAX)], cut in any::<prop::sample::Index>()) {
        no_panic((&shape, axis, &fmts, c), || {
            let fmts: Vec<QFormat> = fmts.iter().flatten().copied().collect();
            let n = numel(&shape);
            let Ok(a) = ndarray::ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|i| codes[i % codes.len()]).collect()) else { return };
            let mut tensors = Vec::new();
            if let Some(&f) = fmts.first() {
                tensors.push(QTensor::from_codes(a.clone(), f));
            }
            tensors.push(QTensor::from_codes_per_channel(a.clone(), axis, fmts.clone()));
            for t in tensors.into_iter().flatten() {
                let _ = (t.format(), t.formats(), t.channel_axis(), t.format_of_channel(c), t.saturated());
                let _ = t.dequantize();
                let _ = t.clone().into_dimensionality::<Ix1>();
                let _ = t.clone().into_dimensionality::<Ix2>();
                let _ = t.clone().into_dimensionality::<Ix4>();
                let w = vec![pack::WeightCodes { node: "n".into(), codes: t }];
                let _ = pack::payload_bits(&w);
                if let Ok(bytes) = pack::to_bytes(&w) {
                    let back = pack::from_bytes(&bytes);
                    let _ = pack::from_bytes(&bytes[..cut.index(bytes.len())]);
                    if let Ok(back) = back {
                        assert_eq!(back[0].codes.codes(), w[0].codes.codes(), "packed codes round trip");
                    }
                }
            }
            for f in &fmts {
                let _ = Quantizer::<i8>::new(*f).and_then(|q| q.quantize(a.mapv(f32::from).view()));
                let _ = Quantizer::<i16>::per_channel(axis, fmts.clone()).and_then(|q| q.quantize(a.mapv(f32::from).view()));
            }
        })?;
    }

    #[test]
    fn graphs_executors_and_fixed_networks(
        input in prop_oneof![
            3 => (prop_oneof![Just(None), Just(Some(1usize))], 1usize..4, 1usize..7, 1usize..7)
                .prop_map(|(n, c, h, w)| vec![n, Some(c), Some(h), Some(w)]),
            1 => prop::collection::vec(prop_oneof![4 => (0usize..4).prop_map(Some), 1 => Just(None), 1 => prop::sample::select(vec![Some(1usize << 24), Some((1 << 24) + 1), Some(usize::MAX)])], 0..5),
        ],
        op in one_op(), seed in prop::collection::vec(any_f32(), 1..8),
        bits in prop_oneof![3 => 1u32..=8, 1 => prop::sample::select(vec![0u32, 9, 16, 64, u32::MAX])],
        batch in 0usize..3, fit in prop::bool::weighted(0.8),
    ) {
        no_panic((&input, &op, &seed, bits, batch, fit), || {
            let Ok(g) = one_op_graph(&input, &op, &seed, fit) else { return };
            let shape: Vec<usize> = input.iter().map(|d| d.unwrap_or(batch)).collect();
            // Runs only what is small (the declared sizes may be huge).
            if shape.iter().any(|&d| d > 64) || numel(&shape) > 4096 { return }
            // Calibration on four images where the batch is free, values varied.
            let cal_shape: Vec<usize> = input.iter().map(|d| d.unwrap_or(4)).collect();
            if numel(&cal_shape) > 4096 { return }
            let x = filled(&cal_shape, &[0.5, -0.25, 1.0, 0.0, 2.0, 0.75, -1.5]);
            let exec = FloatExecutor::new(&g);
            let _ = exec.run(filled(&shape, &seed).view());
            let _ = exec.run(ArrayD::zeros(IxDyn(&[0])).view());
            if exec.run(x.view()).is_err() { return }
            let mut cal = Calibration::new();
            if cal.observe(&exec, x.view()).is_err() { return }
            for cfg in [PlanConfig::equal(bits), PlanConfig::fixq(Budget::AvgBitsPerParam(f64::from(bits)))] {
                let Ok(p) = plan::plan(&g, &cal, &cfg) else { continue };
                for ch in [KernelChoice::Auto, KernelChoice::Reference] {
                    if let Ok(net) = FixedNetwork::with_options(&g, &p, None, ch) {
                        let _ = net.run(x.view());
                        let _ = net.run(filled(&shape, &seed).view());
                        let _ = net.run(ArrayD::zeros(IxDyn(&[0, 1])).view());
                        if let Ok(bytes) = pack::to_bytes(net.weights()) {
                            let _ = pack::from_bytes(&bytes).map(|w| FixedNetwork::with_options(&g, &p, Some(w), ch));
                        }
                    }
                }
            }
        })?;
    }

    #[test]
    fn allocation_budgets_at_extremes(
        specs in prop::collection::vec((prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>()], any_f64(), any_f64(), 0u32..=64, 0u32..=64, prop_oneof![Just(0u64), Just(1), Just(u64::MAX)]), 0..5),
        target in any_f64(), max_bits in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()], which in 0u8..3,
    ) {
        no_panic((&specs, target, max_bits, which), || {
            let layers: Vec<LayerSpec> = specs.iter().map(|&(params, k, off, lo, hi, cost)| {
                LayerSpec::new("l", params, SqnrCurve::Linear { kappa_db_per_bit: k, offset_db: off })
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
        })?;
    }
}
