//! x86-64 micro-kernels: with `crate::arch::x86_64`, the only place of the crate with `unsafe` code.
//!
//! Each kernel wraps a feature token of [`crate::arch`] and is constructed only by
//! `new() -> Option<Self>`, so holding one proves the CPU can run it and the safe
//! [`MicroKernel::tile`] may call the `#[target_feature]` wrapper. The wrapper inlines an
//! `#[inline(always)]` body; the safe entry point checks every pointer bound once per tile and
//! returns [`TileOutOfBounds`] (never a silent skip) when a bound fails.
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

use core::arch::x86_64::*;

use super::packed::{MicroKernel, TileGeo, TileOutOfBounds, in_bounds};
use crate::arch::x86_64::{Avx2Fma, Avx512Vnni};

// ---------------------------------------------------------------- AVX2 (vpmaddwd)

/// `x86_64-i16i16i32-avx2`: i16 × i16 pairs with `vpmaddwd`, up to 6 pixels × 16 channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2I16(Avx2Fma);
/// `x86_64-u8i8i32-avx2`: u8/i8 activations (widened to i16 when packed) × i8 weights stored as i8
/// and sign-extended on load (`vpmovsxbw`), then `vpmaddwd`; half the weight bytes of `Avx2I16`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2I8(Avx2Fma);

impl Avx2I16 {
    pub(crate) fn new() -> Option<Self> {
        Avx2Fma::new().map(Self)
    }
}
impl Avx2I8 {
    pub(crate) fn new() -> Option<Self> {
        Avx2Fma::new().map(Self)
    }
}

const A2_MR: usize = 6;

/// Loads 16 weights (8 channels × 2 inputs) as i16 lanes.
trait Avx2Weights: Copy {
    /// # Safety
    /// 16 elements at `p` must be readable; AVX2 must be available.
    unsafe fn load16(p: *const Self) -> __m256i;
}
impl Avx2Weights for i16 {
    #[inline(always)]
    unsafe fn load16(p: *const i16) -> __m256i {
        // SAFETY: 32 readable bytes at p (caller); unaligned load.
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }
}
impl Avx2Weights for i8 {
    #[inline(always)]
    unsafe fn load16(p: *const i8) -> __m256i {
        // SAFETY: 16 readable bytes at p (caller); unaligned load, then sign extension.
        unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i)) }
    }
}

/// `M` pixels × 16 channels; see the module table.
///
/// # Safety
/// As [`avx2_tile`], for `M` = `offs.len()` pixels.
#[inline(always)]
unsafe fn avx2_body<W: Avx2Weights, const M: usize>(
    x: *const i16,
    offs: &[usize],
    w: *const W,
    geo: &TileGeo<'_>,
    acc: *mut i32,
) {
    // SAFETY (whole body): the caller checked (`in_bounds`) that every x read
    // (offs[p] + tap + chunk·2 + 2 ≤ x.len() for p < M), every w read (taps·chunks·32 elements) and
    // every acc write (M·16 i32) is in bounds, and that AVX2 is available.
    // SAFETY: AVX is available.
    let mut a = [[unsafe { _mm256_setzero_si256() }; 2]; M];
    let mut wp = w;
    for &t in geo.taps {
        let mut xp = [x; M];
        for p in 0..M {
            // SAFETY: offs[p] + t is within x (checked by the caller).
            xp[p] = unsafe { x.add(offs[p] + t) };
        }
        for _ in 0..geo.chunks {
            // SAFETY: 32 weights of this k-step are in bounds.
            let (w0, w1) = unsafe { (W::load16(wp), W::load16(wp.add(16))) };
            for p in 0..M {
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
        // SAFETY: acc has room for M·16 i32 (checked by the caller).
        unsafe {
            _mm256_storeu_si256(acc.add(p * 16) as *mut __m256i, ap[0]);
            _mm256_storeu_si256(acc.add(p * 16 + 8) as *mut __m256i, ap[1]);
        }
    }
}

/// # Safety
/// AVX2 must be available; every read of `x` (`offs[p] + tap + chunks·2` for each pixel p and tap) and
/// `w` (`taps·chunks·32` elements) and every write of `acc` (`offs.len()·16`) must be in bounds.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_tile<W: Avx2Weights>(
    x: *const i16,
    offs: &[usize],
    w: *const W,
    geo: &TileGeo<'_>,
    acc: *mut i32,
) {
    // SAFETY: preconditions forwarded from the caller; offs.len() = M selects the instantiation.
    unsafe {
        match offs.len() {
            1 => avx2_body::<W, 1>(x, offs, w, geo, acc),
            2 => avx2_body::<W, 2>(x, offs, w, geo, acc),
            3 => avx2_body::<W, 3>(x, offs, w, geo, acc),
            4 => avx2_body::<W, 4>(x, offs, w, geo, acc),
            5 => avx2_body::<W, 5>(x, offs, w, geo, acc),
            _ => avx2_body::<W, A2_MR>(x, offs, w, geo, acc),
        }
    }
}

macro_rules! avx2_kernel {
    ($ty:ty, $w:ty, $name:literal) => {
        impl MicroKernel for $ty {
            const NAME: &'static str = $name;
            type X = i16;
            type W = $w;
            const MR: usize = A2_MR;
            const NR: usize = 16;
            const KW: usize = 2;
            #[inline(always)]
            fn in_context<R>(&self, f: impl FnOnce() -> R) -> R {
                self.0.in_context(f)
            }
            fn tile(
                &self,
                x: &[i16],
                offs: &[usize],
                w: &[$w],
                geo: &TileGeo<'_>,
                acc: &mut [i32],
            ) -> Result<(), TileOutOfBounds> {
                if !in_bounds(x, offs, w, geo, acc, (Self::MR, Self::NR, Self::KW)) {
                    return Err(TileOutOfBounds(Self::NAME));
                }
                // SAFETY: bounds checked above; `self` exists only if AVX2 was detected.
                unsafe { avx2_tile::<$w>(x.as_ptr(), offs, w.as_ptr(), geo, acc.as_mut_ptr()) };
                Ok(())
            }
        }
    };
}
avx2_kernel!(Avx2I16, i16, "x86_64-i16i16i32-avx2");
avx2_kernel!(Avx2I8, i8, "x86_64-u8i8i32-avx2");

// ---------------------------------------------------------------- AVX-512 VNNI

const V_MR: usize = 12;

/// `x86_64-u8i8i32-avx512vnni`: u8 × i8 quads with `vpdpbusd`, 12 pixels × 32 channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512VnniU8(Avx512Vnni);
/// `x86_64-i16i16i32-avx512vnni`: i16 × i16 pairs with `vpdpwssd`, 12 pixels × 32 channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512VnniI16(Avx512Vnni);

impl Avx512VnniU8 {
    pub(crate) fn new() -> Option<Self> {
        Avx512Vnni::new().map(Self)
    }
}
impl Avx512VnniI16 {
    pub(crate) fn new() -> Option<Self> {
        Avx512Vnni::new().map(Self)
    }
}

/// Shared VNNI body: `KW` elements of `X` per 32-bit lane; `dot` is `vpdpbusd` or `vpdpwssd`.
///
/// # Safety
/// AVX-512 F/BW/VNNI must be available; every read of `x` (`offs[p] + tap + chunks·KW`) and `w`
/// (`taps·chunks·128` bytes) and every write of `acc` (`M·32`) must be in bounds.
#[inline(always)]
unsafe fn vnni_body<X, W, const M: usize>(
    x: *const X,
    offs: &[usize],
    w: *const W,
    geo: &TileGeo<'_>,
    acc: *mut i32,
    dot: impl Fn(__m512i, __m512i, __m512i) -> __m512i,
) {
    // SAFETY (whole body): the caller checked that every x read (offs[p] + tap + chunk·KW + KW ≤
    // x.len()), every w read (taps·chunks·32·KW elements of 64 bytes per 16 channels) and every acc
    // write (M·32 i32) is in bounds, and that AVX-512F/BW/VNNI are available.
    // SAFETY: AVX-512F is available (the caller runs with it enabled).
    let mut a = [[unsafe { _mm512_setzero_si512() }; 2]; M];
    let mut wp = w as *const u8;
    for &t in geo.taps {
        let mut xp = [x as *const u8; M];
        for p in 0..M {
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
            for p in 0..M {
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
}

/// Calls `vnni_body` with M = offs.len() rounded up to 1, 2, 4, 8 or 12 (extra rows repeat the last
/// pixel and are discarded by the driver).
macro_rules! vnni_dispatch {
    ($x:ty, $w:ty, $xp:expr, $offs:expr, $wp:expr, $geo:expr, $acc:expr, $dot:expr) => {{
        let offs: &[usize] = $offs;
        let mut o = [0usize; V_MR];
        let m = offs.len();
        for (i, v) in o.iter_mut().enumerate() {
            *v = offs[i.min(m - 1)];
        }
        match m {
            1 => vnni_body::<$x, $w, 1>($xp, &o[..1], $wp, $geo, $acc, $dot),
            2 => vnni_body::<$x, $w, 2>($xp, &o[..2], $wp, $geo, $acc, $dot),
            3 | 4 => vnni_body::<$x, $w, 4>($xp, &o[..4], $wp, $geo, $acc, $dot),
            5..=8 => vnni_body::<$x, $w, 8>($xp, &o[..8], $wp, $geo, $acc, $dot),
            _ => vnni_body::<$x, $w, V_MR>($xp, &o[..V_MR], $wp, $geo, $acc, $dot),
        }
    }};
}

/// # Safety
/// As [`vnni_body`] for `MR` rows: `acc` must hold 12·32 values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_u8_tile(
    x: *const u8,
    offs: &[usize],
    w: *const i8,
    geo: &TileGeo<'_>,
    acc: *mut i32,
) {
    let dot = |s, a, b| _mm512_dpbusd_epi32(s, a, b);
    // SAFETY: preconditions forwarded; offs.len() = M selects the instantiation.
    unsafe { vnni_dispatch!(u8, i8, x, offs, w, geo, acc, dot) }
}

/// # Safety
/// As [`vnni_body`] for `MR` rows: `acc` must hold 12·32 values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_i16_tile(
    x: *const i16,
    offs: &[usize],
    w: *const i16,
    geo: &TileGeo<'_>,
    acc: *mut i32,
) {
    let dot = |s, a, b| _mm512_dpwssd_epi32(s, a, b);
    // SAFETY: preconditions forwarded; offs.len() = M selects the instantiation.
    unsafe { vnni_dispatch!(i16, i16, x, offs, w, geo, acc, dot) }
}

impl MicroKernel for Avx512VnniU8 {
    const NAME: &'static str = "x86_64-u8i8i32-avx512vnni";
    #[inline(always)]
    fn in_context<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.in_context(f)
    }
    type X = u8;
    type W = i8;
    const MR: usize = V_MR;
    const NR: usize = 32;
    const KW: usize = 4;
    fn tile(
        &self,
        x: &[u8],
        offs: &[usize],
        w: &[i8],
        geo: &TileGeo<'_>,
        acc: &mut [i32],
    ) -> Result<(), TileOutOfBounds> {
        // The rounded-up instantiations may write up to MR rows.
        if acc.len() < Self::MR * Self::NR
            || !in_bounds(x, offs, w, geo, acc, (Self::MR, Self::NR, Self::KW))
        {
            return Err(TileOutOfBounds(Self::NAME));
        }
        // SAFETY: bounds checked above; `self` exists only if AVX-512 VNNI was detected.
        unsafe { vnni_u8_tile(x.as_ptr(), offs, w.as_ptr(), geo, acc.as_mut_ptr()) };
        Ok(())
    }
}

impl MicroKernel for Avx512VnniI16 {
    const NAME: &'static str = "x86_64-i16i16i32-avx512vnni";
    #[inline(always)]
    fn in_context<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.in_context(f)
    }
    type X = i16;
    type W = i16;
    const MR: usize = V_MR;
    const NR: usize = 32;
    const KW: usize = 2;
    fn tile(
        &self,
        x: &[i16],
        offs: &[usize],
        w: &[i16],
        geo: &TileGeo<'_>,
        acc: &mut [i32],
    ) -> Result<(), TileOutOfBounds> {
        // The rounded-up instantiations may write up to MR rows.
        if acc.len() < Self::MR * Self::NR
            || !in_bounds(x, offs, w, geo, acc, (Self::MR, Self::NR, Self::KW))
        {
            return Err(TileOutOfBounds(Self::NAME));
        }
        // SAFETY: bounds checked above; `self` exists only if AVX-512 VNNI was detected.
        unsafe { vnni_i16_tile(x.as_ptr(), offs, w.as_ptr(), geo, acc.as_mut_ptr()) };
        Ok(())
    }
}
