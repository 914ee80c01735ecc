//! GlobalPointer span scores (kexue.fm/archives/8373, 8877) and the symmetric "KL" between
//! two score tensors for R-Drop (9039).
//!
//! Scores: `s[b,h,i,j] = RoPE(q_i)·RoPE(k_j)/√d (+ row_bias[b,h,i] + col_bias[b,h,j])`, with
//! `q, k` of shape `(B, L, Hq, d)`. `Hq = H` is GlobalPointer; `Hq = 1` with the two biases
//! is Efficient GlobalPointer (one shared q·k, a per-type bias for start and end). Padding
//! rows/columns and, with `tril`, the strictly lower triangle (start > end) are `-inf` and
//! get no gradient.

use num_traits::Float;
use rayon::prelude::*;

use super::common::{check_len, check_logit, from_f64, rows_per_task, to_f64};
use crate::{cancel, Error, Result};

/// Shapes and inputs of the score kernel.
#[derive(Clone, Copy)]
pub struct Scores<'a, T> {
    /// `(B, L, Hq, d)` queries (start vectors).
    pub q: &'a [T],
    /// `(B, L, Hq, d)` keys (end vectors).
    pub k: &'a [T],
    /// `(B, H, L)` start and end biases (Efficient GlobalPointer), or none.
    pub bias: Option<(&'a [T], &'a [T])>,
    /// `(B, L)` keep-mask (nonzero = a real token), or none.
    pub mask: Option<&'a [u8]>,
    pub batch: usize,
    pub len: usize,
    pub heads: usize,
    pub qk_heads: usize,
    pub head_size: usize,
    pub rope: bool,
    pub tril: bool,
}

impl<T: Float + Send + Sync> Scores<'_, T> {
    fn check(&self) -> Result<()> {
        let (b, l, d) = (self.batch, self.len, self.head_size);
        if self.qk_heads != self.heads && self.qk_heads != 1 {
            return Err(Error::value(
                "q",
                format!("must have 1 or {} heads, got {}", self.heads, self.qk_heads),
            ));
        }
        if self.qk_heads != self.heads && self.bias.is_none() {
            return Err(Error::value("bias", "is needed when q and k have one head"));
        }
        if d == 0 {
            return Err(Error::value("head_size", "must be at least 1, got 0"));
        }
        if self.rope && d % 2 != 0 {
            return Err(Error::value(
                "head_size",
                format!("must be even for RoPE, got {d}"),
            ));
        }
        let per_b = l.saturating_mul(self.qk_heads).saturating_mul(d);
        check_len("q", self.q.len(), b, per_b)?;
        check_len("k", self.k.len(), b, per_b)?;
        if let Some((rb, cb)) = self.bias {
            let per = self.heads.saturating_mul(l);
            check_len("row_bias", rb.len(), b, per)?;
            check_len("col_bias", cb.len(), b, per)?;
        }
        if let Some(m) = self.mask {
            check_len("mask", m.len(), b, l)?;
        }
        // Biases too: a padded position's -inf must stay -inf (no inf - inf = NaN).
        let (rb, cb) = self.bias.unwrap_or((&[], &[]));
        for (name, x) in [
            ("q", self.q),
            ("k", self.k),
            ("bias[0]", rb),
            ("bias[1]", cb),
        ] {
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return Err(Error::value(
                    name,
                    format!("must be finite, got {} at flat index {i}", to_f64(x[i])),
                ));
            }
        }
        Ok(())
    }

    fn output_len(&self) -> Option<usize> {
        self.batch
            .checked_mul(self.heads)?
            .checked_mul(self.len)?
            .checked_mul(self.len)
    }

    /// `(cos, sin)` of `position · 10000^(-2p/d)`, `L × d/2` each.
    fn rope_table(&self) -> (Vec<T>, Vec<T>) {
        let half = self.head_size / 2;
        let mut cos = Vec::with_capacity(self.len * half);
        let mut sin = Vec::with_capacity(self.len * half);
        for pos in 0..self.len {
            for p in 0..half {
                let theta = 10000f64.powf(-2.0 * p as f64 / self.head_size as f64);
                let (s, c) = (pos as f64 * theta).sin_cos();
                cos.push(from_f64(c));
                sin.push(from_f64(s));
            }
        }
        (cos, sin)
    }

    /// Copies head `hq` of batch `b` of `x` into `out` (`L × d`), rotated by RoPE
    /// (`inverse` rotates back, for gradients) and multiplied by `scale`.
    fn gather(
        &self,
        x: &[T],
        b: usize,
        hq: usize,
        table: &(Vec<T>, Vec<T>),
        scale: T,
        out: &mut [T],
    ) {
        let d = self.head_size;
        for i in 0..self.len {
            let src = &x[((b * self.len + i) * self.qk_heads + hq) * d..][..d];
            let dst = &mut out[i * d..(i + 1) * d];
            if self.rope {
                rotate(
                    src,
                    &table.0[i * d / 2..],
                    &table.1[i * d / 2..],
                    T::one(),
                    dst,
                );
            } else {
                dst.copy_from_slice(src);
            }
            dst.iter_mut().for_each(|v| *v = *v * scale);
        }
    }

    fn valid(&self, b: usize) -> Vec<bool> {
        (0..self.len)
            .map(|i| self.mask.is_none_or(|m| m[b * self.len + i] != 0))
            .collect()
    }

    #[inline]
    fn kept(&self, valid: &[bool], i: usize, j: usize) -> bool {
        valid[i] && valid[j] && !(self.tril && i > j)
    }
}

/// `dst = R(sign·θ) src` pairwise on `(2p, 2p+1)`, bert4keras' RoPE layout.
#[inline]
fn rotate<T: Float>(src: &[T], cos: &[T], sin: &[T], sign: T, dst: &mut [T]) {
    for p in 0..src.len() / 2 {
        let (x0, x1) = (src[2 * p], src[2 * p + 1]);
        let (c, s) = (cos[p], sign * sin[p]);
        dst[2 * p] = x0 * c - x1 * s;
        dst[2 * p + 1] = x1 * c + x0 * s;
    }
}

/// Dot product with 8 independent accumulators, so it vectorises without fast-math.
#[inline]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    let mut total = ra.iter().zip(rb).fold(T::zero(), |s, (x, y)| s + *x * *y);
    for v in acc {
        total = total + v;
    }
    total
}

/// Writes the `(B, H, L, L)` scores into `out`.
pub fn scores_forward<T: Float + Send + Sync>(a: Scores<'_, T>, out: &mut [T]) -> Result<()> {
    a.check()?;
    if a.output_len() != Some(out.len()) {
        return Err(Error::value("out", "must have B·H·L·L elements"));
    }
    let (l, d) = (a.len, a.head_size);
    if out.is_empty() {
        return Ok(());
    }
    let table = if a.rope {
        a.rope_table()
    } else {
        (vec![], vec![])
    };
    let scale = from_f64::<T>(1.0 / (d as f64).sqrt());
    out.par_chunks_mut(a.heads * l * l)
        .enumerate()
        .try_for_each(|(b, out)| {
            let valid = a.valid(b);
            let (mut qr, mut kr) = (vec![T::zero(); l * d], vec![T::zero(); l * d]);
            for hq in 0..a.qk_heads {
                a.gather(a.q, b, hq, &table, scale, &mut qr);
                a.gather(a.k, b, hq, &table, T::one(), &mut kr);
                let heads = if a.qk_heads == a.heads {
                    hq..hq + 1
                } else {
                    0..a.heads
                };
                for i in 0..l {
                    cancel::check()?;
                    for j in 0..l {
                        let s = if a.kept(&valid, i, j) {
                            dot(&qr[i * d..(i + 1) * d], &kr[j * d..(j + 1) * d])
                        } else {
                            T::neg_infinity()
                        };
                        for h in heads.clone() {
                            out[(h * l + i) * l + j] = s;
                        }
                    }
                }
            }
            if let Some((rb, cb)) = a.bias {
                for h in 0..a.heads {
                    let (rb, cb) = (
                        &rb[(b * a.heads + h) * l..][..l],
                        &cb[(b * a.heads + h) * l..][..l],
                    );
                    for i in 0..l {
                        let row = &mut out[(h * l + i) * l..][..l];
                        for (j, v) in row.iter_mut().enumerate() {
                            *v = *v + rb[i] + cb[j]; // -inf stays -inf: biases are finite
                        }
                    }
                }
            }
            Ok(())
        })
}

/// Gradients of the scores: `dq`, `dk` (`(B, L, Hq, d)`) and, with biases, `d_row_bias`,
/// `d_col_bias` (`(B, H, L)`) from the upstream `grad` (`(B, H, L, L)`; entries at masked
/// positions are ignored).
pub fn scores_backward<T: Float + Send + Sync>(
    a: Scores<'_, T>,
    grad: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dbias: Option<(&mut [T], &mut [T])>,
) -> Result<()> {
    a.check()?;
    if a.output_len() != Some(grad.len()) {
        return Err(Error::value(
            "grad",
            "must have the shape (B, H, L, L) of the scores",
        ));
    }
    check_len("dq", dq.len(), 1, a.q.len())?;
    check_len("dk", dk.len(), 1, a.k.len())?;
    let (l, d) = (a.len, a.head_size);
    let table = if a.rope {
        a.rope_table()
    } else {
        (vec![], vec![])
    };
    let scale = from_f64::<T>(1.0 / (d as f64).sqrt());
    let per_b = l * a.qk_heads * d;
    dq.par_chunks_mut(per_b.max(1))
        .zip(dk.par_chunks_mut(per_b.max(1)))
        .enumerate()
        .try_for_each(|(b, (dq, dk))| {
            let valid = a.valid(b);
            let (mut qr, mut kr) = (vec![T::zero(); l * d], vec![T::zero(); l * d]);
            let (mut gq, mut gk) = (vec![T::zero(); l * d], vec![T::zero(); l * d]);
            for hq in 0..a.qk_heads {
                // with the 1/√d folded into q, dq = scale·Σ g k and dk = Σ g (scale·q)
                a.gather(a.q, b, hq, &table, scale, &mut qr);
                a.gather(a.k, b, hq, &table, scale, &mut kr);
                gq.iter_mut()
                    .chain(gk.iter_mut())
                    .for_each(|v| *v = T::zero());
                let heads = if a.qk_heads == a.heads {
                    hq..hq + 1
                } else {
                    0..a.heads
                };
                for h in heads {
                    let g = &grad[(b * a.heads + h) * l * l..][..l * l];
                    for i in 0..l {
                        cancel::check()?;
                        let (qi, gqi) = (&qr[i * d..(i + 1) * d], &mut gq[i * d..(i + 1) * d]);
                        for j in 0..l {
                            if !a.kept(&valid, i, j) {
                                continue;
                            }
                            let gij = g[i * l + j];
                            let kj = &kr[j * d..(j + 1) * d];
                            for c in 0..d {
                                gqi[c] = gqi[c] + gij * kj[c];
                            }
                            let gkj = &mut gk[j * d..(j + 1) * d];
                            for c in 0..d {
                                gkj[c] = gkj[c] + gij * qi[c];
                            }
                        }
                    }
                }
                for i in 0..l {
                    let at = (i * a.qk_heads + hq) * d;
                    for (src, dst) in [(&gq, &mut *dq), (&gk, &mut *dk)] {
                        let (s, t) = (&src[i * d..(i + 1) * d], &mut dst[at..at + d]);
                        if a.rope {
                            rotate(
                                s,
                                &table.0[i * d / 2..],
                                &table.1[i * d / 2..],
                                -T::one(),
                                t,
                            );
                        } else {
                            t.copy_from_slice(s);
                        }
                    }
                }
            }
            Ok::<_, Error>(())
        })?;
    if let Some((drb, dcb)) = dbias {
        let n = a.batch.saturating_mul(a.heads).saturating_mul(l);
        check_len("d_row_bias", drb.len(), 1, n)?;
        check_len("d_col_bias", dcb.len(), 1, n)?;
        drb.par_chunks_mut(l.max(1))
            .zip(dcb.par_chunks_mut(l.max(1)))
            .enumerate()
            .try_for_each(|(bh, (drb, dcb))| {
                cancel::check()?;
                let valid = a.valid(bh / a.heads);
                let g = &grad[bh * l * l..][..l * l];
                drb.iter_mut()
                    .chain(dcb.iter_mut())
                    .for_each(|v| *v = T::zero());
                for i in 0..l {
                    for j in 0..l {
                        if a.kept(&valid, i, j) {
                            drb[i] = drb[i] + g[i * l + j];
                            dcb[j] = dcb[j] + g[i * l + j];
                        }
                    }
                }
                Ok::<_, Error>(())
            })?;
    }
    Ok(())
}

#[inline]
fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// Per-entry `(σ(s)-σ(t))(s-t)`; entries masked or `-inf` in both inputs give 0.
#[inline]
fn kl_entry<T: Float>(s: T, t: T, keep: bool) -> Option<(T, T)> {
    let ninf = T::neg_infinity();
    if !keep || (s == ninf && t == ninf) {
        return None;
    }
    let (ps, pt) = (sigmoid(s), sigmoid(t));
    Some((ps, pt))
}

/// Shapes of the KL kernel: `rows × cols` score pairs, optional keep-mask.
#[derive(Clone, Copy)]
pub struct Kl<'a, T> {
    pub s: &'a [T],
    pub t: &'a [T],
    pub mask: Option<&'a [u8]>,
    pub cols: usize,
}

impl<T: Float + Send + Sync> Kl<'_, T> {
    fn check(&self, rows: usize) -> Result<()> {
        check_len("s", self.s.len(), rows, self.cols)?;
        check_len("t", self.t.len(), rows, self.cols)?;
        if let Some(m) = self.mask {
            check_len("mask", m.len(), rows, self.cols)?;
        }
        Ok(())
    }
}

/// `D[r] = Σ_c (σ(s)-σ(t))(s-t)` over row `r` (≥ 0, 0 iff s = t where kept).
pub fn kl_forward<T: Float + Send + Sync>(a: Kl<'_, T>, out: &mut [T]) -> Result<()> {
    let rows = out.len();
    a.check(rows)?;
    let per = rows_per_task(a.cols);
    out.par_chunks_mut(per)
        .enumerate()
        .try_for_each(|(task, out)| {
            cancel::check()?;
            for (i, o) in out.iter_mut().enumerate() {
                let r = task * per + i;
                let mut sum = 0.0;
                for c in r * a.cols..(r + 1) * a.cols {
                    let (s, t) = (a.s[c], a.t[c]);
                    check_logit("s", s, r, c - r * a.cols)?;
                    check_logit("t", t, r, c - r * a.cols)?;
                    if let Some((ps, pt)) = kl_entry(s, t, a.mask.is_none_or(|m| m[c] != 0)) {
                        // One side -inf: the limit is +inf, even where σ of the other side
                        // rounds to 0 (the product would be 0·inf = NaN).
                        sum += if s == T::neg_infinity() || t == T::neg_infinity() {
                            f64::INFINITY
                        } else {
                            to_f64((ps - pt) * (s - t))
                        };
                    }
                }
                *o = from_f64(sum);
            }
            Ok(())
        })
}

/// `grad[r]·∂D[r]/∂s` and `grad[r]·∂D[r]/∂t` into `ds`, `dt`:
/// `∂D/∂s = σ(s)σ(-s)(s-t) + σ(s) - σ(t)`, and symmetrically.
pub fn kl_backward<T: Float + Send + Sync>(
    a: Kl<'_, T>,
    grad: &[T],
    ds: &mut [T],
    dt: &mut [T],
) -> Result<()> {
    let rows = grad.len();
    a.check(rows)?;
    check_len("ds", ds.len(), rows, a.cols)?;
    check_len("dt", dt.len(), rows, a.cols)?;
    if a.cols == 0 {
        return Ok(());
    }
    ds.par_chunks_mut(a.cols)
        .zip(dt.par_chunks_mut(a.cols))
        .enumerate()
        .try_for_each(|(r, (ds, dt))| {
            cancel::check()?;
            let g = grad[r];
            for c in 0..a.cols {
                let at = r * a.cols + c;
                let (s, t) = (a.s[at], a.t[at]);
                let keep = a.mask.is_none_or(|m| m[at] != 0);
                let (gs, gt) = match kl_entry(s, t, keep) {
                    None => (T::zero(), T::zero()),
                    Some((ps, pt)) => {
                        let slope = |p: T, x: T, y: T| {
                            // A -inf input is a constant (masked); against a finite one the
                            // divergence is +inf, with no finite slope: 0, and no 0·inf.
                            if x == T::neg_infinity() || y == T::neg_infinity() {
                                T::zero()
                            } else {
                                p * (T::one() - p) * (x - y) + p - (ps + pt - p)
                            }
                        };
                        (slope(ps, s, t), slope(pt, t, s))
                    }
                };
                ds[c] = g * gs;
                dt[c] = g * gt;
            }
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &Scores<'_, f64>) -> Vec<f64> {
        let (l, d) = (a.len, a.head_size);
        let mut out = vec![0.0; a.batch * a.heads * l * l];
        for b in 0..a.batch {
            for h in 0..a.heads {
                let hq = if a.qk_heads == 1 { 0 } else { h };
                let rot = |x: &[f64], i: usize| -> Vec<f64> {
                    let v = &x[((b * l + i) * a.qk_heads + hq) * d..][..d];
                    if !a.rope {
                        return v.to_vec();
                    }
                    let mut o = vec![0.0; d];
                    for p in 0..d / 2 {
                        let th = i as f64 * 10000f64.powf(-2.0 * p as f64 / d as f64);
                        o[2 * p] = v[2 * p] * th.cos() - v[2 * p + 1] * th.sin();
                        o[2 * p + 1] = v[2 * p + 1] * th.cos() + v[2 * p] * th.sin();
                    }
                    o
                };
                for i in 0..l {
                    for j in 0..l {
                        let valid = |p: usize| a.mask.is_none_or(|m| m[b * l + p] != 0);
                        let at = ((b * a.heads + h) * l + i) * l + j;
                        out[at] = if valid(i) && valid(j) && !(a.tril && i > j) {
                            let s: f64 = rot(a.q, i)
                                .iter()
                                .zip(rot(a.k, j))
                                .map(|(x, y)| x * y)
                                .sum();
                            let bias = a.bias.map_or(0.0, |(r, c)| {
                                r[(b * a.heads + h) * l + i] + c[(b * a.heads + h) * l + j]
                            });
                            s / (d as f64).sqrt() + bias
                        } else {
                            f64::NEG_INFINITY
                        };
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|i| ((i as u64 * 2654435761 + seed) % 1000) as f64 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn scores_match_naive_and_gradients_match_finite_differences() {
        let (b, l, h, d) = (2, 5, 3, 4);
        let (q, k) = (values(b * l * h * d, 1), values(b * l * h * d, 7));
        let mask = [1u8, 1, 1, 1, 0, 1, 1, 1, 1, 1];
        for (qk_heads, with_bias) in [(h, false), (1, true)] {
            let n = b * l * qk_heads * d;
            let (rb, cb) = (values(b * h * l, 3), values(b * h * l, 5));
            let a = Scores {
                q: &q[..n],
                k: &k[..n],
                bias: with_bias.then_some((&rb[..], &cb[..])),
                mask: Some(&mask),
                batch: b,
                len: l,
                heads: h,
                qk_heads,
                head_size: d,
                rope: true,
                tril: true,
            };
            let mut out = vec![0.0; b * h * l * l];
            scores_forward(a, &mut out).unwrap();
            let want = naive(&a);
            for (x, y) in out.iter().zip(&want) {
                assert!(x == y || (x - y).abs() < 1e-12, "{x} vs {y}");
            }
            // gradient of Σ w·s over kept entries vs central differences on q
            let w: Vec<f64> = values(out.len(), 11);
            let (mut dq, mut dk) = (vec![0.0; n], vec![0.0; n]);
            let (mut drb, mut dcb) = (vec![0.0; rb.len()], vec![0.0; cb.len()]);
            scores_backward(
                a,
                &w,
                &mut dq,
                &mut dk,
                with_bias.then_some((&mut drb[..], &mut dcb[..])),
            )
            .unwrap();
            let f = |q: &[f64], k: &[f64], rb: &[f64]| -> f64 {
                let a = Scores {
                    q,
                    k,
                    bias: with_bias.then_some((rb, &cb[..])),
                    ..a
                };
                naive(&a)
                    .iter()
                    .zip(&w)
                    .filter(|(s, _)| s.is_finite())
                    .map(|(s, w)| s * w)
                    .sum()
            };
            for i in [0, 3, n / 2, n - 1] {
                let (mut up, mut dn) = (q[..n].to_vec(), q[..n].to_vec());
                up[i] += 1e-6;
                dn[i] -= 1e-6;
                let fd = (f(&up, &k[..n], &rb) - f(&dn, &k[..n], &rb)) / 2e-6;
                assert!((dq[i] - fd).abs() < 1e-7, "dq[{i}] {} vs {fd}", dq[i]);
                let (mut up, mut dn) = (k[..n].to_vec(), k[..n].to_vec());
                up[i] += 1e-6;
                dn[i] -= 1e-6;
                let fd = (f(&q[..n], &up, &rb) - f(&q[..n], &dn, &rb)) / 2e-6;
                assert!((dk[i] - fd).abs() < 1e-7, "dk[{i}] {} vs {fd}", dk[i]);
            }
            if with_bias {
                let mut up = rb.clone();
                up[2] += 1e-6;
                let fd = (f(&q[..n], &k[..n], &up) - f(&q[..n], &k[..n], &rb)) / 1e-6;
                assert!((drb[2] - fd).abs() < 1e-6, "{} vs {fd}", drb[2]);
            }
        }
    }

    #[test]
    fn kl_is_symmetric_nonnegative_and_skips_double_minus_inf() {
        let ninf = f64::NEG_INFINITY;
        let s = [0.5, ninf, 2.0, -1.0];
        let t = [-0.5, ninf, 2.0, 3.0];
        let a = Kl {
            s: &s,
            t: &t,
            mask: None,
            cols: 4,
        };
        let (mut d1, mut d2) = ([0.0], [0.0]);
        kl_forward(a, &mut d1).unwrap();
        kl_forward(Kl { s: &t, t: &s, ..a }, &mut d2).unwrap();
        assert_eq!(d1, d2);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let want: f64 = [(0.5, -0.5), (-1.0, 3.0)]
            .iter()
            .map(|&(x, y)| (sig(x) - sig(y)) * (x - y))
            .sum();
        assert!((d1[0] - want).abs() < 1e-15);
        let (mut ds, mut dt) = ([0.0; 4], [0.0; 4]);
        kl_backward(a, &[1.0], &mut ds, &mut dt).unwrap();
        assert_eq!((ds[1], dt[1], ds[2], dt[2]), (0.0, 0.0, 0.0, 0.0));
        let fd = ((sig(0.5 + 1e-6) - sig(-0.5)) * (1.0 + 1e-6)
            - (sig(0.5 - 1e-6) - sig(-0.5)) * (1.0 - 1e-6))
            / 2e-6;
        assert!((ds[0] - fd).abs() < 1e-8);
    }
}
