//! Executors that run a [`Graph`](crate::graph::Graph).
//!
//! [`FloatExecutor`] is the `f32` reference: it defines what every operator computes, and is the
//! baseline that fixed-point execution is compared with. [`FixedNetwork`] runs the same graph in
//! integers under a [`crate::quant_plan::QuantPlan`]. Both reach the operators through one table
//! (`ops::family`): one module per op family, float and integer side by side.

mod act;
mod build;
pub mod fixed;
pub mod float;
mod ops;

pub use fixed::FixedNetwork;
pub use float::{FloatExecutor, Gradients, Tape};
pub(crate) use ops::{PositionSampling, clip_code, layer_input_samples, quantize_bias};
