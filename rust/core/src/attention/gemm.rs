//! Small dense products on strided slices through `matrixmultiply` (its packed, runtime
//! dispatched AVX/FMA kernels; single-threaded, since the kernels parallelise over heads).

use num_traits::Float;

use super::features::Mapper;
use super::forms::{Grads, Method};

/// The float types the attention kernels run in.
pub trait Real: Float + Send + Sync + std::fmt::Debug + 'static {
    /// `out[i] = exp(sign·x[i] − shift)·scale`.
    fn exp_into(x: &[Self], sign: Self, shift: Self, scale: Self, out: &mut [Self]);

    /// `c ← alpha·a·b + beta·c` on raw strided pointers.
    ///
    /// # Safety
    /// Every addressed element of `a`, `b`, `c` must be in bounds.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: (*const Self, isize, isize),
        b: (*const Self, isize, isize),
        beta: Self,
        c: (*mut Self, isize, isize),
    );

    /// The transpose of a row-major `rows × cols` matrix.
    fn transposed(x: &[Self], rows: usize, cols: usize) -> Vec<Self> {
        transposed(x, rows, cols)
    }

    /// One head of the chunked or scan causal forward by [`super::fast`], where it applies
    /// (f32, `M` and `D_v` multiples of 16): `Some(all values finite)`, else `None`. With
    /// `maps`, `q` and `k` are raw and mapped inside the pass.
    #[allow(clippy::too_many_arguments)]
    fn forward_fast(
        _method: Method,
        _q: &[Self],
        _k: &[Self],
        _v: &[Self],
        _dims: (usize, usize, usize),
        _maps: Option<&Mapper<Self>>,
        _eps: f64,
        _state: (&mut [f64], &mut f64),
        _o: &mut [Self],
        _den: &mut [Self],
    ) -> Option<bool> {
        None
    }

    /// One head of the chunked causal backward by [`super::fast`], where it applies (as
    /// [`Real::forward_fast`]): `Some(())` once `dq`, `dk`, `dv` are written, else `None`.
    #[allow(clippy::too_many_arguments)]
    fn backward_fast(
        _method: Method,
        _q: &[Self],
        _k: &[Self],
        _v: &[Self],
        _dims: (usize, usize, usize),
        _g: &Grads<Self>,
        _dq: &mut [Self],
        _dk: &mut [Self],
        _dv: &mut [Self],
    ) -> Option<()> {
        None
    }
}

/// The transpose of a row-major `rows × cols` matrix, element by element.
pub(crate) fn transposed<T: Real>(x: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::zero(); rows * cols];
    for (i, row) in x.chunks_exact(cols).take(rows).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * rows + i] = v;
        }
    }
    t
}

/// `exp` for f32 that vectorises (Cephes' `expf`: `2^n·p(r)` with `|r| ≤ ln2/2`, within 2 ulp):
/// libm's `expf` is an opaque call per element, and FAVOR+ takes one per feature. Inputs
/// outside `[-87, 88]` (and NaN) are redone with libm, so overflow/underflow are exact.
/// Inlined so that it vectorises for the target features of its caller.
#[inline(always)]
fn exp_f32_into(x: &[f32], sign: f32, shift: f32, scale: f32, out: &mut [f32]) {
    const P: [f32; 6] = [
        1.987_569_2e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    let mut outside = false;
    for (o, &x) in out.iter_mut().zip(x) {
        let a = sign * x - shift;
        outside |= !(-87.0..=88.0).contains(&a);
        let a = a.clamp(-87.0, 88.0);
        // Round to nearest through the float adder (no SSE4.1 `roundps` in baseline x86-64):
        // `t = 1.5·2²³ + n` holds the integer `n` in its low bits, so `2ⁿ` is integer ops on
        // them (an `as i32` cast would saturate, which does not vectorise).
        let t = a * std::f32::consts::LOG2_E + 12_582_912.0;
        let n = t - 12_582_912.0;
        let r = a - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = P.iter().fold(0.0, |acc, &c| acc * r + c);
        let e = 1.0 + r + r * r * p;
        let pow2 = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
        *o = e * pow2 * scale;
    }
    if outside {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = (sign * x - shift).exp() * scale;
        }
    }
}

impl Real for f32 {
    #[inline(always)]
    fn exp_into(x: &[f32], sign: f32, shift: f32, scale: f32, out: &mut [f32]) {
        exp_f32_into(x, sign, shift, scale, out);
    }

    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: (*const f32, isize, isize),
        b: (*const f32, isize, isize),
        beta: f32,
        c: (*mut f32, isize, isize),
    ) {
        matrixmultiply::sgemm(
            m, k, n, alpha, a.0, a.1, a.2, b.0, b.1, b.2, beta, c.0, c.1, c.2,
        );
    }

    fn transposed(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        if rows.is_multiple_of(16) && cols.is_multiple_of(16) {
            super::fast::transposed(x, rows, cols)
        } else {
            transposed(x, rows, cols)
        }
    }

    fn forward_fast(
        method: Method,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: (usize, usize, usize),
        maps: Option<&Mapper<f32>>,
        eps: f64,
        state: (&mut [f64], &mut f64),
        o: &mut [f32],
        den: &mut [f32],
    ) -> Option<bool> {
        super::fast::forward(method, q, k, v, dims, maps, eps, state, o, den)
    }

    fn backward_fast(
        method: Method,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: (usize, usize, usize),
        g: &Grads<f32>,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) -> Option<()> {
        super::fast::backward(method, q, k, v, dims, g, dq, dk, dv)
    }
}

impl Real for f64 {
    fn exp_into(x: &[f64], sign: f64, shift: f64, scale: f64, out: &mut [f64]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = (sign * x - shift).exp() * scale;
        }
    }

    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: (*const f64, isize, isize),
        b: (*const f64, isize, isize),
        beta: f64,
        c: (*mut f64, isize, isize),
    ) {
        matrixmultiply::dgemm(
            m, k, n, alpha, a.0, a.1, a.2, b.0, b.1, b.2, beta, c.0, c.1, c.2,
        );
    }
}

/// A read-only strided matrix view.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major `rows × cols` with leading dimension `ld`.
    pub(crate) fn new(data: &'a [T], rows: usize, cols: usize, ld: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: ld,
            cs: 1,
        }
    }

    pub(crate) fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `c ← alpha·a·b + beta·c`, `c` row-major with leading dimension `ldc`.
pub(crate) fn gemm<T: Real>(alpha: T, a: Mat<T>, b: Mat<T>, beta: T, c: &mut [T], ldc: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && a.fits() && b.fits(),
        "gemm operands out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "gemm output out of bounds");
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].iter_mut().for_each(|x| *x = beta * *x);
        }
        return;
    }
    // SAFETY: the asserts above bound every index the product touches.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            alpha,
            (a.data.as_ptr(), a.rs as isize, a.cs as isize),
            (b.data.as_ptr(), b.rs as isize, b.cs as isize),
            beta,
            (c.as_mut_ptr(), ldc as isize, 1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_within_two_ulp_and_exact_at_the_edges() {
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
    fn strided_products_match_loops() {
        let a: Vec<f64> = (0..12).map(f64::from).collect(); // 3×4
        let b: Vec<f64> = (0..8).map(|i| f64::from(i) * 0.5 - 1.0).collect(); // 2×4
        let mut c = vec![1.0; 6]; // 3×2 = a·bᵀ + c
        gemm(
            1.0,
            Mat::new(&a, 3, 4, 4),
            Mat::new(&b, 2, 4, 4).t(),
            1.0,
            &mut c,
            2,
        );
        for i in 0..3 {
            for j in 0..2 {
                let want: f64 = 1.0 + (0..4).map(|l| a[i * 4 + l] * b[j * 4 + l]).sum::<f64>();
                assert_eq!(c[i * 2 + j], want);
            }
        }
    }
}
