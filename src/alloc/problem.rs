//! The validated problem in compact arrays: per layer, masks of its Pareto-efficient widths (the
//! *staircase*) and of the vertices of their lower convex hull of `(cost, noise)`; per hull vertex, its
//! noise; per hull increment, its selection key and weight.
//!
//! Points are named by their *width offset* `t`: width `lo + t` of the layer's span. Only hull vertices
//! store their noise; any other staircase point's noise is recomputed from the curve when asked for, by
//! the same conversion, so it has the same value it had when the staircase was built.
//!
//! Building takes one pass over the layers, `O(n w)` time for `n` layers of `w` widths, with no
//! allocation per layer: 16 bytes per layer (two masks) and one offset, 8 bytes per hull vertex and 8
//! bytes per hull increment, each array allocated once with an upper bound on its length (pages past
//! the used length are never touched).

use std::cell::Cell;

use super::{LayerSpec, Span, SqnrCurve, noise_from_db};

/// Compact per-layer data (see the module docs). Hull vertex `r` of layer `i` is at offset
/// `vstart[i] + r` of `vnoise`; hull increment `r` (from vertex `r` to vertex `r + 1`) is at offset
/// `vstart[i] - i + r` of `inc_key` and `inc_weight`, when those are built.
pub(crate) struct Problem<'a> {
    layers: &'a [LayerSpec],
    spans: &'a [Span],
    /// Bit `t` set if width offset `t` is a staircase point: noise strictly decreases and cost
    /// strictly increases along the staircase (a layer with `cpb == 0` keeps only its least noisy width).
    pub stair: Vec<u64>,
    /// Bit `t` set if width offset `t` is a vertex of the lower convex hull of the staircase.
    pub hull: Vec<u64>,
    /// Offsets into `vnoise`, `n + 1` entries.
    pub vstart: Vec<usize>,
    /// Noise power of each hull vertex (canonical, as [`super::layer_noise`]).
    pub vnoise: Vec<f64>,
    /// Sort key of each hull increment: the `f32` bit pattern of its efficiency (noise removed per
    /// model bit), made non-increasing along each layer. Positive floats order like their patterns.
    /// Empty if increments were not built.
    pub inc_key: Vec<u32>,
    /// Weight of each hull increment for the selection: noise removed, or model bits added.
    pub inc_weight: Vec<f32>,
    /// Smallest and largest increment key (`(u32::MAX, 0)` if there is none).
    pub key_range: (u32, u32),
    /// Layers with more than one staircase point.
    pub free_layers: usize,
    /// Canonical `(model bits, noise)` of every layer at its cheapest staircase point.
    pub first: (u64, f64),
    /// Canonical `(model bits, noise)` of every layer at its least noisy staircase point.
    pub last: (u64, f64),
}

impl<'a> Problem<'a> {
    /// Builds the staircases and hulls; with `increments = Some(by_noise)` also the increment keys and
    /// weights (noise removed if `by_noise`, else model bits added).
    pub(crate) fn build(
        layers: &'a [LayerSpec],
        spans: &'a [Span],
        increments: Option<bool>,
    ) -> Problem<'a> {
        let n = layers.len();
        let points: usize = spans.iter().map(|s| (s.hi - s.lo + 1) as usize).sum();
        let inc_cap = if increments.is_some() { points - n } else { 0 };
        // `try_with`: no panic even while the thread's locals are being destroyed.
        let spare = SPARE
            .try_with(Cell::take)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut pb = Problem {
            layers,
            spans,
            stair: reuse(spare.stair, n),
            hull: reuse(spare.hull, n),
            vstart: reuse(spare.vstart, n + 1),
            vnoise: reuse(spare.vnoise, points),
            inc_key: reuse(spare.inc_key, inc_cap),
            inc_weight: reuse(spare.inc_weight, inc_cap),
            key_range: (u32::MAX, 0),
            free_layers: 0,
            first: (0, 0.0),
            last: (0, 0.0),
        };
        pb.vstart.push(0);
        let mut db = [0.0f64; 64];
        let mut eta = [0.0f64; 64];
        let (mut key_lo, mut key_hi) = (u32::MAX, 0u32);
        for (layer, span) in layers.iter().zip(spans) {
            let w = (span.hi - span.lo + 1) as usize;
            let db = match layer.curve() {
                SqnrCurve::Table { min_bits, sqnr_db } => {
                    let from = (span.lo - min_bits) as usize;
                    &sqnr_db[from..from + w]
                }
                SqnrCurve::Linear { .. } => {
                    for (t, v) in db[..w].iter_mut().enumerate() {
                        *v = layer.curve().sqnr_db(span.lo + t as u32).unwrap_or(0.0);
                    }
                    &db[..w]
                }
            };
            // Independent conversions: no loop-carried dependency, so they pipeline and vectorize.
            let eta = &mut eta[..w];
            for (e, &d) in eta.iter_mut().zip(db) {
                *e = noise_from_db(d);
            }
            // Staircase and lower hull in one sweep; `stack` holds the hull so far.
            let mut stack = [0u8; 64];
            let mut top = 0;
            let mut stair = 0u64;
            if span.cpb == 0 {
                let mut best = 0;
                for t in 1..w {
                    if eta[t] < eta[best] {
                        best = t;
                    }
                }
                stack[0] = best as u8;
                top = 1;
                stair = 1 << best;
            } else {
                let mut last = f64::INFINITY;
                for (t, &e) in eta.iter().enumerate() {
                    if e < last {
                        last = e;
                        stair |= 1 << t;
                        hull_push(&mut stack, &mut top, t, |j| j as f64, |j| eta[j]);
                    }
                }
            }
            let stack = &stack[..top];
            let mut hull = 0u64;
            for &t in stack {
                hull |= 1 << t;
                pb.vnoise.push(eta[t as usize]);
            }
            let (t0, t1) = (stack[0], stack[top - 1]);
            let cost = |t: u8| span.cpb * u64::from(span.lo + u32::from(t));
            pb.first.0 = pb.first.0.saturating_add(cost(t0));
            pb.first.1 += eta[t0 as usize];
            pb.last.0 = pb.last.0.saturating_add(cost(t1));
            pb.last.1 += eta[t1 as usize];
            pb.stair.push(stair);
            pb.hull.push(hull);
            pb.vstart.push(pb.vnoise.len());
            if stair.count_ones() > 1 {
                pb.free_layers += 1;
            }
            if let Some(by_noise) = increments {
                let mut prev_key = u32::MAX;
                for pair in stack.windows(2) {
                    let (from, to) = (pair[0] as usize, pair[1] as usize);
                    let d_noise = eta[from] - eta[to];
                    let d_cost = span.cpb * (to - from) as u64;
                    let key = ((d_noise / d_cost as f64) as f32).to_bits().min(prev_key);
                    prev_key = key;
                    pb.inc_key.push(key);
                    pb.inc_weight.push(if by_noise {
                        d_noise as f32
                    } else {
                        d_cost as f32
                    });
                }
                if top > 1 {
                    // Keys are non-increasing along the layer.
                    key_hi = key_hi.max(pb.inc_key[pb.inc_key.len() + 1 - top]);
                    key_lo = key_lo.min(prev_key);
                }
            }
        }
        pb.key_range = (key_lo, key_hi);
        pb
    }

    /// Number of layers.
    pub(crate) fn len(&self) -> usize {
        self.stair.len()
    }

    /// Number of staircase points of layer `i`.
    #[inline]
    pub(crate) fn points(&self, i: usize) -> usize {
        self.stair[i].count_ones() as usize
    }

    /// Model bits per bit of width of layer `i`.
    #[inline]
    pub(crate) fn cpb(&self, i: usize) -> u64 {
        self.spans[i].cpb
    }

    /// Bit-width of width offset `t` of layer `i`.
    #[inline]
    pub(crate) fn width(&self, i: usize, t: usize) -> u32 {
        self.spans[i].lo + t as u32
    }

    /// Cost in model bits of width offset `t` of layer `i`.
    #[inline]
    pub(crate) fn cost(&self, i: usize, t: usize) -> u64 {
        self.spans[i].cpb * u64::from(self.width(i, t))
    }

    /// Noise of staircase point `t` of layer `i`: stored for hull vertices, recomputed otherwise.
    #[inline]
    pub(crate) fn noise(&self, i: usize, t: usize) -> f64 {
        if self.hull[i] >> t & 1 == 1 {
            self.vnoise[self.vstart[i] + self.vertex_rank(i, t)]
        } else {
            super::layer_noise(&self.layers[i], self.width(i, t))
        }
    }

    /// Staircase points of layer `i`, cheapest first.
    #[inline]
    pub(crate) fn stair_points(&self, i: usize) -> impl Iterator<Item = usize> + use<> {
        bits_of(self.stair[i])
    }

    /// Cheapest staircase point of layer `i`.
    #[inline]
    pub(crate) fn first_point(&self, i: usize) -> u8 {
        self.stair[i].trailing_zeros() as u8
    }

    /// Least noisy staircase point of layer `i`.
    #[inline]
    pub(crate) fn last_point(&self, i: usize) -> u8 {
        (63 - self.stair[i].leading_zeros()) as u8
    }

    /// Number of hull vertices of layer `i` strictly before width offset `t`: the index of the
    /// increment that starts at `t` when `t` is a vertex.
    #[inline]
    pub(crate) fn vertex_rank(&self, i: usize, t: usize) -> usize {
        (self.hull[i] & ((1u64 << t) - 1)).count_ones() as usize
    }

    /// Number of hull vertices of layer `i`.
    #[inline]
    pub(crate) fn vertices(&self, i: usize) -> usize {
        self.vstart[i + 1] - self.vstart[i]
    }

    /// Noise of hull vertex `r` of layer `i`.
    #[inline]
    pub(crate) fn vertex_noise(&self, i: usize, r: usize) -> f64 {
        self.vnoise[self.vstart[i] + r]
    }

    /// Keys of the hull increments of layer `i`.
    #[inline]
    pub(crate) fn inc_keys(&self, i: usize) -> &[u32] {
        &self.inc_key[self.vstart[i] - i..self.vstart[i + 1] - i - 1]
    }

    /// Offset of the first hull increment of layer `i` in `inc_key` and `inc_weight`.
    #[inline]
    pub(crate) fn inc_offset(&self, i: usize) -> usize {
        self.vstart[i] - i
    }

    /// Canonical `(model bits, noise)` of a choice of staircase points (noise summed in layer order).
    pub(crate) fn evaluate(&self, pos: &[u8]) -> (u64, f64) {
        let mut cost: u64 = 0;
        let mut noise = 0.0;
        for (i, &t) in pos.iter().enumerate() {
            cost = cost.saturating_add(self.cost(i, t as usize));
            noise += self.noise(i, t as usize);
        }
        (cost, noise)
    }

    /// Bit-widths and noise powers of a choice of staircase points.
    pub(crate) fn widths_noises(&self, pos: &[u8]) -> (Vec<u32>, Vec<f64>) {
        let widths = pos
            .iter()
            .enumerate()
            .map(|(i, &t)| self.width(i, t as usize))
            .collect();
        let noises = pos
            .iter()
            .enumerate()
            .map(|(i, &t)| self.noise(i, t as usize))
            .collect();
        (widths, noises)
    }

    /// The cheapest point of every layer.
    pub(crate) fn first_positions(&self) -> Vec<u8> {
        (0..self.len()).map(|i| self.first_point(i)).collect()
    }

    /// The least noisy point of every layer.
    pub(crate) fn last_positions(&self) -> Vec<u8> {
        (0..self.len()).map(|i| self.last_point(i)).collect()
    }
}

/// The arrays of a [`Problem`], kept between solves on the same thread (see [`SPARE`]).
#[derive(Default)]
struct Buffers {
    stair: Vec<u64>,
    hull: Vec<u64>,
    vstart: Vec<usize>,
    vnoise: Vec<f64>,
    inc_key: Vec<u32>,
    inc_weight: Vec<f32>,
}

impl Buffers {
    /// Bytes held.
    fn capacity_bytes(&self) -> usize {
        8 * (self.stair.capacity()
            + self.hull.capacity()
            + self.vstart.capacity()
            + self.vnoise.capacity())
            + 4 * (self.inc_key.capacity() + self.inc_weight.capacity())
    }
}

/// Most bytes of [`Buffers`] kept for the next solve on a thread: at about 270 bytes per layer of 16
/// widths, problems up to about 250 000 such layers reuse their arrays; larger ones are freed.
const SPARE_MAX_BYTES: usize = 64 << 20;

thread_local! {
    /// The arrays of the last [`Problem`] dropped on this thread. Fresh memory costs a page fault per
    /// 4 KiB on first touch, which made up a large share of a large solve; reusing the arrays avoids it.
    static SPARE: Cell<Option<Buffers>> = const { Cell::new(None) };
}

/// `v` emptied, with room for at least `len` elements.
fn reuse<T>(mut v: Vec<T>, len: usize) -> Vec<T> {
    v.clear();
    v.reserve(len);
    v
}

impl Drop for Problem<'_> {
    fn drop(&mut self) {
        let buffers = Buffers {
            stair: std::mem::take(&mut self.stair),
            hull: std::mem::take(&mut self.hull),
            vstart: std::mem::take(&mut self.vstart),
            vnoise: std::mem::take(&mut self.vnoise),
            inc_key: std::mem::take(&mut self.inc_key),
            inc_weight: std::mem::take(&mut self.inc_weight),
        };
        if buffers.capacity_bytes() <= SPARE_MAX_BYTES {
            let _ = SPARE.try_with(|spare| spare.set(Some(buffers)));
        }
    }
}

/// The set bits of `mask`, lowest first.
#[inline]
pub(crate) fn bits_of(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let t = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(t)
    })
}

/// Width offset of hull vertex `r` (0-based) of a hull mask.
#[inline]
pub(crate) fn nth_vertex(mut mask: u64, r: usize) -> u8 {
    for _ in 0..r {
        mask &= mask.wrapping_sub(1);
    }
    mask.trailing_zeros().min(63) as u8
}

/// Adds point `j` to the lower-hull stack `stack[..top]` of points with increasing `x` and
/// decreasing `y`, first removing the points that do not lie strictly below the new chord (so collinear
/// middle points are not vertices).
#[inline(always)]
fn hull_push(
    stack: &mut [u8; 64],
    top: &mut usize,
    j: usize,
    x: impl Fn(usize) -> f64,
    y: impl Fn(usize) -> f64,
) {
    while *top >= 2 {
        let (a, b) = (stack[*top - 2] as usize, stack[*top - 1] as usize);
        let (xa, xb, xc) = (x(a), x(b), x(j));
        // b stays only if it lies strictly below the chord a-j.
        let cross = (xb - xa) * (y(j) - y(a)) - (y(b) - y(a)) * (xc - xa);
        if cross > 0.0 {
            break;
        }
        *top -= 1;
    }
    stack[*top] = j as u8;
    *top += 1;
}

/// Mask of the vertices of the lower convex hull of `(bits[j], noise[j])`, `bits` increasing and `noise`
/// decreasing. Collinear middle points are not vertices. (The reference for [`Problem::build`], which
/// runs the same steps on the staircase.)
#[cfg(test)]
fn lower_hull(bits: &[u8], noise: &[f64]) -> u64 {
    let mut stack = [0u8; 64];
    let mut top = 0;
    for j in 0..bits.len() {
        hull_push(
            &mut stack,
            &mut top,
            j,
            |j| f64::from(bits[j]),
            |j| noise[j],
        );
    }
    stack[..top].iter().fold(0u64, |m, &j| m | (1u64 << j))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::validate;

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

    #[test]
    fn build_staircase_hull_and_increments() {
        // 1..=5 bits; width 3 is noisier than width 2 (off the staircase); width 4 lies above the
        // chord from 2 to 5 (on the staircase, off the hull).
        let sqnr_db = vec![0.0, 10.0, 9.0, 11.0, 30.0];
        let layers = [LayerSpec::new(
            "t",
            10,
            SqnrCurve::Table {
                min_bits: 1,
                sqnr_db: sqnr_db.clone(),
            },
        )
        .bits_range(1..=5)];
        let spans = validate(&layers).unwrap();
        let pb = Problem::build(&layers, &spans, Some(false));
        assert_eq!(pb.stair[0], 0b11011);
        assert_eq!(pb.hull[0], 0b10011);
        assert_eq!((pb.first_point(0), pb.last_point(0)), (0, 4));
        assert_eq!(pb.inc_keys(0).len(), 2);
        assert_eq!(pb.inc_weight, [10.0, 30.0]);
        for t in [0, 1, 3, 4] {
            assert_eq!(pb.noise(0, t), noise_from_db(sqnr_db[t]));
        }
        assert_eq!(pb.first, (10, 1.0));
        assert_eq!(pb.last, (50, noise_from_db(30.0)));
        assert_eq!(pb.free_layers, 1);
    }
}
