//! ONNX export of a quantized model as a standard QDQ graph (feature `onnx`):
//! [`QuantizedModel::to_onnx_qdq`] and [`QuantizedModel::write_onnx_qdq`].
//!
//! The exported model has the float graph's topology (BatchNormalizations folded, Dropout as
//! Identity, as import left them), with
//! - every weight as an integer initializer followed by `DequantizeLinear` (zero point 0, scale a
//!   power of two, per output channel along axis 0 — axis 1 for MatMul's `[K, N]` — when the
//!   channels' scales differ);
//! - every bias as an `INT32` initializer at scale `input_scale × weight_scale`, dequantized;
//! - every tensor the integer network holds in a format as `QuantizeLinear → DequantizeLinear` at
//!   that format (the input, each activation point, and the outputs of the ops that keep their input's
//!   format — MaxPool, Flatten, Reshape, Identity, Slice, Pad — where the pair is lossless).
//!
//! `docs/export.md` gives the mapping in equations: the mid-rise weight grid as odd codes at half the
//! step, the container types and the Clip that reproduces saturation for widths other than 8 and 16,
//! the opset rule, and the half-accumulator-step bias that makes onnxruntime's round-half-to-even
//! requantization give fixq's round-half-up results.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::exec::{FixedNetwork, clip_code, quantize_bias};
use crate::fixed::{Grid, QFormat};
use crate::graph::{Graph, LayerWeights, Node, Op, activation_points, layer_weights};
use crate::io::atomic::write_atomic;
use crate::onnx::encode::{
    self, AttrValue, GraphOut, ModelOut, NodeOut, TensorOut, ValueInfoOut, data_type as dt,
};
use crate::quantize::QuantizedModel;

/// The opset every export imports at least: per-axis `DequantizeLinear` (the `axis` attribute)
/// appeared in opset 13.
pub const QDQ_BASE_OPSET: i64 = 13;

/// The opset an export needs for 4-bit or 16-bit integers in `QuantizeLinear`/`DequantizeLinear`
/// (types `INT4`, `UINT4`, `INT16`, `UINT16` arrived with opset 21 and IR version 10).
pub const QDQ_WIDE_OPSET: i64 = 21;

impl QuantizedModel {
    /// The model as a serialized ONNX `ModelProto` in standard QDQ form (feature `onnx`), which
    /// onnxruntime and other runtimes load as a quantized model; `docs/export.md` describes what is
    /// exported and where results can differ from [`QuantizedModel::run`].
    ///
    /// The opset is [`QDQ_BASE_OPSET`] (13), 14 if a Reshape needs `allowzero`, and
    /// [`QDQ_WIDE_OPSET`] (21) if any weight fits 4 bits or any activation is wider than 8 bits.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the node and op for an operator the export does not write (every
    /// op [`FixedNetwork`] runs is written); [`Error::InvalidArgument`] if a generated tensor name
    /// (`<tensor>_quantized`, `<weight>_scale`, ...) collides with a name in the graph.
    ///
    /// # Examples
    /// ```
    /// # use fixq::graph::{Graph, Node, Op, TensorInfo};
    /// # use fixq::{quantize, Budget, QuantizeOptions};
    /// # use ndarray::{Array2, ArrayD, IxDyn};
    /// # let w = Array2::from_shape_fn((4, 8), |(o, i)| ((o * 8 + i) as f32 * 0.37).sin()).into_dyn();
    /// # let input = TensorInfo { name: "x".into(), shape: vec![None, Some(8)] };
    /// # let fc = Node { name: "fc".into(), op: Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true },
    /// #     inputs: vec!["x".into(), "w".into()], output: "y".into() };
    /// # let graph = Graph::new(input, "y", vec![fc], vec![("w".into(), w)])?;
    /// # let images = Array2::from_shape_fn((32, 8), |(n, i)| ((n * 8 + i) as f32 * 0.91).cos()).into_dyn();
    /// let model = quantize(&graph, images.view(), Budget::AvgBitsPerParam(4.0), &QuantizeOptions::default())?;
    /// let onnx = model.to_onnx_qdq()?; // bytes of a .onnx file
    /// assert!(onnx.len() > 100);
    /// # Ok::<(), fixq::Error>(())
    /// ```
    pub fn to_onnx_qdq(&self) -> Result<Vec<u8>> {
        Ok(encode::model(&export(self.graph(), self.network())?))
    }

    /// Writes [`QuantizedModel::to_onnx_qdq`] to `path`, replacing any existing file atomically.
    ///
    /// # Errors
    /// As [`QuantizedModel::to_onnx_qdq`]; [`Error::Io`] naming `path` if it cannot be written.
    pub fn write_onnx_qdq(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.to_onnx_qdq()?)
    }
}

/// The QDQ model of `graph` as `net` runs it.
fn export(graph: &Graph, net: &FixedNetwork) -> Result<ModelOut> {
    let layers = layer_weights(graph)?;
    let mut x = Exporter {
        graph,
        net,
        nodes: Vec::new(),
        inits: Vec::new(),
        read_as: HashMap::new(),
        points: activation_points(graph)
            .into_iter()
            .map(|(t, _)| t)
            .collect(),
        opset: QDQ_BASE_OPSET,
    };
    let input = &graph.input().name;
    let f = x.format(input)?;
    x.quantize_point(input, input.clone(), f, (f.min_code(), f.max_code()))?;
    for (i, node) in graph.nodes().iter().enumerate() {
        match layers.iter().position(|l| l.node_index == i) {
            Some(li) => x.weighted(node, &layers[li], li)?,
            None => x.node(node)?,
        }
    }
    let output = &graph.output().name;
    if x.read_as.get(output) != Some(output) {
        return Err(Error::Internal {
            reason: format!("export: the output '{output}' was not dequantized under its own name"),
        });
    }
    let value_info = |name: &str, shape: &[Option<usize>]| ValueInfoOut {
        name: name.to_string(),
        elem_type: dt::FLOAT,
        shape: shape.iter().map(|d| d.map(|d| d as i64)).collect(),
    };
    let g = GraphOut {
        name: "fixq_qdq".into(),
        inputs: vec![value_info(input, &graph.input().shape)],
        outputs: vec![value_info(output, &graph.output().shape)],
        nodes: x.nodes,
        initializers: x.inits,
    };
    check_unique(graph, &g)?;
    Ok(ModelOut {
        ir_version: if x.opset >= QDQ_WIDE_OPSET { 10 } else { 7 },
        opset: x.opset,
        producer_name: "fixq".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "fixq QDQ export: power-of-two scales, zero points 0; biases carry half an \
                     accumulator step where the layer rounds, so round-half-to-even requantization \
                     gives fixq's round-half-up (docs/export.md)"
            .into(),
        graph: g,
    })
}

/// Every tensor name is defined once (SSA), so no generated name may meet one of the graph's.
fn check_unique(graph: &Graph, g: &GraphOut) -> Result<()> {
    let mut seen = HashSet::new();
    seen.insert(graph.input().name.as_str());
    let defined = g.initializers.iter().map(|t| t.name.as_str()).chain(
        g.nodes
            .iter()
            .flat_map(|n| n.outputs.iter().map(String::as_str)),
    );
    for name in defined {
        if !seen.insert(name) {
            return Err(Error::InvalidArgument {
                name: "graph",
                reason: format!(
                    "the QDQ export defines tensor '{name}' twice (a name in the graph collides \
                     with one the export generates); rename it"
                ),
            });
        }
    }
    Ok(())
}

/// The integer container of an activation format: ONNX type and code range.
fn container(f: QFormat, what: &str) -> Result<(i32, i64, i64)> {
    if f.grid() != Grid::MidTread {
        return Err(Error::Unsupported(format!(
            "QDQ export of {what}: mid-rise activation format {f}"
        )));
    }
    match (f.is_signed(), f.bits()) {
        (false, 1..=8) => Ok((dt::UINT8, 0, 255)),
        (true, 1..=8) => Ok((dt::INT8, -128, 127)),
        (false, 9..=16) => Ok((dt::UINT16, 0, 65_535)),
        (true, 9..=16) => Ok((dt::INT16, -32_768, 32_767)),
        _ => Err(Error::Unsupported(format!(
            "QDQ export of {what}: format {f} is wider than 16 bits"
        ))),
    }
}

/// The container of weight codes in `lo..=hi`.
fn weight_container(lo: i64, hi: i64) -> Option<(i32, i64, i64)> {
    [
        (dt::INT4, -8, 7),
        (dt::INT8, -128, 127),
        (dt::INT16, -32_768, 32_767),
    ]
    .into_iter()
    .find(|&(_, a, b)| lo >= a && hi <= b)
}

/// Raw little-endian bytes of integer codes in an ONNX integer type.
fn raw_ints(data_type: i32, codes: &[i64]) -> Vec<u8> {
    match data_type {
        dt::INT4 | dt::UINT4 => encode::pack_nibbles(codes),
        dt::INT8 | dt::UINT8 => codes.iter().map(|&c| c as u8).collect(),
        dt::INT16 | dt::UINT16 => codes
            .iter()
            .flat_map(|&c| (c as u16).to_le_bytes())
            .collect(),
        dt::INT32 => codes
            .iter()
            .flat_map(|&c| (c as i32).to_le_bytes())
            .collect(),
        _ => codes.iter().flat_map(|&c| c.to_le_bytes()).collect(),
    }
}

/// 2^−n as `f32` (exact: |n| ≤ 102 keeps it a normal number).
fn pow2_f32(n: i32) -> f32 {
    libm::ldexpf(1.0, -n)
}

struct Exporter<'a> {
    graph: &'a Graph,
    net: &'a FixedNetwork,
    nodes: Vec<NodeOut>,
    inits: Vec<TensorOut>,
    /// For each graph tensor, the name later nodes read it under (its `DequantizeLinear` output, or
    /// the float tensor itself for a fused layer's accumulator).
    read_as: HashMap<String, String>,
    /// The plan's activation points ([`activation_points`]).
    points: HashSet<String>,
    opset: i64,
}

fn ints(v: &[usize]) -> AttrValue {
    AttrValue::Ints(v.iter().map(|&d| d as i64).collect())
}

impl Exporter<'_> {
    fn format(&self, tensor: &str) -> Result<QFormat> {
        self.net
            .tensor_format(tensor)
            .ok_or_else(|| Error::Internal {
                reason: format!("export: the network holds no format for tensor '{tensor}'"),
            })
    }

    /// The name under which data input `t` of `node` is read.
    fn read(&self, node: &Node, t: &str) -> Result<String> {
        self.read_as.get(t).cloned().ok_or_else(|| {
            unsupported(
                node,
                &format!("input '{t}' is a constant; the export takes constants only as weights"),
            )
        })
    }

    /// The name the producer of graph tensor `t` writes: `t`, except for the graph output, whose
    /// name the final `DequantizeLinear` takes.
    fn produced(&self, t: &str) -> String {
        if t == self.graph.output().name {
            format!("{t}_float")
        } else {
            t.to_string()
        }
    }

    fn push(&mut self, name: String, op: &str, inputs: Vec<String>, output: String) {
        self.push_with(name, op, inputs, output, Vec::new());
    }

    fn push_with(
        &mut self,
        name: String,
        op: &str,
        inputs: Vec<String>,
        output: String,
        attributes: Vec<(String, AttrValue)>,
    ) {
        self.nodes.push(NodeOut {
            name,
            op_type: op.to_string(),
            inputs,
            outputs: vec![output],
            attributes,
        });
    }

    fn init(&mut self, name: String, data_type: i32, dims: Vec<i64>, raw: Vec<u8>) -> String {
        self.inits.push(TensorOut {
            name: name.clone(),
            data_type,
            dims,
            raw,
        });
        name
    }

    fn f32_scalar(&mut self, name: String, v: f32) -> String {
        self.init(name, dt::FLOAT, vec![], v.to_le_bytes().to_vec())
    }

    fn i64_vec(&mut self, name: String, v: &[i64]) -> String {
        self.init(
            name,
            dt::INT64,
            vec![v.len() as i64],
            raw_ints(dt::INT64, v),
        )
    }

    /// `QuantizeLinear → DequantizeLinear` of tensor `t` (value `src`) at format `f`, whose codes the
    /// producer already bounded to `bounds`; a Clip first when the container would saturate later
    /// than the format's code range.
    fn quantize_point(
        &mut self,
        t: &str,
        src: String,
        f: QFormat,
        (lo, hi): (i64, i64),
    ) -> Result<()> {
        let (ty, clo, chi) = container(f, &format!("tensor '{t}'"))?;
        if ty == dt::INT16 || ty == dt::UINT16 {
            self.opset = self.opset.max(QDQ_WIDE_OPSET);
        }
        let step = f.step() as f32;
        let mut src = src;
        let (flo, fhi) = (lo.max(f.min_code()), hi.min(f.max_code()));
        if flo > clo || fhi < chi {
            // The format saturates inside its container: Clip at the format's own bounds (multiples
            // of the step, so clipping then rounding equals rounding then clamping).
            let lo_name = self.f32_scalar(format!("{t}_clip_min"), flo as f32 * step);
            let hi_name = self.f32_scalar(format!("{t}_clip_max"), fhi as f32 * step);
            let out = format!("{t}_clipped");
            self.push(
                format!("{t}_Clip"),
                "Clip",
                vec![src, lo_name, hi_name],
                out.clone(),
            );
            src = out;
        }
        let scale = self.f32_scalar(format!("{t}_scale"), step);
        let zp = self.init(format!("{t}_zero_point"), ty, vec![], raw_ints(ty, &[0]));
        let q = format!("{t}_quantized");
        self.push(
            format!("{t}_QuantizeLinear"),
            "QuantizeLinear",
            vec![src, scale.clone(), zp.clone()],
            q.clone(),
        );
        let dq = if t == self.graph.output().name {
            t.to_string()
        } else {
            format!("{t}_dequantized")
        };
        self.push(
            format!("{t}_DequantizeLinear"),
            "DequantizeLinear",
            vec![q, scale, zp],
            dq.clone(),
        );
        self.read_as.insert(t.to_string(), dq);
        Ok(())
    }

    /// A node's output: quantized at the network's format when the network holds it in one.
    fn finish(&mut self, node: &Node, bounds: Option<(i64, i64)>) -> Result<()> {
        let t = &node.output;
        let src = self.produced(t);
        match self.net.tensor_format(t) {
            Some(f) => {
                let b = bounds.unwrap_or((f.min_code(), f.max_code()));
                self.quantize_point(t, src, f, b)
            }
            None => Err(Error::Internal {
                reason: format!("export: the network holds no format for tensor '{t}'"),
            }),
        }
    }

    /// A Conv, Gemm or MatMul with its weights and bias.
    fn weighted(&mut self, node: &Node, lw: &LayerWeights, li: usize) -> Result<()> {
        let wc = self
            .net
            .weights()
            .get(li)
            .filter(|w| w.node == node.name)
            .ok_or_else(|| Error::Internal {
                reason: format!("export: no weight codes for node '{}'", node.name),
            })?;
        let x = self.read(node, &node.inputs[0])?;
        let in_fmt = self.format(&node.inputs[0])?;
        let out_fmt = self.format(&node.output)?;
        let bias = quantize_bias(&lw.bias, wc, in_fmt, &node.name)?;
        let codes = &wc.codes;
        let shape = codes.codes().shape().to_vec();
        let channels = shape[0];
        let per = codes.codes().len() / channels.max(1);
        let flat: Vec<i64> = codes.codes().iter().map(|&c| i64::from(c)).collect();
        // Effective codes and fractional bits per channel: mid-rise (q + 1/2)·2^-n as 2q+1 at n+1.
        let mut eff = Vec::with_capacity(flat.len());
        let mut frac = Vec::with_capacity(channels);
        for o in 0..channels {
            let f = codes.format_of_channel(o);
            let odd = f.grid() == Grid::MidRise;
            frac.push(f.as_mid_tread_odd()?.frac_bits());
            eff.extend(
                flat[o * per..(o + 1) * per]
                    .iter()
                    .map(|&q| if odd { 2 * q + 1 } else { q }),
            );
        }
        let lo = eff.iter().copied().min().unwrap_or(0);
        let hi = eff.iter().copied().max().unwrap_or(0);
        let (wty, wlo, whi) = weight_container(lo, hi).ok_or_else(|| {
            unsupported(node, &format!("weight codes {lo}..={hi} exceed 16 bits"))
        })?;
        if wty != dt::INT8 {
            self.opset = self.opset.max(QDQ_WIDE_OPSET);
        }
        // Round half up as onnxruntime's round half to even: where channel o's requantization shifts
        // right (s > 0), codes 2w at half the weight step and bias 2b + 1 put the accumulator half a
        // step up, which breaks exactly the ties (docs/export.md, Eq. 5). Only where the doubled
        // codes still fit the container chosen above.
        // MatMul has no bias input to carry the half step. A Conv or Gemm without one gets one.
        let mut bias_out: Vec<i64> = bias.codes().iter().map(|&b| i64::from(b)).collect();
        if node.op != Op::MatMul {
            for ((lane, n), b) in eff
                .chunks_mut(per.max(1))
                .zip(frac.iter_mut())
                .zip(bias_out.iter_mut())
            {
                let shift = in_fmt.frac_bits() + *n - out_fmt.frac_bits();
                let fits = lane.iter().all(|&c| (wlo..=whi).contains(&(2 * c)));
                let b2 = 2 * *b + 1;
                if shift > 0 && fits && i32::try_from(b2).is_ok() {
                    lane.iter_mut().for_each(|c| *c *= 2);
                    *n += 1;
                    *b = b2;
                }
            }
        }
        let needs_bias = node.inputs.len() > 2 || bias_out.iter().any(|&b| b != 0);
        let uniform = frac.windows(2).all(|p| p[0] == p[1]);
        let (mut dims, mut data, mut axis) = (
            shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
            eff,
            0i64,
        );
        if node.op == Op::MatMul {
            // The graph's MatMul weights are [K, N]: write the codes transposed, channels on axis 1.
            let k = per;
            let mut t = vec![0; data.len()];
            for o in 0..channels {
                for j in 0..k {
                    t[j * channels + o] = data[o * k + j];
                }
            }
            data = t;
            dims = vec![k as i64, channels as i64];
            axis = 1;
        }
        let w_name = &lw.weight_name;
        let scale_dims = if uniform {
            vec![]
        } else {
            vec![channels as i64]
        };
        let scales: Vec<f32> = if uniform {
            vec![pow2_f32(frac[0])]
        } else {
            frac.iter().map(|&n| pow2_f32(n)).collect()
        };
        let wq = self.init(
            format!("{w_name}_quantized"),
            wty,
            dims,
            raw_ints(wty, &data),
        );
        let ws = self.init(
            format!("{w_name}_scale"),
            dt::FLOAT,
            scale_dims.clone(),
            scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        );
        let zeros = vec![0; scales.len()];
        let wz = self.init(
            format!("{w_name}_zero_point"),
            wty,
            scale_dims.clone(),
            raw_ints(wty, &zeros),
        );
        let wdq = format!("{w_name}_dequantized");
        let attrs = if uniform {
            vec![]
        } else {
            vec![("axis".to_string(), AttrValue::Int(axis))]
        };
        self.push_with(
            format!("{w_name}_DequantizeLinear"),
            "DequantizeLinear",
            vec![wq, ws, wz],
            wdq.clone(),
            attrs,
        );
        let mut inputs = vec![x, wdq];
        if needs_bias {
            let b_name = node
                .inputs
                .get(2)
                .cloned()
                .unwrap_or_else(|| format!("{}_bias", node.name));
            let b_name = &b_name;
            let bias_scales: Vec<f32> = if uniform {
                vec![pow2_f32(in_fmt.frac_bits() + frac[0])]
            } else {
                frac.iter()
                    .map(|&n| pow2_f32(in_fmt.frac_bits() + n))
                    .collect()
            };
            let bq = self.init(
                format!("{b_name}_quantized"),
                dt::INT32,
                vec![channels as i64],
                raw_ints(dt::INT32, &bias_out),
            );
            let bs = self.init(
                format!("{b_name}_scale"),
                dt::FLOAT,
                scale_dims.clone(),
                bias_scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            );
            let bz = self.init(
                format!("{b_name}_zero_point"),
                dt::INT32,
                scale_dims,
                raw_ints(dt::INT32, &zeros),
            );
            let bdq = format!("{b_name}_dequantized");
            let attrs = if uniform {
                vec![]
            } else {
                vec![("axis".to_string(), AttrValue::Int(0))]
            };
            self.push_with(
                format!("{b_name}_DequantizeLinear"),
                "DequantizeLinear",
                vec![bq, bs, bz],
                bdq.clone(),
                attrs,
            );
            inputs.push(bdq);
        }
        let attrs = match &node.op {
            Op::Conv {
                stride,
                pad,
                dilation,
                groups,
            } => vec![
                ("kernel_shape".to_string(), ints(&shape[2..])),
                ("strides".to_string(), ints(stride)),
                ("pads".to_string(), ints(pad)),
                ("dilations".to_string(), ints(dilation)),
                ("group".to_string(), AttrValue::Int(*groups as i64)),
            ],
            // alpha and beta are folded into the codes (as the integer network runs them); the
            // codes are [N, K].
            Op::Gemm { .. } => vec![("transB".to_string(), AttrValue::Int(1))],
            _ => vec![],
        };
        let op = node.op.name();
        // A layer whose output is no activation point has its Relu/Clip fused (the plan formats
        // the activation's output instead).
        let fused = !self.points.contains(&node.output);
        if fused {
            // The accumulator stays float; the fused Relu/Clip node quantizes its own output.
            let out = node.output.clone();
            self.push_with(node.name.clone(), op, inputs, out.clone(), attrs);
            self.read_as.insert(out.clone(), out);
            Ok(())
        } else {
            let out = self.produced(&node.output);
            self.push_with(node.name.clone(), op, inputs, out, attrs);
            self.finish(node, None)
        }
    }

    /// Every other op.
    fn node(&mut self, node: &Node) -> Result<()> {
        let x0 = || self.read(node, &node.inputs[0]);
        let out = self.produced(&node.output);
        let name = node.name.clone();
        match &node.op {
            Op::Relu | Op::Clip { .. } => {
                let f = self.format(&node.output)?;
                let (_, _, chi) = container(f, &format!("tensor '{}'", node.output))?;
                let (lo, hi) = match node.op {
                    Op::Clip { min, max } => (
                        clip_code(f, f64::from(min), true).max(f.min_code()),
                        clip_code(f, f64::from(max), false).min(f.max_code()),
                    ),
                    _ => (0.max(f.min_code()), f.max_code()),
                };
                let x = x0()?;
                if node.op == Op::Relu && hi == chi {
                    self.push(name, "Relu", vec![x], out);
                } else {
                    // The bounds as fixq applies them: codes of the output format (Eq. 6).
                    let step = f.step() as f32;
                    let lo_name = self.f32_scalar(format!("{name}_min"), lo as f32 * step);
                    let hi_name = self.f32_scalar(format!("{name}_max"), hi as f32 * step);
                    self.push(name, "Clip", vec![x, lo_name, hi_name], out);
                }
                self.finish(node, Some((lo, hi)))
            }
            Op::Add => {
                let inputs = vec![x0()?, self.read(node, &node.inputs[1])?];
                self.push(name, "Add", inputs, out);
                self.finish(node, None)
            }
            Op::Concat { axis } => {
                let inputs = node
                    .inputs
                    .iter()
                    .map(|t| self.read(node, t))
                    .collect::<Result<Vec<_>>>()?;
                let attrs = vec![("axis".to_string(), AttrValue::Int(*axis))];
                self.push_with(name, "Concat", inputs, out, attrs);
                self.finish(node, None)
            }
            Op::MaxPool(p) => {
                let attrs = vec![
                    ("kernel_shape".to_string(), ints(&p.kernel)),
                    ("strides".to_string(), ints(&p.stride)),
                    ("pads".to_string(), ints(&p.pad)),
                    ("dilations".to_string(), ints(&p.dilation)),
                    (
                        "ceil_mode".to_string(),
                        AttrValue::Int(i64::from(p.ceil_mode)),
                    ),
                ];
                self.push_with(name, "MaxPool", vec![x0()?], out, attrs);
                self.finish(node, None)
            }
            Op::AveragePool {
                pool,
                count_include_pad,
            } => {
                if pool.dilation != [1, 1] {
                    return Err(unsupported(node, "dilated average pooling"));
                }
                let attrs = vec![
                    ("kernel_shape".to_string(), ints(&pool.kernel)),
                    ("strides".to_string(), ints(&pool.stride)),
                    ("pads".to_string(), ints(&pool.pad)),
                    (
                        "ceil_mode".to_string(),
                        AttrValue::Int(i64::from(pool.ceil_mode)),
                    ),
                    (
                        "count_include_pad".to_string(),
                        AttrValue::Int(i64::from(*count_include_pad)),
                    ),
                ];
                self.push_with(name, "AveragePool", vec![x0()?], out, attrs);
                self.finish(node, None)
            }
            Op::GlobalAveragePool => {
                self.push(name, "GlobalAveragePool", vec![x0()?], out);
                self.finish(node, None)
            }
            Op::Flatten { axis } => {
                let attrs = vec![("axis".to_string(), AttrValue::Int(*axis))];
                self.push_with(name, "Flatten", vec![x0()?], out, attrs);
                self.finish(node, None)
            }
            Op::Identity => {
                self.push(name, "Identity", vec![x0()?], out);
                self.finish(node, None)
            }
            Op::Reshape { shape, allow_zero } => {
                let x = x0()?;
                let s = self.i64_vec(format!("{name}_shape"), shape);
                let mut attrs = Vec::new();
                if *allow_zero {
                    self.opset = self.opset.max(14);
                    attrs.push(("allowzero".to_string(), AttrValue::Int(1)));
                }
                self.push_with(name, "Reshape", vec![x, s], out, attrs);
                self.finish(node, None)
            }
            Op::Slice {
                starts,
                ends,
                axes,
                steps,
            } => {
                let mut inputs = vec![x0()?];
                for (part, v) in [
                    ("starts", starts),
                    ("ends", ends),
                    ("axes", axes),
                    ("steps", steps),
                ] {
                    inputs.push(self.i64_vec(format!("{name}_{part}"), v));
                }
                self.push(name, "Slice", inputs, out);
                self.finish(node, None)
            }
            Op::Pad { pads, value } => {
                let x = x0()?;
                let p = self.i64_vec(format!("{name}_pads"), pads);
                let v = self.f32_scalar(format!("{name}_value"), *value);
                let attrs = vec![(
                    "mode".to_string(),
                    AttrValue::String("constant".to_string()),
                )];
                self.push_with(name, "Pad", vec![x, p, v], out, attrs);
                self.finish(node, None)
            }
            _ => Err(unsupported(node, "not expressed by the QDQ export")),
        }
    }
}

fn unsupported(node: &Node, why: &str) -> Error {
    Error::Unsupported(format!(
        "QDQ export: node '{}' ({}): {why}",
        node.name,
        node.op.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::TensorInfo;
    use crate::onnx::encode::data_type as dt;
    use crate::{Budget, QuantizeOptions, quantize};
    use ndarray::{Array2, ArrayD, IxDyn};

    /// fc (Gemm) → relu → fc2, 8 inputs, quantized at 3 bits per weight.
    fn small_model() -> QuantizedModel {
        let w1 =
            Array2::from_shape_fn((6, 8), |(o, i)| ((o * 8 + i) as f32 * 0.37).sin()).into_dyn();
        let w2 =
            Array2::from_shape_fn((3, 6), |(o, i)| ((o * 6 + i) as f32 * 0.53).cos()).into_dyn();
        let b1 = ArrayD::from_elem(IxDyn(&[6]), 0.1f32);
        let input = TensorInfo {
            name: "x".into(),
            shape: vec![None, Some(8)],
        };
        let gemm = |name: &str, i: &str, w: &str, b: Option<&str>, o: &str| Node {
            name: name.into(),
            op: Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            inputs: [Some(i), Some(w), b]
                .into_iter()
                .flatten()
                .map(String::from)
                .collect(),
            output: o.into(),
        };
        let nodes = vec![
            gemm("fc1", "x", "w1", Some("b1"), "h"),
            Node {
                name: "relu".into(),
                op: Op::Relu,
                inputs: vec!["h".into()],
                output: "r".into(),
            },
            gemm("fc2", "r", "w2", None, "y"),
        ];
        let inits = vec![("w1".into(), w1), ("w2".into(), w2), ("b1".into(), b1)];
        let graph = Graph::new(input, "y", nodes, inits).unwrap();
        let images =
            Array2::from_shape_fn((64, 8), |(n, i)| ((n * 8 + i) as f32 * 0.91).cos()).into_dyn();
        let options = QuantizeOptions {
            probe_images: 32,
            operating_point_rounds: 0,
            ..QuantizeOptions::default()
        };
        quantize(
            &graph,
            images.view(),
            Budget::AvgBitsPerParam(3.0),
            &options,
        )
        .unwrap()
    }

    #[test]
    fn a_bias_that_bias_correction_added_survives_save_and_load() {
        let model = small_model();
        let fc2 = model
            .graph()
            .nodes()
            .iter()
            .find(|n| n.name == "fc2")
            .unwrap();
        assert_eq!(
            fc2.inputs.get(2).map(String::as_str),
            Some("fc2.corrected_bias")
        );
        let bias = model
            .graph()
            .initializer("fc2.corrected_bias")
            .unwrap()
            .to_owned();
        assert!(bias.iter().any(|&b| b != 0.0), "{bias:?}");
        let loaded = QuantizedModel::from_bytes(&model.to_bytes().unwrap()).unwrap();
        assert_eq!(
            loaded.graph().initializer("fc2.corrected_bias"),
            Some(&bias)
        );
        let x =
            Array2::from_shape_fn((16, 8), |(n, i)| ((n * 8 + i) as f32 * 0.29).sin()).into_dyn();
        assert_eq!(model.run(x.view()).unwrap(), loaded.run(x.view()).unwrap());
    }

    #[test]
    fn the_export_has_the_qdq_structure() {
        let model = small_model();
        let m = export(model.graph(), model.network()).unwrap();
        // 16-bit output: INT16 QDQ needs opset 21 (IR 10).
        assert_eq!((m.opset, m.ir_version), (21, 10));
        // (fc2 has no bias in the model; bias correction gives it one, `fc2.corrected_bias`.)
        let ops: Vec<&str> = m.graph.nodes.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "QuantizeLinear",   // x
                "DequantizeLinear", // x
                "DequantizeLinear", // w1
                "DequantizeLinear", // b1
                "Gemm",             // fc1, accumulator in float
                "Relu",             // fused: quantizes its own output
                "QuantizeLinear",
                "DequantizeLinear",
                "DequantizeLinear", // w2
                "DequantizeLinear", // fc2's corrected bias
                "Gemm",
                "QuantizeLinear", // y, 16 bits
                "DequantizeLinear",
            ]
        );
        let last = m.graph.nodes.last().unwrap();
        assert_eq!(last.outputs, ["y"], "the output keeps its name");
        let gemm = &m.graph.nodes[4];
        assert_eq!(
            gemm.inputs,
            ["x_dequantized", "w1_dequantized", "b1_dequantized"]
        );
        assert_eq!(m.graph.nodes[5].inputs, ["h"]);
        let init = |name: &str| {
            m.graph
                .initializers
                .iter()
                .find(|t| t.name == name)
                .unwrap()
        };
        // Mid-rise weights at <= 3 bits have odd codes within -7..=7 (INT4), at 4..=7 bits
        // within -127..=127 (INT8); mid-tread at <= 4 bits fit INT4.
        let wp1 = model.plan().require_weight("fc1").unwrap();
        let formats: Vec<_> = (0..6).map(|c| wp1.format_of_channel(c)).collect();
        let nibbles = formats.iter().all(|f| match f.grid() {
            crate::fixed::Grid::MidRise => f.bits() <= 3,
            crate::fixed::Grid::MidTread => f.bits() <= 4,
        });
        assert!(formats.iter().all(|f| f.bits() <= 7), "{formats:?}");
        let want = if nibbles { dt::INT4 } else { dt::INT8 };
        assert_eq!(init("w1_quantized").data_type, want, "{formats:?}");
        assert_eq!(init("w1_quantized").dims, [6, 8]);
        assert_eq!(init("b1_quantized").data_type, dt::INT32);
        assert_eq!(init("y_zero_point").data_type, dt::INT16);
        assert_eq!(init("r_zero_point").data_type, dt::UINT8);
        // The exported weights dequantize to fixq's weights.
        let w = &model.network().weights()[0].codes;
        let fixq_w = w.dequantize();
        let t = init("w1_quantized");
        let codes: Vec<i64> = if nibbles {
            t.raw
                .iter()
                .flat_map(|&b| [i64::from(b & 0xf), i64::from(b >> 4)])
                .map(|c| if c > 7 { c - 16 } else { c })
                .collect()
        } else {
            t.raw.iter().map(|&b| i64::from(b as i8)).collect()
        };
        let s = init("w1_scale");
        let scales: Vec<f32> = s
            .raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for (k, &v) in fixq_w.iter().enumerate() {
            let scale = if scales.len() == 1 {
                scales[0]
            } else {
                scales[k / 8]
            };
            assert_eq!(codes[k] as f32 * scale, v, "weight {k}");
        }
    }

    #[test]
    fn an_op_the_export_cannot_write_names_node_and_op() {
        let model = small_model();
        let mut x = Exporter {
            graph: model.graph(),
            net: model.network(),
            nodes: Vec::new(),
            inits: Vec::new(),
            read_as: HashMap::from([("x".to_string(), "x".to_string())]),
            points: HashSet::new(),
            opset: QDQ_BASE_OPSET,
        };
        let node = Node {
            name: "sm".into(),
            op: Op::Softmax {
                axis: 1,
                coerce_2d: false,
            },
            inputs: vec!["x".into()],
            output: "p".into(),
        };
        let e = x.node(&node).unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported(m) if m.contains("node 'sm' (Softmax)")),
            "{e}"
        );
    }

    #[test]
    fn raw_integers_are_little_endian_in_their_width() {
        assert_eq!(raw_ints(dt::INT16, &[-2, 258]), [0xfe, 0xff, 0x02, 0x01]);
        assert_eq!(raw_ints(dt::INT32, &[-1]), [0xff; 4]);
        assert_eq!(raw_ints(dt::UINT8, &[200]), [200]);
        assert_eq!(raw_ints(dt::INT4, &[-1, 2]), [0x2f]);
        assert_eq!(weight_container(-7, 7).map(|c| c.0), Some(dt::INT4));
        assert_eq!(weight_container(-9, 7).map(|c| c.0), Some(dt::INT8));
        assert_eq!(weight_container(-255, 255).map(|c| c.0), Some(dt::INT16));
        assert_eq!(pow2_f32(-3), 8.0);
        assert_eq!(pow2_f32(100), 2f32.powi(-100));
    }
}
