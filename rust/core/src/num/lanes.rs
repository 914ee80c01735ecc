//! Lane reductions, 16 × 16 transposes and prefetches.

#[cfg(target_arch = "x86_64")]
use super::road::{road, Road};

/// `merge` over 16 lanes as a tree of halves (4 vector steps rather than 15 dependent ones).
#[inline(always)]
pub fn tree<T: Copy>(mut acc: [T; 16], merge: impl Fn(T, T) -> T) -> T {
    let mut half = 8;
    while half > 0 {
        for i in 0..half {
            acc[i] = merge(acc[i], acc[i + half]);
        }
        half /= 2;
    }
    acc[0]
}

/// A reduction of `x` in 16 independent lanes, then across them by [`tree`]: the compiler
/// vectorises it (a single running fold is one long dependency chain, and float sums may not
/// be reordered). The order is fixed, so the result is the same on every road.
#[inline(always)]
pub fn lanes<T: Copy>(x: &[T], init: T, step: impl Fn(T, T) -> T, merge: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; 16];
    let mut blocks = x.chunks_exact(16);
    for b in &mut blocks {
        acc.iter_mut().zip(b).for_each(|(a, &x)| *a = step(*a, x));
    }
    let tail = blocks.remainder().iter().fold(init, |a, &x| step(a, x));
    merge(tail, tree(acc, &merge))
}

/// Asks the CPU to start loading the cache line at `p` (a hint: any address, nothing is
/// read; a no-op off x86-64).
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not change the program's state, even for an invalid address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`]es every 64-byte line of `x`.
#[inline(always)]
pub fn prefetch_lines<T>(x: &[T]) {
    let step = (64 / std::mem::size_of::<T>().max(1)).max(1);
    for line in x.chunks(step) {
        prefetch(line.as_ptr());
    }
}

const L: usize = 16;

/// `t[p·ldt + j] = x[j·m + p]` for `j < rows`, zero for `rows ≤ j < ceil16(rows)`; `m` a
/// multiple of 16. The portable form: in 16 × 16 blocks.
#[inline(always)]
fn transpose(x: &[f32], m: usize, rows: usize, t: &mut [f32], ldt: usize) {
    for j0 in (0..rows).step_by(L) {
        let jn = L.min(rows - j0);
        for p0 in (0..m).step_by(L) {
            let mut blk = [[0.0f32; L]; L];
            for (j, b) in blk.iter_mut().enumerate().take(jn) {
                b.copy_from_slice(&x[(j0 + j) * m + p0..(j0 + j) * m + p0 + L]);
            }
            for p in 0..L {
                let col: [f32; L] = std::array::from_fn(|j| blk[j][p]);
                t[(p0 + p) * ldt + j0..(p0 + p) * ldt + j0 + L].copy_from_slice(&col);
            }
        }
    }
}

crate::per_road! {
    /// [`transpose`] compiled for each road.
    fn transpose_any(x: &[f32], m: usize, rows: usize, t: &mut [f32], ldt: usize) {
        transpose(x, m, rows, t, ldt)
    }
}

/// [`transpose`] with AVX-512 shuffles: four rounds of interleaving rows `i` and `i + 8`
/// transpose a 16 × 16 block in registers (the compiler leaves the portable form as scalar
/// moves, which cost as much as a quarter of a chunked attention pass).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(x: &[f32], m: usize, rows: usize, t: &mut [f32], ldt: usize) {
    use std::arch::x86_64::*;
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for j0 in (0..rows).step_by(L) {
        let jn = L.min(rows - j0);
        for p0 in (0..m).step_by(L) {
            let mut blk = [_mm512_setzero_ps(); L];
            for (j, b) in blk.iter_mut().enumerate().take(jn) {
                let row = &x[(j0 + j) * m + p0..(j0 + j) * m + p0 + L];
                *b = _mm512_loadu_ps(row.as_ptr());
            }
            for _ in 0..4 {
                let old = blk;
                for i in 0..L / 2 {
                    blk[2 * i] = _mm512_permutex2var_ps(old[i], lo, old[i + L / 2]);
                    blk[2 * i + 1] = _mm512_permutex2var_ps(old[i], hi, old[i + L / 2]);
                }
            }
            for (p, col) in blk.iter().enumerate() {
                let dst = &mut t[(p0 + p) * ldt + j0..(p0 + p) * ldt + j0 + L];
                _mm512_storeu_ps(dst.as_mut_ptr(), *col);
            }
        }
    }
}

/// [`transpose`] with AVX shuffles, in 8 × 8 blocks (unpack, shuffle, then swap 128-bit
/// halves) for the AVX2 road, where the portable form also compiles to scalar moves.
///
/// # Safety
/// The CPU must support AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_avx(x: &[f32], m: usize, rows: usize, t: &mut [f32], ldt: usize) {
    use std::arch::x86_64::*;
    const E: usize = 8;
    for j0 in (0..rows.div_ceil(L) * L).step_by(E) {
        for p0 in (0..m).step_by(E) {
            let mut r = [_mm256_setzero_ps(); E];
            for (j, r) in r.iter_mut().enumerate().take(rows.saturating_sub(j0)) {
                *r = _mm256_loadu_ps(x[(j0 + j) * m + p0..(j0 + j) * m + p0 + E].as_ptr());
            }
            let mut u = [_mm256_setzero_ps(); E];
            for i in 0..E / 2 {
                u[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                u[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            // s[h..h + 4]: columns (0, 4), (2, 6), (1, 5), (3, 7) of rows h..h + 4
            let mut s = [_mm256_setzero_ps(); E];
            for h in [0, 4] {
                for i in 0..2 {
                    s[h + i] = _mm256_shuffle_ps::<0x44>(u[h + i], u[h + i + 2]);
                    s[h + i + 2] = _mm256_shuffle_ps::<0xEE>(u[h + i], u[h + i + 2]);
                }
            }
            for p in 0..E {
                let (a, b) = (s[[0, 2, 1, 3][p % 4]], s[[0, 2, 1, 3][p % 4] + 4]);
                let col = if p < 4 {
                    _mm256_permute2f128_ps::<0x20>(a, b)
                } else {
                    _mm256_permute2f128_ps::<0x31>(a, b)
                };
                let dst = &mut t[(p0 + p) * ldt + j0..(p0 + p) * ldt + j0 + E];
                _mm256_storeu_ps(dst.as_mut_ptr(), col);
            }
        }
    }
}

/// [`transpose`] by the road's fastest form (a copy: bitwise the same on every road).
pub fn transpose16(x: &[f32], m: usize, rows: usize, t: &mut [f32], ldt: usize) {
    #[cfg(target_arch = "x86_64")]
    match road() {
        // SAFETY: each road runs only where its instructions were detected.
        Road::Avx512 => return unsafe { transpose_avx512(x, m, rows, t, ldt) },
        Road::Avx2 => return unsafe { transpose_avx(x, m, rows, t, ldt) },
        _ => {}
    }
    transpose_any(x, m, rows, t, ldt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_transpose_pads_and_matches_loops() {
        let (m, rows, ldt) = (32, 21, 48);
        let x: Vec<f32> = (0..rows * m).map(|i| i as f32 + 1.0).collect();
        let mut t = vec![-1.0f32; m * ldt];
        transpose16(&x, m, rows, &mut t, ldt);
        for p in 0..m {
            for j in 0..32 {
                let want = if j < rows { x[j * m + p] } else { 0.0 };
                assert_eq!(t[p * ldt + j], want, "{p} {j}");
            }
        }
        assert_eq!(tree(std::array::from_fn(|i| i as u32), |a, b| a + b), 120);
        let xs: Vec<u32> = (0..37).collect();
        assert_eq!(lanes(&xs, 0, |a, x| a + x, |a, b| a + b), 666);
    }
}
