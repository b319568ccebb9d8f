//! The `.fixq` model file: a [`QuantizedModel`] in one self-contained, versioned, checksummed file
//! that loads and runs without the float model and without optional features.
//!
//! The file holds the graph's topology (input, output, every node with its op and attributes), every
//! float constant the nodes read other than the weights (biases exactly, as `f32` bits), the whole
//! [`QuantPlan`](crate::quant_plan::QuantPlan) with its predicted figures, the weight codes
//! bit-packed at their widths ([`crate::pack`]'s encoding), and the [`Report`](crate::Report).
//! `docs/format.md` gives the byte layout section by section.
//!
//! # Bit-exact reload
//! [`QuantizedModel::load`] rebuilds the [`FixedNetwork`] from the file's graph and plan with the
//! stored codes given as [`WeightCodes`] (through [`FixedNetwork::with_options`]), so no weight is
//! quantized again; the biases are the graph's float biases, stored bit for bit, so the network
//! quantizes them to the same accumulator codes as the original did. The loaded network's outputs
//! are therefore bit-identical to the original's, and saving a loaded model writes the same bytes.
//! (The float weights are not in the file: inside a loaded model the weight initializers hold the
//! codes' values, which only their shapes are read from. Nor is each code tensor's count of weights
//! clipped at quantization, [`QTensor::saturated`](crate::QTensor::saturated): loaded codes count 0.)
//!
//! # Ops
//! Every [`Op`] has an encoding, so any graph's topology round-trips; a model
//! exists only for a graph the fixed-point network runs, and a file whose graph it does not run
//! (only a hand-made one) is refused at load with the network's reason.
//!
//! # What loading refuses
//! Every failure is [`Error::Malformed`] naming the byte offset: a wrong magic, an unknown version, a
//! file shorter or longer than its header says (truncation), a checksum mismatch (checked before any
//! section is parsed), a missing or misplaced section, a length beyond the bytes left, an invalid
//! value (tag, flag, format, UTF-8), bytes left over in a section, or a graph, plan and codes that do
//! not make a network. Every length is checked against the bytes that remain before anything is
//! allocated for it.
//!
//! # Example
//! ```
//! use fixq::graph::{Graph, Node, Op, TensorInfo};
//! use fixq::{quantize, Budget, QuantizeOptions, QuantizedModel};
//! use ndarray::{Array2, ArrayD, IxDyn};
//!
//! let w = Array2::from_shape_fn((8, 16), |(o, i)| ((o * 16 + i) as f32 * 0.37).sin()).into_dyn();
//! let b = ArrayD::from_elem(IxDyn(&[8]), 0.1f32);
//! let input = TensorInfo { name: "x".into(), shape: vec![None, Some(16)] };
//! let fc = Node {
//!     name: "fc".into(),
//!     op: Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true },
//!     inputs: vec!["x".into(), "w".into(), "b".into()],
//!     output: "y".into(),
//! };
//! let graph = Graph::new(input, "y", vec![fc], vec![("w".into(), w), ("b".into(), b)])?;
//! let images = Array2::from_shape_fn((64, 16), |(n, i)| ((n * 16 + i) as f32 * 0.91).cos()).into_dyn();
//! let model = quantize(&graph, images.view(), Budget::AvgBitsPerParam(4.0), &QuantizeOptions::default())?;
//!
//! let bytes = model.to_bytes()?;
//! let loaded = QuantizedModel::from_bytes(&bytes)?;
//! assert_eq!(loaded.run(images.view())?, model.run(images.view())?);
//! assert_eq!(loaded.plan(), model.plan());
//! assert_eq!(loaded.to_bytes()?, bytes);
//! // Corrupt one byte: the checksum catches it.
//! let mut bad = bytes.clone();
//! bad[30] ^= 1;
//! assert!(matches!(QuantizedModel::from_bytes(&bad), Err(fixq::Error::Malformed { .. })));
//! # Ok::<(), fixq::Error>(())
//! ```

mod figures;
mod topology;
mod wire;

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::ArrayD;

use self::wire::{FORMAT, Reader, Writer};
use crate::error::{Error, Result};
use crate::exec::FixedNetwork;
use crate::graph::{Graph, Op};
use crate::kernels::KernelChoice;
use crate::pack::{self, WeightCodes};
use crate::quantize::QuantizedModel;

/// The file's first 8 bytes.
pub const MAGIC: &[u8; 8] = b"FIXQMODL";
/// The format version this crate writes and the only one it reads.
pub const VERSION: u32 = 1;
/// Header bytes: magic, version (u32), file length (u64).
const HEADER_BYTES: usize = 20;
/// A section's header: tag (4 ASCII bytes), body length (u64).
const SECTION_HEADER_BYTES: usize = 12;
/// The checksum at the end: CRC-32 (IEEE) of every byte before it.
const CHECKSUM_BYTES: usize = 4;

/// The sections, in the only order a file holds them.
const SECTIONS: [(&[u8; 4], &str); 5] = [
    (b"GRPH", "graph section"),
    (b"CNST", "constants section"),
    (b"PLAN", "plan section"),
    (b"CODE", "weight codes section"),
    (b"REPT", "report section"),
];

/// Bytes of a file beyond its sections' bodies: header, five section headers and the checksum
/// (84 bytes).
pub const FIXED_OVERHEAD_BYTES: usize =
    HEADER_BYTES + SECTIONS.len() * SECTION_HEADER_BYTES + CHECKSUM_BYTES;

impl QuantizedModel {
    /// The model as a `.fixq` file's bytes (layout: `docs/format.md`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a model the format cannot hold: a weight code wider than 8
    /// bits (as [`pack::to_bytes`]) or a name or list longer than `u32::MAX`. Nothing is left out
    /// silently: every initializer of the graph that is not a weight held as codes is written.
    ///
    /// # Example
    /// See the [module docs](crate::model_file).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut w = Writer::default();
        w.bytes.extend_from_slice(MAGIC);
        w.u32(VERSION);
        w.u64(0); // the file length, filled in below
        let graph = self.graph();
        let codes = pack::to_bytes(self.network().weights())?;
        for (tag, _) in SECTIONS {
            w.bytes.extend_from_slice(tag);
            let len_at = w.bytes.len();
            w.u64(0);
            let start = w.bytes.len();
            match tag {
                b"GRPH" => topology::write_graph(&mut w, graph)?,
                b"CNST" => topology::write_constants(&mut w, graph)?,
                b"PLAN" => figures::write_plan(&mut w, self.plan())?,
                b"CODE" => w.bytes.extend_from_slice(&codes),
                _ => figures::write_report(&mut w, self.report(), self.plan())?,
            }
            let len = (w.bytes.len() - start) as u64;
            w.bytes[len_at..len_at + 8].copy_from_slice(&len.to_le_bytes());
        }
        let total = (w.bytes.len() + CHECKSUM_BYTES) as u64;
        w.bytes[12..20].copy_from_slice(&total.to_le_bytes());
        let crc = crc32fast::hash(&w.bytes);
        w.u32(crc);
        Ok(w.bytes)
    }

    /// Reads a model from a `.fixq` file's bytes and rebuilds its fixed-point network, whose outputs
    /// are bit-identical to those of the model that was saved (see the [module docs](crate::model_file)).
    ///
    /// # Errors
    /// [`Error::Malformed`] with the byte offset and what was wrong, for anything but a file
    /// [`QuantizedModel::to_bytes`] writes (the [module docs](crate::model_file) list the checks);
    /// never panics, and never allocates more than the input can fill.
    ///
    /// # Example
    /// ```
    /// use fixq::QuantizedModel;
    /// match QuantizedModel::from_bytes(b"FIXQMODL\x02\x00\x00\x00") {
    ///     Err(fixq::Error::Malformed { offset, reason, .. }) => {
    ///         assert_eq!(offset, 8);
    ///         assert_eq!(reason, "header: version 2 is not supported (this fixq reads version 1)");
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<QuantizedModel> {
        let sections = split_sections(bytes)?;
        let [graph_s, const_s, plan_s, code_s, report_s] = sections;
        let mut r = Reader::new(bytes, graph_s.0, graph_s.1, SECTIONS[0].1);
        let topo = topology::read_graph(&mut r)?;
        r.finish()?;
        let mut r = Reader::new(bytes, const_s.0, const_s.1, SECTIONS[1].1);
        let constants = topology::read_constants(&mut r, &topo.nodes)?;
        r.finish()?;
        let mut r = Reader::new(bytes, plan_s.0, plan_s.1, SECTIONS[2].1);
        let plan = figures::read_plan(&mut r)?;
        r.finish()?;
        let codes = pack::from_bytes(&bytes[code_s.0..code_s.1]).map_err(|e| match e {
            Error::Malformed { offset, reason, .. } => Error::Malformed {
                format: FORMAT,
                offset: offset.saturating_add(code_s.0 as u64),
                reason: format!("{}: packed weights: {reason}", SECTIONS[3].1),
            },
            other => other,
        })?;
        let mut r = Reader::new(bytes, report_s.0, report_s.1, SECTIONS[4].1);
        let report = figures::read_report(&mut r, &plan)?;
        r.finish()?;

        let at = |offset: usize, what: String| Error::Malformed {
            format: FORMAT,
            offset: offset as u64,
            reason: what,
        };
        let initializers = weights_from_codes(&topo.nodes, constants, &codes)
            .map_err(|e| at(code_s.0, format!("{}: {e}", SECTIONS[3].1)))?;
        for wc in &codes {
            let planned = plan.weight(&wc.node).map(|wp| &wp.formats[..]);
            if planned != Some(wc.codes.formats()) {
                return Err(at(
                    code_s.0,
                    format!(
                        "{}: the formats of node '{}' differ from the plan's",
                        SECTIONS[3].1, wc.node
                    ),
                ));
            }
        }
        let graph = Graph::new(topo.input, topo.output, topo.nodes, initializers).map_err(|e| {
            at(
                graph_s.0,
                format!("{}: the graph does not validate: {e}", SECTIONS[0].1),
            )
        })?;
        let network = FixedNetwork::with_options(&graph, &plan, Some(codes), KernelChoice::Auto)
            .map_err(|e| {
                at(
                    graph_s.0,
                    format!("the fixed-point network cannot be built from the file: {e}"),
                )
            })?;
        Ok(QuantizedModel::from_parts(graph, plan, network, report))
    }

    /// Writes the model to `path` as a `.fixq` file ([`QuantizedModel::to_bytes`]), atomically: the
    /// bytes go to a new temporary file beside `path`, which is synced and renamed over it, so a
    /// reader sees the old file or the new one, never a part; on error an existing file is left as
    /// it was.
    ///
    /// # Errors
    /// As [`QuantizedModel::to_bytes`] (before anything is written); [`Error::Io`] naming the path.
    ///
    /// # Example
    /// ```
    /// # use fixq::graph::{Graph, Node, Op, TensorInfo};
    /// # use fixq::{quantize, Budget, QuantizeOptions, QuantizedModel};
    /// # use ndarray::{Array2, Array4, ArrayD, IxDyn};
    /// // A 3x3 convolution with 4 output channels, then ReLU, over 1x6x6 images.
    /// let w = Array4::from_shape_fn((4, 1, 3, 3), |(o, _, i, j)| ((o * 9 + i * 3 + j) as f32 * 0.7).sin()).into_dyn();
    /// let b = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.1f32, -0.2, 0.05, 0.0])?;
    /// let input = TensorInfo { name: "x".into(), shape: vec![None, Some(1), Some(6), Some(6)] };
    /// let conv = Node {
    ///     name: "conv".into(),
    ///     op: Op::Conv { stride: [1, 1], pad: [1, 1, 1, 1], dilation: [1, 1], groups: 1 },
    ///     inputs: vec!["x".into(), "w".into(), "b".into()],
    ///     output: "h".into(),
    /// };
    /// let relu = Node { name: "relu".into(), op: Op::Relu, inputs: vec!["h".into()], output: "y".into() };
    /// let graph = Graph::new(input, "y", vec![conv, relu], vec![("w".into(), w), ("b".into(), b)])?;
    /// let images = ArrayD::from_shape_fn(IxDyn(&[32, 1, 6, 6]), |d| ((d[0] * 36 + d[2] * 6 + d[3]) as f32 * 0.43).cos());
    /// let model = quantize(&graph, images.view(), Budget::AvgBitsPerParam(5.0), &QuantizeOptions::default())?;
    ///
    /// let path = std::env::temp_dir().join(format!("fixq-doc-{}.fixq", std::process::id()));
    /// model.save(&path)?;
    /// let loaded = QuantizedModel::load(&path)?;
    /// assert_eq!(loaded.run(images.view())?, model.run(images.view())?); // bit-identical
    /// assert_eq!(loaded.report(), model.report());
    /// # std::fs::remove_file(&path).map_err(|e| fixq::Error::Io { path: path.display().to_string(), source: e })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = self.to_bytes()?;
        crate::io::atomic::write_atomic(path.as_ref(), &bytes)
    }

    /// Reads a `.fixq` file written by [`QuantizedModel::save`] ([`QuantizedModel::from_bytes`]).
    ///
    /// # Errors
    /// [`Error::Io`] naming the path; as [`QuantizedModel::from_bytes`].
    ///
    /// # Example
    /// See [`QuantizedModel::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<QuantizedModel> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }
}

/// A `Malformed` error of the container (header, section table, checksum).
fn container_err(offset: usize, reason: String) -> Error {
    Error::Malformed {
        format: FORMAT,
        offset: offset as u64,
        reason,
    }
}

/// Checks the header, length and checksum, and returns each section's body as a byte range.
fn split_sections(bytes: &[u8]) -> Result<[(usize, usize); 5]> {
    let len = bytes.len();
    let truncated_header = |need: usize, what: &str| {
        container_err(
            len,
            format!("header: truncated: {len} bytes, {need} needed for the {what}"),
        )
    };
    if len < MAGIC.len() {
        return Err(truncated_header(MAGIC.len(), "magic"));
    }
    if &bytes[..8] != MAGIC {
        return Err(container_err(
            0,
            "header: not a fixq model file (bad magic)".into(),
        ));
    }
    if len < 12 {
        return Err(truncated_header(12, "version"));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(container_err(
            8,
            format!(
                "header: version {version} is not supported (this fixq reads version {VERSION})"
            ),
        ));
    }
    if len < HEADER_BYTES {
        return Err(truncated_header(HEADER_BYTES, "file length"));
    }
    let mut declared = [0u8; 8];
    declared.copy_from_slice(&bytes[12..20]);
    let declared = u64::from_le_bytes(declared);
    if declared < FIXED_OVERHEAD_BYTES as u64 {
        return Err(container_err(
            12,
            format!(
                "header: a file length of {declared} bytes is below the {FIXED_OVERHEAD_BYTES} \
                 bytes of header, section headers and checksum"
            ),
        ));
    }
    if (len as u64) < declared {
        return Err(container_err(
            len,
            format!("truncated: the header declares {declared} bytes, the file has {len}"),
        ));
    }
    if (len as u64) > declared {
        return Err(container_err(
            declared as usize,
            format!(
                "{} bytes after the checksum (the header declares {declared} bytes)",
                len as u64 - declared
            ),
        ));
    }
    let body_end = len - CHECKSUM_BYTES;
    let stored = u32::from_le_bytes([
        bytes[body_end],
        bytes[body_end + 1],
        bytes[body_end + 2],
        bytes[body_end + 3],
    ]);
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored != computed {
        return Err(container_err(
            body_end,
            format!(
                "checksum mismatch: the file stores CRC-32 {stored:#010x}, its bytes give \
                 {computed:#010x} (the file is corrupt)"
            ),
        ));
    }
    let mut r = Reader::new(bytes, HEADER_BYTES, body_end, "section table");
    let mut out = [(0usize, 0usize); 5];
    for (slot, (tag, name)) in out.iter_mut().zip(SECTIONS) {
        let at = r.pos();
        let found = r.take(4)?;
        if found != tag {
            return Err(r.err_at(
                at,
                format!(
                    "expected the {name} (tag {:?}), found tag {:?}",
                    String::from_utf8_lossy(tag),
                    String::from_utf8_lossy(found)
                ),
            ));
        }
        let len_at = r.pos();
        let n = r.u64()?;
        if n > r.remaining() as u64 {
            return Err(r.err_at(
                len_at,
                format!("the {name} claims {n} bytes, {} are left", r.remaining()),
            ));
        }
        let start = r.pos();
        r.take(n as usize)?;
        *slot = (start, r.pos());
    }
    if r.remaining() != 0 {
        return Err(r.err(format!(
            "{} bytes between the last section and the checksum",
            r.remaining()
        )));
    }
    Ok(out)
}

/// The graph's initializers: the constants, plus each weighted layer's weights rebuilt from its codes
/// (in the initializer's own layout; a Gemm's α divided back out) unless a constant holds them.
fn weights_from_codes(
    nodes: &[crate::graph::Node],
    mut constants: BTreeMap<String, ArrayD<f32>>,
    codes: &[WeightCodes],
) -> std::result::Result<Vec<(String, ArrayD<f32>)>, String> {
    let weighted: Vec<_> = nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul))
        .collect();
    if weighted.len() != codes.len() {
        return Err(format!(
            "{} code tensors for {} Conv/Gemm/MatMul nodes",
            codes.len(),
            weighted.len()
        ));
    }
    let mut rebuilt: BTreeMap<String, ArrayD<f32>> = BTreeMap::new();
    for (node, wc) in weighted.into_iter().zip(codes) {
        if node.name != wc.node {
            return Err(format!(
                "codes of node '{}' where node '{}' comes",
                wc.node, node.name
            ));
        }
        let Some(name) = node.inputs.get(1) else {
            return Err(format!("node '{}' has no weight input", node.name));
        };
        if constants.contains_key(name) {
            continue;
        }
        let q = wc.codes.dequantize();
        let w = match node.op {
            Op::Gemm { alpha, trans_b, .. } => {
                let w = if trans_b { q } else { q.reversed_axes() };
                if alpha != 0.0 && alpha.is_finite() {
                    w.mapv(|v| v / alpha)
                } else {
                    w
                }
            }
            Op::MatMul => q.reversed_axes(),
            _ => q,
        };
        if rebuilt.insert(name.clone(), w).is_some() {
            return Err(format!("weight '{name}' is the codes of two nodes"));
        }
    }
    constants.append(&mut rebuilt);
    Ok(constants.into_iter().collect())
}

#[cfg(test)]
mod tests;
