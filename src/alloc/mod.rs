//! Bit allocation across layers: the fewest model bits for a target output SQNR, or the best output
//! SQNR within a model size (the paper's Sec. 4, Eq. 9-15).
//!
//! # The problem
//! Layer (or channel, or activation tensor) `i` is stored with an integer bit-width `b_i` drawn from
//! its allowed range, costs `c_i * b_i` model bits (`c_i` = [`LayerSpec::cost_per_bit`], by default its
//! parameter count `rho_i`), and contributes the relative noise power `eta_i(b_i) = 10^(-gamma_i(b_i)/10)`,
//! where `gamma_i` is its [`SqnrCurve`] in dB. Noise adds across layers (Eq. 9):
//!
//! ```text
//! 1 / SQNR_out = sum_i 1 / SQNR_i = sum_i eta_i(b_i)            (Eq. 9, linear units)
//! size(b)      = sum_i c_i * b_i                                (model bits)
//! ```
//!
//! Two budgets ([`Budget`]) give two discrete problems:
//! * [`Budget::MinSqnrDb`]`(g)`: minimise `size(b)` subject to `sum_i eta_i(b_i) <= 10^(-g/10)`
//!   (the paper's Eq. 11, solved exactly over integers rather than relaxed);
//! * [`Budget::MaxModelBits`]`(B)`: minimise `sum_i eta_i(b_i)` (maximise SQNR_out) subject to
//!   `size(b) <= B`.
//!
//! Both are multiple-choice knapsack problems. The paper relaxes them to real `b_i` with linear curves,
//! which gives water-filling (Eq. 12-14) and its closed form `b_i - b_j = 10 log10(rho_j / rho_i) / kappa`
//! (Eq. 15); that is [`Solver::PaperClosedForm`].
//!
//! # The exact method ([`Solver::Exact`])
//! 1. Per layer, keep only Pareto-efficient widths (a wider width that is not strictly less noisy is
//!    dropped) and take the lower convex hull of the remaining `(cost, noise)` points. Curves need not be
//!    concave or monotone.
//! 2. Lagrangian / LP relaxation: hull increments sorted by efficiency (noise removed per model bit) are
//!    taken greedily until the budget binds. The increment where it binds (the *split*) gives the
//!    optimal multiplier `lambda`; the Lagrangian dual value `L(lambda) = sum_i min_b (primary + lambda *
//!    secondary) - lambda * cap` is a certified lower bound on the discrete optimum. The split is found
//!    by a weighted radix selection on the efficiencies (`f32` keys; histogram passes, no full sort), in
//!    `O(m)` time for `m` hull increments.
//! 3. The relaxed solution is rounded to a feasible integer point (the split increment is taken in full
//!    for `MinSqnrDb`, dropped for `MaxModelBits`) and improved greedily with the leftover slack. This is
//!    the incumbent.
//! 4. Reduced-cost fixing: a width whose reduced cost `primary + lambda * secondary - min` exceeds the
//!    gap `incumbent - L(lambda)` cannot be in any allocation at least as good as the incumbent, so it is
//!    removed. Layers left with one width are fixed; the rest form the *core*.
//! 5. The core is solved exactly by dynamic programming over Pareto lists of `(model bits, noise)`
//!    states, pruned by dominance, by feasibility and by the Lagrangian bound. The result is a proven
//!    optimum of the discrete problem ([`Allocation::gap_bound`] is zero).
//!
//! Step 5 is skipped, and the incumbent of step 3 returned with its certified gap bound, when the core
//! has more than [`EXACT_MAX_CORE_LAYERS`] layers, when the problem has more than
//! [`EXACT_MAX_FREE_LAYERS`] layers with a choice, or when the dynamic program would store more than
//! [`EXACT_MAX_STATES`] states. [`Solver::Hull`] always stops after step 3.
//!
//! # Complexity
//! With `n` layers and `w` widths each (`w <= 64`): steps 1-4 take `O(n w)` time (one pass over the
//! curves, then a constant number of passes over the hull increments; the selection is linear) and
//! `O(n + h)` memory for `h <= n w` hull vertices: two 64-bit masks and one offset per layer, one `f64`
//! noise per hull vertex, one `u32` key and one `f32` weight per hull increment. Noise powers of
//! staircase points off the hull are recomputed when needed rather than stored. These arrays are kept
//! for the next solve on the same thread when they total at most 64 MiB (fresh memory costs a page
//! fault per 4 KiB on first touch). Step 5 takes `O(k S w log(S w))` for a core of `k` layers and at
//! most `S` states per stage, bounded by the limits above. Measured times are in `docs/alloc.md`.
//!
//! # Ties
//! When several allocations reach the optimal objective, the one returned is a deterministic function of
//! the input. The dynamic program prefers, among equal objectives, the better secondary measure (higher
//! SQNR for `MinSqnrDb`, fewer model bits for `MaxModelBits`); within a layer, of two widths with equal
//! noise the narrower is kept.
//!
//! # Floating point
//! Noise powers are `f64`, computed once per `(layer, width)` by one conversion shared by every solver,
//! [`pareto_front`] and the reported figures. The SQNR constraint is checked as `sum_i eta_i <=
//! 10^(-g/10)` with the sum taken in layer order. Model sizes are exact integers.

mod baseline;
#[cfg(doctest)]
#[doc = include_str!("../../docs/alloc.md")]
struct AllocGuideDoctests;
mod curve;
mod exact;
mod pareto;
mod problem;

use std::ops::RangeInclusive;

pub use curve::{MAX_BITS, SQNR_DB_LIMIT, SqnrCurve};
pub use exact::{EXACT_MAX_CORE_LAYERS, EXACT_MAX_FREE_LAYERS, EXACT_MAX_STATES};
pub use pareto::{PARETO_MAX_POINTS, PARETO_MAX_STATES, pareto_front};

use crate::error::{Error, Result};
pub(crate) use curve::{db_from_noise, noise_from_db};

/// One tensor to allocate a bit-width to: a layer's weights, a channel's weights, or activations.
///
/// Built with [`LayerSpec::new`] and the builder methods; `new` cannot fail, so the spec is validated by
/// [`allocate_bits`] (see its errors).
///
/// # Example
/// ```
/// use fixq::{LayerSpec, SqnrCurve};
/// let curve = SqnrCurve::Linear { kappa_db_per_bit: 3.0, offset_db: 0.0 };
/// let weights = LayerSpec::new("conv1", 295_000, curve.clone()).bits_range(2..=8);
/// // Activations held at 16 bits and left out of the model size, as in the paper's Table 3.
/// let acts = LayerSpec::new("conv1.act", 1, curve).pinned(16).cost_per_bit(0);
/// assert_eq!(weights.model_cost_per_bit(), 295_000);
/// assert_eq!(acts.pinned_bits(), Some(16));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LayerSpec {
    name: String,
    params: u64,
    curve: SqnrCurve,
    min_bits: u32,
    max_bits: u32,
    pinned: Option<u32>,
    cost_per_bit: Option<u64>,
}

impl LayerSpec {
    /// A tensor named `name` with `params` parameters (the paper's `rho_i`) whose SQNR at each
    /// bit-width is `curve`. Defaults: bit range `1..=16`, not pinned, `cost_per_bit = params`.
    pub fn new(name: impl Into<String>, params: u64, curve: SqnrCurve) -> LayerSpec {
        LayerSpec {
            name: name.into(),
            params,
            curve,
            min_bits: 1,
            max_bits: 16,
            pinned: None,
            cost_per_bit: None,
        }
    }

    /// Allowed bit-widths, in bits (default `1..=16`). Must be non-empty and inside the curve's domain.
    pub fn bits_range(mut self, bits: RangeInclusive<u32>) -> LayerSpec {
        self.min_bits = *bits.start();
        self.max_bits = *bits.end();
        self
    }

    /// Fixes the width to `bits`, which must lie in the allowed range. Pinned layers still count in
    /// the model size and the output noise; only the solver's choice is removed.
    pub fn pinned(mut self, bits: u32) -> LayerSpec {
        self.pinned = Some(bits);
        self
    }

    /// Model bits per bit of width (default: `params`). `0` leaves the tensor out of the model size,
    /// as the paper does for activations.
    pub fn cost_per_bit(mut self, model_bits_per_bit: u64) -> LayerSpec {
        self.cost_per_bit = Some(model_bits_per_bit);
        self
    }

    /// The name given to [`LayerSpec::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of parameters.
    pub fn params(&self) -> u64 {
        self.params
    }

    /// The SQNR curve, in dB per bit-width.
    pub fn curve(&self) -> &SqnrCurve {
        &self.curve
    }

    /// The allowed bit-widths.
    pub fn allowed_bits(&self) -> RangeInclusive<u32> {
        self.min_bits..=self.max_bits
    }

    /// The pinned width, if any.
    pub fn pinned_bits(&self) -> Option<u32> {
        self.pinned
    }

    /// Model bits per bit of width: the value set by [`LayerSpec::cost_per_bit`], else `params`.
    pub fn model_cost_per_bit(&self) -> u64 {
        self.cost_per_bit.unwrap_or(self.params)
    }
}

/// What the allocation must achieve.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Budget {
    /// The smallest model (in model bits) whose predicted output SQNR, in dB, is at least this value:
    /// `sum_i 10^(-gamma_i(b_i)/10) <= 10^(-target/10)` (Eq. 9 and 11). Must be finite.
    MinSqnrDb(f64),
    /// The highest predicted output SQNR with `sum_i cost_per_bit_i * b_i <=` this many model bits.
    MaxModelBits(u64),
    /// Average bits per parameter: the same as `MaxModelBits(floor(avg * P))`, where `P` is the total
    /// `params` of the layers with a non-zero cost per bit. Must be finite and `>= 0`.
    AvgBitsPerParam(f64),
}

/// Which algorithm [`allocate_bits_with`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Solver {
    /// True optimum of the discrete problem (see the [module docs](crate::alloc)); above the documented
    /// size limits, the rounded hull optimum with a certified [`Allocation::gap_bound`].
    #[default]
    Exact,
    /// The rounded convex-hull (LP) optimum with a certified gap bound: steps 1-3 of the exact method,
    /// `O(n w)`. What [`Solver::Exact`] falls back to on large instances.
    Hull,
    /// The paper's closed form (Eq. 12-15), rounded. Each free layer (not pinned, `cost_per_bit > 0`,
    /// more than one allowed width) gets a line `gamma_i(b) = kappa_i b + o_i` (the Linear curve itself,
    /// or the least-squares fit of a Table curve over the allowed range; `kappa_i` must be `> 0`). The
    /// continuous water-filling optimum sets each layer's noise `eta_i` proportional to
    /// `rho_i / kappa_i` (`rho_i = cost_per_bit_i`), at the budget's total; with a common `kappa` and
    /// zero offsets this is Eq. 15. Widths are then taken relative to the first free layer:
    /// `d_i = round(b_i* - b_first*)` (half away from zero, limited to +-256), and all layers get
    /// `clamp(d_i + s, allowed range)` for one common integer shift `s`: the smallest `s` that meets a
    /// `MinSqnrDb` target, the largest within a `MaxModelBits` size. Free layers with
    /// `cost_per_bit = 0` get their highest-SQNR width; pinned layers keep theirs.
    PaperClosedForm,
    /// One width `w` for every non-pinned layer, clamped to each layer's allowed range: the smallest
    /// `w` that meets a `MinSqnrDb` target, the largest within a `MaxModelBits` size.
    EqualBits,
}

/// A certified bound on how far an allocation may be from the optimum, in the budget's objective.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum GapBound {
    /// For [`Budget::MinSqnrDb`]: `model_bits - optimum <= ` this many model bits.
    ModelBits(u64),
    /// For size budgets: `optimum SQNR - predicted_sqnr_db <= ` this many dB.
    SqnrDb(f64),
}

impl GapBound {
    /// `true` if the bound is zero: the allocation is a proven optimum.
    pub fn is_zero(&self) -> bool {
        match *self {
            GapBound::ModelBits(bits) => bits == 0,
            GapBound::SqnrDb(db) => db <= 0.0,
        }
    }
}

/// The result of an allocation: one bit-width per layer and its predicted figures.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Allocation {
    bits: Vec<u32>,
    model_bits: u64,
    predicted_sqnr_db: f64,
    noise_share: Vec<f64>,
    solver: Solver,
    gap_bound: Option<GapBound>,
}

impl Allocation {
    /// Bit-width of each layer, in the order of the input specs.
    pub fn bits(&self) -> &[u32] {
        &self.bits
    }

    /// Model size `sum_i cost_per_bit_i * b_i`, in bits.
    pub fn model_bits(&self) -> u64 {
        self.model_bits
    }

    /// Predicted output SQNR in dB, `-10 log10(sum_i 10^(-gamma_i(b_i)/10))` (Eq. 9).
    pub fn predicted_sqnr_db(&self) -> f64 {
        self.predicted_sqnr_db
    }

    /// Each layer's fraction of the output noise power, `eta_i / sum_j eta_j`, in input order; sums to 1.
    pub fn noise_share(&self) -> &[f64] {
        &self.noise_share
    }

    /// The solver that produced this allocation.
    pub fn solver(&self) -> Solver {
        self.solver
    }

    /// Certified bound on the distance to the optimum: zero for a proven optimum ([`Solver::Exact`]
    /// within its limits, and [`pareto_front`]), positive when [`Solver::Exact`] or [`Solver::Hull`]
    /// returned the rounded hull solution; `None` for the baselines, which compute no bound.
    pub fn gap_bound(&self) -> Option<GapBound> {
        self.gap_bound
    }
}

/// The optimal allocation of bit-widths to `layers` under `budget`, by [`Solver::Exact`].
///
/// See the [module docs](crate::alloc) for the problem (Eq. 9, 11), the method and its complexity.
///
/// # Errors
/// * [`Error::Empty`] if `layers` is empty.
/// * [`Error::InvalidArgument`] for a layer with `params == 0` and a non-zero cost per bit, an empty bit
///   range, a range or curve domain beyond `1..=`[`MAX_BITS`], a range outside the curve's domain, a pinned
///   width outside the range, a curve value beyond [`SQNR_DB_LIMIT`], a model size that could exceed
///   `u64::MAX`, or a non-finite (or, for `AvgBitsPerParam`, negative) budget.
/// * [`Error::NonFinite`] for a NaN or infinite curve value (`index` is the layer's index).
/// * [`Error::Infeasible`] if no allocation meets the budget; `nearest` is the best SQNR in dB any
///   allocation reaches (for `MinSqnrDb`), the smallest model size in bits (`MaxModelBits`), or the
///   smallest average bits per parameter (`AvgBitsPerParam`).
///
/// # Example
/// ```
/// use fixq::{allocate_bits, Budget, LayerSpec, SqnrCurve};
/// let kappa3 = SqnrCurve::Linear { kappa_db_per_bit: 3.0, offset_db: 0.0 };
/// let layers = [
///     LayerSpec::new("conv0", 7_000, kappa3.clone()),
///     LayerSpec::new("conv1", 295_000, kappa3.clone()),
///     LayerSpec::new("fc", 1_606_000, kappa3),
/// ];
/// let alloc = allocate_bits(&layers, Budget::MinSqnrDb(20.0))?;
/// assert!(alloc.predicted_sqnr_db() >= 20.0);
/// assert!(alloc.bits()[0] > alloc.bits()[2]); // the big layer gets fewer bits (Eq. 15)
/// # Ok::<(), fixq::Error>(())
/// ```
pub fn allocate_bits(layers: &[LayerSpec], budget: Budget) -> Result<Allocation> {
    allocate_bits_with(layers, budget, Solver::Exact)
}

/// [`allocate_bits`] with a chosen [`Solver`]. Same errors; for the baselines, the `nearest` of
/// [`Error::Infeasible`] is the best value that solver reaches.
///
/// # Example
/// ```
/// use fixq::{allocate_bits_with, Budget, LayerSpec, Solver, SqnrCurve};
/// let kappa3 = SqnrCurve::Linear { kappa_db_per_bit: 3.0, offset_db: 0.0 };
/// let layers = [
///     LayerSpec::new("a", 1_000, kappa3.clone()),
///     LayerSpec::new("b", 8_000, kappa3),
/// ];
/// let equal = allocate_bits_with(&layers, Budget::MinSqnrDb(25.0), Solver::EqualBits)?;
/// let exact = allocate_bits_with(&layers, Budget::MinSqnrDb(25.0), Solver::Exact)?;
/// assert!(exact.model_bits() <= equal.model_bits());
/// # Ok::<(), fixq::Error>(())
/// ```
pub fn allocate_bits_with(
    layers: &[LayerSpec],
    budget: Budget,
    solver: Solver,
) -> Result<Allocation> {
    let spans = validate(layers)?;
    let goal = Goal::resolve(layers, &spans, budget)?;
    match solver {
        Solver::Exact => exact::solve(layers, &spans, &goal, true),
        Solver::Hull => exact::solve(layers, &spans, &goal, false),
        Solver::PaperClosedForm => baseline::closed_form(layers, &spans, &goal),
        Solver::EqualBits => baseline::equal_bits(layers, &spans, &goal),
    }
}

/// A validated layer: the widths the solver may choose from and the cost per bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// Narrowest allowed width (the pinned width if pinned).
    pub lo: u32,
    /// Widest allowed width (the pinned width if pinned).
    pub hi: u32,
    /// Model bits per bit of width.
    pub cpb: u64,
    /// Whether the width was pinned by the user.
    pub pinned: bool,
}

/// Checks every spec; see the errors of [`allocate_bits`].
pub(crate) fn validate(layers: &[LayerSpec]) -> Result<Vec<Span>> {
    if layers.is_empty() {
        return Err(Error::Empty { what: "layers" });
    }
    let mut spans = Vec::with_capacity(layers.len());
    let mut max_total: u128 = 0;
    for (i, layer) in layers.iter().enumerate() {
        let bad = |name: &'static str, reason: String| Error::InvalidArgument {
            name,
            reason: format!("layer {i} ({:?}): {reason}", layer.name),
        };
        let cpb = layer.model_cost_per_bit();
        if layer.params == 0 && cpb > 0 {
            return Err(bad(
                "cost_per_bit",
                format!("zero params but cost_per_bit {cpb}; use 0"),
            ));
        }
        let (lo, hi) = (layer.min_bits, layer.max_bits);
        if lo > hi {
            return Err(bad("bits_range", format!("empty bit range {lo}..={hi}")));
        }
        if lo == 0 || hi > MAX_BITS {
            return Err(bad(
                "bits_range",
                format!("{lo}..={hi} is outside 1..={MAX_BITS}"),
            ));
        }
        let Some((first, last)) = layer.curve.domain() else {
            return Err(bad(
                "curve",
                "empty table or min_bits outside 1..=64".to_string(),
            ));
        };
        if lo < first || hi > last {
            return Err(bad(
                "bits_range",
                format!("{lo}..={hi} is outside the curve's domain {first}..={last}"),
            ));
        }
        match &layer.curve {
            SqnrCurve::Linear {
                kappa_db_per_bit,
                offset_db,
            } => {
                for value in [*kappa_db_per_bit, *offset_db] {
                    if !value.is_finite() {
                        return Err(Error::NonFinite {
                            what: "sqnr_db curve of layer",
                            index: i,
                            value,
                        });
                    }
                }
                for b in [lo, hi] {
                    let value = kappa_db_per_bit * f64::from(b) + offset_db;
                    check_db(value, i, layer)?;
                }
            }
            SqnrCurve::Table { sqnr_db, .. } => {
                for &value in sqnr_db {
                    check_db(value, i, layer)?;
                }
            }
        }
        let (lo, hi, pinned) = match layer.pinned {
            Some(p) if p < lo || p > hi => {
                return Err(bad(
                    "pinned",
                    format!("pinned width {p} outside the range {lo}..={hi}"),
                ));
            }
            Some(p) => (p, p, true),
            None => (lo, hi, false),
        };
        max_total += u128::from(cpb) * u128::from(hi);
        if max_total > u128::from(u64::MAX) {
            return Err(bad(
                "layers",
                "the model size could exceed u64::MAX bits".to_string(),
            ));
        }
        spans.push(Span {
            lo,
            hi,
            cpb,
            pinned,
        });
    }
    Ok(spans)
}

fn check_db(value: f64, index: usize, layer: &LayerSpec) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::NonFinite {
            what: "sqnr_db curve of layer",
            index,
            value,
        });
    }
    if value.abs() > SQNR_DB_LIMIT {
        return Err(Error::InvalidArgument {
            name: "curve",
            reason: format!(
                "layer {index} ({:?}): value {value} dB exceeds +-{SQNR_DB_LIMIT} dB",
                layer.name
            ),
        });
    }
    Ok(())
}

/// A budget resolved against the layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Goal {
    /// Minimise model bits subject to total noise `<= max_noise` (= `10^(-target_db/10)`).
    MinSqnr {
        /// The target, in dB.
        target_db: f64,
        /// The noise cap, linear.
        max_noise: f64,
    },
    /// Minimise total noise subject to model bits `<= max_bits`.
    MaxBits {
        /// The size cap, in bits.
        max_bits: u64,
        /// `Some(P)` if given as average bits per parameter over `P` parameters.
        per_param: Option<u64>,
    },
}

impl Goal {
    pub(crate) fn resolve(layers: &[LayerSpec], spans: &[Span], budget: Budget) -> Result<Goal> {
        match budget {
            Budget::MinSqnrDb(target_db) => {
                if !target_db.is_finite() {
                    return Err(Error::InvalidArgument {
                        name: "budget",
                        reason: format!("MinSqnrDb target must be finite, got {target_db}"),
                    });
                }
                // Beyond the curve limits the cap is 0 (unreachable) or unbounded.
                let max_noise = if target_db > SQNR_DB_LIMIT {
                    0.0
                } else if target_db < -SQNR_DB_LIMIT {
                    f64::INFINITY
                } else {
                    noise_from_db(target_db)
                };
                Ok(Goal::MinSqnr {
                    target_db,
                    max_noise,
                })
            }
            Budget::MaxModelBits(max_bits) => Ok(Goal::MaxBits {
                max_bits,
                per_param: None,
            }),
            Budget::AvgBitsPerParam(avg) => {
                if !avg.is_finite() || avg < 0.0 {
                    return Err(Error::InvalidArgument {
                        name: "budget",
                        reason: format!("AvgBitsPerParam must be finite and >= 0, got {avg}"),
                    });
                }
                let params: u64 = layers
                    .iter()
                    .zip(spans)
                    .filter(|(_, s)| s.cpb > 0)
                    .fold(0u64, |acc, (l, _)| acc.saturating_add(l.params));
                // `as` saturates: a product beyond u64::MAX means "no size limit".
                let max_bits = (avg * params as f64).floor() as u64;
                Ok(Goal::MaxBits {
                    max_bits,
                    per_param: Some(params),
                })
            }
        }
    }

    /// The `Infeasible` error for this goal, given the best reachable value in model bits or noise.
    pub(crate) fn infeasible(&self, best_noise: f64, min_model_bits: u64) -> Error {
        match *self {
            Goal::MinSqnr { target_db, .. } => {
                let best_db = db_from_noise(best_noise);
                Error::Infeasible {
                    reason: format!(
                        "target {target_db} dB exceeds the best reachable {best_db} dB"
                    ),
                    nearest: best_db,
                }
            }
            Goal::MaxBits {
                max_bits,
                per_param: None,
            } => Error::Infeasible {
                reason: format!(
                    "size {max_bits} bits is below the smallest reachable {min_model_bits} bits"
                ),
                nearest: min_model_bits as f64,
            },
            Goal::MaxBits {
                max_bits,
                per_param: Some(params),
            } => {
                // The smallest average whose floor(avg * params) reaches min_model_bits.
                let mut avg = min_model_bits as f64 / params.max(1) as f64;
                for _ in 0..8 {
                    if (avg * params as f64).floor() as u64 >= min_model_bits {
                        break;
                    }
                    avg *= 1.0 + f64::EPSILON;
                }
                Error::Infeasible {
                    reason: format!(
                        "{max_bits} bits ({params} params) is below the smallest reachable \
                         {min_model_bits} bits"
                    ),
                    nearest: avg,
                }
            }
        }
    }
}

/// Noise power of layer `layer` at `bits` (which must be valid for it).
#[inline]
pub(crate) fn layer_noise(layer: &LayerSpec, bits: u32) -> f64 {
    // Validated specs always have a value here; 0 dB is unreachable padding.
    noise_from_db(layer.curve.sqnr_db(bits).unwrap_or(0.0))
}

/// Builds the [`Allocation`] for `bits` (valid for every layer), with figures computed canonically:
/// sizes exactly, noise summed in layer order.
pub(crate) fn make_allocation(
    layers: &[LayerSpec],
    spans: &[Span],
    bits: Vec<u32>,
    solver: Solver,
    gap_bound: Option<GapBound>,
) -> Allocation {
    let noise = layers
        .iter()
        .zip(&bits)
        .map(|(layer, &b)| layer_noise(layer, b))
        .collect();
    assemble(spans, bits, noise, solver, gap_bound)
}

/// Builds the [`Allocation`] for `bits` whose per-layer noise powers are `noise`.
pub(crate) fn assemble(
    spans: &[Span],
    bits: Vec<u32>,
    mut noise: Vec<f64>,
    solver: Solver,
    gap_bound: Option<GapBound>,
) -> Allocation {
    let mut model_bits: u64 = 0;
    for (span, &b) in spans.iter().zip(&bits) {
        model_bits = model_bits.saturating_add(span.cpb.saturating_mul(u64::from(b)));
    }
    let total: f64 = noise.iter().sum();
    for share in &mut noise {
        *share /= total;
    }
    Allocation {
        bits,
        model_bits,
        predicted_sqnr_db: db_from_noise(total),
        noise_share: noise,
        solver,
        gap_bound,
    }
}

/// Canonical `(model bits, total noise)` of `bits`.
pub(crate) fn evaluate(layers: &[LayerSpec], spans: &[Span], bits: &[u32]) -> (u64, f64) {
    let mut model_bits: u64 = 0;
    let mut noise = 0.0;
    for ((layer, span), &b) in layers.iter().zip(spans).zip(bits) {
        model_bits = model_bits.saturating_add(span.cpb.saturating_mul(u64::from(b)));
        noise += layer_noise(layer, b);
    }
    (model_bits, noise)
}
