//! Pooling: MaxPool, AveragePool, GlobalAveragePool. The integer max pool keeps its input's format
//! and memory layout; the average pools requantize to their own output format.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, Ix4, IxDyn};

use super::{Grad, Inputs, IntOp, Lower, Lowered, OpFamily, contiguous, dims4, shape_err};
use crate::error::Result;
use crate::exec::act::{Act, Code, Kind, Visit2, dispatch2, wrong_storage};
use crate::fixed::{QFormat, QTensor};
use crate::graph::{Op, Pool2d};
use crate::kernels::{OutputStage, Pool2dParams, Scratch, avg_pool2d, global_avg_pool, max_pool2d};

/// MaxPool, AveragePool, GlobalAveragePool.
pub(super) struct Pooling;

impl OpFamily for Pooling {
    fn eval_float(
        &self,
        op: &Op,
        x: &[ArrayViewD<'_, f32>],
        out_shape: &[usize],
    ) -> Result<ArrayD<f32>> {
        match op {
            Op::MaxPool(p) => max_pool(&x[0], p, out_shape),
            Op::AveragePool {
                pool,
                count_include_pad,
            } => average_pool(&x[0], pool, *count_include_pad, out_shape),
            _ => global_average_pool(&x[0], out_shape),
        }
    }

    fn vjp_float(&self, op: &Op, g: &Grad<'_, '_>) -> Result<Vec<Option<ArrayD<f32>>>> {
        if !g.needs(0) {
            return Ok(vec![None]);
        }
        let dx = match op {
            Op::MaxPool(p) => {
                pool_backward(&g.x[0], p, &g.dy, |plane, w, [y0, x0], [h, wd], d, dst| {
                    let mut best = (f32::NEG_INFINITY, None);
                    for ky in 0..p.kernel[0] {
                        let iy = y0 + (ky * p.dilation[0]) as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..p.kernel[1] {
                            let ix = x0 + (kx * p.dilation[1]) as isize;
                            if ix >= 0 && ix < wd as isize {
                                let at = iy as usize * w + ix as usize;
                                if plane[at] > best.0 || best.1.is_none() {
                                    best = (plane[at], Some(at));
                                }
                            }
                        }
                    }
                    if let Some(at) = best.1 {
                        dst[at] += d;
                    }
                })?
            }
            Op::AveragePool {
                pool: p,
                count_include_pad,
            } => {
                let [_, _, h, w] = dims4(g.x[0].shape());
                let (ph_end, pw_end) = ((h + p.pad[2]) as isize, (w + p.pad[3]) as isize);
                let (ph_begin, pw_begin) = (-(p.pad[0] as isize), -(p.pad[1] as isize));
                pool_backward(&g.x[0], p, &g.dy, |_, w, [y0, x0], [h, wd], d, dst| {
                    let taps = |mut f: Box<dyn FnMut(usize) + '_>| {
                        let (mut inside, mut padded) = (0usize, 0usize);
                        for ky in 0..p.kernel[0] {
                            let iy = y0 + (ky * p.dilation[0]) as isize;
                            let y_in_pad = iy >= ph_begin && iy < ph_end;
                            for kx in 0..p.kernel[1] {
                                let ix = x0 + (kx * p.dilation[1]) as isize;
                                if y_in_pad && ix >= pw_begin && ix < pw_end {
                                    padded += 1;
                                }
                                if iy >= 0 && iy < h as isize && ix >= 0 && ix < wd as isize {
                                    f(iy as usize * w + ix as usize);
                                    inside += 1;
                                }
                            }
                        }
                        if *count_include_pad { padded } else { inside }
                    };
                    let count = taps(Box::new(|_| {}));
                    if count > 0 {
                        let share = d / count as f32;
                        taps(Box::new(|at| dst[at] += share));
                    }
                })?
            }
            _ => {
                let [_, _, h, w] = dims4(g.x[0].shape());
                let hw = (h * w).max(1);
                let mut dx = ArrayD::<f32>::zeros(g.x[0].raw_dim());
                let dy = contiguous(&g.dy);
                if let Some(s) = dx.as_slice_mut() {
                    for (plane, &d) in s.chunks_exact_mut(hw).zip(dy.iter()) {
                        plane.fill(d / hw as f32);
                    }
                }
                dx
            }
        };
        Ok(vec![Some(dx)])
    }

    fn lower_fixed(&self, cx: &Lower<'_>) -> Result<Lowered> {
        let in_fmt = cx.in_format()?;
        let kin = Kind::of(in_fmt)?;
        let (kind, format, observed) = match &cx.node.op {
            Op::MaxPool(p) => {
                if p.dilation != [1, 1] {
                    return Err(cx.unsupported("dilated max pooling"));
                }
                (PoolKind::Max(params(p), p.ceil_mode), in_fmt, false)
            }
            Op::AveragePool {
                pool,
                count_include_pad,
            } => {
                if pool.dilation != [1, 1] {
                    return Err(cx.unsupported("dilated average pooling"));
                }
                // Ceil mode as extra bottom/right padding: exact where padding is not counted;
                // where it is, the windows ceil mode adds would count their overhang too.
                if pool.ceil_mode && *count_include_pad {
                    let shape = cx.in_shapes.first().copied().unwrap_or(&[]);
                    let p = params(pool);
                    if shape.len() != 4 || ceil_padding(p, shape)? != p {
                        return Err(cx.unsupported(
                            "ceil_mode with count_include_pad = 1 where ceil mode adds windows",
                        ));
                    }
                }
                let of = cx.format_of(&cx.node.output)?;
                let kind = PoolKind::Avg {
                    pool: params(pool),
                    count_include_pad: *count_include_pad,
                    ceil_mode: pool.ceil_mode,
                    out: OutputStage::new(of),
                };
                (kind, of, true)
            }
            _ => {
                let of = cx.format_of(&cx.node.output)?;
                (PoolKind::GlobalAvg(OutputStage::new(of)), of, true)
            }
        };
        let op = dispatch2(kin, Kind::of(format)?, Build(kind));
        Ok(Lowered {
            op,
            format,
            observed,
        })
    }
}

/// The integer global average pool from `fi` codes to `fo` codes (also ReduceMean over H and W).
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a format the activations cannot
/// hold.
pub(super) fn global_average(fi: QFormat, fo: QFormat) -> Result<Arc<dyn IntOp>> {
    Ok(dispatch2(
        Kind::of(fi)?,
        Kind::of(fo)?,
        Build(PoolKind::GlobalAvg(OutputStage::new(fo))),
    ))
}

fn params(p: &Pool2d) -> Pool2dParams {
    Pool2dParams {
        kernel: p.kernel,
        stride: p.stride,
        padding: p.pad,
    }
}

#[derive(Debug, Clone, Copy)]
enum PoolKind {
    /// Max pooling; with `ceil_mode` (the flag) the last windows may reach past the padded input.
    Max(Pool2dParams, bool),
    Avg {
        pool: Pool2dParams,
        count_include_pad: bool,
        ceil_mode: bool,
        out: OutputStage,
    },
    GlobalAvg(OutputStage),
}

struct Build(PoolKind);

impl Visit2 for Build {
    type Out = Arc<dyn IntOp>;
    fn visit<A: Code, O: Code>(self) -> Self::Out {
        Arc::new(PoolStep::<A, O>(self.0, std::marker::PhantomData))
    }
}

/// A pooling step from `A` codes to `O` codes (`A` = `O` for max pooling).
#[derive(Debug)]
struct PoolStep<A, O>(PoolKind, std::marker::PhantomData<fn(A) -> O>);

/// Ceil-mode max pooling as floor mode over extra bottom/right padding (padding never wins a max):
/// the windows that ceil mode adds are the ones that extra padding makes whole.
fn ceil_padding(p: Pool2dParams, shape: &[usize]) -> Result<Pool2dParams> {
    let [oh, ow] = crate::graph::shape::spatial(
        shape[2],
        shape[3],
        p.kernel,
        p.stride,
        [1, 1],
        p.padding,
        true,
    )?;
    let extra = |o: usize, len: usize, k: usize, s: usize, lo: usize, hi: usize| {
        ((o - 1) * s + k).saturating_sub(len + lo + hi)
    };
    let mut padding = p.padding;
    padding[2] += extra(
        oh,
        shape[2],
        p.kernel[0],
        p.stride[0],
        p.padding[0],
        p.padding[2],
    );
    padding[3] += extra(
        ow,
        shape[3],
        p.kernel[1],
        p.stride[1],
        p.padding[1],
        p.padding[3],
    );
    Ok(Pool2dParams { padding, ..p })
}

/// Activations between steps were produced by the kernels in their format, so they need no range scan.
fn to_q4<T: Code>(a: ArrayD<T>, f: QFormat) -> Result<QTensor<T, Ix4>> {
    Ok(QTensor::from_codes_trusted(
        a.into_dimensionality::<Ix4>()?,
        vec![f],
        None,
    ))
}

impl<A: Code, O: Code> IntOp for PoolStep<A, O> {
    fn run(&self, x: &mut Inputs<'_>, _: &mut Scratch) -> Result<Act> {
        let (codes, f) = A::take(x.take_first()?).ok_or_else(|| wrong_storage(x.step))?;
        let t = to_q4(codes, f)?;
        match self.0 {
            PoolKind::Max(p, ceil_mode) => {
                let p = if ceil_mode {
                    ceil_padding(p, t.codes().shape())?
                } else {
                    p
                };
                let y = max_pool2d(&t, p)?;
                Ok(A::wrap(y.into_codes().into_dyn(), f))
            }
            PoolKind::Avg {
                pool,
                count_include_pad,
                ceil_mode,
                out,
            } => {
                let pool = if ceil_mode {
                    ceil_padding(pool, t.codes().shape())?
                } else {
                    pool
                };
                let y = avg_pool2d::<A, O>(&t, pool, count_include_pad, out)?;
                Ok(O::wrap(y.into_codes().into_dyn(), out.format))
            }
            PoolKind::GlobalAvg(out) => {
                let y = global_avg_pool::<A, O>(&t, out)?;
                Ok(O::wrap(y.into_codes().into_dyn(), out.format))
            }
        }
    }
}

// ---------------------------------------------------------------- f32

/// Shared window walk for pooling: calls `f(plane, oy, ox, (y0, y1, x0, x1) in padded coordinates)`.
pub(super) fn pool_planes(
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

/// The backward window walk: for each output position with gradient `d`, calls
/// `f(plane of x, row length, [y0, x0] in padded coordinates, [h, w], d, plane of dx)`.
#[allow(clippy::type_complexity)]
fn pool_backward(
    x: &ArrayViewD<'_, f32>,
    p: &Pool2d,
    dy: &ArrayViewD<'_, f32>,
    mut f: impl FnMut(&[f32], usize, [isize; 2], [usize; 2], f32, &mut [f32]),
) -> Result<ArrayD<f32>> {
    let [n, c, h, w] = dims4(x.shape());
    let [_, _, oh, ow] = dims4(dy.shape());
    let xs = contiguous(x);
    let dys = contiguous(dy);
    let hw = (h * w).max(1);
    let mut dx = vec![0f32; n * c * h * w];
    for (i, (plane, dst)) in xs
        .chunks_exact(hw)
        .zip(dx.chunks_exact_mut(hw))
        .take(n * c)
        .enumerate()
    {
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * p.stride[0]) as isize - p.pad[0] as isize;
                let x0 = (ox * p.stride[1]) as isize - p.pad[1] as isize;
                f(
                    plane,
                    w,
                    [y0, x0],
                    [h, w],
                    dys[(i * oh + oy) * ow + ox],
                    dst,
                );
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(x.shape()), dx).map_err(shape_err)
}

/// Max pooling; padded positions never win.
pub(super) fn max_pool(
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
pub(super) fn average_pool(
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
pub(super) fn global_average_pool(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_mode_becomes_extra_bottom_right_padding() {
        // 6x6, window 3, stride 2: floor mode gives 2x2, ceil mode 3x3, i.e. one more padded row and
        // column at the bottom and right.
        let p = Pool2dParams::new(3, 2);
        let q = ceil_padding(p, &[1, 1, 6, 6]).unwrap();
        assert_eq!(q.padding, [0, 0, 1, 1]);
        // 7x7: both modes give 3x3, nothing to add.
        assert_eq!(
            ceil_padding(p, &[1, 1, 7, 7]).unwrap().padding,
            [0, 0, 0, 0]
        );
        // Existing padding is kept and extended only where ceil mode needs it: height 6 + 2 padded
        // gives 3 windows in floor mode and 4 in ceil mode (the last starts at row 6, inside the
        // input), width 7 + 2 gives 4 in both.
        let p = Pool2dParams::new(3, 2).with_padding(1);
        let q = ceil_padding(p, &[1, 1, 6, 7]).unwrap();
        assert_eq!(q.padding, [1, 1, 2, 1]);
    }
}
