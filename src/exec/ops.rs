//! `f32` operator implementations for the reference executor.
//!
//! Every function here receives inputs whose shapes were checked by shape inference; the
//! `Result`s only carry ndarray's own shape errors through, so a broken invariant is an error, not
//! a panic.

use std::borrow::Cow;

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayD, ArrayView2, ArrayViewD, ArrayViewMut2, Axis, Ix2, IxDyn, Slice, Zip};

use crate::error::{Error, Result};
use crate::graph::Pool2d;
use crate::graph::shape::{axis as resolve_axis, slice_plan};

fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::ShapeMismatch {
        what: "executor (internal)".into(),
        expected: "consistent shapes".into(),
        found: e.to_string(),
    }
}

/// The elements in row-major order, borrowed when the view is already contiguous.
fn contiguous<'a>(a: &'a ArrayViewD<'_, f32>) -> Cow<'a, [f32]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}

fn dims4(s: &[usize]) -> [usize; 4] {
    let mut d = [0; 4];
    for (o, &v) in d.iter_mut().zip(s) {
        *o = v;
    }
    d
}

/// Range of output positions `o` in `0..out` whose input index `o * stride + offset - pad` lies in
/// `0..len`.
fn valid_range(out: usize, len: usize, stride: usize, offset: usize, pad: usize) -> (usize, usize) {
    let lo = if pad > offset {
        (pad - offset).div_ceil(stride)
    } else {
        0
    };
    let hi = if len + pad > offset {
        (len + pad - offset).div_ceil(stride)
    } else {
        0
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// Fills `cols` (`[cg * kh * kw, oh * ow]`, row-major) with the receptive fields of one image's group.
#[allow(clippy::too_many_arguments)]
fn im2col(
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

/// 2-D convolution, `x [N,C,H,W]`, `w [O,C/g,kh,kw]`, optional `b [O]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d(
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
pub(crate) fn gemm(
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
pub(crate) fn matmul(
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

/// Element-wise sum with broadcasting to `out_shape`.
pub(crate) fn add(
    a: &ArrayViewD<'_, f32>,
    b: &ArrayViewD<'_, f32>,
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
    let incompatible = || {
        shape_err(ndarray::ShapeError::from_kind(
            ndarray::ErrorKind::IncompatibleShape,
        ))
    };
    let ab = a.broadcast(IxDyn(out_shape)).ok_or_else(incompatible)?;
    let bb = b.broadcast(IxDyn(out_shape)).ok_or_else(incompatible)?;
    let mut out = ArrayD::<f32>::zeros(IxDyn(out_shape));
    Zip::from(&mut out)
        .and(&ab)
        .and(&bb)
        .for_each(|o, &x, &y| *o = x + y);
    Ok(out)
}

/// Shared window walk for pooling: calls `f(plane, oy, ox, (y0, y1, x0, x1) in padded coordinates)`.
fn pool_planes(
    x: &ArrayViewD<'_, f32>,
    p: &Pool2d,
    out_shape: &[usize],
    mut reduce: impl FnMut(&[f32], usize, [isize; 2], [usize; 2]) -> f32,
) -> Result<ArrayD<f32>> {
    let [n, c, h, w] = dims4(x.shape());
    let [_, _, oh, ow] = dims4(out_shape);
    let xs = contiguous(x);
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in xs.chunks_exact((h * w).max(1)).take(n * c) {
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * p.stride[0]) as isize - p.pad[0] as isize;
                let x0 = (ox * p.stride[1]) as isize - p.pad[1] as isize;
                out.push(reduce(plane, w, [y0, x0], [h, w]));
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(out_shape), out).map_err(shape_err)
}

/// Max pooling; padded positions never win.
pub(crate) fn max_pool(
    x: &ArrayViewD<'_, f32>,
    p: &Pool2d,
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
    pool_planes(x, p, out_shape, |plane, w, [y0, x0], [h, wd]| {
        let mut best = f32::NEG_INFINITY;
        for ky in 0..p.kernel[0] {
            let iy = y0 + (ky * p.dilation[0]) as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let row = &plane[iy as usize * w..(iy as usize + 1) * w];
            for kx in 0..p.kernel[1] {
                let ix = x0 + (kx * p.dilation[1]) as isize;
                if ix >= 0 && ix < wd as isize {
                    let v = row[ix as usize];
                    if v > best || v.is_nan() {
                        best = v;
                    }
                }
            }
        }
        best
    })
}

/// Average pooling. The divisor counts in-image taps, or with `count_include_pad` every tap that
/// falls inside the padded image.
pub(crate) fn average_pool(
    x: &ArrayViewD<'_, f32>,
    p: &Pool2d,
    count_include_pad: bool,
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
    let [_, _, h, w] = dims4(x.shape());
    let (pad_h_end, pad_w_end) = ((h + p.pad[2]) as isize, (w + p.pad[3]) as isize);
    let (pad_h_begin, pad_w_begin) = (-(p.pad[0] as isize), -(p.pad[1] as isize));
    pool_planes(x, p, out_shape, |plane, w, [y0, x0], [h, wd]| {
        let (mut sum, mut inside, mut padded) = (0f32, 0usize, 0usize);
        for ky in 0..p.kernel[0] {
            let iy = y0 + (ky * p.dilation[0]) as isize;
            let y_in_pad = iy >= pad_h_begin && iy < pad_h_end;
            for kx in 0..p.kernel[1] {
                let ix = x0 + (kx * p.dilation[1]) as isize;
                if y_in_pad && ix >= pad_w_begin && ix < pad_w_end {
                    padded += 1;
                }
                if iy >= 0 && iy < h as isize && ix >= 0 && ix < wd as isize {
                    sum += plane[iy as usize * w + ix as usize];
                    inside += 1;
                }
            }
        }
        let count = if count_include_pad { padded } else { inside };
        if count == 0 { 0.0 } else { sum / count as f32 }
    })
}

/// Mean over each `H x W` plane.
pub(crate) fn global_average_pool(
    x: &ArrayViewD<'_, f32>,
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
    let [n, c, h, w] = dims4(x.shape());
    let xs = contiguous(x);
    let hw = (h * w).max(1);
    let out: Vec<f32> = xs
        .chunks_exact(hw)
        .take(n * c)
        .map(|p| p.iter().sum::<f32>() / hw as f32)
        .collect();
    ArrayD::from_shape_vec(IxDyn(out_shape), out).map_err(shape_err)
}

/// Row-major reinterpretation (Flatten, Reshape).
pub(crate) fn reshape(x: &ArrayViewD<'_, f32>, out_shape: &[usize]) -> Result<ArrayD<f32>> {
    ArrayD::from_shape_vec(IxDyn(out_shape), contiguous(x).into_owned()).map_err(shape_err)
}

/// ONNX Slice.
pub(crate) fn slice(
    x: &ArrayViewD<'_, f32>,
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
) -> Result<ArrayD<f32>> {
    let plan = slice_plan(x.shape(), starts, ends, axes, steps)?;
    let mut v = x.view();
    for (ax, first, len, step) in plan {
        let s = if len == 0 {
            Slice::new(0, Some(0), 1)
        } else if step > 0 {
            let last = first + (len - 1) * step as usize;
            Slice::new(first as isize, Some(last as isize + 1), step as isize)
        } else {
            let last = first - (len - 1) * step.unsigned_abs() as usize;
            Slice::new(last as isize, Some(first as isize + 1), step as isize)
        };
        v.slice_axis_inplace(Axis(ax), s);
    }
    Ok(v.to_owned())
}

/// Constant padding; negative pads crop.
pub(crate) fn pad(
    x: &ArrayViewD<'_, f32>,
    pads: &[i64],
    value: f32,
    out_shape: &[usize],
) -> Result<ArrayD<f32>> {
    let r = x.ndim();
    let mut out = ArrayD::from_elem(IxDyn(out_shape), value);
    if out.is_empty() {
        return Ok(out);
    }
    // Per axis: the part of the input kept, and where it lands in the output.
    let src_range = |ax: usize| -> (usize, usize) {
        let d = x.shape()[ax] as i64;
        let lo = (-pads[ax]).clamp(0, d);
        let hi = (d + pads[ax + r]).clamp(lo, d);
        (lo as usize, hi as usize)
    };
    let src = x.slice_each_axis(|a| {
        let (lo, hi) = src_range(a.axis.index());
        Slice::new(lo as isize, Some(hi as isize), 1)
    });
    let mut dst = out.slice_each_axis_mut(|a| {
        let (lo, hi) = src_range(a.axis.index());
        let at = pads[a.axis.index()].max(0) as usize;
        Slice::new(at as isize, Some((at + hi - lo) as isize), 1)
    });
    dst.assign(&src);
    Ok(out)
}

/// Join along `axis`.
pub(crate) fn concat(xs: &[ArrayViewD<'_, f32>], axis: i64) -> Result<ArrayD<f32>> {
    let a = resolve_axis(axis, xs.first().map_or(0, |x| x.ndim()), false)?;
    ndarray::concatenate(Axis(a), xs).map_err(shape_err)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn pads_and_crops() {
        let x = Array::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let y = pad(&x.view(), &[1, -1, 0, 2], 9.0, &[3, 4]).unwrap();
        assert_eq!(
            y.as_slice().unwrap(),
            &[9.0, 9.0, 9.0, 9.0, 2.0, 3.0, 9.0, 9.0, 5.0, 6.0, 9.0, 9.0]
        );
    }

    #[test]
    fn negative_step_slice_reverses() {
        let x = Array::from_shape_vec(IxDyn(&[5]), vec![0.0, 1.0, 2.0, 3.0, 4.0]).unwrap();
        let y = slice(&x.view(), &[-1], &[i64::MIN], &[0], &[-2]).unwrap();
        assert_eq!(y.as_slice().unwrap(), &[4.0, 2.0, 0.0]);
    }
}
