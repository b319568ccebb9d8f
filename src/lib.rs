//! # fixq — fixed-point quantization of trained CNNs by SQNR
//!
//! `fixq` turns a trained floating-point convolutional network into fixed point with the fewest bits its
//! accuracy allows, and runs it in integers. It follows D. Lin, S. Talathi and V. S. Annapureddy,
//! *Fixed Point Quantization of Deep Convolutional Networks*, ICML 2016 (arXiv:1511.06393).
//!
//! # The model, in equations
//! 1. A b-bit uniform quantizer with step Δ covers a range ≈ Δ·2ᵇ (Eq. 1). For a known density there is
//!    one optimal Δ per b ([`table::optimal_step`]); its SQNR grows about κ dB per bit (Eq. 2,
//!    [`table::kappa_db_per_bit`]).
//! 2. Each tensor's density is fitted ([`dist::fit`]); its effective standard deviation ξ scales the
//!    unit-variance step, and the fractional bits follow as n = −⌈log₂(ξ·Stepsize(b))⌉
//!    ([`QFormat::paper_rule`]) or by exact expected error ([`QFormat::min_expected_mse`]).
//! 3. Quantization noise of weights and activations adds across layers (Eq. 6, 9):
//!    1/SQNR_out = Σᵢ 1/SQNRᵢ ([`sqnr::network_db`]).
//!
//! # Modules
//! * [`table`] — optimal uniform quantizers per density family and bit-width.
//! * [`dist`] — density families, fitting, streaming accumulators.
//! * [`fixed`] — [`QFormat`], rounding, [`Quantizer`], [`QTensor`].
//! * [`sqnr`] — measure, predict, aggregate.
//! * [`alloc`] — [`allocate_bits`]: exact bit allocation for an SQNR target or a size budget (Eq. 11).
//! * [`kernels`] — integer kernels: [`kernels::Conv2d`], [`kernels::Dense`], pooling, residual add,
//!   with x86-64 SIMD paths bit-exact to a scalar reference.
//! * [`graph`], [`exec`], `onnx` — ONNX import (`Graph::from_onnx_file`, feature `onnx`), the float reference
//!   executor and the fixed-point network ([`exec::FixedNetwork`]).
//! * [`calib`], [`plan`], [`eval`], [`pack`] — calibration, the [`plan::QuantPlan`], measurement on
//!   real data, and bit-packed weight files.
//! * [`io`] — IDX, `.npy` and `.safetensors` readers.
//! * [`quantize()`] — the one-call facade: graph + calibration images + budget → [`QuantizedModel`].
//! * [`model_file`] — the self-contained `.fixq` file: [`QuantizedModel::save`] / [`QuantizedModel::load`].
//! * `export` — `QuantizedModel::to_onnx_qdq` (feature `onnx`): the quantized model as a standard
//!   QDQ ONNX model for onnxruntime and other runtimes (`docs/export.md`).
//!
//! # Features
//! * `onnx` (default) — ONNX import and QDQ export, with a hand-written protobuf reader and writer (no
//!   `protoc`).
//! * `gzip` (default) — gzip-compressed IDX files.
//! * `serde` — JSON for plans and formats.
//! * `rayon` — multi-threaded kernels.
//! * `proptest` — `testing`: strategies and invariants for downstream property tests.
//!
//! See `docs/design.md` for the map of modules and data flow.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod alloc;
pub mod arch;
pub mod calib;
pub mod dist;
pub mod error;
pub mod eval;
pub mod exec;
#[cfg(feature = "onnx")]
mod export;
pub mod fixed;
pub mod graph;
pub mod hist;
pub mod io;
pub mod kernels;
pub mod model_file;
#[cfg(feature = "onnx")]
mod onnx;
pub mod pack;
pub mod plan;
pub mod quant_plan;
pub mod quantize;
pub mod rounding;
pub mod sqnr;
pub mod table;
#[cfg(feature = "proptest")]
pub mod testing;

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use alloc::{
    Allocation, Budget, GapBound, LayerSpec, Solver, SqnrCurve, allocate_bits, allocate_bits_with,
    pareto_front,
};
pub use dist::{Fit, FitAccumulator};
pub use error::{Error, Result};
pub use exec::FloatExecutor;
#[cfg(feature = "onnx")]
pub use export::{QDQ_BASE_OPSET, QDQ_WIDE_OPSET};
pub use fixed::{Grid, QFormat, QTensor, Quantizer, Rounding, Storage};
pub use graph::Graph;
pub use quantize::{QuantizeOptions, QuantizedModel, Report, quantize, quantize_with_progress};
pub use table::Family;
