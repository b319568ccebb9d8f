//! Shape inference for each operator, and the index arithmetic the executors share with it.

use crate::error::{Error, Result};
use crate::graph::{MAX_TENSOR_ELEMENTS, Node, Op, Pool2d};

fn mismatch(what: &str, expected: impl Into<String>, found: impl std::fmt::Debug) -> Error {
    Error::ShapeMismatch {
        what: what.to_string(),
        expected: expected.into(),
        found: format!("{found:?}"),
    }
}

/// Output size of a sliding window along one axis: `Ok(None)` if the window never fits (or `kernel`,
/// `stride` or `dilation` is 0, which [`Graph::new`](crate::graph::Graph::new) refuses first).
///
/// `out = floor_or_ceil((len + pad_begin + pad_end - ((kernel - 1) * dilation + 1)) / stride) + 1`;
/// with `ceil`, a last window starting at or past `len + pad_begin` is dropped (ONNX / PyTorch rule).
///
/// # Errors
/// [`Error::Unsupported`] naming the sizes if the padded length or the dilated window overflows
/// `usize`.
pub(crate) fn window_out(
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad: (usize, usize),
    ceil: bool,
) -> Result<Option<usize>> {
    let overflow = || {
        Error::Unsupported(format!(
            "a window of {kernel} taps at dilation {dilation} over {len} elements padded by {} + {} \
             overflows usize",
            pad.0, pad.1
        ))
    };
    if kernel == 0 || stride == 0 || dilation == 0 {
        return Ok(None);
    }
    let span = (kernel - 1)
        .checked_mul(dilation)
        .and_then(|s| s.checked_add(1))
        .ok_or_else(overflow)?;
    let begin = len.checked_add(pad.0).ok_or_else(overflow)?;
    let padded = begin.checked_add(pad.1).ok_or_else(overflow)?;
    let Some(room) = padded.checked_sub(span) else {
        return Ok(None);
    };
    let steps = if ceil {
        room.div_ceil(stride)
    } else {
        room / stride
    };
    let mut out = steps.checked_add(1).ok_or_else(overflow)?;
    // A product past usize::MAX certainly starts past `begin`.
    if ceil && steps.checked_mul(stride).is_none_or(|start| start >= begin) {
        out -= 1;
    }
    Ok(Some(out))
}

pub(crate) fn spatial(
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pad: [usize; 4],
    ceil: bool,
) -> Result<[usize; 2]> {
    let oh = window_out(h, kernel[0], stride[0], dilation[0], (pad[0], pad[2]), ceil)?;
    let ow = window_out(w, kernel[1], stride[1], dilation[1], (pad[1], pad[3]), ceil)?;
    match (oh, ow) {
        (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok([oh, ow]),
        _ => Err(mismatch(
            "spatial size",
            format!("a padded input of at least the window {kernel:?} (dilated)"),
            [h, w],
        )),
    }
}

/// Product of `dims`, refused past [`MAX_TENSOR_ELEMENTS`] (so it can neither overflow nor wrap).
fn elements(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{what} {dims:?} hold more than {MAX_TENSOR_ELEMENTS} elements"
            ))
        })
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
        let dim = i64::try_from(shape[ax])
            .map_err(|_| mismatch("slice input", "dimensions below 2^63", shape))?;
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
///
/// Every size is computed with checked arithmetic, and every output dimension is at most
/// [`MAX_TENSOR_ELEMENTS`] (even where another dimension is 0), so nothing downstream can overflow.
///
/// # Errors
/// `ShapeMismatch` for inputs that do not fit together, `Unsupported` for a shape the executors do
/// not handle or a size past [`MAX_TENSOR_ELEMENTS`]; the caller adds the node's name.
pub(crate) fn infer(node: &Node, inputs: &[&[usize]]) -> Result<Vec<usize>> {
    let out = infer_op(node, inputs)?;
    if let Some((i, d)) = out
        .iter()
        .enumerate()
        .find(|&(_, &d)| d > MAX_TENSOR_ELEMENTS)
    {
        return Err(Error::Unsupported(format!(
            "output dimension {i} of {out:?} is {d}, more than {MAX_TENSOR_ELEMENTS}"
        )));
    }
    Ok(out)
}

fn infer_op(node: &Node, inputs: &[&[usize]]) -> Result<Vec<usize>> {
    let x = inputs.first().copied().unwrap_or(&[]);
    let second = inputs.get(1).copied().unwrap_or(&[]);
    match &node.op {
        Op::Conv {
            stride,
            pad,
            dilation,
            groups,
        } => conv_shape(x, second, inputs, stride, pad, dilation, groups),
        Op::MaxPool(p) | Op::AveragePool { pool: p, .. } => pool_shape(x, p),
        Op::GlobalAveragePool | Op::GlobalMaxPool => {
            let x = nchw(x, "input")?;
            if x[2] == 0 || x[3] == 0 {
                return Err(mismatch("spatial size", "non-empty", x));
            }
            Ok(vec![x[0], x[1], 1, 1])
        }
        Op::Gemm {
            trans_a, trans_b, ..
        } => gemm_shape(x, second, inputs, trans_a, trans_b),
        Op::MatMul => matmul_shape(x, second),
        Op::Add => broadcast(x, second),
        Op::Relu | Op::Clip { .. } | Op::Identity => Ok(x.to_vec()),
        Op::BatchNormalization { .. } => batch_norm_shape(x, inputs),
        Op::Unary(_) | Op::Softmax { .. } => Ok(x.to_vec()),
        Op::Binary(_) => broadcast(x, second),
        Op::Transpose { perm } => {
            let reversed: Vec<usize> = (0..x.len()).rev().collect();
            let perm = if perm.is_empty() { &reversed } else { perm };
            let mut seen = vec![false; x.len()];
            if perm.len() != x.len()
                || perm
                    .iter()
                    .any(|&p| p >= x.len() || std::mem::replace(&mut seen[p], true))
            {
                return Err(mismatch(
                    "perm",
                    format!("a permutation of 0..{}", x.len()),
                    perm,
                ));
            }
            Ok(perm.iter().map(|&p| x[p]).collect())
        }
        Op::Squeeze { axes } => {
            let drop = axes
                .iter()
                .map(|&a| axis(a, x.len(), false))
                .collect::<Result<Vec<_>>>()?;
            if let Some(&a) = drop.iter().find(|&&a| x[a] != 1) {
                return Err(mismatch("squeezed axis", format!("size 1 on axis {a}"), x));
            }
            Ok(x.iter()
                .enumerate()
                .filter(|&(i, &d)| {
                    if drop.is_empty() {
                        d != 1
                    } else {
                        !drop.contains(&i)
                    }
                })
                .map(|(_, &d)| d)
                .collect())
        }
        Op::Unsqueeze { axes } => {
            let rank = x.len() + axes.len();
            let at = axes
                .iter()
                .map(|&a| axis(a, rank, false))
                .collect::<Result<Vec<_>>>()?;
            let mut rest = x.iter();
            let out: Vec<usize> = (0..rank)
                .map(|i| {
                    if at.contains(&i) {
                        1
                    } else {
                        rest.next().copied().unwrap_or(1)
                    }
                })
                .collect();
            if rest.next().is_some()
                || at.len() != axes.len()
                || (1..at.len()).any(|i| at[..i].contains(&at[i]))
            {
                return Err(mismatch("axes", "distinct axes of the output", axes));
            }
            Ok(out)
        }
        Op::ReduceMean { axes, keep_dims } => {
            let red = axes
                .iter()
                .map(|&a| axis(a, x.len(), false))
                .collect::<Result<Vec<_>>>()?;
            let reduced = |i: usize| red.is_empty() || red.contains(&i);
            if (0..x.len()).any(|i| reduced(i) && x[i] == 0) {
                return Err(mismatch("reduced axes", "non-empty", x));
            }
            Ok((0..x.len())
                .filter_map(|i| match (reduced(i), keep_dims) {
                    (true, true) => Some(1),
                    (true, false) => None,
                    (false, _) => Some(x[i]),
                })
                .collect())
        }
        Op::Flatten { axis: ax } => {
            let a = axis(*ax, x.len(), true)?;
            Ok(vec![
                elements(&x[..a], "the dimensions before the axis")?,
                elements(&x[a..], "the dimensions from the axis on")?,
            ])
        }
        Op::Reshape { shape, allow_zero } => reshape_shape(x, shape, allow_zero),
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
        Op::Pad { pads, .. } => pad(x, pads),
        Op::Concat { axis: ax } => concat_shape(x, inputs, ax),
    }
}

fn conv_shape(
    x: &[usize],
    second: &[usize],
    inputs: &[&[usize]],
    stride: &[usize; 2],
    pad: &[usize; 4],
    dilation: &[usize; 2],
    groups: &usize,
) -> Result<Vec<usize>> {
    let x = nchw(x, "input")?;
    let w = second;
    if w.len() != 4 {
        return Err(mismatch("weights", "[out, in/groups, kh, kw]", w));
    }
    let (c, o) = (x[1], w[0]);
    if c % groups != 0 || o % groups != 0 || w[1].checked_mul(*groups) != Some(c) {
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

fn pool_shape(x: &[usize], p: &Pool2d) -> Result<Vec<usize>> {
    let x = nchw(x, "input")?;
    let Pool2d {
        kernel,
        stride,
        pad,
        dilation,
        ceil_mode,
    } = p;
    if pad[0] >= kernel[0] || pad[1] >= kernel[1] || pad[2] >= kernel[0] || pad[3] >= kernel[1] {
        return Err(mismatch(
            "pads",
            format!("each pad smaller than the kernel {kernel:?}"),
            pad,
        ));
    }
    let [oh, ow] = spatial(x[2], x[3], *kernel, *stride, *dilation, *pad, *ceil_mode)?;
    Ok(vec![x[0], x[1], oh, ow])
}

fn gemm_shape(
    x: &[usize],
    second: &[usize],
    inputs: &[&[usize]],
    trans_a: &bool,
    trans_b: &bool,
) -> Result<Vec<usize>> {
    let (a, b) = (x, second);
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

fn matmul_shape(x: &[usize], second: &[usize]) -> Result<Vec<usize>> {
    let (a, b) = (x, second);
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

fn batch_norm_shape(x: &[usize], inputs: &[&[usize]]) -> Result<Vec<usize>> {
    let c = *x.get(1).ok_or_else(|| Error::ShapeMismatch {
        what: "BatchNormalization input".into(),
        expected: "rank >= 2 (channels on axis 1)".into(),
        found: format!("{x:?}"),
    })?;
    let params = inputs.get(1..).unwrap_or(&[]);
    if params.len() != 4 {
        return Err(Error::ShapeMismatch {
            what: "BatchNormalization inputs".into(),
            expected: "x, scale, bias, mean, var".into(),
            found: format!("{} inputs", inputs.len()),
        });
    }
    for (p, shape) in ["scale", "bias", "mean", "var"].iter().zip(params) {
        if *shape != [c] {
            return Err(Error::ShapeMismatch {
                what: format!("BatchNormalization {p}"),
                expected: format!("[{c}] (one per channel)"),
                found: format!("{shape:?}"),
            });
        }
    }
    Ok(x.to_vec())
}

fn reshape_shape(x: &[usize], shape: &[i64], allow_zero: &bool) -> Result<Vec<usize>> {
    let total = elements(x, "the input dimensions")?;
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
    let known = known.ok_or_else(|| mismatch("shape", "a product that fits in usize", shape))?;
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

fn concat_shape(x: &[usize], inputs: &[&[usize]], ax: &i64) -> Result<Vec<usize>> {
    let a = axis(*ax, x.len(), false)?;
    let mut out = x.to_vec();
    for s in inputs.iter().skip(1) {
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
        out[a] = out[a]
            .checked_add(s[a])
            .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "the inputs' sizes along axis {a} add up to more than \
                     {MAX_TENSOR_ELEMENTS}"
                ))
            })?;
    }
    Ok(out)
}

/// Output shape of a constant `Pad`.
///
/// Along each axis of length `d` with begin and end counts `b` and `e` (negative = crop), the output
/// holds `d + b + e` elements. The crops together may remove at most the `d` elements of the axis:
/// a crop that would reach into the padding added at the other end (pads `[10, -10]` on a length-5
/// axis) is refused, so the executor only ever copies a (possibly empty) range of real data. The sum
/// is computed in `i128`, which three 64-bit terms cannot overflow.
pub(crate) fn pad(x: &[usize], pads: &[i64]) -> Result<Vec<usize>> {
    let r = x.len();
    if pads.len() != 2 * r {
        return Err(mismatch(
            "pads",
            format!("{} values (2 x rank)", 2 * r),
            pads,
        ));
    }
    let mut out = Vec::with_capacity(r);
    for (i, &d) in x.iter().enumerate() {
        let (begin, end) = (pads[i], pads[i + r]);
        let what = format!("pads {pads:?} on axis {i} (length {d})");
        let crop = i128::from(begin.min(0)).unsigned_abs() + i128::from(end.min(0)).unsigned_abs();
        if crop > d as u128 {
            return Err(Error::ShapeMismatch {
                what,
                expected: format!(
                    "crops (negative pads) that remove at most the axis's {d} elements in total"
                ),
                found: format!("begin {begin}, end {end}: {crop} elements cropped"),
            });
        }
        let n = d as i128 + i128::from(begin) + i128::from(end);
        match usize::try_from(n) {
            Ok(n) if n <= MAX_TENSOR_ELEMENTS => out.push(n),
            _ => {
                return Err(Error::Unsupported(format!(
                    "{what}: begin {begin}, end {end} give {n} elements, more than \
                     {MAX_TENSOR_ELEMENTS}"
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sizes() {
        let out = |len, k, s, d, pad, ceil| window_out(len, k, s, d, pad, ceil).unwrap();
        assert_eq!(out(28, 3, 1, 1, (1, 1), false), Some(28));
        assert_eq!(out(28, 2, 2, 1, (0, 0), false), Some(14));
        assert_eq!(out(7, 2, 2, 1, (0, 0), false), Some(3));
        assert_eq!(out(7, 2, 2, 1, (0, 0), true), Some(4));
        // last window would start in the padding only: dropped
        assert_eq!(out(6, 3, 2, 1, (1, 1), true), Some(4));
        assert_eq!(out(3, 2, 2, 1, (1, 1), true), Some(2));
        assert_eq!(out(2, 3, 1, 1, (0, 0), false), None);
        assert_eq!(out(2, 1, 0, 1, (0, 0), false), None);
    }

    #[test]
    fn window_sizes_that_overflow_are_errors_not_wraps() {
        for (len, kernel, dilation, pad) in [
            (8, 3, 1, (usize::MAX, 0)),
            (8, 3, 1, (usize::MAX - 8, 1)),
            (8, 3, usize::MAX, (0, 0)),
        ] {
            match window_out(len, kernel, 1, dilation, pad, false) {
                Err(Error::Unsupported(m)) => assert_eq!(
                    m,
                    format!(
                        "a window of {kernel} taps at dilation {dilation} over {len} elements \
                         padded by {} + {} overflows usize",
                        pad.0, pad.1
                    )
                ),
                other => panic!("{len} {kernel} {dilation} {pad:?}: {other:?}"),
            }
        }
        // The largest padded length that fits: one window per element.
        assert_eq!(
            window_out(0, 1, 1, 1, (usize::MAX, 0), false).unwrap(),
            Some(usize::MAX)
        );
        assert!(window_out(0, 1, 1, 1, (usize::MAX, 1), false).is_err());
        // ceil mode at the top of the range: windows start at 0, 2, .., 2^64 - 2; the next start,
        // 2^64, overflows and is dropped rather than wrapping to 0.
        assert_eq!(
            window_out(usize::MAX, 1, 2, 1, (0, 0), true).unwrap(),
            Some(usize::MAX / 2 + 1)
        );
    }

    fn pad_node(pads: Vec<i64>) -> Node {
        Node {
            name: "p".into(),
            op: Op::Pad { pads, value: 0.0 },
            inputs: vec!["x".into()],
            output: "y".into(),
        }
    }

    #[test]
    fn pads_that_crop_into_the_other_sides_padding_are_refused() {
        match infer(&pad_node(vec![10, -10]), &[&[5]]) {
            Err(Error::ShapeMismatch {
                what,
                expected,
                found,
            }) => {
                assert_eq!(what, "pads [10, -10] on axis 0 (length 5)");
                assert_eq!(
                    expected,
                    "crops (negative pads) that remove at most the axis's 5 elements in total"
                );
                assert_eq!(found, "begin 10, end -10: 10 elements cropped");
            }
            other => panic!("{other:?}"),
        }
        // Crops on both sides that together exceed the axis, and the mirror image.
        assert!(infer(&pad_node(vec![-3, -3]), &[&[5]]).is_err());
        assert!(infer(&pad_node(vec![-6, 2]), &[&[5]]).is_err());
        // At the limit: everything cropped, or cropped on one side and padded on the other.
        assert_eq!(infer(&pad_node(vec![-2, -3]), &[&[5]]).unwrap(), vec![0]);
        assert_eq!(infer(&pad_node(vec![4, -5]), &[&[5]]).unwrap(), vec![4]);
        assert_eq!(
            infer(&pad_node(vec![1, -1, 0, 2]), &[&[2, 3]]).unwrap(),
            vec![3, 4]
        );
    }

    #[test]
    fn pads_near_i64_limits_are_errors_not_overflows() {
        for pads in [
            vec![i64::MAX, i64::MAX],
            vec![i64::MAX, 0],
            vec![0, i64::MAX - 2],
            vec![i64::MIN, i64::MIN],
            vec![i64::MIN, i64::MAX],
            vec![i64::MAX, i64::MIN],
        ] {
            match infer(&pad_node(pads.clone()), &[&[5]]) {
                Err(Error::Unsupported(m)) => {
                    assert!(
                        m.starts_with(&format!("pads {pads:?} on axis 0 (length 5)")),
                        "{m}"
                    );
                    assert!(
                        m.contains(&format!("more than {MAX_TENSOR_ELEMENTS}")),
                        "{m}"
                    );
                }
                Err(Error::ShapeMismatch { what, found, .. }) => {
                    assert_eq!(what, format!("pads {pads:?} on axis 0 (length 5)"));
                    assert!(found.contains("cropped"), "{found}");
                    assert!(pads.iter().any(|&p| p < 0), "{pads:?}");
                }
                other => panic!("{pads:?}: {other:?}"),
            }
        }
    }

    fn node(op: Op, inputs: usize) -> Node {
        Node {
            name: "n".into(),
            op,
            inputs: (0..inputs).map(|i| format!("x{i}")).collect(),
            output: "y".into(),
        }
    }

    #[test]
    fn products_and_sums_of_dimensions_are_checked() {
        let big = [1usize << 20, 1 << 20, 1 << 20];
        let flatten = node(Op::Flatten { axis: 1 }, 1);
        match infer(&flatten, &[&big]) {
            Err(Error::Unsupported(m)) => assert_eq!(
                m,
                format!(
                    "the dimensions from the axis on [1048576, 1048576] hold more than \
                     {MAX_TENSOR_ELEMENTS} elements"
                )
            ),
            other => panic!("{other:?}"),
        }
        // Overflowing usize (not just the limit) is the same error.
        let huge = [usize::MAX, usize::MAX];
        assert!(matches!(
            infer(&flatten, &[&huge]),
            Err(Error::Unsupported(_))
        ));
        let reshape = node(
            Op::Reshape {
                shape: vec![-1],
                allow_zero: false,
            },
            1,
        );
        match infer(&reshape, &[&big]) {
            Err(Error::Unsupported(m)) => assert!(m.starts_with("the input dimensions"), "{m}"),
            other => panic!("{other:?}"),
        }
        let concat = node(Op::Concat { axis: 1 }, 2);
        let half = [0usize, MAX_TENSOR_ELEMENTS / 2 + 1];
        match infer(&concat, &[&half, &half]) {
            Err(Error::Unsupported(m)) => assert_eq!(
                m,
                format!("the inputs' sizes along axis 1 add up to more than {MAX_TENSOR_ELEMENTS}")
            ),
            other => panic!("{other:?}"),
        }
        let max = [0usize, usize::MAX];
        assert!(matches!(
            infer(&concat, &[&max, &max]),
            Err(Error::Unsupported(_))
        ));
        // A Conv whose weight dimension times groups overflows is a channel mismatch, not a wrap.
        let conv = node(
            Op::Conv {
                stride: [1, 1],
                pad: [0; 4],
                dilation: [1, 1],
                groups: 2,
            },
            2,
        );
        let w = [2usize, usize::MAX / 2 + 1, 1, 1];
        assert!(matches!(
            infer(&conv, &[&[1, 0, 4, 4], &w]),
            Err(Error::ShapeMismatch { .. })
        ));
        // Huge padding on a zero-size batch cannot hide a huge dimension either.
        let padded = node(
            Op::Conv {
                stride: [1, 1],
                pad: [0, 0, 0, usize::MAX / 2],
                dilation: [1, 1],
                groups: 1,
            },
            2,
        );
        match infer(&padded, &[&[0, 1, 4, 4], &[1, 1, 1, 1]]) {
            Err(Error::Unsupported(m)) => {
                assert!(m.starts_with("output dimension 3 of [0, 1, 4, "), "{m}")
            }
            other => panic!("{other:?}"),
        }
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
