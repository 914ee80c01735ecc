//! Pieces shared by the loss kernels: the "log(1 + Σ exp)" accumulator, row-chunked
//! parallel loops and argument checks.

use num_traits::Float;

pub(crate) use crate::num::Real;
use crate::parallel::MIN_CHUNK;
use crate::{Error, Result};

/// Online `log(1 + Σ exp(v))`: it starts at (max 0, rest 0), which *is* the appended zero
/// column of the ZLPR loss, so nothing is concatenated. `rest` sums `exp(v - max)` over
/// every term but one maximal one, so the result is `max + log1p(rest)`, exact even when
/// the loss is 1e-12 (`log` of a rounded `1 + rest` would lose it). Arguments and the
/// running max are f64 (so `v - max` is exact even at |v| = 1e4 in f32); the exponential
/// of that difference is taken in `T` (fast `expf` for f32) and summed in f64.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lse0<T> {
    max: f64,
    rest: f64,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Lse0<T> {
    pub fn new() -> Self {
        Lse0 {
            max: 0.0,
            rest: 0.0,
            _t: std::marker::PhantomData,
        }
    }

    /// Adds `exp(v)`; `v = -inf` adds nothing.
    #[inline]
    pub fn add(&mut self, v: f64) {
        if v <= self.max {
            self.rest += exp_in::<T>(v - self.max);
        } else {
            self.rest = (self.rest + 1.0) * exp_in::<T>(self.max - v);
            self.max = v;
        }
    }

    /// `log(1 + Σ exp(v))`, always >= 0.
    pub fn value(&self) -> f64 {
        self.max + self.rest.ln_1p()
    }

    /// `(max, log Σ exp(v - max))`: the value split so gradients can use `v - max` exactly.
    pub fn parts(&self) -> [f64; 2] {
        [self.max, self.rest.ln_1p()]
    }
}

/// `exp(d)` computed in the precision of `T`.
#[inline]
pub(crate) fn exp_in<T: Float>(d: f64) -> f64 {
    to_f64(from_f64::<T>(d).exp())
}

#[inline]
pub(crate) fn to_f64<T: Float>(x: T) -> f64 {
    x.to_f64().unwrap_or(f64::NAN)
}

#[inline]
pub(crate) fn from_f64<T: Float>(x: f64) -> T {
    T::from(x).unwrap_or_else(T::nan)
}

/// Rows per parallel task, so that one task touches at least [`MIN_CHUNK`] elements.
pub(crate) fn rows_per_task(cols: usize) -> usize {
    (MIN_CHUNK / cols.max(1)).max(1)
}

/// Checks that `len` is `rows · cols` for an array called `name`.
pub(crate) fn check_len(name: &str, len: usize, rows: usize, cols: usize) -> Result<()> {
    match rows.checked_mul(cols) {
        Some(n) if n == len => Ok(()),
        _ => Err(Error::value(
            name,
            format!("must have {rows}×{cols} elements, got {len}"),
        )),
    }
}

/// A logit may be finite or `-inf` (masked); NaN and `+inf` are refused.
#[inline]
pub(crate) fn check_logit<T: Float>(name: &str, v: T, row: usize, col: usize) -> Result<()> {
    if v.is_nan() || v == T::infinity() {
        Err(Error::value(
            name,
            format!(
                "must be finite or -inf (masked), got {} at row {row}, column {col}",
                to_f64(v)
            ),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lse0_is_log1p_sum_exp() {
        let mut acc = Lse0::<f64>::new();
        for v in [-3.0, 2.0, f64::NEG_INFINITY, 700.0, 0.5] {
            acc.add(v);
        }
        let want = 700.0 + (1.0 + (-698.0f64).exp() + (-700.0f64).exp()).ln();
        assert!((acc.value() - want).abs() < 1e-12);
        assert_eq!(Lse0::<f32>::new().value(), 0.0);
    }

    #[test]
    fn check_len_catches_overflow() {
        assert!(check_len("x", 6, 2, 3).is_ok());
        assert!(check_len("x", 6, 3, 3).is_err());
        assert!(check_len("x", 0, usize::MAX, 2).is_err());
    }
}

const LANES: usize = 8;

/// `max(init, max xs)` with independent lanes, so it vectorises.
#[inline]
pub(crate) fn max_slice<T: Real>(xs: &[T], init: T) -> T {
    let mut acc = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    rest.iter()
        .chain(acc.iter())
        .fold(init, |m, &v| if v > m { v } else { m })
}

/// `(Σ exp(x - shift) over x != shift, count of x == shift)`: exponentials in `T`, sums
/// in f64 lanes; the ties (each exactly 1) are counted apart so `log1p` stays exact.
#[inline]
pub(crate) fn sum_exp_slice<T: Real>(xs: &[T], shift: T) -> (f64, usize) {
    // branch-free: every exp is computed and ties are masked out, so the loop vectorises
    let mut acc = [0.0f64; LANES];
    let mut ties = [0.0f64; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let e = (c[l] - shift).exp_fast().widen();
            let tie = c[l] == shift;
            acc[l] += if tie { 0.0 } else { e };
            ties[l] += if tie { 1.0 } else { 0.0 };
        }
    }
    let mut small: f64 = acc.iter().sum();
    let mut count: f64 = ties.iter().sum();
    for &x in rest {
        if x == shift {
            count += 1.0;
        } else {
            small += (x - shift).exp_fast().widen();
        }
    }
    (small, count as usize)
}

/// `out = scale · exp((x - shift) - log_sum)`: one softmax-like gradient slice.
#[inline]
pub(crate) fn write_exp<T: Real>(xs: &[T], shift: T, log_sum: f64, scale: f64, out: &mut [T]) {
    let scale = T::narrow(scale);
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = scale * T::narrow((x - shift).widen() - log_sum).exp_fast();
    }
}

/// `(max, log Σ exp(v - max))` of `log(1 + Σ_segments Σ exp(v))`, vectorised: the
/// appended zero column is the `max(0, ·)` start and the `exp(-max)` term.
pub(crate) fn lse0_parts<'a, T: Real>(segments: impl Iterator<Item = &'a [T]> + Clone) -> [f64; 2] {
    let max = segments.clone().fold(T::zero(), |m, seg| max_slice(seg, m));
    // the zero column is a tie when max = 0, else it adds exp(-max)
    let zero = if max == T::zero() {
        (0.0, 1)
    } else {
        ((-max.widen()).exp(), 0)
    };
    let (small, ties) = segments.fold(zero, |(s, n), seg| {
        let (s2, n2) = sum_exp_slice(seg, max);
        (s + s2, n + n2)
    });
    // one maximal term is the leading 1 of log1p
    [max.widen(), ((ties - 1) as f64 + small).ln_1p()]
}

/// True when some entry is NaN or `+inf` (refused as logits).
#[inline]
pub(crate) fn any_bad_logit<T: Real>(xs: &[T]) -> bool {
    xs.iter()
        .fold(false, |bad, &v| bad | v.is_nan() | (v == T::infinity()))
}

#[cfg(test)]
mod real_tests {
    use super::*;

    #[test]
    fn lane_helpers_match_plain_loops() {
        let xs: Vec<f32> = (0..37).map(|i| ((i * 13) % 11) as f32 - 5.0).collect();
        assert_eq!(max_slice(&xs, f32::NEG_INFINITY), 5.0);
        assert_eq!(max_slice(&xs[..0], 0.0), 0.0);
        let want: f64 = xs
            .iter()
            .filter(|&&x| x != 5.0)
            .map(|&x| f64::from(x - 5.0).exp())
            .sum();
        let (small, ties) = sum_exp_slice(&xs, 5.0);
        assert!((small - want).abs() < 1e-6 * want);
        assert_eq!(ties, xs.iter().filter(|&&x| x == 5.0).count());
        assert!(any_bad_logit(&[1.0, f32::NAN]) && !any_bad_logit(&[f32::NEG_INFINITY]));
    }
}
