//! Calibration: run the float graph over representative inputs and gather a streaming
//! [`FitAccumulator`] for the graph input and every node output; optionally an exact-error
//! [`Histogram`] of each ([`Calibration::with_histograms`]) and the weighted layers' input moments
//! ([`Calibration::with_layer_inputs`]).
//!
//! Memory stays bounded whatever the number of images: only the accumulators (a few dozen bytes per
//! tensor; the histograms a few hundred KiB) persist between batches. Two calibrations of disjoint data can be merged
//! ([`Calibration::merge`]), so batches may be processed in parallel.
//!
//! # Example
//! ```
//! use fixq::calib::Calibration;
//! use fixq::exec::FloatExecutor;
//! use fixq::graph::{Graph, Node, Op, TensorInfo};
//! use ndarray::{ArrayD, IxDyn};
//!
//! let input = TensorInfo { name: "x".into(), shape: vec![None, Some(4)] };
//! let relu = Node { name: "r".into(), op: Op::Relu, inputs: vec!["x".into()], output: "y".into() };
//! let graph = Graph::new(input, "y", vec![relu], vec![])?;
//! let exec = FloatExecutor::new(&graph);
//! let mut cal = Calibration::new();
//! let batch = ArrayD::from_shape_vec(IxDyn(&[2, 4]), vec![-1.0, 0.5, 2.0, 0.1, 0.3, -0.2, 1.5, 0.7])?;
//! cal.observe(&exec, batch.view())?;
//! assert_eq!(cal.images(), 2);
//! assert!(cal.fit("y")?.is_non_negative());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;

use ndarray::{ArrayD, ArrayViewD};

use crate::dist::{Fit, FitAccumulator};
use crate::error::{Error, Result};
use crate::exec::FloatExecutor;
use crate::hist::Histogram;
use crate::rounding::InputMoments;

/// Progress of a long calibration run, passed to the callback of [`calibrate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Images processed so far.
    pub images_done: u64,
    /// Batches processed so far.
    pub batches_done: u64,
}

/// Activation statistics of a graph, tensor by tensor.
#[derive(Debug, Clone, Default)]
pub struct Calibration {
    input_name: Option<String>,
    tensors: BTreeMap<String, FitAccumulator>,
    images: u64,
    /// Whether [`Calibration::observe`] collects the weighted layers' input moments.
    collect_inputs: bool,
    layer_inputs: Option<InputMoments>,
    /// Whether [`Calibration::observe`] keeps a [`Histogram`] of every tensor.
    collect_histograms: bool,
    histograms: BTreeMap<String, Histogram>,
}

impl Calibration {
    /// An empty calibration.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty calibration that also collects every weighted layer's input moments
    /// ([`InputMoments`]), which error-compensating rounding and bias correction need
    /// ([`crate::plan::PlanConfig::rounding`]). Costs `8·fan_in²` bytes per layer and a Gram product
    /// per batch.
    pub fn with_layer_inputs() -> Self {
        Self {
            collect_inputs: true,
            ..Self::default()
        }
    }

    /// This calibration, set to also keep a [`Histogram`] of every tensor it observes from now on:
    /// what exact-MSE activation steps ([`crate::plan::StepRule::MinDataMse`]) and exact activation
    /// SQNR terms need. Costs 6 KiB per octave a tensor's values reach and about as much time per
    /// value as the moments.
    ///
    /// ```
    /// use fixq::calib::Calibration;
    /// let cal = Calibration::with_layer_inputs().with_histograms();
    /// assert!(cal.histogram("x").is_none()); // nothing observed yet
    /// ```
    pub fn with_histograms(mut self) -> Self {
        self.collect_histograms = true;
        self
    }

    /// The histogram of `tensor`, when collected ([`Calibration::with_histograms`]) over every
    /// image observed.
    pub fn histogram(&self, tensor: &str) -> Option<&Histogram> {
        self.histograms.get(tensor).filter(|h| {
            self.tensors
                .get(tensor)
                .is_some_and(|a| a.count() == h.count())
        })
    }

    /// The weighted layers' input moments, when collected ([`Calibration::with_layer_inputs`]).
    pub fn layer_inputs(&self) -> Option<&InputMoments> {
        self.layer_inputs.as_ref()
    }

    /// Runs `batch` (`[N, ...]`, the graph's input shape) through the float graph, adds the input and
    /// every node output to the statistics, and returns the graph output.
    ///
    /// On error nothing is added.
    ///
    /// # Errors
    /// The executor's errors (shape mismatch), [`Error::NonFinite`] if the input or an activation holds
    /// NaN or ±∞ (naming the tensor), [`Error::Empty`] for an empty batch.
    pub fn observe(
        &mut self,
        exec: &FloatExecutor<'_>,
        batch: ArrayViewD<'_, f32>,
    ) -> Result<ArrayD<f32>> {
        let n = batch.shape().first().copied().unwrap_or(0);
        if n == 0 || batch.is_empty() {
            return Err(Error::Empty {
                what: "calibration batch",
            });
        }
        let input_name = exec.graph().input().name.clone();
        let mut local: BTreeMap<String, FitAccumulator> = BTreeMap::new();
        let mut local_hist: BTreeMap<String, Histogram> = BTreeMap::new();
        let collect_histograms = self.collect_histograms;
        push(&mut local, &input_name, &batch)?;
        if collect_histograms {
            push_histogram(&mut local_hist, &input_name, &batch)?;
        }
        let mut moments = if self.collect_inputs {
            let mut m = InputMoments::for_graph(exec.graph())?;
            m.push(&input_name, &batch)?;
            Some(m)
        } else {
            None
        };
        let mut failure: Option<Error> = None;
        let out = exec.run_with(batch.view(), |name, _, act| {
            if failure.is_none()
                && let Err(e) = push(&mut local, name, act)
            {
                failure = Some(e);
            }
            if failure.is_none()
                && collect_histograms
                && let Err(e) = push_histogram(&mut local_hist, name, act)
            {
                failure = Some(e);
            }
            if failure.is_none()
                && let Some(m) = moments.as_mut()
                && let Err(e) = m.push(name, act)
            {
                failure = Some(e);
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        for (name, acc) in local {
            self.tensors.entry(name).or_default().merge(&acc);
        }
        for (name, h) in local_hist {
            self.histograms.entry(name).or_default().merge(&h);
        }
        if let Some(m) = moments {
            match self.layer_inputs.as_mut() {
                Some(all) => all.merge(&m),
                None => self.layer_inputs = Some(m),
            }
        }
        self.input_name = Some(input_name);
        self.images += n as u64;
        Ok(out)
    }

    /// Merges another calibration (of other images of the same graph) into this one.
    pub fn merge(&mut self, other: &Calibration) {
        for (name, acc) in &other.tensors {
            self.tensors.entry(name.clone()).or_default().merge(acc);
        }
        for (name, h) in &other.histograms {
            self.histograms.entry(name.clone()).or_default().merge(h);
        }
        self.images += other.images;
        match (self.layer_inputs.as_mut(), other.layer_inputs.as_ref()) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.layer_inputs = Some(b.clone()),
            _ => {}
        }
        self.collect_inputs |= other.collect_inputs;
        self.collect_histograms |= other.collect_histograms;
        if self.input_name.is_none() {
            self.input_name.clone_from(&other.input_name);
        }
    }

    /// Number of images observed.
    pub fn images(&self) -> u64 {
        self.images
    }

    /// Names of the tensors with statistics (the graph input and every node output).
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The raw accumulator of `tensor`, if observed.
    pub fn accumulator(&self, tensor: &str) -> Option<&FitAccumulator> {
        self.tensors.get(tensor)
    }

    /// The fitted distribution of `tensor`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the tensor was never observed; the fit's errors (for example
    /// [`Error::ZeroVariance`] for a dead layer whose outputs are all zero).
    pub fn fit(&self, tensor: &str) -> Result<Fit> {
        self.tensors
            .get(tensor)
            .ok_or_else(|| Error::InvalidArgument {
                name: "tensor",
                reason: format!("no calibration statistics for tensor '{tensor}'"),
            })?
            .fit()
    }
}

fn push(
    map: &mut BTreeMap<String, FitAccumulator>,
    name: &str,
    x: &ArrayViewD<'_, f32>,
) -> Result<()> {
    let r = map
        .entry(name.to_string())
        .or_default()
        .push_slice(&contiguous(x));
    r.map_err(|e| match e {
        Error::NonFinite { index, value, .. } => Error::InvalidArgument {
            name: "activation",
            reason: format!(
                "tensor '{name}' holds the non-finite value {value} at flat index {index}"
            ),
        },
        other => other,
    })
}

fn push_histogram(
    map: &mut BTreeMap<String, Histogram>,
    name: &str,
    x: &ArrayViewD<'_, f32>,
) -> Result<()> {
    map.entry(name.to_string())
        .or_default()
        .push_slice(&contiguous(x))
}

/// `x`'s values in logical order: borrowed when it is contiguous, else copied once.
fn contiguous<'a>(x: &'a ArrayViewD<'_, f32>) -> std::borrow::Cow<'a, [f32]> {
    match x.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(x.iter().copied().collect()),
    }
}

/// Calibrates over an iterator of batches, calling `progress` after each one.
///
/// # Errors
/// As [`Calibration::observe`]; [`Error::Empty`] if the iterator yields no batch.
pub fn calibrate<'a, I, P>(exec: &FloatExecutor<'_>, batches: I, progress: P) -> Result<Calibration>
where
    I: IntoIterator<Item = ArrayViewD<'a, f32>>,
    P: FnMut(Progress),
{
    calibrate_with(Calibration::new(), exec, batches, progress)
}

/// As [`calibrate`], adding to `start` (for example [`Calibration::with_layer_inputs`]).
///
/// # Errors
/// As [`calibrate`].
pub fn calibrate_with<'a, I, P>(
    start: Calibration,
    exec: &FloatExecutor<'_>,
    batches: I,
    mut progress: P,
) -> Result<Calibration>
where
    I: IntoIterator<Item = ArrayViewD<'a, f32>>,
    P: FnMut(Progress),
{
    let mut cal = start;
    let mut batches_done = 0;
    for batch in batches {
        cal.observe(exec, batch)?;
        batches_done += 1;
        progress(Progress {
            images_done: cal.images,
            batches_done,
        });
    }
    if batches_done == 0 {
        return Err(Error::Empty {
            what: "calibration batches",
        });
    }
    Ok(cal)
}
