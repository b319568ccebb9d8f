//! The fixed-point network: a graph and a [`QuantPlan`] compiled into integer kernels.
//!
//! Between quantizing the input and dequantizing the output, everything runs in integers: weighted
//! layers through [`crate::kernels::Conv2d`] / [`crate::kernels::Dense`] (with bias in the accumulator's
//! format and ReLU/Clip fused), pools through the integer pools, residual sums through
//! [`crate::kernels::add`], and `Flatten`/`Reshape`/`Identity` as moves of codes.
//! Activations are stored as `u8` (unsigned, ≤ 8 bits), `i8` (signed, ≤ 8 bits) or `i16`.
//!
//! # Example
//! See `examples/quantize_model.rs` and `tests/e2e.rs`; building one needs a graph and a plan:
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

use std::collections::HashMap;

use ndarray::{Array1, ArrayD, ArrayViewD, Ix1, Ix2, Ix4, IxDyn};

use crate::error::{Error, Result};
use crate::fixed::{QFormat, QTensor, Quantizer, Storage};
use crate::graph::{Graph, Op};
use crate::graph::{activation_points, layer_weights, matrix_to_shape};
use crate::kernels::{
    Activation, Conv2d, Conv2dParams, Dense, KernelChoice, KernelId, OutputStage, Pool2dParams,
    Scratch, add, avg_pool2d, global_avg_pool, max_pool2d,
};
use crate::pack::WeightCodes;
use crate::quant_plan::QuantPlan;

/// An activation tensor in integer codes, with its format.
#[derive(Debug, Clone)]
enum Act {
    U8(ArrayD<u8>, QFormat),
    I8(ArrayD<i8>, QFormat),
    I16(ArrayD<i16>, QFormat),
}

/// Storage kind of an activation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    U8,
    I8,
    I16,
}

fn kind_of(f: QFormat) -> Result<Kind> {
    match (f.is_signed(), f.bits()) {
        (false, 1..=8) => Ok(Kind::U8),
        (true, 1..=8) => Ok(Kind::I8),
        (false, 9..=15) | (true, 9..=16) => Ok(Kind::I16),
        _ => Err(Error::InvalidArgument {
            name: "activation format",
            reason: format!("{f} does not fit the kernels' u8, i8 or i16 activations"),
        }),
    }
}

impl Act {
    fn format(&self) -> QFormat {
        match self {
            Act::U8(_, f) | Act::I8(_, f) | Act::I16(_, f) => *f,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Act::U8(a, _) => a.shape(),
            Act::I8(a, _) => a.shape(),
            Act::I16(a, _) => a.shape(),
        }
    }
    /// Real values, in standard (row-major NCHW) layout whatever the codes' memory layout.
    fn dequantize(&self) -> ArrayD<f32> {
        let f = self.format();
        to_standard(match self {
            Act::U8(a, _) => a.mapv(|q| f.value_of(i64::from(q)) as f32),
            Act::I8(a, _) => a.mapv(|q| f.value_of(i64::from(q)) as f32),
            Act::I16(a, _) => a.mapv(|q| f.value_of(i64::from(q)) as f32),
        })
    }
    fn reshape(self, shape: &[usize]) -> Result<Act> {
        fn r<T: Copy + Default>(a: ArrayD<T>, shape: &[usize]) -> Result<ArrayD<T>> {
            let found = a.shape().to_vec();
            let a = to_standard(a);
            a.into_shape_with_order(IxDyn(shape))
                .map_err(|_| Error::ShapeMismatch {
                    what: "reshape of integer activations".into(),
                    expected: format!("{shape:?}"),
                    found: format!("{found:?}"),
                })
        }
        Ok(match self {
            Act::U8(a, f) => Act::U8(r(a, shape)?, f),
            Act::I8(a, f) => Act::I8(r(a, shape)?, f),
            Act::I16(a, f) => Act::I16(r(a, shape)?, f),
        })
    }
}

/// The array in standard (row-major) layout. Channels-last activations (logical NCHW over NHWC memory,
/// as the convolutions leave them) are transposed plane by plane rather than element by element.
fn to_standard<T: Copy + Default>(a: ArrayD<T>) -> ArrayD<T> {
    if a.is_standard_layout() {
        return a;
    }
    if a.ndim() == 4 {
        let v = a.view().permuted_axes(IxDyn(&[0, 2, 3, 1]));
        if let Some(src) = v.as_slice() {
            let s = a.shape();
            let (c, hw) = (s[1], s[2] * s[3]);
            let mut out = vec![T::default(); src.len()];
            for (img, dst) in src.chunks_exact(c * hw).zip(out.chunks_exact_mut(c * hw)) {
                for (p, px) in img.chunks_exact(c).enumerate() {
                    for (ch, &v) in px.iter().enumerate() {
                        dst[ch * hw + p] = v;
                    }
                }
            }
            if let Ok(o) = ArrayD::from_shape_vec(IxDyn(s), out) {
                return o;
            }
        }
    }
    a.as_standard_layout().into_owned()
}

/// Generates a dispatch over the 3 × 3 (input, output) activation storage pairs of a layer.
macro_rules! pairs {
    ($name:ident, $layer:ident) => {
        #[derive(Debug, Clone)]
        enum $name {
            U8U8($layer<u8, u8>),
            U8I8($layer<u8, i8>),
            U8I16($layer<u8, i16>),
            I8U8($layer<i8, u8>),
            I8I8($layer<i8, i8>),
            I8I16($layer<i8, i16>),
            I16U8($layer<i16, u8>),
            I16I8($layer<i16, i8>),
            I16I16($layer<i16, i16>),
        }
    };
}
pairs!(AnyConv, Conv2d);
pairs!(AnyDense, Dense);

macro_rules! build_pair {
    ($any:ident, $kin:expr, $kout:expr, $ctor:expr) => {
        match ($kin, $kout) {
            (Kind::U8, Kind::U8) => $any::U8U8($ctor),
            (Kind::U8, Kind::I8) => $any::U8I8($ctor),
            (Kind::U8, Kind::I16) => $any::U8I16($ctor),
            (Kind::I8, Kind::U8) => $any::I8U8($ctor),
            (Kind::I8, Kind::I8) => $any::I8I8($ctor),
            (Kind::I8, Kind::I16) => $any::I8I16($ctor),
            (Kind::I16, Kind::U8) => $any::I16U8($ctor),
            (Kind::I16, Kind::I8) => $any::I16I8($ctor),
            (Kind::I16, Kind::I16) => $any::I16I16($ctor),
        }
    };
}

/// Runs `$body` with `$l` bound to the concrete layer, `$x` to the input codes and `$wrap` to the
/// output constructor.
macro_rules! with_pair {
    ($any:ident, $v:expr, $act:expr, |$l:ident, $x:ident, $wrap:ident| $body:expr) => {
        match ($v, $act) {
            ($any::U8U8($l), Act::U8($x, _)) => {
                let $wrap = Act::U8;
                $body
            }
            ($any::U8I8($l), Act::U8($x, _)) => {
                let $wrap = Act::I8;
                $body
            }
            ($any::U8I16($l), Act::U8($x, _)) => {
                let $wrap = Act::I16;
                $body
            }
            ($any::I8U8($l), Act::I8($x, _)) => {
                let $wrap = Act::U8;
                $body
            }
            ($any::I8I8($l), Act::I8($x, _)) => {
                let $wrap = Act::I8;
                $body
            }
            ($any::I8I16($l), Act::I8($x, _)) => {
                let $wrap = Act::I16;
                $body
            }
            ($any::I16U8($l), Act::I16($x, _)) => {
                let $wrap = Act::U8;
                $body
            }
            ($any::I16I8($l), Act::I16($x, _)) => {
                let $wrap = Act::I8;
                $body
            }
            ($any::I16I16($l), Act::I16($x, _)) => {
                let $wrap = Act::I16;
                $body
            }
            _ => Err(Error::ShapeMismatch {
                what: "activation storage".into(),
                expected: "the storage the layer was prepared for".into(),
                found: "another storage type".into(),
            }),
        }
    };
}

/// The output of a pooling kernel with output storage `$O`, as an activation in stage `$o`'s format:
/// `$call` sees the input codes as `$t`.
macro_rules! pool_out {
    ($t:ident = $codes:expr, $o:ident, $O:ident, $call:expr) => {{
        let $t = $codes;
        match kind_of($o.format)? {
            Kind::U8 => {
                type $O = u8;
                Act::U8($call?.into_codes().into_dyn(), $o.format)
            }
            Kind::I8 => {
                type $O = i8;
                Act::I8($call?.into_codes().into_dyn(), $o.format)
            }
            Kind::I16 => {
                type $O = i16;
                Act::I16($call?.into_codes().into_dyn(), $o.format)
            }
        }
    }};
}

/// Runs a pooling kernel over every (input, output) storage pair: `$call` sees the input codes as
/// `$t` (a `QTensor<_, Ix4>`) and the output storage as the type `$O`; the result is an [`Act`] in
/// stage `$o`'s format.
macro_rules! pool_pairs {
    ($a:expr, $o:ident, |$t:ident, $O:ident| $call:expr) => {
        match $a {
            Act::U8(c, f) => pool_out!($t = to_q4(c, f)?, $o, $O, $call),
            Act::I8(c, f) => pool_out!($t = to_q4(c, f)?, $o, $O, $call),
            Act::I16(c, f) => pool_out!($t = to_q4(c, f)?, $o, $O, $call),
        }
    };
}

/// One prepared step of the integer network.
#[derive(Debug, Clone)]
enum Step {
    Conv(Box<AnyConv>),
    Dense(Box<AnyDense>, usize, QFormat),
    MaxPool(Pool2dParams),
    AvgPool {
        pool: Pool2dParams,
        count_include_pad: bool,
        out: OutputStage,
    },
    GlobalAvgPool(OutputStage),
    /// Requantize to another format (a standalone Relu/Clip, or a format change).
    Requantize(OutputStage),
    Add(OutputStage),
    /// Flatten or Reshape: the node, whose output shape `graph::shape::infer` gives.
    Reshape(Box<crate::graph::Node>),
    Identity,
}

#[derive(Debug, Clone)]
struct Prepared {
    name: String,
    step: Step,
    /// Indices into the value slots: 0 is the input, k + 1 the output of node k.
    inputs: Vec<usize>,
    /// The tensor this step produces (for observers), and whether it is an activation point.
    output: String,
    observed: bool,
}

/// A graph compiled to integer kernels under a [`QuantPlan`].
#[derive(Debug, Clone)]
pub struct FixedNetwork {
    input_format: QFormat,
    input_name: String,
    steps: Vec<Prepared>,
    /// For each value slot, the last step that reads it (slots are moved, not copied, into it).
    last_use: Vec<Option<usize>>,
    output_slot: usize,
    weights: Vec<WeightCodes>,
    kernels: Vec<(String, KernelId)>,
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
    /// [`Error::Unsupported`] for an op the integer network does not run (Slice, Pad, Concat, MatMul
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
        let points: HashMap<String, Option<usize>> = activation_points(graph).into_iter().collect();
        let nodes = graph.nodes();
        let fmt_of = |tensor: &str| -> Result<QFormat> {
            plan.activation(tensor)
                .map(|a| a.format)
                .ok_or_else(|| Error::InvalidArgument {
                    name: "plan",
                    reason: format!("the plan has no format for activation '{tensor}'"),
                })
        };
        let input_name = graph.input().name.clone();
        let input_format = fmt_of(&input_name)?;
        kind_of(input_format)?;
        // Weight codes: given, or quantized here at the plan's formats.
        let weight_codes: Vec<WeightCodes> = match weights {
            Some(w) => {
                if w.len() != layers.len() {
                    return Err(Error::ShapeMismatch {
                        what: "weight tensors".into(),
                        expected: format!("{} (one per weighted layer)", layers.len()),
                        found: format!("{}", w.len()),
                    });
                }
                for (wc, lw) in w.iter().zip(&layers) {
                    if wc.node != lw.node || wc.codes.codes().shape() != lw.shape.as_slice() {
                        return Err(Error::ShapeMismatch {
                            what: format!("weights of node '{}'", lw.node),
                            expected: format!("node '{}' shape {:?}", lw.node, lw.shape),
                            found: format!(
                                "node '{}' shape {:?}",
                                wc.node,
                                wc.codes.codes().shape()
                            ),
                        });
                    }
                }
                w
            }
            None => layers
                .iter()
                .map(|lw| {
                    let wp = plan.require_weight(&lw.node)?;
                    let w = matrix_to_shape(&lw.matrix, &lw.shape)?;
                    let q = if wp.formats.len() == 1 {
                        Quantizer::<i8>::new(wp.formats[0])?.quantize(w.view())?
                    } else {
                        Quantizer::<i8>::per_channel(0, wp.formats.clone())?.quantize(w.view())?
                    };
                    Ok(WeightCodes {
                        node: lw.node.clone(),
                        codes: q,
                    })
                })
                .collect::<Result<_>>()?,
        };
        // Slots: 0 = input, k + 1 = output of node k. Resolve each node input to a slot.
        let slot_of = |name: &str, before: usize| -> Option<usize> {
            if let Some(j) = nodes[..before].iter().rposition(|n| n.output == name) {
                Some(j + 1)
            } else if name == input_name {
                Some(0)
            } else {
                None
            }
        };
        // The format each slot holds, tracked as we prepare.
        let mut slot_fmt: Vec<Option<QFormat>> = vec![None; nodes.len() + 1];
        slot_fmt[0] = Some(input_format);
        let mut steps = Vec::with_capacity(nodes.len());
        let mut kernels = Vec::new();
        let mut skip_fused: Vec<bool> = vec![false; nodes.len()];
        let shapes = graph.infer_shapes(
            &graph
                .input()
                .shape
                .iter()
                .map(|d| d.unwrap_or(1))
                .collect::<Vec<_>>(),
        )?;
        for (i, node) in nodes.iter().enumerate() {
            let unsupported = |why: &str| {
                Error::Unsupported(format!("node '{}' ({}): {why}", node.name, node.op.name()))
            };
            if skip_fused[i] {
                // A Relu/Clip fused into the preceding layer: pass its codes through.
                let src =
                    slot_of(&node.inputs[0], i).ok_or_else(|| unsupported("input not found"))?;
                slot_fmt[i + 1] = slot_fmt[src];
                steps.push(Prepared {
                    name: node.name.clone(),
                    step: Step::Identity,
                    inputs: vec![src],
                    output: node.output.clone(),
                    observed: true,
                });
                continue;
            }
            let data_inputs: Vec<usize> = match node.op {
                Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul => vec![slot_of(&node.inputs[0], i).ok_or_else(|| unsupported("its data input must be an activation"))?],
                _ => node
                    .inputs
                    .iter()
                    .map(|n| slot_of(n, i).ok_or_else(|| unsupported("an input is a constant; the integer network takes constants only as Conv/Gemm/MatMul weights")))
                    .collect::<Result<_>>()?,
            };
            let in_fmt =
                slot_fmt[data_inputs[0]].ok_or_else(|| unsupported("input format unknown"))?;
            let (step, out_fmt, observed) = match &node.op {
                Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul => {
                    let li = layers
                        .iter()
                        .position(|l| l.node_index == i)
                        .ok_or_else(|| unsupported("weights not found"))?;
                    let lw = &layers[li];
                    // Fused activation: the following Relu/Clip whose output is the activation point.
                    let (out_tensor, activation, fused_at) = match points.get(&node.output) {
                        Some(_) => (node.output.clone(), None, None),
                        None => {
                            let (j, next) = nodes
                                .iter()
                                .enumerate()
                                .skip(i + 1)
                                .find(|(_, n)| n.inputs.first() == Some(&node.output))
                                .ok_or_else(|| unsupported("output has no activation point"))?;
                            (next.output.clone(), Some(next.op.clone()), Some(j))
                        }
                    };
                    let of = fmt_of(&out_tensor)?;
                    let act = match activation {
                        None => Activation::Identity,
                        Some(Op::Relu) => Activation::Relu,
                        Some(Op::Clip { min, max }) => Activation::Clip {
                            min: clip_code(of, f64::from(min), true),
                            max: clip_code(of, f64::from(max), false),
                        },
                        Some(_) => return Err(unsupported("unexpected fused op")),
                    };
                    if let Some(j) = fused_at {
                        skip_fused[j] = true;
                    }
                    let stage = OutputStage::new(of).with_activation(act);
                    let wc = &weight_codes[li];
                    let bias = quantize_bias(&lw.bias, wc, in_fmt, &node.name)?;
                    let (kin, kout) = (kind_of(in_fmt)?, kind_of(of)?);
                    let step = match &node.op {
                        Op::Conv {
                            stride,
                            pad,
                            dilation,
                            groups,
                        } => {
                            let w4 = wc.codes.clone().into_dimensionality::<Ix4>()?;
                            let params = Conv2dParams {
                                stride: *stride,
                                padding: *pad,
                                dilation: *dilation,
                                groups: *groups,
                            };
                            let conv = build_pair!(
                                AnyConv,
                                kin,
                                kout,
                                Conv2d::new(&w4, Some(&bias), in_fmt, stage, params, choice)?
                            );
                            kernels.push((node.name.clone(), any_conv_kernel(&conv)));
                            Step::Conv(Box::new(conv))
                        }
                        _ => {
                            if shapes[i].len() != 2 {
                                return Err(unsupported(
                                    "only 2-D (batch x features) products run in integers",
                                ));
                            }
                            let w2 = wc.codes.clone().into_dimensionality::<Ix2>()?;
                            let dense = build_pair!(
                                AnyDense,
                                kin,
                                kout,
                                Dense::new(&w2, Some(&bias), in_fmt, stage, choice)?
                            );
                            kernels.push((node.name.clone(), any_dense_kernel(&dense)));
                            Step::Dense(Box::new(dense), lw.matrix.nrows(), of)
                        }
                    };
                    (step, of, out_tensor == node.output)
                }
                Op::MaxPool(p) => {
                    if p.dilation != [1, 1] || p.ceil_mode {
                        return Err(unsupported("dilated or ceil-mode max pooling"));
                    }
                    (Step::MaxPool(pool_params(p)), in_fmt, false)
                }
                Op::AveragePool {
                    pool,
                    count_include_pad,
                } => {
                    if pool.dilation != [1, 1] || pool.ceil_mode {
                        return Err(unsupported("dilated or ceil-mode average pooling"));
                    }
                    let of = fmt_of(&node.output)?;
                    (
                        Step::AvgPool {
                            pool: pool_params(pool),
                            count_include_pad: *count_include_pad,
                            out: OutputStage::new(of),
                        },
                        of,
                        true,
                    )
                }
                Op::GlobalAveragePool => {
                    let of = fmt_of(&node.output)?;
                    (Step::GlobalAvgPool(OutputStage::new(of)), of, true)
                }
                Op::Relu | Op::Clip { .. } => {
                    let of = fmt_of(&node.output)?;
                    let act = match node.op {
                        Op::Relu => Activation::Relu,
                        Op::Clip { min, max } => Activation::Clip {
                            min: clip_code(of, f64::from(min), true),
                            max: clip_code(of, f64::from(max), false),
                        },
                        _ => Activation::Identity,
                    };
                    (
                        Step::Requantize(OutputStage::new(of).with_activation(act)),
                        of,
                        true,
                    )
                }
                Op::Add => {
                    let of = fmt_of(&node.output)?;
                    (Step::Add(OutputStage::new(of)), of, true)
                }
                Op::Flatten { .. } | Op::Reshape { .. } => {
                    (Step::Reshape(Box::new(node.clone())), in_fmt, false)
                }
                Op::Identity => (Step::Identity, in_fmt, false),
                other => {
                    return Err(Error::Unsupported(format!(
                        "node '{}' ({}): not supported by the fixed-point network",
                        node.name,
                        other.name()
                    )));
                }
            };
            slot_fmt[i + 1] = Some(out_fmt);
            steps.push(Prepared {
                name: node.name.clone(),
                step,
                inputs: data_inputs,
                output: node.output.clone(),
                observed,
            });
        }
        let output_slot =
            slot_of(&graph.output().name, nodes.len()).ok_or_else(|| Error::InvalidArgument {
                name: "graph",
                reason: "the output is not produced by a node".into(),
            })?;
        let mut last_use = vec![None; steps.len() + 1];
        for (k, p) in steps.iter().enumerate() {
            for &i in &p.inputs {
                last_use[i] = Some(k);
            }
        }
        last_use[output_slot] = None;
        Ok(Self {
            input_format,
            input_name,
            steps,
            last_use,
            output_slot,
            weights: weight_codes,
            kernels,
        })
    }

    /// The format the float input is quantized to.
    pub fn input_format(&self) -> QFormat {
        self.input_format
    }

    /// The weight codes (for packing: [`crate::pack`]).
    pub fn weights(&self) -> &[WeightCodes] {
        &self.weights
    }

    /// The kernel each weighted layer selected, by node name.
    pub fn kernels(&self) -> &[(String, KernelId)] {
        &self.kernels
    }

    /// Runs the network: quantize `input`, integer kernels, dequantize the output.
    ///
    /// # Errors
    /// [`Error::NonFinite`] for NaN/±∞ input; [`Error::ShapeMismatch`] for an input of the wrong shape.
    pub fn run(&self, input: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        let x = quantize_act(input, self.input_format)?;
        let out = self.run_codes(x, &mut None::<&mut fn(&str, &ArrayViewD<'_, f32>)>)?;
        Ok(out.dequantize())
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
        let x = quantize_act(input, self.input_format)?;
        observer(&self.input_name, &x.dequantize().view());
        let out = self.run_codes(x, &mut Some(&mut observer))?;
        Ok(out.dequantize())
    }

    fn run_codes<F>(&self, x: Act, observer: &mut Option<&mut F>) -> Result<Act>
    where
        F: FnMut(&str, &ArrayViewD<'_, f32>),
    {
        let mut slots: Vec<Option<Act>> = vec![None; self.steps.len() + 1];
        slots[0] = Some(x);
        let mut scratch = Scratch::new();
        for (k, p) in self.steps.iter().enumerate() {
            let missing = || Error::InvalidArgument {
                name: "network",
                reason: format!("step '{}' reads a tensor that was not computed", p.name),
            };
            let s0 = p.inputs[0];
            // Steps that consume their input take it when they are its last reader.
            let owned = |slots: &mut Vec<Option<Act>>| -> Result<Act> {
                if self.last_use[s0] == Some(k) {
                    slots[s0].take().ok_or_else(missing)
                } else {
                    slots[s0].clone().ok_or_else(missing)
                }
            };
            let out = match &p.step {
                Step::Conv(c) => {
                    run_conv(c, slots[s0].as_ref().ok_or_else(missing)?, &mut scratch)?
                }
                Step::Dense(d, out_features, of) => run_dense(
                    d,
                    *out_features,
                    *of,
                    slots[s0].as_ref().ok_or_else(missing)?,
                    &mut scratch,
                )?,
                Step::MaxPool(pp) => map4(
                    owned(&mut slots)?,
                    |t| max_pool2d(&t, *pp),
                    |t| max_pool2d(&t, *pp),
                    |t| max_pool2d(&t, *pp),
                )?,
                Step::AvgPool {
                    pool,
                    count_include_pad,
                    out,
                } => {
                    let o = *out;
                    pool_pairs!(owned(&mut slots)?, o, |t, O| avg_pool2d::<_, O>(
                        &t,
                        *pool,
                        *count_include_pad,
                        o
                    ))
                }
                Step::GlobalAvgPool(o) => {
                    let o = *o;
                    pool_pairs!(owned(&mut slots)?, o, |t, O| global_avg_pool::<_, O>(&t, o))
                }
                Step::Requantize(o) => requantize(slots[s0].as_ref().ok_or_else(missing)?, *o)?,
                Step::Add(o) => {
                    let a = slots[s0].as_ref().ok_or_else(missing)?;
                    let b = slots[p.inputs.get(1).copied().unwrap_or(0)]
                        .as_ref()
                        .ok_or_else(missing)?;
                    add_any(a, b, *o)?
                }
                Step::Reshape(node) => {
                    let a = owned(&mut slots)?;
                    let shape = crate::graph::shape::infer(node, &[a.shape()])?;
                    a.reshape(&shape)?
                }
                Step::Identity => owned(&mut slots)?,
            };
            if let (true, Some(obs)) = (p.observed, observer.as_mut()) {
                obs(&p.output, &out.dequantize().view());
            }
            slots[k + 1] = Some(out);
        }
        slots[self.output_slot]
            .take()
            .ok_or_else(|| Error::InvalidArgument {
                name: "network",
                reason: "the output was not computed".into(),
            })
    }
}

fn clip_code(f: QFormat, v: f64, lower: bool) -> i64 {
    if !v.is_finite() {
        return if lower { f.min_code() } else { f.max_code() };
    }
    let s = v / f.step();
    let c = if lower { s.ceil() } else { s.floor() };
    c.clamp(f.min_code() as f64, f.max_code() as f64) as i64
}

fn pool_params(p: &crate::graph::Pool2d) -> Pool2dParams {
    Pool2dParams {
        kernel: p.kernel,
        stride: p.stride,
        padding: p.pad,
    }
}

fn quantize_bias(
    bias: &[f32],
    w: &WeightCodes,
    in_fmt: QFormat,
    node: &str,
) -> Result<QTensor<i32, Ix1>> {
    let formats = crate::kernels::bias_formats_of(&w.codes, in_fmt)?;
    let b = Array1::from(bias.to_vec());
    let q = if formats.windows(2).all(|p| p[0] == p[1]) {
        Quantizer::<i32>::new(formats[0])?.quantize(b.view())?
    } else {
        Quantizer::<i32>::per_channel(0, formats)?.quantize(b.view())?
    };
    if q.saturated() > 0 {
        return Err(Error::AccumulatorOverflow {
            reason: format!(
                "node '{node}': {} bias values do not fit a 32-bit accumulator at n_x + n_w fractional bits",
                q.saturated()
            ),
        });
    }
    Ok(q)
}

fn quantize_act(x: ArrayViewD<'_, f32>, f: QFormat) -> Result<Act> {
    Ok(match kind_of(f)? {
        Kind::U8 => Act::U8(Quantizer::<u8>::new(f)?.quantize(x)?.into_codes(), f),
        Kind::I8 => Act::I8(Quantizer::<i8>::new(f)?.quantize(x)?.into_codes(), f),
        Kind::I16 => Act::I16(Quantizer::<i16>::new(f)?.quantize(x)?.into_codes(), f),
    })
}

fn any_conv_kernel(c: &AnyConv) -> KernelId {
    match c {
        AnyConv::U8U8(l) => l.kernel(),
        AnyConv::U8I8(l) => l.kernel(),
        AnyConv::U8I16(l) => l.kernel(),
        AnyConv::I8U8(l) => l.kernel(),
        AnyConv::I8I8(l) => l.kernel(),
        AnyConv::I8I16(l) => l.kernel(),
        AnyConv::I16U8(l) => l.kernel(),
        AnyConv::I16I8(l) => l.kernel(),
        AnyConv::I16I16(l) => l.kernel(),
    }
}

fn any_dense_kernel(c: &AnyDense) -> KernelId {
    match c {
        AnyDense::U8U8(l) => l.kernel(),
        AnyDense::U8I8(l) => l.kernel(),
        AnyDense::U8I16(l) => l.kernel(),
        AnyDense::I8U8(l) => l.kernel(),
        AnyDense::I8I8(l) => l.kernel(),
        AnyDense::I8I16(l) => l.kernel(),
        AnyDense::I16U8(l) => l.kernel(),
        AnyDense::I16I8(l) => l.kernel(),
        AnyDense::I16I16(l) => l.kernel(),
    }
}

fn run_conv(c: &AnyConv, a: &Act, scratch: &mut Scratch) -> Result<Act> {
    let fmt_out = conv_out_format(c);
    // Activations are logically NCHW; convolutions keep them NHWC in memory (an NCHW-shaped view
    // with permuted strides), so consecutive layers and the max pools between them need no transposes.
    // A one-channel NCHW input is already NHWC in memory; any other input is copied by the kernel.
    with_pair!(AnyConv, c, a, |l, x, wrap| {
        let x4 = x.view().into_dimensionality::<Ix4>()?;
        let s = x4.shape();
        let [n, co, oh, ow] = l.output_shape([s[0], s[1], s[2], s[3]])?;
        let mut out = ndarray::Array4::default([n, oh, ow, co]);
        l.forward_nhwc_into(x4.permuted_axes([0, 2, 3, 1]), out.view_mut(), scratch)?;
        Ok(wrap(out.permuted_axes([0, 3, 1, 2]).into_dyn(), fmt_out))
    })
}

fn conv_out_format(c: &AnyConv) -> QFormat {
    match c {
        AnyConv::U8U8(l) => l.output_stage().format,
        AnyConv::U8I8(l) => l.output_stage().format,
        AnyConv::U8I16(l) => l.output_stage().format,
        AnyConv::I8U8(l) => l.output_stage().format,
        AnyConv::I8I8(l) => l.output_stage().format,
        AnyConv::I8I16(l) => l.output_stage().format,
        AnyConv::I16U8(l) => l.output_stage().format,
        AnyConv::I16I8(l) => l.output_stage().format,
        AnyConv::I16I16(l) => l.output_stage().format,
    }
}

fn run_dense(
    d: &AnyDense,
    out_features: usize,
    fmt_out: QFormat,
    a: &Act,
    scratch: &mut Scratch,
) -> Result<Act> {
    with_pair!(AnyDense, d, a, |l, x, wrap| {
        let x2 = x.view().into_dimensionality::<Ix2>()?;
        let mut out = ndarray::Array2::default((x2.shape()[0], out_features));
        l.forward_into(x2, out.view_mut(), scratch)?;
        Ok(wrap(out.into_dyn(), fmt_out))
    })
}

/// Activations between steps were produced by the kernels in their format, so they need no range scan.
fn to_q4<T: Storage>(a: ArrayD<T>, f: QFormat) -> Result<QTensor<T, Ix4>> {
    Ok(QTensor::from_codes_trusted(
        a.into_dimensionality::<Ix4>()?,
        vec![f],
        None,
    ))
}

fn map4(
    a: Act,
    u: impl FnOnce(QTensor<u8, Ix4>) -> Result<QTensor<u8, Ix4>>,
    i: impl FnOnce(QTensor<i8, Ix4>) -> Result<QTensor<i8, Ix4>>,
    w: impl FnOnce(QTensor<i16, Ix4>) -> Result<QTensor<i16, Ix4>>,
) -> Result<Act> {
    Ok(match a {
        Act::U8(c, f) => Act::U8(u(to_q4(c, f)?)?.into_codes().into_dyn(), f),
        Act::I8(c, f) => Act::I8(i(to_q4(c, f)?)?.into_codes().into_dyn(), f),
        Act::I16(c, f) => Act::I16(w(to_q4(c, f)?)?.into_codes().into_dyn(), f),
    })
}

/// Requantizes codes to `o` (round half up, the kernels' rule), then saturates to its range and
/// activation. Used for a standalone Relu/Clip and format changes.
fn requantize(a: &Act, o: OutputStage) -> Result<Act> {
    let fi = a.format();
    let fo = o.format;
    let shift = fi.frac_bits() - fo.frac_bits();
    let (mut lo, mut hi) = (fo.min_code(), fo.max_code());
    match o.activation {
        Activation::Identity => {}
        Activation::Relu => lo = lo.max(0),
        Activation::Clip { min, max } => {
            lo = lo.max(min);
            hi = hi.min(max);
        }
    }
    let conv = |q: i64| -> i64 {
        let v = if shift > 0 {
            let s = shift.min(62) as u32;
            (q + (1i64 << (s - 1))) >> s
        } else {
            q << (-shift).min(40) as u32
        };
        v.clamp(lo, hi)
    };
    let vals: Vec<i64> = match a {
        Act::U8(c, _) => c.iter().map(|&q| conv(i64::from(q))).collect(),
        Act::I8(c, _) => c.iter().map(|&q| conv(i64::from(q))).collect(),
        Act::I16(c, _) => c.iter().map(|&q| conv(i64::from(q))).collect(),
    };
    let shape = IxDyn(a.shape());
    let err = |_| Error::ShapeMismatch {
        what: "requantize".into(),
        expected: "matching element count".into(),
        found: "other".into(),
    };
    Ok(match kind_of(fo)? {
        Kind::U8 => Act::U8(
            ArrayD::from_shape_vec(shape, vals.into_iter().map(|v| v as u8).collect())
                .map_err(err)?,
            fo,
        ),
        Kind::I8 => Act::I8(
            ArrayD::from_shape_vec(shape, vals.into_iter().map(|v| v as i8).collect())
                .map_err(err)?,
            fo,
        ),
        Kind::I16 => Act::I16(
            ArrayD::from_shape_vec(shape, vals.into_iter().map(|v| v as i16).collect())
                .map_err(err)?,
            fo,
        ),
    })
}

fn add_any(a: &Act, b: &Act, o: OutputStage) -> Result<Act> {
    macro_rules! go {
        ($x:expr, $fx:expr, $y:expr, $fy:expr) => {{
            let qa = QTensor::from_codes($x.clone(), $fx)?;
            let qb = QTensor::from_codes($y.clone(), $fy)?;
            match kind_of(o.format)? {
                Kind::U8 => Act::U8(add::<_, _, u8, _>(&qa, &qb, o)?.into_codes(), o.format),
                Kind::I8 => Act::I8(add::<_, _, i8, _>(&qa, &qb, o)?.into_codes(), o.format),
                Kind::I16 => Act::I16(add::<_, _, i16, _>(&qa, &qb, o)?.into_codes(), o.format),
            }
        }};
    }
    Ok(match (a, b) {
        (Act::U8(x, fx), Act::U8(y, fy)) => go!(x, *fx, y, *fy),
        (Act::U8(x, fx), Act::I8(y, fy)) => go!(x, *fx, y, *fy),
        (Act::U8(x, fx), Act::I16(y, fy)) => go!(x, *fx, y, *fy),
        (Act::I8(x, fx), Act::U8(y, fy)) => go!(x, *fx, y, *fy),
        (Act::I8(x, fx), Act::I8(y, fy)) => go!(x, *fx, y, *fy),
        (Act::I8(x, fx), Act::I16(y, fy)) => go!(x, *fx, y, *fy),
        (Act::I16(x, fx), Act::U8(y, fy)) => go!(x, *fx, y, *fy),
        (Act::I16(x, fx), Act::I8(y, fy)) => go!(x, *fx, y, *fy),
        (Act::I16(x, fx), Act::I16(y, fy)) => go!(x, *fx, y, *fy),
    })
}

impl From<ndarray::ShapeError> for Error {
    fn from(e: ndarray::ShapeError) -> Self {
        Error::ShapeMismatch {
            what: "tensor rank".into(),
            expected: "the rank the kernel takes".into(),
            found: e.to_string(),
        }
    }
}
