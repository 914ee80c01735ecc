//! SquarePlus, `(x + sqrt(x² + b)) / 2`, and its slope, stable over the whole float range.
//!
//! With `r = sqrt(x² + b)` and `s = r + |x|` (a sum, so it never cancels):
//! `f(x) = s/2` for `x >= 0` and `b/(2s)` for `x < 0`, and in both cases `f'(x) = f(x)/r`.
//! The naive form returns 0 at x = -1e4 and inf at |x| = 1e20 in f32.
//! The inner loops are branch-free so they vectorise (they halve before adding, so `s`
//! cannot overflow); a chunk in which `x² + b` overflowed or fell below the normal range
//! (b = 0 with tiny x), or `x` is not finite, is redone point by point with `hypot`.

use num_traits::Float;
use rayon::prelude::*;

use crate::error::check_finite_at_least;
use crate::parallel::MIN_CHUNK;
use crate::{cancel, Error, Result};

/// `b = 4·ln²2`: SquarePlus equals softplus at 0, and this is the smallest `b` for which
/// SquarePlus stays above softplus everywhere (max |difference| 0.10387).
pub const B_SOFTPLUS_UPPER: f64 = 1.921_812_055_672_806_3;
/// `b` minimising the largest |SquarePlus − softplus| (max error 0.0759314; numeric, no closed form).
pub const B_SOFTPLUS_MINIMAX: f64 = 1.523_821_032_9;
/// The default of `jax.nn.squareplus` and `keras.activations.squareplus`; its curvature at 0
/// matches softplus.
pub const B_DEFAULT: f64 = 4.0;

/// Value and slope at one point, exact for every input including ±inf, NaN, subnormals
/// and b = 0.
fn exact<T: Float>(x: T, b: T) -> (T, T) {
    let half = T::from(0.5).expect("0.5 is representable");
    let r = x.hypot(b.sqrt());
    let s = r + x.abs();
    let value = match (x >= T::zero(), s.is_finite()) {
        (true, true) => s * half,
        (false, true) => b * half / s,
        // s overflowed: halve before adding (exact enough at this magnitude).
        (true, false) => r * half + x.abs() * half,
        (false, false) => b * half * half / (r * half + x.abs() * half),
    };
    let slope = if x == T::infinity() {
        T::one()
    } else if r == T::zero() {
        half // b = 0 at x = 0: the limit f'(0) = 1/2 that holds for every b
    } else {
        value / r // NaN propagates
    };
    (value, slope)
}

/// `b` in the input's dtype: it must stay finite there (1e39 is inf in float32).
fn check<T: Float>(b: f64, lengths: &[(&str, usize)]) -> Result<T> {
    check_finite_at_least("b", b, 0.0)?;
    let in_dtype = T::from(b).filter(|v| v.is_finite()).ok_or_else(|| {
        Error::value(
            "b",
            format!(
                "must fit the input's dtype (at most {:e}), got {b:e}",
                T::max_value().to_f64().unwrap_or(f64::MAX)
            ),
        )
    })?;
    if let Some((name, len)) = lengths.iter().find(|(_, len)| *len != lengths[0].1) {
        return Err(Error::value(
            *name,
            format!("must have {} elements like x, got {len}", lengths[0].1),
        ));
    }
    Ok(in_dtype)
}

/// Value, slope, and whether they are accurate (else the caller redoes the chunk exactly).
#[inline(always)]
fn fast<T: Float>(x: T, b: T) -> (T, T, bool) {
    let half = T::from(0.5).expect("0.5 is representable");
    let r2 = x * x + b;
    let r = r2.sqrt();
    let h = r * half + x.abs() * half;
    let value = if x >= T::zero() {
        h
    } else {
        b * half * half / h
    };
    let ok = r2 >= T::min_positive_value() && r2 < T::infinity();
    (value, value / r, ok)
}

crate::per_road! {
    /// SquarePlus of a chunk. Wheels target baseline x86-64 (SSE2); the AVX2+FMA road is
    /// ~1.5x faster on the sqrt/div-bound loop.
    fn forward_chunk[T: Float](x: &[T], b: T, out: &mut [T]) {
        let mut needs_exact = false;
        for (&xi, yi) in x.iter().zip(out.iter_mut()) {
            let (value, _, ok) = fast(xi, b);
            *yi = value;
            needs_exact |= !ok;
        }
        if needs_exact {
            for (&xi, yi) in x.iter().zip(out.iter_mut()) {
                *yi = exact(xi, b).0;
            }
        }
    }
}

crate::per_road! {
    /// `grad · SquarePlus'(x)` of a chunk.
    fn backward_chunk[T: Float](x: &[T], grad: &[T], b: T, out: &mut [T]) {
        let mut needs_exact = false;
        for ((&xi, &gi), oi) in x.iter().zip(grad).zip(out.iter_mut()) {
            let (_, slope, ok) = fast(xi, b);
            *oi = gi * slope;
            needs_exact |= !ok;
        }
        if needs_exact {
            for ((&xi, &gi), oi) in x.iter().zip(grad).zip(out.iter_mut()) {
                *oi = gi * exact(xi, b).1;
            }
        }
    }
}

/// Writes SquarePlus(`x`) into `out`, in parallel over chunks.
pub fn forward<T: Float + Send + Sync>(x: &[T], b: f64, out: &mut [T]) -> Result<()> {
    let b = check::<T>(b, &[("x", x.len()), ("out", out.len())])?;
    out.par_chunks_mut(MIN_CHUNK)
        .zip(x.par_chunks(MIN_CHUNK))
        .try_for_each(|(o, x)| {
            cancel::check()?;
            forward_chunk(x, b, o);
            Ok(())
        })
}

/// Writes `grad * SquarePlus'(x)` into `out` (the vector-Jacobian product), in parallel.
pub fn backward<T: Float + Send + Sync>(x: &[T], grad: &[T], b: f64, out: &mut [T]) -> Result<()> {
    let b = check::<T>(
        b,
        &[("x", x.len()), ("grad", grad.len()), ("out", out.len())],
    )?;
    out.par_chunks_mut(MIN_CHUNK)
        .zip(x.par_chunks(MIN_CHUNK).zip(grad.par_chunks(MIN_CHUNK)))
        .try_for_each(|(o, (x, g))| {
            cancel::check()?;
            backward_chunk(x, g, b, o);
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference in f64 from the defining formula, rewritten to avoid cancellation.
    fn reference(x: f64, b: f64) -> f64 {
        if x >= 0.0 {
            (x + x.hypot(b.sqrt())) / 2.0
        } else {
            b / (2.0 * (x.hypot(b.sqrt()) - x))
        }
    }

    #[test]
    fn matches_reference_in_f32_where_the_naive_form_fails() {
        let x: Vec<f32> = vec![
            -1e20, -1e4, -1e3, -1.0, -0.0, 0.0, 0.5, 3.0, 1e4, 1e20, 3e38,
        ];
        let mut y = vec![0.0f32; x.len()];
        forward(&x, 4.0, &mut y).unwrap();
        for (&xi, &yi) in x.iter().zip(&y) {
            let want = reference(f64::from(xi), 4.0);
            assert!(
                (f64::from(yi) - want).abs() <= 4.0 * f64::from(f32::EPSILON) * want,
                "x={xi}: got {yi}, want {want}"
            );
        }
    }

    #[test]
    fn special_values() {
        let x = [f64::NEG_INFINITY, f64::INFINITY, f64::NAN, 0.0, -2.0, 2.0];
        let mut y = [0.0; 6];
        forward(&x, 0.0, &mut y).unwrap();
        assert_eq!(y[..2], [0.0, f64::INFINITY]);
        assert!(y[2].is_nan());
        assert_eq!(y[3..], [0.0, 0.0, 2.0]); // b = 0 is ReLU
        let mut g = [0.0; 6];
        backward(&x, &[1.0; 6], 0.0, &mut g).unwrap();
        assert_eq!(g[..2], [0.0, 1.0]);
        assert!(g[2].is_nan());
        assert_eq!(g[3..], [0.5, 0.0, 1.0]);
    }

    #[test]
    fn slope_matches_finite_differences() {
        let b = B_SOFTPLUS_MINIMAX;
        let x: Vec<f64> = (-40..=40).map(|i| f64::from(i) * 0.37).collect();
        let mut g = vec![0.0; x.len()];
        backward(&x, &vec![1.0; x.len()], b, &mut g).unwrap();
        let h = 1e-6;
        for (&xi, &gi) in x.iter().zip(&g) {
            let fd = (reference(xi + h, b) - reference(xi - h, b)) / (2.0 * h);
            assert!((gi - fd).abs() < 1e-8, "x={xi}: {gi} vs {fd}");
        }
    }

    #[test]
    fn softplus_constants() {
        let softplus0 = std::f64::consts::LN_2;
        assert!((reference(0.0, B_SOFTPLUS_UPPER) - softplus0).abs() < 1e-15);
        let worst = (-2000..=2000)
            .map(|i| f64::from(i) * 0.01)
            .map(|x| (reference(x, B_SOFTPLUS_MINIMAX) - x.exp().ln_1p()).abs())
            .fold(0.0, f64::max);
        assert!((worst - 0.075_931_4).abs() < 1e-6, "{worst}");
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut y = [0.0f32; 2];
        for b in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(forward(&[1.0f32, 2.0], b, &mut y).is_err());
        }
        let e = backward(&[1.0f32, 2.0], &[1.0], 4.0, &mut y).unwrap_err();
        assert_eq!(e.to_string(), "grad must have 2 elements like x, got 1");
    }
}
