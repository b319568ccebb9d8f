//! The quantization plan as data: every weight tensor's and activation's fixed-point format, with the
//! predicted figures. [`crate::plan`] makes one; the fixed-point network ([`crate::exec::FixedNetwork`]),
//! the weight files ([`crate::pack`]) and the evaluation read it. Serialises to JSON with feature `serde`.

use crate::error::{Error, Result};
use crate::fixed::QFormat;

/// One weight tensor's plan.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WeightPlan {
    /// The node (Conv, Gemm or MatMul) that uses the weights.
    pub node: String,
    /// The weight initializer's name.
    pub weight: String,
    /// Number of weights (biases excluded, as in the paper's model size).
    pub params: u64,
    /// Output channels.
    pub out_channels: usize,
    /// Width in bits: one entry (per tensor) or one per output channel.
    pub bits: Vec<u32>,
    /// Formats, parallel to `bits`.
    pub formats: Vec<QFormat>,
    /// Predicted SQNR of the whole weight tensor in dB.
    pub predicted_sqnr_db: f64,
    /// Noise gain of this tensor toward the output, in dB (0 = the paper's unit gain): its Eq. 9 term
    /// is `predicted_sqnr_db - gain_db`.
    pub gain_db: f64,
}

impl WeightPlan {
    /// Format of output channel `c`.
    ///
    /// A per-tensor plan answers its one format for every channel. Plans made by [`plan`](crate::plan::plan) or read by
    /// `QuantPlan::from_json` (feature `serde`) hold at least one format; a hand-built one with none answers the signed
    /// 8-bit integer format.
    pub fn format_of_channel(&self, c: usize) -> QFormat {
        self.formats
            .get(c)
            .or_else(|| self.formats.first())
            .copied()
            .unwrap_or(crate::fixed::SIGNED_INT8)
    }
    /// Model bits of this tensor: Σ width × weights per channel (saturating at `u64::MAX`).
    pub fn model_bits(&self) -> u64 {
        let per = self.params / self.bits.len().max(1) as u64;
        self.bits.iter().fold(0u64, |acc, &b| {
            acc.saturating_add(u64::from(b).saturating_mul(per))
        })
    }

    /// Checks what [`plan`](crate::plan::plan) guarantees and a file cannot (JSON, the model file): one
    /// width per format, widths in 1..=16, one format per tensor or one per output channel.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason: String| Error::InvalidArgument {
            name: "plan",
            reason: format!("weight plan of node '{}': {reason}", self.node),
        };
        if self.formats.is_empty() || self.formats.len() != self.bits.len() {
            return Err(bad(format!(
                "needs one or more formats, one per width (found {} formats, {} widths)",
                self.formats.len(),
                self.bits.len()
            )));
        }
        if self.formats.len() != 1 && self.formats.len() != self.out_channels {
            return Err(bad(format!(
                "{} formats for {} output channels (expected 1 or {})",
                self.formats.len(),
                self.out_channels,
                self.out_channels
            )));
        }
        for (c, (&b, f)) in self.bits.iter().zip(&self.formats).enumerate() {
            if b != f.bits() || !(1..=16).contains(&b) {
                return Err(bad(format!(
                    "entry {c}: width {b} with format {f} (widths must be 1..=16 and match the format)"
                )));
            }
        }
        Ok(())
    }
}

/// One activation tensor's plan.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ActivationPlan {
    /// Tensor name (the graph input or a node output).
    pub tensor: String,
    /// Its format.
    pub format: QFormat,
    /// Predicted SQNR in dB from its calibration fit.
    pub predicted_sqnr_db: f64,
    /// Noise gain toward the output in dB (see [`WeightPlan::gain_db`]).
    pub gain_db: f64,
}

/// Every tensor's fixed-point format and the predicted figures. Serialises to JSON with feature `serde`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QuantPlan {
    weights: Vec<WeightPlan>,
    activations: Vec<ActivationPlan>,
    predicted_output_sqnr_db: f64,
}

impl QuantPlan {
    /// A plan from its parts (the planner's constructor).
    pub(crate) fn from_parts(
        weights: Vec<WeightPlan>,
        activations: Vec<ActivationPlan>,
        predicted_output_sqnr_db: f64,
    ) -> Self {
        Self {
            weights,
            activations,
            predicted_output_sqnr_db,
        }
    }
    /// Weight plans in graph order.
    pub fn weights(&self) -> &[WeightPlan] {
        &self.weights
    }
    /// Activation plans in graph order (the input first).
    pub fn activations(&self) -> &[ActivationPlan] {
        &self.activations
    }
    /// The weight plan of node `node`.
    pub fn weight(&self, node: &str) -> Option<&WeightPlan> {
        self.weights.iter().find(|w| w.node == node)
    }
    /// The weight plan of node `node`, or an error naming the node.
    pub(crate) fn require_weight(&self, node: &str) -> Result<&WeightPlan> {
        self.weight(node).ok_or_else(|| Error::InvalidArgument {
            name: "plan",
            reason: format!("the plan has no weights for node '{node}'"),
        })
    }
    /// The activation plan of tensor `tensor`.
    pub fn activation(&self, tensor: &str) -> Option<&ActivationPlan> {
        self.activations.iter().find(|a| a.tensor == tensor)
    }
    /// Total weight bits (the paper's model size), saturating at `u64::MAX`.
    pub fn model_bits(&self) -> u64 {
        self.weights
            .iter()
            .fold(0u64, |acc, w| acc.saturating_add(w.model_bits()))
    }
    /// Total number of weights, saturating at `u64::MAX`.
    pub fn weight_params(&self) -> u64 {
        self.weights
            .iter()
            .fold(0u64, |acc, w| acc.saturating_add(w.params))
    }
    /// Average weight bits per parameter.
    pub fn avg_bits_per_param(&self) -> f64 {
        self.model_bits() as f64 / self.weight_params().max(1) as f64
    }
    /// Predicted output SQNR in dB (Eq. 9 over every weight and activation term).
    pub fn predicted_output_sqnr_db(&self) -> f64 {
        self.predicted_output_sqnr_db
    }

    /// Serialises the plan as pretty JSON.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if serialisation fails (it cannot for a valid plan).
    #[cfg(feature = "serde")]
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::InvalidArgument {
            name: "plan",
            reason: e.to_string(),
        })
    }

    /// Reads a plan from JSON.
    ///
    /// # Errors
    /// [`Error::Malformed`] with the parser's message for invalid JSON or a wrong structure (including a
    /// format outside [`QFormat::new`]'s ranges); [`Error::InvalidArgument`] for a weight plan whose
    /// widths and formats disagree, lie outside 1..=16, or do not match its output channels.
    #[cfg(feature = "serde")]
    pub fn from_json(text: &str) -> Result<Self> {
        let plan: Self = serde_json::from_str(text).map_err(|e| Error::Malformed {
            format: "plan json",
            offset: crate::io::json::serde_error_offset(text, &e),
            reason: e.to_string(),
        })?;
        for w in &plan.weights {
            w.validate()?;
        }
        Ok(plan)
    }
}

impl std::fmt::Display for QuantPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<12} {:>9} {:>10} {:>16} {:>10}",
            "weights", "params", "bits", "format", "SQNR dB"
        )?;
        for w in &self.weights {
            let bits = if w.bits.len() == 1 {
                w.bits[0].to_string()
            } else {
                let lo = w.bits.iter().min().copied().unwrap_or(0);
                let hi = w.bits.iter().max().copied().unwrap_or(0);
                format!(
                    "{lo}..{hi} ({:.2})",
                    w.model_bits() as f64 / w.params.max(1) as f64
                )
            };
            let fmt = if w.formats.len() == 1 {
                w.formats[0].to_string()
            } else {
                format!("{} channels", w.formats.len())
            };
            writeln!(
                f,
                "{:<12} {:>9} {:>10} {:>16} {:>10.2}",
                w.node, w.params, bits, fmt, w.predicted_sqnr_db
            )?;
        }
        writeln!(
            f,
            "{:<12} {:>9} {:>10} {:>16} {:>10}",
            "activations", "", "", "format", "SQNR dB"
        )?;
        for a in &self.activations {
            writeln!(
                f,
                "{:<12} {:>9} {:>10} {:>16} {:>10.2}",
                a.tensor,
                "",
                a.format.bits(),
                a.format.to_string(),
                a.predicted_sqnr_db
            )?;
        }
        write!(
            f,
            "model: {} weight bits ({:.3} per weight), predicted output SQNR {:.2} dB",
            self.model_bits(),
            self.avg_bits_per_param(),
            self.predicted_output_sqnr_db
        )
    }
}
