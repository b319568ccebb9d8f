//! The one-call facade: a float graph, calibration images and a bit budget in, a quantized model out —
//! one you can run in integers and inspect tensor by tensor.
//!
//! [`quantize`] does what the README's tables measure, in order:
//! 1. calibration: activation statistics of every tensor over the calibration images
//!    ([`crate::calib::calibrate`]);
//! 2. noise gains: how strongly each tensor's noise reaches the output, on the first
//!    [`QuantizeOptions::probe_images`] of them ([`crate::plan::noise_gains`]);
//! 3. planning at the operating point: allocate widths for the budget, measure each term at the
//!    chosen formats, correct the gains, re-plan, [`QuantizeOptions::operating_point_rounds`] times
//!    ([`crate::plan::plan_at_operating_point`]);
//! 4. the fixed-point network ([`FixedNetwork`]) and its report: each tensor's width, format and
//!    predicted SQNR beside the SQNR measured on the probe images.
//!
//! The result saves to a self-contained `.fixq` file and loads back bit-exact
//! ([`QuantizedModel::save`], [`QuantizedModel::load`], module [`crate::model_file`]).
//!
//! The expert API stays underneath: every step is a public function of [`crate::calib`],
//! [`crate::plan`] and [`crate::exec`].
//!
//! # Example
//! ```
//! use fixq::graph::{Graph, Node, Op, TensorInfo};
//! use fixq::{quantize, Budget, QuantizeOptions};
//! use ndarray::{Array2, ArrayD, IxDyn};
//!
//! // y = relu(x Wᵀ + b): 16 inputs, 8 outputs.
//! let w = Array2::from_shape_fn((8, 16), |(o, i)| ((o * 16 + i) as f32 * 0.37).sin()).into_dyn();
//! let b = ArrayD::from_elem(IxDyn(&[8]), 0.1f32);
//! let input = TensorInfo { name: "x".into(), shape: vec![None, Some(16)] };
//! let fc = Node {
//!     name: "fc".into(),
//!     op: Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true },
//!     inputs: vec!["x".into(), "w".into(), "b".into()],
//!     output: "h".into(),
//! };
//! let relu = Node { name: "relu".into(), op: Op::Relu, inputs: vec!["h".into()], output: "y".into() };
//! let graph = Graph::new(input, "y", vec![fc, relu], vec![("w".into(), w), ("b".into(), b)])?;
//! let images = Array2::from_shape_fn((64, 16), |(n, i)| ((n * 16 + i) as f32 * 0.91).cos()).into_dyn();
//!
//! let model = quantize(&graph, images.view(), Budget::AvgBitsPerParam(4.0), &QuantizeOptions::default())?;
//! assert!(model.plan().avg_bits_per_param() <= 4.0);
//! let y = model.run(images.view())?; // integer kernels inside
//! assert_eq!(y.shape(), &[64, 8]);
//! let report = model.report();
//! assert_eq!(report.tensors[0].name, "fc");
//! assert!(report.measured_output_sqnr_db > 10.0);
//! println!("{report}"); // the per-tensor table
//! # Ok::<(), fixq::Error>(())
//! ```

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use ndarray::{ArrayD, ArrayViewD, Axis};

use crate::alloc::Budget;
use crate::calib::{Calibration, calibrate_with};
use crate::error::{Error, Result};
use crate::exec::{FixedNetwork, FloatExecutor};
use crate::fixed::{Grid, QFormat};
use crate::graph::{Graph, layer_weights, matrix_to_shape};
use crate::plan::{self, Granularity, PlanConfig, StepRule};
use crate::quant_plan::QuantPlan;
use crate::rounding::WeightRounding;
use crate::sqnr;

/// How [`quantize`] quantizes. The default is fixq's recommended method, the one the README's tables
/// use: per-channel mid-rise weights in 1..=7 bits, 8-bit activations (unsigned after ReLU), a 16-bit
/// output, measured curves, noise gains, exact allocation, 3 rounds at the operating point.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeOptions {
    /// Per-tensor or per-channel weight formats.
    pub granularity: Granularity,
    /// The weight grid (mid-rise needs at most 7 bits).
    pub weight_grid: Grid,
    /// Allowed weight widths, bits.
    pub weight_bits: RangeInclusive<u32>,
    /// Width of every activation but the output, bits (8 fits the u8/i8 kernels).
    pub activation_bits: u32,
    /// Width of the network's output, bits (≤ 16).
    pub output_bits: u32,
    /// How many calibration images (the first ones) the report's measured SQNRs are taken on; at
    /// least 1.
    pub probe_images: usize,
    /// How many calibration images (the first ones, at most `probe_images`) measure the noise gains
    /// and the operating-point terms; at least 1. Planning time is proportional to it; the
    /// estimates' relative standard deviation is about √(2/(images · `plan::SENSITIVITY_DRAWS`))
    /// (128 images: 9 %, 0.4 dB).
    pub sensitivity_images: usize,
    /// Rounds of gain correction at the operating point (0: plan once with the measured gains).
    pub operating_point_rounds: usize,
    /// Images per calibration batch (memory versus speed), at least 1.
    pub batch: usize,
    /// Seed of the noise injected to measure gains.
    pub seed: u64,
    /// Which grid point each weight goes to ([`crate::rounding`]): error-compensating rounding
    /// from the calibration inputs by default (with feature `gptq`, else round to nearest).
    pub rounding: WeightRounding,
    /// Correct each output channel's bias for the mean shift its rounding causes.
    pub bias_correction: bool,
    /// How each activation's power-of-two step is chosen: by the exact error over the calibration
    /// images' histograms ([`StepRule::MinDataMse`], the default) or from the fitted family
    /// ([`StepRule::MinExpectedMse`]).
    pub activation_step: StepRule,
}

/// The default rounding: GPTQ-style where the crate has it.
const DEFAULT_ROUNDING: WeightRounding = if cfg!(feature = "gptq") {
    WeightRounding::Gptq
} else {
    WeightRounding::Nearest
};

impl Default for QuantizeOptions {
    fn default() -> Self {
        Self {
            granularity: Granularity::PerChannel,
            weight_grid: Grid::MidRise,
            weight_bits: 1..=7,
            activation_bits: 8,
            output_bits: 16,
            probe_images: 500,
            sensitivity_images: 128,
            operating_point_rounds: 3,
            batch: 100,
            seed: 7,
            rounding: DEFAULT_ROUNDING,
            bias_correction: true,
            activation_step: StepRule::MinDataMse,
        }
    }
}

impl QuantizeOptions {
    /// Per-tensor two's complement weights in 2..=8 bits (the paper's granularity), otherwise the
    /// defaults.
    pub fn per_tensor() -> Self {
        Self {
            granularity: Granularity::PerTensor,
            weight_grid: Grid::MidTread,
            weight_bits: 2..=8,
            ..Self::default()
        }
    }

    /// The images noise gains and operating-point terms are measured on: the first
    /// min(`sensitivity_images`, `probe_images`) of `images` (at least one, when there is one).
    pub fn sensitivity_probe<'a>(&self, images: ArrayViewD<'a, f32>) -> ArrayViewD<'a, f32> {
        let n = images.shape().first().copied().unwrap_or(0);
        let k = self.sensitivity_images.min(self.probe_images).max(1).min(n);
        images.slice_axis_move(Axis(0), (0..k).into())
    }

    /// The planner's configuration for `budget` (without gains).
    pub fn plan_config(&self, budget: Budget) -> PlanConfig {
        PlanConfig {
            granularity: self.granularity,
            weight_grid: self.weight_grid,
            weight_bits: self.weight_bits.clone(),
            activation_bits: self.activation_bits,
            output_bits: self.output_bits,
            rounding: self.rounding,
            bias_correction: self.bias_correction,
            activation_step: self.activation_step,
            ..PlanConfig::fixq(budget)
        }
    }
}

/// A step of [`quantize_with_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Calibration: images seen so far of all.
    Calibrating {
        /// Images processed.
        done: u64,
        /// Images in all.
        total: u64,
    },
    /// Measuring noise gains on the probe images.
    NoiseGains,
    /// Planning at the operating point (one plan, then the correction rounds).
    Planning,
    /// Building the fixed-point network and measuring the report.
    Measuring,
}

/// A quantized model: the plan, the integer network that runs it, and its report. It saves to and
/// loads from a self-contained `.fixq` file ([`QuantizedModel::save`], [`QuantizedModel::load`];
/// layout in `docs/format.md`).
#[derive(Debug, Clone)]
pub struct QuantizedModel {
    /// The graph the network was built from (weights on their grids after rounding, biases
    /// corrected): its topology, biases and other constants go into the model file (its weights go
    /// as the network's codes).
    graph: Graph,
    plan: QuantPlan,
    network: FixedNetwork,
    report: Report,
}

/// One row of a [`Report`].
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRow {
    /// Node name (weights) or tensor name (activations).
    pub name: String,
    /// Whether the row is a weight tensor (else an activation).
    pub weights: bool,
    /// Average width, bits per value.
    pub bits: f64,
    /// The formats: one per tensor, or one per output channel.
    pub formats: Vec<QFormat>,
    /// SQNR the plan predicts for the tensor itself, dB.
    pub predicted_sqnr_db: f64,
    /// SQNR measured, dB: for weights, the codes against the float weights (the same noise the
    /// prediction counts); for an activation, the integer network's tensor against the float graph's
    /// on the probe images — which includes all the noise from upstream, so it falls along the
    /// network while the predicted column is the tensor's own term.
    pub measured_sqnr_db: f64,
}

/// What a quantized model is, tensor by tensor, predicted and measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Weights in graph order, then activations in graph order (the input first).
    pub tensors: Vec<TensorRow>,
    /// Total weight bits (the paper's model size).
    pub model_bits: u64,
    /// Average weight bits per parameter.
    pub avg_bits_per_param: f64,
    /// Output SQNR that Eq. 9 predicts, dB.
    pub predicted_output_sqnr_db: f64,
    /// Output SQNR of the integer network against float on the probe images, dB.
    pub measured_output_sqnr_db: f64,
    /// How many images the measured figures are over.
    pub probe_images: usize,
}

/// Quantizes `graph` for `budget` from calibration `images` (`[N, ...]` as the graph's input
/// takes them), with fixq's method as `options` sets it.
///
/// # Errors
/// [`Error::Empty`] for no images; [`Error::InvalidArgument`] for options out of range; the errors
/// of calibration, planning ([`Error::Infeasible`] for a budget no allocation meets) and
/// [`FixedNetwork::new`] (an op the integer network does not run).
pub fn quantize(
    graph: &Graph,
    images: ArrayViewD<'_, f32>,
    budget: Budget,
    options: &QuantizeOptions,
) -> Result<QuantizedModel> {
    quantize_with_progress(graph, images, budget, options, |_| {})
}

/// As [`quantize`], calling `progress` at each [`Stage`].
///
/// # Errors
/// As [`quantize`].
pub fn quantize_with_progress(
    graph: &Graph,
    images: ArrayViewD<'_, f32>,
    budget: Budget,
    options: &QuantizeOptions,
    mut progress: impl FnMut(Stage),
) -> Result<QuantizedModel> {
    let n = images.shape().first().copied().unwrap_or(0);
    if n == 0 || images.is_empty() {
        return Err(Error::Empty {
            what: "calibration images",
        });
    }
    if options.probe_images == 0 || options.sensitivity_images == 0 || options.batch == 0 {
        return Err(Error::InvalidArgument {
            name: "options",
            reason: format!(
                "probe_images ({}), sensitivity_images ({}) and batch ({}) must be at least 1",
                options.probe_images, options.sensitivity_images, options.batch
            ),
        });
    }
    let exec = FloatExecutor::new(graph);
    let total = n as u64;
    let batches = images
        .axis_chunks_iter(Axis(0), options.batch)
        .collect::<Vec<_>>();
    let start = if options.rounding != WeightRounding::Nearest || options.bias_correction {
        Calibration::with_layer_inputs()
    } else {
        Calibration::new()
    };
    let start = if options.activation_step == StepRule::MinDataMse {
        start.with_histograms()
    } else {
        start
    };
    let calibration = calibrate_with(start, &exec, batches, |p| {
        progress(Stage::Calibrating {
            done: p.images_done,
            total,
        })
    })?;
    let probe = images.slice_axis(Axis(0), (0..n.min(options.probe_images)).into());
    let sensitivity = options.sensitivity_probe(images.view());
    progress(Stage::NoiseGains);
    let gains = plan::noise_gains(graph, sensitivity.view(), options.seed)?;
    progress(Stage::Planning);
    let config = options.plan_config(budget).with_gains(gains);
    let plan = plan::plan_at_operating_point(
        graph,
        &calibration,
        &config,
        sensitivity.view(),
        options.operating_point_rounds,
    )?;
    progress(Stage::Measuring);
    let rounded = plan::rounded_graph(graph, &plan, &calibration, &config)?;
    let network = FixedNetwork::new(&rounded, &plan)?;
    let report = measure(graph, &plan, &network, probe)?;
    Ok(QuantizedModel {
        graph: rounded,
        plan,
        network,
        report,
    })
}

impl QuantizedModel {
    /// A model from its parts (the model file's reader); `network` must have been built from
    /// `graph` and `plan`.
    pub(crate) fn from_parts(
        graph: Graph,
        plan: QuantPlan,
        network: FixedNetwork,
        report: Report,
    ) -> Self {
        Self {
            graph,
            plan,
            network,
            report,
        }
    }
    /// Runs the integer network on a float batch: quantize, integer kernels, dequantize.
    ///
    /// # Errors
    /// As [`FixedNetwork::run`].
    pub fn run(&self, input: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.network.run(input)
    }
    /// The graph the network runs: the float graph's topology, its weights as the dequantized codes
    /// (after [`QuantizeOptions::rounding`]) and its biases as corrected
    /// ([`QuantizeOptions::bias_correction`]) — so in a quantized model and in one loaded from a
    /// `.fixq` file alike.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    /// The plan: every tensor's format and the predicted figures.
    pub fn plan(&self) -> &QuantPlan {
        &self.plan
    }
    /// The fixed-point network (weight codes, kernels).
    pub fn network(&self) -> &FixedNetwork {
        &self.network
    }
    /// Per-tensor widths, formats, predicted and measured SQNR.
    pub fn report(&self) -> &Report {
        &self.report
    }
}

/// The report of `network` under `plan`, measured on `probe`.
fn measure(
    graph: &Graph,
    plan: &QuantPlan,
    network: &FixedNetwork,
    probe: ArrayViewD<'_, f32>,
) -> Result<Report> {
    let mut tensors = Vec::new();
    for (wc, lw) in network.weights().iter().zip(layer_weights(graph)?) {
        let wp = plan.require_weight(&lw.node)?;
        let float = matrix_to_shape(&lw.matrix, &lw.shape)?;
        let codes = wc.codes.dequantize();
        tensors.push(TensorRow {
            name: lw.node.clone(),
            weights: true,
            bits: wp.model_bits() as f64 / wp.params.max(1) as f64,
            formats: wp.formats.clone(),
            predicted_sqnr_db: wp.predicted_sqnr_db,
            measured_sqnr_db: sqnr_of(&float, &codes)?,
        });
    }
    let mut float_acts: BTreeMap<String, ArrayD<f32>> = BTreeMap::new();
    float_acts.insert(graph.input().name.clone(), probe.to_owned());
    let float_out = FloatExecutor::new(graph).run_with(probe.view(), |name, _, a| {
        if plan.activation(name).is_some() {
            float_acts.insert(name.to_string(), a.to_owned());
        }
    })?;
    let mut fixed_db: BTreeMap<String, Result<f64>> = BTreeMap::new();
    let fixed_out = network.run_with(probe.view(), |name, a| {
        if let Some(f) = float_acts.get(name) {
            fixed_db.insert(name.to_string(), sqnr_of(f, &a.to_owned()));
        }
    })?;
    for a in plan.activations() {
        let measured = fixed_db
            .remove(&a.tensor)
            .unwrap_or_else(|| {
                Err(Error::Internal {
                    reason: format!("activation '{}' was not observed", a.tensor),
                })
            })
            // A tensor that is exactly zero on every probe image has no SQNR: report it as NaN.
            .unwrap_or(f64::NAN);
        tensors.push(TensorRow {
            name: a.tensor.clone(),
            weights: false,
            bits: f64::from(a.format.bits()),
            formats: vec![a.format],
            predicted_sqnr_db: a.predicted_sqnr_db,
            measured_sqnr_db: measured,
        });
    }
    Ok(Report {
        tensors,
        model_bits: plan.model_bits(),
        avg_bits_per_param: plan.avg_bits_per_param(),
        predicted_output_sqnr_db: plan.predicted_output_sqnr_db(),
        measured_output_sqnr_db: sqnr_of(&float_out, &fixed_out)?,
        probe_images: probe.shape().first().copied().unwrap_or(0),
    })
}

/// SQNR of `b` against reference `a` (same shape, any layout), dB.
fn sqnr_of(a: &ArrayD<f32>, b: &ArrayD<f32>) -> Result<f64> {
    let a: Vec<f32> = a.iter().copied().collect();
    let b: Vec<f32> = b.iter().copied().collect();
    sqnr::measure_db(&a, &b)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "| tensor | kind | bits | format | predicted SQNR dB | measured SQNR dB |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|")?;
        for t in &self.tensors {
            let format = match &t.formats[..] {
                [one] => one.to_string(),
                many => format!("{} channels", many.len()),
            };
            writeln!(
                f,
                "| {} | {} | {:.2} | {format} | {:.2} | {:.2} |",
                t.name,
                if t.weights { "weights" } else { "activation" },
                t.bits,
                t.predicted_sqnr_db,
                t.measured_sqnr_db
            )?;
        }
        write!(
            f,
            "weights: {} bits ({:.3} per parameter); output SQNR predicted {:.2} dB, measured {:.2} dB on {} images",
            self.model_bits,
            self.avg_bits_per_param,
            self.predicted_output_sqnr_db,
            self.measured_output_sqnr_db,
            self.probe_images
        )
    }
}
