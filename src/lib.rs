//! # fixq — fixed-point quantization of trained CNNs by SQNR
//!
//! `fixq` turns a trained floating-point convolutional network into fixed point with the fewest bits its
//! accuracy allows, and runs it in integers. It follows D. Lin, S. Talathi and V. S. Annapureddy,
//! *Fixed Point Quantization of Deep Convolutional Networks*, ICML 2016 (arXiv:1511.06393).
//!
//! See `docs/design.md` for the map of modules and data flow.
#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod alloc;
pub mod error;
#[cfg(feature = "proptest")]
pub mod testing;

pub use alloc::{
    Allocation, Budget, GapBound, LayerSpec, Solver, SqnrCurve, allocate_bits, allocate_bits_with,
    pareto_front,
};
pub use error::{Error, Result};
