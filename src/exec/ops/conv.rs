//! Weighted layers: Conv, Gemm and MatMul with constant weights. Float: im2col + sgemm. Integer:
//! [`Conv2d`] / [`Dense`] with the bias in the accumulator's format and a following Relu/Clip fused
//! into the output stage.

use std::sync::Arc;

use ndarray::linalg::general_mat_mul;
use ndarray::{
    Array1, Array2, Array4, ArrayD, ArrayView2, ArrayViewD, ArrayViewMut2, Ix1, Ix2, Ix4, IxDyn,
    Zip,
};

use super::{
    Grad, Inputs, IntOp, Lower, Lowered, OpFamily, clip_code, contiguous, dims4, reduce_to_shape,
    shape_err, valid_range,
};
use crate::error::{Error, Result};
use crate::exec::act::Act;
use crate::exec::act::{Code, Kind, Visit2, dispatch2, wrong_storage};
use crate::fixed::{QFormat, QTensor, Quantizer};
use crate::graph::Op;
use crate::kernels::{
    Activation, Conv2d, Conv2dParams, Dense, KernelChoice, KernelId, OutputStage, Scratch,
};
use crate::pack::WeightCodes;

/// Conv, Gemm, MatMul.
pub(super) struct Weighted;

impl OpFamily for Weighted {
    fn eval_float(
        &self,
        op: &Op,
        x: &[ArrayViewD<'_, f32>],
        out_shape: &[usize],
    ) -> Result<ArrayD<f32>> {
        match op {
            Op::Conv {
                stride,
                pad,
                dilation,
                groups,
            } => conv2d(
                &x[0],
                &x[1],
                x.get(2),
                *stride,
                *pad,
                *dilation,
                *groups,
                out_shape,
            ),
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => gemm(&x[0], &x[1], x.get(2), *alpha, *beta, *trans_a, *trans_b),
            _ => matmul(&x[0], &x[1], out_shape),
        }
    }

    fn vjp_float(&self, op: &Op, g: &Grad<'_, '_>) -> Result<Vec<Option<ArrayD<f32>>>> {
        let mut out: Vec<Option<ArrayD<f32>>> = vec![None; g.x.len()];
        match op {
            Op::Conv {
                stride,
                pad,
                dilation,
                groups,
            } => {
                if g.needs(1) || g.needs(2) {
                    return Err(Error::Unsupported(
                        "Conv: backward pass to non-constant weights or bias".into(),
                    ));
                }
                if g.needs(0) {
                    out[0] = Some(conv2d_input_grad(
                        &g.dy,
                        &g.x[1],
                        g.x[0].shape(),
                        *stride,
                        *pad,
                        *dilation,
                        *groups,
                    )?);
                }
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                let dy =
                    g.dy.view()
                        .into_dimensionality::<Ix2>()
                        .map_err(shape_err)?;
                let a = g.x[0]
                    .view()
                    .into_dimensionality::<Ix2>()
                    .map_err(shape_err)?;
                let b = g.x[1]
                    .view()
                    .into_dimensionality::<Ix2>()
                    .map_err(shape_err)?;
                let opb = if *trans_b { b.reversed_axes() } else { b };
                let opa = if *trans_a { a.reversed_axes() } else { a };
                if g.needs(0) {
                    // d op(A) = α·dY·op(B)ᵀ.
                    let d = dy.dot(&opb.t()) * *alpha;
                    out[0] = Some(
                        if *trans_a { d.reversed_axes() } else { d }
                            .as_standard_layout()
                            .into_owned()
                            .into_dyn(),
                    );
                }
                if g.needs(1) {
                    let d = opa.t().dot(&dy) * *alpha;
                    out[1] = Some(
                        if *trans_b { d.reversed_axes() } else { d }
                            .as_standard_layout()
                            .into_owned()
                            .into_dyn(),
                    );
                }
                if g.needs(2) {
                    let c = reduce_to_shape(&g.dy, g.x[2].shape())?;
                    out[2] = Some(c * *beta);
                }
            }
            _ => {
                // a [..., M, K] x b [K, N] (or batched b [..., K, N]).
                let (ra, rb) = (g.x[0].ndim(), g.x[1].ndim());
                let (m, k, n) = (
                    g.x[0].shape()[ra - 2],
                    g.x[0].shape()[ra - 1],
                    g.x[1].shape()[rb - 1],
                );
                let batch: usize = g.x[0].shape()[..ra - 2].iter().product();
                let dy = contiguous(&g.dy);
                let av = contiguous(&g.x[0]);
                let bv = contiguous(&g.x[1]);
                let (mut da, mut db) = (vec![0f32; batch * m * k], vec![0f32; bv.len()]);
                for i in 0..batch {
                    let dyi = ArrayView2::from_shape((m, n), &dy[i * m * n..(i + 1) * m * n])
                        .map_err(shape_err)?;
                    let bo = if rb == 2 { 0 } else { i * k * n };
                    let bi =
                        ArrayView2::from_shape((k, n), &bv[bo..bo + k * n]).map_err(shape_err)?;
                    if g.needs(0) {
                        let mut d =
                            ArrayViewMut2::from_shape((m, k), &mut da[i * m * k..(i + 1) * m * k])
                                .map_err(shape_err)?;
                        general_mat_mul(1.0, &dyi, &bi.t(), 0.0, &mut d);
                    }
                    if g.needs(1) {
                        let ai = ArrayView2::from_shape((m, k), &av[i * m * k..(i + 1) * m * k])
                            .map_err(shape_err)?;
                        let mut d = ArrayViewMut2::from_shape((k, n), &mut db[bo..bo + k * n])
                            .map_err(shape_err)?;
                        general_mat_mul(1.0, &ai.t(), &dyi, 1.0, &mut d);
                    }
                }
                if g.needs(0) {
                    out[0] =
                        Some(ArrayD::from_shape_vec(IxDyn(g.x[0].shape()), da).map_err(shape_err)?);
                }
                if g.needs(1) {
                    out[1] =
                        Some(ArrayD::from_shape_vec(IxDyn(g.x[1].shape()), db).map_err(shape_err)?);
                }
            }
        }
        Ok(out)
    }

    fn lower_fixed(&self, cx: &Lower<'_>) -> Result<Lowered> {
        let node = cx.node;
        let (lw, wc) = cx
            .weights
            .ok_or_else(|| cx.unsupported("weights not found"))?;
        let in_fmt = cx.in_format()?;
        // The output stage: the fused Relu/Clip's output format and bounds, or the layer's own.
        let (out_tensor, activation) = match cx.fused {
            None => (&node.output, None),
            Some(next) => (&next.output, Some(&next.op)),
        };
        let of = cx.format_of(out_tensor)?;
        let act = match activation {
            None => Activation::Identity,
            Some(Op::Relu) => Activation::Relu,
            Some(Op::Clip { min, max }) => Activation::Clip {
                min: clip_code(of, f64::from(*min), true),
                max: clip_code(of, f64::from(*max), false),
            },
            Some(_) => return Err(cx.unsupported("unexpected fused op")),
        };
        let stage = OutputStage::new(of).with_activation(act);
        let bias = quantize_bias(&lw.bias, wc, in_fmt, &node.name)?;
        let (kin, kout) = (Kind::of(in_fmt)?, Kind::of(of)?);
        let op: Arc<dyn IntOp> = match &node.op {
            Op::Conv {
                stride,
                pad,
                dilation,
                groups,
            } => {
                let build = BuildConv {
                    weights: wc.codes.clone().into_dimensionality::<Ix4>()?,
                    bias,
                    in_fmt,
                    stage,
                    params: Conv2dParams {
                        stride: *stride,
                        padding: *pad,
                        dilation: *dilation,
                        groups: *groups,
                    },
                    choice: cx.choice,
                };
                dispatch2(kin, kout, build)?
            }
            _ => {
                if cx.out_shape.len() != 2 {
                    return Err(
                        cx.unsupported("only 2-D (batch x features) products run in integers")
                    );
                }
                let build = BuildDense {
                    weights: wc.codes.clone().into_dimensionality::<Ix2>()?,
                    bias,
                    in_fmt,
                    stage,
                    choice: cx.choice,
                    out_features: lw.matrix.nrows(),
                };
                dispatch2(kin, kout, build)?
            }
        };
        Ok(Lowered {
            op,
            format: of,
            observed: cx.fused.is_none(),
        })
    }
}

/// Bias codes at each output channel's accumulator format (n_x + n_w(o) fractional bits): what the
/// layer adds to its accumulator (the ONNX export writes the same codes).
pub(crate) fn quantize_bias(
    bias: &[f32],
    w: &WeightCodes,
    in_fmt: QFormat,
    node: &str,
) -> Result<QTensor<i32, Ix1>> {
    let formats = crate::kernels::bias_formats_of(&w.codes, in_fmt)?;
    let b = Array1::from(bias.to_vec());
    let q = if formats.windows(2).all(|p| p[0] == p[1]) {
        Quantizer::<i32>::new(formats[0])?.quantize(b.view())?
    } else {
        Quantizer::<i32>::per_channel(0, formats)?.quantize(b.view())?
    };
    if q.saturated() > 0 {
        return Err(Error::AccumulatorOverflow {
            reason: format!(
                "node '{node}': {} bias values do not fit a 32-bit accumulator at n_x + n_w fractional bits",
                q.saturated()
            ),
        });
    }
    Ok(q)
}

struct BuildConv {
    weights: QTensor<i8, Ix4>,
    bias: QTensor<i32, Ix1>,
    in_fmt: QFormat,
    stage: OutputStage,
    params: Conv2dParams,
    choice: KernelChoice,
}

impl Visit2 for BuildConv {
    type Out = Result<Arc<dyn IntOp>>;
    fn visit<A: Code, O: Code>(self) -> Self::Out {
        let conv = Conv2d::<A, O>::new(
            &self.weights,
            Some(&self.bias),
            self.in_fmt,
            self.stage,
            self.params,
            self.choice,
        )?;
        Ok(Arc::new(ConvStep(conv)))
    }
}

/// A convolution. Activations are logically NCHW; convolutions keep them NHWC in memory (an
/// NCHW-shaped view with permuted strides), so consecutive layers and the max pools between them need
/// no transposes. A one-channel NCHW input is already NHWC in memory; any other input is copied by the
/// kernel.
#[derive(Debug)]
struct ConvStep<A: Code, O: Code>(Conv2d<A, O>);

impl<A: Code, O: Code> IntOp for ConvStep<A, O> {
    fn run(&self, x: &mut Inputs<'_>, scratch: &mut Scratch) -> Result<Act> {
        let xv = A::view(x.get(0)?).ok_or_else(|| wrong_storage(x.step))?;
        let x4 = xv.into_dimensionality::<Ix4>()?;
        let s = x4.shape();
        let [n, co, oh, ow] = self.0.output_shape([s[0], s[1], s[2], s[3]])?;
        let mut out = Array4::<O>::default([n, oh, ow, co]);
        self.0
            .forward_nhwc_into(x4.permuted_axes([0, 2, 3, 1]), out.view_mut(), scratch)?;
        Ok(O::wrap(
            out.permuted_axes([0, 3, 1, 2]).into_dyn(),
            self.0.output_stage().format,
        ))
    }
    fn kernel(&self) -> Option<KernelId> {
        Some(self.0.kernel())
    }
}

struct BuildDense {
    weights: QTensor<i8, Ix2>,
    bias: QTensor<i32, Ix1>,
    in_fmt: QFormat,
    stage: OutputStage,
    choice: KernelChoice,
    out_features: usize,
}

impl Visit2 for BuildDense {
    type Out = Result<Arc<dyn IntOp>>;
    fn visit<A: Code, O: Code>(self) -> Self::Out {
        let dense = Dense::<A, O>::new(
            &self.weights,
            Some(&self.bias),
            self.in_fmt,
            self.stage,
            self.choice,
        )?;
        Ok(Arc::new(DenseStep {
            dense,
            out_features: self.out_features,
            format: self.stage.format,
        }))
    }
}

/// A Gemm or MatMul on `[batch, features]`.
#[derive(Debug)]
struct DenseStep<A: Code, O: Code> {
    dense: Dense<A, O>,
    out_features: usize,
    format: QFormat,
}

impl<A: Code, O: Code> IntOp for DenseStep<A, O> {
    fn run(&self, x: &mut Inputs<'_>, scratch: &mut Scratch) -> Result<Act> {
        let xv = A::view(x.get(0)?).ok_or_else(|| wrong_storage(x.step))?;
        let x2 = xv.into_dimensionality::<Ix2>()?;
        let mut out = Array2::<O>::default((x2.shape()[0], self.out_features));
        self.dense.forward_into(x2, out.view_mut(), scratch)?;
        Ok(O::wrap(out.into_dyn(), self.format))
    }
    fn kernel(&self) -> Option<KernelId> {
        Some(self.dense.kernel())
    }
}

// ---------------------------------------------------------------- f32

/// Fills `cols` (`[cg * kh * kw, oh * ow]`, row-major) with the receptive fields of one image's group.
#[allow(clippy::too_many_arguments)]
pub(super) fn im2col(
    x: &[f32],
    [cg, h, w]: [usize; 3],
    [kh, kw]: [usize; 2],
    [oh, ow]: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    cols: &mut [f32],
) {
    let p = oh * ow;
    let (sh, sw) = (stride[0], stride[1]);
    for ci in 0..cg {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            let (oy_lo, oy_hi) = valid_range(oh, h, sh, ky * dilation[0], pad[0]);
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                let dst = &mut cols[row * p..(row + 1) * p];
                let off_x = kx * dilation[1];
                let (ox_lo, ox_hi) = valid_range(ow, w, sw, off_x, pad[1]);
                dst[..oy_lo * ow].fill(0.0);
                dst[oy_hi * ow..].fill(0.0);
                for oy in oy_lo..oy_hi {
                    let iy = oy * sh + ky * dilation[0] - pad[0];
                    let src = &plane[iy * w..(iy + 1) * w];
                    let d = &mut dst[oy * ow..(oy + 1) * ow];
                    d[..ox_lo].fill(0.0);
                    d[ox_hi..].fill(0.0);
                    if ox_hi > ox_lo {
                        let ix0 = ox_lo * sw + off_x - pad[1];
                        if sw == 1 {
                            d[ox_lo..ox_hi].copy_from_slice(&src[ix0..ix0 + (ox_hi - ox_lo)]);
                        } else {
                            for (k, v) in d[ox_lo..ox_hi].iter_mut().enumerate() {
                                *v = src[ix0 + k * sw];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds the receptive-field columns `cols` (`[cg * kh * kw, oh * ow]`) back onto one image's group
/// `x` (`[cg, h, w]`): the adjoint of [`im2col`].
#[allow(clippy::too_many_arguments)]
pub(super) fn col2im_add(
    cols: &[f32],
    [cg, h, w]: [usize; 3],
    [kh, kw]: [usize; 2],
    [oh, ow]: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    x: &mut [f32],
) {
    let p = oh * ow;
    let (sh, sw) = (stride[0], stride[1]);
    for ci in 0..cg {
        let plane = &mut x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            let (oy_lo, oy_hi) = valid_range(oh, h, sh, ky * dilation[0], pad[0]);
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                let src = &cols[row * p..(row + 1) * p];
                let off_x = kx * dilation[1];
                let (ox_lo, ox_hi) = valid_range(ow, w, sw, off_x, pad[1]);
                if ox_hi <= ox_lo {
                    continue;
                }
                for oy in oy_lo..oy_hi {
                    let iy = oy * sh + ky * dilation[0] - pad[0];
                    let dst = &mut plane[iy * w..(iy + 1) * w];
                    let ix0 = ox_lo * sw + off_x - pad[1];
                    let run = &src[oy * ow + ox_lo..oy * ow + ox_hi];
                    if sw == 1 {
                        // Contiguous: a plain slice add, which vectorizes.
                        for (d, &v) in dst[ix0..ix0 + run.len()].iter_mut().zip(run) {
                            *d += v;
                        }
                    } else {
                        for (k, &v) in run.iter().enumerate() {
                            dst[ix0 + k * sw] += v;
                        }
                    }
                }
            }
        }
    }
}

/// ∂L/∂x of [`conv2d`] given ∂L/∂y (`dy [N,O,oh,ow]`): per image and group, Wᵀ·dY, then
/// [`col2im_add`].
pub(super) fn conv2d_input_grad(
    dy: &ArrayViewD<'_, f32>,
    w: &ArrayViewD<'_, f32>,
    x_shape: &[usize],
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
) -> Result<ArrayD<f32>> {
    let [n, c, h, wd] = dims4(x_shape);
    let [o, cg, kh, kw] = dims4(w.shape());
    let [_, _, oh, ow] = dims4(dy.shape());
    let (og, k, p) = (o / groups, cg * kh * kw, oh * ow);
    let dys = contiguous(dy);
    let ws = contiguous(w);
    let pointwise = kh == 1 && kw == 1 && stride == [1, 1] && pad == [0; 4];
    let mut dx = vec![0f32; n * c * h * wd];
    let mut cols = vec![0f32; k * p];
    for img in 0..n {
        for g in 0..groups {
            let lhs = ArrayView2::from_shape((og, k), &ws[g * og * k..(g + 1) * og * k])
                .map_err(shape_err)?;
            let d = ArrayView2::from_shape(
                (og, p),
                &dys[(img * o + g * og) * p..(img * o + (g + 1) * og) * p],
            )
            .map_err(shape_err)?;
            let xg = &mut dx[(img * c + g * cg) * h * wd..(img * c + (g + 1) * cg) * h * wd];
            if pointwise {
                let mut dst = ArrayViewMut2::from_shape((k, p), xg).map_err(shape_err)?;
                general_mat_mul(1.0, &lhs.t(), &d, 0.0, &mut dst);
            } else {
                let mut dst =
                    ArrayViewMut2::from_shape((k, p), &mut cols[..]).map_err(shape_err)?;
                general_mat_mul(1.0, &lhs.t(), &d, 0.0, &mut dst);
                col2im_add(
                    &cols,
                    [cg, h, wd],
                    [kh, kw],
                    [oh, ow],
                    stride,
                    pad,
                    dilation,
                    xg,
                );
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(x_shape), dx).map_err(shape_err)
}

/// 2-D convolution, `x [N,C,H,W]`, `w [O,C/g,kh,kw]`, optional `b [O]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv2d(
    x: &ArrayViewD<'_, f32>,
    w: &ArrayViewD<'_, f32>,
    b: Option<&ArrayViewD<'_, f32>>,
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
    let [n, c, h, wd] = dims4(x.shape());
    let [o, cg, kh, kw] = dims4(w.shape());
    let [_, _, oh, ow] = dims4(out_shape);
    let (og, k, p) = (o / groups, cg * kh * kw, oh * ow);
    let xs = contiguous(x);
    let ws = contiguous(w);
    let bias = b.map(contiguous);
    let pointwise = kh == 1 && kw == 1 && stride == [1, 1] && pad == [0; 4];
    let mut out = vec![0f32; n * o * p];
    let mut cols = vec![0f32; if pointwise { 0 } else { k * p }];
    for img in 0..n {
        for g in 0..groups {
            let xin = &xs[(img * c + g * cg) * h * wd..(img * c + (g + 1) * cg) * h * wd];
            let rhs = if pointwise {
                ArrayView2::from_shape((k, p), xin).map_err(shape_err)?
            } else {
                im2col(
                    xin,
                    [cg, h, wd],
                    [kh, kw],
                    [oh, ow],
                    stride,
                    pad,
                    dilation,
                    &mut cols,
                );
                ArrayView2::from_shape((k, p), &cols[..]).map_err(shape_err)?
            };
            let lhs = ArrayView2::from_shape((og, k), &ws[g * og * k..(g + 1) * og * k])
                .map_err(shape_err)?;
            let dst = &mut out[(img * o + g * og) * p..(img * o + (g + 1) * og) * p];
            let beta = match &bias {
                Some(bias) => {
                    for (row, &bv) in dst
                        .chunks_exact_mut(p.max(1))
                        .zip(&bias[g * og..(g + 1) * og])
                    {
                        row.fill(bv);
                    }
                    1.0
                }
                None => 0.0,
            };
            let mut dst = ArrayViewMut2::from_shape((og, p), dst).map_err(shape_err)?;
            general_mat_mul(1.0, &lhs, &rhs, beta, &mut dst);
        }
    }
    ArrayD::from_shape_vec(IxDyn(out_shape), out).map_err(shape_err)
}

/// `alpha * op(a) * op(b) + beta * c`.
pub(super) fn gemm(
    a: &ArrayViewD<'_, f32>,
    b: &ArrayViewD<'_, f32>,
    c: Option<&ArrayViewD<'_, f32>>,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
) -> Result<ArrayD<f32>> {
    let a = a.view().into_dimensionality::<Ix2>().map_err(shape_err)?;
    let b = b.view().into_dimensionality::<Ix2>().map_err(shape_err)?;
    let a = if trans_a { a.reversed_axes() } else { a };
    let b = if trans_b { b.reversed_axes() } else { b };
    let (m, n) = (a.nrows(), b.ncols());
    let mut out = ndarray::Array2::<f32>::zeros((m, n));
    let mut keep = 0.0;
    if let (Some(c), true) = (c, beta != 0.0) {
        let cb = c.broadcast(IxDyn(&[m, n])).ok_or_else(|| {
            shape_err(ndarray::ShapeError::from_kind(
                ndarray::ErrorKind::IncompatibleShape,
            ))
        })?;
        Zip::from(out.view_mut().into_dyn())
            .and(&cb)
            .for_each(|o, &v| *o = beta * v);
        keep = 1.0;
    }
    general_mat_mul(alpha, &a, &b, keep, &mut out);
    Ok(out.into_dyn())
}

/// `a [..., M, K] x b [K, N]` or batched `b [..., K, N]` with a's leading dimensions.
pub(super) fn matmul(
    a: &ArrayViewD<'_, f32>,
    b: &ArrayViewD<'_, f32>,
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
    let (ra, rb) = (a.ndim(), b.ndim());
    let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
    let batch: usize = a.shape()[..ra - 2].iter().product();
    let av = contiguous(a);
    let bv = contiguous(b);
    let mut out = vec![0f32; batch * m * n];
    if rb == 2 {
        let lhs = ArrayView2::from_shape((batch * m, k), &av[..]).map_err(shape_err)?;
        let rhs = ArrayView2::from_shape((k, n), &bv[..]).map_err(shape_err)?;
        let mut dst = ArrayViewMut2::from_shape((batch * m, n), &mut out[..]).map_err(shape_err)?;
        general_mat_mul(1.0, &lhs, &rhs, 0.0, &mut dst);
    } else {
        for i in 0..batch {
            let lhs = ArrayView2::from_shape((m, k), &av[i * m * k..(i + 1) * m * k])
                .map_err(shape_err)?;
            let rhs = ArrayView2::from_shape((k, n), &bv[i * k * n..(i + 1) * k * n])
                .map_err(shape_err)?;
            let mut dst = ArrayViewMut2::from_shape((m, n), &mut out[i * m * n..(i + 1) * m * n])
                .map_err(shape_err)?;
            general_mat_mul(1.0, &lhs, &rhs, 0.0, &mut dst);
        }
    }
    ArrayD::from_shape_vec(IxDyn(out_shape), out).map_err(shape_err)
}

/// Which output positions of a convolution [`layer_input_samples`] passes on, per image.
///
/// The Gram matrix of a layer with fan-in k costs k² multiply-adds per sample, and a 32×32 layer
/// has 1,024 positions per image; far fewer already estimate it well. Positions are kept, per
/// image, up to `max(min_per_image, ⌈k·per_fan_in⌉)`: with more, every s-th position is passed
/// (s the smallest stride that meets the cap), starting at `(offset + image) mod s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PositionSampling {
    /// Positions kept per image at least (all of them where there are fewer).
    pub min_per_image: usize,
    /// Positions kept per image per input of the fan-in.
    pub per_fan_in: f64,
    /// Rotates the first position kept (e.g. the number of images already seen).
    pub offset: usize,
}

impl PositionSampling {
    /// The stride between positions kept, for `p` positions per image and fan-in `k`.
    fn stride(&self, p: usize, k: usize) -> usize {
        let cap = self
            .min_per_image
            .max((k as f64 * self.per_fan_in).ceil() as usize)
            .max(1);
        p.div_ceil(cap).max(1)
    }
}

/// The input samples a weighted layer multiplies its weights with, as one matrix per channel group:
/// `f(group, samples, rows)` receives `samples` row-major `[rows, fan_in]`, one row per output
/// position (Conv: the receptive field of each output pixel of each image, zero padding included, in
/// the weights' `(c, ky, kx)` order; Gemm: each input row; MatMul: each row of the flattened leading
/// dimensions). `w_shape` is the weight initializer's shape (`[O, C/g, kh, kw]` for Conv).
///
/// A convolution with more output positions per image than `sampling` allows passes every s-th
/// position only ([`PositionSampling`]); Gemm and MatMul pass every row.
///
/// # Errors
/// [`Error::Unsupported`] for Gemm with `transA = 1` or another op; shape errors if `x` does not fit
/// the weights.
pub(crate) fn layer_input_samples(
    op: &Op,
    x: &ArrayViewD<'_, f32>,
    w_shape: &[usize],
    sampling: PositionSampling,
    mut f: impl FnMut(usize, &[f32], usize),
) -> Result<()> {
    match op {
        Op::Conv {
            stride,
            pad,
            dilation,
            groups,
        } => {
            let [n, c, h, wd] = dims4(x.shape());
            let [_, cg, kh, kw] = dims4(w_shape);
            if x.ndim() != 4 || w_shape.len() != 4 || *groups == 0 || cg * groups != c {
                return Err(Error::ShapeMismatch {
                    what: "Conv input for its weights".into(),
                    expected: format!("[N, {}, H, W]", cg * groups),
                    found: format!("{:?}", x.shape()),
                });
            }
            let span = |len: usize, p0: usize, p1: usize, k: usize, d: usize, s: usize| {
                let full = len + p0 + p1;
                let reach = d * (k.max(1) - 1) + 1;
                if full < reach {
                    0
                } else {
                    (full - reach) / s + 1
                }
            };
            let oh = span(h, pad[0], pad[2], kh, dilation[0], stride[0]);
            let ow = span(wd, pad[1], pad[3], kw, dilation[1], stride[1]);
            let (k, p) = (cg * kh * kw, oh * ow);
            let stride_q = sampling.stride(p, k);
            let xs = contiguous(x);
            let mut cols = vec![0f32; k * p];
            let mut samples = vec![0f32; k * p.div_ceil(stride_q)];
            for img in 0..n {
                // Every stride_q-th position, from an offset that moves with the image so that
                // all positions are visited over the calibration set.
                let first = (sampling.offset + img) % stride_q;
                let kept = (p - first.min(p)).div_ceil(stride_q);
                for g in 0..*groups {
                    let xin = &xs[(img * c + g * cg) * h * wd..(img * c + (g + 1) * cg) * h * wd];
                    im2col(
                        xin,
                        [cg, h, wd],
                        [kh, kw],
                        [oh, ow],
                        *stride,
                        *pad,
                        *dilation,
                        &mut cols,
                    );
                    // [k, p] -> [kept, k]
                    for (r, row) in cols.chunks_exact(p.max(1)).enumerate() {
                        for (j, &v) in row.iter().skip(first).step_by(stride_q).enumerate() {
                            samples[j * k + r] = v;
                        }
                    }
                    f(g, &samples[..kept * k], kept);
                }
            }
            Ok(())
        }
        Op::Gemm { trans_a: false, .. } | Op::MatMul => {
            let k = match op {
                Op::Gemm { trans_b: true, .. } => w_shape.get(1),
                _ => w_shape.first(),
            }
            .copied()
            .unwrap_or(0);
            let last = x.shape().last().copied().unwrap_or(0);
            if last != k || k == 0 {
                return Err(Error::ShapeMismatch {
                    what: format!("{} input for its weights", op.name()),
                    expected: format!("[..., {k}]"),
                    found: format!("{:?}", x.shape()),
                });
            }
            let xs = contiguous(x);
            f(0, &xs, xs.len() / k);
            Ok(())
        }
        other => Err(Error::Unsupported(format!(
            "{}: no layer-input samples (only Conv, Gemm without transA, MatMul)",
            other.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::ops::dims4;
    use ndarray::Array;

    /// Direct 7-loop convolution: the definition im2col must match.
    fn conv_direct(
        x: &ArrayD<f32>,
        w: &ArrayD<f32>,
        stride: [usize; 2],
        pad: [usize; 4],
        dil: [usize; 2],
        groups: usize,
        out: &[usize],
    ) -> ArrayD<f32> {
        let [n, c, h, wd] = dims4(x.shape());
        let [o, cg, kh, kw] = dims4(w.shape());
        let og = o / groups;
        let mut y = ArrayD::zeros(IxDyn(out));
        for b in 0..n {
            for oc in 0..o {
                let g = oc / og;
                for oy in 0..out[2] {
                    for ox in 0..out[3] {
                        let mut s = 0.0;
                        for ci in 0..cg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy =
                                        (oy * stride[0] + ky * dil[0]) as isize - pad[0] as isize;
                                    let ix =
                                        (ox * stride[1] + kx * dil[1]) as isize - pad[1] as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd
                                    {
                                        s += x
                                            [[b, g * cg + ci, iy as usize, ix as usize].as_slice()]
                                            * w[[oc, ci, ky, kx].as_slice()];
                                    }
                                }
                            }
                        }
                        y[[b, oc, oy, ox].as_slice()] = s;
                    }
                }
            }
        }
        let _ = c;
        y
    }

    #[test]
    fn im2col_conv_matches_direct() {
        let cases = [
            ([2, 4, 7, 6], [6, 2, 3, 2], [2, 1], [1, 0, 2, 1], [1, 2], 2),
            ([1, 3, 5, 5], [4, 3, 1, 1], [1, 1], [0, 0, 0, 0], [1, 1], 1),
            ([1, 2, 9, 9], [2, 1, 3, 3], [3, 3], [2, 2, 2, 2], [2, 2], 2),
        ];
        for (xs, ws, stride, pad, dil, groups) in cases {
            let x = Array::from_shape_fn(IxDyn(&xs), |i| {
                ((i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) % 11) as f32 - 5.0
            });
            let w = Array::from_shape_fn(IxDyn(&ws), |i| {
                ((i[0] * 3 + i[1] * 2 + i[2] + i[3] * 5) % 7) as f32 - 3.0
            });
            let node = crate::graph::Node {
                name: "c".into(),
                op: crate::graph::Op::Conv {
                    stride,
                    pad,
                    dilation: dil,
                    groups,
                },
                inputs: vec![],
                output: String::new(),
            };
            let out = crate::graph::shape::infer(&node, &[&xs, &ws]).unwrap();
            let y = conv2d(&x.view(), &w.view(), None, stride, pad, dil, groups, &out).unwrap();
            assert_eq!(y, conv_direct(&x, &w, stride, pad, dil, groups, &out));
        }
    }
}
