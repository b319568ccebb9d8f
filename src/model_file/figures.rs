//! The plan section (every format with the predicted figures) and the report section (the
//! per-tensor table, predicted and measured), each value written exactly (`f64` as its bits).

use super::wire::{Reader, Writer};
use crate::error::{Error, Result};
use crate::fixed::QFormat;
use crate::quant_plan::{ActivationPlan, QuantPlan, WeightPlan};
use crate::quantize::{Report, TensorRow};

/// Writes the plan section. A weight plan's widths are its formats' widths, so only the formats
/// are written.
///
/// # Errors
/// [`Error::InvalidArgument`] for a weight plan whose widths and formats disagree (the planner never
/// makes one; see [`WeightPlan::validate`]).
pub(crate) fn write_plan(w: &mut Writer, plan: &QuantPlan) -> Result<()> {
    w.count(plan.weights().len(), "weight plans")?;
    for wp in plan.weights() {
        wp.validate()?;
        w.str(&wp.node)?;
        w.str(&wp.weight)?;
        w.u64(wp.params);
        w.usize(wp.out_channels);
        w.formats(&wp.formats)?;
        w.f64(wp.predicted_sqnr_db);
        w.f64(wp.gain_db);
    }
    w.count(plan.activations().len(), "activation plans")?;
    for a in plan.activations() {
        w.str(&a.tensor)?;
        w.format(a.format);
        w.f64(a.predicted_sqnr_db);
        w.f64(a.gain_db);
    }
    w.f64(plan.predicted_output_sqnr_db());
    Ok(())
}

/// Reads the plan section; each weight plan must hold what the planner guarantees (widths in
/// 1..=16; one format or one per output channel).
pub(crate) fn read_plan(r: &mut Reader<'_>) -> Result<QuantPlan> {
    // A weight plan takes at least 4 + 4 + 8 + 8 + 4 + 8 + 8 bytes.
    let n = r.count(44, "weight plans")?;
    let mut weights = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.pos();
        let node = r.str()?;
        let weight = r.str()?;
        let params = r.u64()?;
        let out_channels = r.usize()?;
        let formats = r.formats()?;
        let bits = formats.iter().map(|f| f.bits()).collect();
        let wp = WeightPlan {
            node,
            weight,
            params,
            out_channels,
            bits,
            formats,
            predicted_sqnr_db: r.f64()?,
            gain_db: r.f64()?,
        };
        wp.validate().map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => r.err_at(at, reason),
            other => other,
        })?;
        weights.push(wp);
    }
    // An activation plan takes at least 4 + 4 + 8 + 8 bytes.
    let n = r.count(24, "activation plans")?;
    let mut activations = Vec::with_capacity(n);
    for _ in 0..n {
        activations.push(ActivationPlan {
            tensor: r.str()?,
            format: r.format()?,
            predicted_sqnr_db: r.f64()?,
            gain_db: r.f64()?,
        });
    }
    let predicted = r.f64()?;
    Ok(QuantPlan::from_parts(weights, activations, predicted))
}

/// The formats `plan` gives the tensor of a report row: a weight plan's, or an activation's one.
fn planned_formats<'p>(plan: &'p QuantPlan, name: &str, weights: bool) -> Option<&'p [QFormat]> {
    if weights {
        plan.weight(name).map(|w| &w.formats[..])
    } else {
        plan.activation(name)
            .map(|a| std::slice::from_ref(&a.format))
    }
}

/// Writes the report section. A row's formats are written as one byte 1 where they are the plan's
/// for that tensor (always, for a model [`crate::quantize()`] made), else as 0 and the list.
pub(crate) fn write_report(w: &mut Writer, report: &Report, plan: &QuantPlan) -> Result<()> {
    w.count(report.tensors.len(), "report rows")?;
    for t in &report.tensors {
        w.str(&t.name)?;
        w.bool(t.weights);
        w.f64(t.bits);
        if planned_formats(plan, &t.name, t.weights) == Some(&t.formats[..]) {
            w.bool(true);
        } else {
            w.bool(false);
            w.formats(&t.formats)?;
        }
        w.f64(t.predicted_sqnr_db);
        w.f64(t.measured_sqnr_db);
    }
    w.u64(report.model_bits);
    w.f64(report.avg_bits_per_param);
    w.f64(report.predicted_output_sqnr_db);
    w.f64(report.measured_output_sqnr_db);
    w.usize(report.probe_images);
    Ok(())
}

/// Reads the report section, with `plan` for the rows whose formats are the plan's.
pub(crate) fn read_report(r: &mut Reader<'_>, plan: &QuantPlan) -> Result<Report> {
    // A row takes at least 4 + 1 + 8 + 1 + 8 + 8 bytes.
    let n = r.count(30, "report rows")?;
    let mut tensors = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str()?;
        let weights = r.bool()?;
        let bits = r.f64()?;
        let at = r.pos();
        let formats = if r.bool()? {
            planned_formats(plan, &name, weights)
                .ok_or_else(|| {
                    r.err_at(
                        at,
                        format!(
                            "row '{name}' takes the plan's formats, and the plan has none for it"
                        ),
                    )
                })?
                .to_vec()
        } else {
            // A list the plan would give is written as the flag (the one encoding).
            let f = r.formats()?;
            if planned_formats(plan, &name, weights) == Some(&f[..]) {
                return Err(r.err_at(at, format!("row '{name}' lists the plan's formats")));
            }
            f
        };
        tensors.push(TensorRow {
            name,
            weights,
            bits,
            formats,
            predicted_sqnr_db: r.f64()?,
            measured_sqnr_db: r.f64()?,
        });
    }
    Ok(Report {
        tensors,
        model_bits: r.u64()?,
        avg_bits_per_param: r.f64()?,
        predicted_output_sqnr_db: r.f64()?,
        measured_output_sqnr_db: r.f64()?,
        probe_images: r.usize()?,
    })
}
