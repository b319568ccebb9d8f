//! The scalar reference: the executable specification every fast kernel is tested against.
//!
//! Plain loops over NCHW / OIHW, a 64-bit accumulator, and the requantization of the module docs
//! (equations 1–3) written with 128-bit intermediates so that no step can overflow.

use ndarray::ArrayView4;

use super::packed::Geom;
use crate::fixed::Storage;

/// Requantizes an accumulator: shift right by `shift` (round to nearest, ties toward +∞) or left by
/// −`shift` (exact), then clamp to [`lo`, `hi`].
///
/// y = clamp(⌊(acc + 2^(s−1)) / 2^s⌋, lo, hi) for s > 0; y = clamp(acc·2^(−s), lo, hi) for s ≤ 0.
/// Valid for |acc| < 2⁶² and any `shift`.
///
/// # Example
/// ```
/// use fixq::kernels::reference::requantize;
/// assert_eq!(requantize(5, 1, -128, 127), 3); // 2.5 rounds up
/// assert_eq!(requantize(-5, 1, -128, 127), -2); // -2.5 rounds toward +inf
/// assert_eq!(requantize(3, -2, -8, 7), 7); // 12 saturates to a 4-bit format
/// ```
pub fn requantize(acc: i64, shift: i32, lo: i64, hi: i64) -> i64 {
    requantize_wide(i128::from(acc), shift, lo, hi)
}

/// [`requantize`] for |v| < 2⁸⁶ (used by [`super::add`] and the pools).
pub(crate) fn requantize_wide(v: i128, shift: i32, lo: i64, hi: i64) -> i64 {
    debug_assert!(v.unsigned_abs() < 1u128 << 86);
    let v = if shift > 0 {
        let s = shift.min(100) as u32;
        (v + (1i128 << (s - 1))) >> s
    } else {
        // Beyond 40 bits every non-zero value saturates anyway (outputs are below 2^41).
        v << (-shift).min(40) as u32
    };
    v.clamp(i128::from(lo), i128::from(hi)) as i64
}

/// ⌊v·2^−s⌉ with ties to even, for s ≥ 1: the unbiased rounding of the element-wise paths
/// ([`super::add`], the average pools, and the network's Requant/Concat steps), whose shifts are
/// small enough that ties are frequent (a 1-bit shift makes every odd value a tie, and round half
/// up would move their mean by half a step).
///
/// y = ⌊v/2^s⌋ + 1 if r > 2^(s−1), or r = 2^(s−1) and ⌊v/2^s⌋ is odd; else ⌊v/2^s⌋, where
/// r = v − 2^s·⌊v/2^s⌋.
pub(crate) fn shift_right_even(v: i128, s: u32) -> i128 {
    debug_assert!((1..127).contains(&s));
    let q = v >> s;
    let r = v - (q << s);
    let half = 1i128 << (s - 1);
    q + i128::from(r > half || (r == half && q & 1 == 1))
}

/// As [`requantize_wide`], a right shift rounding ties to even ([`shift_right_even`]).
pub(crate) fn requantize_even_wide(v: i128, shift: i32, lo: i64, hi: i64) -> i64 {
    debug_assert!(v.unsigned_abs() < 1u128 << 86);
    let v = if shift > 0 {
        shift_right_even(v, shift.min(100) as u32)
    } else {
        v << (-shift).min(40) as u32
    };
    v.clamp(i128::from(lo), i128::from(hi)) as i64
}

/// Direct convolution: NCHW codes `x`, OIHW effective weight codes `w`, per-channel bias codes and
/// shifts, output NCHW into `out` (len N·C_out·OH·OW).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d<A: Storage, O: Storage>(
    g: &Geom,
    x: ArrayView4<'_, A>,
    w: &[i64],
    bias: &[i64],
    shift: &[i32],
    (lo, hi): (i64, i64),
    (oh, ow): (usize, usize),
    out: &mut [O],
) {
    let (n, h, wd) = (x.shape()[0], x.shape()[2], x.shape()[3]);
    let (cig, cog) = (g.cig(), g.cog());
    let mut i = 0;
    for b in 0..n {
        for o in 0..g.c_out {
            let grp = o / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[o];
                    for ic in 0..cig {
                        let c = grp * cig + ic;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let y =
                                    (oy * g.stride[0] + ky * g.dil[0]) as isize - g.pad[0] as isize;
                                let xx =
                                    (ox * g.stride[1] + kx * g.dil[1]) as isize - g.pad[1] as isize;
                                if y < 0 || xx < 0 || y >= h as isize || xx >= wd as isize {
                                    continue;
                                }
                                let wv = w[((o * cig + ic) * g.kh + ky) * g.kw + kx];
                                acc += x[[b, c, y as usize, xx as usize]].to_code() * wv;
                            }
                        }
                    }
                    out[i] = O::from_code(requantize(acc, shift[o], lo, hi));
                    i += 1;
                }
            }
        }
    }
}
