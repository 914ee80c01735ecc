//! The two passes over the per-task gradients `J` (K rows of P values, row-major, borrowed):
//! the Gram matrix `G = J Jᵀ` and the combination `u = wᵀ J`.
//!
//! Both are memory-bound for small K, so each reads `J` once. Products of two f32 are exact
//! in f64, so the Gram accumulates in f64 without upcasting `J` (an f64 copy of J costs more
//! than the whole pass).
//!
//! Gram summation scheme. `P` is cut into blocks whose length depends on `(K, P)` only
//! (rayon spreads the blocks over the threads). Within a block, every pair `(i, j)` owns
//! `W` f64 lanes (8 with AVX-512, 4 with AVX2 or without SIMD); lane `t` adds the exact
//! products of the block's columns `≡ t (mod W)` in column order (fused multiply-adds with
//! SIMD; for pairs inside a group of one or two rows, as when K ≤ 2, each tile's even and
//! odd lane-vectors sum apart and are then added, see `diag`). The lanes fold in a fixed
//! tree and the block partials are added in block order, so `G` is bit-identical for any
//! thread count (and differs between lane widths only by rounding). Partial sums in f32
//! would halve the arithmetic but cost ~1e-7 of Σ|a_t b_t| (the tests hold G to 1e-12 of
//! the norms); with f64 lanes the pass still reads `J` at about the machine's bandwidth.
//!
//! Blocks are walked in tiles of `TILE` columns read straight from `J` (f32 widened to f64
//! in registers; only a block's last, partial tile goes through a zero-padded copy, so
//! every loop has a fixed trip count). Rows are paired in groups of four with the row
//! vectors and the accumulators in registers, and the kernels prefetch about 8 KiB of `J`
//! ahead so that reading `J` overlaps the arithmetic.

use num_traits::Float;
use rayon::prelude::*;

use crate::num::{prefetch, Road};
use crate::parallel::MIN_CHUNK;
use crate::{cancel, Error, Result};

/// Largest number of tasks accepted: `G` has K² entries and the solvers are O(K³).
pub const MAX_TASKS: usize = 4096;
/// Columns per tile: each kernel call sweeps a tile of its rows with a fixed trip count.
const TILE: usize = 256;
/// Bytes of `J` (all rows together) between the tile being summed and the one prefetched.
const AHEAD_BYTES: usize = 8 << 10;
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
    if !len.is_multiple_of(k) {
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

/// Sums the lanes of a pair in a fixed tree: `(l0 + l1) + (l2 + l3)`, and so on by halves.
fn fold(l: &[f64]) -> f64 {
    match l.len() {
        1 => l[0],
        n => fold(&l[..n / 2]) + fold(&l[n / 2..]),
    }
}

/// A vector of `W` f64 lanes. Each pair of rows owns one per block of `P`, lane `t` summing
/// the products of the block's columns `≡ t (mod W)` in column order. Plain arrays: compiled
/// on a SIMD road they become its vector registers (and `mul_add` its FMA).
#[derive(Clone, Copy)]
struct Lanes<const W: usize, const FUSED: bool>([f64; W]);

impl<const W: usize, const FUSED: bool> Lanes<W, FUSED> {
    /// Rows paired against four other rows at once (`GROUP·4` accumulators + `GROUP + 4`
    /// row vectors must fit in the register file: 32 registers of 8 lanes with AVX-512, 16 of
    /// 4 otherwise).
    const GROUP: usize = if W == 8 { 4 } else { 2 };

    #[inline(always)]
    fn zero() -> Self {
        Lanes([0.0; W])
    }

    /// # Safety
    /// `p` is valid for `W` reads.
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        // SAFETY: the caller guarantees W readable values.
        Lanes(unsafe { p.cast::<[f64; W]>().read_unaligned() })
    }

    /// `W` f32 values widened (exactly) to f64.
    ///
    /// # Safety
    /// `p` is valid for `W` reads.
    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> Self {
        // SAFETY: the caller guarantees W readable values.
        Lanes(unsafe { p.cast::<[f32; W]>().read_unaligned() }.map(f64::from))
    }

    /// `self · b + c`, fused on the roads with FMA (the portable road rounds twice).
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        Lanes(std::array::from_fn(|t| {
            if FUSED {
                self.0[t].mul_add(b.0[t], c.0[t])
            } else {
                self.0[t] * b.0[t] + c.0[t]
            }
        }))
    }

    #[inline(always)]
    fn add(self, b: Self) -> Self {
        Lanes(std::array::from_fn(|t| self.0[t] + b.0[t]))
    }
}

/// Index of the pair `(i, j)`, `j <= i`, in the packed lower triangle.
#[inline(always)]
fn pair_index(i: usize, j: usize) -> usize {
    i * (i + 1) / 2 + j
}

/// `W` values of `J` from `p` as f64 lanes: f32 and f64 straight into registers (the
/// branch is resolved at compile time), any other type value by value.
///
/// # Safety
/// `p` is valid for `W` reads.
#[inline(always)]
unsafe fn load<T: Float + 'static, const W: usize, const F: bool>(p: *const T) -> Lanes<W, F> {
    use std::any::TypeId;
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        Lanes::load_f32(p.cast())
    } else if TypeId::of::<T>() == TypeId::of::<f64>() {
        Lanes::load(p.cast())
    } else {
        Lanes(std::array::from_fn(|t| {
            (*p.add(t)).to_f64().unwrap_or(f64::NAN)
        }))
    }
}

/// Adds the lower-triangle products of tile rows `r..r + N` among themselves to `acc`, and
/// prefetches the same rows `ahead` values further on, spread over the loop so that the
/// loads overlap the arithmetic (every row is in exactly one diagonal group).
///
/// # Safety
/// `r + N <= tile.len()`, and every `tile[i]` is valid for
/// `TILE` reads.
#[inline(always)]
unsafe fn diag<T: Float + 'static, const W: usize, const F: bool, const N: usize>(
    tile: &[*const T],
    r: usize,
    acc: &mut [Lanes<W, F>],
    ahead: usize,
) {
    let rows: [*const T; N] = std::array::from_fn(|q| tile[r + q]);
    let mut a = [[Lanes::<W, F>::zero(); N]; N]; // the upper half stays unused
    for (i, ai) in a.iter_mut().enumerate() {
        for (j, aij) in ai.iter_mut().enumerate().take(i + 1) {
            *aij = acc[pair_index(r + i, r + j)];
        }
    }
    // One or two rows give too few pairs to hide the multiply-add latency: then every other
    // lane-vector of the tile goes to a second set, added to the first at the tile's end.
    let split = N <= 2;
    let mut b = [[Lanes::<W, F>::zero(); N]; N];
    for c in (0..TILE).step_by(if split { 2 * W } else { W }) {
        // SAFETY: every row holds TILE values and c + 2W <= TILE when split (TILE % 2W == 0).
        let x: [Lanes<W, F>; N] = std::array::from_fn(|q| unsafe { load(rows[q].add(c)) });
        for row in rows {
            prefetch(row.wrapping_add(c + ahead));
            if split {
                prefetch(row.wrapping_add(c + W + ahead));
            }
        }
        // Constant bounds (not `take(i + 1)`), so the loops unroll and `a` stays in registers.
        for i in 0..N {
            for j in 0..N {
                if j <= i {
                    a[i][j] = x[i].mul_add(x[j], a[i][j]);
                }
            }
        }
        if split {
            let y: [Lanes<W, F>; N] = std::array::from_fn(|q| unsafe { load(rows[q].add(c + W)) });
            for i in 0..N {
                for j in 0..N {
                    if j <= i {
                        b[i][j] = y[i].mul_add(y[j], b[i][j]);
                    }
                }
            }
        }
    }
    for i in 0..N {
        for j in 0..=i {
            acc[pair_index(r + i, r + j)] = if split { a[i][j].add(b[i][j]) } else { a[i][j] };
        }
    }
}

/// Adds the products of tile rows `i..i + N` with rows `j..j + 4` (`j + 4 <= i`) to `acc`.
///
/// # Safety
/// As for [`diag`], with `i + N <= tile.len()`.
#[inline(always)]
unsafe fn off<T: Float + 'static, const W: usize, const F: bool, const N: usize>(
    tile: &[*const T],
    i: usize,
    j: usize,
    acc: &mut [Lanes<W, F>],
) {
    let rows_a: [*const T; N] = std::array::from_fn(|q| tile[i + q]);
    let rows_b: [*const T; 4] = std::array::from_fn(|q| tile[j + q]);
    let mut a = [[Lanes::<W, F>::zero(); 4]; N];
    for (x, ax) in a.iter_mut().enumerate() {
        for (y, axy) in ax.iter_mut().enumerate() {
            *axy = acc[pair_index(i + x, j + y)];
        }
    }
    for c in (0..TILE).step_by(W) {
        // SAFETY: every row holds TILE values and c + W <= TILE.
        let xa: [Lanes<W, F>; N] = std::array::from_fn(|q| unsafe { load(rows_a[q].add(c)) });
        let xb: [Lanes<W, F>; 4] = std::array::from_fn(|q| unsafe { load(rows_b[q].add(c)) });
        for (x, ax) in a.iter_mut().enumerate() {
            for (y, axy) in ax.iter_mut().enumerate() {
                *axy = xa[x].mul_add(xb[y], *axy);
            }
        }
    }
    for (x, ax) in a.iter().enumerate() {
        for (y, axy) in ax.iter().enumerate() {
            acc[pair_index(i + x, j + y)] = *axy;
        }
    }
}

/// Adds every lower-triangle product of the tile (`tile[i]`: where row `i`'s `TILE` columns
/// start) to its pair's lanes. Rows go in groups of four: each group with itself ([`diag`]),
/// and against every earlier group ([`off`], `Lanes::<W, F>::GROUP` rows at a time), with the row
/// vectors and the accumulators in registers. Each pair is visited once per tile, so the
/// grouping does not change the order in which its lanes sum. `ahead`: see [`diag`].
///
/// # Safety
/// Every `tile[i]` is valid for `TILE` reads.
#[inline(always)]
unsafe fn tile_dots<T: Float + 'static, const W: usize, const F: bool>(
    tile: &[*const T],
    acc: &mut [Lanes<W, F>],
    ahead: usize,
) {
    let k = tile.len();
    for ib in (0..k).step_by(4) {
        let end = (ib + 4).min(k);
        for jb in (0..ib).step_by(4) {
            let mut i = ib;
            while i < end {
                let n = (end - i).min(Lanes::<W, F>::GROUP);
                match n {
                    1 => off::<T, W, F, 1>(tile, i, jb, acc),
                    2 => off::<T, W, F, 2>(tile, i, jb, acc),
                    3 => off::<T, W, F, 3>(tile, i, jb, acc),
                    _ => off::<T, W, F, 4>(tile, i, jb, acc),
                }
                i += n;
            }
        }
        match end - ib {
            1 => diag::<T, W, F, 1>(tile, ib, acc, ahead),
            2 => diag::<T, W, F, 2>(tile, ib, acc, ahead),
            3 => diag::<T, W, F, 3>(tile, ib, acc, ahead),
            _ => diag::<T, W, F, 4>(tile, ib, acc, ahead),
        }
    }
}

/// Lower-triangle partial Gram of columns `[start, end)` with `W` lanes.
#[inline(always)]
fn block_lanes<T: Float + 'static, const W: usize, const F: bool>(
    j: &[T],
    k: usize,
    p: usize,
    start: usize,
    end: usize,
) -> Vec<f64> {
    let mut acc = vec![Lanes::<W, F>::zero(); pair_count(k)];
    // Prefetch about 8 KiB of J ahead: enough to cover the load latency for small K, and
    // no further than the next tile for large K (measured on the 2-core bench box).
    // Prefetches past the block (or past `j`) are harmless.
    let ahead = (AHEAD_BYTES / (k * TILE * std::mem::size_of::<T>())).max(1) * TILE;
    let mut tile = vec![std::ptr::null::<T>(); k];
    let mut t = start;
    while t + TILE <= end {
        for (i, row) in tile.iter_mut().enumerate() {
            *row = j[i * p + t..i * p + t + TILE].as_ptr();
        }
        // SAFETY: every row pointer starts TILE values of `j`.
        unsafe { tile_dots(&tile, &mut acc, ahead) };
        t += TILE;
    }
    if t < end {
        // The last, partial tile goes through a zero-padded copy, so every kernel loop keeps
        // its fixed trip count (the zeros add nothing).
        let mut padded = vec![T::zero(); k * TILE];
        for (i, (row, dst)) in tile
            .iter_mut()
            .zip(padded.chunks_exact_mut(TILE))
            .enumerate()
        {
            dst[..end - t].copy_from_slice(&j[i * p + t..i * p + end]);
            *row = dst.as_ptr();
        }
        // SAFETY: every row pointer starts a TILE-long row of `padded`.
        unsafe { tile_dots(&tile, &mut acc, 0) };
    }
    acc.iter().map(|v| fold(&v.0)).collect()
}

crate::per_road! {
    /// Lower-triangle partial Gram of columns `[start, end)`, in the road's lanes.
    fn block_gram[T: Float + 'static](j: &[T], k: usize, p: usize, start: usize, end: usize) -> Vec<f64>
    where road: road {
        match road {
            Road::Avx512 => block_lanes::<T, 8, true>(j, k, p, start, end),
            Road::Avx2 | Road::Neon => block_lanes::<T, 4, true>(j, k, p, start, end),
            Road::Portable => block_lanes::<T, 4, false>(j, k, p, start, end),
        }
    }
}

/// `G = J Jᵀ` (K×K, row-major, f64) of the row-major `(K, P)` matrix `j`, in one pass.
///
/// Errors when K is 0 or too large, when `j.len()` is not a multiple of K, or when a row
/// holds NaN/inf (or overflows f64 when squared): its diagonal entry is then not finite.
pub fn gram<T: Float + Send + Sync + 'static>(j: &[T], k: usize) -> Result<Vec<f64>> {
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
        .map(|b| {
            cancel::check()?;
            Ok(block_gram(j, k, p, b * block, ((b + 1) * block).min(p)))
        })
        .collect::<Result<_>>()?;
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

crate::per_road! {
    /// `out = Σ w_i J_i[base..]` for the `(row, weight)` pairs, in f64, in row order (no
    /// fused multiply-add, so the same roundings on every road).
    fn combine_chunk[T: Float](j: &[T], p: usize, rows: &[(usize, f64)], base: usize, out: &mut [T]) {
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
    out.par_chunks_mut(MIN_CHUNK)
        .enumerate()
        .try_for_each(|(c, chunk)| {
            cancel::check()?;
            combine_chunk(j, p, &rows, c * MIN_CHUNK, chunk);
            Ok(())
        })
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
    fn the_roads_lanes_match_a_plain_f64_sum() {
        // Every row count up to three groups of four, tails shorter than a tile and a lane,
        // several blocks, and no columns.
        for k in 1..=13 {
            for p in [0, 1, 5, TILE + 3, 3 * TILE, 40_003] {
                let j = random(k, p, k as u64);
                let g = gram(&j, k).unwrap();
                for a in 0..k {
                    for b in 0..k {
                        let want: f64 = (0..p)
                            .map(|t| f64::from(j[a * p + t]) * f64::from(j[b * p + t]))
                            .sum();
                        let err = (g[a * k + b] - want).abs();
                        assert!(
                            err <= 1e-12 * want.abs().max(1.0),
                            "{:?} {k}x{p} ({a},{b}): {err}",
                            crate::num::road()
                        );
                    }
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
