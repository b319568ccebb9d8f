//! Integer fixed-point kernels: prepared [`Conv2d`] and [`Dense`] layers, pooling, residual [`add`].
//!
//! # The arithmetic, in equations
//! A tensor in [`QFormat`] with `frac_bits` n stores x ≈ q·2⁻ⁿ (mid-tread). For a convolution or a
//! dense layer with input codes xₖ (format n_x), weight codes w_{o,k} (format n_w(o), per output
//! channel o) and bias codes b_o:
//!
//! 1. **Accumulate** (exact, integer): a_o = b_o + Σₖ xₖ·w_{o,k}, with `frac_bits` n_acc(o) = n_x + n_w(o).
//!    The bias must already be in that accumulator format ([`Conv2d::bias_formats`]).
//! 2. **Requantize** to the output format n_y with shift s_o = n_acc(o) − n_y:
//!    for s > 0, y = ⌊(a + 2^(s−1)) / 2^s⌋ (round to nearest, **ties toward +∞**; a tie needs the
//!    low s bits of the accumulator to be exactly 10…0, rare at the shifts of a weighted layer. The
//!    element-wise [`add`] and the average pools, whose small shifts and divisors make ties
//!    frequent, round ties to even instead, so that they add no mean error);
//!    for s ≤ 0, y = a·2^(−s) (exact left shift).
//! 3. **Saturate** to the output format's codes (its bit-width, not the storage type: a 4-bit signed
//!    output saturates at −8..=7), intersected with the fused [`Activation`] (ReLU, clip).
//!
//! Every kernel — the scalar reference ([`reference`](mod@reference)) and every SIMD path — implements exactly these
//! three steps, so their outputs are bit-identical; the tests compare them with `assert_eq!`.
//!
//! Mid-rise weights ((q+½)·2⁻ⁿ) run as the odd integers 2q+1 at n+1 fractional bits
//! ([`QFormat::as_mid_tread_odd`]). Activations must be mid-tread.
//!
//! # Accumulator safety (the overflow rule)
//! At construction each layer bounds every partial sum of output channel o by
//! B_o = max|x|·Σₖ|w_{o,k}| + |b_o| ≤ K·max|x|·max|w| + |b_o|, where max|x| comes from the input
//! format's bit-width and K is the reduction length (C_in/groups·k_h·k_w). If max_o B_o ≤ 2³¹−1 the
//! i32 kernels are exact. Otherwise the layer uses the 64-bit reference path (named `reference-i64`);
//! if even B_o > 2⁶² the constructor returns [`Error::AccumulatorOverflow`]. Nothing ever wraps
//! silently. Input codes outside the declared input format are rejected at run time (the pass that
//! packs the input checks them), so the bound holds for every accepted input.
//!
//! # Kernels
//! | name | ISA | instruction | types |
//! |---|---|---|---|
//! | `reference-i64` | any | scalar | all, i64 accumulator |
//! | `portable-u8i8i32` | any | scalar, packed like VNNI | u8/i8 × i8 (≤ 8-bit weights) |
//! | `portable-i16i16i32` | any | scalar, packed like `vpmaddwd` | all |
//! | `x86_64-u8i8i32-avx2` | AVX2 | `vpmovsxbw` + `vpmaddwd` + `vpaddd` | u8/i8 × i8 (≤ 8-bit weights) |
//! | `x86_64-u8i8i16-avx2` | AVX2 | `vpmaddubsw` + `vpaddw`, widened by `vpmaddwd` | u8/i8 × i8 with 2·x_max·w_max ≤ 32,767 |
//! | `x86_64-i16i16i32-avx2` | AVX2 | `vpmaddwd` + `vpaddd` | all (u8/i8 widened to i16) |
//! | `x86_64-u8i8i32-avx512vnni` | AVX-512 VNNI | `vpdpbusd` | u8/i8 × i8 (≤ 8-bit weights) |
//! | `x86_64-i16i16i32-avx512vnni` | AVX-512 VNNI | `vpdpwssd` | all |
//!
//! [`KernelChoice::Auto`] picks the first of the x86-64 kernels this CPU supports that fits the
//! layer's types and accumulator bound, else `portable-*`. The environment variable `FIXQ_KERNEL`
//! narrows `Auto`: `reference` makes it pick the reference (for determinism checks), and a
//! comma-separated list of kernel names makes it pick the first kernel of its usual order that is
//! in the list (else the reference), e.g.
//! `FIXQ_KERNEL=x86_64-u8i8i16-avx2,x86_64-u8i8i32-avx2,x86_64-i16i16i32-avx2` runs what a CPU
//! without AVX-512 would.
//!
//! Hazards, declared: `vpmaddubsw` (AVX2 u8×i8) saturates its i16 pair sums (255·127·2 > 2¹⁵−1), so
//! `x86_64-u8i8i16-avx2` is chosen only for layers where it cannot: packed activations in 0..=x_max
//! (the input format's largest code, +128 for i8) and the layer's actual weight codes |w| ≤ w_max
//! with 2·x_max·w_max ≤ 32,767 (for 8-bit activations: ≤ 7-bit weights mid-tread, ≤ 6-bit
//! mid-rise). Its i16 sums run over ⌊32,767 / (2·x_max·w_max)⌋ k-steps (at most 64) before
//! widening, so `vpaddw` cannot wrap either (4-bit weights: 8 steps). The other AVX2 kernels widen
//! to i16 and use `vpmaddwd`, whose only overflow ((−2¹⁵)²·2 = 2³¹) is excluded by the accumulator
//! bound. `vpdpbusd` has no signed×signed form, so i8
//! activations run as x+128 ∈ [0, 255] (padding value 128), and the constant 128·Σₖw_{o,k} is
//! subtracted through the bias; intermediate sums may wrap modulo 2³² but the final value equals the
//! bounded true sum, so it is exact.
//!
//! # Layouts
//! The public boundary is NCHW activations and OIHW weights (ONNX / PyTorch). Layers pack weights once
//! into `[group][C_out/NR][k_h][k_w][C_in/KW][NR][KW]` and, per call, the input once into a
//! zero-padded NHWC buffer held by a reusable [`Scratch`]. [`Conv2d::forward_nhwc_into`] accepts and
//! produces NHWC so an executor can stay NHWC between layers.

mod conv;
mod dense;
mod eltwise;
mod packed;
mod pool;
mod portable;
pub mod reference;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod x86_64;

pub(crate) use conv::bias_formats_of;
pub use conv::{Conv2d, Conv2dParams};
pub use dense::Dense;
pub use eltwise::{AddPlan, MAX_ADD_FRAC_GAP, Rescale, add};
pub use pool::{Pool2dParams, avg_pool2d, global_avg_pool, max_pool2d};

use crate::error::{Error, Result};
use crate::fixed::{Grid, QFormat, Storage};

/// The largest padding on one side and the largest dilated window, (k − 1)·dilation + 1, in pixels,
/// that [`Conv2d::new`] accepts: 2^24 (the graph's `MAX_INPUT_DIM`). Larger values are refused at
/// construction, so the layer's size arithmetic cannot overflow.
pub const MAX_EXTENT: usize = 1 << 24;

/// The largest number of elements a kernel call pads an image plane to or produces: 2^31 (the graph's
/// `MAX_TENSOR_ELEMENTS`). A call past it returns [`Error::Unsupported`] before allocating.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Activation code types the kernels accept and produce: `i8`, `u8` and `i16`.
pub trait Activation8or16: Storage + Ord + private::Sealed {
    /// The code widened to `i16` (the `vpmaddwd` paths).
    fn to_i16(self) -> i16;
    /// The code as `u8` for `vpdpbusd`: unchanged for `u8`, x+128 for `i8`. `None` for `i16`.
    fn to_u8_biased(self) -> Option<u8>;
    /// 128 for `i8` (the offset added by [`Activation8or16::to_u8_biased`]), 0 otherwise.
    const U8_OFFSET: i32;
}

/// Weight code types: `i8` (bit-widths 2..=8) and `i16`.
pub trait WeightStorage: Storage + private::Sealed {}

mod private {
    pub trait Sealed {}
    impl Sealed for i8 {}
    impl Sealed for u8 {}
    impl Sealed for i16 {}
}

impl Activation8or16 for i8 {
    #[inline(always)]
    fn to_i16(self) -> i16 {
        i16::from(self)
    }
    #[inline(always)]
    fn to_u8_biased(self) -> Option<u8> {
        Some((self as u8) ^ 0x80)
    }
    const U8_OFFSET: i32 = 128;
}
impl Activation8or16 for u8 {
    #[inline(always)]
    fn to_i16(self) -> i16 {
        i16::from(self)
    }
    #[inline(always)]
    fn to_u8_biased(self) -> Option<u8> {
        Some(self)
    }
    const U8_OFFSET: i32 = 0;
}
impl Activation8or16 for i16 {
    #[inline(always)]
    fn to_i16(self) -> i16 {
        self
    }
    #[inline(always)]
    fn to_u8_biased(self) -> Option<u8> {
        None
    }
    const U8_OFFSET: i32 = 0;
}
impl WeightStorage for i8 {}
impl WeightStorage for i16 {}

/// Which kernel a layer may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// The fastest kernel this CPU supports for the layer's types and accumulator bound (see the
    /// module docs); the reference if the environment variable `FIXQ_KERNEL` is `reference`, and
    /// only kernels it names if it is a comma-separated list of kernel names.
    #[default]
    Auto,
    /// Always the scalar 64-bit reference (the executable specification).
    Reference,
    /// Exactly this kernel. Construction fails with [`Error::Unsupported`] if the CPU lacks it or it
    /// does not fit the layer's types or accumulator bound.
    Force(KernelId),
}

/// The kernels, by ISA and types. [`KernelId::name`] gives the `{arch}-{x}{w}{acc}-{isa}` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KernelId {
    /// Scalar, 64-bit accumulator, NCHW: the executable specification.
    Reference,
    /// Portable scalar over the VNNI packing (u8 activations, i8 weights; i8 activations via +128).
    PortableU8I8,
    /// Portable scalar over the `vpmaddwd` packing (i16 × i16 pairs).
    PortableI16I16,
    /// AVX2 `vpmaddwd`, 8 output channels × 2 inputs per ymm, 6 pixels × 16 channels per tile.
    Avx2I16I16,
    /// AVX2 for u8/i8 activations × i8 weights: weights kept as i8 and sign-extended on load
    /// (`vpmovsxbw`), activations widened to i16 when packed, then `vpmaddwd` as [`KernelId::Avx2I16I16`].
    Avx2U8I8,
    /// AVX2 for u8/i8 activations × narrow i8 weights: `vpmaddubsw` (u8 × i8 pairs into i16, 32 MACs
    /// per instruction), i16 partial sums over as many k-steps as the formats and the layer's weight
    /// codes prove exact, then widened with `vpmaddwd`; 4 pixels × 16 channels. Fits a layer only if
    /// 2·x_max·w_max ≤ 32,767 (for 8-bit activations: |w| ≤ 64, i.e. ≤ 7-bit weights mid-tread).
    Avx2U8I8I16,
    /// AVX-512 VNNI `vpdpbusd`, 16 output channels × 4 inputs per zmm, 12 pixels × 32 channels.
    Avx512VnniU8I8,
    /// AVX-512 VNNI `vpdpwssd`, 16 output channels × 2 inputs per zmm, 12 pixels × 32 channels.
    Avx512VnniI16I16,
}

impl KernelId {
    /// Every kernel, reference first.
    pub const ALL: [KernelId; 8] = [
        KernelId::Reference,
        KernelId::PortableU8I8,
        KernelId::PortableI16I16,
        KernelId::Avx2I16I16,
        KernelId::Avx2U8I8,
        KernelId::Avx2U8I8I16,
        KernelId::Avx512VnniU8I8,
        KernelId::Avx512VnniI16I16,
    ];

    /// The order in which [`KernelChoice::Auto`] tries the packed kernels (fastest first); the
    /// reference is the fallback.
    pub const AUTO_ORDER: [KernelId; 7] = [
        KernelId::Avx512VnniU8I8,
        KernelId::Avx512VnniI16I16,
        KernelId::Avx2U8I8I16,
        KernelId::Avx2U8I8,
        KernelId::Avx2I16I16,
        KernelId::PortableU8I8,
        KernelId::PortableI16I16,
    ];

    /// Which codes the kernel multiplies.
    pub(crate) fn codes(self) -> KernelCodes {
        match self {
            KernelId::Reference => KernelCodes::Any,
            KernelId::PortableU8I8 | KernelId::Avx2U8I8 | KernelId::Avx512VnniU8I8 => {
                KernelCodes::U8I8
            }
            KernelId::Avx2U8I8I16 => KernelCodes::U8I8Narrow,
            KernelId::PortableI16I16 | KernelId::Avx2I16I16 | KernelId::Avx512VnniI16I16 => {
                KernelCodes::I16I16
            }
        }
    }

    /// The kernel's name, e.g. `x86_64-u8i8i32-avx512vnni`.
    pub fn name(self) -> &'static str {
        match self {
            KernelId::Reference => "reference-i64",
            KernelId::PortableU8I8 => "portable-u8i8i32",
            KernelId::PortableI16I16 => "portable-i16i16i32",
            KernelId::Avx2I16I16 => "x86_64-i16i16i32-avx2",
            KernelId::Avx2U8I8 => "x86_64-u8i8i32-avx2",
            KernelId::Avx2U8I8I16 => "x86_64-u8i8i16-avx2",
            KernelId::Avx512VnniU8I8 => "x86_64-u8i8i32-avx512vnni",
            KernelId::Avx512VnniI16I16 => "x86_64-i16i16i32-avx512vnni",
        }
    }

    /// Whether this CPU can run the kernel (detected at run time).
    pub fn is_supported(self) -> bool {
        match self {
            KernelId::Reference | KernelId::PortableU8I8 | KernelId::PortableI16I16 => true,
            #[cfg(target_arch = "x86_64")]
            KernelId::Avx2I16I16 => x86_64::Avx2I16::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            KernelId::Avx2U8I8 => x86_64::Avx2I8::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            KernelId::Avx2U8I8I16 => x86_64::Avx2I8::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            KernelId::Avx512VnniU8I8 => x86_64::Avx512VnniU8::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            KernelId::Avx512VnniI16I16 => x86_64::Avx512VnniI16::new().is_some(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Runs `iterations` rounds of kernel `id`'s multiply-accumulate instruction mix on register
/// operands (12 independent accumulators, no memory traffic) and returns the multiply-accumulates
/// done, so a benchmark can time it and report a kernel's speed as a fraction of this CPU's peak
/// for its mix (docs/kernels.md, "Peak"). `None` for the scalar kernels, or if this CPU lacks the
/// kernel's instructions.
///
/// The mixes: `vpmaddwd` + `vpaddd` on ymm (16 MACs per pair) for `x86_64-i16i16i32-avx2` and
/// `x86_64-u8i8i32-avx2`; `vpmaddubsw` + `vpaddw` on ymm (32 MACs), widened every 8 rounds, for
/// `x86_64-u8i8i16-avx2`; `vpdpbusd` (64 MACs) and `vpdpwssd` (32 MACs) on zmm for the VNNI kernels.
///
/// # Example
/// ```
/// use fixq::kernels::{peak_loop, KernelId};
/// assert_eq!(peak_loop(KernelId::Reference, 1000), None);
/// if KernelId::Avx2U8I8.is_supported() {
///     assert_eq!(peak_loop(KernelId::Avx2U8I8, 1000), Some(1000 * 12 * 16));
/// }
/// ```
pub fn peak_loop(id: KernelId, iterations: u64) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::peak_loop(id.name(), iterations, 0x0103_0507)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (id, iterations);
        None
    }
}

/// The codes a kernel takes: what the layer's formats must fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelCodes {
    /// Any activation and weight codes, 64-bit accumulator (the reference).
    Any,
    /// u8 (or i8 via +128) activations × i8 weights, i32 accumulator.
    U8I8,
    /// As `U8I8`, and 2·x_max·w_max ≤ 32,767 for the biased activation codes and the layer's
    /// actual weight codes (`vpmaddubsw` cannot saturate).
    U8I8Narrow,
    /// i16 × i16 pairs, i32 accumulator.
    I16I16,
}

impl std::fmt::Display for KernelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An activation fused into the output stage, applied after requantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// No activation: saturate to the output format only.
    #[default]
    Identity,
    /// max(y, 0).
    Relu,
    /// clamp(y, min, max), bounds in output codes (e.g. ReLU6: `max = fmt.code_of(6.0, …).0`).
    Clip {
        /// Lower bound, in output codes.
        min: i64,
        /// Upper bound, in output codes.
        max: i64,
    },
}

/// The output stage of a layer: the output format and a fused activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputStage {
    /// Output format; results saturate to its code range.
    pub format: QFormat,
    /// Activation fused after requantization.
    pub activation: Activation,
}

impl OutputStage {
    /// An output stage with no activation.
    pub fn new(format: QFormat) -> Self {
        Self {
            format,
            activation: Activation::Identity,
        }
    }
    /// The same stage with `activation`.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// The output code range [lo, hi]: the format's range intersected with the activation's.
    pub(crate) fn code_range<O: Storage>(&self) -> Result<(i64, i64)> {
        let f = self.format;
        if f.grid() != Grid::MidTread {
            return Err(Error::Unsupported(format!(
                "output format {f} is mid-rise; integer outputs must be mid-tread"
            )));
        }
        if f.min_code() < O::MIN || f.max_code() > O::MAX {
            return Err(Error::InvalidArgument {
                name: "output format",
                reason: format!("{f} does not fit in {}", O::NAME),
            });
        }
        let (mut lo, mut hi) = (f.min_code(), f.max_code());
        match self.activation {
            Activation::Identity => {}
            Activation::Relu => lo = lo.max(0),
            Activation::Clip { min, max } => {
                lo = lo.max(min);
                hi = hi.min(max);
            }
        }
        if lo > hi {
            return Err(Error::InvalidArgument {
                name: "activation",
                reason: format!(
                    "{:?} leaves no code of output format {f} ({}..={})",
                    self.activation,
                    f.min_code(),
                    f.max_code()
                ),
            });
        }
        Ok((lo, hi))
    }
}

/// Reusable scratch memory for the packed input (so repeated calls do not allocate once warm).
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    pub(crate) u8s: Vec<u8>,
    pub(crate) i16s: Vec<i16>,
    pub(crate) taps: Vec<usize>,
    pub(crate) pixels: Vec<usize>,
}

impl Scratch {
    /// Empty scratch; it grows to the largest layer it serves.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Checks that an input format fits storage `A` and is mid-tread.
pub(crate) fn check_input_format<A: Storage>(f: QFormat) -> Result<()> {
    if f.grid() != Grid::MidTread {
        return Err(Error::Unsupported(format!(
            "input format {f} is mid-rise; activations must be mid-tread"
        )));
    }
    if f.min_code() < A::MIN || f.max_code() > A::MAX {
        return Err(Error::InvalidArgument {
            name: "input format",
            reason: format!("{f} does not fit in {}", A::NAME),
        });
    }
    Ok(())
}

/// Per-output-channel requantization, precomputed for branch-free i32 arithmetic.
///
/// For accumulator a (exact, |a| ≤ 2³¹−1) the fast paths compute
/// t = a & keep; q = (t >> r) + ((t >> r₁) & m); q = clamp(q, pre_lo, pre_hi) << l;
/// y = clamp(q, lo, hi), which equals [`reference::requantize`] (no intermediate overflows: the
/// rounding never adds 2^(r−1)).
#[derive(Debug, Clone, Default)]
pub(crate) struct Requant {
    pub keep: Vec<i32>,
    pub r: Vec<u32>,
    pub r1: Vec<u32>,
    pub m: Vec<i32>,
    pub pre_lo: Vec<i32>,
    pub pre_hi: Vec<i32>,
    pub l: Vec<u32>,
    pub lo: Vec<i32>,
    pub hi: Vec<i32>,
    /// The shifts s_o themselves, for the reference path.
    pub shift: Vec<i32>,
    /// Every s_o is in 1..=31 (the common case): the short form applies.
    pub right_only: bool,
    /// Output bounds (equal for all channels).
    pub lo_all: i32,
    pub hi_all: i32,
}

/// Largest left shift applied literally; larger shifts saturate every non-zero value anyway because
/// output codes are below 2¹⁷.
const MAX_LEFT: u32 = 24;

impl Requant {
    pub(crate) fn new(shifts: &[i32], lo: i64, hi: i64) -> Self {
        let (lo32, hi32) = (lo as i32, hi as i32);
        let mut q = Requant {
            right_only: shifts.iter().all(|s| (1..=31).contains(s)),
            lo_all: lo32,
            hi_all: hi32,
            ..Requant::default()
        };
        for &s in shifts {
            q.shift.push(s);
            q.lo.push(lo32);
            q.hi.push(hi32);
            if s > 0 {
                let big = s >= 32;
                q.keep.push(if big { 0 } else { -1 });
                let r = if big { 0 } else { s as u32 };
                q.r.push(r);
                q.r1.push(r.saturating_sub(1));
                q.m.push(i32::from(r > 0));
                q.l.push(0);
                q.pre_lo.push(i32::MIN);
                q.pre_hi.push(i32::MAX);
            } else {
                let l = (-s as u32).min(MAX_LEFT);
                q.keep.push(-1);
                q.r.push(0);
                q.r1.push(0);
                q.m.push(0);
                q.l.push(l);
                // clamp(q, pre_lo, pre_hi) << l saturates exactly like (q << l) would.
                let p = 1i64 << l;
                q.pre_lo
                    .push((lo.div_euclid(p) - 1).max(i64::from(i32::MIN >> l)) as i32);
                q.pre_hi
                    .push((hi.div_euclid(p) + 1).min(i64::from(i32::MAX >> l)) as i32);
            }
        }
        q
    }

    /// Requantizes `acc[c] + bias[c]` (wrapping: exact for bounded sums) of channels `c0 + c` into
    /// `ys` — lane-wise i32 arithmetic that vectorizes (variable shifts: `vpsravd`/`vpsllvd`).
    #[inline(always)]
    pub(crate) fn apply_block(&self, c0: usize, acc: &[i32], bias: &[i32], ys: &mut [i32]) {
        let n = ys.len();
        let (acc, bias) = (&acc[..n], &bias[..n]);
        if self.right_only {
            // Short form: keep = −1, m = 1, l = 0, no pre-clamp.
            let (r, r1) = (&self.r[c0..][..n], &self.r1[c0..][..n]);
            let (lo, hi) = (self.lo_all, self.hi_all);
            for c in 0..n {
                let t = acc[c].wrapping_add(bias[c]);
                let q = (t >> (r[c] & 31)) + ((t >> (r1[c] & 31)) & 1);
                ys[c] = q.max(lo).min(hi);
            }
            return;
        }
        let (keep, r, r1, m) = (
            &self.keep[c0..][..n],
            &self.r[c0..][..n],
            &self.r1[c0..][..n],
            &self.m[c0..][..n],
        );
        let (plo, phi, l) = (
            &self.pre_lo[c0..][..n],
            &self.pre_hi[c0..][..n],
            &self.l[c0..][..n],
        );
        let (lo, hi) = (&self.lo[c0..][..n], &self.hi[c0..][..n]);
        for c in 0..n {
            let t = acc[c].wrapping_add(bias[c]) & keep[c];
            // r, r1 ≤ 31 and l ≤ 24 by construction.
            let q = (t >> (r[c] & 31)) + ((t >> (r1[c] & 31)) & m[c]);
            let q = q.max(plo[c]).min(phi[c]) << (l[c] & 31);
            ys[c] = q.max(lo[c]).min(hi[c]);
        }
    }
}

/// The largest |code| of a format.
pub(crate) fn max_abs_code(f: &QFormat) -> i64 {
    f.min_code().abs().max(f.max_code().abs())
}
