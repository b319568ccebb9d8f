//! Integration tests of bit allocation against an independent exhaustive search, the paper's Table 3,
//! infeasible budgets, validation and the gap bound of the large-scale path.

use fixq::{
    Allocation, Budget, Error, GapBound, LayerSpec, Solver, SqnrCurve, allocate_bits,
    allocate_bits_with, pareto_front,
};
use proptest::prelude::*;

/// Independent reference: noise by `powf`, enumeration of every allocation.
fn noise(layer: &LayerSpec, bits: u32) -> f64 {
    10f64.powf(-layer.curve().sqnr_db(bits).unwrap() / 10.0)
}

fn choices(layer: &LayerSpec) -> Vec<u32> {
    match layer.pinned_bits() {
        Some(p) => vec![p],
        None => layer.allowed_bits().collect(),
    }
}

/// All allocations as (bits, model bits, noise).
fn enumerate(layers: &[LayerSpec]) -> Vec<(Vec<u32>, u64, f64)> {
    let mut out = vec![(Vec::new(), 0u64, 0.0f64)];
    for layer in layers {
        let mut next = Vec::new();
        for (bits, cost, eta) in &out {
            for b in choices(layer) {
                let mut bits = bits.clone();
                bits.push(b);
                next.push((
                    bits,
                    cost + layer.model_cost_per_bit() * u64::from(b),
                    eta + noise(layer, b),
                ));
            }
        }
        out = next;
    }
    out
}

fn max_bits_of(layers: &[LayerSpec], budget: Budget) -> Option<u64> {
    match budget {
        Budget::MinSqnrDb(_) => None,
        Budget::MaxModelBits(b) => Some(b),
        Budget::AvgBitsPerParam(avg) => {
            let p: u64 = layers
                .iter()
                .filter(|l| l.model_cost_per_bit() > 0)
                .map(|l| l.params())
                .sum();
            Some((avg * p as f64).floor() as u64)
        }
    }
}

/// Exhaustive optimum: (model bits, noise), or None if infeasible. Feasibility with a 1e-12 margin is
/// reported separately so that borderline cases can be skipped.
fn reference(layers: &[LayerSpec], budget: Budget) -> Option<(u64, f64)> {
    let all = enumerate(layers);
    match budget {
        Budget::MinSqnrDb(target) => {
            let cap = 10f64.powf(-target / 10.0);
            all.iter()
                .filter(|a| a.2 <= cap)
                .map(|a| (a.1, a.2))
                .min_by(|x, y| x.0.cmp(&y.0))
        }
        _ => {
            let cap = max_bits_of(layers, budget).unwrap();
            all.iter()
                .filter(|a| a.1 <= cap)
                .map(|a| (a.1, a.2))
                .min_by(|x, y| x.1.total_cmp(&y.1))
        }
    }
}

/// True if some allocation lies within 1e-9 (relative) of the SQNR cap: too close to call across
/// two noise conversions.
fn borderline(layers: &[LayerSpec], budget: Budget) -> bool {
    match budget {
        Budget::MinSqnrDb(target) => {
            let cap = 10f64.powf(-target / 10.0);
            enumerate(layers)
                .iter()
                .any(|a| ((a.2 - cap) / cap).abs() < 1e-9)
        }
        _ => false,
    }
}

fn curve_strategy() -> impl Strategy<Value = SqnrCurve> {
    prop_oneof![
        (0.5f64..7.0, -6.0f64..6.0).prop_map(|(k, o)| SqnrCurve::Linear {
            kappa_db_per_bit: k,
            offset_db: o
        }),
        (1u32..=6, prop::collection::vec(-15.0f64..60.0, 1..=10))
            .prop_map(|(min_bits, sqnr_db)| SqnrCurve::Table { min_bits, sqnr_db }),
    ]
}

fn layer_strategy() -> impl Strategy<Value = LayerSpec> {
    (curve_strategy(), 0u64..3000, 0u32..10, 0u32..10, 0u8..10).prop_map(
        |(curve, params, a, b, flag)| {
            let (first, last) = match &curve {
                SqnrCurve::Linear { .. } => (1, 10),
                SqnrCurve::Table { min_bits, sqnr_db } => {
                    (*min_bits, min_bits + sqnr_db.len() as u32 - 1)
                }
            };
            let width = last - first + 1;
            let lo = first + a % width;
            let hi = lo + b % (last - lo + 1);
            let mut spec = LayerSpec::new(format!("l{params}"), params, curve).bits_range(lo..=hi);
            if params == 0 || flag == 0 {
                spec = spec.cost_per_bit(0);
            }
            if flag == 1 {
                spec = spec.pinned(hi);
            }
            spec
        },
    )
}

/// SQNR in dB of all layers at their narrowest widths and at their best widths.
fn sqnr_span(layers: &[LayerSpec]) -> (f64, f64) {
    let worst: f64 = layers.iter().map(|l| noise(l, choices(l)[0])).sum();
    let best: f64 = layers
        .iter()
        .map(|l| {
            choices(l)
                .into_iter()
                .map(|b| noise(l, b))
                .fold(f64::INFINITY, f64::min)
        })
        .sum();
    (-10.0 * worst.log10(), -10.0 * best.log10())
}

fn instance() -> impl Strategy<Value = (Vec<LayerSpec>, Budget)> {
    prop::collection::vec(layer_strategy(), 1..=6).prop_flat_map(|layers| {
        let all_max: u64 = layers
            .iter()
            .map(|l| l.model_cost_per_bit() * u64::from(*l.allowed_bits().end()))
            .sum();
        let all_min: u64 = layers
            .iter()
            .map(|l| l.model_cost_per_bit() * u64::from(choices(l)[0]))
            .sum();
        let (worst, best) = sqnr_span(&layers);
        let budget = prop_oneof![
            1 => (-20.0f64..70.0).prop_map(Budget::MinSqnrDb),
            4 => (-0.1f64..1.1).prop_map(move |u| Budget::MinSqnrDb(worst + u * (best - worst))),
            1 => (0..=all_max + 1).prop_map(Budget::MaxModelBits),
            4 => (all_min.saturating_sub(1)..=all_max + 1).prop_map(Budget::MaxModelBits),
            1 => (0.0f64..12.0).prop_map(Budget::AvgBitsPerParam),
        ];
        (Just(layers), budget)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The exact solver's objective equals exhaustive search; it meets the budget; it is infeasible
    /// exactly when exhaustive search finds nothing.
    #[test]
    fn exact_equals_exhaustive((layers, budget) in instance()) {
        if borderline(&layers, budget) {
            return Ok(()); // too close to the cap to call across two noise conversions
        }
        let want = reference(&layers, budget);
        let got = allocate_bits(&layers, budget);
        match (want, got) {
            (None, Err(Error::Infeasible { .. })) => {}
            (Some((cost, eta)), Ok(alloc)) => {
                let got_eta: f64 = layers.iter().zip(alloc.bits()).map(|(l, &b)| noise(l, b)).sum();
                match budget {
                    Budget::MinSqnrDb(target) => {
                        prop_assert_eq!(alloc.model_bits(), cost);
                        prop_assert!(got_eta <= 10f64.powf(-target / 10.0) * (1.0 + 1e-12));
                    }
                    _ => {
                        prop_assert!(alloc.model_bits() <= max_bits_of(&layers, budget).unwrap());
                        prop_assert!((got_eta - eta).abs() <= 1e-12 * eta, "{} vs {}", got_eta, eta);
                    }
                }
                prop_assert!(alloc.gap_bound().is_some_and(|g| g.is_zero()));
            }
            (want, got) => prop_assert!(false, "reference {:?}, solver {:?}", want, got),
        }
    }

    /// Baselines and the hull solver meet the budget whenever they return, and never beat the optimum.
    #[test]
    fn other_solvers_feasible_and_not_better((layers, budget) in instance()) {
        if borderline(&layers, budget) {
            return Ok(()); // too close to the cap to call across two noise conversions
        }
        let Some((cost, eta)) = reference(&layers, budget) else { return Ok(()) };
        for solver in [Solver::Hull, Solver::EqualBits, Solver::PaperClosedForm] {
            let Ok(alloc) = allocate_bits_with(&layers, budget, solver) else { continue };
            let got_eta: f64 = layers.iter().zip(alloc.bits()).map(|(l, &b)| noise(l, b)).sum();
            match budget {
                Budget::MinSqnrDb(target) => {
                    prop_assert!(alloc.model_bits() >= cost);
                    prop_assert!(got_eta <= 10f64.powf(-target / 10.0) * (1.0 + 1e-12));
                }
                _ => {
                    prop_assert!(alloc.model_bits() <= max_bits_of(&layers, budget).unwrap());
                    prop_assert!(got_eta >= eta * (1.0 - 1e-12));
                }
            }
        }
    }

    /// The Pareto front: sorted, mutually non-dominated, and every allocation is weakly dominated by a
    /// front point.
    #[test]
    fn pareto_front_is_exact(layers in prop::collection::vec(layer_strategy(), 1..=4)) {
        let front = pareto_front(&layers).unwrap();
        for w in front.windows(2) {
            prop_assert!(w[0].model_bits() < w[1].model_bits());
            prop_assert!(w[0].predicted_sqnr_db() < w[1].predicted_sqnr_db());
        }
        for (_, cost, eta) in enumerate(&layers) {
            let db = -10.0 * eta.log10();
            prop_assert!(front.iter().any(|f| f.model_bits() <= cost
                && f.predicted_sqnr_db() >= db - 1e-9), "({cost}, {db}) not covered");
        }
    }
}

/// The paper's CIFAR-10 network (Table 2): conv weights with kappa = 3; fc0 weights and every
/// activation pinned at 16 bits and left out of the size.
fn paper_network() -> Vec<LayerSpec> {
    let kappa3 = SqnrCurve::Linear {
        kappa_db_per_bit: 3.0,
        offset_db: 0.0,
    };
    let convs = [7_000u64, 295_000, 295_000, 590_000, 590_000, 1_606_000];
    let mut layers: Vec<LayerSpec> = convs
        .iter()
        .enumerate()
        .map(|(i, &p)| LayerSpec::new(format!("conv{i}"), p, kappa3.clone()).bits_range(1..=24))
        .collect();
    layers.push(
        LayerSpec::new("fc0", 5_000, kappa3.clone())
            .bits_range(1..=24)
            .pinned(16)
            .cost_per_bit(0),
    );
    for i in 0..8 {
        layers.push(
            LayerSpec::new(format!("act{i}"), 1, kappa3.clone())
                .bits_range(1..=24)
                .pinned(16)
                .cost_per_bit(0),
        );
    }
    layers
}

#[test]
fn paper_table3_closed_form_offsets() {
    let layers = paper_network();
    for target in [15.0, 20.0, 25.0, 30.0] {
        let cf = allocate_bits_with(&layers, Budget::MinSqnrDb(target), Solver::PaperClosedForm)
            .unwrap();
        let b = cf.bits();
        let rel: Vec<i64> = (1..6).map(|i| i64::from(b[i]) - i64::from(b[0])).collect();
        assert_eq!(rel, [-5, -5, -6, -6, -8], "target {target}: {b:?}");
        assert!(cf.predicted_sqnr_db() >= target);
        let exact = allocate_bits(&layers, Budget::MinSqnrDb(target)).unwrap();
        assert!(exact.model_bits() <= cf.model_bits(), "target {target}");
        assert!(exact.predicted_sqnr_db() >= target);
        assert_eq!(exact.gap_bound(), Some(GapBound::ModelBits(0)));
        let equal =
            allocate_bits_with(&layers, Budget::MinSqnrDb(target), Solver::EqualBits).unwrap();
        assert!(exact.model_bits() <= equal.model_bits());
        // The pinned layers keep their width.
        assert!(b[6..].iter().all(|&w| w == 16));
    }
}

#[test]
fn paper_table3_size_budget() {
    // At the closed form's size, the exact solver reaches at least the closed form's SQNR.
    let layers = paper_network();
    let cf = allocate_bits_with(&layers, Budget::MinSqnrDb(25.0), Solver::PaperClosedForm).unwrap();
    let exact = allocate_bits(&layers, Budget::MaxModelBits(cf.model_bits())).unwrap();
    assert!(exact.model_bits() <= cf.model_bits());
    assert!(exact.predicted_sqnr_db() >= cf.predicted_sqnr_db());
}

fn kappa3() -> SqnrCurve {
    SqnrCurve::Linear {
        kappa_db_per_bit: 3.0,
        offset_db: 0.0,
    }
}

#[test]
fn infeasible_reports_nearest() {
    let layers = [
        LayerSpec::new("a", 10, kappa3()).bits_range(2..=8),
        LayerSpec::new("b", 30, kappa3()).bits_range(2..=8),
    ];
    // Best: both at 8 bits, 24 dB each: 24 - 10 log10(2) dB.
    let best = 24.0 - 10.0 * 2f64.log10();
    match allocate_bits(&layers, Budget::MinSqnrDb(30.0)) {
        Err(Error::Infeasible { nearest, .. }) => assert!((nearest - best).abs() < 1e-9),
        other => panic!("{other:?}"),
    }
    match allocate_bits(&layers, Budget::MaxModelBits(79)) {
        Err(Error::Infeasible { nearest, .. }) => assert_eq!(nearest, 80.0),
        other => panic!("{other:?}"),
    }
    match allocate_bits(&layers, Budget::AvgBitsPerParam(1.5)) {
        Err(Error::Infeasible { nearest, .. }) => {
            assert!((40.0 * nearest).floor() >= 80.0 && nearest < 2.0 + 1e-9)
        }
        other => panic!("{other:?}"),
    }
    // Just feasible at the reported values.
    assert!(allocate_bits(&layers, Budget::MaxModelBits(80)).is_ok());
    assert!(allocate_bits(&layers, Budget::AvgBitsPerParam(2.0)).is_ok());
    for solver in [Solver::Hull, Solver::EqualBits, Solver::PaperClosedForm] {
        assert!(matches!(
            allocate_bits_with(&layers, Budget::MinSqnrDb(30.0), solver),
            Err(Error::Infeasible { .. })
        ));
        assert!(matches!(
            allocate_bits_with(&layers, Budget::MaxModelBits(79), solver),
            Err(Error::Infeasible { .. })
        ));
    }
    // Targets far outside the curve limits: no panic.
    assert!(matches!(
        allocate_bits(&layers, Budget::MinSqnrDb(1e300)),
        Err(Error::Infeasible { .. })
    ));
    assert!(allocate_bits(&layers, Budget::MinSqnrDb(-1e300)).is_ok());
    assert!(allocate_bits(&layers, Budget::MaxModelBits(u64::MAX)).is_ok());
    assert!(allocate_bits(&layers, Budget::AvgBitsPerParam(1e300)).is_ok());
}

#[test]
fn validation_errors() {
    let ok = LayerSpec::new("a", 10, kappa3());
    let inv = |r: fixq::Result<Allocation>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(matches!(
        allocate_bits(&[], Budget::MinSqnrDb(10.0)),
        Err(Error::Empty { .. })
    ));
    assert!(inv(allocate_bits(
        &[LayerSpec::new("z", 0, kappa3()).cost_per_bit(5)],
        Budget::MinSqnrDb(1.0)
    )));
    assert!(
        allocate_bits(
            &[LayerSpec::new("z", 0, kappa3()).cost_per_bit(0)],
            Budget::MinSqnrDb(1.0)
        )
        .is_ok()
    );
    let nan = SqnrCurve::Table {
        min_bits: 1,
        sqnr_db: vec![1.0, f64::NAN],
    };
    assert!(matches!(
        allocate_bits(
            &[ok.clone(), LayerSpec::new("n", 1, nan).bits_range(1..=2)],
            Budget::MinSqnrDb(1.0)
        ),
        Err(Error::NonFinite { index: 1, .. })
    ));
    let inf = SqnrCurve::Linear {
        kappa_db_per_bit: f64::INFINITY,
        offset_db: 0.0,
    };
    assert!(matches!(
        allocate_bits(&[LayerSpec::new("i", 1, inf)], Budget::MinSqnrDb(1.0)),
        Err(Error::NonFinite { .. })
    ));
    #[allow(clippy::reversed_empty_ranges)]
    let empty = ok.clone().bits_range(5..=4);
    assert!(inv(allocate_bits(&[empty], Budget::MinSqnrDb(1.0))));
    assert!(inv(allocate_bits(
        &[ok.clone().bits_range(0..=4)],
        Budget::MinSqnrDb(1.0)
    )));
    assert!(inv(allocate_bits(
        &[ok.clone().bits_range(1..=65)],
        Budget::MinSqnrDb(1.0)
    )));
    let short = SqnrCurve::Table {
        min_bits: 2,
        sqnr_db: vec![1.0, 2.0],
    };
    assert!(inv(allocate_bits(
        &[LayerSpec::new("s", 1, short).bits_range(1..=3)],
        Budget::MinSqnrDb(1.0)
    )));
    assert!(inv(allocate_bits(
        &[ok.clone().bits_range(2..=8).pinned(9)],
        Budget::MinSqnrDb(1.0)
    )));
    assert!(inv(allocate_bits(
        &[LayerSpec::new(
            "t",
            1,
            SqnrCurve::Table {
                min_bits: 1,
                sqnr_db: vec![]
            }
        )],
        Budget::MinSqnrDb(1.0)
    )));
    assert!(inv(allocate_bits(
        std::slice::from_ref(&ok),
        Budget::MinSqnrDb(f64::NAN)
    )));
    assert!(inv(allocate_bits(
        std::slice::from_ref(&ok),
        Budget::AvgBitsPerParam(-1.0)
    )));
    assert!(inv(allocate_bits(
        std::slice::from_ref(&ok),
        Budget::AvgBitsPerParam(f64::INFINITY)
    )));
    let huge = LayerSpec::new("h", u64::MAX, kappa3());
    assert!(inv(allocate_bits(
        &[huge.clone(), huge],
        Budget::MaxModelBits(u64::MAX)
    )));
    let loud = SqnrCurve::Table {
        min_bits: 1,
        sqnr_db: vec![1e4],
    };
    assert!(inv(allocate_bits(
        &[LayerSpec::new("l", 1, loud).bits_range(1..=1)],
        Budget::MinSqnrDb(1.0)
    )));
    // The closed form needs an increasing fit.
    let flat = SqnrCurve::Table {
        min_bits: 1,
        sqnr_db: vec![5.0, 4.0, 3.0],
    };
    assert!(inv(allocate_bits_with(
        &[LayerSpec::new("f", 3, flat).bits_range(1..=3)],
        Budget::MinSqnrDb(1.0),
        Solver::PaperClosedForm
    )));
}

#[test]
fn non_concave_non_monotone_curves() {
    // Layer a: a dip at 3 bits and a plateau; layer b: convex then a jump.
    let a = SqnrCurve::Table {
        min_bits: 1,
        sqnr_db: vec![2.0, 10.0, 6.0, 10.0, 25.0, 25.5],
    };
    let b = SqnrCurve::Table {
        min_bits: 1,
        sqnr_db: vec![5.0, 6.0, 7.0, 30.0, 31.0, 32.0],
    };
    let layers = [
        LayerSpec::new("a", 100, a).bits_range(1..=6),
        LayerSpec::new("b", 300, b).bits_range(1..=6),
    ];
    for target in [0.0, 3.0, 5.0, 8.0, 12.0, 20.0, 24.0, 27.0] {
        let want = reference(&layers, Budget::MinSqnrDb(target)).map(|r| r.0);
        let got = allocate_bits(&layers, Budget::MinSqnrDb(target))
            .ok()
            .map(|a| a.model_bits());
        assert_eq!(got, want, "target {target}");
    }
    for size in [400, 600, 1000, 1500, 1700, 2400] {
        let want = reference(&layers, Budget::MaxModelBits(size)).map(|r| -10.0 * r.1.log10());
        let got = allocate_bits(&layers, Budget::MaxModelBits(size))
            .ok()
            .map(|a| a.predicted_sqnr_db());
        assert!(
            (want.unwrap() - got.unwrap()).abs() < 1e-9,
            "size {size}: {want:?} {got:?}"
        );
    }
}

/// splitmix64: deterministic pseudo-random numbers for the medium and large instances.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` layers (channels) with irregular 16-width tables: about 3 to 6 dB per bit, with noise of
/// +-1.5 dB, offset by `10 log10(n)` dB (each channel carries `1/n` of the signal power).
fn irregular(n: usize, seed: u64) -> Vec<LayerSpec> {
    let mut rng = Rng(seed);
    let share_db = 10.0 * (n as f64).log10();
    (0..n)
        .map(|i| {
            let slope = 3.0 + 3.0 * rng.unit();
            let start = share_db - 2.0 + 4.0 * rng.unit();
            let sqnr_db = (0..16)
                .map(|b| start + slope * b as f64 + 3.0 * (rng.unit() - 0.5))
                .collect();
            let params = 50 + rng.next() % 5000;
            LayerSpec::new(
                format!("ch{i}"),
                params,
                SqnrCurve::Table {
                    min_bits: 1,
                    sqnr_db,
                },
            )
        })
        .collect()
}

#[test]
fn hull_gap_bound_holds_on_medium_instances() {
    let mut proven = 0;
    for seed in 0..12u64 {
        let layers = irregular(20 + 8 * seed as usize, seed);
        for budget in [
            Budget::MinSqnrDb(8.0 + 2.5 * seed as f64),
            Budget::AvgBitsPerParam(2.0 + 0.6 * seed as f64),
        ] {
            let exact = allocate_bits(&layers, budget).unwrap();
            let hull = allocate_bits_with(&layers, budget, Solver::Hull).unwrap();
            assert_eq!(hull.solver(), Solver::Hull);
            if exact.gap_bound().is_some_and(|g| g.is_zero()) {
                proven += 1;
            }
            match (hull.gap_bound().unwrap(), budget) {
                (GapBound::ModelBits(gap), Budget::MinSqnrDb(t)) => {
                    assert!(hull.predicted_sqnr_db() >= t - 1e-9);
                    assert!(exact.model_bits() <= hull.model_bits());
                    if exact.gap_bound() == Some(GapBound::ModelBits(0)) {
                        assert!(hull.model_bits() - exact.model_bits() <= gap, "seed {seed}");
                    }
                }
                (GapBound::SqnrDb(gap), _) => {
                    assert!(exact.predicted_sqnr_db() >= hull.predicted_sqnr_db() - 1e-12);
                    assert!(
                        exact.predicted_sqnr_db() - hull.predicted_sqnr_db() <= gap + 1e-9,
                        "seed {seed}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }
    // The exact phase must actually prove optimality on these medium instances.
    assert!(proven >= 20, "only {proven} of 24 proven");
}

#[test]
fn large_instance_uses_certified_hull() {
    let layers = irregular(100_000, 7);
    let total: u64 = layers.iter().map(|l| l.params()).sum();
    for budget in [Budget::MinSqnrDb(20.0), Budget::AvgBitsPerParam(4.0)] {
        let a = allocate_bits(&layers, budget).unwrap();
        assert_eq!(a.bits().len(), layers.len());
        let gap = a.gap_bound().unwrap();
        match (budget, gap) {
            (Budget::MinSqnrDb(t), GapBound::ModelBits(g)) => {
                assert!(a.predicted_sqnr_db() >= t - 1e-9);
                // Within a tiny fraction of the optimum.
                assert!(
                    (g as f64) < 1e-3 * a.model_bits() as f64,
                    "gap {g} of {}",
                    a.model_bits()
                );
            }
            (Budget::AvgBitsPerParam(avg), GapBound::SqnrDb(g)) => {
                assert!(a.model_bits() as f64 <= avg * total as f64);
                assert!(g < 1e-3, "gap {g} dB");
            }
            other => panic!("{other:?}"),
        }
        let share: f64 = a.noise_share().iter().sum();
        assert!((share - 1.0).abs() < 1e-9);
    }
}

#[test]
fn deterministic_and_tie_rule() {
    // Two identical layers: equal objective either way; the result must not change between runs.
    let layers = [
        LayerSpec::new("a", 10, kappa3()),
        LayerSpec::new("b", 10, kappa3()),
    ];
    let first = allocate_bits(&layers, Budget::MinSqnrDb(20.0)).unwrap();
    for _ in 0..5 {
        assert_eq!(
            allocate_bits(&layers, Budget::MinSqnrDb(20.0)).unwrap(),
            first
        );
    }
    // A cost-free layer gets its highest-SQNR width, the narrowest among equals.
    let plateau = SqnrCurve::Table {
        min_bits: 1,
        sqnr_db: vec![1.0, 9.0, 9.0, 3.0],
    };
    let layers = [
        LayerSpec::new("w", 10, kappa3()),
        LayerSpec::new("act", 1, plateau)
            .bits_range(1..=4)
            .cost_per_bit(0),
    ];
    let a = allocate_bits(&layers, Budget::MinSqnrDb(5.0)).unwrap();
    assert_eq!(a.bits()[1], 2);
}

#[test]
fn allocation_accessors() {
    let layers = [
        LayerSpec::new("a", 1_000, kappa3()),
        LayerSpec::new("b", 8_000, kappa3()),
    ];
    let a = allocate_bits(&layers, Budget::MinSqnrDb(25.0)).unwrap();
    assert_eq!(a.solver(), Solver::Exact);
    assert_eq!(
        a.model_bits(),
        1_000 * u64::from(a.bits()[0]) + 8_000 * u64::from(a.bits()[1])
    );
    let eta: Vec<f64> = layers
        .iter()
        .zip(a.bits())
        .map(|(l, &b)| noise(l, b))
        .collect();
    let total: f64 = eta.iter().sum();
    assert!((a.predicted_sqnr_db() + 10.0 * total.log10()).abs() < 1e-9);
    for (s, e) in a.noise_share().iter().zip(&eta) {
        assert!((s - e / total).abs() < 1e-12);
    }
}

/// Regression (proptest, `tests/alloc.proptest-regressions`): one layer whose hull has a single
/// increment, with a target its narrowest width already meets.
#[test]
fn regression_single_increment_layer() {
    let line = SqnrCurve::Linear {
        kappa_db_per_bit: 0.5,
        offset_db: 0.0,
    };
    let layers = [LayerSpec::new("l1", 1, line).bits_range(1..=2)];
    let budget = Budget::MinSqnrDb(0.0);
    let a = allocate_bits(&layers, budget).unwrap();
    assert_eq!(
        Some(a.model_bits()),
        reference(&layers, budget).map(|r| r.0)
    );
    assert_eq!(a.bits(), [1]);
}
