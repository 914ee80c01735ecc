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
/// the products of the block's columns `≡ t (mod W)` in column order.
trait Lanes: Copy {
    const W: usize;
    /// Rows paired against four other rows at once (`GROUP·4` accumulators + `GROUP + 4`
    /// row vectors must fit in the register file).
    const GROUP: usize;
    /// # Safety
    /// Every method: the CPU has the features of the implementation.
    unsafe fn zero() -> Self;
    /// # Safety
    /// Also: `p` is valid for `W` reads.
    unsafe fn load(p: *const f64) -> Self;
    /// `W` f32 values widened (exactly) to f64.
    ///
    /// # Safety
    /// Also: `p` is valid for `W` reads.
    unsafe fn load_f32(p: *const f32) -> Self;
    /// `self · b + c`, fused where the implementation says so.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    /// `self + b`
    unsafe fn add(self, b: Self) -> Self;
    /// Writes the lanes to `out[..W]`.
    unsafe fn lanes(self, out: &mut [f64; 8]);
}

/// The fallback without SIMD intrinsics (the multiply and the add round separately).
#[derive(Clone, Copy)]
struct Portable([f64; 4]);

impl Lanes for Portable {
    const W: usize = 4;
    const GROUP: usize = 2;
    unsafe fn zero() -> Self {
        Portable([0.0; 4])
    }
    unsafe fn load(p: *const f64) -> Self {
        // SAFETY: the caller guarantees 4 readable values.
        Portable(unsafe { p.cast::<[f64; 4]>().read_unaligned() })
    }
    unsafe fn load_f32(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 4 readable values.
        Portable(unsafe { p.cast::<[f32; 4]>().read_unaligned() }.map(f64::from))
    }
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Portable(std::array::from_fn(|t| self.0[t] * b.0[t] + c.0[t]))
    }
    unsafe fn add(self, b: Self) -> Self {
        Portable(std::array::from_fn(|t| self.0[t] + b.0[t]))
    }
    unsafe fn lanes(self, out: &mut [f64; 8]) {
        out[..4].copy_from_slice(&self.0);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use num_traits::Float;
    use std::arch::x86_64::*;

    /// AVX2 + FMA: 16 registers of 4 lanes.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256d);

    impl super::Lanes for Avx2 {
        const W: usize = 4;
        const GROUP: usize = 2;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2(_mm256_setzero_pd())
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            Avx2(_mm256_loadu_pd(p))
        }
        #[inline(always)]
        unsafe fn load_f32(p: *const f32) -> Self {
            Avx2(_mm256_cvtps_pd(_mm_loadu_ps(p)))
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Avx2(_mm256_fmadd_pd(self.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Avx2(_mm256_add_pd(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn lanes(self, out: &mut [f64; 8]) {
            _mm256_storeu_pd(out.as_mut_ptr(), self.0);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_avx2<T: Float + 'static>(
        j: &[T],
        k: usize,
        p: usize,
        start: usize,
        end: usize,
    ) -> Vec<f64> {
        super::block_lanes::<T, Avx2>(j, k, p, start, end)
    }

    /// AVX-512F: 32 registers of 8 lanes.
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512d);

    impl super::Lanes for Avx512 {
        const W: usize = 8;
        const GROUP: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(_mm512_setzero_pd())
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            Avx512(_mm512_loadu_pd(p))
        }
        #[inline(always)]
        unsafe fn load_f32(p: *const f32) -> Self {
            Avx512(_mm512_cvtps_pd(_mm256_loadu_ps(p)))
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Avx512(_mm512_fmadd_pd(self.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Avx512(_mm512_add_pd(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn lanes(self, out: &mut [f64; 8]) {
            _mm512_storeu_pd(out.as_mut_ptr(), self.0);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block_avx512<T: Float + 'static>(
        j: &[T],
        k: usize,
        p: usize,
        start: usize,
        end: usize,
    ) -> Vec<f64> {
        super::block_lanes::<T, Avx512>(j, k, p, start, end)
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
/// The CPU has `V`'s features; `p` is valid for `W` reads.
#[inline(always)]
unsafe fn load<T: Float + 'static, V: Lanes>(p: *const T) -> V {
    use std::any::TypeId;
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        V::load_f32(p.cast())
    } else if TypeId::of::<T>() == TypeId::of::<f64>() {
        V::load(p.cast())
    } else {
        let mut v = [0.0; 8];
        for (t, x) in v.iter_mut().enumerate().take(V::W) {
            *x = (*p.add(t)).to_f64().unwrap_or(f64::NAN);
        }
        V::load(v.as_ptr())
    }
}

/// Adds the lower-triangle products of tile rows `r..r + N` among themselves to `acc`, and
/// prefetches the same rows `ahead` values further on, spread over the loop so that the
/// loads overlap the arithmetic (every row is in exactly one diagonal group).
///
/// # Safety
/// The CPU has `V`'s features; `r + N <= tile.len()`, and every `tile[i]` is valid for
/// `TILE` reads.
#[inline(always)]
unsafe fn diag<T: Float + 'static, V: Lanes, const N: usize>(
    tile: &[*const T],
    r: usize,
    acc: &mut [V],
    ahead: usize,
) {
    let rows: [*const T; N] = std::array::from_fn(|q| tile[r + q]);
    let mut a = [[V::zero(); N]; N]; // the upper half stays unused
    for (i, ai) in a.iter_mut().enumerate() {
        for (j, aij) in ai.iter_mut().enumerate().take(i + 1) {
            *aij = acc[pair_index(r + i, r + j)];
        }
    }
    // One or two rows give too few pairs to hide the multiply-add latency: then every other
    // lane-vector of the tile goes to a second set, added to the first at the tile's end.
    let split = N <= 2;
    let mut b = [[V::zero(); N]; N];
    for c in (0..TILE).step_by(if split { 2 * V::W } else { V::W }) {
        // SAFETY: every row holds TILE values and c + 2W <= TILE when split (TILE % 2W == 0).
        let x: [V; N] = std::array::from_fn(|q| unsafe { load(rows[q].add(c)) });
        for row in rows {
            prefetch(row.wrapping_add(c + ahead).cast());
            if split {
                prefetch(row.wrapping_add(c + V::W + ahead).cast());
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
            let y: [V; N] = std::array::from_fn(|q| unsafe { load(rows[q].add(c + V::W)) });
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
unsafe fn off<T: Float + 'static, V: Lanes, const N: usize>(
    tile: &[*const T],
    i: usize,
    j: usize,
    acc: &mut [V],
) {
    let rows_a: [*const T; N] = std::array::from_fn(|q| tile[i + q]);
    let rows_b: [*const T; 4] = std::array::from_fn(|q| tile[j + q]);
    let mut a = [[V::zero(); 4]; N];
    for (x, ax) in a.iter_mut().enumerate() {
        for (y, axy) in ax.iter_mut().enumerate() {
            *axy = acc[pair_index(i + x, j + y)];
        }
    }
    for c in (0..TILE).step_by(V::W) {
        // SAFETY: every row holds TILE values and c + W <= TILE.
        let xa: [V; N] = std::array::from_fn(|q| unsafe { load(rows_a[q].add(c)) });
        let xb: [V; 4] = std::array::from_fn(|q| unsafe { load(rows_b[q].add(c)) });
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
/// and against every earlier group ([`off`], `V::GROUP` rows at a time), with the row
/// vectors and the accumulators in registers. Each pair is visited once per tile, so the
/// grouping does not change the order in which its lanes sum. `ahead`: see [`diag`].
///
/// # Safety
/// The CPU has `V`'s features; every `tile[i]` is valid for `TILE` reads.
#[inline(always)]
unsafe fn tile_dots<T: Float + 'static, V: Lanes>(tile: &[*const T], acc: &mut [V], ahead: usize) {
    let k = tile.len();
    for ib in (0..k).step_by(4) {
        let end = (ib + 4).min(k);
        for jb in (0..ib).step_by(4) {
            let mut i = ib;
            while i < end {
                let n = (end - i).min(V::GROUP);
                match n {
                    1 => off::<T, V, 1>(tile, i, jb, acc),
                    2 => off::<T, V, 2>(tile, i, jb, acc),
                    3 => off::<T, V, 3>(tile, i, jb, acc),
                    _ => off::<T, V, 4>(tile, i, jb, acc),
                }
                i += n;
            }
        }
        match end - ib {
            1 => diag::<T, V, 1>(tile, ib, acc, ahead),
            2 => diag::<T, V, 2>(tile, ib, acc, ahead),
            3 => diag::<T, V, 3>(tile, ib, acc, ahead),
            _ => diag::<T, V, 4>(tile, ib, acc, ahead),
        }
    }
}

/// Asks the CPU to start loading the cache line at `p` (any address: nothing is read).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not change the program's state, even for an invalid address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
}

/// Lower-triangle partial Gram of columns `[start, end)` with the lanes `V`.
///
/// # Safety
/// The CPU has `V`'s features.
#[inline(always)]
unsafe fn block_lanes<T: Float + 'static, V: Lanes>(
    j: &[T],
    k: usize,
    p: usize,
    start: usize,
    end: usize,
) -> Vec<f64> {
    let mut acc = vec![V::zero(); pair_count(k)];
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
        tile_dots(&tile, &mut acc, ahead);
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
        tile_dots(&tile, &mut acc, 0);
    }
    let mut l = [0.0; 8];
    acc.iter()
        .map(|v| {
            v.lanes(&mut l);
            fold(&l[..V::W])
        })
        .collect()
}

/// The lane width the Gram pass runs with, picked once per call from the CPU's features.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Lower-triangle partial Gram of columns `[start, end)`. A kernel other than
    /// [`Kernel::detect`]'s must be one the CPU supports.
    fn block<T: Float + 'static>(
        self,
        j: &[T],
        k: usize,
        p: usize,
        start: usize,
        end: usize,
    ) -> Vec<f64> {
        match self {
            // SAFETY: the portable lanes need no CPU feature.
            Kernel::Portable => unsafe { block_lanes::<T, Portable>(j, k, p, start, end) },
            // SAFETY: detected (or checked by the caller).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::block_avx2(j, k, p, start, end) },
            // SAFETY: detected (or checked by the caller).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { x86::block_avx512(j, k, p, start, end) },
        }
    }
}

/// `G = J Jᵀ` (K×K, row-major, f64) of the row-major `(K, P)` matrix `j`, in one pass.
///
/// Errors when K is 0 or too large, when `j.len()` is not a multiple of K, or when a row
/// holds NaN/inf (or overflows f64 when squared): its diagonal entry is then not finite.
pub fn gram<T: Float + Send + Sync + 'static>(j: &[T], k: usize) -> Result<Vec<f64>> {
    gram_with(j, k, Kernel::detect())
}

fn gram_with<T: Float + Send + Sync + 'static>(
    j: &[T],
    k: usize,
    kernel: Kernel,
) -> Result<Vec<f64>> {
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
            Ok(kernel.block(j, k, p, b * block, ((b + 1) * block).min(p)))
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
        .try_for_each(|(c, chunk)| {
            cancel::check()?;
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU reports AVX2.
                unsafe { combine_chunk_avx2(j, p, &rows, c * MIN_CHUNK, chunk) };
                return Ok(());
            }
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
        for kernel in kernels() {
            let one = pool(1).install(|| gram_with(&j, 6, kernel).unwrap());
            for n in [2, 3, 4] {
                assert_eq!(one, pool(n).install(|| gram_with(&j, 6, kernel).unwrap()));
            }
        }
    }

    /// The kernels this CPU can run.
    fn kernels() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                all.push(Kernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Kernel::Avx512);
            }
        }
        all
    }

    #[test]
    fn every_kernel_matches_a_plain_f64_sum() {
        // Every row count up to three groups of four, tails shorter than a tile and a lane.
        for k in 1..=13 {
            for p in [1, 5, TILE + 3, 3 * TILE, 40_003] {
                let j = random(k, p, k as u64);
                for kernel in kernels() {
                    let g = gram_with(&j, k, kernel).unwrap();
                    for a in 0..k {
                        for b in 0..k {
                            let want: f64 = (0..p)
                                .map(|t| f64::from(j[a * p + t]) * f64::from(j[b * p + t]))
                                .sum();
                            let err = (g[a * k + b] - want).abs();
                            assert!(
                                err <= 1e-12 * want.abs().max(1.0),
                                "{kernel:?} {k}x{p} ({a},{b}): {err}"
                            );
                        }
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
