//! The float types the kernels run in, and the one vectorising f32 `exp`.

use num_traits::Float;

/// The signature of `matrixmultiply`'s products.
pub type Gemm<T> = unsafe fn(
    usize,
    usize,
    usize,
    T,
    *const T,
    isize,
    isize,
    *const T,
    isize,
    isize,
    T,
    *mut T,
    isize,
    isize,
);

/// f32 or f64, with what the kernels need beyond [`Float`].
pub trait Real: Float + Send + Sync + std::fmt::Debug + 'static {
    /// `exp(self)` that vectorises: Cephes' polynomial for f32 (within 2 ulp; 0 below -87,
    /// `inf` above 88, so `-inf` gives 0), the standard library's for f64.
    fn exp_fast(self) -> Self;

    /// `out[i] = exp(sign·x[i] − shift)·scale`, exact (libm) wherever an exponent is outside
    /// [`Real::exp_fast`]'s range.
    fn exp_into(x: &[Self], sign: Self, shift: Self, scale: Self, out: &mut [Self]);

    /// Exactly to f64.
    fn widen(self) -> f64;

    /// Rounded from f64.
    fn narrow(x: f64) -> Self;

    /// `matrixmultiply`'s `sgemm` or `dgemm`: `c ← alpha·a·b + beta·c` on raw pointers with
    /// row and column strides (`m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc`).
    const GEMM: Gemm<Self>;

    /// The transpose of a row-major `rows × cols` matrix.
    fn transposed(x: &[Self], rows: usize, cols: usize) -> Vec<Self> {
        let mut t = vec![Self::zero(); rows * cols];
        transpose_elements(x, rows, cols, &mut t);
        t
    }
}

/// `t[j·rows + i] = x[i·cols + j]`, element by element.
fn transpose_elements<T: Copy>(x: &[T], rows: usize, cols: usize, t: &mut [T]) {
    for (i, row) in x.chunks_exact(cols).take(rows).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * rows + i] = v;
        }
    }
}

impl Real for f32 {
    /// Hand-written because libm's `expf` is an opaque call per element, which blocks
    /// vectorisation: `x = n·ln2 + r` with `|r| ≤ ln2/2`, `exp(r)` by Cephes' degree-6
    /// polynomial, `2ⁿ` assembled in the exponent bits. `n` is rounded through the float
    /// adder (no SSE4.1 `roundps` in baseline x86-64): `t = 1.5·2²³ + n` holds the integer `n`
    /// in its low bits (an `as i32` cast would saturate, which does not vectorise).
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        const MAGIC: f32 = 12_582_912.0;
        let x = self.clamp(-87.0, 88.0);
        let t = x * std::f32::consts::LOG2_E + MAGIC;
        let n = t - MAGIC;
        let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ]
        .iter()
        .fold(1.987_569_2e-4, |acc, &c| acc * r + c);
        let e = p * (r * r) + r + 1.0;
        let pow2 = f32::from_bits(t.to_bits().wrapping_sub(MAGIC.to_bits() - 127) << 23);
        if self < -87.0 {
            0.0
        } else if self > 88.0 {
            f32::INFINITY
        } else {
            e * pow2
        }
    }

    /// Inlined so that it vectorises for the target features of its caller.
    #[inline(always)]
    fn exp_into(x: &[f32], sign: f32, shift: f32, scale: f32, out: &mut [f32]) {
        let mut outside = false;
        for (o, &x) in out.iter_mut().zip(x) {
            let a = sign * x - shift;
            outside |= !(-87.0..=88.0).contains(&a);
            *o = a.exp_fast() * scale;
        }
        if outside {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = (sign * x - shift).exp() * scale;
            }
        }
    }

    #[inline(always)]
    fn widen(self) -> f64 {
        f64::from(self)
    }

    #[inline(always)]
    fn narrow(x: f64) -> f32 {
        x as f32
    }

    const GEMM: Gemm<f32> = matrixmultiply::sgemm;

    fn transposed(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; rows * cols];
        if rows.is_multiple_of(16) && cols.is_multiple_of(16) {
            super::transpose16(x, cols, rows, &mut t, rows);
        } else {
            transpose_elements(x, rows, cols, &mut t);
        }
        t
    }
}

impl Real for f64 {
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }

    fn exp_into(x: &[f64], sign: f64, shift: f64, scale: f64, out: &mut [f64]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = (sign * x - shift).exp() * scale;
        }
    }

    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }

    #[inline(always)]
    fn narrow(x: f64) -> f64 {
        x
    }

    const GEMM: Gemm<f64> = matrixmultiply::dgemm;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_f32_is_within_2_ulp() {
        let mut worst = 0.0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = f64::from(x).exp();
            let got = f64::from(x.exp_fast());
            if want > f64::from(f32::MIN_POSITIVE) {
                worst = worst.max((got - want).abs() / want);
            }
        }
        assert!(worst < 2.5 * f64::from(f32::EPSILON), "{worst}");
        assert_eq!(f32::NEG_INFINITY.exp_fast(), 0.0);
        assert_eq!((-100.0f32).exp_fast(), 0.0);
        assert_eq!(f32::INFINITY.exp_fast(), f32::INFINITY);
        assert!(f32::NAN.exp_fast().is_nan());
    }

    #[test]
    fn exp_into_is_exact_at_the_edges() {
        let x: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0437).collect();
        let mut y = vec![0.0f32; x.len()];
        f32::exp_into(&x, 1.0, 0.0, 1.0, &mut y);
        for (&x, &y) in x.iter().zip(&y) {
            let want = f64::from(x).exp();
            assert!(
                (f64::from(y) - want).abs() <= 2.5 * f64::from(f32::EPSILON) * want,
                "{x}"
            );
        }
        let edge = [-1e4f32, -87.5, 88.5, 1e4, f32::NEG_INFINITY, 0.0];
        let mut y = [0.0f32; 6];
        f32::exp_into(&edge, 1.0, 0.0, 1.0, &mut y);
        assert_eq!(y, edge.map(f32::exp));
        let mut nan = [0.0f32];
        f32::exp_into(&[f32::NAN], 1.0, 0.0, 1.0, &mut nan);
        assert!(nan[0].is_nan());
    }

    #[test]
    fn transposes_match_loops() {
        for (rows, cols) in [(32, 48), (3, 5)] {
            let x: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = f32::transposed(&x, rows, cols);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(t[j * rows + i], x[i * cols + j]);
                }
            }
        }
    }
}
