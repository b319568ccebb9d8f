//! Noise gains and Eq. 9 terms for all tensors at once, from one forward and a few backward passes
//! per probe batch, linearised.
//!
//! The forward method ([`Sensitivity::Forward`]) perturbs one tensor, runs the float graph on the
//! probe and compares outputs: one full pass per tensor and per kind of perturbation, so its cost
//! grows with depth × tensors (quadratically in depth). Here, to first order, a perturbation Δ of a
//! tensor t moves the output y by J_t·Δ (J_t = ∂y/∂t, per image). For v drawn from N(0, I) over the
//! output, E_v⟨v, J_t·Δ⟩² = ‖J_t·Δ‖², and ⟨v, J_t·Δ⟩ = ⟨J_tᵀ·v, Δ⟩, where J_tᵀ·v for **every** tensor t
//! comes from one backward pass ([`FloatExecutor::backward`]). So, per probe batch:
//!
//! 1. one taped forward pass, then [`DRAWS`] backward passes from Gaussian v;
//! 2. for each weighted layer, Δ of its output for each perturbation d of its weights, which is the
//!    layer alone evaluated with weights d and no bias (exact: the layer is linear in its weights);
//!    for an activation, Δ itself;
//! 3. the output noise power estimate Σ_images ⟨J_tᵀ·v, Δ⟩², averaged over the draws.
//!
//! Cost: one forward, [`DRAWS`] backward passes (each about two forwards) and one layer evaluation
//! per weight perturbation — linear in depth. For independent noise on an activation the expectation
//! over the noise is taken exactly: σ²·Σ_{non-zero k} (J_tᵀ·v)ₖ².
//!
//! What it leaves out: second-order effects (a perturbation large enough to move ReLUs across zero or
//! change a max-pool's winner). At [`super::GAIN_PROBE_DB`] they are negligible; at the 1–3-bit
//! operating points of [`super::plan_at_operating_point`] they are not always — see
//! `docs/reproduction.md` for how the two methods compare there. Statistical error: with v Gaussian
//! and one draw, a per-image estimate has relative variance 2; over N images and D draws the total's
//! relative standard deviation is about √(2/(N·D)) (500 images, 2 draws: 4.5 %, 0.2 dB).

use ndarray::{ArrayD, ArrayViewD, Axis, Zip};

use super::{GAIN_PROBE_DB, NoiseGains, QuantPlan, TermMeasure, activation_points, layer_weights};
use super::{inject, matrix_to_shape};
use crate::error::{Error, Result};
use crate::exec::{FloatExecutor, Gradients, Tape};
use crate::fixed::{NearestLevel, QFormat, SplitMix64};
use crate::graph::{Graph, LayerWeights};
use crate::sqnr;

/// Backward passes (Gaussian output directions) per probe batch.
pub const DRAWS: usize = 2;

/// Images per taped batch (the tape holds every activation of the batch).
const BATCH: usize = 50;

/// How [`super::noise_gains_with`] and [`super::measure_terms_with`] measure how a tensor's noise
/// reaches the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Sensitivity {
    /// [`Sensitivity::Backward`] when every op on the way has a backward pass, else
    /// [`Sensitivity::Forward`].
    #[default]
    Auto,
    /// All tensors at once, linearised through backward passes (this module): cost linear in depth.
    Backward,
    /// One float forward pass per tensor and perturbation: exact effect of each perturbation, cost
    /// quadratic in depth.
    Forward,
}

/// Where a perturbation is applied.
enum Site {
    /// The weights (input `input`) of node `node`, changed by `d` (the initializer's layout).
    Weight {
        node: usize,
        input: usize,
        d: ArrayD<f32>,
        /// A bias change per output channel (axis 1 of the node's output), if any.
        db: Option<Vec<f32>>,
    },
    /// Independent noise at [`GAIN_PROBE_DB`] on the non-zero entries of a tensor (`None`: the
    /// graph input; `Some(i)`: the output of node i), its expectation taken exactly.
    ActivationNoise(Option<usize>),
    /// A tensor rounded to `format` (round to nearest even, saturated).
    ActivationFormat(Option<usize>, QFormat),
}

/// Σ clean output², and per site the estimated Σ (output change)², over `probe`.
fn output_noise(
    graph: &Graph,
    probe: ArrayViewD<'_, f32>,
    sites: &[Site],
    seed: u64,
) -> Result<(f64, Vec<f64>)> {
    let exec = FloatExecutor::new(graph);
    let mut rng = SplitMix64::new(seed ^ 0x005E_ED0F_BAC4);
    let mut signal = 0f64;
    let mut noise = vec![0f64; sites.len()];
    for batch in probe.axis_chunks_iter(Axis(0), BATCH) {
        let tape = exec.run_taped(batch.view())?;
        let y = exec.tape_output(&tape)?;
        signal += y.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
        // The perturbations' own effect on the tensor they touch, computed once per batch.
        let deltas: Vec<Option<ArrayD<f32>>> = sites
            .iter()
            .map(|s| delta(&exec, &tape, s))
            .collect::<Result<_>>()?;
        for _ in 0..DRAWS {
            let v = ArrayD::from_shape_fn(y.raw_dim(), |_| gaussian(&mut rng));
            let g = exec.backward(&tape, v.view())?;
            for ((site, d), acc) in sites.iter().zip(&deltas).zip(noise.iter_mut()) {
                *acc += site_noise(site, d.as_ref(), &tape, &g)? / DRAWS as f64;
            }
        }
    }
    Ok((signal, noise))
}

/// The tensor-level change a site makes (`None` for activation noise, taken in expectation).
fn delta(exec: &FloatExecutor<'_>, tape: &Tape, site: &Site) -> Result<Option<ArrayD<f32>>> {
    Ok(match site {
        Site::Weight { node, input, d, db } => {
            let mut out = exec.weight_delta(tape, *node, *input, d.view())?;
            if let Some(db) = db
                && out.ndim() >= 2
                && out.shape()[1] == db.len()
            {
                for (c, mut lane) in out.axis_iter_mut(Axis(1)).enumerate() {
                    lane.mapv_inplace(|v| v + db[c]);
                }
            }
            Some(out)
        }
        Site::ActivationNoise(_) => None,
        Site::ActivationFormat(t, f) => {
            let a = value(tape, *t)?;
            let l = NearestLevel::new(*f);
            Some(a.mapv(|v| l.fake_f32(v) - v))
        }
    })
}

fn value(tape: &Tape, t: Option<usize>) -> Result<&ArrayD<f32>> {
    match t {
        None => Ok(tape.input()),
        Some(i) => tape.value(i).ok_or_else(|| Error::Internal {
            reason: format!("node {i} is not on the tape"),
        }),
    }
}

/// The gradient (J_tᵀ·v) at the tensor a site perturbs: at the weighted node's output, or at the
/// activation. `None` when the tensor does not reach the output.
fn grad_at<'a>(site: &Site, g: &'a Gradients) -> Option<&'a ArrayD<f32>> {
    let t = match site {
        Site::Weight { node, .. } => Some(*node),
        Site::ActivationNoise(t) | Site::ActivationFormat(t, _) => *t,
    };
    match t {
        None => g.input.as_ref(),
        Some(i) => g.nodes.get(i).and_then(Option::as_ref),
    }
}

/// Σ over images of ⟨J_tᵀ·v, Δ⟩² (or its expectation over independent noise).
fn site_noise(site: &Site, d: Option<&ArrayD<f32>>, tape: &Tape, g: &Gradients) -> Result<f64> {
    let Some(u) = grad_at(site, g) else {
        return Ok(0.0);
    };
    match (site, d) {
        (Site::ActivationNoise(t), _) => {
            let a = value(tape, *t)?;
            let n = a.len() as f64;
            let (power, active, u2) = match (a.as_slice(), u.as_slice()) {
                (Some(x), Some(du)) if x.len() == du.len() => masked_sums(x, du),
                _ => {
                    let (mut power, mut active, mut u2) = (0f64, 0f64, 0f64);
                    Zip::from(a).and(u).for_each(|&x, &du| {
                        power += f64::from(x) * f64::from(x);
                        if x != 0.0 {
                            active += 1.0;
                            u2 += f64::from(du) * f64::from(du);
                        }
                    });
                    (power, active, u2)
                }
            };
            if power == 0.0 || active == 0.0 {
                return Ok(0.0);
            }
            // Uniform noise of variance σ² on the non-zero entries, total power γ below the tensor's.
            let var = power / n * sqnr::db_to_linear(-GAIN_PROBE_DB) * n / active;
            Ok(var * u2)
        }
        (_, Some(d)) => {
            let mut total = 0f64;
            for (ui, di) in u.outer_iter().zip(d.outer_iter()) {
                let s = match (ui.as_slice(), di.as_slice()) {
                    (Some(a), Some(b)) if a.len() == b.len() => dot(a, b),
                    _ => {
                        let mut s = 0f64;
                        Zip::from(&ui)
                            .and(&di)
                            .for_each(|&a, &b| s += f64::from(a) * f64::from(b));
                        s
                    }
                };
                total += s * s;
            }
            Ok(total)
        }
        (_, None) => Err(Error::Internal {
            reason: "a weight or format site without its change".into(),
        }),
    }
}

/// Lanes of the sums below: independent f64 accumulators, so that the loops vectorize.
const LANES: usize = 8;

/// Σ aᵢbᵢ in f64 (`a`, `b` of equal length).
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += f64::from(x[k]) * f64::from(y[k]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// (Σ xᵢ², the number of non-zero xᵢ, Σ over non-zero xᵢ of uᵢ²) in f64.
fn masked_sums(x: &[f32], u: &[f32]) -> (f64, f64, f64) {
    let (mut p, mut n, mut s) = ([0f64; LANES], [0f64; LANES], [0f64; LANES]);
    let one = |x: f32, u: f32| -> (f64, f64, f64) {
        let on = if x != 0.0 { 1.0 } else { 0.0 };
        (
            f64::from(x) * f64::from(x),
            on,
            on * f64::from(u) * f64::from(u),
        )
    };
    let (cx, cu) = (x.chunks_exact(LANES), u.chunks_exact(LANES));
    let mut tail = (0f64, 0f64, 0f64);
    for (&a, &b) in cx.remainder().iter().zip(cu.remainder()) {
        let (dp, dn, ds) = one(a, b);
        tail = (tail.0 + dp, tail.1 + dn, tail.2 + ds);
    }
    for (a, b) in cx.zip(cu) {
        for k in 0..LANES {
            let (dp, dn, ds) = one(a[k], b[k]);
            p[k] += dp;
            n[k] += dn;
            s[k] += ds;
        }
    }
    (
        p.iter().sum::<f64>() + tail.0,
        n.iter().sum::<f64>() + tail.1,
        s.iter().sum::<f64>() + tail.2,
    )
}

fn gaussian(rng: &mut SplitMix64) -> f32 {
    // Box–Muller; 1 − u lies in (0, 1], so the logarithm is finite.
    let (u1, u2) = (1.0 - rng.next_unit(), rng.next_unit());
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn weight_input(graph: &Graph, lw: &LayerWeights) -> Result<usize> {
    graph.nodes()[lw.node_index]
        .inputs
        .iter()
        .position(|n| *n == lw.weight_name)
        .ok_or_else(|| Error::Internal {
            reason: format!("node '{}' does not read '{}'", lw.node, lw.weight_name),
        })
}

/// The node producing activation point `tensor` (`None`: the graph input).
fn producer_of(graph: &Graph, tensor: &str) -> Option<usize> {
    graph.nodes().iter().rposition(|n| n.output == tensor)
}

fn energy(a: &ArrayD<f32>) -> f64 {
    a.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
}

/// [`super::noise_gains`] by the backward method.
pub(super) fn gains_backward(
    graph: &Graph,
    probe: ArrayViewD<'_, f32>,
    seed: u64,
) -> Result<NoiseGains> {
    let layers = layer_weights(graph)?;
    let mut rng = SplitMix64::new(seed);
    let mut sites = Vec::new();
    // Per weighted layer: independent, coherent and offset perturbations with their powers relative
    // to the weights'.
    let mut rel = Vec::new();
    for lw in &layers {
        let w = graph
            .initializer(&lw.weight_name)
            .ok_or_else(|| Error::InvalidArgument {
                name: "graph",
                reason: format!("no initializer '{}'", lw.weight_name),
            })?;
        let e = energy(w);
        if e == 0.0 {
            return Err(Error::ZeroVariance {
                what: "weights for noise injection",
                count: w.len() as u64,
                value: 0.0,
            });
        }
        let input = weight_input(graph, lw)?;
        let mut noisy = w.clone();
        inject(noisy.view_mut(), &mut rng, false)?;
        let noise = &noisy - w;
        let eps = sqnr::db_to_linear(-GAIN_PROBE_DB).sqrt() as f32;
        let coherent = w * eps;
        let delta = (e * sqnr::db_to_linear(-GAIN_PROBE_DB) / w.len().max(1) as f64).sqrt();
        let signs: Vec<f64> = (0..lw.matrix.nrows())
            .map(|_| if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 })
            .collect();
        let per_out = lw.matrix.ncols();
        let mut offset = ArrayD::<f32>::zeros(w.raw_dim());
        for (i, v) in offset.iter_mut().enumerate() {
            let row = if lw.stored_transposed {
                i % lw.matrix.nrows()
            } else {
                i / per_out.max(1)
            };
            *v = (signs[row.min(signs.len() - 1)] * delta) as f32;
        }
        for d in [noise, coherent, offset] {
            rel.push(energy(&d) / e);
            sites.push(Site::Weight {
                node: lw.node_index,
                input,
                d,
                db: None,
            });
        }
    }
    let points = activation_points(graph);
    for (tensor, _) in &points {
        sites.push(Site::ActivationNoise(producer_of(graph, tensor)));
        rel.push(sqnr::db_to_linear(-GAIN_PROBE_DB));
    }
    let (signal, noise) = output_noise(graph, probe.view(), &sites, seed)?;
    if signal == 0.0 {
        return Err(Error::ZeroVariance {
            what: "probe output",
            count: probe.len() as u64,
            value: 0.0,
        });
    }
    // gain = (output noise / output signal) / (injected noise / tensor signal), in dB.
    let gain = |k: usize| -> f64 {
        let ratio = (noise[k] / signal) / rel[k];
        if ratio > 0.0 {
            10.0 * ratio.log10()
        } else {
            -sqnr::CURVE_CAP_DB
        }
    };
    let mut g = NoiseGains {
        weights: Vec::new(),
        weights_coherent: Vec::new(),
        weights_offset: Vec::new(),
        activations: Vec::new(),
    };
    for (l, lw) in layers.iter().enumerate() {
        g.weights.push((lw.node.clone(), gain(3 * l)));
        g.weights_coherent.push((lw.node.clone(), gain(3 * l + 1)));
        g.weights_offset.push((lw.node.clone(), gain(3 * l + 2)));
    }
    for (k, (tensor, _)) in points.into_iter().enumerate() {
        g.activations.push((tensor, gain(3 * layers.len() + k)));
    }
    Ok(g)
}

/// [`super::measure_terms`] by the backward method.
pub(super) fn terms_backward(
    graph: &Graph,
    plan: &QuantPlan,
    probe: ArrayViewD<'_, f32>,
    rounded: Option<&[crate::rounding::RoundedLayer]>,
) -> Result<Vec<TermMeasure>> {
    let layers = layer_weights(graph)?;
    let mut sites = Vec::new();
    let mut names = Vec::new();
    for (li, lw) in layers.iter().enumerate() {
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
        let (mut m, db) = super::operating::layer_values(lw, wp, li, rounded)?;
        m.zip_mut_with(&lw.matrix, |q, &w| *q -= w);
        let d = matrix_to_shape(&m, &lw.shape)?;
        let d = if lw.stored_transposed {
            d.t().as_standard_layout().into_owned()
        } else {
            d
        };
        sites.push(Site::Weight {
            node: lw.node_index,
            input: weight_input(graph, lw)?,
            d,
            db,
        });
        names.push((lw.node.clone(), true));
    }
    for a in plan.activations() {
        let t = if a.tensor == graph.input().name {
            None
        } else {
            Some(
                producer_of(graph, &a.tensor).ok_or_else(|| Error::InvalidArgument {
                    name: "plan",
                    reason: format!("the graph has no tensor '{}'", a.tensor),
                })?,
            )
        };
        sites.push(Site::ActivationFormat(t, a.format));
        names.push((a.tensor.clone(), false));
    }
    let (signal, noise) = output_noise(graph, probe.view(), &sites, 0x7E57)?;
    if signal == 0.0 {
        return Err(Error::ZeroVariance {
            what: "probe output",
            count: probe.len() as u64,
            value: 0.0,
        });
    }
    Ok(names
        .into_iter()
        .zip(noise)
        .map(|((name, weights), n)| TermMeasure {
            name,
            weights,
            output_db: if n > 0.0 {
                (10.0 * (signal / n).log10()).min(sqnr::CURVE_CAP_DB)
            } else {
                sqnr::CURVE_CAP_DB
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_equal_the_plain_sums() {
        let mut rng = SplitMix64::new(5);
        for len in [0usize, 1, 7, 8, 9, 63, 1000] {
            let x: Vec<f32> = (0..len)
                .map(|i| if i % 3 == 0 { 0.0 } else { gaussian(&mut rng) })
                .collect();
            let u: Vec<f32> = (0..len).map(|_| gaussian(&mut rng)).collect();
            let plain_dot: f64 = x
                .iter()
                .zip(&u)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            assert!((dot(&x, &u) - plain_dot).abs() <= 1e-12 * (1.0 + plain_dot.abs()));
            let (p, n, s) = masked_sums(&x, &u);
            let want_p: f64 = x.iter().map(|&a| f64::from(a) * f64::from(a)).sum();
            let want_n = x.iter().filter(|&&a| a != 0.0).count() as f64;
            let want_s: f64 = x
                .iter()
                .zip(&u)
                .filter(|(a, _)| **a != 0.0)
                .map(|(_, &b)| f64::from(b) * f64::from(b))
                .sum();
            assert!((p - want_p).abs() <= 1e-12 * (1.0 + want_p));
            assert_eq!(n, want_n);
            assert!((s - want_s).abs() <= 1e-12 * (1.0 + want_s));
        }
    }
}
