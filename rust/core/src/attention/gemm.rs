//! Small dense products on strided slices through `matrixmultiply` (its packed, runtime
//! dispatched AVX/FMA kernels; single-threaded, since the kernels parallelise over heads).

use crate::num::Real;

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
        (T::GEMM)(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
