//! x86-64 compilations and intrinsics. All of the crate's `unsafe` lives under this module.
pub(crate) mod numerics;
