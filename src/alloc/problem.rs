//! The validated problem in flat arrays: per layer, its Pareto-efficient widths (the *staircase*) and
//! which of them lie on the lower convex hull of `(cost, noise)`.

use super::{LayerSpec, Span, layer_noise};

/// Flat per-layer data. Staircase point `j` of layer `i` is at offset `start[i] + j`; its cost is
/// `cpb[i] * bits`, its noise strictly decreases with `j` and its cost strictly increases (a layer with
/// `cpb == 0` keeps only its least noisy width).
pub(crate) struct Problem {
    /// Model bits per bit of width.
    pub cpb: Vec<u64>,
    /// Offsets into the point arrays, `n + 1` entries.
    pub start: Vec<usize>,
    /// Width of each point, in bits.
    pub bits: Vec<u8>,
    /// Noise power of each point (canonical, [`layer_noise`]).
    pub noise: Vec<f64>,
    /// Bit `j` set if staircase point `j` of the layer is a vertex of its lower convex hull.
    pub hull: Vec<u64>,
    /// Smallest and largest increment key, and the number of hull increments.
    pub key_range: Option<(u64, u64)>,
    /// Number of hull increments in all.
    pub increments: usize,
    /// Layers with more than one staircase point.
    pub free_layers: usize,
}

impl Problem {
    pub(crate) fn build(layers: &[LayerSpec], spans: &[Span]) -> Problem {
        let n = layers.len();
        let width_hint: usize = spans
            .iter()
            .take(64)
            .map(|s| (s.hi - s.lo + 1) as usize)
            .sum();
        let cap = width_hint.saturating_mul(n) / spans.len().clamp(1, 64);
        let mut pb = Problem {
            cpb: Vec::with_capacity(n),
            start: Vec::with_capacity(n + 1),
            bits: Vec::with_capacity(cap),
            noise: Vec::with_capacity(cap),
            hull: Vec::with_capacity(n),
            key_range: None,
            increments: 0,
            free_layers: 0,
        };
        pb.start.push(0);
        let (mut kmin, mut kmax) = (u64::MAX, 0u64);
        for (layer, span) in layers.iter().zip(spans) {
            let first = pb.noise.len();
            if span.cpb == 0 {
                let mut best = (span.lo, layer_noise(layer, span.lo));
                for b in span.lo + 1..=span.hi {
                    let eta = layer_noise(layer, b);
                    if eta < best.1 {
                        best = (b, eta);
                    }
                }
                pb.bits.push(best.0 as u8);
                pb.noise.push(best.1);
            } else {
                let mut last = f64::INFINITY;
                for b in span.lo..=span.hi {
                    let eta = layer_noise(layer, b);
                    if eta < last {
                        pb.bits.push(b as u8);
                        pb.noise.push(eta);
                        last = eta;
                    }
                }
            }
            let len = pb.noise.len() - first;
            pb.hull
                .push(lower_hull(&pb.bits[first..], &pb.noise[first..]));
            pb.cpb.push(span.cpb);
            pb.start.push(pb.noise.len());
            if len > 1 {
                pb.free_layers += 1;
            }
        }
        for i in 0..n {
            pb.for_each_increment(i, |_, _, _, key, _, _| {
                kmin = kmin.min(key);
                kmax = kmax.max(key);
                true
            });
        }
        pb.increments = (0..n)
            .map(|i| pb.hull[i].count_ones().saturating_sub(1) as usize)
            .sum();
        if pb.increments > 0 {
            pb.key_range = Some((kmin, kmax));
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

    /// Calls `f(k, from, to, key, d_noise, d_cost)` for the hull increments of layer `i` in order,
    /// `k = 0, 1, ..`, from staircase point `from` to `to`, while `f` returns `true`. `key` is the bit
    /// pattern of the efficiency `d_noise / d_cost` (positive, so the patterns order like the values),
    /// made non-increasing along the layer so that taking increments by decreasing key takes a prefix.
    #[inline]
    pub(crate) fn for_each_increment(
        &self,
        i: usize,
        mut f: impl FnMut(usize, usize, usize, u64, f64, u64) -> bool,
    ) {
        let mut mask = self.hull[i];
        if mask == 0 {
            return;
        }
        let base = self.start[i];
        let cpb = self.cpb[i];
        let mut from = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let mut prev_key = u64::MAX;
        let mut k = 0;
        while mask != 0 {
            let to = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let d_noise = self.noise[base + from] - self.noise[base + to];
            let d_cost = cpb * u64::from(self.bits[base + to] - self.bits[base + from]);
            let key = (d_noise / d_cost as f64).to_bits().min(prev_key);
            prev_key = key;
            if !f(k, from, to, key, d_noise, d_cost) {
                return;
            }
            from = to;
            k += 1;
        }
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
    let mut stack = [0usize; 64];
    let mut top = 0;
    for j in 0..bits.len() {
        while top >= 2 {
            let (a, b) = (stack[top - 2], stack[top - 1]);
            let (xa, xb, xc) = (f64::from(bits[a]), f64::from(bits[b]), f64::from(bits[j]));
            // b stays only if it lies strictly below the chord a-c.
            let cross = (xb - xa) * (noise[j] - noise[a]) - (noise[b] - noise[a]) * (xc - xa);
            if cross > 0.0 {
                break;
            }
            top -= 1;
        }
        stack[top] = j;
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
