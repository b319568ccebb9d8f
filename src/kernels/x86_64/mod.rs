//! x86-64 micro-kernels. All of the crate's `unsafe` code lives in this module.
//!
//! Each kernel is a zero-sized token constructed only by `new() -> Option<Self>` after
//! `is_x86_feature_detected!` confirmed its ISA, so holding one proves the CPU can run it and the safe
//! [`MicroKernel::tile`] may call the `#[target_feature]` wrapper. The wrapper inlines an
//! `#[inline(always)]` body; the safe entry point checks every pointer bound once per tile.
//!
//! | kernel | tile (pixels × channels) | per k-step |
//! |---|---|---|
//! | `x86_64-i16i16i32-avx2` | 6 × 16 (12 ymm accumulators) | 2 weight loads, 6 `vpbroadcastd`, 12 `vpmaddwd` + 12 `vpaddd` |
//! | `x86_64-u8i8i32-avx512vnni` | 12 × 32 (24 zmm accumulators) | 2 weight loads, 12 broadcasts, 24 `vpdpbusd` |
//! | `x86_64-i16i16i32-avx512vnni` | 12 × 32 (24 zmm accumulators) | 2 weight loads, 12 broadcasts, 24 `vpdpwssd` |
//!
//! Hazards: `vpmaddwd` wraps only for (−2¹⁵)·(−2¹⁵)·2, which the accumulator bound excludes;
//! `vpdpbusd`/`vpdpwssd` (non-saturating forms) wrap modulo 2³², which is exact for bounded results.
//! `vpmaddubsw` (saturating) is deliberately not used.

pub(crate) mod numerics;

use core::arch::x86_64::*;

use super::packed::{MicroKernel, TileGeo};

/// Whether a tile's reads stay inside `x` and `w` and its writes inside `acc`.
#[inline(always)]
fn in_bounds<X, W>(
    x: &[X],
    offs: &[usize],
    w: &[W],
    geo: &TileGeo<'_>,
    acc: &[i32],
    (mr, nr, kw): (usize, usize, usize),
) -> bool {
    let max_off = offs.iter().copied().max().unwrap_or(0);
    let max_tap = geo.taps.iter().copied().max().unwrap_or(0);
    offs.len() == mr
        && acc.len() >= mr * nr
        && w.len() >= geo.taps.len() * geo.chunks * nr * kw
        && (geo.chunks == 0
            || geo.taps.is_empty()
            || max_off + max_tap + geo.chunks * kw <= x.len())
}

// ---------------------------------------------------------------- AVX2 i16 x i16 (vpmaddwd)

/// `x86_64-i16i16i32-avx2`: i16 × i16 pairs with `vpmaddwd`, 6 pixels × 16 channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2I16(());

impl Avx2I16 {
    pub(crate) fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Self(()))
    }
}

const A2_MR: usize = 6;

#[inline(always)]
unsafe fn avx2_body(
    x: *const i16,
    offs: &[usize],
    w: *const i16,
    geo: &TileGeo<'_>,
    acc: *mut i32,
) {
    // SAFETY (whole body): the caller checked (`in_bounds`) that every x read
    // (offs[p] + tap + chunk·2 + 2 ≤ x.len()), every w read (taps·chunks·32 i16) and every acc write
    // (6·16 i32) is in bounds, and that AVX2 is available.
    // SAFETY: AVX is available (the caller runs with AVX2 enabled).
    let mut a = [[unsafe { _mm256_setzero_si256() }; 2]; A2_MR];
    let mut wp = w;
    for &t in geo.taps {
        let mut xp = [x; A2_MR];
        for p in 0..A2_MR {
            // SAFETY: offs[p] + t is within x (checked by the caller).
            xp[p] = unsafe { x.add(offs[p] + t) };
        }
        for _ in 0..geo.chunks {
            // SAFETY: 32 i16 of this k-step's weight block are in bounds; unaligned loads.
            let (w0, w1) = unsafe {
                (
                    _mm256_loadu_si256(wp as *const __m256i),
                    _mm256_loadu_si256(wp.add(16) as *const __m256i),
                )
            };
            for p in 0..A2_MR {
                // SAFETY: two i16 at xp[p] are in bounds; read_unaligned has no alignment demand.
                let xv = unsafe { _mm256_set1_epi32((xp[p] as *const i32).read_unaligned()) };
                // SAFETY: AVX2 is enabled in the calling wrapper.
                unsafe {
                    a[p][0] = _mm256_add_epi32(a[p][0], _mm256_madd_epi16(xv, w0));
                    a[p][1] = _mm256_add_epi32(a[p][1], _mm256_madd_epi16(xv, w1));
                }
                // SAFETY: stays within (or one past) the checked range.
                xp[p] = unsafe { xp[p].add(2) };
            }
            // SAFETY: advances within the weight block (or one past its end).
            wp = unsafe { wp.add(32) };
        }
    }
    for (p, ap) in a.iter().enumerate() {
        // SAFETY: acc has room for 6·16 i32 (checked by the caller).
        unsafe {
            _mm256_storeu_si256(acc.add(p * 16) as *mut __m256i, ap[0]);
            _mm256_storeu_si256(acc.add(p * 16 + 8) as *mut __m256i, ap[1]);
        }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn avx2_tile(
    x: *const i16,
    offs: &[usize],
    w: *const i16,
    geo: &TileGeo<'_>,
    acc: *mut i32,
) {
    // SAFETY: preconditions forwarded from the caller.
    unsafe { avx2_body(x, offs, w, geo, acc) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_context<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn avx512_context<R>(f: impl FnOnce() -> R) -> R {
    f()
}

impl MicroKernel for Avx2I16 {
    type X = i16;
    type W = i16;
    const MR: usize = A2_MR;
    const NR: usize = 16;
    const KW: usize = 2;
    #[inline(always)]
    fn in_context<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: `self` exists only if AVX2 was detected (`Avx2I16::new`); FMA comes with every
        // AVX2 CPU this crate targets and is checked there too.
        unsafe { avx2_context(f) }
    }
    fn tile(&self, x: &[i16], offs: &[usize], w: &[i16], geo: &TileGeo<'_>, acc: &mut [i32]) {
        if !in_bounds(x, offs, w, geo, acc, (Self::MR, Self::NR, Self::KW)) {
            debug_assert!(false, "tile out of bounds");
            return;
        }
        // SAFETY: bounds checked above; `self` exists only if AVX2 was detected.
        unsafe { avx2_tile(x.as_ptr(), offs, w.as_ptr(), geo, acc.as_mut_ptr()) }
    }
}

// ---------------------------------------------------------------- AVX-512 VNNI

const V_MR: usize = 12;

/// `x86_64-u8i8i32-avx512vnni`: u8 × i8 quads with `vpdpbusd`, 12 pixels × 32 channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512VnniU8(());
/// `x86_64-i16i16i32-avx512vnni`: i16 × i16 pairs with `vpdpwssd`, 12 pixels × 32 channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512VnniI16(());

fn has_avx512vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

impl Avx512VnniU8 {
    pub(crate) fn new() -> Option<Self> {
        has_avx512vnni().then_some(Self(()))
    }
}
impl Avx512VnniI16 {
    pub(crate) fn new() -> Option<Self> {
        has_avx512vnni().then_some(Self(()))
    }
}

/// Shared VNNI body: `KW` elements of `X` per 32-bit lane; `dot` is `vpdpbusd` or `vpdpwssd`.
#[inline(always)]
unsafe fn vnni_body<X, W, const KW: usize>(
    x: *const X,
    offs: &[usize],
    w: *const W,
    geo: &TileGeo<'_>,
    acc: *mut i32,
    dot: impl Fn(__m512i, __m512i, __m512i) -> __m512i,
) {
    // SAFETY (whole body): the caller checked that every x read (offs[p] + tap + chunk·KW + KW ≤
    // x.len()), every w read (taps·chunks·32·KW elements of 64 bytes per 16 channels) and every acc
    // write (12·32 i32) is in bounds, and that AVX-512F/BW/VNNI are available.
    // SAFETY: AVX-512F is available (the caller runs with it enabled).
    let mut a = [[unsafe { _mm512_setzero_si512() }; 2]; V_MR];
    let mut wp = w as *const u8;
    for &t in geo.taps {
        let mut xp = [x as *const u8; V_MR];
        for p in 0..V_MR {
            // SAFETY: offs[p] + t is within x.
            xp[p] = unsafe { x.add(offs[p] + t) } as *const u8;
        }
        for _ in 0..geo.chunks {
            // SAFETY: 128 bytes of this k-step's weights are in bounds; unaligned loads.
            let (w0, w1) = unsafe {
                (
                    _mm512_loadu_si512(wp as *const __m512i),
                    _mm512_loadu_si512(wp.add(64) as *const __m512i),
                )
            };
            for p in 0..V_MR {
                // SAFETY: 4 bytes at xp[p] are in bounds; read_unaligned has no alignment demand.
                let xv = unsafe { _mm512_set1_epi32((xp[p] as *const i32).read_unaligned()) };
                a[p][0] = dot(a[p][0], xv, w0);
                a[p][1] = dot(a[p][1], xv, w1);
                // SAFETY: stays within (or one past) the checked range.
                xp[p] = unsafe { xp[p].add(4) };
            }
            // SAFETY: advances within the weight block (or one past its end).
            wp = unsafe { wp.add(128) };
        }
    }
    for (p, ap) in a.iter().enumerate() {
        // SAFETY: acc has room for 12·32 i32.
        unsafe {
            _mm512_storeu_si512(acc.add(p * 32) as *mut __m512i, ap[0]);
            _mm512_storeu_si512(acc.add(p * 32 + 16) as *mut __m512i, ap[1]);
        }
    }
    let _ = KW;
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_u8_tile(
    x: *const u8,
    offs: &[usize],
    w: *const i8,
    geo: &TileGeo<'_>,
    acc: *mut i32,
) {
    // SAFETY: preconditions forwarded; the closure runs inside this AVX-512 VNNI context.
    unsafe { vnni_body::<u8, i8, 4>(x, offs, w, geo, acc, |s, a, b| _mm512_dpbusd_epi32(s, a, b)) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_i16_tile(
    x: *const i16,
    offs: &[usize],
    w: *const i16,
    geo: &TileGeo<'_>,
    acc: *mut i32,
) {
    // SAFETY: preconditions forwarded; the closure runs inside this AVX-512 VNNI context.
    unsafe {
        vnni_body::<i16, i16, 2>(x, offs, w, geo, acc, |s, a, b| _mm512_dpwssd_epi32(s, a, b))
    }
}

impl MicroKernel for Avx512VnniU8 {
    #[inline(always)]
    fn in_context<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: `self` exists only if AVX-512F/BW/VNNI were detected.
        unsafe { avx512_context(f) }
    }
    type X = u8;
    type W = i8;
    const MR: usize = V_MR;
    const NR: usize = 32;
    const KW: usize = 4;
    fn tile(&self, x: &[u8], offs: &[usize], w: &[i8], geo: &TileGeo<'_>, acc: &mut [i32]) {
        if !in_bounds(x, offs, w, geo, acc, (Self::MR, Self::NR, Self::KW)) {
            debug_assert!(false, "tile out of bounds");
            return;
        }
        // SAFETY: bounds checked above; `self` exists only if AVX-512 VNNI was detected.
        unsafe { vnni_u8_tile(x.as_ptr(), offs, w.as_ptr(), geo, acc.as_mut_ptr()) }
    }
}

impl MicroKernel for Avx512VnniI16 {
    #[inline(always)]
    fn in_context<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: `self` exists only if AVX-512F/BW/VNNI were detected.
        unsafe { avx512_context(f) }
    }
    type X = i16;
    type W = i16;
    const MR: usize = V_MR;
    const NR: usize = 32;
    const KW: usize = 2;
    fn tile(&self, x: &[i16], offs: &[usize], w: &[i16], geo: &TileGeo<'_>, acc: &mut [i32]) {
        if !in_bounds(x, offs, w, geo, acc, (Self::MR, Self::NR, Self::KW)) {
            debug_assert!(false, "tile out of bounds");
            return;
        }
        // SAFETY: bounds checked above; `self` exists only if AVX-512 VNNI was detected.
        unsafe { vnni_i16_tile(x.as_ptr(), offs, w.as_ptr(), geo, acc.as_mut_ptr()) }
    }
}
