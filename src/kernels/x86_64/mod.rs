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

// ---------------------------------------------------------------- AVX2 (vpmaddubsw, i16 sums)

/// `x86_64-u8i8i16-avx2`: u8 activations × i8 weights with `vpmaddubsw` (two products summed into
/// one i16 lane, 32 MACs per ymm instruction), i16 partial sums kept over `steps` k-steps with
/// `vpaddw`, then widened with `vpmaddwd(·, 1)` and added to i32 accumulators.
///
/// Exactness (docs/kernels.md, section 3): with packed activations in 0..=x_max and weight codes
/// |w| ≤ w_max, one `vpmaddubsw` lane is at most 2·x_max·w_max in magnitude and `steps` of them at
/// most steps·2·x_max·w_max. [`Avx2Maddubs::new`] accepts only `steps` with
/// steps·2·x_max·w_max ≤ 32,767, so the instruction never saturates and `vpaddw` never wraps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2Maddubs {
    t: Avx2Fma,
    steps: u32,
}

/// Largest number of k-steps summed in i16 before widening (bounds the flush counter).
const MADDUBS_MAX_STEPS: u64 = 64;

impl Avx2Maddubs {
    /// The kernel for packed activations in 0..=`x_max` and weights with |w| ≤ `w_max`: `None` if
    /// AVX2 is missing or 2·x_max·w_max > 32,767 (one `vpmaddubsw` pair could saturate).
    pub(crate) fn new(x_max: u64, w_max: u64) -> Option<Self> {
        let steps = Self::steps_for(x_max, w_max)?;
        Avx2Fma::new().map(|t| Self { t, steps })
    }

    /// The proven step count: ⌊32,767 / (2·x_max·w_max)⌋, capped at 64; `None` if it is 0.
    pub(crate) fn steps_for(x_max: u64, w_max: u64) -> Option<u32> {
        let per_step = 2u64.checked_mul(x_max)?.checked_mul(w_max)?.max(1);
        let steps = (i16::MAX as u64 / per_step).min(MADDUBS_MAX_STEPS);
        (steps >= 1).then_some(steps as u32)
    }
}

const MB_MR: usize = 4;

/// `M` pixels × 16 channels, KW = 4 (the VNNI packing with NR = 16). With `WIDEN_EACH` (steps = 1)
/// every `vpmaddubsw` result is widened at once into i32 accumulators held in registers; otherwise
/// the 2·M i16 accumulators stay in registers and are widened into the i32 sums in `acc` (L1) every
/// `steps` k-steps, which keeps the hot loop free of spills (16 ymm registers: 2·M i16 sums, two
/// weight vectors, one broadcast).
///
/// # Safety
/// As [`maddubs_tile`], for `M` = `offs.len()` pixels.
#[inline(always)]
unsafe fn maddubs_body<const M: usize, const WIDEN_EACH: bool>(
    x: *const u8,
    offs: &[usize],
    w: *const i8,
    geo: &TileGeo<'_>,
    acc: *mut i32,
    steps: u32,
) {
    // SAFETY (whole body): the caller checked (`in_bounds`) that every x read
    // (offs[p] + tap + chunk·4 + 4 ≤ x.len() for p < M), every w read (taps·chunks·64 bytes) and
    // every acc access (M·16 i32) is in bounds, that AVX2 is available, and that `steps` k-steps
    // of `vpmaddubsw` sums fit i16 (`Avx2Maddubs::new`).
    // SAFETY: AVX is available.
    let zero = unsafe { _mm256_setzero_si256() };
    // SAFETY: AVX is available.
    let ones = unsafe { _mm256_set1_epi16(1) };
    // i32 sums: in registers when widening every step, else in `acc`.
    let mut a32 = [[zero; 2]; M];
    if !WIDEN_EACH {
        for p in 0..M {
            // SAFETY: acc has room for M·16 i32.
            unsafe {
                _mm256_storeu_si256(acc.add(p * 16) as *mut __m256i, zero);
                _mm256_storeu_si256(acc.add(p * 16 + 8) as *mut __m256i, zero);
            }
        }
    }
    let mut a16 = [[zero; 2]; M];
    let mut left = steps;
    let mut wp = w;
    for &t in geo.taps {
        let mut xp = [x; M];
        for p in 0..M {
            // SAFETY: offs[p] + t is within x (checked by the caller).
            xp[p] = unsafe { x.add(offs[p] + t) };
        }
        for _ in 0..geo.chunks {
            // SAFETY: 64 weight bytes of this k-step are in bounds; unaligned loads.
            let (w0, w1) = unsafe {
                (
                    _mm256_loadu_si256(wp as *const __m256i),
                    _mm256_loadu_si256(wp.add(32) as *const __m256i),
                )
            };
            for p in 0..M {
                // SAFETY: 4 bytes at xp[p] are in bounds; read_unaligned has no alignment demand.
                let xv = unsafe { _mm256_set1_epi32((xp[p] as *const i32).read_unaligned()) };
                // SAFETY: AVX2 is enabled in the calling wrapper; the sums cannot saturate or wrap
                // (the step bound above).
                unsafe {
                    if WIDEN_EACH {
                        a32[p][0] = _mm256_add_epi32(
                            a32[p][0],
                            _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w0), ones),
                        );
                        a32[p][1] = _mm256_add_epi32(
                            a32[p][1],
                            _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w1), ones),
                        );
                    } else {
                        a16[p][0] = _mm256_add_epi16(a16[p][0], _mm256_maddubs_epi16(xv, w0));
                        a16[p][1] = _mm256_add_epi16(a16[p][1], _mm256_maddubs_epi16(xv, w1));
                    }
                }
                // SAFETY: stays within (or one past) the checked range.
                xp[p] = unsafe { xp[p].add(4) };
            }
            // SAFETY: advances within the weight block (or one past its end).
            wp = unsafe { wp.add(64) };
            if !WIDEN_EACH {
                left -= 1;
                if left == 0 {
                    left = steps;
                    // SAFETY: as this body (acc holds M·16 i32; AVX2 is enabled).
                    unsafe { maddubs_flush(&mut a16, acc) };
                }
            }
        }
    }
    if WIDEN_EACH {
        for (p, a) in a32.iter().enumerate() {
            // SAFETY: acc has room for M·16 i32 (checked by the caller).
            unsafe {
                _mm256_storeu_si256(acc.add(p * 16) as *mut __m256i, a[0]);
                _mm256_storeu_si256(acc.add(p * 16 + 8) as *mut __m256i, a[1]);
            }
        }
    } else if left != steps {
        // The last, partial group.
        // SAFETY: as this body (acc holds M·16 i32; AVX2 is enabled).
        unsafe { maddubs_flush(&mut a16, acc) };
    }
}

/// Adds the i16 sums, widened by `vpmaddwd(·, 1)`, to the i32 sums in `acc`, and clears them.
/// `#[inline(always)]`, so it is compiled in the caller's AVX2 context.
///
/// # Safety
/// AVX2 must be available; `acc` must hold M·16 i32.
#[inline(always)]
unsafe fn maddubs_flush<const M: usize>(a16: &mut [[__m256i; 2]; M], acc: *mut i32) {
    for (p, ap) in a16.iter_mut().enumerate() {
        for (h, v) in ap.iter_mut().enumerate() {
            // SAFETY: acc holds M·16 i32 and AVX2 is available (the caller).
            unsafe {
                let d = acc.add(p * 16 + h * 8) as *mut __m256i;
                let ones = _mm256_set1_epi16(1);
                let s = _mm256_add_epi32(_mm256_loadu_si256(d), _mm256_madd_epi16(*v, ones));
                _mm256_storeu_si256(d, s);
                *v = _mm256_setzero_si256();
            }
        }
    }
}

/// # Safety
/// AVX2 must be available; every read of `x` (`offs[p] + tap + chunks·4` for each pixel p and tap)
/// and `w` (`taps·chunks·64` bytes) and every write of `acc` (`offs.len()·16`) must be in bounds;
/// `steps` must satisfy the bound of [`Avx2Maddubs::new`] for the packed codes.
#[target_feature(enable = "avx2,fma")]
unsafe fn maddubs_tile(
    x: *const u8,
    offs: &[usize],
    w: *const i8,
    geo: &TileGeo<'_>,
    acc: *mut i32,
    steps: u32,
) {
    // SAFETY: preconditions forwarded from the caller; offs.len() = M selects the instantiation.
    unsafe {
        match (offs.len(), steps == 1) {
            (1, true) => maddubs_body::<1, true>(x, offs, w, geo, acc, steps),
            (2, true) => maddubs_body::<2, true>(x, offs, w, geo, acc, steps),
            (3, true) => maddubs_body::<3, true>(x, offs, w, geo, acc, steps),
            (_, true) => maddubs_body::<MB_MR, true>(x, offs, w, geo, acc, steps),
            (1, false) => maddubs_body::<1, false>(x, offs, w, geo, acc, steps),
            (2, false) => maddubs_body::<2, false>(x, offs, w, geo, acc, steps),
            (3, false) => maddubs_body::<3, false>(x, offs, w, geo, acc, steps),
            (_, false) => maddubs_body::<MB_MR, false>(x, offs, w, geo, acc, steps),
        }
    }
}

impl MicroKernel for Avx2Maddubs {
    const NAME: &'static str = "x86_64-u8i8i16-avx2";
    type X = u8;
    type W = i8;
    const MR: usize = MB_MR;
    const NR: usize = 16;
    const KW: usize = 4;
    #[inline(always)]
    fn in_context<R>(&self, f: impl FnOnce() -> R) -> R {
        self.t.in_context(f)
    }
    fn tile(
        &self,
        x: &[u8],
        offs: &[usize],
        w: &[i8],
        geo: &TileGeo<'_>,
        acc: &mut [i32],
    ) -> Result<(), TileOutOfBounds> {
        if !in_bounds(x, offs, w, geo, acc, (Self::MR, Self::NR, Self::KW)) {
            return Err(TileOutOfBounds(Self::NAME));
        }
        // SAFETY: bounds checked above; `self` exists only if AVX2 was detected and `steps` was
        // proven by `new` for the layer's codes (the driver checks every input against them).
        unsafe {
            maddubs_tile(
                x.as_ptr(),
                offs,
                w.as_ptr(),
                geo,
                acc.as_mut_ptr(),
                self.steps,
            )
        };
        Ok(())
    }
}

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

// ---------------------------------------------------------------- peak loops

/// Independent accumulators in the peak loops: enough to cover latency × throughput of every mix.
const PEAK_ACC: usize = 12;

/// Runs `iterations` rounds of one kernel's multiply-accumulate instruction mix on register
/// operands, with [`PEAK_ACC`] independent accumulators and no loads or stores, and returns the
/// multiply-accumulates done; `None` for a kernel with no SIMD mix here or a CPU that lacks it.
///
/// The mixes (per accumulator and round): `vpmaddwd` + `vpaddd` ymm (16 MACs) for both `vpmaddwd`
/// kernels; `vpmaddubsw` + `vpaddw` ymm (32 MACs) plus, every 8 rounds, the widening `vpmaddwd` +
/// `vpaddd` for `x86_64-u8i8i16-avx2`; `vpdpbusd` zmm (64 MACs); `vpdpwssd` zmm (32 MACs).
pub(crate) fn peak_loop(name: &str, iterations: u64, seed: i32) -> Option<u64> {
    let acc = PEAK_ACC as u64;
    match name {
        "x86_64-i16i16i32-avx2" | "x86_64-u8i8i32-avx2" => {
            let t = Avx2Fma::new()?;
            // SAFETY: `t` proves AVX2 is available.
            let r = unsafe { peak_maddwd(t, iterations, seed) };
            std::hint::black_box(r);
            Some(iterations * acc * 16)
        }
        "x86_64-u8i8i16-avx2" => {
            let t = Avx2Fma::new()?;
            // SAFETY: `t` proves AVX2 is available.
            let r = unsafe { peak_maddubs(t, iterations, seed) };
            std::hint::black_box(r);
            Some(iterations * acc * 32)
        }
        "x86_64-u8i8i32-avx512vnni" => {
            let t = Avx512Vnni::new()?;
            // SAFETY: `t` proves AVX-512 F/BW/VNNI are available.
            let r = unsafe { peak_vnni(t, iterations, seed, false) };
            std::hint::black_box(r);
            Some(iterations * acc * 64)
        }
        "x86_64-i16i16i32-avx512vnni" => {
            let t = Avx512Vnni::new()?;
            // SAFETY: `t` proves AVX-512 F/BW/VNNI are available.
            let r = unsafe { peak_vnni(t, iterations, seed, true) };
            std::hint::black_box(r);
            Some(iterations * acc * 32)
        }
        _ => None,
    }
}

/// An empty `asm!` that the compiler must assume changes `$x` (a `$class` register): it keeps
/// loop-invariant products inside the peak loops at no instruction cost. Expanded inside the
/// `#[target_feature]` functions, which enable the register class.
macro_rules! opaque {
    ($x:expr, $class:ident) => {
        // SAFETY: the template is empty: no instruction runs, no memory or flags are touched.
        unsafe {
            core::arch::asm!("/* {0} */", inout($class) $x, options(nomem, nostack, preserves_flags))
        }
    };
}

/// # Safety
/// AVX2 must be available (the token proves it).
#[target_feature(enable = "avx2,fma")]
unsafe fn peak_maddwd(_: Avx2Fma, iterations: u64, seed: i32) -> i32 {
    let mut x = _mm256_set1_epi32(seed);
    let w = _mm256_set1_epi32(seed.rotate_left(7));
    let mut a = [_mm256_setzero_si256(); PEAK_ACC];
    for _ in 0..iterations {
        opaque!(x, ymm_reg);
        for v in a.iter_mut() {
            *v = _mm256_add_epi32(*v, _mm256_madd_epi16(x, w));
        }
    }
    let s = a
        .iter()
        .fold(_mm256_setzero_si256(), |s, &v| _mm256_add_epi32(s, v));
    _mm256_extract_epi32::<0>(s)
}

/// # Safety
/// AVX2 must be available (the token proves it).
#[target_feature(enable = "avx2,fma")]
unsafe fn peak_maddubs(_: Avx2Fma, iterations: u64, seed: i32) -> i32 {
    let mut x = _mm256_set1_epi32(seed);
    let w = _mm256_set1_epi32(seed.rotate_left(7));
    let ones = _mm256_set1_epi16(1);
    let mut a16 = [_mm256_setzero_si256(); PEAK_ACC];
    let mut a32 = [_mm256_setzero_si256(); PEAK_ACC];
    for i in 0..iterations {
        opaque!(x, ymm_reg);
        for v in a16.iter_mut() {
            *v = _mm256_add_epi16(*v, _mm256_maddubs_epi16(x, w));
        }
        if i % 8 == 7 {
            for (s, v) in a32.iter_mut().zip(a16.iter_mut()) {
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(*v, ones));
                *v = _mm256_setzero_si256();
            }
        }
    }
    let s = a32
        .iter()
        .fold(_mm256_setzero_si256(), |s, &v| _mm256_add_epi32(s, v));
    _mm256_extract_epi32::<0>(s)
}

/// # Safety
/// AVX-512 F/BW/VNNI must be available (the token proves it).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn peak_vnni(_: Avx512Vnni, iterations: u64, seed: i32, words: bool) -> i32 {
    let mut x = _mm512_set1_epi32(seed);
    let w = _mm512_set1_epi32(seed.rotate_left(7));
    let mut a = [_mm512_setzero_si512(); PEAK_ACC];
    for _ in 0..iterations {
        opaque!(x, zmm_reg);
        for v in a.iter_mut() {
            *v = if words {
                _mm512_dpwssd_epi32(*v, x, w)
            } else {
                _mm512_dpbusd_epi32(*v, x, w)
            };
        }
    }
    _mm512_reduce_add_epi32(
        a.iter()
            .fold(_mm512_setzero_si512(), |s, &v| _mm512_add_epi32(s, v)),
    )
}
