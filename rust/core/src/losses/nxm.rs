//! The loss for n independent m-class problems (kexue.fm/archives/9158): `y_pred` and the
//! label distributions `y_true` are `(n, m)` per sample, and for each class `j` the n
//! problems share one log, so rare classes are balanced the way ZLPR balances labels.
//!
//! * [`Form::Analogy`] (the post's loss 1): `Σ_j log(1 + Σ_i t_ij e^{LSE_{k≠j} s_ik - s_ij})`,
//!   the first-order truncation of the sum of n softmax cross-entropies. The post recommends
//!   it for hard labels; its stationary point for soft labels is unknown (Su could not
//!   solve it). `LSE_{k≠j}` is taken from prefix/suffix sums, never as `LSE - s_j`.
//! * [`Form::Centered`] (loss 3): `Σ_j log(1 + Σ_i t_ij e^{s̄_i - s_ij})`, `s̄_i` the row
//!   mean. Its optimum is exactly `t = softmax(s)`, but near hard labels it is satisfied
//!   by `s_ij ≫ s̄_i` without `s_ij` being the row's maximum, so it trains badly there.
//!
//! A loss with both properties is what the post leaves open. For m = 2 both reduce to ZLPR
//! (loss 1 on the logit difference, loss 3 on half of it).

use num_traits::Float;
use rayon::prelude::*;

use super::common::{check_len, exp_in, from_f64, rows_per_task, to_f64, Lse0};
use crate::{cancel, Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Analogy,
    Centered,
}

impl std::str::FromStr for Form {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "analogy" => Ok(Form::Analogy),
            "centered" => Ok(Form::Centered),
            _ => Err(Error::value(
                "form",
                format!("must be 'analogy' or 'centered', got {s:?}"),
            )),
        }
    }
}

/// Shapes of the n×m loss: `rows` samples of `n × m` logits and label weights.
#[derive(Clone, Copy)]
pub struct Nxm<'a, T> {
    pub y_pred: &'a [T],
    pub y_true: &'a [T],
    pub n: usize,
    pub m: usize,
    pub form: Form,
}

impl<T: Float + Send + Sync> Nxm<'_, T> {
    fn block(&self) -> usize {
        self.n.saturating_mul(self.m)
    }

    fn check(&self, rows: usize) -> Result<()> {
        let block = self.block();
        check_len("y_pred", self.y_pred.len(), rows, block)?;
        check_len("y_true", self.y_true.len(), rows, block)
    }

    /// Per problem `i` and class `j`, the offset `c_ij` with `a_ij = log t_ij + c_ij`, and
    /// (Analogy only) `E_ij = LSE_{k≠j} s_ik` in `e`. Checks the block's values.
    fn offsets(&self, r: usize, c: &mut [f64], e: &mut [f64]) -> Result<()> {
        let (n, m) = (self.n, self.m);
        let s = &self.y_pred[r * n * m..(r + 1) * n * m];
        let t = &self.y_true[r * n * m..(r + 1) * n * m];
        for (at, (&s, &t)) in s.iter().zip(t).enumerate() {
            let (i, j) = (at / m, at % m);
            if !s.is_finite() {
                let s = to_f64(s);
                return Err(Error::value(
                    "y_pred",
                    format!("must be finite, got {s} at sample {r}, problem {i}, class {j}"),
                ));
            }
            if !(T::zero()..=T::one()).contains(&t) {
                let t = to_f64(t);
                return Err(Error::value(
                    "y_true",
                    format!("must be in [0, 1], got {t} at sample {r}, problem {i}, class {j}"),
                ));
            }
        }
        for i in 0..n {
            let row: Vec<f64> = s[i * m..(i + 1) * m].iter().map(|&v| to_f64(v)).collect();
            let (c, e) = (&mut c[i * m..(i + 1) * m], &mut e[i * m..(i + 1) * m]);
            match self.form {
                Form::Centered => {
                    let mean = row.iter().sum::<f64>() / m as f64;
                    for j in 0..m {
                        c[j] = mean - row[j];
                    }
                }
                Form::Analogy => {
                    // e[j] = LSE over k < j, then combined with the LSE over k > j
                    let mut acc = (f64::NEG_INFINITY, 0.0);
                    for j in 0..m {
                        e[j] = lse_value(acc);
                        acc = lse_push(acc, row[j]);
                    }
                    let mut acc = (f64::NEG_INFINITY, 0.0);
                    for j in (0..m).rev() {
                        e[j] = lse_value(lse_push(acc, e[j]));
                        acc = lse_push(acc, row[j]);
                        c[j] = e[j] - row[j];
                    }
                }
            }
        }
        Ok(())
    }

    fn forward_block(&self, r: usize, c: &mut [f64], e: &mut [f64], l: &mut [f64]) -> Result<f64> {
        self.offsets(r, c, e)?;
        let t = &self.y_true[r * self.block()..(r + 1) * self.block()];
        for (j, lj) in l.iter_mut().enumerate() {
            let mut acc = Lse0::<T>::new();
            for i in 0..self.n {
                let tij = to_f64(t[i * self.m + j]);
                if tij > 0.0 {
                    acc.add(tij.ln() + c[i * self.m + j]);
                }
            }
            *lj = acc.value();
        }
        Ok(l.iter().sum())
    }
}

/// Plain (max, Σ exp(v - max)) log-sum-exp over a possibly empty set.
fn lse_push((max, sum): (f64, f64), v: f64) -> (f64, f64) {
    if v == f64::NEG_INFINITY {
        (max, sum)
    } else if v <= max {
        (max, sum + (v - max).exp())
    } else {
        (v, sum * (max - v).exp() + 1.0)
    }
}

fn lse_value((max, sum): (f64, f64)) -> f64 {
    if sum == 0.0 {
        f64::NEG_INFINITY
    } else {
        max + sum.ln()
    }
}

/// Loss per sample into `loss` and `L_j` per sample and class into `stats` (`rows·m`).
pub fn forward<T: Float + Send + Sync>(
    a: Nxm<'_, T>,
    loss: &mut [T],
    stats: &mut [f64],
) -> Result<()> {
    let rows = loss.len();
    a.check(rows)?;
    check_len("stats", stats.len(), rows, a.m)?;
    if a.m == 0 {
        loss.iter_mut().for_each(|v| *v = T::zero());
        return Ok(());
    }
    let per = rows_per_task(a.block());
    loss.par_chunks_mut(per)
        .zip(stats.par_chunks_mut(per * a.m))
        .enumerate()
        .try_for_each(|(task, (loss, stats))| {
            cancel::check()?;
            let (mut c, mut e) = (vec![0.0; a.block()], vec![0.0; a.block()]);
            for (i, (l, st)) in loss.iter_mut().zip(stats.chunks_mut(a.m)).enumerate() {
                *l = from_f64(a.forward_block(task * per + i, &mut c, &mut e, st)?);
            }
            Ok(())
        })
}

/// `grad[r]·∂loss[r]/∂y_pred` into `out`, from the `stats` of [`forward`].
pub fn backward<T: Float + Send + Sync>(
    a: Nxm<'_, T>,
    stats: &[f64],
    grad: &[T],
    out: &mut [T],
) -> Result<()> {
    let rows = grad.len();
    a.check(rows)?;
    check_len("stats", stats.len(), rows, a.m)?;
    check_len("out", out.len(), rows, a.block())?;
    if a.block() == 0 {
        return Ok(());
    }
    let (n, m) = (a.n, a.m);
    out.par_chunks_mut(a.block()).enumerate().try_for_each_init(
        || (vec![0.0; n * m], vec![0.0; n * m], vec![0.0; n * m]),
        |(c, e, w), (r, out)| {
            cancel::check()?;
            a.offsets(r, c, e)?;
            let t = &a.y_true[r * n * m..(r + 1) * n * m];
            let s = &a.y_pred[r * n * m..(r + 1) * n * m];
            let l = &stats[r * m..(r + 1) * m];
            for at in 0..n * m {
                let tij = to_f64(t[at]);
                w[at] = if tij > 0.0 {
                    exp_in::<T>(tij.ln() + c[at] - l[at % m])
                } else {
                    0.0
                };
            }
            let g = to_f64(grad[r]);
            for i in 0..n {
                let w = &w[i * m..(i + 1) * m];
                let total: f64 = w.iter().sum();
                for k in 0..m {
                    let d = match a.form {
                        Form::Centered => total / m as f64 - w[k],
                        Form::Analogy => {
                            let sik = to_f64(s[i * m + k]);
                            let spread: f64 = (0..m)
                                .filter(|&j| j != k && w[j] > 0.0)
                                .map(|j| w[j] * exp_in::<T>(sik - e[i * m + j]))
                                .sum();
                            spread - w[k]
                        }
                    };
                    out[i * m + k] = from_f64(g * d);
                }
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(s: &[f64], t: &[f64], n: usize, m: usize, form: Form) -> f64 {
        (0..m)
            .map(|j| {
                let inner: f64 = (0..n)
                    .map(|i| {
                        let row = &s[i * m..(i + 1) * m];
                        let arg = match form {
                            Form::Centered => row.iter().sum::<f64>() / m as f64 - row[j],
                            Form::Analogy => {
                                (0..m)
                                    .filter(|&k| k != j)
                                    .map(|k| row[k].exp())
                                    .sum::<f64>()
                                    .ln()
                                    - row[j]
                            }
                        };
                        t[i * m + j] * arg.exp()
                    })
                    .sum();
                (1.0 + inner).ln()
            })
            .sum()
    }

    #[test]
    fn matches_formula_and_finite_differences() {
        let (n, m) = (3, 4);
        let s: Vec<f64> = (0..n * m)
            .map(|i| ((i * 7) % 5) as f64 * 0.4 - 0.9)
            .collect();
        let t = [
            0.1, 0.6, 0.3, 0.0, 1.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.25,
        ];
        for form in [Form::Analogy, Form::Centered] {
            let a = Nxm {
                y_pred: &s,
                y_true: &t,
                n,
                m,
                form,
            };
            let (mut loss, mut stats, mut grad) = ([0.0], vec![0.0; m], vec![0.0; n * m]);
            forward(a, &mut loss, &mut stats).unwrap();
            backward(a, &stats, &[1.0], &mut grad).unwrap();
            let want = reference(&s, &t, n, m, form);
            assert!(
                (loss[0] - want).abs() < 1e-13,
                "{form:?}: {} vs {want}",
                loss[0]
            );
            for at in 0..n * m {
                let (mut up, mut dn) = (s.clone(), s.clone());
                up[at] += 1e-6;
                dn[at] -= 1e-6;
                let fd = (reference(&up, &t, n, m, form) - reference(&dn, &t, n, m, form)) / 2e-6;
                assert!(
                    (grad[at] - fd).abs() < 1e-8,
                    "{form:?} {at}: {} vs {fd}",
                    grad[at]
                );
            }
        }
    }

    #[test]
    fn centered_optimum_is_softmax() {
        let s = [0.3, -1.0, 2.0, 0.5, 0.5, -0.2];
        let mut t = [0.0; 6];
        for i in 0..2 {
            let z: f64 = s[3 * i..3 * i + 3].iter().map(|v: &f64| v.exp()).sum();
            for j in 0..3 {
                t[3 * i + j] = s[3 * i + j].exp() / z;
            }
        }
        let a = Nxm {
            y_pred: &s,
            y_true: &t,
            n: 2,
            m: 3,
            form: Form::Centered,
        };
        let (mut loss, mut stats, mut grad) = ([0.0], [0.0; 3], [0.0; 6]);
        forward(a, &mut loss, &mut stats).unwrap();
        backward(a, &stats, &[1.0], &mut grad).unwrap();
        assert!(grad.iter().all(|g| g.abs() < 1e-15), "{grad:?}");
    }
}
