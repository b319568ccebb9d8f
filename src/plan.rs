//! Planning: from a graph, its weights, activation statistics and a [`Budget`], choose every tensor's
//! fixed-point format — the [`QuantPlan`].
//!
//! # What gets a format
//! * **Weights** of every `Conv`, `Gemm` and `MatMul` (with constant weights): per tensor or per output
//!   channel ([`Granularity`]), at the widths the allocator picks.
//! * **Activations** at every point where the integer network produces a new tensor
//!   ([`activation_points`]): the graph input, the output of each weighted layer (after a `Relu` or
//!   `Clip` that directly follows it, which the kernels fuse), of `Add`, and of average pools.
//!   `MaxPool`, `Flatten`, `Reshape`, `Identity` keep their input's format. Non-negative tensors (as
//!   after a ReLU) get unsigned formats, one bit finer than signed ones.
//!
//! # How widths are chosen
//! Each weight tensor (or channel) becomes a [`LayerSpec`] whose SQNR curve is predicted from its fitted
//! family ([`CurveSource::Predicted`]) or measured by quantizing the real tensor at each width
//! ([`CurveSource::Measured`]); activations become pinned specs of zero cost. [`crate::allocate_bits_with`]
//! solves Eq. 11 for the budget, and the predicted output SQNR is Eq. 9 over all terms.
//!
//! For per-channel weights, channel c with signal energy S_c in a layer of energy S contributes
//! (S_c/S)/SQNR_c to the layer's 1/SQNR, so its curve is shifted by 10·log₁₀(S/S_c) dB.
//!
//! # Example
//! ```
//! use fixq::calib::Calibration;
//! use fixq::exec::FloatExecutor;
//! use fixq::graph::{Graph, Node, Op, TensorInfo};
//! use fixq::plan::{plan, PlanConfig};
//! use fixq::Budget;
//! use ndarray::{Array2, ArrayD, IxDyn};
//!
//! // A one-layer network y = relu(x W^T + b) with 8 inputs and 4 outputs.
//! let w = Array2::from_shape_fn((4, 8), |(o, i)| ((o * 8 + i) as f32 * 0.37).sin()).into_dyn();
//! let b = ArrayD::from_elem(IxDyn(&[4]), 0.1f32);
//! let input = TensorInfo { name: "x".into(), shape: vec![None, Some(8)] };
//! let gemm = Node {
//!     name: "fc".into(),
//!     op: Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true },
//!     inputs: vec!["x".into(), "w".into(), "b".into()],
//!     output: "h".into(),
//! };
//! let relu = Node { name: "relu".into(), op: Op::Relu, inputs: vec!["h".into()], output: "y".into() };
//! let graph = Graph::new(input, "y", vec![gemm, relu], vec![("w".into(), w), ("b".into(), b)])?;
//! let exec = FloatExecutor::new(&graph);
//! let x = Array2::from_shape_fn((64, 8), |(n, i)| ((n * 8 + i) as f32 * 0.91).cos()).into_dyn();
//! let mut cal = Calibration::new();
//! cal.observe(&exec, x.view())?;
//! let plan = plan(&graph, &cal, &PlanConfig::fixq(Budget::AvgBitsPerParam(4.0)))?;
//! assert_eq!(plan.model_bits(), 4 * 32);
//! assert!(!plan.activation("y").unwrap().format.is_signed()); // post-ReLU: unsigned
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod operating;
mod sensitivity;

use std::collections::HashMap;
use std::ops::RangeInclusive;

pub(crate) use operating::measure_terms_rounded;
pub use operating::{
    TermMeasure, measure_terms, measure_terms_with, plan_at_operating_point, refine_gains,
};
pub use sensitivity::{DRAWS as SENSITIVITY_DRAWS, Sensitivity};

use ndarray::{ArrayD, Axis};

use crate::alloc::{Budget, LayerSpec, Solver, SqnrCurve, allocate_bits_with};
use crate::calib::Calibration;
use crate::dist::{self, Fit};
use crate::error::{Error, Result};
use crate::exec::FloatExecutor;
use crate::fixed::{Grid, PAPER_XI_PER_SIGMA, QFormat};
use crate::graph::Graph;
pub use crate::graph::activation_points;
pub(crate) use crate::graph::{LayerWeights, layer_weights, matrix_to_shape};
use crate::hist::Histogram;
pub use crate::quant_plan::{ActivationPlan, QuantPlan, WeightPlan};
use crate::rounding::{LayerRounder, WeightRounding};
use crate::sqnr;

/// Whether weights get one format per tensor or one per output channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Granularity {
    /// One width and step per weight tensor (the paper).
    PerTensor,
    /// One width and step per output channel.
    PerChannel,
}

/// How a tensor's power-of-two step is chosen for a given width.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum StepRule {
    /// The paper's rule: n = −⌈log₂(ξ·Stepsize_Gaussian(b))⌉ with ξ = `xi_per_sigma`·σ.
    Paper {
        /// ξ/σ (the paper used 3).
        xi_per_sigma: f64,
    },
    /// Best power of two for the fitted family ([`QFormat::min_expected_mse`]).
    MinExpectedMse,
    /// Best power of two by exact error over the tensor's values ([`QFormat::min_data_mse`]). For an
    /// activation: by the exact error over the calibration images, from its [`Histogram`] when the
    /// calibration kept one ([`Calibration::with_histograms`]) and the format is at most 8 bits
    /// unsigned or 9 signed ([`Histogram::is_exact_for`]); otherwise `MinExpectedMse`.
    MinDataMse,
}

/// Where each weight tensor's SQNR-versus-bits curve comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CurveSource {
    /// `sqnr::predict_db` of the fitted family at each width's format.
    Predicted,
    /// Quantize the real tensor at each width and measure.
    Measured,
    /// The paper's line γ_dB = κ·b (offset 0), as in its Eq. 15.
    Linear {
        /// κ in dB per bit (the paper used 3).
        kappa_db_per_bit: f64,
    },
}

/// Everything [`plan`] needs to know besides the graph and the calibration.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanConfig {
    /// The allocation target.
    pub budget: Budget,
    /// The allocation algorithm.
    pub solver: Solver,
    /// Allowed weight widths in bits (1..=8 fit the i8 kernels; mid-rise needs ≤ 7).
    pub weight_bits: RangeInclusive<u32>,
    /// When set, every weight tensor gets exactly this width (equal bit-widths).
    pub equal_weight_bits: Option<u32>,
    /// Width of every activation except the graph output (8 fits the u8/i8 kernels, up to 15 in i16).
    pub activation_bits: u32,
    /// Width of the graph output (logits), in bits (≤ 15).
    pub output_bits: u32,
    /// Per-tensor or per-channel weights.
    pub granularity: Granularity,
    /// Weight grid: two's complement, or mid-rise (odd multiples of half a step; run as 2q+1).
    pub weight_grid: Grid,
    /// Step rule for weights.
    pub weight_step: StepRule,
    /// Step rule for activations.
    pub activation_step: StepRule,
    /// Source of the weight curves.
    pub curve: CurveSource,
    /// Measured noise gains ([`noise_gains`]): when set, each Eq. 9 term is weighted by how strongly
    /// its noise reaches the output, in the allocation and in the prediction. `None` is the paper's
    /// Eq. 9 (every gain 1).
    pub gains: Option<NoiseGains>,
    /// How [`plan_at_operating_point`] measures each term at the plan's formats.
    pub sensitivity: Sensitivity,
    /// Which grid point each weight goes to ([`crate::rounding`]). With
    /// [`WeightRounding::Gptq`] every candidate width's curve is measured after that rounding, and
    /// the calibration must hold the layers' input moments ([`Calibration::with_layer_inputs`]).
    /// The plan holds formats only: build the network from [`crate::rounding::apply`]'s graph.
    pub rounding: WeightRounding,
    /// Remove each output channel's mean rounding shift through its bias ([`crate::rounding`]);
    /// needs the input moments like `rounding`.
    pub bias_correction: bool,
}

impl PlanConfig {
    /// fixq's method: fitted families, measured curves, exact allocation, per-tensor two's complement
    /// weights in 1..=8 bits, 8-bit activations (unsigned after ReLU), 16-bit output.
    pub fn fixq(budget: Budget) -> Self {
        Self {
            budget,
            solver: Solver::Exact,
            weight_bits: 1..=8,
            equal_weight_bits: None,
            activation_bits: 8,
            output_bits: 16,
            granularity: Granularity::PerTensor,
            weight_grid: Grid::MidTread,
            weight_step: StepRule::MinDataMse,
            activation_step: StepRule::MinExpectedMse,
            curve: CurveSource::Measured,
            gains: None,
            sensitivity: Sensitivity::Auto,
            rounding: WeightRounding::Nearest,
            bias_correction: false,
        }
    }

    /// The same configuration with measured noise gains.
    pub fn with_gains(mut self, gains: NoiseGains) -> Self {
        self.gains = Some(gains);
        self
    }

    /// The paper's method: ξ = 3σ with Gaussian steps for every tensor, κ = 3 lines, the closed-form
    /// allocation (Eq. 15) rounded.
    pub fn paper(budget: Budget) -> Self {
        Self {
            solver: Solver::PaperClosedForm,
            weight_step: StepRule::Paper {
                xi_per_sigma: PAPER_XI_PER_SIGMA,
            },
            activation_step: StepRule::Paper {
                xi_per_sigma: PAPER_XI_PER_SIGMA,
            },
            curve: CurveSource::Linear {
                kappa_db_per_bit: 3.0,
            },
            ..Self::fixq(budget)
        }
    }

    /// Equal bit-widths: every weight tensor at `bits`, steps by fixq's rule.
    pub fn equal(bits: u32) -> Self {
        Self {
            equal_weight_bits: Some(bits),
            ..Self::fixq(Budget::AvgBitsPerParam(f64::from(bits)))
        }
    }
}

/// How strongly each tensor's noise reaches the graph output, measured on the float graph.
///
/// The paper's Eq. 9 adds every term's 1/SQNR with weight 1. In a trained network a term's noise is
/// attenuated or amplified on its way to the output (ReLUs zero part of it; a layer whose weights align
/// with its inputs lifts the signal above incoherent noise), so fixq measures a gain per term: inject
/// uniform noise at a known SQNR γ into that tensor alone (for activations, only where the value is
/// non-zero, as quantization of exact zeros is exact), run the float graph on a probe batch, and
/// compare with the clean output. gain = SQNR_injected / SQNR_output (linear), and Eq. 9 becomes
/// 1/SQNR_out = Σᵢ gainᵢ / SQNRᵢ. At γ = 30 dB the noise is small enough for the linearisation that
/// Eq. 9 itself assumes.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NoiseGains {
    /// (node name, gain in dB) per weighted layer, for independent noise.
    pub weights: Vec<(String, f64)>,
    /// (node name, gain in dB) per weighted layer, for an error along the weights themselves (a
    /// rescaling of the layer by 1 + ε).
    pub weights_coherent: Vec<(String, f64)>,
    /// (node name, gain in dB) per weighted layer, for a constant offset on each output channel's
    /// weights (random sign per channel).
    pub weights_offset: Vec<(String, f64)>,
    /// (tensor name, gain in dB) per activation point.
    pub activations: Vec<(String, f64)>,
}

impl NoiseGains {
    /// Gain in dB of the weights of `node`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if not measured.
    pub fn weight_db(&self, node: &str) -> Result<f64> {
        lookup(&self.weights, node)
    }
    /// Gain in dB of a rescaling error of the weights of `node`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if not measured.
    pub fn weight_coherent_db(&self, node: &str) -> Result<f64> {
        lookup(&self.weights_coherent, node)
    }
    /// Gain in dB of a per-channel constant offset of the weights of `node`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if not measured.
    pub fn weight_offset_db(&self, node: &str) -> Result<f64> {
        lookup(&self.weights_offset, node)
    }
    /// Gain in dB of activation `tensor`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if not measured.
    pub fn activation_db(&self, tensor: &str) -> Result<f64> {
        lookup(&self.activations, tensor)
    }
}

fn lookup(v: &[(String, f64)], name: &str) -> Result<f64> {
    v.iter()
        .find(|(n, _)| n == name)
        .map(|(_, g)| *g)
        .ok_or_else(|| Error::InvalidArgument {
            name: "gains",
            reason: format!("no noise gain measured for '{name}'"),
        })
}

/// The SQNR, in dB, at which [`noise_gains`] injects noise.
pub const GAIN_PROBE_DB: f64 = 30.0;

/// Measures [`NoiseGains`] for every weighted layer and activation point of `graph` on `probe`
/// (a batch of representative inputs, e.g. a few hundred calibration images), with a seeded generator,
/// by [`Sensitivity::Auto`].
///
/// # Errors
/// The executor's errors; [`Error::ZeroVariance`] if the probe's output or a tensor is all zeros.
pub fn noise_gains(
    graph: &Graph,
    probe: ndarray::ArrayViewD<'_, f32>,
    seed: u64,
) -> Result<NoiseGains> {
    noise_gains_with(graph, probe, seed, Sensitivity::Auto)
}

/// As [`noise_gains`], by the given method: [`Sensitivity::Backward`] (all tensors from one forward
/// and [`SENSITIVITY_DRAWS`] backward passes per batch, linearised) or [`Sensitivity::Forward`] (one
/// float run of the probe per tensor and kind of perturbation).
///
/// # Errors
/// As [`noise_gains`]; with `Backward`, [`Error::Unsupported`] naming a node whose op has no
/// backward pass (`Auto` falls back to `Forward` there).
pub fn noise_gains_with(
    graph: &Graph,
    probe: ndarray::ArrayViewD<'_, f32>,
    seed: u64,
    method: Sensitivity,
) -> Result<NoiseGains> {
    match method {
        Sensitivity::Backward => sensitivity::gains_backward(graph, probe, seed),
        Sensitivity::Auto => match sensitivity::gains_backward(graph, probe.view(), seed) {
            Err(Error::Unsupported(_)) => noise_gains_forward(graph, probe, seed),
            other => other,
        },
        Sensitivity::Forward => noise_gains_forward(graph, probe, seed),
    }
}

fn noise_gains_forward(
    graph: &Graph,
    probe: ndarray::ArrayViewD<'_, f32>,
    seed: u64,
) -> Result<NoiseGains> {
    let clean = FloatExecutor::new(graph).run(probe.view())?;
    let clean_s: Vec<f32> = clean.iter().copied().collect();
    let mut rng = crate::fixed::SplitMix64::new(seed);
    let gain_of = |out: &ArrayD<f32>| -> Result<f64> {
        let o: Vec<f32> = out.iter().copied().collect();
        Ok(GAIN_PROBE_DB - sqnr::measure_db(&clean_s, &o)?)
    };
    let mut weights = Vec::new();
    let mut weights_coherent = Vec::new();
    let mut weights_offset = Vec::new();
    for lw in layer_weights(graph)? {
        let mut g = graph.clone();
        let mut w =
            graph
                .initializer(&lw.weight_name)
                .cloned()
                .ok_or_else(|| Error::InvalidArgument {
                    name: "graph",
                    reason: format!("no initializer '{}'", lw.weight_name),
                })?;
        let original = w.clone();
        inject(w.view_mut(), &mut rng, false)?;
        g.set_initializer(&lw.weight_name, w)?;
        let out = FloatExecutor::new(&g).run(probe.view())?;
        weights.push((lw.node.clone(), gain_of(&out)?));
        // A rescaling by 1 + ε with ε² = 10^(−γ/10).
        let eps = sqnr::db_to_linear(-GAIN_PROBE_DB).sqrt() as f32;
        g.set_initializer(&lw.weight_name, original.mapv(|v| v * (1.0 + eps)))?;
        let out = FloatExecutor::new(&g).run(probe.view())?;
        weights_coherent.push((lw.node.clone(), gain_of(&out)?));
        // A constant ±δ on each output channel's weights (in the initializer's own layout), with
        // total power γ below the tensor's.
        let mut shifted = original.clone();
        let energy: f64 = original.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let delta =
            (energy * sqnr::db_to_linear(-GAIN_PROBE_DB) / original.len().max(1) as f64).sqrt();
        let signs: Vec<f64> = (0..lw.matrix.nrows())
            .map(|_| if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 })
            .collect();
        let per_out = lw.matrix.ncols();
        for (i, v) in shifted.iter_mut().enumerate() {
            let row = if lw.stored_transposed {
                i % lw.matrix.nrows()
            } else {
                i / per_out.max(1)
            };
            *v += (signs[row.min(signs.len() - 1)] * delta) as f32;
        }
        g.set_initializer(&lw.weight_name, shifted)?;
        let out = FloatExecutor::new(&g).run(probe.view())?;
        weights_offset.push((lw.node.clone(), gain_of(&out)?));
    }
    let exec = FloatExecutor::new(graph);
    let mut activations = Vec::new();
    for (tensor, producer) in activation_points(graph) {
        let out = match producer {
            None => {
                let mut x = probe.to_owned();
                inject(x.view_mut(), &mut rng, true)?;
                exec.run(x.view())?
            }
            Some(_) => {
                let mut failure = None;
                let out = exec.run_with_mut(probe.view(), |name, _, act| {
                    if name == tensor
                        && let Err(e) = inject(act.view_mut(), &mut rng, true)
                    {
                        failure = Some(e);
                    }
                })?;
                if let Some(e) = failure {
                    return Err(e);
                }
                out
            }
        };
        activations.push((tensor, gain_of(&out)?));
    }
    Ok(NoiseGains {
        weights,
        weights_coherent,
        weights_offset,
        activations,
    })
}

/// Adds uniform noise at [`GAIN_PROBE_DB`] below the tensor's power (only on non-zero entries when
/// `nonzero_only`).
fn inject(
    mut x: ndarray::ArrayViewMutD<'_, f32>,
    rng: &mut crate::fixed::SplitMix64,
    nonzero_only: bool,
) -> Result<()> {
    let n = x.len() as f64;
    let power: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n.max(1.0);
    let active = if nonzero_only {
        x.iter().filter(|&&v| v != 0.0).count() as f64
    } else {
        n
    };
    if power == 0.0 || active == 0.0 {
        return Err(Error::ZeroVariance {
            what: "tensor for noise injection",
            count: x.len() as u64,
            value: 0.0,
        });
    }
    // Uniform on [-a, a] has variance a²/3.
    let var = power * sqnr::db_to_linear(-GAIN_PROBE_DB) * n / active;
    let a = (3.0 * var).sqrt();
    for v in x.iter_mut() {
        if !nonzero_only || *v != 0.0 {
            *v += ((2.0 * rng.next_unit() - 1.0) * a) as f32;
        }
    }
    Ok(())
}

/// One candidate width of a weight group: its format, its noise-to-signal ratio relative to the
/// layer's energy (`own`), and the same weighted by the noise gains (`term`, the Eq. 9 contribution).
#[derive(Debug, Clone, Copy)]
struct WeightOption {
    format: QFormat,
    own: f64,
    term: f64,
}

/// The quantization error of a weight group split in three, each as a ratio to the group's energy
/// E = Σw² (they sum to ‖q − w‖²/E):
/// * `coherent` = (α − 1)² with α = ⟨q, w⟩/E: a rescaling of the weights, which travels to the output
///   like signal;
/// * `offset`: the per-row mean of the rest, r = q − αw (K·Σ_rows mean(r_row)²/E, K the row length):
///   a constant added to a whole row, which a non-negative input (after a ReLU) sums coherently;
/// * `incoherent`: what remains, the paper's independent noise.
///
/// At one or two bits the first two parts are large, which is why each gets its own gain.
#[derive(Debug, Clone, Copy)]
struct NoiseSplit {
    coherent: f64,
    offset: f64,
    incoherent: f64,
}

fn noise_split(data: &[f32], format: QFormat, row_len: usize) -> Result<NoiseSplit> {
    let q = crate::fixed::Quantizer::<i32>::new(format)?
        .quantize(ndarray::ArrayView1::from(data))?
        .dequantize();
    let (mut e, mut qw) = (0f64, 0f64);
    for (&w, &v) in data.iter().zip(q.iter()) {
        e += f64::from(w) * f64::from(w);
        qw += f64::from(v) * f64::from(w);
    }
    if e == 0.0 {
        return Err(Error::ZeroVariance {
            what: "weights",
            count: data.len() as u64,
            value: 0.0,
        });
    }
    let alpha = qw / e;
    let (mut rest, mut offset) = (0f64, 0f64);
    let q = q.as_slice().unwrap_or(&[]);
    for (wr, qr) in data.chunks(row_len.max(1)).zip(q.chunks(row_len.max(1))) {
        let mut sum = 0f64;
        for (&w, &v) in wr.iter().zip(qr) {
            let r = f64::from(v) - alpha * f64::from(w);
            sum += r;
            rest += r * r;
        }
        offset += sum * sum / wr.len() as f64;
    }
    Ok(NoiseSplit {
        coherent: (alpha - 1.0) * (alpha - 1.0),
        offset: offset / e,
        incoherent: ((rest - offset) / e).max(0.0),
    })
}

fn step_format(
    rule: StepRule,
    fit: &Fit,
    data: Option<&[f32]>,
    bits: u32,
    signed: bool,
    grid: Grid,
) -> Result<QFormat> {
    match rule {
        StepRule::Paper { xi_per_sigma } => {
            let f = QFormat::paper_rule(xi_per_sigma * fit.std(), bits, signed)?;
            if grid == Grid::MidRise {
                QFormat::mid_rise(bits, f.frac_bits())
            } else {
                Ok(f)
            }
        }
        StepRule::MinExpectedMse => QFormat::min_expected_mse(fit, bits, signed, grid),
        StepRule::MinDataMse => match data {
            Some(d) => QFormat::min_data_mse(d, bits, signed, grid),
            None => QFormat::min_expected_mse(fit, bits, signed, grid),
        },
    }
}

/// Chooses formats for every tensor of `graph` (see the module docs).
///
/// # Errors
/// [`Error::Unsupported`] for a graph without quantizable layers or with weights the fixed-point
/// network cannot take; [`Error::InvalidArgument`] for a configuration out of range (widths beyond the
/// kernels' types) or a tensor without calibration statistics; fit errors for constant (zero-variance)
/// weights or activations; the allocator's errors (notably [`Error::Infeasible`], naming the nearest
/// feasible budget).
pub fn plan(graph: &Graph, calibration: &Calibration, config: &PlanConfig) -> Result<QuantPlan> {
    plan_with_noise(
        graph,
        calibration,
        config,
        &weight_noise(graph, calibration, config)?,
    )
}

/// `graph` with its weights rounded onto `plan`'s grids as `config` says ([`PlanConfig::rounding`],
/// [`PlanConfig::bias_correction`]) — the graph to build the fixed-point network from
/// ([`crate::rounding::apply`] with the calibration's input moments). With nearest rounding and no
/// bias correction this changes only the weights' values, not the codes the network runs.
///
/// # Errors
/// As [`crate::rounding::apply`].
pub fn rounded_graph(
    graph: &Graph,
    plan: &QuantPlan,
    calibration: &Calibration,
    config: &PlanConfig,
) -> Result<Graph> {
    crate::rounding::apply(
        graph,
        plan,
        calibration.layer_inputs(),
        config.rounding,
        config.bias_correction,
    )
}

/// [`plan`] with the weight options' gain-independent half already computed (by [`weight_noise`]
/// for this graph and a configuration that differs from `config` at most in its gains).
pub(crate) fn plan_with_noise(
    graph: &Graph,
    calibration: &Calibration,
    config: &PlanConfig,
    noise: &WeightNoise,
) -> Result<QuantPlan> {
    validate_config(config)?;
    let layers = layer_weights(graph)?;
    if noise.layers.len() != layers.len() {
        return Err(Error::Internal {
            reason: format!(
                "weight noise for {} layers, the graph has {}",
                noise.layers.len(),
                layers.len()
            ),
        });
    }
    let activations = plan_activations(graph, calibration, config)?;
    // Weight specs: one per tensor or channel, with each width's format and Eq. 9 term.
    let mut specs = Vec::new();
    let mut spec_owner: Vec<(usize, usize)> = Vec::new(); // (layer, channel or 0)
    let mut options: Vec<Vec<WidthOptions>> = Vec::new();
    for (li, (lw, ln)) in layers.iter().zip(&noise.layers).enumerate() {
        let (layer_specs, per_group) = weight_options(lw, ln, config)?;
        spec_owner.extend((0..layer_specs.len()).map(|g| (li, g)));
        specs.extend(layer_specs);
        options.push(per_group);
    }
    specs.extend(activation_specs(&activations));
    let solver = if config.equal_weight_bits.is_some() {
        Solver::Exact
    } else {
        config.solver
    };
    let alloc = allocate_bits_with(&specs, config.budget, solver)?;
    let weights = assemble_weights(&layers, &spec_owner, &options, alloc.bits())?;
    let mut terms: Vec<f64> = weights
        .iter()
        .map(|w| w.predicted_sqnr_db - w.gain_db)
        .collect();
    terms.extend(activations.iter().map(|a| a.predicted_sqnr_db - a.gain_db));
    let predicted_output_sqnr_db = sqnr::network_db(&terms)?;
    Ok(QuantPlan::from_parts(
        weights,
        activations,
        predicted_output_sqnr_db,
    ))
}

/// Every activation point's format and predicted SQNR term.
fn plan_activations(
    graph: &Graph,
    calibration: &Calibration,
    config: &PlanConfig,
) -> Result<Vec<ActivationPlan>> {
    let points = activation_points(graph);
    let mut activations = Vec::with_capacity(points.len());
    for (tensor, _) in &points {
        let fit = calibration
            .fit(tensor)
            .map_err(|e| with_tensor(e, tensor))?;
        let signed = !fit.is_non_negative();
        let bits = if *tensor == graph.output().name {
            config.output_bits
        } else {
            config.activation_bits
        };
        let bits = if signed { bits } else { bits.min(15) };
        // The calibration's histogram, where it gives the exact error at this width.
        let hist = calibration.histogram(tensor).filter(|_| {
            QFormat::new(bits, 0, signed, Grid::MidTread).is_ok_and(Histogram::is_exact_for)
        });
        let format = match (config.activation_step, hist) {
            (StepRule::MinDataMse, Some(h)) => h
                .min_mse_format(bits, signed, Grid::MidTread)
                .map_err(|e| with_tensor(e, tensor))?,
            _ => step_format(
                config.activation_step,
                &fit,
                None,
                bits,
                signed,
                Grid::MidTread,
            )?,
        };
        let predicted_sqnr_db = match hist {
            // Capped like the fitted curves: an input of integers at step 1 is exact (+∞ dB).
            Some(h) => h
                .sqnr_db(format)
                .map_err(|e| with_tensor(e, tensor))?
                .min(sqnr::CURVE_CAP_DB),
            None => sqnr::predict_db(&fit, format)?,
        };
        let gain_db = config
            .gains
            .as_ref()
            .map_or(Ok(0.0), |g| g.activation_db(tensor))?;
        activations.push(ActivationPlan {
            tensor: tensor.clone(),
            format,
            predicted_sqnr_db,
            gain_db,
        });
    }
    Ok(activations)
}

/// Per allowed width, the format and Eq. 9 term of one weight tensor or channel.
type WidthOptions = HashMap<u32, WeightOption>;

/// What a weight group's options are before the noise gains weigh them: its size, its share of the
/// layer's energy and, per allowed width (from the narrowest), the format and its error.
struct GroupNoise {
    params: u64,
    share: f64,
    widths: Vec<(QFormat, NoiseParts)>,
}

/// A width's error relative to the group's energy: the fitted family's prediction (one part) or the
/// measured split.
#[derive(Debug, Clone, Copy)]
enum NoiseParts {
    Predicted(f64),
    Split(NoiseSplit),
    /// Rounded from the layer's inputs ([`crate::rounding`]): round to nearest's split at the
    /// same format scaled by `ratio`, the rounding's output error power over nearest's, and the
    /// rounded weights' own error `own` (relative to the group's energy).
    Rounded {
        split: NoiseSplit,
        ratio: f64,
        own: f64,
    },
}

/// The gain-independent half of every layer's weight options: the formats and errors of each width,
/// which cost a scan of the weights per candidate step. It depends on the graph and on the
/// configuration's widths, grid, granularity, step rule and curve source, not on its gains, so
/// [`operating::plan_at_operating_point`] computes it once for all its re-plans.
pub(crate) struct WeightNoise {
    layers: Vec<Vec<GroupNoise>>,
}

/// [`WeightNoise`] of every weighted layer of `graph` under `config`.
pub(crate) fn weight_noise(
    graph: &Graph,
    calibration: &Calibration,
    config: &PlanConfig,
) -> Result<WeightNoise> {
    validate_config(config)?;
    let layers = layer_weights(graph)?;
    Ok(WeightNoise {
        layers: layers
            .iter()
            .map(|lw| {
                let rounder = LayerRounder::new(
                    lw,
                    graph,
                    calibration.layer_inputs(),
                    config.rounding,
                    config.bias_correction,
                )?;
                layer_noise(lw, config, &rounder)
            })
            .collect::<Result<_>>()?,
    })
}

/// Every row's error after `rounder`'s rounding, row `r` at `format_of_row(r)`: (output error
/// power, own error energy Σ(q − w)²). Without feedback (round to nearest with bias correction)
/// the power is `nearest[r]`; with bias correction, less the mean shift it removes.
fn rounded_errors(
    lw: &LayerWeights,
    rounder: &LayerRounder<'_>,
    format_of_row: &dyn Fn(usize) -> QFormat,
    nearest: &[f64],
) -> Vec<(f64, f64)> {
    let (q, powers) = rounder.round_all(format_of_row);
    let k = lw.matrix.ncols();
    lw.matrix
        .axis_iter(Axis(0))
        .zip(q.chunks_exact(k.max(1)))
        .enumerate()
        .map(|(r, (w, qr))| {
            let e = crate::rounding::row_error(qr, w);
            let own = e.iter().map(|v| v * v).sum::<f64>();
            let p = powers.as_ref().map_or(nearest[r], |p| p[r]);
            let p = if rounder.corrects_bias() {
                (p - rounder.mean_shift(r, &e).powi(2)).max(0.0)
            } else {
                p
            };
            (p, own)
        })
        .collect()
}

fn layer_noise(
    lw: &LayerWeights,
    config: &PlanConfig,
    rounder: &LayerRounder<'_>,
) -> Result<Vec<GroupNoise>> {
    let (bmin, bmax) = (*config.weight_bits.start(), *config.weight_bits.end());
    let row_len = lw.matrix.ncols();
    let groups: Vec<Vec<f32>> = match config.granularity {
        Granularity::PerTensor => vec![lw.matrix.iter().copied().collect()],
        Granularity::PerChannel => lw
            .matrix
            .axis_iter(Axis(0))
            .map(|r| r.iter().copied().collect())
            .collect(),
    };
    if let Some((index, value)) = lw.matrix.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::InvalidArgument {
            name: "weights",
            reason: format!(
                "tensor '{}' holds the non-finite value {value} at flat index {index}",
                lw.weight_name
            ),
        });
    }
    let total_energy: f64 = lw.matrix.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let measured_rounding = (rounder.feedback() || rounder.corrects_bias())
        && rounder.has_moments()
        && !matches!(config.curve, CurveSource::Predicted);
    let group_of_row = |r: usize| match config.granularity {
        Granularity::PerTensor => 0,
        Granularity::PerChannel => r,
    };
    // Per group: its fit, energy and each width's format by the step rule.
    let mut base = Vec::with_capacity(groups.len());
    for data in &groups {
        let fit = dist::fit(data).map_err(|e| with_tensor(e, &lw.weight_name))?;
        let energy: f64 = data.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let formats = (bmin..=bmax)
            .map(|bits| {
                step_format(
                    config.weight_step,
                    &fit,
                    Some(data),
                    bits,
                    true,
                    config.weight_grid,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        base.push((fit, energy, formats));
    }
    // Round to nearest's output error power per row at each width's rule format (the reference
    // the rounding's ratio is taken against), all rows in one product per width.
    let nearest_power: Vec<Vec<f64>> = if measured_rounding {
        (0..base.first().map_or(0, |b| b.2.len()))
            .map(|wi| rounder.nearest_powers(&|r| base[group_of_row(r)].2[wi]))
            .collect()
    } else {
        Vec::new()
    };
    // Per width and group: the rounded candidate with the least output error, as (format, output
    // error power, own error energy). With feedback the candidates are the rule's step and its two
    // neighbours (clipping costs less when its error is fed back); all rows are rounded together.
    let ncand = if rounder.feedback() { 3 } else { 1 };
    let mut choice: Vec<Vec<(QFormat, f64, f64)>> = Vec::new();
    if measured_rounding {
        for (wi, near) in nearest_power.iter().enumerate() {
            let mut best: Vec<Option<(QFormat, f64, f64)>> = vec![None; groups.len()];
            for c in 0..ncand {
                let cand = |r: usize| {
                    let f = base[group_of_row(r)].2[wi];
                    match c {
                        0 => f,
                        1 => QFormat::new(f.bits(), f.frac_bits() + 1, true, f.grid()).unwrap_or(f),
                        _ => QFormat::new(f.bits(), f.frac_bits() - 1, true, f.grid()).unwrap_or(f),
                    }
                };
                let per_row = rounded_errors(lw, rounder, &cand, near);
                let mut sums = vec![(0f64, 0f64); groups.len()];
                for (r, (p, o)) in per_row.into_iter().enumerate() {
                    let s = &mut sums[group_of_row(r)];
                    s.0 += p;
                    s.1 += o;
                }
                for (g, (p, o)) in sums.into_iter().enumerate() {
                    let f = cand(match config.granularity {
                        Granularity::PerTensor => 0,
                        Granularity::PerChannel => g,
                    });
                    if best[g].is_none_or(|b| p < b.1) {
                        best[g] = Some((f, p, o));
                    }
                }
            }
            choice.push(
                best.into_iter()
                    .zip(&base)
                    .map(|(b, (_, _, fs))| b.unwrap_or((fs[wi], 0.0, 0.0)))
                    .collect(),
            );
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for (gi, (data, (fit, energy, formats))) in groups.iter().zip(&base).enumerate() {
        let rows = match config.granularity {
            Granularity::PerTensor => 0..lw.matrix.nrows(),
            Granularity::PerChannel => gi..gi + 1,
        };
        let mut widths = Vec::new();
        for (wi, &format) in formats.iter().enumerate() {
            let (format, parts) = match config.curve {
                CurveSource::Predicted => (
                    format,
                    NoiseParts::Predicted(sqnr::db_to_linear(-sqnr::predict_db(fit, format)?)),
                ),
                _ if measured_rounding => {
                    let near: f64 = rows.clone().map(|r| nearest_power[wi][r]).sum();
                    let (chosen, power, own) = choice[wi][gi];
                    let ratio = if near > 0.0 { power / near } else { 0.0 };
                    (
                        chosen,
                        NoiseParts::Rounded {
                            split: noise_split(data, format, row_len)?,
                            ratio,
                            own: own / energy.max(f64::MIN_POSITIVE),
                        },
                    )
                }
                _ => (
                    format,
                    NoiseParts::Split(noise_split(data, format, row_len)?),
                ),
            };
            widths.push((format, parts));
        }
        out.push(GroupNoise {
            params: data.len() as u64,
            share: energy / total_energy,
            widths,
        });
    }
    Ok(out)
}

/// The allocation specs of one weighted layer (one per tensor or per channel) and, per spec, the
/// format and Eq. 9 term of every allowed width, from its [`GroupNoise`] weighed by the gains.
fn weight_options(
    lw: &LayerWeights,
    noise: &[GroupNoise],
    config: &PlanConfig,
) -> Result<(Vec<LayerSpec>, Vec<WidthOptions>)> {
    let (bmin, bmax) = (*config.weight_bits.start(), *config.weight_bits.end());
    let gains = match &config.gains {
        Some(g) => (
            sqnr::db_to_linear(g.weight_db(&lw.node)?),
            sqnr::db_to_linear(g.weight_coherent_db(&lw.node)?),
            sqnr::db_to_linear(g.weight_offset_db(&lw.node)?),
        ),
        None => (1.0, 1.0, 1.0),
    };
    let mut specs = Vec::with_capacity(noise.len());
    let mut per_group = Vec::with_capacity(noise.len());
    for (g, group) in noise.iter().enumerate() {
        let share = group.share;
        let mut opts = HashMap::new();
        let mut values = Vec::new();
        for (bits, &(format, parts)) in (bmin..=bmax).zip(&group.widths) {
            let (own, term) = match parts {
                NoiseParts::Predicted(own) => (share * own, share * own * gains.0),
                NoiseParts::Split(n) => (
                    share * (n.coherent + n.offset + n.incoherent),
                    share * (n.coherent * gains.1 + n.offset * gains.2 + n.incoherent * gains.0),
                ),
                NoiseParts::Rounded {
                    split: n,
                    ratio,
                    own,
                } => (
                    share * own,
                    share
                        * ratio
                        * (n.coherent * gains.1 + n.offset * gains.2 + n.incoherent * gains.0),
                ),
            };
            values.push(match config.curve {
                CurveSource::Linear { kappa_db_per_bit } => kappa_db_per_bit * f64::from(bits),
                _ => (-sqnr::linear_to_db(term)).min(sqnr::CURVE_CAP_DB),
            });
            opts.insert(bits, WeightOption { format, own, term });
        }
        let curve = SqnrCurve::Table {
            min_bits: bmin,
            sqnr_db: values,
        };
        let mut spec = LayerSpec::new(format!("{}[{g}]", lw.node), group.params, curve)
            .bits_range(bmin..=bmax);
        if let Some(b) = config.equal_weight_bits {
            spec = spec.pinned(b);
        }
        specs.push(spec);
        per_group.push(opts);
    }
    Ok((specs, per_group))
}

/// Activation terms as allocation specs: pinned, zero cost, constant SQNR.
fn activation_specs(activations: &[ActivationPlan]) -> Vec<LayerSpec> {
    activations
        .iter()
        .map(|a| {
            let v = (a.predicted_sqnr_db - a.gain_db).min(sqnr::CURVE_CAP_DB);
            LayerSpec::new(
                a.tensor.clone(),
                1,
                SqnrCurve::Table {
                    min_bits: 1,
                    sqnr_db: vec![v],
                },
            )
            .bits_range(1..=1)
            .pinned(1)
            .cost_per_bit(0)
        })
        .collect()
}

/// The weight plans of the allocated widths, with their own SQNR and their Eq. 9 term.
fn assemble_weights(
    layers: &[LayerWeights],
    spec_owner: &[(usize, usize)],
    options: &[Vec<WidthOptions>],
    bits_of_spec: &[u32],
) -> Result<Vec<WeightPlan>> {
    let mut weights: Vec<WeightPlan> = layers
        .iter()
        .map(|lw| WeightPlan {
            node: lw.node.clone(),
            weight: lw.weight_name.clone(),
            params: lw.matrix.len() as u64,
            out_channels: lw.matrix.nrows(),
            bits: Vec::new(),
            formats: Vec::new(),
            predicted_sqnr_db: 0.0,
            gain_db: 0.0,
        })
        .collect();
    let mut own_by_layer = vec![0f64; layers.len()];
    let mut term_by_layer = vec![0f64; layers.len()];
    for (k, &(li, g)) in spec_owner.iter().enumerate() {
        let bits = bits_of_spec[k];
        let opt = options[li][g]
            .get(&bits)
            .ok_or_else(|| Error::InvalidArgument {
                name: "weight_bits",
                reason: format!("no format computed for {bits} bits"),
            })?;
        weights[li].bits.push(bits);
        weights[li].formats.push(opt.format);
        own_by_layer[li] += opt.own;
        term_by_layer[li] += opt.term;
    }
    for ((w, own), term) in weights.iter_mut().zip(&own_by_layer).zip(&term_by_layer) {
        w.predicted_sqnr_db = (-sqnr::linear_to_db(*own)).min(sqnr::CURVE_CAP_DB);
        // Weights that quantize exactly (already on the grid) have no noise for a gain to act on.
        w.gain_db = if *own > 0.0 {
            sqnr::linear_to_db(term / own)
        } else {
            0.0
        };
    }
    Ok(weights)
}

fn validate_config(c: &PlanConfig) -> Result<()> {
    let (lo, hi) = (*c.weight_bits.start(), *c.weight_bits.end());
    let max_w = if c.weight_grid == Grid::MidRise { 7 } else { 8 };
    if lo == 0 || lo > hi || hi > max_w {
        return Err(Error::InvalidArgument {
            name: "weight_bits",
            reason: format!(
                "{lo}..={hi} must be a non-empty range within 1..={max_w} for the i8 kernels ({:?} grid)",
                c.weight_grid
            ),
        });
    }
    if let Some(b) = c.equal_weight_bits
        && !(lo..=hi).contains(&b)
    {
        return Err(Error::InvalidArgument {
            name: "equal_weight_bits",
            reason: format!("{b} is outside the allowed weight widths {lo}..={hi}"),
        });
    }
    for (name, b) in [
        ("activation_bits", c.activation_bits),
        ("output_bits", c.output_bits),
    ] {
        if !(2..=16).contains(&b) {
            return Err(Error::InvalidArgument {
                name,
                reason: format!("{b} is outside 2..=16 (8 runs in u8/i8, up to 16 in i16)"),
            });
        }
    }
    Ok(())
}

fn with_tensor(e: Error, tensor: &str) -> Error {
    match e {
        Error::ZeroVariance { count, value, .. } => Error::InvalidArgument {
            name: "tensor",
            reason: format!(
                "tensor '{tensor}' is constant ({count} values all equal {value}): no step can be fitted; fold it into a bias or remove the layer"
            ),
        },
        other => other,
    }
}
