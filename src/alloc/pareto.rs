//! The exact Pareto front of model size against output SQNR.

use super::problem::Problem;
use super::{Allocation, GapBound, LayerSpec, Solver, assemble, validate};
use crate::error::{Error, Result};

/// Most points [`pareto_front`] returns; a larger front is an error.
pub const PARETO_MAX_POINTS: usize = 1 << 16;

/// Most intermediate states [`pareto_front`] stores in all; more is an error.
pub const PARETO_MAX_STATES: usize = 1 << 23;

/// Every allocation not dominated in (model bits, output SQNR), sorted by model size (and so by SQNR,
/// strictly increasing).
///
/// An allocation is on the front if no other has at most its model bits and a strictly higher SQNR,
/// or strictly fewer bits and at least its SQNR. Each point is the exact optimum of
/// [`Budget::MaxModelBits`](super::Budget::MaxModelBits) at its own size; its
/// [`Allocation::gap_bound`] is zero. Of two allocations with equal size and equal noise, one is kept
/// (deterministically).
///
/// Method: dynamic programming that merges the layers one at a time, keeping the list of
/// non-dominated `(model bits, noise)` partial sums (exact, since a dominated partial sum cannot
/// complete to a non-dominated total). The front is the full one, not its convex hull. Its size is
/// at most the number of distinct model sizes, which can grow exponentially with the number of
/// layers of unequal cost; the method is meant for up to a few dozen layers.
///
/// # Errors
/// The validation errors of [`allocate_bits`](super::allocate_bits); [`Error::InvalidArgument`] if the
/// front has more than [`PARETO_MAX_POINTS`] points or the merge would store more than
/// [`PARETO_MAX_STATES`] states.
///
/// # Example
/// ```
/// use fixq::{pareto_front, LayerSpec, SqnrCurve};
/// let c = SqnrCurve::Linear { kappa_db_per_bit: 3.0, offset_db: 0.0 };
/// let layers = [
///     LayerSpec::new("a", 10, c.clone()).bits_range(2..=4),
///     LayerSpec::new("b", 30, c).bits_range(2..=4),
/// ];
/// let front = pareto_front(&layers)?;
/// assert_eq!(front.first().map(|a| a.bits()), Some(&[2, 2][..]));
/// assert_eq!(front.last().map(|a| a.bits()), Some(&[4, 4][..]));
/// assert!(front.windows(2).all(|w| w[0].predicted_sqnr_db() < w[1].predicted_sqnr_db()));
/// # Ok::<(), fixq::Error>(())
/// ```
pub fn pareto_front(layers: &[LayerSpec]) -> Result<Vec<Allocation>> {
    let spans = validate(layers)?;
    let pb = Problem::build(layers, &spans, None);
    let too_big = |what: String| Error::InvalidArgument {
        name: "layers",
        reason: format!("{what}; use allocate_bits with a budget instead"),
    };
    let mut states: Vec<(u64, f64)> = vec![(0, 0.0)];
    let mut stages: Vec<(usize, Vec<u32>, Vec<u8>)> = Vec::new();
    let mut stored = 0usize;
    let mut cand: Vec<(u64, f64, u32, u8)> = Vec::new();
    let mut points: Vec<(u64, f64, u8)> = Vec::new();
    for i in 0..pb.len() {
        if pb.points(i) == 1 {
            continue;
        }
        points.clear();
        points.extend(
            pb.stair_points(i)
                .map(|j| (pb.cost(i, j), pb.noise(i, j), j as u8)),
        );
        cand.clear();
        for (s, &(c, e)) in states.iter().enumerate() {
            for &(cj, ej, j) in &points {
                cand.push((c + cj, e + ej, s as u32, j));
            }
        }
        cand.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        let mut next = Vec::new();
        let (mut parent, mut choice) = (Vec::new(), Vec::new());
        let mut last = f64::INFINITY;
        for &(c, e, s, j) in &cand {
            if e < last {
                last = e;
                next.push((c, e));
                parent.push(s);
                choice.push(j);
            }
        }
        stored += next.len();
        if stored > PARETO_MAX_STATES {
            return Err(too_big(format!(
                "the Pareto merge needs more than {PARETO_MAX_STATES} states (at layer {i})"
            )));
        }
        states = next;
        stages.push((i, parent, choice));
    }
    if states.len() > PARETO_MAX_POINTS {
        return Err(too_big(format!(
            "the Pareto front has {} points, more than {PARETO_MAX_POINTS}",
            states.len()
        )));
    }
    let mut front = Vec::with_capacity(states.len());
    for mut s in 0..states.len() {
        let mut pos = pb.first_positions();
        for (i, parent, choice) in stages.iter().rev() {
            pos[*i] = choice[s];
            s = parent[s] as usize;
        }
        let (widths, noises) = pb.widths_noises(&pos);
        front.push(assemble(
            &spans,
            widths,
            noises,
            Solver::Exact,
            Some(GapBound::SqnrDb(0.0)),
        ));
    }
    Ok(front)
}
