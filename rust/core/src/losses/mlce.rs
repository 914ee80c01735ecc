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

use super::common::{check_len, check_logit, exp_in, from_f64, rows_per_task, to_f64, Lse0};
use crate::{Error, Result};

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
    let t = to_f64(t);
    if t <= eps {
        Entry::Neg(s)
    } else if t >= 1.0 - eps {
        Entry::Pos(-s)
    } else {
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

impl<T: Float + Send + Sync> Dense<'_, T> {
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

    fn forward_row(&self, r: usize) -> Result<(f64, f64)> {
        let (s, t, m) = self.row(r);
        let (mut neg, mut pos) = (Lse0::<T>::new(), Lse0::<T>::new());
        for c in 0..s.len() {
            check_entry(s[c], t[c], r, c)?;
            match classify(s[c], t[c], m.map_or(true, |m| m[c] != 0), self.eps) {
                Entry::Skip => {}
                Entry::Neg(v) => neg.add(v),
                Entry::Pos(v) => pos.add(v),
                Entry::Both(n, p) => {
                    neg.add(n);
                    pos.add(p);
                }
            }
        }
        Ok((neg.value(), pos.value()))
    }

    fn backward_row(&self, r: usize, l_neg: f64, l_pos: f64, g: T, out: &mut [T]) {
        let (s, t, m) = self.row(r);
        let g = to_f64(g);
        for c in 0..s.len() {
            let d = match classify(s[c], t[c], m.map_or(true, |m| m[c] != 0), self.eps) {
                Entry::Skip => 0.0,
                Entry::Neg(v) => exp_in::<T>(v - l_neg),
                Entry::Pos(v) => -exp_in::<T>(v - l_pos),
                Entry::Both(n, p) => exp_in::<T>(n - l_neg) - exp_in::<T>(p - l_pos),
            };
            out[c] = from_f64(g * d);
        }
    }
}

/// Loss per row into `loss` (`rows` = its length) and `[L_neg, L_pos]` per row into
/// `stats` (`2·rows`), which [`dense_backward`] needs.
pub fn dense_forward<T: Float + Send + Sync>(
    a: Dense<'_, T>,
    loss: &mut [T],
    stats: &mut [f64],
) -> Result<()> {
    let rows = loss.len();
    a.check(rows)?;
    check_len("stats", stats.len(), rows, 2)?;
    let per = rows_per_task(a.cols);
    loss.par_chunks_mut(per)
        .zip(stats.par_chunks_mut(2 * per))
        .enumerate()
        .try_for_each(|(task, (loss, stats))| {
            for (i, (l, st)) in loss.iter_mut().zip(stats.chunks_mut(2)).enumerate() {
                let (n, p) = a.forward_row(task * per + i)?;
                *l = from_f64(n + p);
                st.copy_from_slice(&[n, p]);
            }
            Ok(())
        })
}

/// `grad_loss[r] · ∂loss[r]/∂y_pred` into `out` (the layout of `y_pred`).
pub fn dense_backward<T: Float + Send + Sync>(
    a: Dense<'_, T>,
    stats: &[f64],
    grad_loss: &[T],
    out: &mut [T],
) -> Result<()> {
    let rows = grad_loss.len();
    a.check(rows)?;
    check_len("stats", stats.len(), rows, 2)?;
    check_len("out", out.len(), rows, a.cols)?;
    if a.cols == 0 {
        return Ok(());
    }
    out.par_chunks_mut(a.cols)
        .enumerate()
        .for_each(|(r, out)| a.backward_row(r, stats[2 * r], stats[2 * r + 1], grad_loss[r], out));
    Ok(())
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

impl<T: Float + Send + Sync> Sparse<'_, T> {
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

    /// Calls `f(column, logit, is_positive)` for every scored column of the row: the
    /// negatives are the complement of the positives, walked segment by segment.
    #[inline]
    fn for_each(&self, s: &[T], pos: &[usize], mut f: impl FnMut(usize, T, bool)) {
        let mut start = usize::from(self.mask_zero);
        for &p in pos.iter().chain(std::iter::once(&s.len())) {
            for (c, &v) in s.iter().enumerate().take(p).skip(start) {
                f(c, v, false);
            }
            if p < s.len() {
                f(p, s[p], true);
            }
            start = p + 1;
        }
    }

    fn forward_row(&self, r: usize, pos: &mut Vec<usize>) -> Result<(f64, f64)> {
        let s = self.row(r, pos)?;
        if let Some((c, &v)) = s
            .iter()
            .enumerate()
            .find(|(_, v)| v.is_nan() || **v == T::infinity())
        {
            check_logit("y_pred", v, r, c)?;
        }
        let (mut neg, mut positive) = (Lse0::<T>::new(), Lse0::<T>::new());
        self.for_each(s, pos, |_, v, is_pos| {
            let v = to_f64(v);
            if v != f64::NEG_INFINITY {
                if is_pos {
                    positive.add(-v)
                } else {
                    neg.add(v)
                }
            }
        });
        Ok((neg.value(), positive.value()))
    }
}

/// Sparse forward: loss per row and `[L_neg, L_pos]` per row, as [`dense_forward`].
pub fn sparse_forward<T: Float + Send + Sync>(
    a: Sparse<'_, T>,
    loss: &mut [T],
    stats: &mut [f64],
) -> Result<()> {
    let rows = loss.len();
    a.check(rows)?;
    check_len("stats", stats.len(), rows, 2)?;
    let per = rows_per_task(a.cols);
    loss.par_chunks_mut(per)
        .zip(stats.par_chunks_mut(2 * per))
        .enumerate()
        .try_for_each(|(task, (loss, stats))| {
            let mut pos = Vec::with_capacity(a.k);
            for (i, (l, st)) in loss.iter_mut().zip(stats.chunks_mut(2)).enumerate() {
                let (n, p) = a.forward_row(task * per + i, &mut pos)?;
                *l = from_f64(n + p);
                st.copy_from_slice(&[n, p]);
            }
            Ok(())
        })
}

/// Sparse backward: `grad_loss[r] · ∂loss[r]/∂y_pred` into `out` (the layout of `y_pred`).
pub fn sparse_backward<T: Float + Send + Sync>(
    a: Sparse<'_, T>,
    stats: &[f64],
    grad_loss: &[T],
    out: &mut [T],
) -> Result<()> {
    let rows = grad_loss.len();
    a.check(rows)?;
    check_len("stats", stats.len(), rows, 2)?;
    check_len("out", out.len(), rows, a.cols)?;
    if a.cols == 0 {
        return Ok(());
    }
    out.par_chunks_mut(a.cols).enumerate().try_for_each_init(
        || Vec::with_capacity(a.k),
        |pos, (r, out)| {
            let s = a.row(r, pos)?;
            let (l_neg, l_pos, g) = (stats[2 * r], stats[2 * r + 1], to_f64(grad_loss[r]));
            if a.mask_zero {
                out[0] = T::zero();
            }
            a.for_each(s, pos, |c, v, is_pos| {
                let v = to_f64(v);
                out[c] = if v == f64::NEG_INFINITY {
                    T::zero()
                } else if is_pos {
                    from_f64(-g * exp_in::<T>(-v - l_pos))
                } else {
                    from_f64(g * exp_in::<T>(v - l_neg))
                };
            });
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
            (vec![0.0; rows], vec![0.0; 2 * rows], vec![0.0; s.len()]);
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
        let (mut loss, mut stats, mut grad) = ([0.0], [0.0; 2], [0.0; 5]);
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
        let e = sparse_forward(a, &mut [0.0; 2], &mut [0.0; 4]).unwrap_err();
        assert!(e.to_string().contains("[0, 2), got 4 at row 0"), "{e}");
        let a = Dense {
            y_pred: &[0.0f32, f32::NAN],
            y_true: &[0.0, 1.0],
            mask: None,
            cols: 2,
            eps: 0.0,
        };
        let e = dense_forward(a, &mut [0.0], &mut [0.0; 2]).unwrap_err();
        assert!(e.to_string().contains("got NaN at row 0, column 1"), "{e}");
        let a = Dense {
            y_true: &[0.0, 1.5],
            y_pred: &[0.0f32, 1.0],
            ..a
        };
        assert!(dense_forward(a, &mut [0.0], &mut [0.0; 2]).is_err());
        assert!(dense_forward(a, &mut [0.0; 2], &mut [0.0; 4]).is_err());
    }
}
