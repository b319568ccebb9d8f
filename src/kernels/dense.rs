//! [`Dense`]: a prepared fully connected layer (ONNX `Gemm` with `transB = 1`, PyTorch `Linear`).

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Ix1, Ix2};

use super::conv::{Conv2d, effective_weights};
use super::packed::Geom;
use super::{Activation8or16, KernelChoice, KernelId, OutputStage, Scratch, WeightStorage};
use crate::error::{Error, Result};
use crate::fixed::{QFormat, QTensor};

/// A prepared fixed-point fully connected layer: y_{n,o} = sat(round((b_o + Σₖ x_{n,k}·w_{o,k}) ·
/// 2^−(n_x + n_w(o) − n_y))), weights `[out, in]`. It runs the convolution kernels as a 1×1
/// convolution over a 1×N image (the batch as pixels), so it shares their packing, accumulator rule
/// and rounding.
///
/// # Example
/// ```
/// use fixq::kernels::{Dense, KernelChoice, OutputStage};
/// use fixq::{QFormat, QTensor};
/// use ndarray::array;
/// let w = QTensor::from_codes(array![[1i8, 2, 3], [-1, 0, 1]], QFormat::signed(8, 0)?)?;
/// let d = Dense::<i8, i16>::new(&w, None, QFormat::signed(8, 0)?,
///     OutputStage::new(QFormat::signed(16, 0)?), KernelChoice::Auto)?;
/// let x = QTensor::from_codes(array![[1i8, 1, 1]], QFormat::signed(8, 0)?)?;
/// assert_eq!(d.forward(&x)?.codes(), &array![[6i16, 0]]);
/// # Ok::<(), fixq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Dense<A: Activation8or16, O: Activation8or16> {
    conv: Conv2d<A, O>,
}

impl<A: Activation8or16, O: Activation8or16> Dense<A, O> {
    /// Prepares the layer from `[out, in]` weight codes (per-tensor or per-row formats), an optional
    /// bias in the accumulator formats ([`Dense::bias_formats`]), the input format and output stage.
    ///
    /// # Errors
    /// As [`Conv2d::new`].
    pub fn new<W: WeightStorage>(
        weights: &QTensor<W, Ix2>,
        bias: Option<&QTensor<i32, Ix1>>,
        input_format: QFormat,
        output: OutputStage,
        choice: KernelChoice,
    ) -> Result<Self> {
        let s = weights.codes().shape();
        if s.contains(&0) {
            return Err(Error::InvalidArgument {
                name: "weights shape",
                reason: format!("expected no zero size, found {s:?}"),
            });
        }
        let geom = Geom {
            c_in: s[1],
            c_out: s[0],
            kh: 1,
            kw: 1,
            stride: [1, 1],
            pad: [0; 4],
            dil: [1, 1],
            groups: 1,
        };
        let (w, wfmt) = effective_weights(weights)?;
        let conv = Conv2d::from_parts(geom, w, &wfmt, bias, input_format, output, choice)?;
        Ok(Self { conv })
    }

    /// The accumulator formats the bias must use (see [`Conv2d::bias_formats`]).
    ///
    /// # Errors
    /// As [`Conv2d::bias_formats`].
    pub fn bias_formats<W: WeightStorage>(
        weights: &QTensor<W, Ix2>,
        input_format: QFormat,
    ) -> Result<Vec<QFormat>> {
        super::conv::bias_formats_of(weights, input_format)
    }

    /// The kernel this layer selected.
    pub fn kernel(&self) -> KernelId {
        self.conv.kernel()
    }
    /// The proven accumulator bound (see [`Conv2d::accumulator_bound`]).
    pub fn accumulator_bound(&self) -> i64 {
        self.conv.accumulator_bound()
    }

    /// Runs the layer on `[N, in]` codes, allocating the output.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a wrong format or width; [`Error::InvalidArgument`] for codes
    /// outside the input format; [`Error::Unsupported`] if the output would hold more than
    /// [`super::MAX_ELEMENTS`] elements.
    pub fn forward(&self, x: &QTensor<A, Ix2>) -> Result<QTensor<O, Ix2>> {
        let fin = self.conv.input_format();
        if x.channel_axis().is_some() || x.format() != fin {
            return Err(Error::ShapeMismatch {
                what: "input format".into(),
                expected: format!("per-tensor {fin}"),
                found: format!("{:?}", x.formats()),
            });
        }
        let [n, k] = [x.codes().shape()[0], x.codes().shape()[1]];
        // The batch as the pixels of one 1×N image: checks the width and the output's size first.
        // (An empty batch checks as one row and gives an empty output.)
        let [_, m, _, _] = self.conv.output_shape([1, k, 1, n.max(1)])?;
        let mut out = Array2::<O>::default((n, m));
        self.forward_into(x.codes().view(), out.view_mut(), &mut Scratch::new())?;
        QTensor::from_codes(out, self.conv.output_stage().format)
    }

    /// Runs the layer on `[N, in]` codes into `[N, out]` (standard layout), reusing `scratch`.
    ///
    /// # Errors
    /// As [`Dense::forward`], plus [`Error::InvalidArgument`] for a non-contiguous `out`.
    pub fn forward_into(
        &self,
        x: ArrayView2<'_, A>,
        out: ArrayViewMut2<'_, O>,
        scratch: &mut Scratch,
    ) -> Result<()> {
        let (n, k) = (x.shape()[0], x.shape()[1]);
        let m = self.conv.out_channels();
        if out.shape() != [n, m] {
            return Err(Error::ShapeMismatch {
                what: "dense output shape".into(),
                expected: format!("[{n}, {m}]"),
                found: format!("{:?}", out.shape()),
            });
        }
        let bad = |e: ndarray::ShapeError| Error::InvalidArgument {
            name: "dense operands",
            reason: e.to_string(),
        };
        if n == 0 && k == self.conv.in_channels() {
            return Ok(());
        }
        let x = x.as_standard_layout();
        // The batch runs as the N pixels of one 1×N NHWC image, so the micro-kernel's MR pixel rows
        // share each weight load (a GEMM, not N GEMVs).
        let x4 = x.view().into_shape_with_order((1, 1, n, k)).map_err(bad)?;
        let o4 = out.into_shape_with_order((1, 1, n, m)).map_err(bad)?;
        self.conv.forward_nhwc_into(x4, o4, scratch)
    }
}
