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

use super::{
    Calibration, NoiseGains, PlanConfig, QuantPlan, Sensitivity, layer_weights, matrix_to_shape,
    plan_with_noise, weight_noise,
};
use crate::error::{Error, Result};
use crate::exec::FloatExecutor;
use crate::fixed::NearestLevel;
use crate::graph::Graph;
use crate::rounding::{RoundedLayer, WeightRounding, round_layers};
use crate::sqnr;

/// One Eq. 9 term measured alone.
#[derive(Debug, Clone, PartialEq)]
pub struct TermMeasure {
    /// Node name (weights) or tensor name (activations).
    pub name: String,
    /// Whether the term is a weight tensor.
    pub weights: bool,
    /// Output SQNR of the float graph with only this tensor quantized, dB (at most
    /// [`sqnr::CURVE_CAP_DB`], for a tensor whose quantization leaves the output unchanged).
    pub output_db: f64,
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
    measure_terms_with(graph, plan, probe, Sensitivity::Forward)
}

/// As [`measure_terms`], by the given method: [`Sensitivity::Forward`] runs the float graph once
/// per tensor with that tensor alone quantized (the exact effect of each term);
/// [`Sensitivity::Backward`] estimates all terms together from backward passes, to first order in
/// each term's error (`super::sensitivity`); [`Sensitivity::Auto`] is `Backward` where every op has a
/// backward pass.
///
/// # Errors
/// As [`measure_terms`]; with `Backward`, [`Error::Unsupported`] naming a node without a backward
/// pass.
pub fn measure_terms_with(
    graph: &Graph,
    plan: &QuantPlan,
    probe: ArrayViewD<'_, f32>,
    method: Sensitivity,
) -> Result<Vec<TermMeasure>> {
    measure_terms_rounded(graph, plan, probe, method, None)
}

/// As [`measure_terms_with`], each weight tensor taken as `rounded` gives it (in
/// `layer_weights` order; `None`: round to nearest), bias change included.
pub(crate) fn measure_terms_rounded(
    graph: &Graph,
    plan: &QuantPlan,
    probe: ArrayViewD<'_, f32>,
    method: Sensitivity,
    rounded: Option<&[RoundedLayer]>,
) -> Result<Vec<TermMeasure>> {
    match method {
        Sensitivity::Backward => super::sensitivity::terms_backward(graph, plan, probe, rounded),
        Sensitivity::Auto => {
            match super::sensitivity::terms_backward(graph, plan, probe.view(), rounded) {
                Err(Error::Unsupported(_)) => measure_terms_forward(graph, plan, probe, rounded),
                other => other,
            }
        }
        Sensitivity::Forward => measure_terms_forward(graph, plan, probe, rounded),
    }
}

/// Layer `index`'s weights under `plan` as the network will run them: `rounded`'s, or rounded to
/// nearest; and the bias change, if any.
pub(super) fn layer_values(
    lw: &super::LayerWeights,
    wp: &crate::quant_plan::WeightPlan,
    index: usize,
    rounded: Option<&[RoundedLayer]>,
) -> Result<(ndarray::Array2<f32>, Option<Vec<f32>>)> {
    if let Some(r) = rounded {
        let r = r.get(index).ok_or_else(|| Error::Internal {
            reason: format!("no rounded weights for layer {index} ('{}')", lw.node),
        })?;
        if r.matrix.dim() != lw.matrix.dim() {
            return Err(Error::Internal {
                reason: format!("rounded weights of '{}' have another shape", lw.node),
            });
        }
        return Ok((r.matrix.clone(), r.bias_delta.clone()));
    }
    let mut m = lw.matrix.clone();
    for (c, mut row) in m.outer_iter_mut().enumerate() {
        let l = NearestLevel::new(wp.format_of_channel(c));
        row.mapv_inplace(|v| l.fake_f32(v));
    }
    Ok((m, None))
}

fn measure_terms_forward(
    graph: &Graph,
    plan: &QuantPlan,
    probe: ArrayViewD<'_, f32>,
    rounded: Option<&[RoundedLayer]>,
) -> Result<Vec<TermMeasure>> {
    let exec = FloatExecutor::new(graph);
    let clean = exec.run(probe.view())?;
    let clean_s: Vec<f32> = clean.iter().copied().collect();
    // A tensor whose quantization leaves the output bit-identical measures +∞; cap it like curves.
    let db_of = |out: &ArrayD<f32>| -> Result<f64> {
        let o: Vec<f32> = out.iter().copied().collect();
        Ok(sqnr::measure_db(&clean_s, &o)?.min(sqnr::CURVE_CAP_DB))
    };
    let mut out = Vec::new();
    for (li, lw) in layer_weights(graph)?.into_iter().enumerate() {
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
        let (m, bias_delta) = layer_values(&lw, wp, li, rounded)?;
        let q = matrix_to_shape(&m, &lw.shape)?;
        let q = if lw.stored_transposed {
            q.t().as_standard_layout().into_owned()
        } else {
            q
        };
        let mut g = graph.clone();
        g.set_initializer(&lw.weight_name, q)?;
        // A corrected bias, where the node has one of its own (a node without a bias gets one
        // only in the final graph; here its term is measured without the correction).
        let bias_name = graph.nodes()[lw.node_index].inputs.get(2);
        if let (Some(d), Some(name)) = (bias_delta, bias_name)
            && let Some(b) = graph.initializer(name)
            && b.len() == d.len()
        {
            let mut nb = b.clone();
            nb.iter_mut().zip(&d).for_each(|(v, dv)| *v += dv);
            g.set_initializer(name, nb)?;
        }
        out.push(TermMeasure {
            name: lw.node.clone(),
            weights: true,
            output_db: db_of(&FloatExecutor::new(&g).run(probe.view())?)?,
        });
    }
    for a in plan.activations() {
        let l = NearestLevel::new(a.format);
        let y = if a.tensor == graph.input().name {
            exec.run(probe.mapv(|v| l.fake_f32(v)).view())?
        } else {
            exec.run_with_mut(probe.view(), |name, _, act| {
                if name == a.tensor {
                    act.mapv_inplace(|v| l.fake_f32(v));
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
/// [`Error::InvalidArgument`] if `config.gains` is `None`; [`plan`](super::plan())'s and [`measure_terms`]' errors.
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
    // The formats and errors of every width do not depend on the gains: computed once.
    let noise = weight_noise(graph, calibration, config)?;
    let mut p = plan_with_noise(graph, calibration, config, &noise)?;
    let rounds_weights = config.rounding != WeightRounding::Nearest || config.bias_correction;
    for _ in 0..rounds {
        let rounded = if rounds_weights {
            Some(round_layers(
                graph,
                &p,
                calibration.layer_inputs(),
                config.rounding,
                config.bias_correction,
            )?)
        } else {
            None
        };
        let terms = measure_terms_rounded(
            graph,
            &p,
            probe.view(),
            config.sensitivity,
            rounded.as_deref(),
        )?;
        gains = refine_gains(&gains, &p, &terms)?;
        let cfg = config.clone().with_gains(gains.clone());
        let next = plan_with_noise(graph, calibration, &cfg, &noise)?;
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

#[cfg(test)]
mod tests {
    use ndarray::{Array2, ArrayD, IxDyn};

    use super::*;
    use crate::Budget;
    use crate::graph::{Node, Op, TensorInfo};
    use crate::plan::plan;

    /// y = relu(x Wᵀ + b) with weights on the 1/8 grid, which 8-bit weights represent exactly.
    fn exact_weights_graph() -> Graph {
        let w = Array2::from_shape_fn((4, 8), |(o, i)| ((o * 8 + i) % 15) as f32 / 8.0 - 0.875)
            .into_dyn();
        let b = ArrayD::from_elem(IxDyn(&[4]), 0.25f32);
        let input = TensorInfo {
            name: "x".into(),
            shape: vec![None, Some(8)],
        };
        let gemm = Node {
            name: "fc".into(),
            op: Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            inputs: vec!["x".into(), "w".into(), "b".into()],
            output: "h".into(),
        };
        let relu = Node {
            name: "relu".into(),
            op: Op::Relu,
            inputs: vec!["h".into()],
            output: "y".into(),
        };
        Graph::new(
            input,
            "y",
            vec![gemm, relu],
            vec![("w".into(), w), ("b".into(), b)],
        )
        .unwrap()
    }

    #[test]
    fn a_term_that_changes_nothing_is_capped_and_refines_to_finite_gains() {
        let graph = exact_weights_graph();
        let exec = FloatExecutor::new(&graph);
        let x = Array2::from_shape_fn((64, 8), |(n, i)| ((n * 8 + i) as f32 * 0.91).cos().abs())
            .into_dyn();
        let mut cal = Calibration::new();
        cal.observe(&exec, x.view()).unwrap();
        let gains = super::super::noise_gains(&graph, x.view(), 3).unwrap();
        let cfg = PlanConfig::equal(8).with_gains(gains.clone());
        let p = plan(&graph, &cal, &cfg).unwrap();
        // Exact weights: no noise, so no gain (this planned to a NaN gain before).
        assert_eq!(p.weight("fc").unwrap().gain_db, 0.0);
        assert!(p.predicted_output_sqnr_db().is_finite());
        let terms = measure_terms(&graph, &p, x.view()).unwrap();
        let w = terms.iter().find(|t| t.weights).unwrap();
        assert_eq!(w.name, "fc");
        assert_eq!(
            w.output_db,
            sqnr::CURVE_CAP_DB,
            "8-bit weights on the 1/8 grid are exact"
        );
        // The activations are not exact: finite, below the cap.
        assert!(
            terms
                .iter()
                .filter(|t| !t.weights)
                .any(|t| t.output_db < 200.0)
        );
        let g = refine_gains(&gains, &p, &terms).unwrap();
        assert!(g.weights.iter().all(|(_, db)| db.is_finite()));
        let p2 = plan_at_operating_point(&graph, &cal, &cfg, x.view(), 2).unwrap();
        assert!(p2.predicted_output_sqnr_db().is_finite());
        // Without measured gains there is nothing to refine.
        assert!(
            plan_at_operating_point(
                &graph,
                &cal,
                &PlanConfig::fixq(Budget::AvgBitsPerParam(8.0)),
                x.view(),
                1
            )
            .is_err()
        );
    }
}
