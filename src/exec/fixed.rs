//! The fixed-point network: a graph and a [`QuantPlan`] compiled into integer kernels.
//!
//! Between quantizing the input and dequantizing the output, everything runs in integers: weighted
//! layers through [`crate::kernels::Conv2d`] / [`crate::kernels::Dense`] (with bias in the accumulator's
//! format and ReLU/Clip fused), pools through the integer pools, residual sums through
//! [`crate::kernels::add`], element-wise functions as exact lookup tables over the input codes,
//! Sub/Mul/Div/PRelu as exact integer arithmetic rounded once, and the layout ops as moves of codes
//! (`docs/onnx.md` lists every op and its bound). A Softmax that ends the graph runs in `f32` on the
//! dequantized output.
//! Activations are stored as `u8` (unsigned, ≤ 8 bits), `i8` (signed, ≤ 8 bits) or `i16`.
//!
//! # Example
//! See `fixq::quantize` (which builds one), `tests/e2e.rs` and `cli/src/sweep.rs`; building one
//! needs a graph and a plan:
//! ```
//! use fixq::exec::FixedNetwork;
//! use fixq::plan::QuantPlan;
//! use ndarray::{ArrayD, ArrayViewD};
//!
//! /// Logits of the fixed-point network for a batch of inputs.
//! fn logits(graph: &fixq::Graph, plan: &QuantPlan, input: ArrayViewD<'_, f32>) -> fixq::Result<ArrayD<f32>> {
//!     let net = FixedNetwork::new(graph, plan)?; // quantizes the weights, prepares the kernels
//!     net.run(input) // quantize input, integer kernels, dequantize the output
//! }
//! ```

use ndarray::{ArrayD, ArrayViewD};

use super::act::{Act, Kind};
use super::build::{self, Sources, Step};
use super::ops::{self, Inputs};
use crate::error::{Error, Result};
use crate::fixed::QFormat;
use crate::graph::{Graph, Op, layer_weights};
use crate::kernels::{KernelChoice, KernelId, Scratch};
use crate::pack::WeightCodes;
use crate::quant_plan::QuantPlan;

/// A graph compiled to integer kernels under a [`QuantPlan`].
#[derive(Debug, Clone)]
pub struct FixedNetwork {
    input_format: QFormat,
    input_name: String,
    /// The graph's declared input shape (`None`: any size, as the batch dimension).
    input_shape: Vec<Option<usize>>,
    steps: Vec<Step>,
    /// For each value slot, the last step that reads it (slots are moved, not copied, into it).
    last_use: Vec<Option<usize>>,
    output_slot: usize,
    weights: Vec<WeightCodes>,
    kernels: Vec<(String, KernelId)>,
    /// A Softmax that produces the graph's output: applied in `f32` to the dequantized codes of
    /// its input.
    final_softmax: Option<Op>,
}

impl FixedNetwork {
    /// Quantizes the graph's weights at the plan's formats and prepares every layer (automatic kernel
    /// choice).
    ///
    /// # Errors
    /// As [`FixedNetwork::with_options`].
    pub fn new(graph: &Graph, plan: &QuantPlan) -> Result<Self> {
        Self::with_options(graph, plan, None, KernelChoice::Auto)
    }

    /// As [`FixedNetwork::new`], with weight codes given (for example read back from a packed file,
    /// [`crate::pack`]) instead of quantized from the graph, and a kernel choice
    /// ([`KernelChoice::Reference`] forces the scalar reference everywhere).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for an op the integer network does not run (`docs/onnx.md` lists those it
    /// runs; e.g. a BatchNormalization that import could not fold, or MatMul
    /// with a non-constant operand) or a layout it cannot take; [`Error::InvalidArgument`] if the plan
    /// lacks a tensor or a format does not fit the kernels; [`Error::ShapeMismatch`] for given weights
    /// that do not match the graph; [`Error::AccumulatorOverflow`] when a bias does not fit the 32-bit
    /// accumulator format; the kernels' construction errors.
    pub fn with_options(
        graph: &Graph,
        plan: &QuantPlan,
        weights: Option<Vec<WeightCodes>>,
        choice: KernelChoice,
    ) -> Result<Self> {
        let layers = layer_weights(graph)?;
        let input_name = graph.input().name.clone();
        let input_format = plan
            .activation(&input_name)
            .map(|a| a.format)
            .ok_or_else(|| Error::InvalidArgument {
                name: "plan",
                reason: format!("the plan has no format for activation '{input_name}'"),
            })?;
        Kind::of(input_format)?;
        let weights = build::resolve_weights(&layers, plan, weights)?;
        let steps = build::lower_all(&Sources {
            graph,
            plan,
            layers: &layers,
            weights: &weights,
            input_format,
            choice,
        })?;
        let output_slot = build::slot_of(graph, &graph.output().name, graph.nodes().len())
            .ok_or_else(|| Error::InvalidArgument {
                name: "graph",
                reason: "the output is not produced by a node".into(),
            })?;
        let kernels = steps
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.op.kernel()?)))
            .collect();
        let mut last_use = vec![None; steps.len() + 1];
        for (k, p) in steps.iter().enumerate() {
            for &i in &p.inputs {
                last_use[i] = Some(k);
            }
        }
        last_use[output_slot] = None;
        let final_softmax = graph
            .nodes()
            .last()
            .filter(|n| n.output == graph.output().name && matches!(n.op, Op::Softmax { .. }))
            .map(|n| n.op.clone());
        Ok(Self {
            input_format,
            input_name,
            input_shape: graph.input().shape.clone(),
            steps,
            last_use,
            output_slot,
            weights,
            kernels,
            final_softmax,
        })
    }

    /// The format the float input is quantized to.
    pub fn input_format(&self) -> QFormat {
        self.input_format
    }

    /// The format in which the network holds tensor `name`: the graph input, or a node's output (the
    /// output of a Conv/Gemm/MatMul with a fused Relu/Clip holds the activation's codes and format).
    /// `None` for a name the network computes nothing for (a weight, an unknown name).
    pub fn tensor_format(&self, name: &str) -> Option<QFormat> {
        if name == self.input_name {
            return Some(self.input_format);
        }
        self.steps
            .iter()
            .rev()
            .find(|s| s.output == name)
            .map(|s| s.format)
    }

    /// The weight codes (for packing: [`crate::pack`]).
    pub fn weights(&self) -> &[WeightCodes] {
        &self.weights
    }

    /// The kernel each weighted layer selected, by node name.
    pub fn kernels(&self) -> &[(String, KernelId)] {
        &self.kernels
    }

    /// Runs the network: quantize `input`, integer kernels, dequantize the output (then, where the
    /// graph ends in a Softmax, that Softmax in `f32`: it is the one op that does not run in
    /// integers). With the `rayon` feature a batch of two or more images is split into one part
    /// per rayon thread, each run through the whole network; the output is bit-identical.
    ///
    /// # Errors
    /// [`Error::NonFinite`] for NaN/±∞ input; [`Error::ShapeMismatch`] for an input whose rank or
    /// dimensions after the batch (where the graph declares them) differ from the graph's.
    pub fn run(&self, input: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.check_input(input.shape())?;
        #[cfg(feature = "rayon")]
        {
            // With threads, a batch is split into one part per thread, each run through the whole
            // network (images are independent, so the outputs are bit-identical to one run).
            let (n, t) = (input.shape()[0], rayon::current_num_threads());
            if n >= 2 && t > 1 {
                use rayon::prelude::*;
                let per = n.div_ceil(t.min(n));
                let parts: Vec<ArrayViewD<'_, f32>> =
                    input.axis_chunks_iter(ndarray::Axis(0), per).collect();
                let outs = parts
                    .into_par_iter()
                    .map(|x| self.run_part(x))
                    .collect::<Result<Vec<_>>>()?;
                let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
                return Ok(ndarray::concatenate(ndarray::Axis(0), &views)?);
            }
        }
        self.run_part(input)
    }

    /// [`FixedNetwork::run`] on one thread, the input's shape already checked.
    fn run_part(&self, input: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let x = Act::quantize(input, self.input_format)?;
        let out = self.run_codes(x, &mut None::<&mut fn(&str, &ArrayViewD<'_, f32>)>)?;
        self.finish(out)
    }

    /// As [`FixedNetwork::run`], calling `observer(tensor_name, dequantized)` for the quantized input
    /// and every activation point (so per-layer SQNR can be measured against the float graph).
    ///
    /// # Errors
    /// As [`FixedNetwork::run`].
    pub fn run_with<F>(&self, input: ArrayViewD<'_, f32>, mut observer: F) -> Result<ArrayD<f32>>
    where
        F: FnMut(&str, &ArrayViewD<'_, f32>),
    {
        self.check_input(input.shape())?;
        let x = Act::quantize(input, self.input_format)?;
        observer(&self.input_name, &x.dequantize().view());
        let out = self.run_codes(x, &mut Some(&mut observer))?;
        self.finish(out)
    }

    /// The dequantized output codes, through the final Softmax where the graph ends in one.
    fn finish(&self, out: Act) -> Result<ArrayD<f32>> {
        let y = out.dequantize();
        match &self.final_softmax {
            Some(op) => ops::eval_float(op, &[y.view()], y.shape()),
            None => Ok(y),
        }
    }

    /// The input's shape against the graph's declared one (the batch, axis 0, may be any size).
    fn check_input(&self, shape: &[usize]) -> Result<()> {
        let fits = shape.len() == self.input_shape.len()
            && shape
                .iter()
                .zip(&self.input_shape)
                .skip(1)
                .all(|(&d, want)| want.is_none_or(|w| w == d));
        if fits {
            return Ok(());
        }
        let declared: Vec<String> = self
            .input_shape
            .iter()
            .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
            .collect();
        Err(Error::ShapeMismatch {
            what: format!("input '{}'", self.input_name),
            expected: format!("[{}]", declared.join(", ")),
            found: format!("{shape:?}"),
        })
    }

    fn run_codes<F>(&self, x: Act, observer: &mut Option<&mut F>) -> Result<Act>
    where
        F: FnMut(&str, &ArrayViewD<'_, f32>),
    {
        let mut slots: Vec<Option<Act>> = vec![None; self.steps.len() + 1];
        slots[0] = Some(x);
        let mut scratch = Scratch::new();
        for (k, p) in self.steps.iter().enumerate() {
            let owns_first = p
                .inputs
                .first()
                .is_some_and(|&s| self.last_use[s] == Some(k));
            let mut inputs = Inputs {
                slots: &mut slots,
                ids: &p.inputs,
                owns_first,
                step: &p.name,
            };
            let out = p.op.run(&mut inputs, &mut scratch)?;
            if let (true, Some(obs)) = (p.observed, observer.as_mut()) {
                obs(&p.output, &out.dequantize().view());
            }
            slots[k + 1] = Some(out);
        }
        slots[self.output_slot]
            .take()
            .ok_or_else(|| Error::Internal {
                reason: "the network's output was not computed".into(),
            })
    }
}
