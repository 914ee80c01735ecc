//! Pieces shared by the loss kernels: the "log(1 + Σ exp)" accumulator, row-chunked
//! parallel loops and argument checks.

use num_traits::Float;

use crate::parallel::MIN_CHUNK;
use crate::{Error, Result};

/// Online `log(1 + Σ exp(v))`: it starts at (max 0, sum 1), which *is* the appended zero
/// column of the ZLPR loss, so nothing is concatenated. Arguments and the running max are
/// f64 (so `v - max` is exact even at |v| = 1e4 in f32); the exponential of that difference
/// is taken in `T` (fast `expf` for f32) and summed in f64.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lse0<T> {
    max: f64,
    sum: f64,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Lse0<T> {
    pub fn new() -> Self {
        Lse0 {
            max: 0.0,
            sum: 1.0,
            _t: std::marker::PhantomData,
        }
    }

    /// Adds `exp(v)`; `v = -inf` adds nothing.
    #[inline]
    pub fn add(&mut self, v: f64) {
        if v <= self.max {
            self.sum += exp_in::<T>(v - self.max);
        } else {
            self.sum = self.sum * exp_in::<T>(self.max - v) + 1.0;
            self.max = v;
        }
    }

    /// `log(1 + Σ exp(v))`, always >= 0.
    pub fn value(&self) -> f64 {
        self.max + self.sum.ln()
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
