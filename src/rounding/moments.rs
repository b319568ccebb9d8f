//! Second moments of every weighted layer's input over the calibration images: the Gram matrix
//! `G = Σ x xᵀ` and the sum `Σ x` of the input samples `x` (one per output position, as
//! [`crate::exec::layer_input_samples`] cuts them), per channel group.

use std::collections::BTreeMap;

use ndarray::ArrayViewD;

use crate::error::{Error, Result};
use crate::graph::{Graph, Op};

/// Largest fan-in (weights per output channel) whose Gram matrix is collected: 8,192 inputs make a
/// 512 MiB f64 matrix. Wider layers are rounded to nearest (see [`super`]).
pub const MAX_FAN_IN: usize = 8192;

/// Which convolution output positions feed the moments: per image, at least 64 and at least half
/// the fan-in (all of them where there are fewer), every s-th position from an offset that moves
/// with the samples already seen. A 3×3 layer with 16 input channels at 32×32 keeps 72 of 1,024
/// positions per image, so 500 images give 240 samples per input of its fan-in; the Gram matrix
/// then costs 14× less (measured effect on the plans: `docs/reproduction.md`, "Planning time").
const POSITIONS: crate::exec::PositionSampling = crate::exec::PositionSampling {
    min_per_image: 64,
    per_fan_in: 0.5,
    offset: 0,
};

/// Moments of one channel group's input samples.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupMoments {
    /// `Σ x xᵀ`, `fan_in × fan_in`, row-major (symmetric).
    pub gram: Vec<f64>,
    /// `Σ x`.
    pub sum: Vec<f64>,
    /// Number of samples.
    pub samples: u64,
}

impl GroupMoments {
    fn new(k: usize) -> Self {
        Self {
            gram: vec![0.0; k * k],
            sum: vec![0.0; k],
            samples: 0,
        }
    }

    /// Adds `rows` samples (`x` row-major `[rows, k]`).
    fn push(&mut self, x: &[f32], rows: usize, k: usize) {
        for r in x.chunks_exact(k).take(rows) {
            for (s, &v) in self.sum.iter_mut().zip(r) {
                *s += f64::from(v);
            }
        }
        self.samples += rows as u64;
        gram_add(&mut self.gram, x, rows, k);
    }

    fn merge(&mut self, o: &GroupMoments) {
        for (a, b) in self.gram.iter_mut().zip(&o.gram) {
            *a += b;
        }
        for (a, b) in self.sum.iter_mut().zip(&o.sum) {
            *a += b;
        }
        self.samples += o.samples;
    }

    /// The mean sample `Σ x / n` (zeros when there was none).
    pub fn mean(&self) -> Vec<f64> {
        let n = self.samples.max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }
}

/// `g += xᵀx` for `x` row-major `[rows, k]`: the portable reference.
#[cfg_attr(all(feature = "gptq", not(test)), allow(dead_code))]
pub(crate) fn gram_add_reference(g: &mut [f64], x: &[f32], rows: usize, k: usize) {
    for r in x.chunks_exact(k).take(rows) {
        for (i, &a) in r.iter().enumerate() {
            if a == 0.0 {
                continue;
            }
            let a = f64::from(a);
            for (gij, &b) in g[i * k..(i + 1) * k].iter_mut().zip(r) {
                *gij += a * f64::from(b);
            }
        }
    }
}

/// `g += xᵀx`, through faer's matrix product in blocks of rows.
#[cfg(feature = "gptq")]
fn gram_add(g: &mut [f64], x: &[f32], rows: usize, k: usize) {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, MatMut, MatRef, Par};
    const BLOCK: usize = 2048;
    let mut buf = vec![0f64; BLOCK.min(rows) * k];
    let mut gm = MatMut::from_row_major_slice_mut(g, k, k);
    for chunk in x[..rows * k].chunks(BLOCK * k) {
        let r = chunk.len() / k;
        for (d, &s) in buf.iter_mut().zip(chunk) {
            *d = f64::from(s);
        }
        let xm = MatRef::from_row_major_slice(&buf[..r * k], r, k);
        matmul(gm.as_mut(), Accum::Add, xm.transpose(), xm, 1.0, Par::Seq);
    }
}

#[cfg(not(feature = "gptq"))]
fn gram_add(g: &mut [f64], x: &[f32], rows: usize, k: usize) {
    gram_add_reference(g, x, rows, k);
}

/// `e_r G e_rᵀ` for each of the `rows` rows of `e` (row-major `[rows, k]`), `G` symmetric `k × k`.
#[cfg(feature = "gptq")]
pub(crate) fn quadratic_forms(e: &[f64], rows: usize, k: usize, g: &[f64]) -> Vec<f64> {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, Mat, MatRef, Par};
    if rows == 0 {
        return Vec::new();
    }
    let em = MatRef::from_row_major_slice(&e[..rows * k], rows, k);
    let gm = MatRef::from_row_major_slice(g, k, k);
    let mut t = Mat::<f64>::zeros(rows, k);
    matmul(t.as_mut(), Accum::Replace, em, gm, 1.0, Par::Seq);
    (0..rows)
        .map(|r| (0..k).map(|j| t[(r, j)] * e[r * k + j]).sum())
        .collect()
}

/// The portable definition of [`quadratic_forms`].
#[cfg_attr(all(feature = "gptq", not(test)), allow(dead_code))]
pub(crate) fn quadratic_forms_reference(e: &[f64], rows: usize, k: usize, g: &[f64]) -> Vec<f64> {
    e.chunks_exact(k)
        .take(rows)
        .map(|er| {
            let mut s = 0f64;
            for (i, &ei) in er.iter().enumerate() {
                let gi = &g[i * k..(i + 1) * k];
                s += ei * gi.iter().zip(er).map(|(a, b)| a * b).sum::<f64>();
            }
            s
        })
        .collect()
}

#[cfg(not(feature = "gptq"))]
pub(crate) fn quadratic_forms(e: &[f64], rows: usize, k: usize, g: &[f64]) -> Vec<f64> {
    quadratic_forms_reference(e, rows, k, g)
}

/// The input moments of one weighted layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerMoments {
    op: Op,
    w_shape: Vec<usize>,
    /// Weights per output channel.
    pub fan_in: usize,
    /// Output channels per group.
    pub rows_per_group: usize,
    /// One per channel group (Conv `groups`; 1 for dense layers).
    pub groups: Vec<GroupMoments>,
}

/// Input moments of every weighted layer of a graph (Conv, Gemm, MatMul with constant weights and
/// fan-in ≤ [`MAX_FAN_IN`]), accumulated batch by batch and mergeable. [`crate::calib::Calibration`]
/// collects them when asked to (`Calibration::with_layer_inputs`); error-compensating rounding and
/// bias correction ([`crate::plan::PlanConfig::rounding`]) read them.
///
/// Memory: `8·fan_in²` bytes per channel group (ResNet-8: 7.6 MiB in all).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InputMoments {
    /// By node name.
    layers: BTreeMap<String, LayerMoments>,
    /// Tensor name → the nodes (names) that take it as their data input.
    consumers: BTreeMap<String, Vec<String>>,
}

impl InputMoments {
    /// Empty moments for every weighted layer of `graph`.
    ///
    /// # Errors
    /// None today (a layer whose weights are not an initializer is skipped: it cannot be rounded).
    pub fn for_graph(graph: &Graph) -> Result<Self> {
        let mut m = Self::default();
        for node in graph.nodes() {
            let weighted = matches!(
                node.op,
                Op::Conv { .. } | Op::Gemm { trans_a: false, .. } | Op::MatMul
            );
            let Some(w) = node.inputs.get(1).and_then(|n| graph.initializer(n)) else {
                continue;
            };
            if !weighted || w.ndim() < 2 {
                continue;
            }
            let shape = w.shape().to_vec();
            let (groups, fan_in, rows) = match node.op {
                Op::Conv { groups, .. } => {
                    let fan: usize = shape[1..].iter().product();
                    (groups.max(1), fan, shape[0] / groups.max(1))
                }
                Op::Gemm { trans_b: true, .. } => (1, shape[1], shape[0]),
                _ if shape.len() == 2 => (1, shape[0], shape[1]),
                _ => continue,
            };
            if fan_in == 0 || fan_in > MAX_FAN_IN {
                continue;
            }
            m.layers.insert(
                node.name.clone(),
                LayerMoments {
                    op: node.op.clone(),
                    w_shape: shape,
                    fan_in,
                    rows_per_group: rows,
                    groups: (0..groups).map(|_| GroupMoments::new(fan_in)).collect(),
                },
            );
            m.consumers
                .entry(node.inputs[0].clone())
                .or_default()
                .push(node.name.clone());
        }
        Ok(m)
    }

    /// Adds the value of tensor `name` (a batch) to the moments of every layer that reads it.
    /// Tensors no weighted layer reads are ignored.
    ///
    /// # Errors
    /// Shape errors if the value does not fit a layer's weights.
    pub fn push(&mut self, name: &str, value: &ArrayViewD<'_, f32>) -> Result<()> {
        let Some(nodes) = self.consumers.get(name) else {
            return Ok(());
        };
        for node in nodes {
            let Some(lm) = self.layers.get_mut(node) else {
                continue;
            };
            let k = lm.fan_in;
            let sampling = crate::exec::PositionSampling {
                offset: lm.groups.first().map_or(0, |g| g.samples as usize),
                ..POSITIONS
            };
            let groups = &mut lm.groups;
            crate::exec::layer_input_samples(&lm.op, value, &lm.w_shape, sampling, |g, x, rows| {
                if let Some(gm) = groups.get_mut(g) {
                    gm.push(x, rows, k);
                }
            })
            .map_err(|e| match e {
                Error::ShapeMismatch {
                    what,
                    expected,
                    found,
                } => Error::ShapeMismatch {
                    what: format!("{what} (node '{node}')"),
                    expected,
                    found,
                },
                other => other,
            })?;
        }
        Ok(())
    }

    /// Merges the moments of other images of the same graph.
    pub fn merge(&mut self, other: &InputMoments) {
        for (name, o) in &other.layers {
            match self.layers.get_mut(name) {
                Some(l) if l.fan_in == o.fan_in && l.groups.len() == o.groups.len() => {
                    for (a, b) in l.groups.iter_mut().zip(&o.groups) {
                        a.merge(b);
                    }
                }
                Some(_) => {}
                None => {
                    self.layers.insert(name.clone(), o.clone());
                    for (t, c) in &other.consumers {
                        if c.contains(name) {
                            self.consumers
                                .entry(t.clone())
                                .or_default()
                                .push(name.clone());
                        }
                    }
                }
            }
        }
    }

    /// The moments of the layer `node`, if collected.
    pub(crate) fn layer(&self, node: &str) -> Option<&LayerMoments> {
        self.layers.get(node)
    }

    /// Input samples seen by layer `node` (per group: images × output positions), if collected.
    pub fn samples(&self, node: &str) -> Option<u64> {
        self.layers
            .get(node)
            .and_then(|l| l.groups.first())
            .map(|g| g.samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_product_matches_the_reference() {
        let (rows, k) = (5000, 37);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i as f32) * 0.618).sin() * if i % 7 == 0 { 0.0 } else { 1.5 })
            .collect();
        let mut a = vec![0f64; k * k];
        let mut b = vec![0f64; k * k];
        gram_add(&mut a, &x, rows, k);
        gram_add_reference(&mut b, &x, rows, k);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!(
                (p - q).abs() <= 1e-9 * (1.0 + q.abs()),
                "entry {i}: {p} vs {q}"
            );
        }
        let e: Vec<f64> = (0..3 * k).map(|i| ((i as f64) * 0.3).cos()).collect();
        let (f, r) = (
            quadratic_forms(&e, 3, k, &b),
            quadratic_forms_reference(&e, 3, k, &b),
        );
        for (p, q) in f.iter().zip(&r) {
            assert!((p - q).abs() <= 1e-9 * q.abs(), "{p} vs {q}");
            assert!(*q > 0.0);
        }
        // Symmetric, positive diagonal.
        assert_eq!(b[k + 2], b[2 * k + 1]);
        assert!((0..k).all(|i| b[i * k + i] > 0.0));
    }
}
