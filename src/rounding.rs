//! Which grid point each weight goes to, once its format is fixed: round to nearest, or
//! error-compensating rounding from the layer's calibration inputs (GPTQ, Frantar et al. 2023),
//! and bias correction (Nagel et al. 2019).
//!
//! A weighted layer computes `y = W x + b`. Rounding `W` to `Q` on the plan's grid changes its
//! output by `(Q − W) x`. Over the calibration inputs this costs, per output channel (row) `o`,
//!
//! ```text
//! P_o = (q_o − w_o) M (q_o − w_o)ᵀ,   M = (1/n) Σ x xᵀ   (the input's second moment)
//! ```
//!
//! Round to nearest minimises `‖q_o − w_o‖²`, which is `P_o` only when `M` is a multiple of the
//! identity. [`WeightRounding::Gptq`] minimises `P_o` itself, greedily: the weights are rounded one
//! input at a time, most energetic input first, and each rounding error is fed back into the weights
//! not yet rounded through the inverse of `H = M + λI` (λ = [`GPTQ_DAMPING`] × the mean of `M`'s
//! diagonal): with `H⁻¹ = UᵀU` (`U` upper triangular),
//!
//! ```text
//! q_i = round(w_i),   w_j ← w_j − (w_i − q_i) · U_ij / U_ii   for every j after i,
//! ```
//!
//! the optimal update of the remaining weights for the error just made (Optimal Brain Surgeon's
//! formula, taken in a fixed order as GPTQ does). Every row reuses the one factorisation of its
//! group's `H`; rows are independent, so per-channel formats (each row on its own grid) need
//! nothing more. Every value stays on the format's grid (saturated at its ends), so the integer
//! network's own rounding of these values is exact.
//!
//! Bias correction then removes the mean output shift the rounding leaves: `b_o ← b_o − (q_o − w_o)·μ`
//! with `μ` the mean input sample, after which the channel's error power is
//! `(q_o − w_o) C (q_o − w_o)ᵀ`, `C = M − μμᵀ` the input's covariance.
//!
//! How the plan sees it ([`crate::plan`]): for every candidate width the planner rounds the
//! tensor (or channel) this way and measures `P` against round to nearest's `P` at the same
//! format; that ratio scales the Eq. 9 term of nearest rounding's noise model for the width. The
//! assumption is that downstream layers pass the rounded layer's output error on as they pass
//! nearest rounding's; the operating-point rounds ([`crate::plan::plan_at_operating_point`]) then
//! measure each term with the rounded weights and correct the gains where it does not hold.
//!
//! Layers this module leaves to nearest rounding: fan-in above [`MAX_FAN_IN`], Gemm with α ≠ 1, and
//! (for bias correction) MatMul, which has no bias, and Gemm with β ≠ 1.
//!
//! Docs: `docs/rounding.md`.

mod gptq;
mod moments;

use ndarray::{Array2, Axis};

pub use moments::{InputMoments, MAX_FAN_IN};

use crate::error::{Error, Result};
use crate::fixed::{NearestLevel, QFormat};
use crate::graph::{Graph, LayerWeights, Op, layer_weights, matrix_to_shape};
use crate::quant_plan::QuantPlan;
use gptq::Factor;
use moments::LayerMoments;

/// How weights are put on their format's grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum WeightRounding {
    /// Each weight to its nearest grid point (ties to even), saturated.
    #[default]
    Nearest,
    /// Error-compensating rounding from the layer's calibration inputs (see the module docs).
    /// Needs [`InputMoments`] in the calibration and fixq's feature `gptq`.
    Gptq,
}

/// GPTQ's damping: λ = 1 % of the mean diagonal of the input's second moment.
pub const GPTQ_DAMPING: f64 = 0.01;

/// One layer's weights after rounding: grid values `[out, fan_in]` (as `LayerWeights::matrix`) and
/// the bias change per output channel.
#[derive(Debug, Clone)]
pub(crate) struct RoundedLayer {
    pub matrix: Array2<f32>,
    pub bias_delta: Option<Vec<f32>>,
}

/// Rounds the rows of one weighted layer.
pub(crate) struct LayerRounder<'a> {
    lw: &'a LayerWeights,
    moments: Option<&'a LayerMoments>,
    /// One per group when rounding with feedback; empty for nearest.
    factors: Vec<Factor>,
    bias_correction: bool,
    means: Vec<Vec<f64>>,
}

impl<'a> LayerRounder<'a> {
    /// The rounder of layer `lw` with `moments` (`None`: nearest, no correction).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `rounding` or `bias_correction` asks for moments that are
    /// `None`; the factorisation's errors.
    pub fn new(
        lw: &'a LayerWeights,
        graph: &Graph,
        moments: Option<&'a InputMoments>,
        rounding: WeightRounding,
        bias_correction: bool,
    ) -> Result<Self> {
        let wants = rounding == WeightRounding::Gptq || bias_correction;
        if wants && moments.is_none() {
            return Err(Error::InvalidArgument {
                name: "calibration",
                reason: format!(
                    "{} needs the layers' input moments: calibrate with Calibration::with_layer_inputs() (layer '{}')",
                    if rounding == WeightRounding::Gptq {
                        "GPTQ rounding"
                    } else {
                        "bias correction"
                    },
                    lw.node
                ),
            });
        }
        let node = &graph.nodes()[lw.node_index];
        let (alpha_one, beta_one, has_bias_slot) = match node.op {
            Op::Gemm { alpha, beta, .. } => (alpha == 1.0, beta == 1.0, true),
            Op::Conv { .. } => (true, true, true),
            _ => (true, false, false),
        };
        let lm = moments
            .and_then(|m| m.layer(&lw.node))
            .filter(|l| l.fan_in == lw.matrix.ncols() && l.groups.iter().all(|g| g.samples > 0));
        let lm = if wants { lm } else { None };
        let factors = match (rounding, lm) {
            (WeightRounding::Gptq, Some(l)) if alpha_one => l
                .groups
                .iter()
                .map(|g| Factor::new(&g.gram, g.samples, l.fan_in, GPTQ_DAMPING))
                .collect::<Result<_>>()
                .map_err(|e| with_node(e, &lw.node))?,
            _ => Vec::new(),
        };
        let means = lm.map_or_else(Vec::new, |l| l.groups.iter().map(|g| g.mean()).collect());
        Ok(Self {
            lw,
            moments: lm,
            factors,
            bias_correction: bias_correction && lm.is_some() && beta_one && has_bias_slot,
            means,
        })
    }

    /// Whether this layer's rounding uses feedback (else nearest).
    pub fn feedback(&self) -> bool {
        !self.factors.is_empty()
    }

    /// Whether this layer's bias is corrected.
    pub fn corrects_bias(&self) -> bool {
        self.bias_correction
    }

    /// Whether input moments are known for this layer (so [`Self::output_power`] measures).
    pub fn has_moments(&self) -> bool {
        self.moments.is_some()
    }

    fn group(&self, row: usize) -> usize {
        self.moments.map_or(0, |l| {
            (row / l.rows_per_group.max(1)).min(l.groups.len() - 1)
        })
    }

    /// Every row rounded, row `r` onto `format_of_row(r)`'s grid: the values (row-major
    /// `[rows, fan_in]`) and, with feedback, each row's output error power `(q − w) M (q − w)ᵀ` (before bias
    /// correction; all rows of a channel group in one blocked pass).
    pub fn round_all(
        &self,
        format_of_row: &dyn Fn(usize) -> QFormat,
    ) -> (Vec<f32>, Option<Vec<f64>>) {
        let (rows, k) = self.lw.matrix.dim();
        let w: Vec<f32> = self.lw.matrix.iter().copied().collect();
        let levels: Vec<NearestLevel> = (0..rows)
            .map(|r| NearestLevel::new(format_of_row(r)))
            .collect();
        let mut out = vec![0f32; rows * k];
        let (Some(l), false) = (self.moments, self.factors.is_empty()) else {
            for ((o, &v), r) in out
                .iter_mut()
                .zip(&w)
                .zip((0..rows).flat_map(|r| std::iter::repeat_n(r, k)))
            {
                *o = levels[r].fake_f32(v);
            }
            return (out, None);
        };
        let per = l.rows_per_group.max(1);
        let mut powers = Vec::with_capacity(rows);
        for (g, f) in self.factors.iter().enumerate() {
            let lo = (g * per).min(rows);
            let hi = ((g + 1) * per).min(rows);
            powers.extend(f.round_rows(
                &w[lo * k..hi * k],
                hi - lo,
                &levels[lo..hi],
                &mut out[lo * k..hi * k],
            ));
        }
        // Greedy feedback can lose to nearest on a row: keep the better of the two.
        let nearest = self.nearest_powers(format_of_row);
        for (r, (p, &pn)) in powers.iter_mut().zip(&nearest).enumerate() {
            if pn < *p {
                *p = pn;
                for (o, &v) in out[r * k..(r + 1) * k]
                    .iter_mut()
                    .zip(&w[r * k..(r + 1) * k])
                {
                    *o = levels[r].fake_f32(v);
                }
            }
        }
        (out, Some(powers))
    }

    /// Round to nearest's output error power `(q − w) M (q − w)ᵀ` of every row, row `r` at
    /// `format_of_row(r)`: one matrix product per channel group. Zeros without moments.
    pub fn nearest_powers(&self, format_of_row: &dyn Fn(usize) -> QFormat) -> Vec<f64> {
        let rows = self.lw.matrix.nrows();
        let Some(l) = self.moments else {
            return vec![0.0; rows];
        };
        let k = l.fan_in;
        let mut e = vec![0f64; rows * k];
        for (r, (w, er)) in self
            .lw
            .matrix
            .axis_iter(Axis(0))
            .zip(e.chunks_exact_mut(k))
            .enumerate()
        {
            let level = NearestLevel::new(format_of_row(r));
            for (d, &v) in er.iter_mut().zip(w.iter()) {
                *d = f64::from(level.fake_f32(v)) - f64::from(v);
            }
        }
        let per = l.rows_per_group.max(1);
        let mut out = Vec::with_capacity(rows);
        for (g, gm) in l.groups.iter().enumerate() {
            let lo = (g * per).min(rows);
            let hi = ((g + 1) * per).min(rows);
            let forms = moments::quadratic_forms(&e[lo * k..hi * k], hi - lo, k, &gm.gram);
            let n = gm.samples.max(1) as f64;
            out.extend(forms.into_iter().map(|v| (v / n).max(0.0)));
        }
        out.resize(rows, 0.0);
        out
    }

    /// The mean output shift `e·μ` of weight error `e` on row `row` (0 without moments).
    pub fn mean_shift(&self, row: usize, e: &[f64]) -> f64 {
        self.means
            .get(self.group(row))
            .map_or(0.0, |m| e.iter().zip(m).map(|(a, b)| a * b).sum())
    }

    /// Output error power of row `row` for weight error `e` (`q − w`, f64): `e M eᵀ`, or with
    /// `centered` the covariance's `e C eᵀ` (what is left after bias correction). Zero without
    /// moments. The direct O(fan_in²) definition, for tests.
    #[cfg(test)]
    pub fn output_power(&self, row: usize, e: &[f64], centered: bool) -> f64 {
        let Some(l) = self.moments else {
            return 0.0;
        };
        let g = &l.groups[self.group(row)];
        let (k, n) = (l.fan_in, g.samples.max(1) as f64);
        let mut s = 0f64;
        for (i, &ei) in e.iter().enumerate() {
            if ei == 0.0 {
                continue;
            }
            let row = &g.gram[i * k..(i + 1) * k];
            let mut t = 0f64;
            for (&gij, &ej) in row.iter().zip(e) {
                t += gij * ej;
            }
            s += ei * t;
        }
        s /= n;
        if centered {
            let m = &self.means[self.group(row)];
            let d: f64 = e.iter().zip(m).map(|(a, b)| a * b).sum();
            s -= d * d;
        }
        s.max(0.0)
    }

    /// The bias change that cancels the mean output shift of weight error `e` on row `row`
    /// (`−e·μ`), or 0 when the bias is not corrected.
    pub fn bias_delta(&self, row: usize, e: &[f64]) -> f64 {
        if self.bias_correction {
            -self.mean_shift(row, e)
        } else {
            0.0
        }
    }

    /// The whole layer rounded, row `r` onto `format_of_row(r)`, with its bias change.
    pub fn round_layer(&self, format_of_row: impl Fn(usize) -> QFormat) -> Result<RoundedLayer> {
        let (q, _) = self.round_all(&format_of_row);
        let m =
            Array2::from_shape_vec(self.lw.matrix.raw_dim(), q).map_err(|e| Error::Internal {
                reason: format!("rounded weights of '{}': {e}", self.lw.node),
            })?;
        let delta = self.bias_correction.then(|| {
            m.axis_iter(Axis(0))
                .zip(self.lw.matrix.axis_iter(Axis(0)))
                .enumerate()
                .map(|(r, (q, w))| self.bias_delta(r, &row_error(q, w)) as f32)
                .collect()
        });
        Ok(RoundedLayer {
            matrix: m,
            bias_delta: delta,
        })
    }
}

/// A row's rounding error `q − w` in `f64`.
pub(crate) fn row_error<'a>(
    q: impl IntoIterator<Item = &'a f32>,
    w: impl IntoIterator<Item = &'a f32>,
) -> Vec<f64> {
    q.into_iter()
        .zip(w)
        .map(|(a, b)| f64::from(*a) - f64::from(*b))
        .collect()
}

fn with_node(e: Error, node: &str) -> Error {
    match e {
        Error::Internal { reason } => Error::Internal {
            reason: format!("layer '{node}': {reason}"),
        },
        other => other,
    }
}

/// Every weighted layer of `graph` rounded with `plan`'s formats, in graph order.
pub(crate) fn round_layers(
    graph: &Graph,
    plan: &QuantPlan,
    moments: Option<&InputMoments>,
    rounding: WeightRounding,
    bias_correction: bool,
) -> Result<Vec<RoundedLayer>> {
    let layers = layer_weights(graph)?;
    layers
        .iter()
        .map(|lw| {
            let wp = plan.require_weight(&lw.node)?;
            let r = LayerRounder::new(lw, graph, moments, rounding, bias_correction)?;
            r.round_layer(|c| wp.format_of_channel(c))
        })
        .collect()
}

/// `graph` with every weighted layer's weights replaced by their rounded grid values under `plan`
/// and, with `bias_correction`, its biases corrected (a Conv or Gemm without a bias gets one). Build
/// the fixed-point network from the result ([`crate::exec::FixedNetwork::new`]): its own rounding of
/// these values is exact, so it runs exactly the codes chosen here.
///
/// [`crate::quantize()`] does this for you; the expert API needs it after
/// [`crate::plan::plan`] when [`crate::plan::PlanConfig::rounding`] or
/// [`crate::plan::PlanConfig::bias_correction`] is set.
///
/// # Errors
/// [`Error::InvalidArgument`] if `plan` lacks a layer of `graph` or the moments are needed and
/// `None`; the factorisation's errors.
pub fn apply(
    graph: &Graph,
    plan: &QuantPlan,
    moments: Option<&InputMoments>,
    rounding: WeightRounding,
    bias_correction: bool,
) -> Result<Graph> {
    let rounded = round_layers(graph, plan, moments, rounding, bias_correction)?;
    let layers = layer_weights(graph)?;
    let mut inits: Vec<(String, ndarray::ArrayD<f32>)> = graph
        .initializers()
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    let mut nodes = graph.nodes().to_vec();
    let set = |inits: &mut Vec<(String, ndarray::ArrayD<f32>)>, name: &str, a| {
        if let Some(slot) = inits.iter_mut().find(|(n, _)| n == name) {
            slot.1 = a;
        }
    };
    for (lw, r) in layers.iter().zip(rounded) {
        let w = matrix_to_shape(&r.matrix, &lw.shape)?;
        let w = if lw.stored_transposed {
            w.t().as_standard_layout().into_owned()
        } else {
            w
        };
        set(&mut inits, &lw.weight_name, w);
        let Some(delta) = r.bias_delta else {
            continue;
        };
        let bias: Vec<f32> = lw.bias.iter().zip(&delta).map(|(b, d)| b + d).collect();
        let bias = ndarray::Array1::from(bias).into_dyn();
        let node = &mut nodes[lw.node_index];
        match node.inputs.get(2) {
            Some(name)
                if graph
                    .initializer(name)
                    .is_some_and(|b| b.len() == bias.len()) =>
            {
                let shape = graph.initializer(name).map(|b| b.shape().to_vec());
                let bias = match shape {
                    Some(s) => bias.into_shape_with_order(s).map_err(|e| Error::Internal {
                        reason: format!("bias of '{}': {e}", lw.node),
                    })?,
                    None => bias,
                };
                set(&mut inits, &name.clone(), bias);
            }
            Some(_) => {} // a broadcast bias (Gemm with one value) is left as it is
            None => {
                let mut name = format!("{}.corrected_bias", lw.node);
                while graph.initializer(&name).is_some() || inits.iter().any(|(n, _)| *n == name) {
                    name.push('_');
                }
                node.inputs.push(name.clone());
                inits.push((name, bias));
            }
        }
    }
    Graph::new(
        graph.input().clone(),
        graph.output().name.clone(),
        nodes,
        inits,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::Grid;
    use crate::graph::{Node, TensorInfo};
    use ndarray::{Array2, ArrayD, IxDyn};

    /// A 12-input, 5-output Gemm whose inputs are strongly correlated (a shared component).
    fn layer() -> (Graph, InputMoments) {
        let w = Array2::from_shape_fn((5, 12), |(o, i)| ((o * 12 + i) as f32 * 0.73).sin() * 0.8)
            .into_dyn();
        let b = ArrayD::from_elem(IxDyn(&[5]), 0.05f32);
        let input = TensorInfo {
            name: "x".into(),
            shape: vec![None, Some(12)],
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
            output: "y".into(),
        };
        let graph = Graph::new(
            input,
            "y",
            vec![gemm],
            vec![("w".into(), w), ("b".into(), b)],
        )
        .unwrap();
        let x = Array2::from_shape_fn((200, 12), |(n, i)| {
            let shared = ((n as f32) * 0.377).sin();
            shared + 0.3 * ((n * 12 + i) as f32 * 1.91).cos() + 0.2
        })
        .into_dyn();
        let mut moments = InputMoments::for_graph(&graph).unwrap();
        moments.push("x", &x.view()).unwrap();
        (graph, moments)
    }

    fn errors(q: &[f32], w: &Array2<f32>, row: usize) -> Vec<f64> {
        let k = w.ncols();
        row_error(&q[row * k..(row + 1) * k], w.row(row))
    }

    #[test]
    fn fast_powers_match_the_direct_quadratic_form() {
        let (graph, cal) = layer();
        let layers = layer_weights(&graph).unwrap();
        let lw = &layers[0];
        let format = QFormat::new(3, 2, true, Grid::MidTread).unwrap();
        // Nearest with bias correction: moments, no feedback.
        let nearest =
            LayerRounder::new(lw, &graph, Some(&cal), WeightRounding::Nearest, true).unwrap();
        assert!(nearest.has_moments() && !nearest.feedback());
        let (qn, none) = nearest.round_all(&|_| format);
        assert!(none.is_none());
        let fast = nearest.nearest_powers(&|_| format);
        let gptq = LayerRounder::new(lw, &graph, Some(&cal), WeightRounding::Gptq, true).unwrap();
        assert!(gptq.feedback() && gptq.corrects_bias());
        let (qg, powers) = gptq.round_all(&|_| format);
        let powers = powers.unwrap();
        let (mut total_n, mut total_g) = (0.0, 0.0);
        for r in 0..5 {
            let en = errors(&qn, &lw.matrix, r);
            let direct = nearest.output_power(r, &en, false);
            assert!(
                (fast[r] - direct).abs() <= 1e-9 * direct.max(1e-12),
                "row {r}: {} vs {direct}",
                fast[r]
            );
            let eg = errors(&qg, &lw.matrix, r);
            let direct_g = gptq.output_power(r, &eg, false);
            assert!(
                (powers[r] - direct_g).abs() <= 1e-6 * direct_g.max(1e-9),
                "row {r}: blocked {} vs direct {direct_g}",
                powers[r]
            );
            // Bias correction leaves the covariance part, never more than the raw power.
            assert!(gptq.output_power(r, &eg, true) <= direct_g + 1e-12);
            let shift = gptq.mean_shift(r, &eg);
            assert!((gptq.bias_delta(r, &eg) + shift).abs() < 1e-15);
            // The better of feedback and nearest is kept, row by row.
            assert!(
                direct_g <= direct * (1.0 + 1e-9),
                "row {r}: {direct_g} > nearest {direct}"
            );
            total_n += direct;
            total_g += direct_g;
        }
        assert!(
            total_g < 0.8 * total_n,
            "GPTQ {total_g} vs nearest {total_n}"
        );
        // Every GPTQ value is on the format's grid.
        let level = NearestLevel::new(format);
        assert!(qg.iter().all(|&v| level.fake_f32(v) == v));
    }

    #[test]
    fn rounding_without_moments_is_refused_with_the_fix() {
        let (graph, _) = layer();
        let layers = layer_weights(&graph).unwrap();
        for (rounding, bc) in [
            (WeightRounding::Gptq, false),
            (WeightRounding::Nearest, true),
        ] {
            let err = LayerRounder::new(&layers[0], &graph, None, rounding, bc)
                .err()
                .unwrap();
            assert!(
                matches!(&err, Error::InvalidArgument { name: "calibration", reason }
                    if reason.contains("with_layer_inputs") && reason.contains("'fc'")),
                "{err}"
            );
        }
    }
}
