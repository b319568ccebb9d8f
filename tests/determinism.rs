//! Determinism: the same model, calibration data and budget give a byte-identical plan, and the
//! fixed-point network gives bit-identical outputs across runs, across rayon thread counts (feature
//! `rayon`) and across the SIMD and scalar reference kernels (`Auto`, and on the digits CNN every kernel
//! this CPU runs forced one at a time), on the digits CNN and on the MLPerf Tiny
//! ResNet-8 with the shipped CIFAR-10 subset (residual adds and average pooling in the integer
//! network). The same check on LeNet-5 is in `examples/reproduce.rs`.

mod shipped;

use fixq::eval::Dataset;
use fixq::exec::{FixedNetwork, FloatExecutor};
use fixq::kernels::KernelChoice;
use fixq::plan::{self, CurveSource, Granularity, PlanConfig, QuantPlan, StepRule};
use fixq::{Budget, Graph, Grid};
use ndarray::ArrayD;

struct Case {
    graph: Graph,
    calib: Dataset,
    test: Dataset,
}

fn digits() -> Case {
    Case {
        graph: shipped::digits_graph(),
        calib: shipped::digits("train", Some(200)),
        test: shipped::digits("test", Some(100)),
    }
}

fn resnet8() -> Case {
    let all = shipped::cifar10_subset();
    let split = |r: std::ops::Range<usize>| Dataset {
        images: all
            .images
            .slice(ndarray::s![r.clone(), .., .., ..])
            .to_owned(),
        labels: all.labels[r].to_vec(),
    };
    Case {
        graph: shipped::resnet8_graph(),
        calib: split(0..100),
        test: split(168..200),
    }
}

/// The digits CNN is small: the exact allocation, per tensor and per channel. ResNet-8 is larger and
/// deeper, so it gets the cheapest plan (equal 8-bit widths, steps from the fitted densities rather
/// than a search over the data) to keep the test time modest in debug builds.
fn configs(full: bool) -> Vec<PlanConfig> {
    if !full {
        let mut equal = PlanConfig::equal(8);
        equal.weight_step = StepRule::MinExpectedMse;
        equal.curve = CurveSource::Linear {
            kappa_db_per_bit: 3.0,
        };
        return vec![equal];
    }
    let per_tensor = PlanConfig::fixq(Budget::AvgBitsPerParam(4.0));
    let mut per_channel = per_tensor.clone();
    per_channel.granularity = Granularity::PerChannel;
    per_channel.weight_grid = Grid::MidRise;
    per_channel.weight_bits = 1..=7;
    vec![per_tensor, per_channel]
}

fn make_plan(c: &Case, cfg: &PlanConfig) -> QuantPlan {
    let cal =
        fixq::calib::calibrate(&FloatExecutor::new(&c.graph), c.calib.batches(64), |_| {}).unwrap();
    plan::plan(&c.graph, &cal, cfg).unwrap()
}

/// The plan as bytes: its JSON with feature `serde`, its `Debug` text otherwise.
fn plan_bytes(p: &QuantPlan) -> String {
    #[cfg(feature = "serde")]
    {
        p.to_json().unwrap()
    }
    #[cfg(not(feature = "serde"))]
    {
        format!("{p:?}")
    }
}

fn outputs_bits(c: &Case, p: &QuantPlan, choice: KernelChoice) -> Vec<u32> {
    let net = FixedNetwork::with_options(&c.graph, p, None, choice).unwrap();
    let y: ArrayD<f32> = net.run(c.test.images.view().into_dyn()).unwrap();
    y.iter().map(|v| v.to_bits()).collect()
}

fn check(c: &Case, full: bool) {
    // Noise gains are deterministic too, and the most involved part of planning: once, on a few images.
    let probe = c
        .calib
        .images
        .slice(ndarray::s![..16, .., .., ..])
        .into_dyn();
    let gains = plan::noise_gains(&c.graph, probe.clone(), 3).unwrap();
    assert_eq!(gains, plan::noise_gains(&c.graph, probe, 3).unwrap());
    for cfg in configs(full) {
        let cfg = cfg.with_gains(gains.clone());
        let (a, b) = (make_plan(c, &cfg), make_plan(c, &cfg));
        assert_eq!(plan_bytes(&a), plan_bytes(&b), "plan differs between runs");
        let reference = outputs_bits(c, &a, KernelChoice::Reference);
        assert_eq!(
            reference,
            outputs_bits(c, &a, KernelChoice::Reference),
            "reference run to run"
        );
        assert_eq!(
            reference,
            outputs_bits(c, &a, KernelChoice::Auto),
            "SIMD vs scalar reference"
        );
        #[cfg(feature = "rayon")]
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            // Planning is single-threaded; the kernels are what rayon splits.
            let y = pool.install(|| outputs_bits(c, &a, KernelChoice::Auto));
            assert_eq!(reference, y, "outputs with {threads} rayon threads");
        }
    }
}

#[test]
fn digits_plan_and_outputs_are_deterministic() {
    check(&digits(), true);
}

/// Every kernel this CPU runs, forced on every weighted layer of the digits CNN one at a time (at a
/// per-tensor and a per-channel plan), gives outputs bit-identical to the scalar reference, in 1- and
/// 2-thread rayon pools (feature `rayon`). Kernels this CPU lacks are listed as not available, not
/// passed; the reference and both portable kernels must always have run. All 450 test images, so
/// that the second convolution has enough work to be split over threads.
#[test]
fn digits_outputs_are_bit_identical_on_every_kernel_forced_one_at_a_time() {
    use fixq::kernels::KernelId;
    let c = Case {
        test: shipped::digits("test", None),
        ..digits()
    };
    let probe = c
        .calib
        .images
        .slice(ndarray::s![..16, .., .., ..])
        .into_dyn();
    let gains = plan::noise_gains(&c.graph, probe, 3).unwrap();
    let mut ran = std::collections::BTreeSet::new();
    // The `vpmaddubsw` kernel fits only layers whose codes keep its i16 sums exact: the 4-bit
    // allocations hold 7- and 8-bit layers it must refuse; equal 6-bit widths fit it everywhere.
    let mut cfgs = configs(true);
    cfgs.push(PlanConfig::equal(6));
    for (label, cfg) in ["per-tensor", "per-channel", "equal 6-bit"]
        .into_iter()
        .zip(cfgs)
    {
        let p = make_plan(&c, &cfg.with_gains(gains.clone()));
        let reference = outputs_bits(&c, &p, KernelChoice::Reference);
        for id in KernelId::ALL {
            if !id.is_supported() {
                println!("{label}: {id}: not available on this CPU");
                continue;
            }
            let net = match FixedNetwork::with_options(&c.graph, &p, None, KernelChoice::Force(id))
            {
                Ok(n) => n,
                Err(fixq::Error::Unsupported(m))
                    if id == KernelId::Avx2U8I8I16 && label != "equal 6-bit" =>
                {
                    assert!(m.contains("too wide"), "{label}: forcing {id}: {m}");
                    println!("{label}: {id}: refused, as it must be: {m}");
                    continue;
                }
                Err(e) => panic!("{label}: forcing {id}: {e}"),
            };
            // Forced means every weighted layer runs it.
            assert!(
                net.kernels().iter().all(|(_, k)| *k == id),
                "{label}: forced {id}, got {:?}",
                net.kernels()
            );
            let run = |threads: Option<usize>| -> Vec<u32> {
                let go = || {
                    let y: ArrayD<f32> = net.run(c.test.images.view().into_dyn()).unwrap();
                    y.iter().map(|v| v.to_bits()).collect()
                };
                match threads {
                    None => go(),
                    #[cfg(feature = "rayon")]
                    Some(t) => rayon::ThreadPoolBuilder::new()
                        .num_threads(t)
                        .build()
                        .unwrap()
                        .install(go),
                    #[cfg(not(feature = "rayon"))]
                    Some(_) => go(),
                }
            };
            assert_eq!(reference, run(None), "{label}: {id} vs the reference");
            let mut how = "one run".to_string();
            if cfg!(feature = "rayon") {
                for t in [1, 2] {
                    assert_eq!(
                        reference,
                        run(Some(t)),
                        "{label}: {id} with {t} rayon threads"
                    );
                }
                how = "default, 1 and 2 rayon threads".into();
            }
            println!("{label}: {id}: bit-identical to the reference ({how})");
            ran.insert(id.name());
        }
    }
    for must in [
        KernelId::Reference,
        KernelId::PortableU8I8,
        KernelId::PortableI16I16,
    ] {
        assert!(ran.contains(must.name()), "{must} did not run");
    }
    if KernelId::Avx2U8I8I16.is_supported() {
        assert!(ran.contains(KernelId::Avx2U8I8I16.name()));
    }
    println!("kernels run: {ran:?}");
}

#[test]
fn resnet8_plan_and_outputs_are_deterministic() {
    check(&resnet8(), false);
}

/// The average-pooling steps of the fixed network (windowed and global, each between integer layers)
/// run, agree between the SIMD and reference kernels, and track the float graph.
#[test]
fn average_pools_in_the_fixed_network() {
    use fixq::graph::{Node, Op, Pool2d, TensorInfo};
    use ndarray::{Array2, Array4};
    let node = |name: &str, op: Op, inputs: &[&str]| Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        output: name.into(),
    };
    let w1 = Array4::from_shape_fn((6, 2, 3, 3), |(o, i, y, x)| {
        ((o * 18 + i * 9 + y * 3 + x) as f32 * 0.71).sin() * 0.4
    });
    let w2 = Array2::from_shape_fn((3, 6), |(o, i)| ((o * 6 + i) as f32 * 1.3).cos() * 0.5);
    let pool = Pool2d {
        kernel: [2, 2],
        stride: [2, 2],
        pad: [0; 4],
        dilation: [1, 1],
        ceil_mode: false,
    };
    let conv = Op::Conv {
        stride: [1, 1],
        pad: [1; 4],
        dilation: [1, 1],
        groups: 1,
    };
    let gemm = Op::Gemm {
        alpha: 1.0,
        beta: 1.0,
        trans_a: false,
        trans_b: true,
    };
    let graph = Graph::new(
        TensorInfo {
            name: "x".into(),
            shape: vec![None, Some(2), Some(8), Some(8)],
        },
        "fc",
        vec![
            node("conv", conv, &["x", "w1"]),
            node("relu", Op::Relu, &["conv"]),
            node(
                "avg",
                Op::AveragePool {
                    pool,
                    count_include_pad: false,
                },
                &["relu"],
            ),
            node("gap", Op::GlobalAveragePool, &["avg"]),
            node("flat", Op::Flatten { axis: 1 }, &["gap"]),
            node("fc", gemm, &["flat", "w2"]),
        ],
        vec![("w1".into(), w1.into_dyn()), ("w2".into(), w2.into_dyn())],
    )
    .unwrap();
    let x = Array4::from_shape_fn((16, 2, 8, 8), |(n, c, y, x)| {
        ((n * 128 + c * 64 + y * 8 + x) as f32 * 0.37).cos()
    })
    .into_dyn();
    let exec = FloatExecutor::new(&graph);
    let mut cal = fixq::calib::Calibration::new();
    cal.observe(&exec, x.view()).unwrap();
    let p = plan::plan(&graph, &cal, &PlanConfig::equal(8)).unwrap();
    let auto = FixedNetwork::new(&graph, &p)
        .unwrap()
        .run(x.view())
        .unwrap();
    let reference = FixedNetwork::with_options(&graph, &p, None, KernelChoice::Reference)
        .unwrap()
        .run(x.view())
        .unwrap();
    assert_eq!(auto, reference);
    let float = exec.run(x.view()).unwrap();
    let db = fixq::sqnr::measure_db(float.as_slice().unwrap(), auto.as_slice().unwrap()).unwrap();
    assert!(db > 20.0, "fixed vs float {db} dB");
}

/// A batch gives the same bits as its images run one at a time (with the `rayon` feature the batch
/// is split over threads, and each convolution over a batch by images), on ResNet-8 at 8 bits per
/// channel and the digits CNN's first plan.
#[test]
fn a_batch_equals_its_images_run_one_by_one() {
    for c in [resnet8(), digits()] {
        let cfg = configs(false).into_iter().next().unwrap();
        let p = make_plan(&c, &cfg);
        let net = FixedNetwork::new(&c.graph, &p).unwrap();
        let x = c.test.images.view().into_dyn();
        let batch: Vec<u32> = net
            .run(x.view())
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let mut single = Vec::new();
        for i in 0..x.shape()[0] {
            let one = x.slice_axis(ndarray::Axis(0), (i..i + 1).into());
            single.extend(net.run(one).unwrap().iter().map(|v| v.to_bits()));
        }
        assert_eq!(batch.len(), single.len());
        assert!(
            batch == single,
            "a batch differs from its images run one by one"
        );
    }
}
