//! AVX2 + FMA compilations of the numerics loop bodies (the portable bodies live in `dist` and
//! `fixed`; dispatch in `simd`).

use crate::dist::Part;
use crate::fixed::Storage;

#[target_feature(enable = "avx2,fma")]
fn fit_chunk_avx2_impl(xs: &[f32]) -> Option<Part> {
    crate::dist::chunk_f32(xs)
}

#[target_feature(enable = "avx2,fma")]
fn quantize_nearest_avx2_impl<T: Storage>(
    xs: &[f32],
    os: &mut [T],
    scale: f32,
    off: f32,
    lo: f32,
    hi: f32,
) -> (bool, u64) {
    crate::fixed::quantize_nearest_body(xs, os, scale, off, lo, hi)
}

/// `dist::chunk_f32` compiled for AVX2 + FMA. Callers must have checked `simd::has_avx2()`.
pub(crate) fn fit_chunk_avx2(xs: &[f32]) -> Option<Part> {
    debug_assert!(crate::simd::has_avx2());
    // SAFETY: only called from `simd::fit_chunk` after `has_avx2()` confirmed AVX2 and FMA at run time.
    unsafe { fit_chunk_avx2_impl(xs) }
}

/// `fixed::quantize_nearest_body` compiled for AVX2 + FMA. Callers must have checked `simd::has_avx2()`.
pub(crate) fn quantize_nearest_avx2<T: Storage>(
    xs: &[f32],
    os: &mut [T],
    scale: f32,
    off: f32,
    lo: f32,
    hi: f32,
) -> (bool, u64) {
    debug_assert!(crate::simd::has_avx2());
    // SAFETY: only called from `simd::quantize_nearest` after `has_avx2()` confirmed AVX2 and FMA.
    unsafe { quantize_nearest_avx2_impl(xs, os, scale, off, lo, hi) }
}
