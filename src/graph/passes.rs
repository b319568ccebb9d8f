//! Graph passes: rewrites of a validated graph into an equivalent one.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};

use super::{Graph, Node, Op};
use crate::error::{Error, Result};

impl Graph {
    /// Folds every BatchNormalization that directly follows a Conv or Gemm (whose output it alone
    /// reads, with weights and bias not shared) into that layer, and returns the equivalent graph.
    ///
    /// With s_c = scale_c/√(var_c + ε) per output channel c: W'_c = s_c·W_c and
    /// b'_c = s_c·(b_c − mean_c) + bias_c (for Gemm, b is its β·C). A BatchNormalization that cannot be
    /// folded stays a node ([`Op::BatchNormalization`]); the float executor runs it.
    ///
    /// In the same way, a `Mul` or `Div` by a constant, or an `Add` or `Sub` of a constant, that
    /// follows such a layer is folded into it where the constant is a scalar or one value per output
    /// channel (shape `[C, 1, 1]`, `[1, C, 1, 1]`, … for Conv; `[C]` or `[1, C]` for Gemm):
    /// W'_c = s_c·W_c, b'_c = s_c·b_c + t_c with (s, t) = (k, 0), (1/k, 0), (1, k) or (1, −k). The
    /// result is the same function (up to float rounding); a `Div` by a constant holding 0, or a
    /// constant minus the layer (`k − x`), is left as a node.
    ///
    /// # Errors
    /// `ShapeMismatch` when a foldable BatchNormalization's parameters do not have one value per output
    /// channel of the layer; the errors of [`Graph::new`] for the rewritten graph (none for a graph
    /// that was valid).
    pub fn fold_batch_norms(self) -> Result<Graph> {
        let Graph {
            input,
            output,
            mut nodes,
            initializers,
        } = self;
        let mut inits: HashMap<String, ArrayD<f32>> = initializers.into_iter().collect();
        let mut i = 0;
        while i < nodes.len() {
            if fold_one(&mut nodes, &mut inits, i, &output.name)?
                || fold_constant_affine(&mut nodes, &mut inits, i, &output.name)?
            {
                nodes.remove(i);
            } else {
                i += 1;
            }
        }
        // Keep only the initializers a node still reads (folded BN parameters are dropped).
        let mut read: Vec<(String, ArrayD<f32>)> = Vec::new();
        for n in &nodes {
            for name in &n.inputs {
                if let Some(a) = inits.remove(name) {
                    read.push((name.clone(), a));
                }
            }
        }
        Graph::new(input, output.name, nodes, read)
    }
}

/// How many node inputs (and the graph output) read `name`.
fn readers(nodes: &[Node], name: &str, graph_output: &str) -> usize {
    nodes
        .iter()
        .flat_map(|n| &n.inputs)
        .filter(|i| *i == name)
        .count()
        + usize::from(name == graph_output)
}

/// Folds node `i` into its producer if it is a foldable BatchNormalization; true if it did.
fn fold_one(
    nodes: &mut [Node],
    inits: &mut HashMap<String, ArrayD<f32>>,
    i: usize,
    graph_output: &str,
) -> Result<bool> {
    let bn = &nodes[i];
    let Op::BatchNormalization { epsilon } = bn.op else {
        return Ok(false);
    };
    let mut params: Vec<Vec<f64>> = Vec::with_capacity(4);
    for name in &bn.inputs[1..] {
        match inits.get(name) {
            Some(a) if a.ndim() == 1 => params.push(a.iter().map(|&v| f64::from(v)).collect()),
            _ => return Ok(false),
        }
    }
    let x = bn.inputs[0].clone();
    let Some((idx, channels, _, bias)) = foldable_producer(nodes, inits, i, &x, graph_output)
    else {
        return Ok(false);
    };
    if params.iter().any(|p| p.len() != channels) {
        return Err(Error::ShapeMismatch {
            what: format!("node '{}' (BatchNormalization)", bn.name),
            expected: format!("scale, bias, mean and var of length {channels}"),
            found: format!("{:?}", params.iter().map(Vec::len).collect::<Vec<_>>()),
        });
    }
    let [gamma, beta, mean, var] = [&params[0], &params[1], &params[2], &params[3]];
    let eps = f64::from(epsilon);
    let scale: Vec<f64> = gamma
        .iter()
        .zip(var)
        .map(|(g, v)| g / (v + eps).sqrt())
        .collect();
    let shift: Vec<f64> = (0..channels)
        .map(|c| beta[c] - scale[c] * mean[c])
        .collect();
    let out = bn.output.clone();
    apply_affine(nodes, inits, idx, &bias, &scale, &shift, out)?;
    Ok(true)
}

/// Rewrites layer `idx` (a Conv or Gemm with `channels` outputs and effective bias `bias`) to
/// compute s_c·(its output) + t_c, producing `output`: W'_c = s_c·W_c, b'_c = s_c·b_c + t_c.
fn apply_affine(
    nodes: &mut [Node],
    inits: &mut HashMap<String, ArrayD<f32>>,
    idx: usize,
    bias: &[f64],
    scale: &[f64],
    shift: &[f64],
    output: String,
) -> Result<()> {
    let channels = bias.len();
    let folded: Vec<f32> = (0..channels)
        .map(|c| (scale[c] * bias[c] + shift[c]) as f32)
        .collect();
    let bias_name = match nodes[idx].inputs.get(2) {
        Some(b) => b.clone(),
        None => fresh_name(nodes, inits, &format!("{}.bias", nodes[idx].name)),
    };
    let producer = &mut nodes[idx];
    if let Some(w) = inits.get_mut(&producer.inputs[1]) {
        if let Op::Gemm { trans_b: false, .. } = producer.op {
            // [in, out]: scale the columns.
            for mut row in w.outer_iter_mut() {
                row.iter_mut()
                    .zip(scale)
                    .for_each(|(v, s)| *v = (f64::from(*v) * s) as f32);
            }
        } else {
            for (mut out_ch, s) in w.outer_iter_mut().zip(scale) {
                out_ch
                    .iter_mut()
                    .for_each(|v| *v = (f64::from(*v) * s) as f32);
            }
        }
    }
    if producer.inputs.len() < 3 {
        producer.inputs.push(bias_name.clone());
    }
    if let Op::Gemm { beta, .. } = &mut producer.op {
        *beta = 1.0;
    }
    let array = ArrayD::from_shape_vec(IxDyn(&[channels]), folded).map_err(Error::from)?;
    inits.insert(bias_name, array);
    producer.output = output;
    Ok(())
}

/// The producer of node `i`'s data input `x` when it is a Conv or Gemm that may be rewritten: `x`
/// has no other reader, its weights are a constant and neither they nor its bias are shared.
/// Returns (index, output channels, output rank, effective bias per channel).
fn foldable_producer(
    nodes: &[Node],
    inits: &HashMap<String, ArrayD<f32>>,
    i: usize,
    x: &str,
    graph_output: &str,
) -> Option<(usize, usize, usize, Vec<f64>)> {
    let idx = nodes[..i].iter().rposition(|n| n.output == x)?;
    if readers(nodes, x, graph_output) != 1 {
        return None;
    }
    let producer = &nodes[idx];
    let weights = producer.inputs.get(1).and_then(|w| inits.get(w));
    let (channels, rank) = match (&producer.op, weights) {
        (Op::Conv { .. }, Some(w)) if w.ndim() == 4 => (w.shape()[0], 4),
        (Op::Gemm { trans_b, .. }, Some(w)) if w.ndim() == 2 => {
            (w.shape()[usize::from(!*trans_b)], 2)
        }
        _ => return None,
    };
    if producer.inputs[1..]
        .iter()
        .any(|n| readers(nodes, n, graph_output) != 1)
    {
        return None;
    }
    let bias = match producer.inputs.get(2).map(|b| inits.get(b)) {
        None => vec![0f64; channels],
        Some(Some(b)) if b.len() == 1 || b.len() == channels => {
            let factor = match producer.op {
                Op::Gemm { beta, .. } => f64::from(beta),
                _ => 1.0,
            };
            let b: Vec<f64> = b.iter().map(|&v| factor * f64::from(v)).collect();
            (0..channels).map(|c| b[c.min(b.len() - 1)]).collect()
        }
        Some(_) => return None,
    };
    Some((idx, channels, rank, bias))
}

/// One value per output channel of a layer with `channels` outputs and output rank `rank`, if the
/// constant `k` broadcasts along the channel axis (1) only: a scalar, or `channels` values whose
/// right-aligned position is axis 1, every other dimension 1.
fn per_channel(k: &ArrayD<f32>, channels: usize, rank: usize) -> Option<Vec<f64>> {
    if k.ndim() > rank {
        return None;
    }
    let values: Vec<f64> = k.iter().map(|&v| f64::from(v)).collect();
    if values.len() == 1 {
        return Some(vec![values[0]; channels]);
    }
    let lead = rank - k.ndim();
    let along_channels = k
        .shape()
        .iter()
        .enumerate()
        .all(|(j, &d)| if lead + j == 1 { d == channels } else { d == 1 });
    (along_channels && values.len() == channels).then_some(values)
}

/// Folds node `i` into its producer if it is an Add, Sub, Mul or Div of a per-channel constant
/// after a foldable Conv or Gemm; true if it did.
fn fold_constant_affine(
    nodes: &mut [Node],
    inits: &mut HashMap<String, ArrayD<f32>>,
    i: usize,
    graph_output: &str,
) -> Result<bool> {
    use super::Binary;
    let node = &nodes[i];
    if node.inputs.len() != 2 {
        return Ok(false);
    }
    // (activation input, constant input): the constant may come first where the op commutes.
    let (x, k) = match (inits.get(&node.inputs[0]), inits.get(&node.inputs[1])) {
        (None, Some(k)) => (node.inputs[0].clone(), k),
        (Some(k), None) if matches!(node.op, Op::Add | Op::Binary(Binary::Mul)) => {
            (node.inputs[1].clone(), k)
        }
        _ => return Ok(false),
    };
    if !matches!(
        node.op,
        Op::Add | Op::Binary(Binary::Sub | Binary::Mul | Binary::Div)
    ) {
        return Ok(false);
    }
    let Some((idx, channels, rank, bias)) = foldable_producer(nodes, inits, i, &x, graph_output)
    else {
        return Ok(false);
    };
    let Some(k) = per_channel(k, channels, rank) else {
        return Ok(false);
    };
    let (scale, shift): (Vec<f64>, Vec<f64>) = match node.op {
        Op::Binary(Binary::Mul) => (k, vec![0.0; channels]),
        Op::Binary(Binary::Div) if k.iter().all(|&v| v != 0.0 && v.is_finite()) => {
            (k.iter().map(|v| 1.0 / v).collect(), vec![0.0; channels])
        }
        Op::Add => (vec![1.0; channels], k),
        Op::Binary(Binary::Sub) => (vec![1.0; channels], k.iter().map(|v| -v).collect()),
        _ => return Ok(false),
    };
    let out = node.output.clone();
    apply_affine(nodes, inits, idx, &bias, &scale, &shift, out)?;
    Ok(true)
}

/// `base`, or `base` with underscores appended, naming no tensor of the graph.
fn fresh_name(nodes: &[Node], inits: &HashMap<String, ArrayD<f32>>, base: &str) -> String {
    let taken = |n: &str| {
        inits.contains_key(n)
            || nodes
                .iter()
                .any(|m| m.output == n || m.inputs.iter().any(|i| i == n))
    };
    let mut name = base.to_string();
    while taken(&name) {
        name.push('_');
    }
    name
}
