//! Integer pooling: [`max_pool2d`], [`avg_pool2d`], [`global_avg_pool`] over NCHW codes.
//!
//! Averages are correctly rounded: y = round(Σx · 2^(n_y − n_x) / count), computed exactly in 128-bit
//! integers as the floor quotient plus one where the remainder is above half the divisor, or exactly
//! half with an odd quotient: round to nearest with **ties to even**. Unlike the convolution's
//! requantization (ties toward +∞, where a tie needs the low s bits of a wide accumulator to be one
//! exact pattern), a small window makes ties frequent (2x2: a quarter of the sums), and rounding them
//! all up would raise the mean by an eighth of a step per pool. Then saturated to the output stage.

use ndarray::{Array4, Ix4};

use super::reference::requantize_even_wide;
use super::{Activation8or16, OutputStage};
use crate::error::{Error, Result};
use crate::fixed::QTensor;

/// Pooling window attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dParams {
    /// Window (height, width), each ≥ 1.
    pub kernel: [usize; 2],
    /// Stride (vertical, horizontal), each ≥ 1.
    pub stride: [usize; 2],
    /// Padding (top, left, bottom, right).
    pub padding: [usize; 4],
}

impl Pool2dParams {
    /// A k×k window with stride `s` and no padding.
    pub fn new(k: usize, s: usize) -> Self {
        Self {
            kernel: [k, k],
            stride: [s, s],
            padding: [0; 4],
        }
    }
    /// The same with padding `p` on all sides.
    pub fn with_padding(mut self, p: usize) -> Self {
        self.padding = [p; 4];
        self
    }

    /// Output (height, width) for an NCHW input `shape`, with every size checked.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero window or stride, or padding not smaller than the
    /// window; [`Error::ShapeMismatch`] for a plane of 0 rows or columns, or if the window does not
    /// fit the padded input;
    /// [`Error::Unsupported`] if a padded plane or the output would hold more than
    /// [`super::MAX_ELEMENTS`] elements.
    fn out_hw(&self, shape: &[usize]) -> Result<(usize, usize)> {
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        for (name, v) in [("pool window", self.kernel), ("pool stride", self.stride)] {
            if v.contains(&0) {
                return Err(Error::InvalidArgument {
                    name,
                    reason: format!("expected at least 1 in each direction, found {v:?}"),
                });
            }
        }
        if self.padding[0] >= kh
            || self.padding[2] >= kh
            || self.padding[1] >= kw
            || self.padding[3] >= kw
        {
            return Err(Error::InvalidArgument {
                name: "pool padding",
                reason: format!(
                    "expected each side smaller than the window {:?} (every window then holds a \
                     pixel), found {:?}",
                    self.kernel, self.padding
                ),
            });
        }
        if h == 0 || w == 0 {
            return Err(Error::ShapeMismatch {
                what: "pool input size".into(),
                expected: "a plane of at least 1x1 pixels (every window holds a pixel)".into(),
                found: format!("{h}x{w}"),
            });
        }
        let max = super::MAX_ELEMENTS;
        let too_large = |what: &str| {
            Error::Unsupported(format!(
                "pooling of input {shape:?} padded by {:?} with window {:?}: {what} would hold \
                 more than {max} elements",
                self.padding, self.kernel
            ))
        };
        let hp = h
            .checked_add(self.padding[0])
            .and_then(|v| v.checked_add(self.padding[2]));
        let wp = w
            .checked_add(self.padding[1])
            .and_then(|v| v.checked_add(self.padding[3]));
        let (Some(hp), Some(wp)) = (hp, wp) else {
            return Err(too_large("a padded plane"));
        };
        if hp < kh || wp < kw {
            return Err(Error::ShapeMismatch {
                what: "pool input size".into(),
                expected: format!("a padded input of at least {kh}x{kw} (the window)"),
                found: format!("{hp}x{wp} (input {h}x{w} padded by {:?})", self.padding),
            });
        }
        // The window lies inside the padded plane, so its tap count is bounded by it too.
        if hp.checked_mul(wp).is_none_or(|v| v > max) {
            return Err(too_large("a padded plane"));
        }
        let (oh, ow) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
        let out = [n, c, oh, ow]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        if out.is_none_or(|v| v > max) {
            return Err(too_large(&format!("the output [{n}, {c}, {oh}, {ow}]")));
        }
        Ok((oh, ow))
    }
}

/// Visits every output position with the window's in-bounds input range.
fn windows(
    shape: &[usize],
    p: &Pool2dParams,
    (oh, ow): (usize, usize),
    mut f: impl FnMut([usize; 4], (usize, usize), (usize, usize)),
) {
    let (h, w) = (shape[2], shape[3]);
    for n in 0..shape[0] {
        for c in 0..shape[1] {
            for oy in 0..oh {
                let y0 = (oy * p.stride[0]).saturating_sub(p.padding[0]);
                let y1 = (oy * p.stride[0] + p.kernel[0])
                    .saturating_sub(p.padding[0])
                    .min(h);
                for ox in 0..ow {
                    let x0 = (ox * p.stride[1]).saturating_sub(p.padding[1]);
                    let x1 = (ox * p.stride[1] + p.kernel[1])
                        .saturating_sub(p.padding[1])
                        .min(w);
                    f([n, c, oy, ox], (y0, y1), (x0, x1));
                }
            }
        }
    }
}

/// Max pooling; padding never wins (it counts as −∞). The output keeps the input's format(s) and its
/// memory layout: codes held channels-last (an NCHW-shaped array whose memory is NHWC, as
/// [`crate::exec::FixedNetwork`] keeps them between layers) are pooled in place in that layout.
///
/// # Errors
/// [`Error::InvalidArgument`] for zero windows/strides or padding ≥ window; [`Error::ShapeMismatch`]
/// if the window does not fit; [`Error::Unsupported`] if a padded plane or the output would hold
/// more than [`super::MAX_ELEMENTS`] elements.
pub fn max_pool2d<A: Activation8or16>(
    x: &QTensor<A, Ix4>,
    p: Pool2dParams,
) -> Result<QTensor<A, Ix4>> {
    let s = x.codes().shape();
    let (oh, ow) = p.out_hw(s)?;
    if s[0] == 0 || s[1] == 0 {
        // No output (and no row buffer sized by a width that only a zero-size tensor can claim).
        return Ok(QTensor::from_codes_trusted(
            Array4::<A>::default((s[0], s[1], oh, ow)),
            x.formats().to_vec(),
            x.channel_axis(),
        ));
    }
    let nhwc = x.codes().view().permuted_axes([0, 2, 3, 1]);
    if let (Some(xs), [0, 0, 0, 0]) = (nhwc.as_slice(), p.padding) {
        // Channels-last in memory: pool in that layout and return the same layout.
        let mut out = Array4::<A>::default((s[0], oh, ow, s[1]));
        if let Some(os) = out.as_slice_mut() {
            max_pool_unpadded(xs, (s[0], s[2], s[3] * s[1]), s[1], &p, (oh, ow), os);
        }
        return Ok(QTensor::from_codes_trusted(
            out.permuted_axes([0, 3, 1, 2]),
            x.formats().to_vec(),
            x.channel_axis(),
        ));
    }
    let mut out = Array4::<A>::default((s[0], s[1], oh, ow));
    // Flat, contiguous indexing (the 4-D index of each tap is the slow part otherwise).
    let xc = x.codes().as_standard_layout();
    let xs = xc.as_slice().unwrap_or(&[]);
    let (h, w) = (s[2], s[3]);
    if p.padding == [0; 4] {
        if let Some(os) = out.as_slice_mut() {
            max_pool_unpadded(xs, (s[0] * s[1], h, w), 1, &p, (oh, ow), os);
        }
    } else if let Some(os) = out.as_slice_mut() {
        windows(s, &p, (oh, ow), |i, (y0, y1), (x0, x1)| {
            let plane = (i[0] * s[1] + i[1]) * h * w;
            let mut m = i64::MIN;
            for y in y0..y1 {
                for &v in &xs[plane + y * w + x0..plane + y * w + x1] {
                    m = m.max(v.to_code());
                }
            }
            os[((i[0] * s[1] + i[1]) * oh + i[2]) * ow + i[3]] = A::from_code(m);
        });
    }
    // Every output is one of the input's codes, so it is in range.
    Ok(QTensor::from_codes_trusted(
        out,
        x.formats().to_vec(),
        x.channel_axis(),
    ))
}

/// Max pooling without padding over `planes` contiguous planes of H rows, each row `w_el` elements
/// holding W pixels of `c` interleaved channels (c = 1 for NCHW planes, C for NHWC images). For each
/// output row: the element-wise maximum of the window's input rows (a vectorizable pass), then the
/// maximum over each window's pixels of that row. Same result as the window-by-window loop.
fn max_pool_unpadded<A: Activation8or16>(
    xs: &[A],
    (planes, h, w_el): (usize, usize, usize),
    c: usize,
    p: &Pool2dParams,
    (oh, ow): (usize, usize),
    os: &mut [A],
) {
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let mut row = vec![A::default(); w_el];
    let out_row = ow * c;
    for (src, dst) in xs
        .chunks_exact(h * w_el)
        .zip(os.chunks_exact_mut(oh * out_row))
        .take(planes)
    {
        for (oy, drow) in dst.chunks_exact_mut(out_row).enumerate() {
            let y0 = oy * sh;
            row.copy_from_slice(&src[y0 * w_el..][..w_el]);
            for y in y0 + 1..y0 + kh {
                for (r, &v) in row.iter_mut().zip(&src[y * w_el..][..w_el]) {
                    *r = (*r).max(v);
                }
            }
            for (ox, o) in drow.chunks_exact_mut(c).enumerate() {
                let x0 = ox * sw * c;
                o.copy_from_slice(&row[x0..x0 + c]);
                for kx in 1..kw {
                    for (o, &v) in o.iter_mut().zip(&row[x0 + kx * c..][..c]) {
                        *o = (*o).max(v);
                    }
                }
            }
        }
    }
}

/// Average pooling to `output`: y = round(Σx·2^(n_y − n_x) / count), ties to even (module docs).
/// `count_include_pad` chooses count = window size (ONNX `count_include_pad = 1`) or the number of
/// in-bounds pixels.
///
/// # Errors
/// As [`max_pool2d`]; [`Error::Unsupported`] for per-channel input formats; output format errors as
/// for [`super::Conv2d::new`].
pub fn avg_pool2d<A: Activation8or16, O: Activation8or16>(
    x: &QTensor<A, Ix4>,
    p: Pool2dParams,
    count_include_pad: bool,
    output: OutputStage,
) -> Result<QTensor<O, Ix4>> {
    if x.channel_axis().is_some() {
        return Err(Error::Unsupported(
            "average pooling of per-channel formats".into(),
        ));
    }
    let (lo, hi) = output.code_range::<O>()?;
    let e = output.format.frac_bits() - x.format().frac_bits();
    let s = x.codes().shape();
    let (oh, ow) = p.out_hw(s)?;
    let mut out = Array4::<O>::default((s[0], s[1], oh, ow));
    if out.is_empty() {
        return QTensor::from_codes(out, output.format);
    }
    let xc = x.codes();
    windows(s, &p, (oh, ow), |i, (y0, y1), (x0, x1)| {
        let mut sum = 0i64;
        for y in y0..y1 {
            for xx in x0..x1 {
                sum += xc[[i[0], i[1], y, xx]].to_code();
            }
        }
        let cnt = if count_include_pad {
            p.kernel[0] * p.kernel[1]
        } else {
            (y1 - y0) * (x1 - x0)
        };
        out[i] = O::from_code(divide_round(sum, cnt as i64, e, lo, hi));
    });
    QTensor::from_codes(out, output.format)
}

/// Global average pooling: [N, C, H, W] → [N, C, 1, 1], y = round(Σx·2^(n_y − n_x) / (H·W)), ties
/// to even.
///
/// # Errors
/// [`Error::Empty`] for H·W = 0; otherwise as [`avg_pool2d`].
///
/// # Example
/// ```
/// use fixq::kernels::{global_avg_pool, OutputStage};
/// use fixq::{QFormat, QTensor};
/// use ndarray::Array4;
/// let x = QTensor::from_codes(Array4::from_shape_vec((1, 1, 1, 4), vec![1u8, 2, 2, 0]).unwrap(),
///     QFormat::unsigned(8, 0)?)?;
/// let y = global_avg_pool::<u8, u8>(&x, OutputStage::new(QFormat::unsigned(8, 0)?))?;
/// assert_eq!(y.codes()[[0, 0, 0, 0]], 1); // 5/4 = 1.25 -> 1
/// # Ok::<(), fixq::Error>(())
/// ```
pub fn global_avg_pool<A: Activation8or16, O: Activation8or16>(
    x: &QTensor<A, Ix4>,
    output: OutputStage,
) -> Result<QTensor<O, Ix4>> {
    let s = x.codes().shape();
    if s[2].checked_mul(s[3]) == Some(0) {
        return Err(Error::Empty {
            what: "global_avg_pool input",
        });
    }
    let p = Pool2dParams {
        kernel: [s[2], s[3]],
        stride: [1, 1],
        padding: [0; 4],
    };
    avg_pool2d(x, p, true, output)
}

/// round(sum · 2^e / cnt), ties to even (unbiased: a 2x2 window makes a quarter of the sums ties),
/// clamped to [lo, hi]. Exact for |sum| < 2⁴⁷, cnt < 2³². Numerator and denominator fit `i64` in
/// every real layer (|sum| < 2⁴⁷ shifted by e ≤ 15, count < 2³² shifted by −e ≤ 30), and then the
/// division runs in `i64`; otherwise in `i128` (`divide_round_wide`, the same rule).
#[inline]
fn divide_round(sum: i64, cnt: i64, e: i32, lo: i64, hi: i64) -> i64 {
    let fits = |v: i64, s: i32| (0..=62).contains(&s) && v.unsigned_abs() < 1u64 << (62 - s);
    let (es, ds) = (e.max(0), (-e).max(0));
    if cnt > 0 && fits(sum, es) && fits(cnt, ds) {
        let (num, den) = (sum << es, cnt << ds);
        let (q, r) = (num.div_euclid(den), num.rem_euclid(den));
        // r < den < 2^62, so 2r cannot overflow.
        let q = q + i64::from(2 * r > den || (2 * r == den && q & 1 == 1));
        return q.clamp(lo, hi);
    }
    divide_round_wide(sum, cnt, e, lo, hi)
}

/// [`divide_round`] in `i128`, for any shift.
fn divide_round_wide(sum: i64, cnt: i64, e: i32, lo: i64, hi: i64) -> i64 {
    // Beyond these shifts the result is already decided (0, or saturated unless sum = 0).
    let num = i128::from(sum) << e.clamp(0, 64) as u32;
    let den = i128::from(cnt) << (-e).clamp(0, 80) as u32;
    let (q, r) = (num.div_euclid(den), num.rem_euclid(den));
    let q = q + i128::from(2 * r > den || (2 * r == den && q & 1 == 1));
    requantize_even_wide(q.clamp(-(1 << 80), 1 << 80), 0, lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The i64 path equals the i128 one wherever it is taken, ties included.
    #[test]
    fn divide_round_narrow_equals_wide() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 11
        };
        for i in 0..200_000u64 {
            let mag = 1i64 << (next() % 48);
            let sum = (next() as i64 % mag) * if i % 2 == 0 { 1 } else { -1 };
            let cnt = 1 + (next() % 64) as i64;
            let e = (next() % 40) as i32 - 20;
            let (lo, hi) = if i % 3 == 0 {
                (-128, 127)
            } else {
                (i64::MIN / 4, i64::MAX / 4)
            };
            assert_eq!(
                divide_round(sum, cnt, e, lo, hi),
                divide_round_wide(sum, cnt, e, lo, hi),
                "sum {sum} cnt {cnt} e {e}"
            );
        }
        // Exact ties at several shifts.
        for e in -5..=5 {
            for sum in -40i64..=40 {
                assert_eq!(
                    divide_round(sum, 4, e, -1000, 1000),
                    divide_round_wide(sum, 4, e, -1000, 1000)
                );
            }
        }
    }

    #[test]
    fn divide_round_ties_to_even() {
        assert_eq!(divide_round(5, 2, 0, -100, 100), 2); // 2.5
        assert_eq!(divide_round(7, 2, 0, -100, 100), 4); // 3.5
        assert_eq!(divide_round(-5, 2, 0, -100, 100), -2); // -2.5
        assert_eq!(divide_round(-3, 2, 0, -100, 100), -2); // -1.5
        assert_eq!(divide_round(7, 3, 0, -100, 100), 2); // 2.33
        assert_eq!(divide_round(5, 3, 0, -100, 100), 2); // 1.67
        assert_eq!(divide_round(3, 4, 1, -100, 100), 2); // 1.5
        assert_eq!(divide_round(5, 4, 1, -100, 100), 2); // 2.5
        assert_eq!(divide_round(3, 4, -1, -100, 100), 0); // 0.375
        assert_eq!(divide_round(1, 1, 100, -8, 7), 7);
        assert_eq!(divide_round(-1, 1, -100, -8, 7), 0);
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use crate::QFormat;
    use crate::kernels::Activation;
    use ndarray::Array4;

    fn x() -> QTensor<i8, Ix4> {
        let v: Vec<i8> = (0..2 * 3 * 5 * 4)
            .map(|i| ((i * 37) % 256) as u8 as i8)
            .collect();
        QTensor::from_codes(
            Array4::from_shape_vec((2, 3, 5, 4), v).unwrap(),
            QFormat::signed(8, 2).unwrap(),
        )
        .unwrap()
    }

    /// Brute force over the padded window with f64 and the documented tie rule.
    fn brute(
        t: &QTensor<i8, Ix4>,
        p: Pool2dParams,
        incl: bool,
        out_frac: i32,
        max: bool,
    ) -> Vec<i64> {
        let s = t.codes().shape();
        let (oh, ow) = p.out_hw(s).unwrap();
        let mut r = Vec::new();
        for n in 0..s[0] {
            for c in 0..s[1] {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut sum, mut cnt, mut m) = (0i64, 0i64, i64::MIN);
                        for ky in 0..p.kernel[0] {
                            for kx in 0..p.kernel[1] {
                                let y = (oy * p.stride[0] + ky) as i64 - p.padding[0] as i64;
                                let xx = (ox * p.stride[1] + kx) as i64 - p.padding[1] as i64;
                                if y >= 0 && xx >= 0 && (y as usize) < s[2] && (xx as usize) < s[3]
                                {
                                    let v = i64::from(t.codes()[[n, c, y as usize, xx as usize]]);
                                    sum += v;
                                    cnt += 1;
                                    m = m.max(v);
                                }
                            }
                        }
                        if max {
                            r.push(m);
                        } else {
                            let cnt = if incl {
                                (p.kernel[0] * p.kernel[1]) as i64
                            } else {
                                cnt
                            };
                            let v = sum as f64 * 2f64.powi(out_frac - 2) / cnt as f64;
                            r.push((v.round_ties_even() as i64).clamp(-128, 127));
                        }
                    }
                }
            }
        }
        r
    }

    #[test]
    fn pools_match_brute_force() {
        let a = x();
        // The same codes transposed to 4×5 planes (odd width).
        let b = QTensor::from_codes(
            a.codes()
                .view()
                .permuted_axes([0, 1, 3, 2])
                .as_standard_layout()
                .into_owned(),
            a.format(),
        )
        .unwrap();
        for t in [a, b] {
            check_pools(&t);
        }
    }

    fn check_pools(t: &QTensor<i8, Ix4>) {
        let t = t.clone();
        for p in [
            Pool2dParams::new(2, 2),
            Pool2dParams::new(3, 1),
            Pool2dParams::new(3, 2),
            Pool2dParams {
                kernel: [2, 3],
                stride: [1, 2],
                padding: [0; 4],
            },
            Pool2dParams::new(3, 1).with_padding(1),
            Pool2dParams::new(3, 2).with_padding(2),
        ] {
            let m = max_pool2d(&t, p).unwrap();
            assert_eq!(
                m.codes().iter().map(|&v| i64::from(v)).collect::<Vec<_>>(),
                brute(&t, p, false, 2, true)
            );
            // The same tensor held channels-last in memory pools to the same logical result.
            let nhwc = t
                .codes()
                .view()
                .permuted_axes([0, 2, 3, 1])
                .as_standard_layout()
                .into_owned()
                .permuted_axes([0, 3, 1, 2]);
            let tn = QTensor::from_codes(nhwc, t.format()).unwrap();
            assert_eq!(max_pool2d(&tn, p).unwrap().codes(), m.codes(), "{p:?}");
            for incl in [false, true] {
                for out_frac in [0, 2, 5] {
                    let st = OutputStage::new(QFormat::signed(8, out_frac).unwrap());
                    let a = avg_pool2d::<i8, i8>(&t, p, incl, st).unwrap();
                    let got: Vec<i64> = a.codes().iter().map(|&v| i64::from(v)).collect();
                    assert_eq!(
                        got,
                        brute(&t, p, incl, out_frac, false),
                        "{p:?} incl {incl} frac {out_frac}"
                    );
                }
            }
        }
        let g = global_avg_pool::<i8, u8>(
            &t,
            OutputStage::new(QFormat::unsigned(8, 2).unwrap()).with_activation(Activation::Relu),
        )
        .unwrap();
        assert_eq!(g.codes().shape(), &[2, 3, 1, 1]);
        assert!(Pool2dParams::new(0, 1).out_hw(&[1, 1, 4, 4]).is_err());
        assert!(max_pool2d(&t, Pool2dParams::new(2, 1).with_padding(2)).is_err());
    }
}
