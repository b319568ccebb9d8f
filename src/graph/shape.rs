//! Shape inference for each operator, and the index arithmetic the executors share with it.

use crate::error::{Error, Result};
use crate::graph::{Node, Op, Pool2d};

fn mismatch(what: &str, expected: impl Into<String>, found: impl std::fmt::Debug) -> Error {
    Error::ShapeMismatch {
        what: what.to_string(),
        expected: expected.into(),
        found: format!("{found:?}"),
    }
}

/// Output size of a sliding window along one axis, or `None` if the window never fits.
///
/// `out = floor_or_ceil((len + pad_begin + pad_end - ((kernel - 1) * dilation + 1)) / stride) + 1`;
/// with `ceil`, a last window starting at or past `len + pad_begin` is dropped (ONNX / PyTorch rule).
pub(crate) fn window_out(
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad: (usize, usize),
    ceil: bool,
) -> Option<usize> {
    let span = kernel
        .checked_sub(1)?
        .checked_mul(dilation)?
        .checked_add(1)?;
    let padded = len.checked_add(pad.0)?.checked_add(pad.1)?;
    let room = padded.checked_sub(span)?;
    let mut out = if ceil {
        room.div_ceil(stride)
    } else {
        room / stride
    } + 1;
    if ceil && (out - 1) * stride >= len + pad.0 {
        out -= 1;
    }
    Some(out)
}

fn spatial(
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pad: [usize; 4],
    ceil: bool,
) -> Result<[usize; 2]> {
    let oh = window_out(h, kernel[0], stride[0], dilation[0], (pad[0], pad[2]), ceil);
    let ow = window_out(w, kernel[1], stride[1], dilation[1], (pad[1], pad[3]), ceil);
    match (oh, ow) {
        (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok([oh, ow]),
        _ => Err(mismatch(
            "spatial size",
            format!("a padded input of at least the window {kernel:?} (dilated)"),
            [h, w],
        )),
    }
}

fn nchw<'a>(shape: &'a [usize], what: &str) -> Result<&'a [usize]> {
    if shape.len() != 4 {
        return Err(Error::Unsupported(format!(
            "{what} must be 4-D NCHW, found shape {shape:?}"
        )));
    }
    Ok(shape)
}

/// Resolves a possibly negative axis against `rank`; `inclusive` allows `axis == rank`.
pub(crate) fn axis(axis: i64, rank: usize, inclusive: bool) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    let hi = if inclusive { r } else { r - 1 };
    if a < 0 || a > hi {
        return Err(mismatch(
            "axis",
            format!("an axis in -{r}..{}", hi + 1),
            axis,
        ));
    }
    Ok(a as usize)
}

/// NumPy broadcast of two shapes.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(mismatch(
                    "broadcast",
                    format!("a shape broadcastable with {a:?}"),
                    b,
                ));
            }
        };
    }
    Ok(out)
}

/// One resolved slice: `(axis, start, len, step)`: element `k` of the output along `axis` is
/// element `start + k * step` of the input.
pub(crate) fn slice_plan(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
) -> Result<Vec<(usize, usize, usize, i64)>> {
    let mut plan = Vec::with_capacity(axes.len());
    let mut seen = vec![false; shape.len()];
    for i in 0..axes.len() {
        let ax = axis(axes[i], shape.len(), false)?;
        if std::mem::replace(&mut seen[ax], true) {
            return Err(mismatch("slice axes", "distinct axes", axes));
        }
        let dim = shape[ax] as i64;
        let step = steps[i];
        let norm = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (start, end) = (norm(starts[i]), norm(ends[i]));
        if dim == 0 {
            plan.push((ax, 0, 0, step));
            continue;
        }
        let (first, len) = if step > 0 {
            let (s, e) = (start.clamp(0, dim), end.clamp(0, dim));
            (
                s,
                if e > s {
                    (e - s - 1) as u64 / step.unsigned_abs() + 1
                } else {
                    0
                },
            )
        } else {
            let (s, e) = (start.clamp(0, dim - 1), end.clamp(-1, dim - 1));
            (
                s,
                if s > e {
                    (s - e - 1) as u64 / step.unsigned_abs() + 1
                } else {
                    0
                },
            )
        };
        plan.push((ax, first as usize, len as usize, step));
    }
    Ok(plan)
}

/// Output shape of a node given its input shapes (initializers included).
pub(crate) fn infer(node: &Node, inputs: &[&[usize]]) -> Result<Vec<usize>> {
    let x = inputs.first().copied().unwrap_or(&[]);
    match &node.op {
        Op::Conv {
            stride,
            pad,
            dilation,
            groups,
        } => {
            let x = nchw(x, "input")?;
            let w = inputs[1];
            if w.len() != 4 {
                return Err(mismatch("weights", "[out, in/groups, kh, kw]", w));
            }
            let (c, o) = (x[1], w[0]);
            if c % groups != 0 || o % groups != 0 || w[1] * groups != c {
                return Err(mismatch(
                    "channels",
                    format!(
                        "input channels {c} = weight dim 1 ({}) x groups ({groups}), out {o} divisible by groups",
                        w[1]
                    ),
                    w,
                ));
            }
            if let Some(b) = inputs.get(2)
                && *b != [o]
            {
                return Err(mismatch("bias", format!("[{o}]"), b));
            }
            let [oh, ow] = spatial(x[2], x[3], [w[2], w[3]], *stride, *dilation, *pad, false)?;
            Ok(vec![x[0], o, oh, ow])
        }
        Op::MaxPool(p) | Op::AveragePool { pool: p, .. } => {
            let x = nchw(x, "input")?;
            let Pool2d {
                kernel,
                stride,
                pad,
                dilation,
                ceil_mode,
            } = p;
            if pad[0] >= kernel[0]
                || pad[1] >= kernel[1]
                || pad[2] >= kernel[0]
                || pad[3] >= kernel[1]
            {
                return Err(mismatch(
                    "pads",
                    format!("each pad smaller than the kernel {kernel:?}"),
                    pad,
                ));
            }
            let [oh, ow] = spatial(x[2], x[3], *kernel, *stride, *dilation, *pad, *ceil_mode)?;
            Ok(vec![x[0], x[1], oh, ow])
        }
        Op::GlobalAveragePool => {
            let x = nchw(x, "input")?;
            if x[2] == 0 || x[3] == 0 {
                return Err(mismatch("spatial size", "non-empty", x));
            }
            Ok(vec![x[0], x[1], 1, 1])
        }
        Op::Gemm {
            trans_a, trans_b, ..
        } => {
            let (a, b) = (x, inputs[1]);
            if a.len() != 2 || b.len() != 2 {
                return Err(mismatch("operands", "2-D a and b", (a, b)));
            }
            let (m, k) = if *trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
            let (k2, n) = if *trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
            if k != k2 {
                return Err(mismatch(
                    "inner dimension",
                    format!("b with {k} along the reduction axis"),
                    b,
                ));
            }
            if let Some(c) = inputs.get(2)
                && (c.len() > 2 || broadcast(c, &[m, n])? != [m, n])
            {
                return Err(mismatch(
                    "c",
                    format!("a shape broadcastable to [{m}, {n}]"),
                    c,
                ));
            }
            Ok(vec![m, n])
        }
        Op::MatMul => {
            let (a, b) = (x, inputs[1]);
            if a.len() < 2
                || b.len() < 2
                || (b.len() > 2 && b.len() != a.len())
                || (b.len() > 2 && a[..a.len() - 2] != b[..b.len() - 2])
            {
                return Err(Error::Unsupported(format!(
                    "MatMul of shapes {a:?} x {b:?}: b must be 2-D or have a's leading dimensions"
                )));
            }
            let (k, k2) = (a[a.len() - 1], b[b.len() - 2]);
            if k != k2 {
                return Err(mismatch("inner dimension", format!("b with {k} rows"), b));
            }
            let mut out = a.to_vec();
            out[a.len() - 1] = b[b.len() - 1];
            Ok(out)
        }
        Op::Add => broadcast(x, inputs[1]),
        Op::Relu | Op::Clip { .. } | Op::Identity => Ok(x.to_vec()),
        Op::Flatten { axis: ax } => {
            let a = axis(*ax, x.len(), true)?;
            Ok(vec![x[..a].iter().product(), x[a..].iter().product()])
        }
        Op::Reshape { shape, allow_zero } => {
            let total: usize = x.iter().product();
            let mut out = Vec::with_capacity(shape.len());
            let mut infer_at = None;
            for (i, &d) in shape.iter().enumerate() {
                out.push(match d {
                    -1 => {
                        infer_at = Some(i);
                        1
                    }
                    0 if !allow_zero => *x.get(i).ok_or_else(|| {
                        mismatch("shape", "a 0 only where the input has a dimension", shape)
                    })?,
                    d => usize::try_from(d).map_err(|_| mismatch("shape", "dims >= -1", shape))?,
                });
            }
            let known = out.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            let known =
                known.ok_or_else(|| mismatch("shape", "a product that fits in usize", shape))?;
            if let Some(i) = infer_at {
                if known == 0 || !total.is_multiple_of(known) {
                    return Err(mismatch(
                        "shape",
                        format!("a shape holding {total} elements"),
                        shape,
                    ));
                }
                out[i] = total / known;
            } else if known != total {
                return Err(mismatch(
                    "shape",
                    format!("a shape holding {total} elements"),
                    shape,
                ));
            }
            Ok(out)
        }
        Op::Slice {
            starts,
            ends,
            axes,
            steps,
        } => {
            let mut out = x.to_vec();
            for (ax, _, len, _) in slice_plan(x, starts, ends, axes, steps)? {
                out[ax] = len;
            }
            Ok(out)
        }
        Op::Pad { pads, .. } => {
            if pads.len() != 2 * x.len() {
                return Err(mismatch(
                    "pads",
                    format!("{} values (2 x rank)", 2 * x.len()),
                    pads,
                ));
            }
            let mut out = Vec::with_capacity(x.len());
            for (i, &d) in x.iter().enumerate() {
                let n = d as i64 + pads[i] + pads[i + x.len()];
                if n < 0 {
                    return Err(mismatch(
                        "pads",
                        "pads that leave a non-negative size",
                        pads,
                    ));
                }
                out.push(n as usize);
            }
            Ok(out)
        }
        Op::Concat { axis: ax } => {
            let a = axis(*ax, x.len(), false)?;
            let mut out = x.to_vec();
            for s in &inputs[1..] {
                let same = s.len() == x.len()
                    && s.iter()
                        .zip(x)
                        .enumerate()
                        .all(|(i, (p, q))| i == a || p == q);
                if !same {
                    return Err(mismatch(
                        "inputs",
                        format!("shapes equal to {x:?} except on axis {a}"),
                        s,
                    ));
                }
                out[a] += s[a];
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sizes() {
        assert_eq!(window_out(28, 3, 1, 1, (1, 1), false), Some(28));
        assert_eq!(window_out(28, 2, 2, 1, (0, 0), false), Some(14));
        assert_eq!(window_out(7, 2, 2, 1, (0, 0), false), Some(3));
        assert_eq!(window_out(7, 2, 2, 1, (0, 0), true), Some(4));
        // last window would start in the padding only: dropped
        assert_eq!(window_out(6, 3, 2, 1, (1, 1), true), Some(4));
        assert_eq!(window_out(3, 2, 2, 1, (1, 1), true), Some(2));
        assert_eq!(window_out(2, 3, 1, 1, (0, 0), false), None);
    }

    #[test]
    fn slices_follow_onnx_clamping() {
        assert_eq!(
            slice_plan(&[10], &[1], &[100], &[0], &[3]).unwrap(),
            vec![(0, 1, 3, 3)]
        );
        assert_eq!(
            slice_plan(&[10], &[-1], &[i64::MIN], &[0], &[-1]).unwrap(),
            vec![(0, 9, 10, -1)]
        );
        assert_eq!(
            slice_plan(&[10], &[5], &[2], &[-1], &[1]).unwrap(),
            vec![(0, 5, 0, 1)]
        );
        assert!(slice_plan(&[10, 3], &[0, 0], &[1, 1], &[0, -2], &[1, 1]).is_err());
    }

    #[test]
    fn broadcasting() {
        assert_eq!(broadcast(&[2, 3, 4], &[3, 1]).unwrap(), vec![2, 3, 4]);
        assert!(broadcast(&[2, 3], &[4]).is_err());
    }
}
