//! Eq. 9 at the operating point: each term measured alone at its planned format, and allocation with
//! noise gains corrected there.
//!
//! [`super::noise_gains`] measures how strongly small (30 dB), independent noise in each tensor reaches
//! the output. At 1–3-bit weights the quantization error is neither small nor independent of the
//! weights (most weights round to zero, or to ±half a step), and its effect can differ from the
//! probe's by several dB (4–6 dB on LeNet-5's `linear1`, `docs/reproduction.md`). Eq. 9's other
//! assumption, that the terms add as 1/SQNR, holds much better (within about 1 dB there).
//!
//! So this module measures each term where it will run: [`measure_terms`] quantizes **one** tensor at
//! the plan's format(s), leaves the rest float, and measures the output SQNR on a probe batch.
//! [`refine_gains`] turns the gap between a term's prediction and its measurement into a per-tensor
//! correction of the gains, and [`plan_at_operating_point`] re-plans with the corrected gains, so the
//! plan's own Eq. 9 prediction (`QuantPlan::predicted_output_sqnr_db`) and its allocation rest on
//! gains measured at the widths it chose.
//!
//! Cost: one float run of the probe per weight tensor and activation point per round.

use ndarray::{ArrayD, ArrayViewD};

use super::{Calibration, NoiseGains, PlanConfig, QuantPlan, layer_weights, matrix_to_shape, plan};
use crate::error::{Error, Result};
use crate::exec::FloatExecutor;
use crate::fixed::{QFormat, Rounding};
use crate::graph::Graph;
use crate::sqnr;

/// One Eq. 9 term measured alone.
#[derive(Debug, Clone, PartialEq)]
pub struct TermMeasure {
    /// Node name (weights) or tensor name (activations).
    pub name: String,
    /// Whether the term is a weight tensor.
    pub weights: bool,
    /// Output SQNR of the float graph with only this tensor quantized, dB.
    pub output_db: f64,
}

fn fake(v: f32, f: QFormat) -> f32 {
    f.value_of(f.code_of(f64::from(v), Rounding::NearestEven).0) as f32
}

/// Output SQNR (dB) of the float graph on `probe` with one tensor at a time quantized at `plan`'s
/// formats (round to nearest, ties to even, saturated, as [`crate::Quantizer`] does): every weight
/// tensor in graph order, then every activation point of the plan.
///
/// # Errors
/// [`Error::InvalidArgument`] if the plan lacks a weighted layer of the graph or has a weight plan
/// whose formats match neither one per tensor nor one per output channel; the executor's errors;
/// SQNR errors if the probe's output is all zeros.
///
/// # Example
/// See `tests/e2e.rs` (`eq9_over_terms_measured_alone_is_within_3_db_of_the_network`) and the
/// module docs; [`crate::eval::evaluate`] reports these terms per tensor.
pub fn measure_terms(
    graph: &Graph,
    plan: &QuantPlan,
    probe: ArrayViewD<'_, f32>,
) -> Result<Vec<TermMeasure>> {
    let exec = FloatExecutor::new(graph);
    let clean = exec.run(probe.view())?;
    let clean_s: Vec<f32> = clean.iter().copied().collect();
    let db_of = |out: &ArrayD<f32>| -> Result<f64> {
        let o: Vec<f32> = out.iter().copied().collect();
        sqnr::measure_db(&clean_s, &o)
    };
    let mut out = Vec::new();
    for lw in layer_weights(graph)? {
        let wp = plan.require_weight(&lw.node)?;
        let rows = lw.matrix.nrows();
        if wp.formats.len() != 1 && wp.formats.len() != rows {
            return Err(Error::InvalidArgument {
                name: "plan",
                reason: format!(
                    "node '{}' has {} weight formats for {rows} output channels",
                    lw.node,
                    wp.formats.len()
                ),
            });
        }
        let mut m = lw.matrix.clone();
        for (c, mut row) in m.outer_iter_mut().enumerate() {
            let f = wp.format_of_channel(c);
            row.mapv_inplace(|v| fake(v, f));
        }
        let q = matrix_to_shape(&m, &lw.shape)?;
        let q = if lw.stored_transposed {
            q.t().as_standard_layout().into_owned()
        } else {
            q
        };
        let mut g = graph.clone();
        g.set_initializer(&lw.weight_name, q)?;
        out.push(TermMeasure {
            name: lw.node.clone(),
            weights: true,
            output_db: db_of(&FloatExecutor::new(&g).run(probe.view())?)?,
        });
    }
    for a in plan.activations() {
        let f = a.format;
        let y = if a.tensor == graph.input().name {
            exec.run(probe.mapv(|v| fake(v, f)).view())?
        } else {
            exec.run_with_mut(probe.view(), |name, _, act| {
                if name == a.tensor {
                    act.mapv_inplace(|v| fake(v, f));
                }
            })?
        };
        out.push(TermMeasure {
            name: a.tensor.clone(),
            weights: false,
            output_db: db_of(&y)?,
        });
    }
    Ok(out)
}

/// Corrects `gains` so that each of `plan`'s Eq. 9 terms equals its measurement in `terms`: a weight
/// term predicted at T dB (own SQNR minus gain) but measured alone at A dB shifts that layer's three
/// weight gains (independent, coherent, offset) by T − A dB; an activation's gain shifts likewise.
/// Terms without a measurement keep their gains.
///
/// # Errors
/// [`Error::InvalidArgument`] if `gains` lacks a tensor that `terms` names.
pub fn refine_gains(
    gains: &NoiseGains,
    plan: &QuantPlan,
    terms: &[TermMeasure],
) -> Result<NoiseGains> {
    let mut g = gains.clone();
    let missing = |name: &str| Error::InvalidArgument {
        name: "gains",
        reason: format!("no noise gain was measured for '{name}'"),
    };
    for t in terms {
        if t.weights {
            let Some(w) = plan.weight(&t.name) else {
                continue;
            };
            let shift = (w.predicted_sqnr_db - w.gain_db) - t.output_db;
            for list in [
                &mut g.weights,
                &mut g.weights_coherent,
                &mut g.weights_offset,
            ] {
                let e = list
                    .iter_mut()
                    .find(|(n, _)| *n == t.name)
                    .ok_or_else(|| missing(&t.name))?;
                e.1 += shift;
            }
        } else {
            let Some(a) = plan.activation(&t.name) else {
                continue;
            };
            let shift = (a.predicted_sqnr_db - a.gain_db) - t.output_db;
            let e = g
                .activations
                .iter_mut()
                .find(|(n, _)| *n == t.name)
                .ok_or_else(|| missing(&t.name))?;
            e.1 += shift;
        }
    }
    Ok(g)
}

/// Plans with `config` (which must carry measured gains), then `rounds` times: measures every term
/// alone at the plan's formats on `probe` ([`measure_terms`]), corrects the gains there
/// ([`refine_gains`]) and plans again. Stops early when an allocation repeats. The returned plan's
/// gains and Eq. 9 prediction are those measured at the previous round's formats (the same formats
/// when the allocation converged).
///
/// # Errors
/// [`Error::InvalidArgument`] if `config.gains` is `None`; [`plan`]'s and [`measure_terms`]' errors.
pub fn plan_at_operating_point(
    graph: &Graph,
    calibration: &Calibration,
    config: &PlanConfig,
    probe: ArrayViewD<'_, f32>,
    rounds: usize,
) -> Result<QuantPlan> {
    let Some(mut gains) = config.gains.clone() else {
        return Err(Error::InvalidArgument {
            name: "config.gains",
            reason: "planning at the operating point corrects measured noise gains; measure them with plan::noise_gains first".into(),
        });
    };
    let mut p = plan(graph, calibration, config)?;
    for _ in 0..rounds {
        let terms = measure_terms(graph, &p, probe.view())?;
        gains = refine_gains(&gains, &p, &terms)?;
        let cfg = config.clone().with_gains(gains.clone());
        let next = plan(graph, calibration, &cfg)?;
        let same = next
            .weights()
            .iter()
            .zip(p.weights())
            .all(|(a, b)| a.bits == b.bits && a.formats == b.formats);
        p = next;
        if same {
            break;
        }
    }
    Ok(p)
}
