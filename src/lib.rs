//! # fixq — fixed-point quantization of trained CNNs by SQNR
//!
//! `fixq` turns a trained floating-point convolutional network into fixed point with the fewest bits its
//! accuracy allows, and runs it in integers. It follows D. Lin, S. Talathi and V. S. Annapureddy,
//! *Fixed Point Quantization of Deep Convolutional Networks*, ICML 2016 (arXiv:1511.06393).
//!
//! See `docs/design.md` for the map of modules and data flow.
#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod error;
pub mod exec;
pub mod graph;
pub mod io;
#[cfg(feature = "onnx")]
mod onnx;

pub use error::{Error, Result};
pub use exec::FloatExecutor;
pub use graph::Graph;
