//! Element-wise functions of one input in integers, as lookup tables over the input's codes:
//! Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu.
//!
//! For an input format with codes `q ∈ [q_min, q_max]` (256 of them at 8 bits, at most 65,536 at
//! 16) the table holds, for every code,
//!
//! T[q] = Q_out(f(value_in(q))),
//!
//! with `f` evaluated in `f64` and `Q_out` the output format's nearest code (ties to even,
//! saturated, [`QFormat::code_of`]). The table is therefore exact: the integer step returns the
//! correctly rounded output for the value its input code stands for, and its error against the
//! float function at that value is at most half an output step (inside the output range).

use std::marker::PhantomData;
use std::sync::Arc;

use super::{Inputs, IntOp};
use crate::error::{Error, Result};
use crate::exec::act::{Act, Code, Visit2, wrong_storage};
use crate::fixed::{QFormat, Rounding};
use crate::graph::Unary;
use crate::kernels::Scratch;

/// The largest input code range a table is built for (16-bit inputs).
const MAX_ENTRIES: i64 = 1 << 16;

/// `f(v)` in `f64`: the definition the tables are built from (the float executor evaluates the
/// same formulas in `f32`).
pub(crate) fn unary_f64(f: Unary, v: f64) -> f64 {
    match f {
        Unary::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        Unary::Tanh => v.tanh(),
        Unary::HardSigmoid { alpha, beta } => {
            (f64::from(alpha) * v + f64::from(beta)).clamp(0.0, 1.0)
        }
        Unary::HardSwish => v * (v / 6.0 + 0.5).clamp(0.0, 1.0),
        Unary::LeakyRelu { alpha } => {
            if v >= 0.0 {
                v
            } else {
                f64::from(alpha) * v
            }
        }
    }
}

/// The output code of `f` at input code `q`: the scalar reference each table entry must equal.
pub(crate) fn reference_code(f: Unary, fi: QFormat, fo: QFormat, q: i64) -> i64 {
    let y = unary_f64(f, fi.value_of(q));
    if y.is_nan() {
        return 0;
    }
    fo.code_of(y, Rounding::NearestEven).0
}

/// The table of `f` from format `fi` to `fo`: entry `q - fi.min_code()` for input code `q`.
///
/// # Errors
/// [`Error::InvalidArgument`] for an input format with more than 2^16 codes.
pub(crate) fn table(f: Unary, fi: QFormat, fo: QFormat) -> Result<Vec<i64>> {
    let (lo, hi) = (fi.min_code(), fi.max_code());
    if hi - lo + 1 > MAX_ENTRIES {
        return Err(Error::InvalidArgument {
            name: "activation format",
            reason: format!("{fi} has more than 2^16 codes: no lookup table is built for it"),
        });
    }
    Ok((lo..=hi).map(|q| reference_code(f, fi, fo, q)).collect())
}

/// Builds the typed lookup step from `A` codes to `O` codes.
pub(super) struct BuildLut(pub Unary, pub QFormat, pub QFormat);

impl Visit2 for BuildLut {
    type Out = Result<Arc<dyn IntOp>>;
    fn visit<A: Code, O: Code>(self) -> Self::Out {
        let BuildLut(f, fi, fo) = self;
        let entries = table(f, fi, fo)?
            .into_iter()
            .map(O::from_code)
            .collect::<Vec<O>>();
        Ok(Arc::new(Lut::<A, O> {
            offset: fi.min_code(),
            entries,
            out: fo,
            _codes: PhantomData,
        }))
    }
}

/// A lookup step: `out[i] = entries[x[i] - offset]`, memory order kept.
#[derive(Debug)]
struct Lut<A, O> {
    offset: i64,
    entries: Vec<O>,
    out: QFormat,
    _codes: PhantomData<fn(A) -> O>,
}

impl<A: Code, O: Code> IntOp for Lut<A, O> {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let a = x.get(0)?;
        let codes = A::view(a).ok_or_else(|| wrong_storage(x.step))?;
        let last = self.entries.len() - 1;
        // Codes the network produced lie in the input format's range: the clamp only guards the
        // index (it never changes a value).
        let y = codes.mapv(|q| {
            let i = (q.to_code() - self.offset).clamp(0, last as i64) as usize;
            self.entries[i]
        });
        Ok(O::wrap(y, self.out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn functions() -> Vec<Unary> {
        vec![
            Unary::Sigmoid,
            Unary::Tanh,
            Unary::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            },
            Unary::HardSwish,
            Unary::LeakyRelu { alpha: 0.1 },
        ]
    }

    /// Every entry is the reference code, and within half an output step of f64 `f` where the
    /// output does not saturate.
    #[test]
    fn tables_are_exact_and_within_half_a_step() {
        let fi = QFormat::signed(8, 5).unwrap();
        let fo = QFormat::signed(8, 6).unwrap();
        for f in functions() {
            let t = table(f, fi, fo).unwrap();
            assert_eq!(t.len(), 256);
            for (i, &c) in t.iter().enumerate() {
                let q = fi.min_code() + i as i64;
                assert_eq!(c, reference_code(f, fi, fo, q), "{f:?} at code {q}");
                let y = unary_f64(f, fi.value_of(q));
                if y > fo.min_value() && y < fo.max_value() {
                    let err = (fo.value_of(c) - y).abs();
                    assert!(err <= fo.step() / 2.0 + 1e-12, "{f:?} at {q}: error {err}");
                } else {
                    assert!(c == fo.min_code() || c == fo.max_code(), "{f:?} at {q}");
                }
            }
        }
        // The sigmoid's table is monotone and spans 0..1 (codes 0..64 at 6 fractional bits).
        let t = table(Unary::Sigmoid, fi, fo).unwrap();
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!((t[0], t[255]), (1, 63));
    }

    #[test]
    fn sixteen_bit_inputs_get_full_tables_and_wider_ones_are_refused() {
        let fi = QFormat::signed(16, 12).unwrap();
        let fo = QFormat::unsigned(8, 8).unwrap();
        let t = table(Unary::Sigmoid, fi, fo).unwrap();
        assert_eq!(t.len(), 65_536);
        assert_eq!(t[32_768], 128); // sigmoid(0) = 0.5 = 128/256
        let wide = QFormat::signed(24, 12).unwrap();
        let e = table(Unary::Tanh, wide, fo).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert!(e.to_string().contains("2^16"), "{e}");
    }
}
