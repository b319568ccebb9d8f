//! x86-64 feature tokens and the `#[target_feature]` trampolines of the numerics loops.

use super::Body;

/// Proof that this CPU has AVX2 and FMA.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2Fma(());

impl Avx2Fma {
    /// The token, if the CPU has AVX2 and FMA (detection is cached by the standard library).
    #[inline]
    pub(crate) fn new() -> Option<Self> {
        (std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
            .then_some(Self(()))
    }

    /// Runs `body` compiled with AVX2 and FMA enabled.
    #[inline]
    pub(crate) fn vectorize<B: Body>(self, body: B) -> B::Output {
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn trampoline<B: Body>(body: B) -> B::Output {
            body.run()
        }
        // SAFETY: `self` exists only if `new` detected AVX2 and FMA on this CPU.
        unsafe { trampoline(body) }
    }

    /// Runs `f` compiled with AVX2 and FMA enabled (the kernels' drivers inline into it).
    #[inline(always)]
    pub(crate) fn in_context<R>(self, f: impl FnOnce() -> R) -> R {
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn trampoline<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: `self` exists only if `new` detected AVX2 and FMA on this CPU.
        unsafe { trampoline(f) }
    }
}

/// Proof that this CPU has AVX-512 F, BW, VL and VNNI.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512Vnni(());

impl Avx512Vnni {
    /// The token, if the CPU has AVX-512 F/BW/VL/VNNI.
    #[inline]
    pub(crate) fn new() -> Option<Self> {
        (std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni"))
        .then_some(Self(()))
    }

    /// Runs `f` compiled with AVX-512 F/BW/VL/VNNI enabled.
    #[inline(always)]
    pub(crate) fn in_context<R>(self, f: impl FnOnce() -> R) -> R {
        /// # Safety
        /// The CPU must support AVX-512 F, BW, VL and VNNI.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn trampoline<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: `self` exists only if `new` detected these features on this CPU.
        unsafe { trampoline(f) }
    }
}
