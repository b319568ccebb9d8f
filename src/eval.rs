//! Measuring a plan on real data: top-1 accuracy, measured output SQNR against the float graph, and
//! per-tensor measured SQNR next to the predictions.
//!
//! The measured SQNR of an activation compares the fixed-point network's (dequantized) tensor with the
//! float graph's at the same point, so it holds all the noise accumulated up to there; the matching
//! prediction is Eq. 9 summed over the terms upstream of it ([`TensorReport::predicted_cumulative_db`]).

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{Array4, ArrayD, Axis, s};

use crate::error::{Error, Result};
use crate::exec::{FixedNetwork, FloatExecutor};
use crate::graph::Graph;
use crate::io::idx;
use crate::plan::{self, QuantPlan};
use crate::sqnr;

/// Images (NCHW, already scaled) and their labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `[N, C, H, W]` inputs.
    pub images: Array4<f32>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Reads an IDX image file `[N, H, W]` (plain or gzip) and its labels, scaling pixels by `scale`
    /// (1/255 for MNIST, 1/16 for scikit-learn's digits) into `[N, 1, H, W]`. `limit` keeps the first
    /// images only.
    ///
    /// # Errors
    /// The readers' errors; [`Error::ShapeMismatch`] if the counts differ; [`Error::Empty`] for no images.
    pub fn from_idx(
        images: impl AsRef<Path>,
        labels: impl AsRef<Path>,
        scale: f32,
        limit: Option<usize>,
    ) -> Result<Self> {
        let imgs = idx::read_images(images)?;
        let labels = idx::read_labels(labels)?;
        if imgs.shape()[0] != labels.len() {
            return Err(Error::ShapeMismatch {
                what: "IDX images and labels".into(),
                expected: format!("{} labels", imgs.shape()[0]),
                found: format!("{}", labels.len()),
            });
        }
        let n = limit.unwrap_or(usize::MAX).min(labels.len());
        if n == 0 {
            return Err(Error::Empty { what: "dataset" });
        }
        let (h, w) = (imgs.shape()[1], imgs.shape()[2]);
        let images = imgs
            .slice(s![..n, .., ..])
            .mapv(|v| f32::from(v) * scale)
            .into_shape_with_order((n, 1, h, w))
            .map_err(|e| Error::ShapeMismatch {
                what: "images".into(),
                expected: format!("[{n}, 1, {h}, {w}]"),
                found: e.to_string(),
            })?;
        Ok(Self {
            images,
            labels: labels.iter().take(n).copied().collect(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Batches of at most `batch` images, as dynamic-rank views.
    pub fn batches(&self, batch: usize) -> impl Iterator<Item = ndarray::ArrayViewD<'_, f32>> {
        self.images
            .axis_chunks_iter(Axis(0), batch.max(1))
            .map(|b| b.into_dyn())
    }
}

/// Top-1 accuracy of `[N, classes]` logits against labels, in 0..=1.
///
/// # Errors
/// [`Error::ShapeMismatch`] if the shapes disagree.
pub fn accuracy(logits: &ArrayD<f32>, labels: &[u8]) -> Result<f64> {
    let l = logits
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| Error::ShapeMismatch {
            what: "logits".into(),
            expected: "[N, classes]".into(),
            found: format!("{:?}", logits.shape()),
        })?;
    if l.nrows() != labels.len() || labels.is_empty() {
        return Err(Error::ShapeMismatch {
            what: "logits vs labels".into(),
            expected: format!("{} rows", labels.len()),
            found: format!("{}", l.nrows()),
        });
    }
    let correct = l
        .outer_iter()
        .zip(labels)
        .filter(|(row, y)| {
            let mut best = 0;
            for (k, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = k;
                }
            }
            best == usize::from(**y)
        })
        .count();
    Ok(correct as f64 / labels.len() as f64)
}

/// Measured against predicted SQNR of one quantized tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorReport {
    /// Tensor (activation) or node (weights) name.
    pub name: String,
    /// `"weights"` or `"activation"`.
    pub kind: &'static str,
    /// Width in bits (the mean width for per-channel weights).
    pub bits: f64,
    /// This tensor's own predicted term in Eq. 9, dB.
    pub predicted_db: f64,
    /// Eq. 9 over every term up to and including this tensor (activations only; equals
    /// `predicted_db` for weights), dB.
    pub predicted_cumulative_db: f64,
    /// Measured: for weights, the quantized tensor against the float one; for activations, the
    /// fixed-point network's tensor against the float graph's (all upstream noise included), dB.
    pub measured_db: f64,
    /// Output SQNR of the float graph with **only this tensor** quantized at its planned format(s),
    /// on the probe images, dB: this term's measured contribution to Eq. 9 at the operating point.
    pub alone_output_db: f64,
}

/// The result of evaluating one plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Top-1 accuracy of the fixed-point network, 0..=1.
    pub accuracy: f64,
    /// Total weight bits.
    pub model_bits: u64,
    /// Average weight bits per parameter.
    pub avg_bits: f64,
    /// Eq. 9 prediction of the output SQNR, dB.
    pub predicted_output_sqnr_db: f64,
    /// Measured output SQNR (fixed logits against float logits), dB.
    pub measured_output_sqnr_db: f64,
    /// Eq. 9 over the terms measured one at a time at the plan's formats
    /// ([`TensorReport::alone_output_db`]): 1/SQNR = Σ 1/SQNR_alone. Compared with
    /// `measured_output_sqnr_db` it tests the additivity Eq. 9 assumes, free of the noise-gain model, dB.
    pub operating_point_output_sqnr_db: f64,
    /// Per-tensor figures, weights first, then activations in graph order.
    pub tensors: Vec<TensorReport>,
}

/// Float reference outputs of a dataset, computed once and reused across plans.
#[derive(Debug, Clone)]
pub struct FloatReference {
    /// Logits `[N, classes]`.
    pub logits: ArrayD<f32>,
    /// Activation-point tensors of the first `probe` images, by name (for per-layer measurements).
    pub probe: BTreeMap<String, ArrayD<f32>>,
    /// Number of images in the probe.
    pub probe_images: usize,
    /// Float top-1 accuracy.
    pub accuracy: f64,
}

/// Runs the float graph over `data` (batches of `batch`), keeping the activation points of the first
/// `probe_images` images.
///
/// # Errors
/// The executor's errors.
pub fn float_reference(
    graph: &Graph,
    data: &Dataset,
    batch: usize,
    probe_images: usize,
) -> Result<FloatReference> {
    let exec = FloatExecutor::new(graph);
    let points: Vec<String> = plan::activation_points(graph)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let mut outs = Vec::new();
    let mut probe = BTreeMap::new();
    let probe_images = probe_images.min(data.len()).max(1);
    let p = data.images.slice(s![..probe_images, .., .., ..]).into_dyn();
    probe.insert(graph.input().name.clone(), p.to_owned());
    exec.run_with(p.view(), |name, _, act| {
        if points.iter().any(|t| t == name) {
            probe.insert(name.to_string(), act.to_owned());
        }
    })?;
    for b in data.batches(batch) {
        outs.push(exec.run(b)?);
    }
    let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
    let logits = ndarray::concatenate(Axis(0), &views).map_err(|e| Error::ShapeMismatch {
        what: "float outputs".into(),
        expected: "equal trailing shapes".into(),
        found: e.to_string(),
    })?;
    let accuracy = accuracy(&logits, &data.labels)?;
    Ok(FloatReference {
        logits,
        probe,
        probe_images,
        accuracy,
    })
}

/// Builds the fixed-point network for `plan`, runs it over `data` and measures it against `reference`.
///
/// # Errors
/// [`FixedNetwork::new`]'s errors; shape errors if `reference` is of another dataset.
pub fn evaluate(
    graph: &Graph,
    plan: &QuantPlan,
    data: &Dataset,
    reference: &FloatReference,
    batch: usize,
) -> Result<Evaluation> {
    evaluate_inner(graph, None, plan, data, reference, batch)
}

/// As [`evaluate`], for a plan whose weights were put on the grid by its own rounding
/// ([`plan::rounded_graph`]): the network runs `rounded`'s weights and biases, and each weight
/// tensor and each term is measured against `graph`'s float weights.
///
/// # Errors
/// As [`evaluate`]; [`Error::InvalidArgument`] if `rounded` does not have `graph`'s layers.
pub fn evaluate_rounded(
    graph: &Graph,
    rounded: &Graph,
    plan: &QuantPlan,
    data: &Dataset,
    reference: &FloatReference,
    batch: usize,
) -> Result<Evaluation> {
    evaluate_inner(graph, Some(rounded), plan, data, reference, batch)
}

/// The rounded layers of `rounded` relative to `graph`'s: the weights and the bias change.
fn rounded_layers(
    layers: &[plan::LayerWeights],
    rounded: &Graph,
) -> Result<Vec<crate::rounding::RoundedLayer>> {
    let other = plan::layer_weights(rounded)?;
    let (found, want) = (other.len(), layers.len());
    let mismatch = || Error::InvalidArgument {
        name: "rounded",
        reason: format!(
            "the rounded graph's {found} weighted layers are not the graph's {want} (same nodes, shapes and biases)"
        ),
    };
    if other.len() != layers.len() {
        return Err(mismatch());
    }
    layers
        .iter()
        .zip(other)
        .map(|(lw, lr)| {
            if lw.node != lr.node
                || lw.matrix.dim() != lr.matrix.dim()
                || lw.bias.len() != lr.bias.len()
            {
                return Err(mismatch());
            }
            let delta: Vec<f32> = lr.bias.iter().zip(&lw.bias).map(|(a, b)| a - b).collect();
            Ok(crate::rounding::RoundedLayer {
                matrix: lr.matrix,
                bias_delta: delta.iter().any(|&d| d != 0.0).then_some(delta),
            })
        })
        .collect()
}

fn evaluate_inner(
    graph: &Graph,
    rounded: Option<&Graph>,
    plan: &QuantPlan,
    data: &Dataset,
    reference: &FloatReference,
    batch: usize,
) -> Result<Evaluation> {
    let net = FixedNetwork::new(rounded.unwrap_or(graph), plan)?;
    let mut outs = Vec::new();
    for b in data.batches(batch) {
        outs.push(net.run(b)?);
    }
    let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
    let logits = ndarray::concatenate(Axis(0), &views).map_err(|e| Error::ShapeMismatch {
        what: "fixed outputs".into(),
        expected: "equal trailing shapes".into(),
        found: e.to_string(),
    })?;
    let accuracy = accuracy(&logits, &data.labels)?;
    let measured_output_sqnr_db =
        sqnr::measure_db(as_slice(&reference.logits)?, as_slice(&logits)?)?;
    let layers = plan::layer_weights(graph)?;
    let mut tensors = weight_reports(&net, plan, &layers)?;
    // Activations: run the probe images through the fixed network and compare at every point.
    let probe_in =
        reference
            .probe
            .get(&graph.input().name)
            .ok_or_else(|| Error::InvalidArgument {
                name: "reference",
                reason: "no probe input".into(),
            })?;
    let measured = probe_sqnr_db(&net, reference, probe_in)?;
    // Eq. 9 cumulative: weights of layers up to the point plus activations up to the point.
    let points = plan::activation_points(graph);
    let mut upstream: Vec<f64> = Vec::new();
    for (tensor, producer) in &points {
        let a = plan
            .activation(tensor)
            .ok_or_else(|| Error::InvalidArgument {
                name: "plan",
                reason: format!("no format for '{tensor}'"),
            })?;
        let mut terms: Vec<f64> = layers
            .iter()
            .filter(|l| producer.is_some_and(|k| l.node_index <= k))
            .filter_map(|l| plan.weight(&l.node).map(|w| w.predicted_sqnr_db))
            .collect();
        upstream.push(a.predicted_sqnr_db);
        terms.extend(upstream.iter().copied());
        tensors.push(TensorReport {
            name: tensor.clone(),
            kind: "activation",
            bits: f64::from(a.format.bits()),
            predicted_db: a.predicted_sqnr_db,
            predicted_cumulative_db: sqnr::network_db(&terms)?,
            measured_db: measured
                .get(tensor)
                .copied()
                .ok_or_else(|| Error::InvalidArgument {
                    name: "network",
                    reason: format!(
                        "activation '{tensor}' was not observed in the fixed-point network"
                    ),
                })?,
            alone_output_db: f64::NAN,
        });
    }
    let rounded_layers = rounded.map(|r| rounded_layers(&layers, r)).transpose()?;
    let alone = plan::measure_terms_rounded(
        graph,
        plan,
        probe_in.view(),
        plan::Sensitivity::Forward,
        rounded_layers.as_deref(),
    )?;
    for t in tensors.iter_mut() {
        let weights = t.kind == "weights";
        if let Some(m) = alone
            .iter()
            .find(|m| m.name == t.name && m.weights == weights)
        {
            t.alone_output_db = m.output_db;
        }
    }
    let dbs: Vec<f64> = alone.iter().map(|m| m.output_db).collect();
    let operating_point_output_sqnr_db = sqnr::network_db(&dbs)?;
    Ok(Evaluation {
        accuracy,
        model_bits: plan.model_bits(),
        avg_bits: plan.avg_bits_per_param(),
        predicted_output_sqnr_db: plan.predicted_output_sqnr_db(),
        measured_output_sqnr_db,
        operating_point_output_sqnr_db,
        tensors,
    })
}

/// Each weight tensor's codes measured against its float weights.
fn weight_reports(
    net: &FixedNetwork,
    plan: &QuantPlan,
    layers: &[plan::LayerWeights],
) -> Result<Vec<TensorReport>> {
    let mut tensors = Vec::new();
    for (wc, lw) in net.weights().iter().zip(layers) {
        let wp = plan.require_weight(&lw.node)?;
        let float = plan::matrix_to_shape(&lw.matrix, &lw.shape)?;
        let measured = sqnr::measure_db(as_slice(&float)?, as_slice(&wc.codes.dequantize())?)?;
        tensors.push(TensorReport {
            name: lw.node.clone(),
            kind: "weights",
            bits: wp.model_bits() as f64 / wp.params.max(1) as f64,
            predicted_db: wp.predicted_sqnr_db,
            predicted_cumulative_db: wp.predicted_sqnr_db,
            measured_db: measured,
            alone_output_db: f64::NAN,
        });
    }
    Ok(tensors)
}

/// The fixed network's SQNR at every activation point on the probe images, against the float probe.
fn probe_sqnr_db(
    net: &FixedNetwork,
    reference: &FloatReference,
    probe_in: &ArrayD<f32>,
) -> Result<BTreeMap<String, f64>> {
    let mut measured: BTreeMap<String, f64> = BTreeMap::new();
    let mut failure = None;
    net.run_with(probe_in.view(), |name, act| {
        if let Some(f) = reference.probe.get(name) {
            match (f.as_slice(), act.as_slice()) {
                (Some(a), Some(b)) if a.len() == b.len() => match sqnr::measure_db(a, b) {
                    Ok(db) => {
                        measured.insert(name.to_string(), db);
                    }
                    Err(e) => failure = Some(e),
                },
                _ => {}
            }
        }
    })?;
    match failure {
        // A dead activation (all zeros in float) has no SQNR; report it rather than hide it.
        Some(e) => Err(e),
        None => Ok(measured),
    }
}

fn as_slice(a: &ArrayD<f32>) -> Result<&[f32]> {
    a.as_slice().ok_or_else(|| Error::InvalidArgument {
        name: "tensor",
        reason: "not contiguous".into(),
    })
}
