//! Test support for downstream crates (feature `proptest`): proptest strategies for layer sets, curves
//! and budgets, and the invariants of [`crate::alloc`] as reusable checks.
//!
//! Every check returns `Result<(), TestCaseError>`, so it can be used with `?` inside `proptest!`.
//!
//! # Example
//! ```
//! use fixq::testing::{check_against_exhaustive, instance};
//! use proptest::prelude::*;
//! proptest!(ProptestConfig::with_cases(8), |((layers, budget) in instance(3, 4))| {
//!     let result = fixq::allocate_bits(&layers, budget);
//!     check_against_exhaustive(&layers, budget, &result)?;
//! });
//! ```

// `!(a <= b)` is deliberate: a NaN must count as a failed comparison.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::alloc::{Goal, evaluate, validate};
use crate::{Allocation, Budget, Error, LayerSpec, Result, SqnrCurve};

/// Largest number of allocations the exhaustive checks enumerate.
pub const EXHAUSTIVE_MAX: u64 = 10_000_000;

/// Relative tolerance on noise powers when comparing with the exhaustive optimum.
pub const NOISE_RTOL: f64 = 1e-12;

// ---------------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------------

/// A curve: linear (slope 0.5 to 8 dB/bit), or an irregular table of 1 to `max_widths` values from a
/// random walk (steps of -4 to +9 dB, so neither concave nor monotone in general).
pub fn curve(max_widths: usize) -> impl Strategy<Value = SqnrCurve> {
    let max_widths = max_widths.clamp(1, 64);
    prop_oneof![
        (0.5f64..8.0, -10.0f64..10.0).prop_map(|(kappa_db_per_bit, offset_db)| SqnrCurve::Linear {
            kappa_db_per_bit,
            offset_db
        }),
        (
            1u32..=8,
            -5.0f64..20.0,
            prop::collection::vec(-4.0f64..9.0, 0..max_widths)
        )
            .prop_map(|(min_bits, start, steps)| {
                let mut values = vec![start];
                for step in steps {
                    let next = values[values.len() - 1] + step;
                    values.push(next);
                }
                SqnrCurve::Table {
                    min_bits,
                    sqnr_db: values,
                }
            }),
    ]
}

/// One layer: `params` in `0..=5000` (with `cost_per_bit(0)` when 0, and sometimes for others), a
/// [`curve`], an allowed range of at most `max_widths` widths inside the curve's domain, pinned with
/// probability 1/8.
pub fn layer_spec(max_widths: usize) -> impl Strategy<Value = LayerSpec> {
    let max_widths = max_widths.clamp(1, 64) as u32;
    (
        curve(max_widths as usize),
        0u64..=5000,
        any::<u32>(),
        any::<u32>(),
        0u8..8,
        0u8..8,
    )
        .prop_map(move |(curve, params, r1, r2, pin, free_cost)| {
            let (first, last) = match &curve {
                SqnrCurve::Linear { .. } => (1, 16),
                SqnrCurve::Table { min_bits, sqnr_db } => {
                    (*min_bits, min_bits + sqnr_db.len() as u32 - 1)
                }
            };
            let span = (last - first + 1).min(max_widths);
            let len = 1 + r1 % span;
            let lo = first + r2 % (last - first + 2 - len);
            let hi = lo + len - 1;
            let mut spec = LayerSpec::new("layer", params, curve).bits_range(lo..=hi);
            if pin == 0 {
                spec = spec.pinned(lo + r1 % len);
            }
            if params == 0 || free_cost == 0 {
                spec = spec.cost_per_bit(0);
            }
            spec
        })
}

/// 1 to `max_layers` layers from [`layer_spec`].
pub fn layer_specs(max_layers: usize, max_widths: usize) -> impl Strategy<Value = Vec<LayerSpec>> {
    prop::collection::vec(layer_spec(max_widths), 1..=max_layers.max(1))
}

/// A budget for `layers`: a SQNR target or a size drawn around the reachable range (so some are
/// infeasible), or an average number of bits per parameter.
pub fn budget_for(layers: &[LayerSpec]) -> BoxedStrategy<Budget> {
    let (mut min_bits, mut max_bits) = (0u64, 0u64);
    for layer in layers {
        let cost = layer.model_cost_per_bit();
        let range = layer.allowed_bits();
        let (lo, hi) = layer
            .pinned_bits()
            .map_or((*range.start(), *range.end()), |p| (p, p));
        min_bits = min_bits.saturating_add(cost.saturating_mul(u64::from(lo)));
        max_bits = max_bits.saturating_add(cost.saturating_mul(u64::from(hi)));
    }
    let size_hi = max_bits.saturating_add(max_bits / 8).saturating_add(1);
    let size_lo = min_bits.saturating_sub(min_bits / 8);
    // Output SQNR with every layer at its narrowest width, and at its best width.
    let (mut worst, mut best) = (0.0f64, 0.0f64);
    for layer in layers {
        let range = layer.allowed_bits();
        let (lo, hi) = layer
            .pinned_bits()
            .map_or((*range.start(), *range.end()), |p| (p, p));
        let eta = |b: u32| crate::alloc::noise_from_db(layer.curve().sqnr_db(b).unwrap_or(0.0));
        worst += eta(lo);
        best += (lo..=hi).map(eta).fold(f64::INFINITY, f64::min);
    }
    let (worst_db, best_db) = (-10.0 * worst.log10(), -10.0 * best.log10());
    prop_oneof![
        1 => (-20.0f64..70.0).prop_map(Budget::MinSqnrDb),
        4 => (-0.1f64..1.1).prop_map(move |u| Budget::MinSqnrDb(worst_db + u * (best_db - worst_db))),
        4 => (size_lo..=size_hi).prop_map(Budget::MaxModelBits),
        1 => (0.0f64..18.0).prop_map(Budget::AvgBitsPerParam),
    ]
    .boxed()
}

/// Layers from [`layer_specs`] with a budget from [`budget_for`].
pub fn instance(
    max_layers: usize,
    max_widths: usize,
) -> impl Strategy<Value = (Vec<LayerSpec>, Budget)> {
    layer_specs(max_layers, max_widths).prop_flat_map(|layers| {
        let budget = budget_for(&layers);
        (Just(layers), budget)
    })
}

// Tensors drawn from each distribution family (Gaussian, Laplacian, Gamma, Uniform, heavy tails), and
// the curves measured on them, are to be added here once `dist::Family` lands.

// ---------------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------------

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// The optimum by exhaustive search: `Ok(None)` if no allocation meets the budget, else the optimal
/// widths with their `(model bits, noise)`. Ties on the objective go to the better other measure, then
/// to the first in lexicographic order of widths.
///
/// # Errors
/// The validation errors of [`crate::allocate_bits`]; [`Error::InvalidArgument`] if there are more than
/// [`EXHAUSTIVE_MAX`] allocations.
pub fn exhaustive_optimum(
    layers: &[LayerSpec],
    budget: Budget,
) -> Result<Option<(Vec<u32>, u64, f64)>> {
    let spans = validate(layers)?;
    let goal = Goal::resolve(layers, &spans, budget)?;
    let count = spans
        .iter()
        .try_fold(1u64, |acc, s| acc.checked_mul(u64::from(s.hi - s.lo + 1)));
    if count.is_none_or(|c| c > EXHAUSTIVE_MAX) {
        return Err(Error::InvalidArgument {
            name: "layers",
            reason: format!("more than {EXHAUSTIVE_MAX} allocations to enumerate"),
        });
    }
    let mut bits: Vec<u32> = spans.iter().map(|s| s.lo).collect();
    let mut best: Option<(Vec<u32>, u64, f64)> = None;
    loop {
        let (cost, noise) = evaluate(layers, &spans, &bits);
        let (feasible, better) = match goal {
            Goal::MinSqnr { max_noise, .. } => (
                noise <= max_noise,
                best.as_ref()
                    .is_none_or(|b| cost < b.1 || (cost == b.1 && noise < b.2)),
            ),
            Goal::MaxBits { max_bits, .. } => (
                cost <= max_bits,
                best.as_ref()
                    .is_none_or(|b| noise < b.2 || (noise == b.2 && cost < b.1)),
            ),
        };
        if feasible && better {
            best = Some((bits.clone(), cost, noise));
        }
        // Next combination, last layer fastest.
        let mut i = bits.len();
        loop {
            if i == 0 {
                return Ok(best);
            }
            i -= 1;
            if bits[i] < spans[i].hi {
                bits[i] += 1;
                break;
            }
            bits[i] = spans[i].lo;
        }
    }
}

/// Checks that `alloc` is internally consistent with `layers`: one width per layer inside its range
/// (the pinned width if pinned), `model_bits` and `predicted_sqnr_db` as recomputed, noise shares in
/// `[0, 1]` summing to 1.
pub fn check_allocation_consistent(
    layers: &[LayerSpec],
    alloc: &Allocation,
) -> Result<(), TestCaseError> {
    let spans = validate(layers).map_err(|e| fail(e.to_string()))?;
    if alloc.bits().len() != layers.len() || alloc.noise_share().len() != layers.len() {
        return Err(fail(
            "allocation length differs from the number of layers".into(),
        ));
    }
    for (i, (s, &b)) in spans.iter().zip(alloc.bits()).enumerate() {
        if b < s.lo || b > s.hi {
            return Err(fail(format!(
                "layer {i}: width {b} outside {}..={}",
                s.lo, s.hi
            )));
        }
    }
    let (cost, noise) = evaluate(layers, &spans, alloc.bits());
    if cost != alloc.model_bits() {
        return Err(fail(format!(
            "model_bits {} but widths cost {cost}",
            alloc.model_bits()
        )));
    }
    let db = -10.0 * noise.log10();
    if (db - alloc.predicted_sqnr_db()).abs() > 1e-9 * db.abs().max(1.0) {
        return Err(fail(format!(
            "predicted_sqnr_db {} but widths give {db}",
            alloc.predicted_sqnr_db()
        )));
    }
    let sum: f64 = alloc.noise_share().iter().sum();
    if (sum - 1.0).abs() > 1e-9 || alloc.noise_share().iter().any(|s| !(0.0..=1.0).contains(s)) {
        return Err(fail(format!("noise shares sum to {sum} or leave [0, 1]")));
    }
    Ok(())
}

/// Checks that `alloc` meets `budget` (and is consistent, see [`check_allocation_consistent`]).
pub fn check_budget_met(
    layers: &[LayerSpec],
    budget: Budget,
    alloc: &Allocation,
) -> Result<(), TestCaseError> {
    check_allocation_consistent(layers, alloc)?;
    let spans = validate(layers).map_err(|e| fail(e.to_string()))?;
    let goal = Goal::resolve(layers, &spans, budget).map_err(|e| fail(e.to_string()))?;
    let (cost, noise) = evaluate(layers, &spans, alloc.bits());
    match goal {
        Goal::MinSqnr {
            max_noise,
            target_db,
        } if !(noise <= max_noise) => Err(fail(format!(
            "output SQNR {} dB below the target {target_db} dB",
            alloc.predicted_sqnr_db()
        ))),
        Goal::MaxBits { max_bits, .. } if cost > max_bits => Err(fail(format!(
            "model size {cost} bits above the budget {max_bits}"
        ))),
        _ => Ok(()),
    }
}

/// Checks that `alloc` meets `budget` and reaches the exhaustive optimum: the same model size for a SQNR
/// target, the same noise (within [`NOISE_RTOL`]) for a size budget. Small instances only (see
/// [`exhaustive_optimum`]).
pub fn check_allocation_optimal(
    layers: &[LayerSpec],
    budget: Budget,
    alloc: &Allocation,
) -> Result<(), TestCaseError> {
    check_budget_met(layers, budget, alloc)?;
    let best = exhaustive_optimum(layers, budget)
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("exhaustive search finds no feasible allocation".into()))?;
    let spans = validate(layers).map_err(|e| fail(e.to_string()))?;
    let (cost, noise) = evaluate(layers, &spans, alloc.bits());
    let ok = match budget {
        Budget::MinSqnrDb(_) => cost == best.1,
        _ => noise <= best.2 * (1.0 + NOISE_RTOL),
    };
    if ok {
        Ok(())
    } else {
        Err(fail(format!(
            "not optimal: widths {:?} give ({cost} bits, noise {noise}), exhaustive {:?} gives ({} bits, \
             noise {})",
            alloc.bits(),
            best.0,
            best.1,
            best.2
        )))
    }
}

/// Checks a solver's `result` against exhaustive search: `Err(Infeasible)` exactly when no allocation
/// meets the budget, with `nearest` the best reachable value; otherwise an optimal allocation (see
/// [`check_allocation_optimal`]). For [`crate::Solver::Exact`].
pub fn check_against_exhaustive(
    layers: &[LayerSpec],
    budget: Budget,
    result: &Result<Allocation>,
) -> Result<(), TestCaseError> {
    let best = exhaustive_optimum(layers, budget).map_err(|e| fail(e.to_string()))?;
    match (best, result) {
        (None, Err(Error::Infeasible { .. })) => Ok(()),
        (None, other) => Err(fail(format!(
            "exhaustive search finds nothing but the solver gave {other:?}"
        ))),
        (Some(_), Ok(alloc)) => check_allocation_optimal(layers, budget, alloc),
        (Some(b), Err(e)) => Err(fail(format!(
            "solver failed with {e} but {:?} is feasible",
            b.0
        ))),
    }
}

/// Checks that a [`crate::GapBound`] on `alloc` holds against the optimum `optimum` (for instance from
/// [`crate::Solver::Exact`] or [`exhaustive_optimum`]) under `budget`.
pub fn check_gap_bound(alloc: &Allocation, optimum: &Allocation) -> Result<(), TestCaseError> {
    match alloc.gap_bound() {
        None => Ok(()),
        Some(crate::GapBound::ModelBits(gap)) => {
            if alloc.model_bits() <= optimum.model_bits().saturating_add(gap) {
                Ok(())
            } else {
                Err(fail(format!(
                    "gap bound {gap} bits violated: {} vs optimum {}",
                    alloc.model_bits(),
                    optimum.model_bits()
                )))
            }
        }
        Some(crate::GapBound::SqnrDb(gap)) => {
            let slack = 1e-9 * optimum.predicted_sqnr_db().abs().max(1.0);
            if alloc.predicted_sqnr_db() + gap + slack >= optimum.predicted_sqnr_db() {
                Ok(())
            } else {
                Err(fail(format!(
                    "gap bound {gap} dB violated: {} vs optimum {}",
                    alloc.predicted_sqnr_db(),
                    optimum.predicted_sqnr_db()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Solver, allocate_bits, allocate_bits_with};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn exact_matches_exhaustive((layers, budget) in instance(6, 10)) {
            let result = allocate_bits(&layers, budget);
            check_against_exhaustive(&layers, budget, &result)?;
            if let Ok(alloc) = &result {
                prop_assert_eq!(alloc.gap_bound().map(|g| g.is_zero()), Some(true));
            }
        }

        #[test]
        fn hull_is_feasible_and_bounded((layers, budget) in instance(6, 10)) {
            let exact = allocate_bits(&layers, budget);
            let hull = allocate_bits_with(&layers, budget, Solver::Hull);
            match (&exact, &hull) {
                (Ok(e), Ok(h)) => {
                    check_budget_met(&layers, budget, h)?;
                    check_gap_bound(h, e)?;
                }
                (Err(Error::Infeasible { .. }), Err(Error::Infeasible { .. })) => {}
                _ => prop_assert!(false, "exact {:?} vs hull {:?}", exact, hull),
            }
        }

        #[test]
        fn baselines_meet_budget((layers, budget) in instance(5, 8)) {
            for solver in [Solver::EqualBits, Solver::PaperClosedForm] {
                match allocate_bits_with(&layers, budget, solver) {
                    Ok(alloc) => check_budget_met(&layers, budget, &alloc)?,
                    Err(Error::Infeasible { .. } | Error::InvalidArgument { .. }) => {}
                    Err(e) => prop_assert!(false, "{:?}: {}", solver, e),
                }
            }
        }
    }

    #[test]
    fn checks_reject_bad_allocations() {
        let c = SqnrCurve::Linear {
            kappa_db_per_bit: 3.0,
            offset_db: 0.0,
        };
        let layers = [
            LayerSpec::new("a", 10, c.clone()),
            LayerSpec::new("b", 40, c),
        ];
        let budget = Budget::MinSqnrDb(20.0);
        let good = allocate_bits(&layers, budget).unwrap();
        assert!(check_allocation_optimal(&layers, budget, &good).is_ok());
        let equal = allocate_bits_with(&layers, budget, Solver::EqualBits).unwrap();
        assert!(check_budget_met(&layers, budget, &equal).is_ok());
        assert!(check_allocation_optimal(&layers, budget, &equal).is_err());
        let loose = allocate_bits(&layers, Budget::MinSqnrDb(5.0)).unwrap();
        assert!(check_budget_met(&layers, budget, &loose).is_err());
        assert!(check_against_exhaustive(&layers, Budget::MinSqnrDb(200.0), &Ok(good)).is_err());
    }
}
