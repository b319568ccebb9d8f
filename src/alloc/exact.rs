//! The exact solver: hull relaxation, rounding, Lagrangian bound, reduced-cost fixing and a
//! dynamic program on the remaining core (see the module docs of [`crate::alloc`]).

// `!(a <= b)` is deliberate: a NaN must count as a failed comparison.
#![allow(clippy::neg_cmp_op_on_partial_ord)]
// Layer indices address several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use super::problem::{Problem, bits_of, nth_vertex};
use super::{Allocation, GapBound, Goal, LayerSpec, Solver, Span, assemble};
use crate::error::Result;

/// Above this many layers with a choice of width, [`Solver::Exact`](super::Solver::Exact) skips the
/// dynamic program and returns the rounded hull solution with its certified gap bound.
pub const EXACT_MAX_FREE_LAYERS: usize = 4_096;

/// Above this many core layers (layers left with more than one width after reduced-cost fixing),
/// [`Solver::Exact`](super::Solver::Exact) returns the rounded hull solution with its gap bound.
pub const EXACT_MAX_CORE_LAYERS: usize = 256;

/// Above this many dynamic-program states in all, [`Solver::Exact`](super::Solver::Exact) stops and
/// returns the rounded hull solution with its gap bound.
pub const EXACT_MAX_STATES: usize = 1 << 20;

/// Buckets per histogram pass of the split selection.
const HIST_BUCKETS_LOG2: u32 = 12;
/// A bucket with at most this many increments is sorted rather than split further.
const COLLECT_MAX: u32 = 1 << 14;
/// Most candidate moves the greedy improvement sorts per pass.
const IMPROVE_MAX_MOVES: usize = 1 << 14;
/// Relative slack kept by pruning tests, so that floating-point rounding never removes an optimum.
const PRUNE_TOL: f64 = 1e-9;
/// Relative margin of the chord bound that lets the greedy improvement skip a layer.
const SKIP_MARGIN: f64 = 1e-9;
/// Relative margin taken off the Lagrangian bound before it is reported.
const BOUND_MARGIN: f64 = 1e-12;

/// Which budget the solve works under, with the caps in the units the solver uses.
#[derive(Clone, Copy)]
enum Kind {
    /// Minimise cost subject to noise `<= max_noise`.
    MinCost { max_noise: f64 },
    /// Minimise noise subject to cost `<= max_bits`.
    MinNoise { max_bits: u64 },
}

impl Kind {
    /// The objective value of `(cost, noise)`.
    #[inline]
    fn primary(self, cost: u64, noise: f64) -> f64 {
        match self {
            Kind::MinCost { .. } => cost as f64,
            Kind::MinNoise { .. } => noise,
        }
    }
    /// The constrained value of `(cost, noise)`.
    #[inline]
    fn secondary(self, cost: u64, noise: f64) -> f64 {
        match self {
            Kind::MinCost { .. } => noise,
            Kind::MinNoise { .. } => cost as f64,
        }
    }
    /// The cap on the secondary value.
    fn cap(self) -> f64 {
        match self {
            Kind::MinCost { max_noise } => max_noise,
            Kind::MinNoise { max_bits } => max_bits as f64,
        }
    }
    /// Whether `(cost, noise)` meets the budget.
    #[inline]
    fn feasible(self, cost: u64, noise: f64) -> bool {
        match self {
            Kind::MinCost { max_noise } => noise <= max_noise,
            Kind::MinNoise { max_bits } => cost <= max_bits,
        }
    }
    /// `true` if `a` is strictly better than `b` (objective, then the other measure).
    fn better(self, a: (u64, f64), b: (u64, f64)) -> bool {
        match self {
            Kind::MinCost { .. } => a.0 < b.0 || (a.0 == b.0 && a.1 < b.1),
            Kind::MinNoise { .. } => a.1 < b.1 || (a.1 == b.1 && a.0 < b.0),
        }
    }
}

/// Solves `goal`; `dp` enables the exact phase (reduced-cost fixing and dynamic program).
pub(crate) fn solve(
    layers: &[LayerSpec],
    spans: &[Span],
    goal: &Goal,
    dp: bool,
) -> Result<Allocation> {
    let solver = if dp { Solver::Exact } else { Solver::Hull };
    let kind = match *goal {
        Goal::MinSqnr { max_noise, .. } => Kind::MinCost { max_noise },
        Goal::MaxBits { max_bits, .. } => Kind::MinNoise { max_bits },
    };
    let by_noise = matches!(kind, Kind::MinCost { .. });
    let pb = Problem::build(layers, spans, Some(by_noise));
    let (min_cost, first_noise) = pb.first;
    let (last_cost, best_noise) = pb.last;
    let done = |pos: &[u8], gap: GapBound| {
        let (widths, noises) = pb.widths_noises(pos);
        assemble(spans, widths, noises, solver, Some(gap))
    };
    match kind {
        Kind::MinCost { max_noise } => {
            if !(best_noise <= max_noise) {
                return Err(goal.infeasible(best_noise, min_cost));
            }
            if first_noise <= max_noise {
                return Ok(done(&pb.first_positions(), GapBound::ModelBits(0)));
            }
        }
        Kind::MinNoise { max_bits } => {
            if min_cost > max_bits {
                return Err(goal.infeasible(best_noise, min_cost));
            }
            if last_cost <= max_bits {
                return Ok(done(&pb.last_positions(), GapBound::SqnrDb(0.0)));
            }
        }
    }

    // Relaxation: the split increment and the rounded positions.
    let (target, inclusive) = match kind {
        Kind::MinCost { max_noise } => (first_noise - max_noise, true),
        Kind::MinNoise { max_bits } => ((max_bits - min_cost) as f64, false),
    };
    let split = select_split(&pb, target, inclusive);
    // The multiplier: the split increment's efficiency (noise removed per model bit), exactly.
    let lambda = match split {
        Some(s) => {
            let (from, to) = (
                nth_vertex(pb.hull[s.layer], s.t) as usize,
                nth_vertex(pb.hull[s.layer], s.t + 1) as usize,
            );
            let d_noise = pb.vertex_noise(s.layer, s.t) - pb.vertex_noise(s.layer, s.t + 1);
            let d_cost = (pb.cost(s.layer, to) - pb.cost(s.layer, from)) as f64;
            if by_noise {
                d_cost / d_noise
            } else {
                d_noise / d_cost
            }
        }
        None => 0.0,
    };
    // Rounded positions and, per layer, the minimum of the Lagrangian; on the convex hull it is found
    // by a local walk from the relaxed position. The minima are kept only if the exact phase may run.
    let keep_mins = dp && pb.free_layers <= EXACT_MAX_FREE_LAYERS;
    let mut mins: Vec<f64> = Vec::with_capacity(if keep_mins { pb.len() } else { 0 });
    let mut sum_mins = 0.0;
    let mut pos = vec![0u8; pb.len()];
    for (i, p) in pos.iter_mut().enumerate() {
        let rank = match split {
            Some(s) => taken(&pb, i, s, inclusive),
            None => pb.vertices(i) - 1,
        };
        *p = nth_vertex(pb.hull[i], rank);
        let min = lagrangian_min(&pb, kind, lambda, i, rank);
        sum_mins += min;
        if keep_mins {
            mins.push(min);
        }
    }
    let state = repair(&pb, kind, &mut pos);
    let (inc_cost, inc_noise) = improve(&pb, kind, &mut pos, state);

    let dual = sum_mins - lambda * kind.cap();
    let scale = sum_mins.abs() + (lambda * kind.cap()).abs();
    let trivial = match kind {
        Kind::MinCost { .. } => min_cost as f64,
        Kind::MinNoise { .. } => best_noise,
    };
    let lower = (dual - BOUND_MARGIN * scale).max(trivial);
    let gap = match kind {
        Kind::MinCost { .. } => GapBound::ModelBits(inc_cost.saturating_sub(lower.ceil() as u64)),
        Kind::MinNoise { .. } => GapBound::SqnrDb((10.0 * (inc_noise / lower).log10()).max(0.0)),
    };
    if gap.is_zero() || !keep_mins {
        return Ok(done(&pos, gap));
    }
    let proven = Dual {
        lambda,
        mins: &mins,
        dual,
        scale,
    };
    match exact_core(&pb, kind, &pos, (inc_cost, inc_noise), &proven) {
        Some(best) => Ok(done(&best, zero_gap(kind))),
        None => Ok(done(&pos, gap)),
    }
}

fn zero_gap(kind: Kind) -> GapBound {
    match kind {
        Kind::MinCost { .. } => GapBound::ModelBits(0),
        Kind::MinNoise { .. } => GapBound::SqnrDb(0.0),
    }
}

#[inline]
fn lagrangian(kind: Kind, lambda: f64, cost: u64, noise: f64) -> f64 {
    kind.primary(cost, noise) + lambda * kind.secondary(cost, noise)
}

/// `min_j primary + lambda * secondary` over the points of layer `i`: the minimum over hull vertices,
/// found by walking from vertex `rank` while the value decreases (the values along the lower hull are
/// convex, up to rounding, which the bound's margin absorbs).
fn lagrangian_min(pb: &Problem, kind: Kind, lambda: f64, i: usize, rank: usize) -> f64 {
    let hull = pb.hull[i];
    let len = pb.vertices(i);
    let (cpb, lo) = (pb.cpb(i), u64::from(pb.width(i, 0)));
    let value = |r: usize, t: u32| {
        lagrangian(
            kind,
            lambda,
            cpb * (lo + u64::from(t)),
            pb.vertex_noise(i, r),
        )
    };
    let mut a = rank.min(len - 1);
    let mut t = u32::from(nth_vertex(hull, a));
    let mut best = value(a, t);
    while a + 1 < len {
        // The next vertex: the lowest hull bit above t.
        let next_t = (hull & (u64::MAX << t << 1)).trailing_zeros();
        let next = value(a + 1, next_t);
        if next >= best {
            break;
        }
        best = next;
        a += 1;
        t = next_t;
    }
    while a > 0 {
        // The previous vertex: the highest hull bit below t.
        let prev_t = 63 - (hull & ((1u64 << t) - 1)).leading_zeros();
        let prev = value(a - 1, prev_t);
        if prev >= best {
            break;
        }
        best = prev;
        a -= 1;
        t = prev_t;
    }
    best
}

/// The increment where the greedy relaxation meets the budget: increment `t` of layer `layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    key: u32,
    layer: usize,
    t: usize,
}

impl Split {
    /// Whether increment `(key, layer, t)` comes before this one in the greedy order
    /// (key descending, then layer, then position in the layer).
    #[inline]
    fn after(&self, key: u32, layer: usize, t: usize) -> bool {
        key > self.key || (key == self.key && (layer, t) < (self.layer, self.t))
    }
}

/// Walks the hull increments of all layers in greedy order (key descending, then layer, then `t`),
/// accumulating their weights, and returns the first increment at which the total reaches `target`
/// (`inclusive`) or exceeds it. Weighted radix selection: histogram passes over the keys narrow the
/// range to one bucket, which is then sorted; `O(m)` for `m` increments.
fn select_split(pb: &Problem, target: f64, inclusive: bool) -> Option<Split> {
    let keys = &pb.inc_key;
    let weights = &pb.inc_weight;
    if keys.is_empty() {
        return None;
    }
    let (mut lo, mut hi) = pb.key_range;
    let crosses = |cum: f64| {
        if inclusive {
            cum >= target
        } else {
            cum > target
        }
    };
    let mut above = 0.0; // weight of increments with key > hi
    let mut hist_w = vec![0.0f64; 1 << HIST_BUCKETS_LOG2];
    let mut hist_n = vec![0u32; 1 << HIST_BUCKETS_LOG2];
    while lo < hi {
        let range = hi - lo;
        let shift = (32 - range.leading_zeros()).saturating_sub(HIST_BUCKETS_LOG2);
        let buckets = ((range >> shift) + 1) as usize;
        hist_w[..buckets].fill(0.0);
        hist_n[..buckets].fill(0);
        for (&key, &w) in keys.iter().zip(weights) {
            // One unsigned comparison tests lo <= key <= hi.
            let b = (key.wrapping_sub(lo) >> shift) as usize;
            if key.wrapping_sub(lo) <= range {
                hist_w[b] += f64::from(w);
                hist_n[b] += 1;
            }
        }
        let mut found = None;
        for b in (0..buckets).rev() {
            if crosses(above + hist_w[b]) {
                found = Some(b);
                break;
            }
            above += hist_w[b];
        }
        let b = found?;
        let new_lo = lo + ((b as u32) << shift);
        let new_hi = hi.min(new_lo.saturating_add((1u32 << shift) - 1));
        let small = hist_n[b] <= COLLECT_MAX || shift == 0;
        (lo, hi) = (new_lo, new_hi);
        if small {
            break;
        }
    }
    // Collect the bucket in (layer, t) order and order it by key, stably.
    let mut items: Vec<(u32, usize, usize, f32)> = Vec::new();
    for i in 0..pb.len() {
        let base = pb.inc_offset(i);
        for (t, &key) in pb.inc_keys(i).iter().enumerate() {
            if key >= lo && key <= hi {
                items.push((key, i, t, weights[base + t]));
            }
        }
    }
    items.sort_by_key(|a| std::cmp::Reverse(a.0));
    let mut cum = above;
    for &(key, layer, t, w) in &items {
        cum += f64::from(w);
        if crosses(cum) {
            return Some(Split { key, layer, t });
        }
    }
    // Rounding made the sums disagree; the last increment of the bucket is the nearest split.
    items
        .last()
        .map(|&(key, layer, t, _)| Split { key, layer, t })
}

/// Number of hull increments of layer `i` taken by the relaxation: those before the split in greedy
/// order, and the split itself if `inclusive`. Their keys are non-increasing, so the count stops at
/// the first increment not taken.
#[inline]
fn taken(pb: &Problem, i: usize, split: Split, inclusive: bool) -> usize {
    let keys = pb.inc_keys(i);
    let mut taken = 0;
    for (t, &key) in keys.iter().enumerate() {
        let take = split.after(key, i, t)
            || (inclusive && (key, i, t) == (split.key, split.layer, split.t));
        if !take {
            break;
        }
        taken += 1;
    }
    taken
}

/// Makes `pos` (hull vertices) feasible after rounding error: steps along the hulls in greedy order
/// until the budget holds, and after 64 steps falls back to the extreme point that is feasible.
/// Returns the canonical `(model bits, noise)` of the final `pos`.
fn repair(pb: &Problem, kind: Kind, pos: &mut [u8]) -> (u64, f64) {
    for _ in 0..64 {
        let (cost, noise) = pb.evaluate(pos);
        if kind.feasible(cost, noise) {
            return (cost, noise);
        }
        // MinCost: take the most efficient next increment; MinNoise: drop the least efficient taken one.
        let mut best: Option<(u32, usize)> = None;
        for i in 0..pb.len() {
            let keys = pb.inc_keys(i);
            let t = pb.vertex_rank(i, pos[i] as usize);
            match kind {
                Kind::MinCost { .. } => {
                    if let Some(&key) = keys.get(t)
                        && best.is_none_or(|b| key > b.0)
                    {
                        best = Some((key, i));
                    }
                }
                Kind::MinNoise { .. } => {
                    if t > 0 && best.is_none_or(|b| keys[t - 1] < b.0) {
                        best = Some((keys[t - 1], i));
                    }
                }
            }
        }
        let Some((_, i)) = best else { break };
        let t = pb.vertex_rank(i, pos[i] as usize);
        pos[i] = match kind {
            Kind::MinCost { .. } => nth_vertex(pb.hull[i], t + 1),
            Kind::MinNoise { .. } => nth_vertex(pb.hull[i], t - 1),
        };
    }
    let (cost, noise) = pb.evaluate(pos);
    if !kind.feasible(cost, noise) {
        match kind {
            Kind::MinCost { .. } => pos.copy_from_slice(&pb.last_positions()),
            Kind::MinNoise { .. } => pos.copy_from_slice(&pb.first_positions()),
        }
        return pb.evaluate(pos);
    }
    (cost, noise)
}

/// Greedy use of the slack left by rounding, over all staircase points (not only hull vertices):
/// `MinCost` moves layers to cheaper points while the noise cap holds; `MinNoise` moves layers to less
/// noisy points while the size cap holds. Keeps `pos` feasible. `state` is the canonical `(model bits,
/// noise)` of `pos` on entry; returns that of `pos` on exit.
fn improve(pb: &Problem, kind: Kind, pos: &mut [u8], state: (u64, f64)) -> (u64, f64) {
    match kind {
        Kind::MinCost { max_noise } => improve_cost(pb, max_noise, pos, state),
        Kind::MinNoise { max_bits } => improve_noise(pb, max_bits, pos, state),
    }
}

/// [`improve`] for `MinCost`: cheaper points while the noise cap `max_noise` holds.
fn improve_cost(pb: &Problem, max_noise: f64, pos: &mut [u8], state: (u64, f64)) -> (u64, f64) {
    let n = pb.len();
    let noise = state.1;
    let slack = max_noise - noise;
    if !(slack > 0.0) {
        return state;
    }
    // Per layer, the cheapest point whose extra noise fits the slack (noise falls along the
    // staircase, so the points that fit are the ones just below `at`).
    let mut moves: Vec<(u64, f64, usize, usize)> = Vec::new();
    for i in 0..n {
        let at = pos[i] as usize;
        let (stair, hull) = (pb.stair[i], pb.hull[i]);
        let mut j = at;
        let below = stair & ((1u64 << at) - 1);
        if below != 0 && hull >> at & 1 == 1 {
            // `at` is a hull vertex and every staircase point lies on or above the hull, so
            // the chord to the previous vertex bounds the extra noise of the points between
            // them from below: skip the layer without recomputing their noise if even the
            // bound exceeds the slack (with a margin far above rounding error).
            let prev = 63 - below.leading_zeros() as usize;
            let rank = pb.vertex_rank(i, at);
            let a = 63 - (hull & ((1u64 << at) - 1)).leading_zeros() as usize;
            let rise = pb.vertex_noise(i, rank - 1) - pb.vertex_noise(i, rank);
            let bound = rise * (at - prev) as f64 / (at - a) as f64;
            if bound * (1.0 - SKIP_MARGIN) > slack {
                continue;
            }
        }
        let mut here = None;
        loop {
            let below = stair & ((1u64 << j) - 1);
            if below == 0 {
                break;
            }
            let prev = 63 - below.leading_zeros() as usize;
            let h = *here.get_or_insert_with(|| pb.noise(i, at));
            if !(pb.noise(i, prev) - h <= slack) {
                break;
            }
            j = prev;
        }
        if j < at {
            let here = pb.noise(i, at);
            moves.push((pb.cost(i, at) - pb.cost(i, j), pb.noise(i, j) - here, i, j));
        }
    }
    if moves.is_empty() {
        return state;
    }
    let order = |a: &(u64, f64, usize, usize), b: &(u64, f64, usize, usize)| {
        b.0.cmp(&a.0).then(a.2.cmp(&b.2))
    };
    if moves.len() > IMPROVE_MAX_MOVES {
        moves.select_nth_unstable_by(IMPROVE_MAX_MOVES, order);
        moves.truncate(IMPROVE_MAX_MOVES);
    }
    moves.sort_unstable_by(order);
    let mut undo: Vec<(usize, u8)> = Vec::new();
    let mut left = slack;
    for (_, extra, i, j) in moves {
        if extra <= left {
            left -= extra;
            undo.push((i, pos[i]));
            pos[i] = j as u8;
        }
    }
    if undo.is_empty() {
        return state;
    }
    let after = pb.evaluate(pos);
    if !(after.1 <= max_noise) {
        for &(i, t) in &undo {
            pos[i] = t;
        }
        return state;
    }
    after
}

/// [`improve`] for `MinNoise`: less noisy points while the size cap `max_bits` holds.
fn improve_noise(pb: &Problem, max_bits: u64, pos: &mut [u8], state: (u64, f64)) -> (u64, f64) {
    let n = pb.len();
    let cost = state.0;
    let mut left = max_bits - cost;
    let mut moved = false;
    for _ in 0..2 {
        if left == 0 {
            break;
        }
        // Per layer, the most efficient step up that fits.
        let mut moves: Vec<(f64, u64, usize, usize)> = Vec::new();
        for i in 0..n {
            let at = pos[i] as usize;
            let c0 = pb.cost(i, at);
            let mut e0 = None;
            let mut best: Option<(f64, u64, usize)> = None;
            for j in bits_of(pb.stair[i] & (u64::MAX << at << 1)) {
                let extra = pb.cost(i, j) - c0;
                if extra > left {
                    break;
                }
                let e0 = *e0.get_or_insert_with(|| pb.noise(i, at));
                let eff = (e0 - pb.noise(i, j)) / extra as f64;
                if best.is_none_or(|b| eff > b.0) {
                    best = Some((eff, extra, j));
                }
            }
            if let Some((eff, extra, j)) = best {
                moves.push((eff, extra, i, j));
            }
        }
        if moves.is_empty() {
            break;
        }
        // Only the best moves can be used before the budget runs out: keep the top few.
        let order = |a: &(f64, u64, usize, usize), b: &(f64, u64, usize, usize)| {
            b.0.total_cmp(&a.0).then(a.2.cmp(&b.2))
        };
        if moves.len() > IMPROVE_MAX_MOVES {
            moves.select_nth_unstable_by(IMPROVE_MAX_MOVES, order);
            moves.truncate(IMPROVE_MAX_MOVES);
        }
        moves.sort_unstable_by(order);
        for (_, extra, i, j) in moves {
            if extra <= left && j > pos[i] as usize {
                left -= extra;
                pos[i] = j as u8;
                moved = true;
            }
        }
    }
    if moved { pb.evaluate(pos) } else { state }
}

/// The Lagrangian dual at multiplier `lambda`: per-layer minima of `primary + lambda * secondary`.
struct Dual<'a> {
    lambda: f64,
    mins: &'a [f64],
    /// `sum(mins) - lambda * cap`.
    dual: f64,
    /// Magnitude of the terms of `dual`, for tolerances.
    scale: f64,
}

/// A point of a core layer: `(width offset, model bits, noise)`.
type Alternative = (usize, u64, f64);

/// Reduced-cost fixing and the dynamic program on the core. Returns the positions of a proven optimum,
/// or `None` if a size limit was hit.
/// The core of the problem: layers with more than one point whose reduced cost is within `gap` of
/// their Lagrangian minimum, with those points `(t, cost, noise)`. `None` if there is no core or it
/// is larger than [`EXACT_MAX_CORE_LAYERS`].
fn core_layers(
    pb: &Problem,
    kind: Kind,
    d: &Dual<'_>,
    gap: f64,
) -> Option<Vec<(usize, Vec<Alternative>)>> {
    let mut core: Vec<(usize, Vec<Alternative>)> = Vec::new();
    for i in 0..pb.len() {
        if pb.points(i) < 2 {
            continue;
        }
        let survivors: Vec<Alternative> = pb
            .stair_points(i)
            .map(|j| (j, pb.cost(i, j), pb.noise(i, j)))
            .filter(|&(_, c, e)| lagrangian(kind, d.lambda, c, e) - d.mins[i] <= gap)
            .collect();
        if survivors.len() > 1 {
            if core.len() == EXACT_MAX_CORE_LAYERS {
                return None;
            }
            core.push((i, survivors));
        }
    }
    (!core.is_empty()).then_some(core)
}

/// Cost, noise and Lagrangian of the fixed part: every non-core layer at its incumbent point.
fn fixed_part(
    pb: &Problem,
    kind: Kind,
    d: &Dual<'_>,
    incumbent: &[u8],
    core: &[(usize, Vec<Alternative>)],
) -> (u64, f64, f64) {
    let mut in_core = vec![false; pb.len()];
    for (i, _) in core {
        in_core[*i] = true;
    }
    let (mut base_cost, mut base_noise, mut base_lag) = (0u64, 0.0f64, 0.0f64);
    for i in (0..pb.len()).filter(|&i| !in_core[i]) {
        let j = incumbent[i] as usize;
        base_cost += pb.cost(i, j);
        let e = pb.noise(i, j);
        base_noise += e;
        base_lag += lagrangian(kind, d.lambda, pb.cost(i, j), e);
    }
    (base_cost, base_noise, base_lag)
}

/// Suffix sums over the core: Lagrangian minima, least cost, least noise of stages `t..`.
fn suffix_bounds(
    core: &[(usize, Vec<Alternative>)],
    d: &Dual<'_>,
) -> (Vec<f64>, Vec<u64>, Vec<f64>) {
    let k = core.len();
    let mut suf_min = vec![0.0; k + 1];
    let mut suf_cost = vec![0u64; k + 1];
    let mut suf_noise = vec![0.0; k + 1];
    for t in (0..k).rev() {
        let (i, ref alts) = core[t];
        suf_min[t] = suf_min[t + 1] + d.mins[i];
        suf_cost[t] = suf_cost[t + 1] + alts.iter().map(|a| a.1).min().unwrap_or(0);
        suf_noise[t] = suf_noise[t + 1] + alts.iter().map(|a| a.2).fold(f64::INFINITY, f64::min);
    }
    (suf_min, suf_cost, suf_noise)
}

fn exact_core(
    pb: &Problem,
    kind: Kind,
    incumbent: &[u8],
    inc: (u64, f64),
    d: &Dual<'_>,
) -> Option<Vec<u8>> {
    let inc_primary = kind.primary(inc.0, inc.1);
    let tol = PRUNE_TOL * (d.scale + inc_primary.abs()) + f64::MIN_POSITIVE;
    let gap = inc_primary - d.dual + tol;
    let core = core_layers(pb, kind, d, gap)?;
    let (base_cost, base_noise, base_lag) = fixed_part(pb, kind, d, incumbent, &core);
    let k = core.len();
    let (suf_min, suf_cost, suf_noise) = suffix_bounds(&core, d);
    let cap = kind.cap();
    let noise_slack = match kind {
        Kind::MinCost { max_noise } => max_noise * (1.0 + PRUNE_TOL),
        Kind::MinNoise { .. } => f64::INFINITY,
    };
    let cost_cap = match kind {
        Kind::MinCost { .. } => u64::MAX,
        Kind::MinNoise { max_bits } => max_bits,
    };

    // States: (cost, noise) of the core prefix; per stage, parent state and chosen point.
    let mut states: Vec<(u64, f64)> = vec![(0, 0.0)];
    let mut stages: Vec<(Vec<u32>, Vec<u8>)> = Vec::with_capacity(k);
    let mut stored = 0usize;
    let mut cand: Vec<(u64, f64, u32, u8)> = Vec::new();
    for t in 0..k {
        let (_, ref alts) = core[t];
        cand.clear();
        for (s, &(c, e)) in states.iter().enumerate() {
            for &(j, cj, ej) in alts {
                let (c2, e2) = (c + cj, e + ej);
                let total_cost = base_cost + c2;
                if total_cost.saturating_add(suf_cost[t + 1]) > cost_cap
                    || base_noise + e2 + suf_noise[t + 1] > noise_slack
                {
                    continue;
                }
                let bound =
                    base_lag + lagrangian(kind, d.lambda, c2, e2) + suf_min[t + 1] - d.lambda * cap;
                if bound > inc_primary + tol {
                    continue;
                }
                cand.push((c2, e2, s as u32, j as u8));
            }
        }
        cand.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        let mut next: Vec<(u64, f64)> = Vec::new();
        let mut parent = Vec::new();
        let mut choice = Vec::new();
        let mut last_noise = f64::INFINITY;
        for &(c, e, s, j) in &cand {
            if e < last_noise {
                last_noise = e;
                next.push((c, e));
                parent.push(s);
                choice.push(j);
            }
        }
        stored += next.len();
        if stored > EXACT_MAX_STATES || next.is_empty() {
            // Empty means nothing at least as good as the incumbent survives: it is optimal.
            return if next.is_empty() {
                Some(incumbent.to_vec())
            } else {
                None
            };
        }
        states = next;
        stages.push((parent, choice));
    }
    // Best final state, checked canonically.
    let rebuild = |mut s: usize| -> Vec<u8> {
        let mut pos = incumbent.to_vec();
        for t in (0..k).rev() {
            let (parent, choice) = &stages[t];
            pos[core[t].0] = choice[s];
            s = parent[s] as usize;
        }
        pos
    };
    let mut order: Vec<usize> = (0..states.len()).collect();
    if matches!(kind, Kind::MinNoise { .. }) {
        order.reverse(); // least noise first
    }
    let mut best = (incumbent.to_vec(), inc);
    let mut checks = 0;
    for s in order {
        let (c, e) = states[s];
        if !kind.feasible(base_cost + c, base_noise + e) {
            continue;
        }
        let pos = rebuild(s);
        let value = pb.evaluate(&pos);
        if kind.feasible(value.0, value.1) {
            if kind.better(value, best.1) {
                best = (pos, value);
            }
            break;
        }
        checks += 1;
        if checks == 8 {
            break;
        }
    }
    Some(best.0)
}
