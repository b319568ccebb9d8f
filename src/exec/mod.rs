//! Executors that run a [`Graph`](crate::graph::Graph).
//!
//! [`FloatExecutor`] is the `f32` reference: it defines what every operator computes, and is the
//! baseline that fixed-point execution is compared with.

pub mod fixed;
pub mod float;
pub(crate) mod ops;

pub use fixed::FixedNetwork;
pub use float::FloatExecutor;
