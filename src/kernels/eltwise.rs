//! Element-wise residual [`add`].

use ndarray::{Array, Dimension, RemoveAxis, Zip};

use super::reference::requantize_even_wide;
use super::{Activation8or16, OutputStage};
use crate::error::{Error, Result};
use crate::fixed::QTensor;

/// Largest difference of fractional bits [`add`] accepts between its inputs.
pub const MAX_ADD_FRAC_GAP: i32 = 64;

/// Residual addition y = sat(round(a·2^−n_a + b·2^−n_b) at n_y), correctly rounded.
///
/// Both inputs are first aligned exactly to the finer format n = max(n_a, n_b) (left shifts, 128-bit),
/// summed, and rounded once to the output format (ties to even: an aligning shift of one bit makes
/// every odd sum a tie, and ties toward +∞ would raise the output's mean by a quarter step), then
/// saturated to the output stage (format bits and fused activation). Shapes must be equal (no broadcasting).
///
/// # Errors
/// [`Error::ShapeMismatch`] for different shapes; [`Error::Unsupported`] for per-channel or mid-rise
/// inputs; [`Error::InvalidArgument`] if n_a and n_b differ by more than [`MAX_ADD_FRAC_GAP`], or for
/// output format errors.
///
/// # Example
/// ```
/// use fixq::kernels::{add, OutputStage};
/// use fixq::{QFormat, QTensor};
/// use ndarray::array;
/// let a = QTensor::from_codes(array![3i8, -3], QFormat::signed(8, 1)?)?; // 1.5, -1.5
/// let b = QTensor::from_codes(array![1u8, 1], QFormat::unsigned(8, 2)?)?; // 0.25, 0.25
/// let y = add::<i8, u8, i8, _>(&a, &b, OutputStage::new(QFormat::signed(4, 0)?))?;
/// assert_eq!(y.codes(), &array![2i8, -1]); // 1.75 -> 2, -1.25 -> -1
/// # Ok::<(), fixq::Error>(())
/// ```
pub fn add<
    A: Activation8or16,
    B: Activation8or16,
    O: Activation8or16,
    D: Dimension + RemoveAxis,
>(
    a: &QTensor<A, D>,
    b: &QTensor<B, D>,
    output: OutputStage,
) -> Result<QTensor<O, D>> {
    if a.codes().shape() != b.codes().shape() {
        return Err(Error::ShapeMismatch {
            what: "add operands".into(),
            expected: format!("{:?}", a.codes().shape()),
            found: format!("{:?}", b.codes().shape()),
        });
    }
    let (fa, fb) = (a.format(), b.format());
    if a.channel_axis().is_some() || b.channel_axis().is_some() {
        return Err(Error::Unsupported("add of per-channel formats".into()));
    }
    super::check_input_format::<A>(fa)?;
    super::check_input_format::<B>(fb)?;
    let (na, nb) = (fa.frac_bits(), fb.frac_bits());
    if (na - nb).abs() > MAX_ADD_FRAC_GAP {
        return Err(Error::InvalidArgument {
            name: "add formats",
            reason: format!("fractional bits {na} and {nb} differ by more than {MAX_ADD_FRAC_GAP}"),
        });
    }
    let (lo, hi) = output.code_range::<O>()?;
    let n = na.max(nb);
    let (sa, sb) = ((n - na) as u32, (n - nb) as u32);
    let shift = n - output.format.frac_bits();
    let mut out = Array::<O, D>::default(a.codes().raw_dim());
    Zip::from(&mut out)
        .and(a.codes())
        .and(b.codes())
        .for_each(|o, &x, &y| {
            let v = (i128::from(x.to_code()) << sa) + (i128::from(y.to_code()) << sb);
            *o = O::from_code(requantize_even_wide(v, shift, lo, hi));
        });
    QTensor::from_codes(out, output.format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QFormat;
    use crate::kernels::Activation;
    use ndarray::array;

    #[test]
    fn add_aligns_rounds_and_saturates() {
        let a = QTensor::from_codes(
            array![100i8, -100, 1, -1, 0],
            QFormat::signed(8, 0).unwrap(),
        )
        .unwrap();
        let b = QTensor::from_codes(array![1i16, 1, 1, -1, 3], QFormat::signed(16, 1).unwrap())
            .unwrap();
        // a + b/2 at frac 1: 200.5·2 -> s8 saturates; left shift of the result.
        let y = add::<i8, i16, i16, _>(&a, &b, OutputStage::new(QFormat::signed(12, 1).unwrap()))
            .unwrap();
        assert_eq!(y.codes(), &array![201i16, -199, 3, -3, 3]);
        // Round to frac -1 (step 2): 100.5/2 = 50.25 -> 50; -99.5/2 = -49.75 -> -50; 1.5/2 -> 1 (0.75);
        // -1.5/2 = -0.75 -> -1; 1.5/2 -> 1.
        let y = add::<i8, i16, i8, _>(&a, &b, OutputStage::new(QFormat::signed(8, -1).unwrap()))
            .unwrap();
        assert_eq!(y.codes(), &array![50i8, -50, 1, -1, 1]);
        // Ties to even: 0.5 -> 0, -0.5 -> 0, 1.5 -> 2, -1.5 -> -2, 2.5 -> 2.
        let h =
            QTensor::from_codes(array![1i8, -1, 3, -3, 5], QFormat::signed(8, 1).unwrap()).unwrap();
        let z =
            QTensor::from_codes(array![0u8, 0, 0, 0, 0], QFormat::unsigned(8, 0).unwrap()).unwrap();
        let y =
            add::<i8, u8, i8, _>(&h, &z, OutputStage::new(QFormat::signed(8, 0).unwrap())).unwrap();
        assert_eq!(y.codes(), &array![0i8, 0, 2, -2, 2]);
        // 4-bit output with ReLU.
        let y = add::<i8, i16, i8, _>(
            &a,
            &b,
            OutputStage::new(QFormat::signed(4, 0).unwrap()).with_activation(Activation::Relu),
        )
        .unwrap();
        assert_eq!(y.codes(), &array![7i8, 0, 2, 0, 2]);
        // Shape mismatch.
        let c = QTensor::from_codes(array![1i8], QFormat::signed(8, 0).unwrap()).unwrap();
        assert!(
            add::<i8, i8, i8, _>(&a, &c, OutputStage::new(QFormat::signed(8, 0).unwrap())).is_err()
        );
    }
}
