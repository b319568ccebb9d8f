//! Error-feedback rounding of one weight row against the inverse of its input Gram matrix (GPTQ's
//! column loop, Frantar et al. 2023, on fixq's fixed grids).

use crate::error::{Error, Result};
use crate::fixed::NearestLevel;

/// The upper Cholesky factor `U` of `H⁻¹` (`H` the damped, normalised Gram matrix of a layer's
/// input, its columns taken in decreasing order of `H`'s diagonal), which drives the rounding of
/// every row that reads this input.
#[derive(Debug, Clone)]
pub(crate) struct Factor {
    k: usize,
    /// Column order: `perm[i]` is the weight index rounded `i`-th.
    perm: Vec<usize>,
    /// `U`, row-major `k × k` (upper triangle used), in the permuted order.
    u: Vec<f64>,
    /// The damping λ added to the diagonal of the normalised Gram matrix.
    damp: f64,
}

impl Factor {
    /// The factor of `gram` (`k × k`, row-major, `samples` samples), damped by `damping` × the
    /// mean of its diagonal (GPTQ's 1 %). Inputs that are always zero get the damping alone, so
    /// their weights round to nearest with no feedback.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when built without feature `gptq`; [`Error::Numerical`]-like
    /// [`Error::Internal`] if `H` is not positive definite even after a thousandfold damping.
    pub fn new(gram: &[f64], samples: u64, k: usize, damping: f64) -> Result<Self> {
        if gram.len() != k * k || k == 0 {
            return Err(Error::Internal {
                reason: format!("a {k}×{k} Gram matrix with {} entries", gram.len()),
            });
        }
        let n = samples.max(1) as f64;
        let diag: Vec<f64> = (0..k).map(|i| gram[i * k + i] / n).collect();
        let mean_diag = diag.iter().sum::<f64>() / k as f64;
        let mut perm: Vec<usize> = (0..k).collect();
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]).then(a.cmp(&b)));
        let base = if mean_diag > 0.0 && mean_diag.is_finite() {
            mean_diag
        } else {
            1.0
        };
        let mut last = None;
        for boost in [1.0, 10.0, 100.0, 1000.0] {
            let damp = (damping * boost).max(1e-12) * base;
            let h: Vec<f64> = (0..k * k)
                .map(|ij| {
                    let (i, j) = (ij / k, ij % k);
                    let v = gram[perm[i] * k + perm[j]] / n;
                    if i == j { v + damp } else { v }
                })
                .collect();
            match inverse_upper_factor(&h, k) {
                Ok(u) => return Ok(Self { k, perm, u, damp }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::Internal {
            reason: "no factorisation".into(),
        }))
    }

    /// Rounds `w` (one row, `k` weights) onto `level`'s grid, column by column in the factor's
    /// order: each weight's rounding error `e`, divided by `U[i][i]`, is subtracted from the weights
    /// not yet rounded along row `i` of `U` — the update that minimises the row's output error
    /// `(q − w) H (q − w)ᵀ` given the weights already fixed. Writes the grid values to `out`.
    ///
    /// Returns the row's output error power `(q − w) M (q − w)ᵀ` (`M` the undamped normalised
    /// Gram matrix), which the loop yields for free: each step's error `e_i = (r_i − q_i)/U_ii`
    /// adds `e_i²` to `(q − w)(M + λI)(q − w)ᵀ` (the Optimal Brain Surgeon identity for a
    /// quadratic), so the power is `Σ e_i² − λ‖q − w‖²`.
    /// The one-row definition [`Factor::round_rows`] is tested against.
    #[cfg(test)]
    pub fn round_row(&self, w: &[f32], level: &NearestLevel, out: &mut [f32]) -> f64 {
        let k = self.k;
        let mut r: Vec<f64> = self.perm.iter().map(|&p| f64::from(w[p])).collect();
        let (mut loss, mut norm) = (0f64, 0f64);
        for i in 0..k {
            let q = level.value(r[i]);
            out[self.perm[i]] = q as f32;
            let row = &self.u[i * k..(i + 1) * k];
            let e = (r[i] - q) / row[i];
            loss += e * e;
            let d = q - f64::from(w[self.perm[i]]);
            norm += d * d;
            if e != 0.0 {
                for (rj, &uj) in r[i + 1..].iter_mut().zip(&row[i + 1..]) {
                    *rj -= e * uj;
                }
            }
        }
        (loss - self.damp * norm).max(0.0)
    }
}

/// Columns per block of [`Factor::round_rows`]: within a block the feedback goes element by
/// element, to the columns after it as one matrix product (GPTQ's lazy batch update).
const BLOCK: usize = 64;

impl Factor {
    /// [`Factor::round_row`] for `rows` rows at once (`w` and `out` row-major `[rows, k]`, row `r`
    /// onto `levels[r]`'s grid), with the same result up to floating-point reassociation: the
    /// feedback to columns beyond the current block of [`BLOCK`] goes through one matrix product
    /// per block. Returns each row's output error power as `round_row` does.
    pub fn round_rows(
        &self,
        w: &[f32],
        rows: usize,
        levels: &[NearestLevel],
        out: &mut [f32],
    ) -> Vec<f64> {
        let k = self.k;
        let mut r = vec![0f64; rows * k];
        for (rr, wr) in r.chunks_exact_mut(k).zip(w.chunks_exact(k)) {
            for (d, &p) in rr.iter_mut().zip(&self.perm) {
                *d = f64::from(wr[p]);
            }
        }
        let mut loss = vec![0f64; rows];
        let mut err = vec![0f64; rows * BLOCK];
        let mut i1 = 0;
        while i1 < k {
            let i2 = (i1 + BLOCK).min(k);
            let b = i2 - i1;
            for row in 0..rows {
                let rr = &mut r[row * k..(row + 1) * k];
                let level = &levels[row];
                for i in i1..i2 {
                    let q = level.value(rr[i]);
                    out[row * k + self.perm[i]] = q as f32;
                    let u = &self.u[i * k..(i + 1) * k];
                    let e = (rr[i] - q) / u[i];
                    loss[row] += e * e;
                    err[row * b + (i - i1)] = e;
                    if e != 0.0 {
                        for (rj, &uj) in rr[i + 1..i2].iter_mut().zip(&u[i + 1..i2]) {
                            *rj -= e * uj;
                        }
                    }
                }
            }
            if i2 < k {
                feed_forward(&mut r, rows, k, &err[..rows * b], b, &self.u, i1, i2);
            }
            i1 = i2;
        }
        for (row, l) in loss.iter_mut().enumerate() {
            let norm: f64 = (0..k)
                .map(|j| {
                    let d = f64::from(out[row * k + j]) - f64::from(w[row * k + j]);
                    d * d
                })
                .sum();
            *l = (*l - self.damp * norm).max(0.0);
        }
        loss
    }
}

/// `r[:, i2..] -= err · U[i1..i2, i2..]` (`r` row-major `[rows, k]`, `err` `[rows, b]`).
#[cfg(feature = "gptq")]
#[allow(clippy::too_many_arguments)]
fn feed_forward(
    r: &mut [f64],
    rows: usize,
    k: usize,
    err: &[f64],
    b: usize,
    u: &[f64],
    i1: usize,
    i2: usize,
) {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, MatMut, MatRef, Par};
    let mut rm = MatMut::from_row_major_slice_mut(r, rows, k);
    let dst = rm.as_mut().submatrix_mut(0, i2, rows, k - i2);
    let em = MatRef::from_row_major_slice(err, rows, b);
    let um = MatRef::from_row_major_slice(u, k, k).submatrix(i1, i2, b, k - i2);
    matmul(dst, Accum::Add, em, um, -1.0, Par::Seq);
}

#[cfg(not(feature = "gptq"))]
#[allow(clippy::too_many_arguments)]
fn feed_forward(
    r: &mut [f64],
    rows: usize,
    k: usize,
    err: &[f64],
    b: usize,
    u: &[f64],
    i1: usize,
    i2: usize,
) {
    for row in 0..rows {
        for t in 0..b {
            let e = err[row * b + t];
            let ur = &u[(i1 + t) * k..(i1 + t + 1) * k];
            for j in i2..k {
                r[row * k + j] -= e * ur[j];
            }
        }
    }
}

/// `U` with `H⁻¹ = UᵀU`, row-major: the transpose of the lower Cholesky factor of `H⁻¹`.
#[cfg(feature = "gptq")]
fn inverse_upper_factor(h: &[f64], k: usize) -> Result<Vec<f64>> {
    use faer::linalg::solvers::DenseSolveCore;
    use faer::{MatRef, Side};
    let not_pd = || Error::Internal {
        reason: format!("the {k}×{k} input Gram matrix is not positive definite"),
    };
    let hm = MatRef::from_row_major_slice(h, k, k);
    let inv = hm.llt(Side::Lower).map_err(|_| not_pd())?.inverse();
    let l = inv.llt(Side::Lower).map_err(|_| not_pd())?;
    let l = l.L();
    let mut u = vec![0f64; k * k];
    for i in 0..k {
        for j in i..k {
            u[i * k + j] = l[(j, i)];
        }
    }
    if u.iter().all(|v| v.is_finite()) && (0..k).all(|i| u[i * k + i] > 0.0) {
        Ok(u)
    } else {
        Err(not_pd())
    }
}

#[cfg(not(feature = "gptq"))]
fn inverse_upper_factor(_h: &[f64], _k: usize) -> Result<Vec<f64>> {
    Err(Error::Unsupported(
        "error-compensating weight rounding needs fixq's feature 'gptq' (faer's Cholesky)".into(),
    ))
}

#[cfg(all(test, feature = "gptq"))]
mod tests {
    use super::*;
    use crate::fixed::QFormat;

    /// (q − w) H (q − w)ᵀ.
    fn h_error(h: &[f64], k: usize, w: &[f32], q: &[f32]) -> f64 {
        let e: Vec<f64> = w.iter().zip(q).map(|(a, b)| f64::from(*b - *a)).collect();
        let mut s = 0.0;
        for i in 0..k {
            for j in 0..k {
                s += e[i] * h[i * k + j] * e[j];
            }
        }
        s
    }

    #[test]
    fn factor_reconstructs_the_inverse() {
        let k = 6;
        let h: Vec<f64> = (0..k * k)
            .map(|ij| {
                let (i, j) = (ij / k, ij % k);
                if i == j {
                    4.0 + i as f64
                } else {
                    1.0 / (1.0 + (i + j) as f64)
                }
            })
            .collect();
        let f = Factor::new(&h, 1, k, 0.0).unwrap();
        // UᵀU = (P H Pᵀ + damp)⁻¹; check (UᵀU)(P H Pᵀ) ≈ I with damp ≈ 0.
        let hp: Vec<f64> = (0..k * k)
            .map(|ij| h[f.perm[ij / k] * k + f.perm[ij % k]])
            .collect();
        for i in 0..k {
            for j in 0..k {
                let mut s = 0.0;
                for m in 0..k {
                    let mut inv = 0.0;
                    for t in 0..k {
                        inv += f.u[t * k + i] * f.u[t * k + m];
                    }
                    s += inv * hp[m * k + j];
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-6, "({i},{j}) = {s}");
            }
        }
        // The most energetic input first.
        assert_eq!(f.perm[0], k - 1);
    }

    #[test]
    fn feedback_beats_nearest_on_correlated_inputs() {
        // Inputs strongly correlated: x = a·1 + small noise, so errors can cancel across weights.
        let (k, n) = (16, 400);
        let mut rng = crate::fixed::SplitMix64::new(11);
        let mut x = vec![0f32; n * k];
        for r in 0..n {
            let a = rng.next_unit() as f32 * 2.0 - 1.0;
            for c in 0..k {
                x[r * k + c] = a + 0.2 * (rng.next_unit() as f32 - 0.5);
            }
        }
        let mut g = vec![0f64; k * k];
        super::super::moments::gram_add_reference(&mut g, &x, n, k);
        let h: Vec<f64> = g.iter().map(|v| v / n as f64).collect();
        let f = Factor::new(&g, n as u64, k, 0.01).unwrap();
        let format = QFormat::mid_rise(3, 2).unwrap();
        let level = NearestLevel::new(format);
        let mut worse = 0;
        let (mut total_near, mut total_fed) = (0.0, 0.0);
        for t in 0..20 {
            let w: Vec<f32> = (0..k)
                .map(|i| (((t * k + i) as f32) * 0.77).sin() * 0.9)
                .collect();
            let near: Vec<f32> = w.iter().map(|&v| level.fake_f32(v)).collect();
            let mut q = vec![0f32; k];
            let power = f.round_row(&w, &level, &mut q);
            // Every value on the grid.
            assert!(q.iter().all(|&v| level.fake_f32(v) == v));
            let (en, eq) = (h_error(&h, k, &w, &near), h_error(&h, k, &w, &q));
            // The loop's own account of its error is the direct one.
            assert!(
                (power - eq).abs() <= 1e-9 * (1.0 + eq),
                "row {t}: {power} vs {eq}"
            );
            if eq > en {
                worse += 1;
            }
            total_near += en;
            total_fed += eq;
        }
        // Greedy feedback is not optimal row by row (the caller keeps the better of the two), but
        // it wins on most rows and by far in total.
        assert!(
            worse <= 5,
            "feedback worse than nearest on {worse} of 20 rows ({total_fed} vs {total_near})"
        );
        assert!(
            total_fed < 0.2 * total_near,
            "feedback {total_fed} vs nearest {total_near}"
        );
    }

    #[test]
    fn blocked_rows_match_one_row_at_a_time() {
        // k spans several blocks; rows on different grids.
        let (k, n, rows) = (150, 300, 5);
        let mut rng = crate::fixed::SplitMix64::new(5);
        let x: Vec<f32> = (0..n * k)
            .map(|i| (rng.next_unit() as f32 - 0.3) + if i % k < 10 { 1.0 } else { 0.0 })
            .collect();
        let mut g = vec![0f64; k * k];
        super::super::moments::gram_add_reference(&mut g, &x, n, k);
        let f = Factor::new(&g, n as u64, k, 0.01).unwrap();
        let w: Vec<f32> = (0..rows * k)
            .map(|i| ((i as f32) * 0.41).sin() * 0.6)
            .collect();
        let levels: Vec<NearestLevel> = (0..rows)
            .map(|r| NearestLevel::new(QFormat::mid_rise(2 + r as u32 % 3, 2).unwrap()))
            .collect();
        let mut batched = vec![0f32; rows * k];
        let p = f.round_rows(&w, rows, &levels, &mut batched);
        let mut differ = 0;
        for r in 0..rows {
            let mut one = vec![0f32; k];
            let p1 = f.round_row(&w[r * k..(r + 1) * k], &levels[r], &mut one);
            differ += one
                .iter()
                .zip(&batched[r * k..(r + 1) * k])
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                (p1 - p[r]).abs() <= 1e-6 * (1.0 + p1),
                "row {r}: {p1} vs {}",
                p[r]
            );
        }
        // Reassociation may flip a rounding decision that sits on a tie; nothing more.
        assert!(differ <= rows, "{differ} weights differ");
    }

    #[test]
    fn identity_gram_is_nearest_rounding() {
        let k = 9;
        let g: Vec<f64> = (0..k * k)
            .map(|ij| if ij / k == ij % k { 3.0 } else { 0.0 })
            .collect();
        let f = Factor::new(&g, 3, k, 0.01).unwrap();
        let level = NearestLevel::new(QFormat::signed(4, 3).unwrap());
        let w: Vec<f32> = (0..k).map(|i| (i as f32 * 1.3).cos()).collect();
        let mut q = vec![0f32; k];
        f.round_row(&w, &level, &mut q);
        let near: Vec<f32> = w.iter().map(|&v| level.fake_f32(v)).collect();
        assert_eq!(q, near);
    }
}
