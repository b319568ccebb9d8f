//! The packed implicit-GEMM driver shared by every fast kernel: weight packing, input packing into a
//! zero-padded NHWC buffer, tiling over (image, group, output-channel block, pixel block) and the
//! output stage. A [`MicroKernel`] only computes one MR × NR tile of i32 accumulators.
//!
//! Weights of group g and output-channel block b are one contiguous run
//! `[tap = (k_y, k_x)][input chunk of KW channels][NR output channels][KW]`, zero-padded in both the
//! output channels (to NR) and the per-group input channels (to a multiple of KW). The input buffer is
//! `[n][H + pad_t + pad_b][W + pad_l + pad_r][groups · C_in/groups rounded up to KW]`, filled with the
//! code of real zero (0, or 128 for i8 activations in the biased-u8 domain).

use super::{Activation8or16, Requant};
use crate::error::{Error, Result};
use crate::fixed::Storage;

/// Largest MR of any micro-kernel (sizes the stack arrays of pixel offsets).
pub(crate) const MAX_MR: usize = 12;
/// Largest NR of any micro-kernel.
pub(crate) const MAX_NR: usize = 32;

/// Offsets (in packed-input elements) the micro-kernel adds to each pixel's base.
#[derive(Debug, Clone)]
pub(crate) struct TileGeo<'a> {
    /// One offset per kernel tap (k_y, k_x), row-major.
    pub taps: &'a [usize],
    /// Number of KW-wide input-channel chunks per tap.
    pub chunks: usize,
    /// Per output pixel j (row-major over OH × OW) of one image: the packed-input offset of its
    /// window's top-left corner, group 0 (precomputed once per call instead of a division per pixel).
    pub pixels: &'a [usize],
    /// The largest entry of `taps` (0 if none); set only by [`TileGeo::new`], so the micro-kernels'
    /// bounds check can trust it.
    max_tap: usize,
}

impl<'a> TileGeo<'a> {
    pub fn new(taps: &'a [usize], chunks: usize, pixels: &'a [usize]) -> Self {
        let max_tap = taps.iter().copied().max().unwrap_or(0);
        Self {
            taps,
            chunks,
            pixels,
            max_tap,
        }
    }
    /// The largest tap offset.
    pub fn max_tap(&self) -> usize {
        self.max_tap
    }
}

/// Packed activation element: `u8` (VNNI) or `i16` (`vpmaddwd`).
pub(crate) trait PackX: Copy + Default + std::fmt::Debug + Send + Sync + 'static {
    fn from_act<A: Activation8or16>(a: A) -> Self;
    fn zero_of<A: Activation8or16>() -> Self;
    fn buffer(s: &mut super::Scratch) -> &mut Vec<Self>;
    const IS_U8: bool;
}
impl PackX for u8 {
    #[inline(always)]
    fn from_act<A: Activation8or16>(a: A) -> Self {
        a.to_u8_biased().unwrap_or(0)
    }
    fn zero_of<A: Activation8or16>() -> Self {
        A::U8_OFFSET as u8
    }
    fn buffer(s: &mut super::Scratch) -> &mut Vec<Self> {
        &mut s.u8s
    }
    const IS_U8: bool = true;
}
impl PackX for i16 {
    #[inline(always)]
    fn from_act<A: Activation8or16>(a: A) -> Self {
        a.to_i16()
    }
    fn zero_of<A: Activation8or16>() -> Self {
        0
    }
    fn buffer(s: &mut super::Scratch) -> &mut Vec<Self> {
        &mut s.i16s
    }
    const IS_U8: bool = false;
}

/// Packed weight element: `i8` or `i16`.
pub(crate) trait PackW: Copy + Default + std::fmt::Debug + Send + Sync + 'static {
    fn from_code(v: i64) -> Self;
}
impl PackW for i8 {
    fn from_code(v: i64) -> Self {
        v as i8
    }
}
impl PackW for i16 {
    fn from_code(v: i64) -> Self {
        v as i16
    }
}

/// Whether a tile's reads stay inside `x` and `w` and its writes inside `acc`.
#[inline(always)]
pub(crate) fn in_bounds<X, W>(
    x: &[X],
    offs: &[usize],
    w: &[W],
    geo: &TileGeo<'_>,
    acc: &[i32],
    (mr, nr, kw): (usize, usize, usize),
) -> bool {
    let max_off = offs.iter().copied().max().unwrap_or(0);
    let max_tap = geo.max_tap();
    (1..=mr).contains(&offs.len())
        && acc.len() >= offs.len() * nr
        && w.len() >= geo.taps.len() * geo.chunks * nr * kw
        && (geo.chunks == 0
            || geo.taps.is_empty()
            || max_off + max_tap + geo.chunks * kw <= x.len())
}

/// A tile whose reads or writes would leave its buffers: an internal invariant of the driver failed.
/// Reported as [`crate::Error::Internal`], never skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TileOutOfBounds(pub &'static str);

impl From<TileOutOfBounds> for crate::Error {
    fn from(e: TileOutOfBounds) -> Self {
        crate::Error::Internal {
            reason: format!("kernel {}: a tile's bounds check failed", e.0),
        }
    }
}

/// One register-blocked tile: `acc[p·NR + c]` = Σ over taps, chunks and KW of x · w, wrapping i32.
pub(crate) trait MicroKernel: Copy + std::fmt::Debug + Send + Sync + 'static {
    /// The kernel's name ([`super::KernelId::name`]).
    const NAME: &'static str;
    type X: PackX;
    type W: PackW;
    const MR: usize;
    const NR: usize;
    const KW: usize;
    /// Runs `f` compiled for this kernel's ISA (a `#[target_feature]` trampoline), so the inlined
    /// driver code around the micro-kernel (packing, requantization) is vectorized for it too.
    #[inline(always)]
    fn in_context<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
    /// `offs.len()` = m ∈ 1..=MR pixels; `w` holds one block; `acc.len() >= MR·NR`; fills
    /// `acc[p·NR + c]` for p < m. Implementations check every bound first ([`in_bounds`]).
    ///
    /// # Errors
    /// [`TileOutOfBounds`] if a read or write would leave its buffer (nothing is written then).
    fn tile(
        &self,
        x: &[Self::X],
        offs: &[usize],
        w: &[Self::W],
        geo: &TileGeo<'_>,
        acc: &mut [i32],
    ) -> Result<(), TileOutOfBounds>;
}

/// Convolution geometry (NCHW sizes, OIHW kernel), validated by the layer constructor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geom {
    pub c_in: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    /// top, left, bottom, right
    pub pad: [usize; 4],
    pub dil: [usize; 2],
    pub groups: usize,
}

impl Geom {
    pub fn cig(&self) -> usize {
        self.c_in / self.groups
    }
    pub fn cog(&self) -> usize {
        self.c_out / self.groups
    }
    /// The dilated kernel (height, width), (k − 1)·dilation + 1, if it fits `usize`.
    fn extent(&self) -> Option<(usize, usize)> {
        let span = |k: usize, d: usize| (k.checked_sub(1)?).checked_mul(d)?.checked_add(1);
        Some((span(self.kh, self.dil[0])?, span(self.kw, self.dil[1])?))
    }

    /// The constructor's checks of strides, dilations, groups, padding and the dilated window
    /// ([`super::MAX_EXTENT`]), so that [`Geom::out_hw`] and the kernels' index arithmetic cannot
    /// overflow.
    pub fn validate(&self) -> Result<()> {
        let at_least_one = |name: &'static str, found: String| Error::InvalidArgument {
            name,
            reason: format!("expected at least 1 in each direction, found {found}"),
        };
        if self.stride.contains(&0) {
            return Err(at_least_one("stride", format!("{:?}", self.stride)));
        }
        if self.dil.contains(&0) {
            return Err(at_least_one("dilation", format!("{:?}", self.dil)));
        }
        if self.groups == 0 {
            return Err(Error::InvalidArgument {
                name: "groups",
                reason: "expected at least 1, found 0".into(),
            });
        }
        let max = super::MAX_EXTENT;
        if self.pad.iter().any(|&p| p > max) {
            return Err(Error::InvalidArgument {
                name: "padding",
                reason: format!(
                    "expected at most {max} pixels on each side (top, left, bottom, right), found {:?}",
                    self.pad
                ),
            });
        }
        if self.extent().is_none_or(|(eh, ew)| eh > max || ew > max) {
            return Err(Error::InvalidArgument {
                name: "dilation",
                reason: format!(
                    "expected a dilated kernel, (k - 1)·dilation + 1, of at most {max} pixels per \
                     axis, found dilation {:?} on a {}x{} kernel",
                    self.dil, self.kh, self.kw
                ),
            });
        }
        Ok(())
    }

    /// Output (height, width) for an NCHW input of `n` images of (h, w) pixels.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for an image of 0 rows or columns, or if the dilated kernel does
    /// not fit the padded input; [`Error::Unsupported`] if a padded image or the output would hold more than
    /// [`super::MAX_ELEMENTS`] elements.
    pub fn out_hw(&self, n: usize, h: usize, w: usize) -> Result<(usize, usize)> {
        let max = super::MAX_ELEMENTS;
        let too_large = |what: &str| {
            Error::Unsupported(format!(
                "convolution of input [{n}, {}, {h}, {w}] padded by {:?}: {what} would hold more \
                 than {max} elements",
                self.c_in, self.pad
            ))
        };
        // Validated at construction: every extent and pad is at most MAX_EXTENT.
        let (eh, ew) = self.extent().ok_or_else(|| Error::Internal {
            reason:
                "a convolution's dilated kernel overflows usize (its geometry was not validated)"
                    .into(),
        })?;
        if h == 0 || w == 0 {
            // Every window would hold padding only (and the packed kernels split the input by image).
            return Err(Error::ShapeMismatch {
                what: "convolution input size".into(),
                expected: "an image of at least 1x1 pixels".into(),
                found: format!("{h}x{w}"),
            });
        }
        let hp = h.checked_add(self.pad[0] + self.pad[2]);
        let wp = w.checked_add(self.pad[1] + self.pad[3]);
        let (Some(hp), Some(wp)) = (hp, wp) else {
            return Err(too_large("the padded image"));
        };
        if hp < eh || wp < ew {
            return Err(Error::ShapeMismatch {
                what: "convolution input size".into(),
                expected: format!("a padded input of at least {eh}x{ew} (the dilated kernel)"),
                found: format!("{hp}x{wp} (input {h}x{w} padded by {:?})", self.pad),
            });
        }
        let within = |dims: &[usize]| {
            dims.iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_some_and(|v| v <= max)
        };
        if !within(&[hp, wp, self.c_in]) {
            return Err(too_large("a padded image"));
        }
        let (oh, ow) = (
            (hp - eh) / self.stride[0] + 1,
            (wp - ew) / self.stride[1] + 1,
        );
        if !within(&[n, self.c_out, oh, ow]) {
            return Err(too_large(&format!(
                "the output [{n}, {}, {oh}, {ow}]",
                self.c_out
            )));
        }
        Ok((oh, ow))
    }
}

/// Output layout of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Nchw,
    Nhwc,
}

/// A slice whose first element sits on a 64-byte boundary (a cache line), in safe code: the
/// buffer is over-allocated by one line and the data starts at the first aligned element. The
/// micro-kernels load weight vectors of 32 or 64 bytes at multiples of 32 or 64 bytes from a
/// block's start; with the 16-byte alignment of a plain allocation, every other 32-byte load (all
/// 64-byte ones) would straddle two cache lines, which made the same layer 0.93-1.44 ms from run
/// to run on the `vpmaddubsw` kernel.
#[derive(Debug)]
pub(crate) struct Aligned64<T> {
    v: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned64<T> {
    pub fn from_slice(data: &[T]) -> Self {
        let pad = 64 / std::mem::size_of::<T>().max(1);
        let mut v = vec![T::default(); data.len() + pad];
        // `align_offset` may return usize::MAX where alignment is impossible; then fall back to 0.
        let off = match v.as_ptr().align_offset(64) {
            o if o <= pad => o,
            _ => 0,
        };
        v[off..off + data.len()].copy_from_slice(data);
        Self {
            v,
            off,
            len: data.len(),
        }
    }
    #[inline(always)]
    pub fn as_slice(&self) -> &[T] {
        &self.v[self.off..self.off + self.len]
    }
}

impl<T: Copy + Default> Clone for Aligned64<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }
}

/// Weights packed for micro-kernel K, plus the bias with the +128 correction folded in.
#[derive(Debug, Clone)]
pub(crate) struct Packed<K: MicroKernel> {
    k: K,
    w: Aligned64<K::W>,
    bias: Vec<i32>,
    cg_pad: usize,
    n_ob: usize,
    block_len: usize,
}

/// Work unit: image n, pixel range [j0, j1) of its output, blocks (g, ob) from `blocks`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unit {
    pub n: usize,
    pub j0: usize,
    pub j1: usize,
    /// Range of flat block indices g·n_ob + ob.
    pub b0: usize,
    pub b1: usize,
}

/// Input-side sizes of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallDims {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

impl<K: MicroKernel> Packed<K> {
    /// Packs OIHW effective weight codes `w` (each fitting K::W) and the i64 bias.
    pub fn new<A: Activation8or16>(k: K, g: &Geom, w: &[i64], bias: &[i64]) -> Self {
        let (cig, cog) = (g.cig(), g.cog());
        let chunks = cig.div_ceil(K::KW);
        let n_ob = cog.div_ceil(K::NR);
        let taps = g.kh * g.kw;
        let block_len = taps * chunks * K::NR * K::KW;
        let mut out = vec![K::W::default(); g.groups * n_ob * block_len];
        for gi in 0..g.groups {
            for ob in 0..n_ob {
                let base = (gi * n_ob + ob) * block_len;
                for t in 0..taps {
                    for ch in 0..chunks {
                        for c in 0..K::NR {
                            for kk in 0..K::KW {
                                let (oc, ic) = (ob * K::NR + c, ch * K::KW + kk);
                                if oc < cog && ic < cig {
                                    let o = gi * cog + oc;
                                    let v = w[(o * cig + ic) * taps + t];
                                    let i = base + ((t * chunks + ch) * K::NR + c) * K::KW + kk;
                                    out[i] = K::W::from_code(v);
                                }
                            }
                        }
                    }
                }
            }
        }
        let off = if K::X::IS_U8 {
            i64::from(A::U8_OFFSET)
        } else {
            0
        };
        let k_len = cig * taps;
        let bias = bias
            .iter()
            .enumerate()
            .map(|(o, &b)| {
                let wsum: i64 = w[o * k_len..(o + 1) * k_len].iter().sum();
                // Wrapping is intended: the final accumulator is exact modulo 2^32 and in range.
                (b - off * wsum) as i32
            })
            .collect();
        Packed {
            k,
            w: Aligned64::from_slice(&out),
            bias,
            cg_pad: chunks * K::KW,
            n_ob,
            block_len,
        }
    }

    pub fn kernel(&self) -> &K {
        &self.k
    }
    pub fn n_blocks(&self, g: &Geom) -> usize {
        g.groups * self.n_ob
    }
    pub fn nr(&self) -> usize {
        K::NR
    }

    /// Packs NCHW (or NHWC) input codes into the padded NHWC buffer (codes already range-checked).
    #[inline(always)]
    pub fn pack_input<A: Activation8or16>(
        &self,
        g: &Geom,
        x: &[A],
        d: &CallDims,
        layout: Layout,
        buf: &mut Vec<K::X>,
    ) {
        let (hp, wp) = (d.h + g.pad[0] + g.pad[2], d.w + g.pad[1] + g.pad[3]);
        let cp = g.groups * self.cg_pad;
        let cig = g.cig();
        buf.clear();
        buf.resize(d.n * hp * wp * cp, K::X::zero_of::<A>());
        let hw = d.h * d.w;
        match layout {
            Layout::Nchw => {
                for n in 0..d.n {
                    for c in 0..g.c_in {
                        let (gi, ic) = (c / cig, c % cig);
                        let src = &x[(n * g.c_in + c) * hw..][..hw];
                        for y in 0..d.h {
                            let row = &src[y * d.w..][..d.w];
                            let dst0 = ((n * hp + y + g.pad[0]) * wp + g.pad[1]) * cp
                                + gi * self.cg_pad
                                + ic;
                            for (o, &v) in buf[dst0..].iter_mut().step_by(cp).zip(row) {
                                *o = K::X::from_act(v);
                            }
                        }
                    }
                }
            }
            Layout::Nhwc => {
                for n in 0..d.n {
                    for y in 0..d.h {
                        for xx in 0..d.w {
                            let src = &x[((n * d.h + y) * d.w + xx) * g.c_in..][..g.c_in];
                            let dst = ((n * hp + y + g.pad[0]) * wp + xx + g.pad[1]) * cp;
                            if self.cg_pad == cig {
                                for (o, &v) in buf[dst..dst + g.c_in].iter_mut().zip(src) {
                                    *o = K::X::from_act(v);
                                }
                            } else {
                                for (gi, chunk) in src.chunks_exact(cig).enumerate() {
                                    let o = &mut buf[dst + gi * self.cg_pad..][..cig];
                                    for (o, &v) in o.iter_mut().zip(chunk) {
                                        *o = K::X::from_act(v);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Runs one work unit, writing into `out`, whose element 0 is element `out_base` of the output.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn run_unit<O: Storage>(
        &self,
        g: &Geom,
        geo: &TileGeo<'_>,
        rq: &Requant,
        xbuf: &[K::X],
        d: &CallDims,
        layout: Layout,
        unit: Unit,
        out: &mut [O],
        out_base: usize,
    ) -> Result<(), TileOutOfBounds> {
        let (hp, wp) = (d.h + g.pad[0] + g.pad[2], d.w + g.pad[1] + g.pad[3]);
        let cp = g.groups * self.cg_pad;
        let how = d.oh * d.ow;
        let cog = g.cog();
        let image = unit.n * hp * wp * cp;
        let mut offs = [0usize; MAX_MR];
        let mut acc = [0i32; MAX_MR * MAX_NR];
        let mut ys = [0i32; MAX_NR];
        for b in unit.b0..unit.b1 {
            let (gi, ob) = (b / self.n_ob, b % self.n_ob);
            let wblk = &self.w.as_slice()[b * self.block_len..(b + 1) * self.block_len];
            let oc0 = gi * cog + ob * K::NR;
            let nr_valid = K::NR.min(cog - ob * K::NR);
            let mut j = unit.j0;
            while j < unit.j1 {
                let m = K::MR.min(unit.j1 - j);
                for (o, &px) in offs.iter_mut().zip(&geo.pixels[j..j + m]) {
                    *o = image + px + gi * self.cg_pad;
                }
                self.k.tile(xbuf, &offs[..m], wblk, geo, &mut acc)?;
                if layout == Layout::Nhwc && nr_valid == K::NR && rq.right_only {
                    // Full channel blocks, right shifts only (the common case): requantize and
                    // store each pixel's NR channels in one fixed-width pass that vectorizes.
                    let bias = &self.bias[oc0..][..K::NR];
                    let (r, r1) = (&rq.r[oc0..][..K::NR], &rq.r1[oc0..][..K::NR]);
                    for p in 0..m {
                        let at = (unit.n * how + j + p) * g.c_out + oc0 - out_base;
                        let dst = &mut out[at..at + K::NR];
                        let a = &acc[p * K::NR..][..K::NR];
                        for c in 0..K::NR {
                            let t = a[c].wrapping_add(bias[c]);
                            let q = (t >> (r[c] & 31)) + ((t >> (r1[c] & 31)) & 1);
                            dst[c] = O::from_i32(q.max(rq.lo_all).min(rq.hi_all));
                        }
                    }
                    j += m;
                    continue;
                }
                for p in 0..m {
                    let jj = j + p;
                    let ys = &mut ys[..nr_valid];
                    rq.apply_block(
                        oc0,
                        &acc[p * K::NR..][..nr_valid],
                        &self.bias[oc0..][..nr_valid],
                        ys,
                    );
                    match layout {
                        Layout::Nhwc => {
                            let at = (unit.n * how + jj) * g.c_out + oc0 - out_base;
                            for (o, &y) in out[at..at + nr_valid].iter_mut().zip(ys.iter()) {
                                *o = O::from_i32(y);
                            }
                        }
                        Layout::Nchw => {
                            let at = (unit.n * g.c_out + oc0) * how + jj - out_base;
                            for (o, &y) in out[at..].iter_mut().step_by(how).zip(ys.iter()) {
                                *o = O::from_i32(y);
                            }
                        }
                    }
                }
                j += m;
            }
        }
        Ok(())
    }

    /// Fills `taps` with the tap offsets for input width `w_in`; returns the chunk count.
    pub fn fill_taps(&self, g: &Geom, w_in: usize, taps: &mut Vec<usize>) -> usize {
        let wp = w_in + g.pad[1] + g.pad[3];
        let cp = g.groups * self.cg_pad;
        taps.clear();
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                taps.push((ky * g.dil[0] * wp + kx * g.dil[1]) * cp);
            }
        }
        self.cg_pad / K::KW
    }

    /// Fills `pixels` with [`TileGeo::pixels`] for the call's sizes.
    pub fn fill_pixels(&self, g: &Geom, d: &CallDims, pixels: &mut Vec<usize>) {
        let wp = d.w + g.pad[1] + g.pad[3];
        let cp = g.groups * self.cg_pad;
        pixels.clear();
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                pixels.push((oy * g.stride[0] * wp + ox * g.stride[1]) * cp);
            }
        }
    }
}
