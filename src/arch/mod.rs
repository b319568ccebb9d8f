//! Run-time ISA dispatch: the one place that asks the CPU what it can do.
//!
//! A fast path is reached only through a **token**: a zero-sized value that can be constructed only
//! after the CPU feature was detected (`new() -> Option<Self>`), so holding one proves the feature and
//! every later call through it is safe. Two kinds of code use the tokens:
//!
//! * the numerics loops ([`crate::dist`], [`crate::fixed`]): each loop body is written once, portable,
//!   as a `Body` whose `run` is `#[inline(always)]`; `run_best` runs it compiled for the best ISA
//!   this CPU has (AVX2 + FMA on x86-64), which gives the same IEEE operations in the same order per
//!   lane, so the results are bit-identical to the portable compilation;
//! * the integer micro-kernels (`kernels::x86_64`), whose kernel types wrap these tokens.
//!
//! | token | features checked | used by |
//! |---|---|---|
//! | `x86_64::Avx2Fma` | `avx2`, `fma` | numerics; `x86_64-*-avx2` kernels |
//! | `x86_64::Avx512Vnni` | `avx512f`, `avx512bw`, `avx512vl`, `avx512vnni` | `x86_64-*-avx512vnni` kernels |
//!
//! All `#[target_feature]` code of the crate lives in `arch::x86_64` and `kernels::x86_64`; the crate
//! root denies `unsafe_code` everywhere else.

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod x86_64;

/// A loop body written once and compiled per ISA by [`run_best`].
///
/// Implementations mark `run` `#[inline(always)]`, so that it is inlined into (and compiled with the
/// features of) the `#[target_feature]` trampoline that calls it.
pub(crate) trait Body {
    /// What the body computes.
    type Output;
    /// Runs the body.
    fn run(self) -> Self::Output;
}

/// Runs `body` compiled for the best ISA this CPU supports (AVX2 + FMA where present), else portable.
#[inline]
pub(crate) fn run_best<B: Body>(body: B) -> B::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = x86_64::Avx2Fma::new() {
        return t.vectorize(body);
    }
    body.run()
}

/// Names of the fast numerics paths this CPU runs (empty when only the portable one applies).
pub fn numerics_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if x86_64::Avx2Fma::new().is_some() {
        return "avx2+fma";
    }
    "portable"
}
