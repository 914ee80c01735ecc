//! The two passes over the per-task gradients `J` (K rows of P values, row-major, borrowed):
//! the Gram matrix `G = J Jᵀ` and the combination `u = wᵀ J`.
//!
//! Both are memory-bound for small K, so each reads `J` once. Products of two f32 are exact
//! in f64, so the Gram accumulates in f64 without upcasting `J` (an f64 copy of J costs more
//! than the whole pass). Determinism: `P` is cut into blocks whose length depends on `(K, P)`
//! only; each block sums in a fixed lane order and the block partials are added in block
//! order, so `G` is bit-identical for any thread count. Tiles are zero-padded, so
//! every inner loop has a fixed trip count and vectorises.

use num_traits::Float;
use rayon::prelude::*;

use crate::parallel::MIN_CHUNK;
use crate::{Error, Result};

/// Largest number of tasks accepted: `G` has K² entries and the solvers are O(K³).
pub const MAX_TASKS: usize = 4096;
/// Elements of each row converted to f64 at a time (fits L1 for K ≤ 8).
const TILE: usize = 256;
/// Independent accumulators per pair: hides the add latency, and fixes the summation order.
const LANES: usize = 4;
/// Upper bound on the f64 block partials kept before the ordered reduction.
const MAX_PARTIALS: usize = 1 << 21;

/// Number of columns `P` of a `(K, P)` row-major matrix stored in `len` elements.
pub fn columns(len: usize, k: usize) -> Result<usize> {
    if k == 0 {
        return Err(Error::value(
            "J",
            "must have at least one task (row), got K = 0",
        ));
    }
    if k > MAX_TASKS {
        return Err(Error::value(
            "J",
            format!("must have at most {MAX_TASKS} tasks (rows), got {k}"),
        ));
    }
    if len % k != 0 {
        return Err(Error::value(
            "J",
            format!("must hold K·P values, got {len} for K = {k}"),
        ));
    }
    Ok(len / k)
}

fn pair_count(k: usize) -> usize {
    k * (k + 1) / 2
}

/// Sums the lanes of a pair in a fixed tree.
fn fold(l: &[f64; LANES]) -> f64 {
    (l[0] + l[1]) + (l[2] + l[3])
}

/// Adds the lower-triangle dot products of `buf` (K rows of `TILE` f64, zero-padded) to
/// `acc`, lane `t` of a pair summing the elements `≡ t (mod 4)` in order.
fn tile_dots(buf: &[[f64; TILE]], acc: &mut [f64]) {
    for (i, bi) in buf.iter().enumerate() {
        let base = i * (i + 1) / 2;
        for (j, bj) in buf.iter().enumerate().take(i + 1) {
            let mut l = [0.0f64; LANES];
            for (a, b) in bi.chunks_exact(LANES).zip(bj.chunks_exact(LANES)) {
                for t in 0..LANES {
                    l[t] += a[t] * b[t];
                }
            }
            acc[base + j] += fold(&l);
        }
    }
}

/// [`tile_dots`] with explicit AVX2 FMA (LLVM picks 128-bit vectors for the portable loop).
/// Register blocking: rows `(i, i+1)` against four rows `j` at a time, eight pairs from six
/// loads per step; the blocks overhang the triangle and the overhang is dropped. Each pair
/// keeps its own lanes, so the order is that of the portable loop (only the rounding of the
/// fused multiply-add differs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_dots_fma(buf: &[[f64; TILE]], acc: &mut [f64]) {
    use std::arch::x86_64::*;
    let k = buf.len();
    let fold_vec = |v: __m256d| {
        let mut l = [0.0f64; LANES];
        // SAFETY: `l` holds 4 f64.
        unsafe { _mm256_storeu_pd(l.as_mut_ptr(), v) };
        fold(&l)
    };
    for i0 in (0..k).step_by(2) {
        let rows = [i0, (i0 + 1).min(k - 1)];
        let pa = rows.map(|r| buf[r].as_ptr());
        for j0 in (0..=rows[1]).step_by(4) {
            let cols: [usize; 4] = std::array::from_fn(|q| (j0 + q).min(k - 1));
            let pb = cols.map(|c| buf[c].as_ptr());
            let mut l = [[_mm256_setzero_pd(); 4]; 2];
            for c in (0..TILE).step_by(LANES) {
                // SAFETY: every row has TILE elements and c + 4 <= TILE.
                unsafe {
                    let a = [_mm256_loadu_pd(pa[0].add(c)), _mm256_loadu_pd(pa[1].add(c))];
                    for q in 0..4 {
                        let b = _mm256_loadu_pd(pb[q].add(c));
                        l[0][q] = _mm256_fmadd_pd(a[0], b, l[0][q]);
                        l[1][q] = _mm256_fmadd_pd(a[1], b, l[1][q]);
                    }
                }
            }
            for (r, &row) in rows.iter().enumerate() {
                if r == 1 && row == rows[0] {
                    continue; // odd K: the second row repeats the first
                }
                for (q, &col) in cols.iter().enumerate() {
                    if j0 + q <= row {
                        debug_assert_eq!(col, j0 + q);
                        acc[row * (row + 1) / 2 + col] += fold_vec(l[r][q]);
                    }
                }
            }
        }
    }
}

/// Copies columns `[t, t + len)` of every row into `buf` as f64, zero-padding the tail.
#[inline(always)]
fn load_tile<T: Float>(j: &[T], p: usize, t: usize, len: usize, buf: &mut [[f64; TILE]]) {
    for (i, dst) in buf.iter_mut().enumerate() {
        let row = &j[i * p + t..i * p + t + len];
        for (d, &x) in dst.iter_mut().zip(row) {
            *d = x.to_f64().unwrap_or(f64::NAN);
        }
        dst[len..].fill(0.0);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn load_tile_avx2<T: Float>(
    j: &[T],
    p: usize,
    t: usize,
    len: usize,
    buf: &mut [[f64; TILE]],
) {
    load_tile(j, p, t, len, buf);
}

/// Lower-triangle partial Gram of columns `[start, end)`.
fn block_partial<T: Float>(j: &[T], k: usize, p: usize, start: usize, end: usize) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    let fma =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let mut acc = vec![0.0f64; pair_count(k)];
    let mut buf = vec![[0.0f64; TILE]; k];
    let mut t = start;
    while t < end {
        let len = TILE.min(end - t);
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: the CPU reports both features the functions are compiled for.
            unsafe {
                load_tile_avx2(j, p, t, len, &mut buf);
                tile_dots_fma(&buf, &mut acc);
            }
            t += len;
            continue;
        }
        load_tile(j, p, t, len, &mut buf);
        tile_dots(&buf, &mut acc);
        t += len;
    }
    acc
}

/// `G = J Jᵀ` (K×K, row-major, f64) of the row-major `(K, P)` matrix `j`, in one pass.
///
/// Errors when K is 0 or too large, when `j.len()` is not a multiple of K, or when a row
/// holds NaN/inf (or overflows f64 when squared): its diagonal entry is then not finite.
pub fn gram<T: Float + Send + Sync>(j: &[T], k: usize) -> Result<Vec<f64>> {
    let p = columns(j.len(), k)?;
    let pairs = pair_count(k);
    let mut block = MIN_CHUNK * 2;
    let cap = (MAX_PARTIALS / pairs).max(1);
    if p.div_ceil(block) > cap {
        block = p.div_ceil(cap).next_multiple_of(TILE);
    }
    let blocks = p.div_ceil(block);
    let partials: Vec<Vec<f64>> = (0..blocks)
        .into_par_iter()
        .map(|b| block_partial(j, k, p, b * block, ((b + 1) * block).min(p)))
        .collect();
    let mut lower = vec![0.0f64; pairs];
    for part in &partials {
        for (l, x) in lower.iter_mut().zip(part) {
            *l += x;
        }
    }
    let mut g = vec![0.0f64; k * k];
    let mut pair = 0;
    for i in 0..k {
        for jj in 0..=i {
            g[i * k + jj] = lower[pair];
            g[jj * k + i] = lower[pair];
            pair += 1;
        }
    }
    if let Some(i) = (0..k).find(|&i| !g[i * k + i].is_finite()) {
        return Err(Error::value(
            "J",
            format!("must be finite, but row {i} holds NaN or inf (or overflows when squared)"),
        ));
    }
    Ok(g)
}

/// `out = Σ w_i J_i[base..]` for the `(row, weight)` pairs, in f64, in row order.
#[inline(always)]
fn combine_chunk<T: Float>(j: &[T], p: usize, rows: &[(usize, f64)], base: usize, out: &mut [T]) {
    let mut acc = [0.0f64; TILE];
    for (t, dst) in out.chunks_mut(TILE).enumerate() {
        let start = base + t * TILE;
        let acc = &mut acc[..dst.len()];
        acc.fill(0.0);
        let f = |x: T| x.to_f64().unwrap_or(f64::NAN);
        let row = |i: usize| &j[i * p + start..i * p + start + dst.len()];
        // Four rows per sweep over `acc` (a quarter of the acc traffic), still added in
        // row order, so the result is that of a row-by-row loop.
        let mut quads = rows.chunks_exact(4);
        for q in &mut quads {
            let (r0, r1, r2, r3) = (row(q[0].0), row(q[1].0), row(q[2].0), row(q[3].0));
            let (w0, w1, w2, w3) = (q[0].1, q[1].1, q[2].1, q[3].1);
            for (t, a) in acc.iter_mut().enumerate() {
                *a = (((*a + w0 * f(r0[t])) + w1 * f(r1[t])) + w2 * f(r2[t])) + w3 * f(r3[t]);
            }
        }
        for &(i, wi) in quads.remainder() {
            for (a, &x) in acc.iter_mut().zip(row(i)) {
                *a += wi * f(x);
            }
        }
        for (d, &a) in dst.iter_mut().zip(acc.iter()) {
            *d = T::from(a).unwrap_or_else(T::nan);
        }
    }
}

/// [`combine_chunk`] compiled for AVX2 (no FMA, so the same roundings).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn combine_chunk_avx2<T: Float>(
    j: &[T],
    p: usize,
    rows: &[(usize, f64)],
    base: usize,
    out: &mut [T],
) {
    combine_chunk(j, p, rows, base, out);
}

/// Writes `u = Σ_k w_k J_k` into `out` (length P), each element summed in f64 in row order.
/// Rows with `w_k == 0` are not read.
pub fn combine<T: Float + Send + Sync>(j: &[T], k: usize, w: &[f64], out: &mut [T]) -> Result<()> {
    let p = columns(j.len(), k)?;
    if w.len() != k {
        return Err(Error::value(
            "weights",
            format!("must have K = {k} elements, got {}", w.len()),
        ));
    }
    if let Some(x) = w.iter().find(|x| !x.is_finite()) {
        return Err(Error::value("weights", format!("must be finite, got {x}")));
    }
    if out.len() != p {
        return Err(Error::value(
            "out",
            format!("must have P = {p} elements, got {}", out.len()),
        ));
    }
    let rows: Vec<(usize, f64)> = w
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, x)| x != 0.0)
        .collect();
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    out.par_chunks_mut(MIN_CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU reports AVX2.
                unsafe { combine_chunk_avx2(j, p, &rows, c * MIN_CHUNK, chunk) };
                return;
            }
            combine_chunk(j, p, &rows, c * MIN_CHUNK, chunk);
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    fn random(k: usize, p: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::stream(seed, 0);
        (0..k * p).map(|_| rng.random::<f32>() - 0.5).collect()
    }

    #[test]
    fn gram_matches_a_plain_f64_sum() {
        for (k, p) in [(1, 1), (3, 7), (5, 1000), (8, 70_001), (2, 0)] {
            let j = random(k, p, 1);
            let g = gram(&j, k).unwrap();
            for a in 0..k {
                for b in 0..k {
                    let want: f64 = (0..p)
                        .map(|t| f64::from(j[a * p + t]) * f64::from(j[b * p + t]))
                        .sum();
                    let err = (g[a * k + b] - want).abs();
                    assert!(
                        err <= 1e-12 * want.abs().max(1.0),
                        "{k}x{p} ({a},{b}): {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn gram_is_bit_identical_across_thread_counts() {
        let j = random(6, 300_001, 2);
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1).install(|| gram(&j, 6).unwrap());
        for n in [2, 3, 4] {
            assert_eq!(one, pool(n).install(|| gram(&j, 6).unwrap()));
        }
    }

    #[test]
    fn portable_and_simd_tiles_agree() {
        for k in [1, 2, 3, 5, 8, 9] {
            let values = random(k, TILE, 5);
            let buf: Vec<[f64; TILE]> = values
                .chunks(TILE)
                .map(|r| std::array::from_fn(|t| f64::from(r[t])))
                .collect();
            let mut portable = vec![0.0; pair_count(k)];
            tile_dots(&buf, &mut portable);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut simd = vec![0.0; pair_count(k)];
                // SAFETY: the features were just detected.
                unsafe { tile_dots_fma(&buf, &mut simd) };
                for (a, b) in portable.iter().zip(&simd) {
                    assert!(
                        (a - b).abs() <= 1e-13 * a.abs().max(1.0),
                        "K={k}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn many_tasks_cap_the_partials() {
        let j = random(40, 50_000, 3);
        let g = gram(&j, 40).unwrap();
        let want: f64 = (0..50_000).map(|t| f64::from(j[t]).powi(2)).sum();
        assert!((g[0] - want).abs() <= 1e-12 * want);
    }

    #[test]
    fn combine_is_the_weighted_row_sum() {
        let (k, p) = (3, 40_000);
        let j = random(k, p, 4);
        let w = [0.5, 0.0, -2.0];
        let mut u = vec![0.0f32; p];
        combine(&j, k, &w, &mut u).unwrap();
        for t in 0..p {
            let want = 0.5 * f64::from(j[t]) - 2.0 * f64::from(j[2 * p + t]);
            assert_eq!(u[t], want as f32);
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(gram::<f32>(&[], 0).is_err());
        assert!(gram(&[1.0f32; 5], 2).is_err());
        assert!(gram(&[1.0f32; 5], MAX_TASKS + 1).is_err());
        let e = gram(&[1.0f32, f32::NAN, 0.0, 1.0], 2).unwrap_err();
        assert!(e.to_string().contains("row 0"), "{e}");
        assert!(gram(&[1.0f32, f32::INFINITY], 1).is_err());
        let mut u = [0.0f32; 2];
        assert!(combine(&[1.0f32; 4], 2, &[1.0], &mut u).is_err());
        assert!(combine(&[1.0f32; 4], 2, &[1.0, f64::NAN], &mut u).is_err());
        assert!(combine(&[1.0f32; 4], 2, &[1.0, 1.0], &mut u[..1]).is_err());
    }
}
