//! Baselines: the paper's rounded closed form (Eq. 15) and equal bit-widths.

// `!(a <= b)` is deliberate: a NaN must count as a failed comparison.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::{Allocation, Goal, LayerSpec, Solver, Span, evaluate, layer_noise, make_allocation};
use crate::error::{Error, Result};

/// Largest magnitude of a closed-form width offset, in bits.
const MAX_OFFSET: f64 = 256.0;

/// [`Solver::PaperClosedForm`]; the procedure is documented there.
pub(crate) fn closed_form(layers: &[LayerSpec], spans: &[Span], goal: &Goal) -> Result<Allocation> {
    let n = layers.len();
    let mut base = vec![0u32; n];
    let mut free: Vec<(usize, f64, f64)> = Vec::new();
    for (i, (layer, span)) in layers.iter().zip(spans).enumerate() {
        if span.lo == span.hi {
            base[i] = span.lo;
        } else if span.cpb == 0 {
            base[i] = quietest(layer, span);
        } else {
            let (kappa, offset) = layer
                .curve()
                .line_fit(span.lo, span.hi)
                .unwrap_or((f64::NAN, 0.0));
            if !(kappa > 0.0 && kappa.is_finite() && offset.is_finite()) {
                return Err(Error::InvalidArgument {
                    name: "curve",
                    reason: format!(
                        "layer {i} ({:?}): the paper's closed form needs a positive slope, \
                         fitted kappa = {kappa} dB/bit",
                        layer.name()
                    ),
                });
            }
            free.push((i, kappa, offset));
        }
    }
    // Continuous water-filling: eta_i = C * q_i / Q with q_i = rho_i / kappa_i.
    let mut fixed_bits = base.clone();
    for &(i, _, _) in &free {
        fixed_bits[i] = spans[i].lo;
    }
    let q: Vec<f64> = free
        .iter()
        .map(|&(i, k, _)| spans[i].cpb as f64 / k)
        .collect();
    let q_sum: f64 = q.iter().sum();
    let (mut fixed_cost, mut fixed_noise) = (0u64, 0.0);
    for (i, (layer, span)) in layers.iter().zip(spans).enumerate() {
        if !free.iter().any(|f| f.0 == i) {
            fixed_cost = fixed_cost.saturating_add(span.cpb.saturating_mul(u64::from(base[i])));
            fixed_noise += layer_noise(layer, base[i]);
        }
    }
    let log_c = match *goal {
        Goal::MinSqnr { max_noise, .. } => {
            let c = max_noise - fixed_noise;
            if c > 0.0 && c.is_finite() {
                c.log10()
            } else {
                0.0
            }
        }
        Goal::MaxBits { max_bits, .. } => {
            // sum_i rho_i b_i* = K - 10 log10(C) Q, solved for log10(C).
            let k: f64 = free
                .iter()
                .zip(&q)
                .map(|(&(i, kappa, o), &qi)| {
                    spans[i].cpb as f64 * (-10.0 * (qi / q_sum).log10() - o) / kappa
                })
                .sum();
            let budget = max_bits as f64 - fixed_cost as f64;
            (k - budget) / (10.0 * q_sum)
        }
    };
    let continuous: Vec<f64> = free
        .iter()
        .zip(&q)
        .map(|(&(_, kappa, o), &qi)| (-10.0 * (log_c + (qi / q_sum).log10()) - o) / kappa)
        .collect();
    let offsets: Vec<i64> = continuous
        .iter()
        .map(|&b| {
            let d = b - continuous.first().copied().unwrap_or(0.0);
            if d.is_finite() {
                d.round().clamp(-MAX_OFFSET, MAX_OFFSET) as i64
            } else {
                0
            }
        })
        .collect();
    let widths = |s: i64| -> Vec<u32> {
        let mut bits = base.clone();
        for (&(i, _, _), &d) in free.iter().zip(&offsets) {
            bits[i] = (d + s).clamp(i64::from(spans[i].lo), i64::from(spans[i].hi)) as u32;
        }
        bits
    };
    let s_min = free
        .iter()
        .zip(&offsets)
        .map(|(f, &d)| i64::from(spans[f.0].lo) - d)
        .min()
        .unwrap_or(0);
    let s_max = free
        .iter()
        .zip(&offsets)
        .map(|(f, &d)| i64::from(spans[f.0].hi) - d)
        .max()
        .unwrap_or(0);
    let monotone = free.iter().all(|&(i, _, _)| {
        (spans[i].lo..spans[i].hi)
            .all(|b| layer_noise(&layers[i], b + 1) <= layer_noise(&layers[i], b))
    });
    let pick = shift_search(layers, spans, goal, s_min, s_max, monotone, &widths)?;
    Ok(make_allocation(
        layers,
        spans,
        widths(pick),
        Solver::PaperClosedForm,
        None,
    ))
}

/// [`Solver::EqualBits`]: one width for every non-pinned layer, clamped to its range.
pub(crate) fn equal_bits(layers: &[LayerSpec], spans: &[Span], goal: &Goal) -> Result<Allocation> {
    let free = spans.iter().filter(|s| !s.pinned);
    let w_min = free.clone().map(|s| s.lo).min().unwrap_or(1);
    let w_max = free.map(|s| s.hi).max().unwrap_or(1);
    let widths = |w: i64| -> Vec<u32> {
        spans
            .iter()
            .map(|s| {
                if s.pinned {
                    s.lo
                } else {
                    (w.clamp(i64::from(s.lo), i64::from(s.hi))) as u32
                }
            })
            .collect()
    };
    let monotone = layers
        .iter()
        .zip(spans)
        .all(|(l, s)| s.pinned || (s.lo..s.hi).all(|b| layer_noise(l, b + 1) <= layer_noise(l, b)));
    let pick = shift_search(
        layers,
        spans,
        goal,
        i64::from(w_min),
        i64::from(w_max),
        monotone,
        &widths,
    )?;
    Ok(make_allocation(
        layers,
        spans,
        widths(pick),
        Solver::EqualBits,
        None,
    ))
}

/// The smallest shift in `lo..=hi` that meets a SQNR target, or the largest within a size; `widths(s)`
/// is nondecreasing in `s`, so sizes are too, and so is the SQNR when `monotone`.
fn shift_search(
    layers: &[LayerSpec],
    spans: &[Span],
    goal: &Goal,
    lo: i64,
    hi: i64,
    monotone: bool,
    widths: &dyn Fn(i64) -> Vec<u32>,
) -> Result<i64> {
    let eval = |s: i64| evaluate(layers, spans, &widths(s));
    match *goal {
        Goal::MinSqnr { max_noise, .. } => {
            if monotone {
                let (_, best) = eval(hi);
                if !(best <= max_noise) {
                    return Err(goal.infeasible(best, eval(lo).0));
                }
                let (mut a, mut b) = (lo, hi); // b feasible
                while a < b {
                    let mid = a + (b - a) / 2;
                    if eval(mid).1 <= max_noise {
                        b = mid
                    } else {
                        a = mid + 1
                    }
                }
                Ok(b)
            } else {
                let mut best = f64::INFINITY;
                for s in lo..=hi {
                    let (_, noise) = eval(s);
                    if noise <= max_noise {
                        return Ok(s);
                    }
                    best = best.min(noise);
                }
                Err(goal.infeasible(best, eval(lo).0))
            }
        }
        Goal::MaxBits { max_bits, .. } => {
            let (min_cost, _) = eval(lo);
            if min_cost > max_bits {
                return Err(goal.infeasible(eval(hi).1, min_cost));
            }
            let (mut a, mut b) = (lo, hi); // a feasible
            while a < b {
                let mid = a + (b - a + 1) / 2;
                if eval(mid).0 <= max_bits {
                    a = mid
                } else {
                    b = mid - 1
                }
            }
            Ok(a)
        }
    }
}

/// The least noisy width of a layer (the narrowest among equals).
fn quietest(layer: &LayerSpec, span: &Span) -> u32 {
    let mut best = (span.lo, layer_noise(layer, span.lo));
    for b in span.lo + 1..=span.hi {
        let eta = layer_noise(layer, b);
        if eta < best.1 {
            best = (b, eta);
        }
    }
    best.0
}
