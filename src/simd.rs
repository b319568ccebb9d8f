//! Run-time ISA dispatch for the numerics hot loops (fitting statistics, quantization).
//!
//! Each loop body is written once, portable and `#[inline(always)]`, in its own module
//! ([`crate::dist`], [`crate::fixed`]); on x86-64 it is also compiled with AVX2 + FMA enabled
//! (see `kernels/x86_64/numerics.rs`, the only place that calls it) and chosen when the CPU has them.
//! Both compilations compute the same IEEE operations in the same order per lane, so results are
//! bit-identical (a test checks it).

use crate::dist::Part;
use crate::fixed::Storage;

/// Whether the AVX2 + FMA compilation may run on this CPU (cached by the standard library).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Chunk statistics of [`crate::dist`] on the best ISA available.
pub(crate) fn fit_chunk(xs: &[f32]) -> Option<Part> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return crate::kernels::x86_64::numerics::fit_chunk_avx2(xs);
    }
    crate::dist::chunk_f32(xs)
}

/// Nearest-even quantization of one chunk on the best ISA available.
pub(crate) fn quantize_nearest<T: Storage>(
    xs: &[f32],
    os: &mut [T],
    scale: f32,
    off: f32,
    lo: f32,
    hi: f32,
) -> (bool, u64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return crate::kernels::x86_64::numerics::quantize_nearest_avx2(xs, os, scale, off, lo, hi);
    }
    crate::fixed::quantize_nearest_body(xs, os, scale, off, lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isa_compilations_are_bit_identical() {
        let xs: Vec<f32> = (0..10_000)
            .map(|i| ((i as f32) * 0.7131).sin() * 40.0 + if i % 17 == 0 { 0.0 } else { 0.1 })
            .collect();
        let portable = crate::dist::chunk_f32(&xs[..4093]).unwrap();
        let fast = fit_chunk(&xs[..4093]).unwrap();
        assert_eq!(format!("{portable:?}"), format!("{fast:?}"));
        let mut a = vec![0i8; xs.len()];
        let mut b = vec![0i8; xs.len()];
        let r1 = crate::fixed::quantize_nearest_body(&xs, &mut a, 0.5, 0.0, -128.0, 127.0);
        let r2 = quantize_nearest(&xs, &mut b, 0.5, 0.0, -128.0, 127.0);
        assert_eq!(r1, r2);
        assert_eq!(a, b);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_path_runs_where_available() {
        // The project machine has AVX2 + FMA: CI must not silently test only the portable path.
        if std::env::var_os("CI").is_some() {
            assert!(
                has_avx2(),
                "CI machine lacks AVX2/FMA: the fast numerics path is untested"
            );
        }
    }
}
