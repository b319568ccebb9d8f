//! The validated problem in flat arrays: per layer, its Pareto-efficient widths (the *staircase*) and
//! which of them lie on the lower convex hull of `(cost, noise)`.

use super::{LayerSpec, Span, SqnrCurve, noise_from_db};

/// Flat per-layer data. Staircase point `j` of layer `i` is at offset `start[i] + j`; its cost is
/// `cpb[i] * bits`, its noise strictly decreases with `j` and its cost strictly increases (a layer with
/// `cpb == 0` keeps only its least noisy width).
///
/// Hull increment `t` of layer `i` (from hull vertex `t` to vertex `t + 1`) is at offset
/// `inc_start[i] + t` of `inc_key` and `inc_weight`, when those are built.
pub(crate) struct Problem {
    /// Model bits per bit of width.
    pub cpb: Vec<u64>,
    /// Offsets into the point arrays, `n + 1` entries.
    pub start: Vec<usize>,
    /// Width of each point, in bits.
    pub bits: Vec<u8>,
    /// Noise power of each point (canonical, as [`super::layer_noise`]).
    pub noise: Vec<f64>,
    /// Bit `j` set if staircase point `j` of the layer is a vertex of its lower convex hull.
    pub hull: Vec<u64>,
    /// Offsets into the increment arrays, `n + 1` entries (empty if increments were not built).
    pub inc_start: Vec<usize>,
    /// Sort key of each hull increment: the `f32` bit pattern of its efficiency (noise removed per
    /// model bit), made non-increasing along each layer. Positive floats order like their patterns.
    pub inc_key: Vec<u32>,
    /// Weight of each hull increment for the selection: noise removed, or model bits added.
    pub inc_weight: Vec<f32>,
    /// Layers with more than one staircase point.
    pub free_layers: usize,
}

impl Problem {
    /// Builds the staircases and hulls; with `increments = Some(by_noise)` also the increment keys and
    /// weights (noise removed if `by_noise`, else model bits added).
    pub(crate) fn build(layers: &[LayerSpec], spans: &[Span], increments: Option<bool>) -> Problem {
        let n = layers.len();
        let points: usize = spans.iter().map(|s| (s.hi - s.lo + 1) as usize).sum();
        let mut pb = Problem {
            cpb: Vec::with_capacity(n),
            start: Vec::with_capacity(n + 1),
            bits: Vec::with_capacity(points),
            noise: Vec::with_capacity(points),
            hull: Vec::with_capacity(n),
            inc_start: Vec::with_capacity(if increments.is_some() { n + 1 } else { 0 }),
            inc_key: Vec::with_capacity(if increments.is_some() { points } else { 0 }),
            inc_weight: Vec::with_capacity(if increments.is_some() { points } else { 0 }),
            free_layers: 0,
        };
        pb.start.push(0);
        if increments.is_some() {
            pb.inc_start.push(0);
        }
        let mut db = [0.0f64; 64];
        let mut eta = [0.0f64; 64];
        for (layer, span) in layers.iter().zip(spans) {
            let w = (span.hi - span.lo + 1) as usize;
            match layer.curve() {
                SqnrCurve::Table { min_bits, sqnr_db } => {
                    let from = (span.lo - min_bits) as usize;
                    db[..w].copy_from_slice(&sqnr_db[from..from + w]);
                }
                SqnrCurve::Linear { .. } => {
                    for (t, v) in db[..w].iter_mut().enumerate() {
                        *v = layer.curve().sqnr_db(span.lo + t as u32).unwrap_or(0.0);
                    }
                }
            }
            // Independent conversions: no loop-carried dependency, so they pipeline and vectorize.
            for (e, &d) in eta[..w].iter_mut().zip(&db[..w]) {
                *e = noise_from_db(d);
            }
            let first = pb.noise.len();
            if span.cpb == 0 {
                let mut best = 0;
                for t in 1..w {
                    if eta[t] < eta[best] {
                        best = t;
                    }
                }
                pb.bits.push((span.lo + best as u32) as u8);
                pb.noise.push(eta[best]);
            } else {
                let mut last = f64::INFINITY;
                for (t, &e) in eta[..w].iter().enumerate() {
                    if e < last {
                        pb.bits.push((span.lo + t as u32) as u8);
                        pb.noise.push(e);
                        last = e;
                    }
                }
            }
            let len = pb.noise.len() - first;
            let mask = lower_hull(&pb.bits[first..], &pb.noise[first..]);
            pb.hull.push(mask);
            pb.cpb.push(span.cpb);
            pb.start.push(pb.noise.len());
            if len > 1 {
                pb.free_layers += 1;
            }
            if let Some(by_noise) = increments {
                let mut prev_key = u32::MAX;
                let mut m = mask;
                let mut from = m.trailing_zeros() as usize;
                m &= m.wrapping_sub(1);
                while m != 0 {
                    let to = m.trailing_zeros() as usize;
                    m &= m - 1;
                    let d_noise = pb.noise[first + from] - pb.noise[first + to];
                    let d_cost = span.cpb * u64::from(pb.bits[first + to] - pb.bits[first + from]);
                    let key = ((d_noise / d_cost as f64) as f32).to_bits().min(prev_key);
                    prev_key = key;
                    pb.inc_key.push(key);
                    pb.inc_weight.push(if by_noise {
                        d_noise as f32
                    } else {
                        d_cost as f32
                    });
                    from = to;
                }
                pb.inc_start.push(pb.inc_key.len());
            }
        }
        pb
    }

    /// Number of layers.
    pub(crate) fn len(&self) -> usize {
        self.cpb.len()
    }

    /// Number of staircase points of layer `i`.
    #[inline]
    pub(crate) fn points(&self, i: usize) -> usize {
        self.start[i + 1] - self.start[i]
    }

    /// Cost in model bits of staircase point `j` of layer `i`.
    #[inline]
    pub(crate) fn cost(&self, i: usize, j: usize) -> u64 {
        self.cpb[i] * u64::from(self.bits[self.start[i] + j])
    }

    /// Noise of staircase point `j` of layer `i`.
    #[inline]
    pub(crate) fn noise_at(&self, i: usize, j: usize) -> f64 {
        self.noise[self.start[i] + j]
    }

    /// The staircase indices of the hull vertices of layer `i`, and their number.
    #[inline]
    pub(crate) fn hull_vertices(&self, i: usize) -> ([u8; 64], usize) {
        let mut out = [0u8; 64];
        let mut m = self.hull[i];
        let mut len = 0;
        while m != 0 {
            out[len] = m.trailing_zeros() as u8;
            m &= m - 1;
            len += 1;
        }
        (out, len)
    }

    /// Number of hull vertices of layer `i` strictly before staircase point `j`: the index of the
    /// increment that starts at `j` when `j` is a vertex.
    #[inline]
    pub(crate) fn vertex_rank(&self, i: usize, j: usize) -> usize {
        (self.hull[i] & ((1u64 << j) - 1)).count_ones() as usize
    }

    /// Canonical `(model bits, noise)` of a choice of staircase points (noise summed in layer order).
    pub(crate) fn evaluate(&self, pos: &[u8]) -> (u64, f64) {
        let mut cost: u64 = 0;
        let mut noise = 0.0;
        for (i, &j) in pos.iter().enumerate() {
            cost = cost.saturating_add(self.cost(i, j as usize));
            noise += self.noise_at(i, j as usize);
        }
        (cost, noise)
    }

    /// Bit-widths of a choice of staircase points.
    pub(crate) fn widths(&self, pos: &[u8]) -> Vec<u32> {
        pos.iter()
            .enumerate()
            .map(|(i, &j)| u32::from(self.bits[self.start[i] + j as usize]))
            .collect()
    }

    /// Noise powers of a choice of staircase points.
    pub(crate) fn noises(&self, pos: &[u8]) -> Vec<f64> {
        pos.iter()
            .enumerate()
            .map(|(i, &j)| self.noise_at(i, j as usize))
            .collect()
    }

    /// The cheapest point of every layer.
    pub(crate) fn first_positions(&self) -> Vec<u8> {
        vec![0; self.len()]
    }

    /// The least noisy point of every layer.
    pub(crate) fn last_positions(&self) -> Vec<u8> {
        (0..self.len())
            .map(|i| (self.points(i) - 1) as u8)
            .collect()
    }
}

/// Mask of the vertices of the lower convex hull of `(bits[j], noise[j])`, `bits` increasing and `noise`
/// decreasing. Collinear middle points are not vertices.
fn lower_hull(bits: &[u8], noise: &[f64]) -> u64 {
    let mut stack = [0u8; 64];
    let mut top = 0;
    for j in 0..bits.len() {
        while top >= 2 {
            let (a, b) = (stack[top - 2] as usize, stack[top - 1] as usize);
            let (xa, xb, xc) = (f64::from(bits[a]), f64::from(bits[b]), f64::from(bits[j]));
            // b stays only if it lies strictly below the chord a-c.
            let cross = (xb - xa) * (noise[j] - noise[a]) - (noise[b] - noise[a]) * (xc - xa);
            if cross > 0.0 {
                break;
            }
            top -= 1;
        }
        stack[top] = j as u8;
        top += 1;
    }
    stack[..top].iter().fold(0u64, |m, &j| m | (1u64 << j))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_drops_points_above_chords() {
        // Convex: all kept.
        assert_eq!(lower_hull(&[1, 2, 3], &[1.0, 0.5, 0.3]), 0b111);
        // Middle point above the chord: dropped.
        assert_eq!(lower_hull(&[1, 2, 3], &[1.0, 0.8, 0.1]), 0b101);
        // Collinear: dropped.
        assert_eq!(lower_hull(&[1, 2, 3], &[1.0, 0.5, 0.0]), 0b101);
        assert_eq!(lower_hull(&[4], &[1.0]), 0b1);
    }
}
