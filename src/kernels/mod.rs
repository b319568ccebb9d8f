//! Integer fixed-point kernels and their ISA-specific compilations.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;
