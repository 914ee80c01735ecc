//! Multi-label categorical cross-entropy ("softmax + CE" for multi-label, a.k.a. ZLPR;
//! kexue.fm/archives/7359, 9064, 8888):
//! `L = log(1 + Σ_i (1-t_i) e^{s_i}) + log(1 + Σ_i t_i e^{-s_i})` per row.
//!
//! Forward makes one pass per row and keeps two f64 per row, `L_neg` and `L_pos`; backward
//! makes one pass writing `g_i = exp(neg_i - L_neg) - exp(pos_i - L_pos)` times the row's
//! upstream gradient. A logit that is `-inf`, or masked, is dropped from both sums whatever
//! its label (and gets gradient 0). Labels within `eps` of 0 or 1 are exactly 0 or 1, so they
//! join one sum only and need no `log` (Su's fix for a masked -1e7 logit reappearing as
//! +1e7 through `log(ε)`). The sparse form takes positive indices and sums the negatives
//! over their complement directly, never through bert4keras' cancelling
//! `a + log(1 - exp(b - a))`.

use num_traits::Float;
use rayon::prelude::*;

use super::common::{
    any_bad_logit, check_len, check_logit, exp_in, from_f64, lse0_parts, rows_per_task, to_f64,
    write_exp, Lse0, Real,
};
use crate::{cancel, Error, Result};

/// Su's `K.epsilon()`: soft labels within this of 0 or 1 count as hard.
pub const EPS_DEFAULT: f64 = 1e-7;

/// Where one (logit, label) entry goes: the negative sum, the positive sum, both (a soft
/// label, with `log(1-t)` and `log t` added) or neither (masked).
#[derive(Clone, Copy)]
enum Entry {
    Skip,
    Neg(f64),
    Pos(f64),
    Both(f64, f64),
}

#[inline]
fn classify<T: Float>(s: T, t: T, keep: bool, eps: f64) -> Entry {
    let s = to_f64(s);
    if !keep || s == f64::NEG_INFINITY {
        return Entry::Skip;
    }
    // Compared in the labels' dtype, as torch (the other road) and bert4keras do: a float32
    // label clipped to [ε, 1 − ε] is hard, though f32(1e-7) > 1e-7 in f64.
    if t <= from_f64::<T>(eps) {
        Entry::Neg(s)
    } else if t >= from_f64::<T>(1.0 - eps) {
        Entry::Pos(-s)
    } else {
        let t = to_f64(t);
        Entry::Both(s + (-t).ln_1p(), -s + t.ln())
    }
}

fn check_entry<T: Float>(s: T, t: T, row: usize, col: usize) -> Result<()> {
    check_logit("y_pred", s, row, col)?;
    let t = to_f64(t);
    if (0.0..=1.0).contains(&t) {
        Ok(())
    } else {
        Err(Error::value(
            "y_true",
            format!("must be in [0, 1], got {t} at row {row}, column {col}"),
        ))
    }
}

/// Statistics kept per row between forward and backward: `max` and `log Σ exp(v - max)`
/// of the negative and of the positive sum.
pub const STATS: usize = 4;

/// Shapes and options shared by the dense forward and backward.
#[derive(Clone, Copy)]
pub struct Dense<'a, T> {
    /// Logits, `rows × cols`, row-major.
    pub y_pred: &'a [T],
    /// Labels in [0, 1] (hard 0/1 or soft), same layout.
    pub y_true: &'a [T],
    /// Optional keep-mask (nonzero = keep), same layout.
    pub mask: Option<&'a [u8]>,
    pub cols: usize,
    /// Labels `<= eps` count as 0 and `>= 1 - eps` as 1; in [0, 0.5).
    pub eps: f64,
}

fn first_bad_logit<T: Real>(name: &str, s: &[T], row: usize) -> Result<()> {
    if any_bad_logit(s) {
        for (c, &v) in s.iter().enumerate() {
            check_logit(name, v, row, c)?;
        }
    }
    Ok(())
}

/// A row of hard labels, `keep` the mask's flags (monomorphised with and without a mask so
/// both loops vectorise): negatives by a select into `buf`, positives (few) one by one.
fn hard_forward<T: Real>(
    s: &[T],
    t: &[T],
    keep: impl Iterator<Item = bool> + Clone,
    buf: &mut Vec<T>,
) -> [f64; STATS] {
    let (ninf, one) = (T::neg_infinity(), T::one());
    buf.resize(s.len(), ninf);
    let neg = &mut buf[..s.len()];
    for (((n, &sv), &tv), kept) in neg.iter_mut().zip(s).zip(t).zip(keep.clone()) {
        *n = if (tv == one) | !kept { ninf } else { sv };
    }
    let mut pos = Lse0::<T>::new();
    for ((&sv, &tv), kept) in s.iter().zip(t).zip(keep) {
        if tv == one && kept && sv > ninf {
            pos.add(-sv.widen());
        }
    }
    let ([a, b], [c, d]) = (lse0_parts(std::iter::once(&*neg)), pos.parts());
    [a, b, c, d]
}

/// Backward of [`hard_forward`]: one exponential per entry, branch-free.
fn hard_backward<T: Real>(
    s: &[T],
    t: &[T],
    keep: impl Iterator<Item = bool>,
    st: &[f64],
    g: T,
    out: &mut [T],
) {
    let (ninf, one, zero) = (T::neg_infinity(), T::one(), T::zero());
    let (mn, mp) = (T::narrow(st[0]), T::narrow(st[2])); // exact: maxima of T values
    for (((o, &sv), &tv), kept) in out.iter_mut().zip(s).zip(t).zip(keep) {
        let is_pos = tv == one;
        let (v, shift, log_sum, sign) = if is_pos {
            (-sv, mp, st[3], -g)
        } else {
            (sv, mn, st[1], g)
        };
        let e = T::narrow((v - shift).widen() - log_sum).exp_fast();
        *o = if kept & (sv > ninf) { sign * e } else { zero };
    }
}

/// All labels exactly 0 or 1: the row takes the vectorised path (no logs, one exp each).
#[inline]
fn hard<T: Real>(t: &[T]) -> bool {
    t.iter()
        .fold(true, |ok, &v| ok & ((v == T::zero()) | (v == T::one())))
}

impl<T: Real> Dense<'_, T> {
    fn check(&self, rows: usize) -> Result<()> {
        check_len("y_pred", self.y_pred.len(), rows, self.cols)?;
        check_len("y_true", self.y_true.len(), rows, self.cols)?;
        if let Some(m) = self.mask {
            check_len("mask", m.len(), rows, self.cols)?;
        }
        if !(0.0..0.5).contains(&self.eps) {
            return Err(Error::value(
                "eps",
                format!("must be in [0, 0.5), got {}", self.eps),
            ));
        }
        Ok(())
    }

    fn row(&self, r: usize) -> (&[T], &[T], Option<&[u8]>) {
        let range = r * self.cols..(r + 1) * self.cols;
        (
            &self.y_pred[range.clone()],
            &self.y_true[range.clone()],
            self.mask.map(|m| &m[range]),
        )
    }

    /// `[max_neg, lnsum_neg, max_pos, lnsum_pos]` of the row; `buf` is scratch.
    fn forward_row(&self, r: usize, buf: &mut Vec<T>) -> Result<[f64; STATS]> {
        let (s, t, m) = self.row(r);
        first_bad_logit("y_pred", s, r)?;
        if hard(t) {
            return Ok(match m {
                None => hard_forward(s, t, std::iter::repeat(true), buf),
                Some(m) => hard_forward(s, t, m.iter().map(|&v| v != 0), buf),
            });
        }
        let (mut neg, mut pos) = (Lse0::<T>::new(), Lse0::<T>::new());
        for c in 0..s.len() {
            check_entry(s[c], t[c], r, c)?;
            match classify(s[c], t[c], m.is_none_or(|m| m[c] != 0), self.eps) {
                Entry::Skip => {}
                Entry::Neg(v) => neg.add(v),
                Entry::Pos(v) => pos.add(v),
                Entry::Both(n, p) => {
                    neg.add(n);
                    pos.add(p);
                }
            }
        }
        let ([a, b], [c, d]) = (neg.parts(), pos.parts());
        Ok([a, b, c, d])
    }

    fn backward_row(&self, r: usize, st: &[f64], g: T, out: &mut [T]) {
        let (s, t, m) = self.row(r);
        if hard(t) {
            match m {
                None => hard_backward(s, t, std::iter::repeat(true), st, g, out),
                Some(m) => hard_backward(s, t, m.iter().map(|&v| v != 0), st, g, out),
            }
            return;
        }
        let g = to_f64(g);
        let (ln, lp) = (st[0] + st[1], st[2] + st[3]);
        for c in 0..s.len() {
            let d = match classify(s[c], t[c], m.is_none_or(|m| m[c] != 0), self.eps) {
                Entry::Skip => 0.0,
                Entry::Neg(v) => exp_in::<T>(v - ln),
                Entry::Pos(v) => -exp_in::<T>(v - lp),
                Entry::Both(n, p) => exp_in::<T>(n - ln) - exp_in::<T>(p - lp),
            };
            out[c] = from_f64(g * d);
        }
    }
}

/// Runs `row(r, scratch) -> stats` over all rows in parallel, writing the loss (the sum of
/// the two log-terms) and the [`STATS`] statistics per row.
fn forward_rows<T: Real>(
    rows: usize,
    cols: usize,
    loss: &mut [T],
    stats: &mut [f64],
    row: impl Fn(usize, &mut Vec<T>) -> Result<[f64; STATS]> + Sync,
) -> Result<()> {
    check_len("stats", stats.len(), rows, STATS)?;
    let per = rows_per_task(cols);
    loss.par_chunks_mut(per)
        .zip(stats.par_chunks_mut(STATS * per))
        .enumerate()
        .try_for_each(|(task, (loss, stats))| {
            cancel::check()?;
            let mut buf = Vec::new();
            for (i, (l, st)) in loss.iter_mut().zip(stats.chunks_mut(STATS)).enumerate() {
                let parts = row(task * per + i, &mut buf)?;
                *l = from_f64(parts.iter().sum());
                st.copy_from_slice(&parts);
            }
            Ok(())
        })
}

/// Loss per row into `loss` (`rows` = its length) and [`STATS`] numbers per row into
/// `stats`, which [`dense_backward`] needs.
pub fn dense_forward<T: Real>(a: Dense<'_, T>, loss: &mut [T], stats: &mut [f64]) -> Result<()> {
    a.check(loss.len())?;
    forward_rows(loss.len(), a.cols, loss, stats, |r, buf| {
        a.forward_row(r, buf)
    })
}

/// `grad_loss[r] · ∂loss[r]/∂y_pred` into `out` (the layout of `y_pred`).
pub fn dense_backward<T: Real>(
    a: Dense<'_, T>,
    stats: &[f64],
    grad_loss: &[T],
    out: &mut [T],
) -> Result<()> {
    let rows = grad_loss.len();
    a.check(rows)?;
    check_len("stats", stats.len(), rows, STATS)?;
    check_len("out", out.len(), rows, a.cols)?;
    if a.cols == 0 {
        return Ok(());
    }
    out.par_chunks_mut(a.cols)
        .enumerate()
        .try_for_each(|(r, out)| {
            cancel::check()?;
            a.backward_row(r, &stats[STATS * r..STATS * (r + 1)], grad_loss[r], out);
            Ok(())
        })
}

/// Shapes and options of the sparse form: `y_true` holds `k` positive class indices per
/// row (duplicates count once); with `mask_zero`, index 0 is padding and class 0 is never
/// scored (bert4keras' convention, used by GPLinker for "no span").
#[derive(Clone, Copy)]
pub struct Sparse<'a, T> {
    pub y_pred: &'a [T],
    pub y_true: &'a [i64],
    pub cols: usize,
    pub k: usize,
    pub mask_zero: bool,
}

impl<T: Real> Sparse<'_, T> {
    fn check(&self, rows: usize) -> Result<()> {
        check_len("y_pred", self.y_pred.len(), rows, self.cols)?;
        check_len("y_true", self.y_true.len(), rows, self.k)
    }

    /// The row's logits and its sorted, unique positive indices (padding removed) in `pos`.
    fn row(&self, r: usize, pos: &mut Vec<usize>) -> Result<&[T]> {
        pos.clear();
        for (j, &i) in self.y_true[r * self.k..(r + 1) * self.k].iter().enumerate() {
            match usize::try_from(i) {
                Ok(i) if i < self.cols => {
                    if !(self.mask_zero && i == 0) {
                        pos.push(i);
                    }
                }
                _ => {
                    return Err(Error::value(
                        "y_true",
                        format!(
                            "must hold class indices in [0, {}), got {i} at row {r}, position {j}",
                            self.cols
                        ),
                    ))
                }
            }
        }
        pos.sort_unstable();
        pos.dedup();
        Ok(&self.y_pred[r * self.cols..(r + 1) * self.cols])
    }

    /// The `(start, end)` column ranges of the negatives: the complement of the positives
    /// (and of class 0 with `mask_zero`), walked segment by segment.
    fn negatives<'p>(&self, pos: &'p [usize]) -> impl Iterator<Item = (usize, usize)> + Clone + 'p {
        let (first, cols) = (usize::from(self.mask_zero), self.cols);
        let starts = std::iter::once(first).chain(pos.iter().map(|&p| p + 1));
        let ends = pos.iter().copied().chain(std::iter::once(cols));
        starts.zip(ends).filter(|(a, b)| a < b)
    }

    fn forward_row(&self, r: usize, pos: &mut Vec<usize>) -> Result<[f64; STATS]> {
        let s = self.row(r, pos)?;
        first_bad_logit("y_pred", s, r)?;
        let [a, b] = lse0_parts(self.negatives(pos).map(|(x, y)| &s[x..y]));
        let mut positive = Lse0::<T>::new();
        // a masked positive is skipped: -(-inf) would be +inf
        for &p in pos.iter().filter(|&&p| s[p] > T::neg_infinity()) {
            positive.add(-s[p].widen());
        }
        let [c, d] = positive.parts();
        Ok([a, b, c, d])
    }
}

/// Sparse forward: loss per row and [`STATS`] numbers per row, as [`dense_forward`].
pub fn sparse_forward<T: Real>(a: Sparse<'_, T>, loss: &mut [T], stats: &mut [f64]) -> Result<()> {
    a.check(loss.len())?;
    let k = a.k;
    forward_rows(loss.len(), a.cols, loss, stats, |r, _| {
        a.forward_row(r, &mut Vec::with_capacity(k))
    })
}

/// Sparse backward: `grad_loss[r] · ∂loss[r]/∂y_pred` into `out` (the layout of `y_pred`).
pub fn sparse_backward<T: Real>(
    a: Sparse<'_, T>,
    stats: &[f64],
    grad_loss: &[T],
    out: &mut [T],
) -> Result<()> {
    let rows = grad_loss.len();
    a.check(rows)?;
    check_len("stats", stats.len(), rows, STATS)?;
    check_len("out", out.len(), rows, a.cols)?;
    if a.cols == 0 {
        return Ok(());
    }
    out.par_chunks_mut(a.cols).enumerate().try_for_each_init(
        || Vec::with_capacity(a.k),
        |pos, (r, out)| {
            cancel::check()?;
            let s = a.row(r, pos)?;
            let st = &stats[STATS * r..STATS * (r + 1)];
            let g = grad_loss[r].widen();
            if a.mask_zero {
                out[0] = T::zero();
            }
            for (x, y) in a.negatives(pos) {
                write_exp(&s[x..y], T::narrow(st[0]), st[1], g, &mut out[x..y]);
            }
            for &p in pos.iter() {
                out[p] = if s[p] == T::neg_infinity() {
                    T::zero()
                } else {
                    from_f64(-g * exp_in::<T>(-s[p].widen() - st[2] - st[3]))
                };
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct f64 formula with explicit sums (no online tricks), for small well-scaled rows.
    fn reference(s: &[f64], t: &[f64]) -> f64 {
        let neg: f64 = s.iter().zip(t).map(|(s, t)| (1.0 - t) * s.exp()).sum();
        let pos: f64 = s.iter().zip(t).map(|(s, t)| t * (-s).exp()).sum();
        (1.0 + neg).ln() + (1.0 + pos).ln()
    }

    fn dense(s: &[f64], t: &[f64], cols: usize) -> (Vec<f64>, Vec<f64>) {
        let rows = s.len() / cols;
        let a = Dense {
            y_pred: s,
            y_true: t,
            mask: None,
            cols,
            eps: EPS_DEFAULT,
        };
        let (mut loss, mut stats, mut grad) =
            (vec![0.0; rows], vec![0.0; STATS * rows], vec![0.0; s.len()]);
        dense_forward(a, &mut loss, &mut stats).unwrap();
        dense_backward(a, &stats, &vec![1.0; rows], &mut grad).unwrap();
        (loss, grad)
    }

    #[test]
    fn dense_matches_formula_and_finite_differences() {
        let s = [0.3, -1.2, 2.0, 0.0, -0.7, 1.1];
        let t = [1.0, 0.0, 0.25, 0.0, 0.9, 1.0];
        let (loss, grad) = dense(&s, &t, 3);
        for r in 0..2 {
            let want = reference(&s[3 * r..3 * r + 3], &t[3 * r..3 * r + 3]);
            assert!((loss[r] - want).abs() < 1e-14, "{} vs {want}", loss[r]);
        }
        for c in 0..6 {
            let (mut up, mut dn) = (s, s);
            up[c] += 1e-6;
            dn[c] -= 1e-6;
            let r = c / 3;
            let fd = (reference(&up[3 * r..3 * r + 3], &t[3 * r..3 * r + 3])
                - reference(&dn[3 * r..3 * r + 3], &t[3 * r..3 * r + 3]))
                / 2e-6;
            assert!((grad[c] - fd).abs() < 1e-8, "{c}: {} vs {fd}", grad[c]);
        }
    }

    #[test]
    fn masked_logits_are_dropped_whatever_their_label() {
        let ninf = f64::NEG_INFINITY;
        let (loss, grad) = dense(&[0.5, ninf, ninf, -0.5], &[1.0, 1.0, 0.0, 0.0], 4);
        let (want, _) = dense(&[0.5, -0.5], &[1.0, 0.0], 2);
        assert_eq!(loss[0], want[0]);
        assert_eq!(grad[1..3], [0.0, 0.0]);
    }

    #[test]
    fn sparse_agrees_with_dense_and_does_not_cancel() {
        // positives dominate: the exact loss is tiny, bert4keras' form gives garbage here
        let s = [30.0f64, -30.0, 25.0, -28.0, -31.0];
        let t = [1.0, 0.0, 1.0, 0.0, 0.0];
        let (dl, dg) = dense(&s, &t, 5);
        let a = Sparse {
            y_pred: &s[..],
            y_true: &[2, 0, 2],
            cols: 5,
            k: 3,
            mask_zero: false,
        };
        let (mut loss, mut stats, mut grad) = ([0.0], [0.0; STATS], [0.0; 5]);
        sparse_forward(a, &mut loss, &mut stats).unwrap();
        sparse_backward(a, &stats, &[1.0], &mut grad).unwrap();
        assert!((loss[0] - dl[0]).abs() <= 1e-15 * dl[0].abs().max(1e-300));
        assert!(loss[0] > 0.0 && loss[0] < 1e-10);
        assert_eq!(grad, dg[..]);
    }

    #[test]
    fn bad_input_is_an_error() {
        let a = Sparse {
            y_pred: &[0.0f32; 4],
            y_true: &[4, 1],
            cols: 2,
            k: 1,
            mask_zero: false,
        };
        let e = sparse_forward(a, &mut [0.0; 2], &mut [0.0; 8]).unwrap_err();
        assert!(e.to_string().contains("[0, 2), got 4 at row 0"), "{e}");
        let a = Dense {
            y_pred: &[0.0f32, f32::NAN],
            y_true: &[0.0, 1.0],
            mask: None,
            cols: 2,
            eps: 0.0,
        };
        let e = dense_forward(a, &mut [0.0], &mut [0.0; 4]).unwrap_err();
        assert!(e.to_string().contains("got NaN at row 0, column 1"), "{e}");
        let a = Dense {
            y_true: &[0.0, 1.5],
            y_pred: &[0.0f32, 1.0],
            ..a
        };
        assert!(dense_forward(a, &mut [0.0], &mut [0.0; 4]).is_err());
        assert!(dense_forward(a, &mut [0.0; 2], &mut [0.0; 4]).is_err());
    }
}
