//! The f32 causal forward (chunked and token scan) when `M` and `D_v` are multiples of 16
//! (every usual head size): the same schedules as `forms`, with products written for this
//! shape, and optionally the feature map applied chunk by chunk (or token by token) inside
//! the pass, so that no feature array is ever written out.
//!
//! Hand-written rather than `matrixmultiply` because at `64 × 64 × 64` its packing of both
//! operands costs about as much as the product itself, and half of each `C × C` block is above
//! the diagonal: here every product reads its operands in place (rows of `B` are contiguous
//! 16-lane blocks, elements of `A` are broadcast), keeps a `4 × 64` tile of `C` in registers,
//! and the masked block products stop at the diagonal. `per_road!` compiles the loops for
//! AVX-512 and AVX2 (+FMA) and runs the road's; the code itself is portable except for
//! one AVX-512 transpose (the portable one compiles to scalar moves). The state stays in f64:
//! each chunk's f32 `Kᵀ V` (or each token's `k vᵀ`) is added into it.

use num_traits::Float;

use super::features::Mapper;
use super::types::{denominator, inverse, rescale, Grads, Method, SLACK};
use crate::num::{prefetch_lines, transpose16, tree};

/// The float types the attention kernels run in: [`crate::num::Real`] plus this module's f32
/// fast path, taken where it applies (f64 keeps the defaults, which decline).
pub trait Real: crate::num::Real {
    /// One head of the chunked or scan causal forward by [`forward`], where it applies
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

    /// One head of the chunked causal backward by [`backward`], where it applies (as
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

impl Real for f64 {}

impl Real for f32 {
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
        forward(method, q, k, v, dims, maps, eps, state, o, den)
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
        backward(method, q, k, v, dims, g, dq, dk, dv)
    }
}

/// Rows of a register tile.
const R: usize = 4;
/// Lanes of a column block.
const L: usize = 16;
/// Most column blocks in one tile (`R × NB` blocks of accumulators).
const NB: usize = 4;

/// `c[r, ..16·B] (+)= Σ_{p<k} a[r·lda + p] · b[p·ldb + ..16·B]` for `r < RR`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<const RR: usize, const B: usize>(
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    add: bool,
) {
    // Bounds checked once, so that the loop over `p` has no exits: with them it kept a row
    // pointer and both strides on the stack (AVX2 has 16 registers, the tile takes 11).
    assert!(k == 0 || ((RR - 1) * lda + k <= a.len() && (k - 1) * ldb + B * L <= b.len()));
    let mut acc = [[[0.0f32; L]; B]; RR];
    if add {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (t, acc) in acc.iter_mut().enumerate() {
                acc.copy_from_slice(&c[r * ldc + t * L..r * ldc + (t + 1) * L]);
            }
        }
    }
    let rows: [*const f32; RR] = std::array::from_fn(|r| a.as_ptr().wrapping_add(r * lda));
    let mut bp = b.as_ptr();
    for p in 0..k {
        // SAFETY: row `p` of `b` holds `16·B` values from `bp`, and `a`'s rows `k` from
        // `rows[r]`, by the assert.
        let bv: [[f32; L]; B] =
            std::array::from_fn(|t| unsafe { bp.add(t * L).cast::<[f32; L]>().read_unaligned() });
        for (acc, row) in acc.iter_mut().zip(&rows) {
            let x = unsafe { *row.add(p) };
            for (acc, bv) in acc.iter_mut().zip(&bv) {
                for (acc, &bv) in acc.iter_mut().zip(bv) {
                    *acc = x.mul_add(bv, *acc);
                }
            }
        }
        bp = bp.wrapping_add(ldb);
    }
    for (r, acc) in acc.iter().enumerate() {
        for (t, acc) in acc.iter().enumerate() {
            c[r * ldc + t * L..r * ldc + (t + 1) * L].copy_from_slice(acc);
        }
    }
}

/// `c[..rows, ..cols] (+)= a[..rows, ..k] · b[..k, ..cols]`, row-major with leading dimensions
/// `lda`, `ldb`, `ldc`; `cols` a multiple of 16. Each output element is one FMA chain over
/// `p = 0..k` whatever the tiling, so a row's result never depends on the other rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm16(
    rows: usize,
    cols: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    add: bool,
) {
    macro_rules! dispatch {
        ($rr:expr, $nb:expr, $($args:expr),*) => {
            match ($rr, $nb) {
                (4, 4) => tile::<4, 4>($($args),*),
                (4, 3) => tile::<4, 3>($($args),*),
                (4, 2) => tile::<4, 2>($($args),*),
                (4, _) => tile::<4, 1>($($args),*),
                (3, 4) => tile::<3, 4>($($args),*),
                (3, 3) => tile::<3, 3>($($args),*),
                (3, 2) => tile::<3, 2>($($args),*),
                (3, _) => tile::<3, 1>($($args),*),
                (2, 4) => tile::<2, 4>($($args),*),
                (2, 3) => tile::<2, 3>($($args),*),
                (2, 2) => tile::<2, 2>($($args),*),
                (2, _) => tile::<2, 1>($($args),*),
                (_, 4) => tile::<1, 4>($($args),*),
                (_, 3) => tile::<1, 3>($($args),*),
                (_, 2) => tile::<1, 2>($($args),*),
                (_, _) => tile::<1, 1>($($args),*),
            }
        };
    }
    let blocks = tile_blocks();
    for r0 in (0..rows).step_by(R) {
        let rr = R.min(rows - r0);
        let mut j0 = 0;
        while j0 < cols {
            let nb = blocks.min((cols - j0) / L);
            dispatch!(
                rr,
                nb,
                k,
                &a[r0 * lda..],
                lda,
                &b[j0..],
                ldb,
                &mut c[r0 * ldc + j0..],
                ldc,
                add
            );
            j0 += nb * L;
        }
    }
}

/// Most column blocks in one tile on this road: AVX-512's 32 registers hold the `4 × 4`-block
/// tile's accumulators, while AVX2's 16 (and NEON's 32 of 128 bits) hold a `4 × 1`-block one
/// (wider, they spilled to the stack: the f32 backward ran 1.7× slower on AVX2).
fn tile_blocks() -> usize {
    match crate::num::road() {
        crate::num::Road::Avx512 => NB,
        _ => 1,
    }
}

crate::per_road! {
/// `out = xt[.., ..l] · y` (`xt`: `rows` rows of `ldx`; `y`: `l` rows of `width`): a chunk's
/// `Σ_t x_t y_tᵀ` from its transposed `x`. Compiled apart, as [`masked_rows`] is.
fn chunk_outer(
    rows: usize,
    (xt, ldx): (&[f32], usize),
    (y, l, width): (&[f32], usize, usize),
    out: &mut [f32],
) {
    gemm16(rows, width, l, xt, ldx, y, width, out, width, false);
}
}

/// `Σ x` in 16 lanes, then across them.
#[inline(always)]
fn lanes_sum(acc: [f32; L]) -> f32 {
    tree(acc, |a, b| a + b)
}

/// Prefetches rows `i0..i0 + R` of each `(rows, width)`: the next chunk's, a row block at a
/// time, since a pass reads every input once and would otherwise wait on memory at the
/// start of every chunk.
#[inline(always)]
fn prefetch_rows(xs: &[(&[f32], usize)], i0: usize) {
    for &(x, width) in xs {
        if let Some(rows) = x.get(i0 * width..((i0 + R) * width).min(x.len())) {
            prefetch_lines(rows);
        }
    }
}

fn ceil16(x: usize) -> usize {
    x.div_ceil(L) * L
}

/// The projections `u` of `rows` raw rows `x` (`x` itself without a projection).
#[inline(always)]
pub(crate) fn project<'a>(
    mp: &Mapper<f32>,
    x: &'a [f32],
    rows: usize,
    u: &'a mut [f32],
) -> &'a [f32] {
    let (d, p) = (mp.d, mp.mp);
    match &mp.wt {
        Some(wt) => {
            gemm16(rows, p, d, x, d, wt, p, u, p, false);
            &u[..rows * p]
        }
        None => &x[..rows * d],
    }
}

/// φ of `rows` raw rows `x` (query side `0`, key side `1`) into `out`; `u` is scratch.
#[inline(always)]
fn apply(mp: &Mapper<f32>, side: usize, x: &[f32], rows: usize, u: &mut [f32], out: &mut [f32]) {
    let u = project(mp, x, rows, u);
    for ((o, u), x) in out
        .chunks_exact_mut(mp.m)
        .zip(u.chunks_exact(mp.mp))
        .zip(x.chunks_exact(mp.d))
        .take(rows)
    {
        mp.row(side, u, x, o);
    }
}

crate::per_road! {
/// Rows `rows` of a chunk's masked product: the scores `a[i, j] = x_i · bt[.., j]` (`x`: rows
/// of `ldx` with `kx` used; `bt`: `kx` rows of `ldb`) below the diagonal (`j ≤ i`), or with
/// `upper` above it (`i ≤ j < l`, the chunk's length), zero to the ends of their 16-blocks
/// (the rest is neither written nor read), then `out = x S + a Z` (`S`: `kx` rows of `lds`;
/// `Z`: the chunk's rows of `ldz`; `out`: these rows, `width` wide). With `bt = None` the
/// scores are already in `a` (rows of `ldb`) and only `out` is computed.
///
/// Compiled apart (not inlined into the passes' long loop bodies, where the tiles'
/// accumulators were spilled to the stack), once per target.
#[allow(clippy::too_many_arguments)]
fn masked_rows(
    rows: std::ops::Range<usize>,
    (l, upper): (usize, bool),
    (x, ldx, kx): (&[f32], usize, usize),
    (bt, ldb): (Option<&[f32]>, usize),
    (s, lds): (&[f32], usize),
    (z, ldz): (&[f32], usize),
    width: usize,
    a: &mut [f32],
    out: &mut [f32],
) {
    let (i0, hi) = (rows.start, rows.end);
    // the score columns computed, and those the product with `Z` reads
    let (lo, end, inner) = if upper {
        (i0 / L * L, ceil16(l), l)
    } else {
        (0, ceil16(hi), hi)
    };
    let (xb, ab) = (&x[i0 * ldx..], &mut a[i0 * ldb..]);
    if let Some(bt) = bt {
        gemm16(
            hi - i0,
            end - lo,
            kx,
            xb,
            ldx,
            &bt[lo..],
            ldb,
            &mut ab[lo..],
            ldb,
            false,
        );
        // Assignment, not a product: non-finite masked scores cannot leak.
        for (i, row) in rows.zip(ab.chunks_mut(ldb)) {
            if upper {
                row[lo..i].fill(0.0);
                row[l..end].fill(0.0);
            } else {
                row[i + 1..end].fill(0.0);
            }
        }
    }
    gemm16(hi - i0, width, kx, xb, ldx, s, lds, out, width, false);
    let (ab, z) = (&ab[lo..], &z[lo * ldz..]);
    gemm16(
        hi - i0,
        width,
        inner - lo,
        ab,
        ldb,
        z,
        ldz,
        out,
        width,
        true,
    );
}
}

/// One head of [`super::forms`]' chunked or scan causal forward in f32; `None` when `m`,
/// `dv` (or the projection's feature count) is not a multiple of 16, or for the quadratic
/// form. With `mapper`, `q` and `k` are raw `n × d` rows mapped inside the pass. Returns
/// `Some(false)` (and stops) at a chunk with a non-finite value.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    method: Method,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n, m, dv): (usize, usize, usize),
    mapper: Option<&Mapper<f32>>,
    eps: f64,
    state: (&mut [f64], &mut f64),
    o: &mut [f32],
    den: &mut [f32],
) -> Option<bool> {
    if m % L != 0 || dv % L != 0 || n == 0 || mapper.is_some_and(|mp| mp.mp % L != 0) {
        return None;
    }
    match method {
        Method::Chunked(c) => Some(head(
            q,
            k,
            v,
            (n, m, dv, c.min(n)),
            mapper,
            eps,
            state,
            o,
            den,
        )),
        Method::Scan => Some(scan(q, k, v, (n, m, dv), mapper, eps, state, o, den)),
        Method::Quadratic => None,
    }
}

/// `S[p, j0..j0 + 16·B] += k_p v` and `y = Σ_p q_p S[p, j0..j0 + 16·B]` for one token (`S`
/// has rows of `w`, in f32 or f64); `y`'s `B` blocks are independent FMA chains, so they
/// overlap.
#[inline(always)]
fn scan_block<S: Float + From<f32>, const B: usize>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &mut [S],
    w: usize,
    j0: usize,
    y: &mut [S],
) {
    let vb: [[S; L]; B] =
        std::array::from_fn(|b| std::array::from_fn(|j| <S as From<f32>>::from(v[b * L + j])));
    let mut acc = [[S::zero(); L]; B];
    // No bounds check (so no exit) inside the loop: `acc` then stays in registers.
    assert!(j0 + B * L <= w && q.len() <= k.len() && q.len() * w <= s.len());
    let base = s.as_mut_ptr();
    for (p, (&qp, &kp)) in q.iter().zip(k).enumerate() {
        let (qp, kp) = (<S as From<f32>>::from(qp), <S as From<f32>>::from(kp));
        // SAFETY: p·w + j0 + 16·B ≤ (p + 1)·w ≤ s.len() by the assert.
        let row = unsafe { std::slice::from_raw_parts_mut(base.add(p * w + j0), B * L) };
        for ((acc, vb), row) in acc.iter_mut().zip(&vb).zip(row.chunks_exact_mut(L)) {
            for ((a, &vj), s) in acc.iter_mut().zip(vb).zip(row) {
                *s = kp.mul_add(vj, *s);
                *a = qp.mul_add(*s, *a);
            }
        }
    }
    for (y, acc) in y.chunks_exact_mut(L).zip(&acc) {
        y.copy_from_slice(acc);
    }
}

/// One token's `S[.., ..dv] += k vᵀ` and `y = qᵀ S[.., ..dv]` (`S` with rows of `w ≥ dv`), by
/// blocks of up to 64 value columns whose `y` stays in registers.
#[inline(always)]
pub(crate) fn scan_token<S: Float + From<f32>>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &mut [S],
    w: usize,
    y: &mut [S],
) {
    let dv = v.len();
    let mut j0 = 0;
    while j0 < dv {
        let nb = NB.min((dv - j0) / L);
        let (v, y) = (&v[j0..], &mut y[j0..]);
        match nb {
            4 => scan_block::<S, 4>(q, k, v, s, w, j0, y),
            3 => scan_block::<S, 3>(q, k, v, s, w, j0, y),
            2 => scan_block::<S, 2>(q, k, v, s, w, j0, y),
            _ => scan_block::<S, 1>(q, k, v, s, w, j0, y),
        }
        j0 += nb * L;
    }
}

/// φ of one token's raw query and key rows (one product for both) into `phi` (its `m` query
/// features, then its `m` key features); `buf` is scratch of `2·(d + mp)`. Keys under the
/// running maximum take the larger of `scale` and their largest logit as stabiliser, which is
/// returned when it is larger than `scale`.
#[inline(always)]
fn map_token(
    mp: &Mapper<f32>,
    q: &[f32],
    k: &[f32],
    scale: f64,
    buf: &mut [f32],
    phi: &mut [f32],
) -> Option<f32> {
    let d = mp.d;
    let (x2, u2) = buf.split_at_mut(2 * d);
    x2[..d].copy_from_slice(q);
    x2[d..].copy_from_slice(k);
    let u = project(mp, x2, 2, u2);
    let (uq, uk) = u.split_at(mp.mp);
    let (pq, pk) = phi.split_at_mut(mp.m);
    mp.row(0, uq, &x2[..d], pq);
    if !mp.running() {
        mp.row(1, uk, &x2[d..], pk);
        return None;
    }
    let (top, own) = mp.key_max(uk, &x2[d..]);
    let grows = f64::from(top) > scale;
    let c = if grows { top } else { scale as f32 };
    mp.key_row(uk, own, c, pk);
    grows.then_some(top)
}

crate::per_road! {
/// The token recurrence (what decoding runs) on the f64 state.
#[allow(clippy::too_many_arguments)]
fn scan(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n, m, dv): (usize, usize, usize),
    mapper: Option<&Mapper<f32>>,
    eps: f64,
    (s64, scale): (&mut [f64], &mut f64),
    o: &mut [f32],
    den: &mut [f32],
) -> bool {
    let w = dv + 1;
    // Scratch on the stack when it fits: the token's raw q and k and their projections
    // (`map_token`'s), their features, and `y`.
    let need = mapper.map_or(0, |mp| 2 * (mp.d + mp.mp + m));
    let (mut stack, mut stack64) = ([0.0f32; 1024], [0.0f64; 256]);
    let (mut heap, mut heap64): (Vec<f32>, Vec<f64>);
    let buf: &mut [f32] = if need <= stack.len() {
        &mut stack[..need]
    } else {
        heap = vec![0.0; need];
        &mut heap
    };
    let y: &mut [f64] = if dv <= stack64.len() {
        &mut stack64[..dv]
    } else {
        heap64 = vec![0.0; dv];
        &mut heap64
    };
    let (buf, phi) = buf.split_at_mut(need - mapper.map_or(0, |_| 2 * m));
    for t in 0..n {
        if t % 256 == 0 && crate::cancel::requested() {
            return true; // forms::causal_forward reports the interrupt
        }
        let (qt, kt) = match mapper {
            None => (&q[t * m..(t + 1) * m], &k[t * m..(t + 1) * m]),
            Some(mp) => {
                let d = mp.d;
                let (qt, kt) = (&q[t * d..(t + 1) * d], &k[t * d..(t + 1) * d]);
                if let Some(top) = map_token(mp, qt, kt, *scale, buf, phi) {
                    // the running maximum grew: the state follows it
                    rescale(s64, (*scale - f64::from(top)).exp());
                    *scale = f64::from(top);
                }
                phi.split_at(m)
            }
        };
        scan_token(qt, kt, &v[t * dv..(t + 1) * dv], s64, w, y);
        // the normaliser column z, in 4 partial sums
        let mut acc = [0.0f64; 4];
        for (p, (&qp, &kp)) in qt.iter().zip(kt).enumerate() {
            let z = &mut s64[p * w + dv];
            *z += f64::from(kp);
            acc[p % 4] = f64::from(qp).mul_add(*z, acc[p % 4]);
        }
        let d = denominator((acc[0] + acc[1]) + (acc[2] + acc[3]), eps);
        den[t] = d as f32;
        let inv = inverse(d);
        for (o, &y) in o[t * dv..(t + 1) * dv].iter_mut().zip(y.iter()) {
            *o = (y * inv) as f32;
        }
    }
    true
}
}

crate::per_road! {
#[allow(clippy::too_many_arguments)]
fn head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n, m, dv, c): (usize, usize, usize, usize),
    mapper: Option<&Mapper<f32>>,
    eps: f64,
    (s64, scale): (&mut [f64], &mut f64),
    o: &mut [f32],
    den: &mut [f32],
) -> bool {
    let w = dv + 1;
    let cp = ceil16(c);
    // kt: the chunk's keys transposed (m × cp, zero past the chunk), a: its masked scores.
    let mut kt = vec![0.0f32; m * cp];
    let mut a = vec![0.0f32; c * cp];
    let mut st = vec![0.0f32; m * dv];
    let mut z = vec![0.0f32; m];
    let mut delta = vec![0.0f32; m * dv];
    // the mapped chunk: projections u, features of q and k
    let (mut u, mut phq, mut phk) = match mapper {
        Some(mp) => (vec![0.0; c * mp.mp], vec![0.0; c * m], vec![0.0; c * m]),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let copy = |s64: &[f64], st: &mut [f32], z: &mut [f32]| {
        for ((row, st), z) in s64.chunks_exact(w).zip(st.chunks_exact_mut(dv)).zip(z) {
            st.iter_mut().zip(row).for_each(|(st, &s)| *st = s as f32);
            *z = row[dv] as f32;
        }
    };
    copy(s64, &mut st, &mut z);
    let mut c0 = 0;
    while c0 < n {
        if crate::cancel::requested() {
            return true; // forms::causal_forward reports the interrupt
        }
        let mut l = c.min(n - c0);
        let (qs, ks) = match mapper {
            None => (&q[c0 * m..(c0 + l) * m], &k[c0 * m..(c0 + l) * m]),
            Some(mp) => {
                let d = mp.d;
                if mp.running() {
                    let kx = &k[c0 * d..(c0 + l) * d];
                    let (reference, rows) = running_keys(mp, kx, l, scale, &mut u, &mut phk);
                    if f64::from(reference) > *scale {
                        rescale(s64, (*scale - f64::from(reference)).exp());
                        copy(s64, &mut st, &mut z);
                        *scale = f64::from(reference);
                    }
                    l = rows;
                } else {
                    apply(mp, 1, &k[c0 * d..(c0 + l) * d], l, &mut u, &mut phk);
                }
                apply(mp, 0, &q[c0 * d..(c0 + l) * d], l, &mut u, &mut phq);
                (&phq[..l * m], &phk[..l * m])
            }
        };
        let lp = ceil16(l);
        let vs = &v[c0 * dv..(c0 + l) * dv];
        // `&` rather than `all`: no early exit, so the check vectorises.
        if !vs.iter().fold(true, |ok, x| ok & x.is_finite()) {
            return false;
        }
        transpose16(ks, m, l, &mut kt, cp);
        let (dq, dk) = mapper.map_or((m, m), |mp| (mp.d, mp.d));
        let next = (c0 + l).min(n)..(c0 + l + c).min(n);
        let ahead = [
            (&q[next.start * dq..next.end * dq], dq),
            (&k[next.start * dk..next.end * dk], dk),
            (&v[next.start * dv..next.end * dv], dv),
        ];
        for i0 in (0..l).step_by(R) {
            prefetch_rows(&ahead, i0);
            let hi = (i0 + R).min(l);
            let ob = &mut o[(c0 + i0) * dv..(c0 + hi) * dv];
            let (x, s) = ((qs, m, m), (&st[..], dv));
            masked_rows(
                i0..hi,
                (l, false),
                x,
                (Some(&kt), cp),
                s,
                (vs, dv),
                dv,
                &mut a,
                ob,
            );
            for (i, (orow, d)) in (i0..hi).zip(ob.chunks_exact_mut(dv).zip(&mut den[c0 + i0..])) {
                let mut acc = [0.0f32; L];
                for blk in a[i * cp..i * cp + ceil16(hi)].chunks_exact(L) {
                    acc.iter_mut().zip(blk).for_each(|(s, &x)| *s += x);
                }
                for (qb, zb) in qs[i * m..(i + 1) * m]
                    .chunks_exact(L)
                    .zip(z.chunks_exact(L))
                {
                    for ((s, &q), &z) in acc.iter_mut().zip(qb).zip(zb) {
                        *s = q.mul_add(z, *s);
                    }
                }
                let dd = denominator(f64::from(lanes_sum(acc)), eps);
                *d = dd as f32;
                let inv = inverse(dd);
                orow.iter_mut()
                    .for_each(|y| *y = (f64::from(*y) * inv) as f32);
            }
        }
        gemm16(m, dv, l, &kt, cp, vs, dv, &mut delta, dv, false);
        // The f64 state takes each chunk's f32 sum; the f32 copy products read is refreshed
        // in the same pass.
        for (((row, dl), kr), (st, z)) in s64
            .chunks_exact_mut(w)
            .zip(delta.chunks_exact(dv))
            .zip(kt.chunks_exact(cp))
            .zip(st.chunks_exact_mut(dv).zip(z.iter_mut()))
        {
            for ((s, &d), st) in row.iter_mut().zip(dl).zip(st.iter_mut()) {
                *s += f64::from(d);
                *st = *s as f32;
            }
            let mut acc = [0.0f32; L];
            for blk in kr[..lp].chunks_exact(L) {
                acc.iter_mut().zip(blk).for_each(|(s, &x)| *s += x);
            }
            row[dv] += f64::from(lanes_sum(acc));
            *z = row[dv] as f32;
        }
        c0 += l;
    }
    true
}
}

/// The key features of a chunk's first rows `x` (`rows` at most) under the running maximum:
/// the stabiliser is the larger of the state's `scale` and the first row's largest logit,
/// and the chunk ends before the first row whose largest logit exceeds it by more than
/// [`SLACK`] (so where a chunk ends depends on its own and earlier rows only: causal).
/// Returns the stabiliser and the chunk's length.
#[inline(always)]
fn running_keys(
    mp: &Mapper<f32>,
    x: &[f32],
    rows: usize,
    scale: &f64,
    u: &mut [f32],
    out: &mut [f32],
) -> (f32, usize) {
    let u = project(mp, x, rows, u);
    let mut reference = *scale as f32;
    let rows = u.chunks_exact(mp.mp).zip(x.chunks_exact(mp.d));
    for (r, ((u, x), o)) in rows.zip(out.chunks_exact_mut(mp.m)).enumerate() {
        let (top, own) = mp.key_max(u, x);
        if r == 0 {
            reference = reference.max(top);
        } else if top > reference + SLACK as f32 {
            return (reference, r);
        }
        mp.key_row(u, own, reference, o);
    }
    (reference, u.len() / mp.mp)
}

/// One head of [`super::forms`]' chunked causal backward in f32 (same schedule: a forward
/// sweep for `∂q` with the state `S`, a reverse one for `∂k`, `∂v` with `R = Σ_later q g'ᵀ`),
/// with [`gemm16`]'s in-place products: the masked blocks stop at the diagonal (below it for
/// `∂q`, from it for `∂k`, `∂v`), and the scores `g'_t·v'_s` of both sweeps are computed once.
/// `None` where [`forward`] is, and for the other methods.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    method: Method,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n, m, dv): (usize, usize, usize),
    g: &Grads<f32>,
    dq: &mut [f32],
    dk: &mut [f32],
    dvo: &mut [f32],
) -> Option<()> {
    if m % L != 0 || dv % L != 0 || n == 0 {
        return None;
    }
    match method {
        Method::Chunked(c) => {
            back_head(q, k, v, (n, m, dv, c.min(n)), g, dq, dk, dvo);
            Some(())
        }
        Method::Scan | Method::Quadratic => None,
    }
}

/// Rows `c0..c0 + l` of `g' = [∂o / den, ∂den − (∂o·o) / den]` into rows of `wp` (the columns
/// past `dv` stay as they are: zero). Inlined into the per-road caller, so `mul_add`
/// is an FMA instruction rather than a libm call.
#[inline(always)]
fn grad_rows(g: &Grads<f32>, c0: usize, l: usize, dv: usize, wp: usize, out: &mut [f32]) {
    for (t, gp) in (c0..c0 + l).zip(out.chunks_exact_mut(wp)) {
        let inv = inverse(f64::from(g.den[t])) as f32;
        let (o, go) = (&g.o[t * dv..(t + 1) * dv], &g.go[t * dv..(t + 1) * dv]);
        let mut acc = [0.0f32; L];
        for (ob, gb) in o.chunks_exact(L).zip(go.chunks_exact(L)) {
            for ((s, &o), &g) in acc.iter_mut().zip(ob).zip(gb) {
                *s = g.mul_add(o, *s);
            }
        }
        gp[..dv].iter_mut().zip(go).for_each(|(p, &x)| *p = x * inv);
        gp[dv] = (g.gden[t] - lanes_sum(acc) * inv) * (1.0 + g.eps) as f32;
    }
}

/// `s64 += delta`, and its f32 copy `st` refreshed in the same pass.
#[inline(always)]
fn add_state(s64: &mut [f64], st: &mut [f32], delta: &[f32]) {
    for ((s, st), &d) in s64.iter_mut().zip(st.iter_mut()).zip(delta) {
        *s += f64::from(d);
        *st = *s as f32;
    }
}

crate::per_road! {
#[allow(clippy::too_many_arguments)]
fn back_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n, m, dv, c): (usize, usize, usize, usize),
    g: &Grads<f32>,
    dq: &mut [f32],
    dk: &mut [f32],
    dvo: &mut [f32],
) {
    let (w, wp, cp) = (dv + 1, ceil16(dv + 1), ceil16(c));
    // Rows of g' and v' = [v, 1] padded to `wp` columns (so they transpose by 16-blocks),
    // their transposes (`wp × cp`), the chunk's queries transposed, and the masked scores.
    let mut gp = vec![0.0f32; c * wp];
    let mut vp = vec![0.0f32; c * wp];
    let mut gt = vec![0.0f32; wp * cp];
    let mut vt = vec![0.0f32; wp * cp];
    let mut qt = vec![0.0f32; m * cp];
    let mut a = vec![0.0f32; cp * cp];
    // Every chunk's scores g'_t·v'_s (`c × cp` each, zero above the diagonal): the forward
    // sweep's, which the reverse one reads transposed instead of computing them again.
    let need = n.div_ceil(c) * c * cp;
    let mut kept = SCORES.take();
    if kept.len() < need {
        kept.resize(need, 0.0);
    }
    let scores = &mut kept[..need];
    // The state transposed (`w × m`: `Sᵀ`, then `Rᵀ`) in f64 and f32, `R` itself (`m × wp`).
    let mut s64 = vec![0.0f64; w * m];
    let mut st = vec![0.0f32; w * m];
    let mut r = vec![0.0f32; m * wp];
    let mut delta = vec![0.0f32; w * m];
    let load_v = |c0: usize, l: usize, vp: &mut [f32]| {
        for (row, vs) in vp
            .chunks_exact_mut(wp)
            .zip(v[c0 * dv..(c0 + l) * dv].chunks_exact(dv))
        {
            row[..dv].copy_from_slice(vs);
            row[dv] = 1.0;
        }
    };
    // rows `t` of the inputs the sweeps read (`q` first, which the forward sweep does not)
    let rows_of = |t: std::ops::Range<usize>| {
        [
            (&q[t.start * m..t.end * m], m),
            (&k[t.start * m..t.end * m], m),
            (&v[t.start * dv..t.end * dv], dv),
            (&g.o[t.start * dv..t.end * dv], dv),
            (&g.go[t.start * dv..t.end * dv], dv),
        ]
    };
    // Forward sweep: ∂q_t = Σ_{s≤t in chunk} (g'_t·v'_s) k_s + S_prev g'_t.
    for c0 in (0..n).step_by(c) {
        if crate::cancel::requested() {
            return; // forms::causal_backward reports the interrupt
        }
        let l = c.min(n - c0);
        let ks = &k[c0 * m..(c0 + l) * m];
        grad_rows(g, c0, l, dv, wp, &mut gp);
        load_v(c0, l, &mut vp);
        transpose16(&vp, wp, l, &mut vt, cp);
        let next = (c0 + l).min(n)..(c0 + l + c).min(n);
        let ahead = rows_of(next);
        for i0 in (0..l).step_by(R) {
            prefetch_rows(&ahead[1..], i0);
            let hi = (i0 + R).min(l);
            let db = &mut dq[(c0 + i0) * m..(c0 + hi) * m];
            let (x, s) = ((&gp[..], wp, w), (&st[..], m));
            let a = &mut scores[c0 * cp..(c0 + c) * cp];
            masked_rows(i0..hi, (l, false), x, (Some(&vt), cp), s, (ks, m), m, a, db);
            // (zero past the columns written: the buffer holds an earlier call's scores)
            for row in a[i0 * cp..hi * cp].chunks_exact_mut(cp) {
                row[ceil16(hi)..].fill(0.0);
            }
        }
        chunk_outer(w, (&vt, cp), (ks, l, m), &mut delta);
        add_state(&mut s64, &mut st, &delta);
    }
    // Reverse sweep: ∂k_s = Σ_{t≥s} (g'_t·v'_s) q_t + R v'_s, ∂v_s = Σ_{t≥s} (q_t·k_s) g_t + Rᵀ k_s.
    s64.fill(0.0);
    st.fill(0.0);
    for c0 in (0..n).step_by(c).rev() {
        if crate::cancel::requested() {
            return;
        }
        let l = c.min(n - c0);
        let (qs, ks) = (&q[c0 * m..(c0 + l) * m], &k[c0 * m..(c0 + l) * m]);
        grad_rows(g, c0, l, dv, wp, &mut gp);
        transpose16(&gp, wp, l, &mut gt, cp);
        load_v(c0, l, &mut vp); // (the reverse sweep reads v' by rows only)
        transpose16(qs, m, l, &mut qt, cp);
        transpose16(&scores[c0 * cp..], cp, l, &mut a, cp);
        let ahead = rows_of(c0.saturating_sub(c)..c0);
        for s0 in (0..l).step_by(R) {
            prefetch_rows(&ahead, s0);
            let hi = (s0 + R).min(l);
            let db = &mut dk[(c0 + s0) * m..(c0 + hi) * m];
            let (x, s) = ((&vp[..], wp, w), (&st[..], m));
            // (the scores are in `a`, row `s0..hi` read before the next product overwrites it)
            masked_rows(s0..hi, (l, true), x, (None, cp), s, (qs, m), m, &mut a, db);
            let db = &mut dvo[(c0 + s0) * dv..(c0 + hi) * dv];
            let (x, s, z) = ((ks, m, m), (&r[..], wp), (&gp[..], wp));
            masked_rows(s0..hi, (l, true), x, (Some(&qt), cp), s, z, dv, &mut a, db);
        }
        chunk_outer(w, (&gt, cp), (qs, l, m), &mut delta);
        add_state(&mut s64, &mut st, &delta);
        transpose16(&st, m, w, &mut r, wp);
    }
    if kept.len() <= KEEP_SCORES {
        SCORES.set(kept);
    }
}
}

/// The most floats of scores a thread keeps for its next [`back_head`] (16 MB: N = 65,536 at
/// `C = 64`).
const KEEP_SCORES: usize = 1 << 22;

thread_local! {
    /// Each thread's score buffer of [`back_head`], kept between heads and calls: a fresh one
    /// (128 KB a head at N = 512) cost in page faults about what reusing the scores saves.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    fn random(len: usize, seed: u64, positive: bool) -> Vec<f32> {
        let mut rng = crate::rng::stream(seed, 0);
        (0..len)
            .map(|_| {
                let x: f32 = rng.random();
                if positive {
                    x + 0.05
                } else {
                    2.0 * x - 1.0
                }
            })
            .collect()
    }

    /// The recurrence in f64, from a zero state.
    fn reference(q: &[f32], k: &[f32], v: &[f32], n: usize, m: usize, dv: usize) -> Vec<f64> {
        let mut s = vec![0.0f64; m * (dv + 1)];
        let mut o = vec![0.0f64; n * dv];
        for t in 0..n {
            for p in 0..m {
                let row = &mut s[p * (dv + 1)..(p + 1) * (dv + 1)];
                for j in 0..dv {
                    row[j] += f64::from(k[t * m + p]) * f64::from(v[t * dv + j]);
                }
                row[dv] += f64::from(k[t * m + p]);
            }
            let y = |j: usize| -> f64 {
                (0..m)
                    .map(|p| f64::from(q[t * m + p]) * s[p * (dv + 1) + j])
                    .sum()
            };
            let d = y(dv) + 1e-6;
            for j in 0..dv {
                o[t * dv + j] = y(j) / d;
            }
        }
        o
    }

    #[test]
    fn matches_the_recurrence_is_causal_and_continues() {
        for (n, m, dv) in [(70, 32, 16), (33, 16, 48), (5, 64, 64)] {
            let (q, k, v) = (
                random(n * m, 1, true),
                random(n * m, 2, true),
                random(n * dv, 3, false),
            );
            let want = reference(&q, &k, &v, n, m, dv);
            let run = |q: &[f32], k: &[f32], v: &[f32], n: usize, c: usize, s: &mut [f64]| {
                let (mut o, mut den) = (vec![0.0f32; n * dv], vec![0.0f32; n]);
                let method = if c == 0 {
                    Method::Scan
                } else {
                    Method::Chunked(c)
                };
                let st = (s, &mut 0.0);
                let ok = forward(
                    method,
                    q,
                    k,
                    v,
                    (n, m, dv),
                    None,
                    1e-6,
                    st,
                    &mut o,
                    &mut den,
                );
                assert_eq!(ok, Some(true));
                o
            };
            for c in [0, 1, 5, 16, 21, 64, 100] {
                let o = run(&q, &k, &v, n, c, &mut vec![0.0; m * (dv + 1)]);
                for (a, b) in o.iter().zip(&want) {
                    assert!((f64::from(*a) - b).abs() < 1e-5 * b.abs().max(1.0), "c={c}");
                }
                // editing the last token's q, k, v leaves every earlier output bitwise equal
                let (mut q2, mut k2, mut v2) = (q.clone(), k.clone(), v.clone());
                q2[(n - 1) * m] = 7.0;
                k2[(n - 1) * m] = 9.0;
                v2[(n - 1) * dv] = -3.0;
                let o2 = run(&q2, &k2, &v2, n, c, &mut vec![0.0; m * (dv + 1)]);
                assert_eq!(o[..(n - 1) * dv], o2[..(n - 1) * dv], "c={c}");
                // a prefix then the rest through the state
                let t0 = n / 2 + 1;
                let mut s = vec![0.0; m * (dv + 1)];
                let mut parts = run(&q[..t0 * m], &k[..t0 * m], &v[..t0 * dv], t0, c, &mut s);
                parts.extend(run(
                    &q[t0 * m..],
                    &k[t0 * m..],
                    &v[t0 * dv..],
                    n - t0,
                    c,
                    &mut s,
                ));
                for (a, b) in parts.iter().zip(&want) {
                    assert!((f64::from(*a) - b).abs() < 1e-5 * b.abs().max(1.0), "c={c}");
                }
            }
        }
        let bad = [0.0f32; 20];
        let mut s = vec![0.0; 8 * 9];
        assert_eq!(
            forward(
                Method::Chunked(4),
                &bad,
                &bad,
                &bad,
                (2, 10, 8),
                None,
                1e-6,
                (&mut s, &mut 0.0),
                &mut [0.0; 16],
                &mut [0.0; 2]
            ),
            None
        );
    }

    /// The gradients straight from their sums, in f64: `∂q_t = Σ_{s≤t} (g'_t·v'_s) k_s`,
    /// `∂k_s = Σ_{t≥s} (g'_t·v'_s) q_t`, `∂v_s = Σ_{t≥s} (q_t·k_s) g_t`.
    #[allow(clippy::type_complexity)]
    fn naive_backward(
        (q, k, v): (&[f32], &[f32], &[f32]),
        g: &Grads<f32>,
        (n, m, dv): (usize, usize, usize),
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let x = |a: &[f32], i: usize, w: usize| -> Vec<f64> {
            a[i * w..(i + 1) * w]
                .iter()
                .map(|&x| f64::from(x))
                .collect()
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
        let gp: Vec<Vec<f64>> = (0..n)
            .map(|t| {
                let (o, go, den) = (x(g.o, t, dv), x(g.go, t, dv), f64::from(g.den[t]));
                let mut r: Vec<f64> = go.iter().map(|g| g / den).collect();
                r.push(f64::from(g.gden[t]) - dot(&go, &o) / den);
                r
            })
            .collect();
        let vp: Vec<Vec<f64>> = (0..n)
            .map(|s| {
                let mut r = x(v, s, dv);
                r.push(1.0);
                r
            })
            .collect();
        let (mut dq, mut dk, mut dvo) = (vec![0.0; n * m], vec![0.0; n * m], vec![0.0; n * dv]);
        for t in 0..n {
            for s in 0..=t {
                let (qt, ks) = (x(q, t, m), x(k, s, m));
                let a = dot(&gp[t], &vp[s]);
                let b = dot(&qt, &ks);
                for p in 0..m {
                    dq[t * m + p] += a * ks[p];
                    dk[s * m + p] += a * qt[p];
                }
                for j in 0..dv {
                    dvo[s * dv + j] += b * gp[t][j];
                }
            }
        }
        (dq, dk, dvo)
    }

    #[test]
    fn backward_matches_the_sums_at_chunk_boundaries() {
        for (n, m, dv) in [(70, 32, 16), (33, 16, 48), (64, 64, 64), (1, 16, 16)] {
            let (q, k, v) = (
                random(n * m, 11, true),
                random(n * m, 12, true),
                random(n * dv, 13, false),
            );
            let o = reference(&q, &k, &v, n, m, dv);
            let o: Vec<f32> = o.iter().map(|&x| x as f32).collect();
            let den = random(n, 14, true);
            let (go, gden) = (random(n * dv, 15, false), random(n, 16, false));
            let g = Grads {
                o: &o,
                den: &den,
                go: &go,
                gden: &gden,
                eps: 0.0,
            };
            let want = naive_backward((&q, &k, &v), &g, (n, m, dv));
            let scale = |w: &[f64]| w.iter().fold(1.0f64, |s, x| s.max(x.abs()));
            // chunks that divide n, leave a short last chunk, are not multiples of 16, equal n
            for c in [1, 4, 5, 16, 21, 32, 64, n, 100] {
                let (mut dq, mut dk, mut dvo) =
                    (vec![0.0; n * m], vec![0.0; n * m], vec![0.0; n * dv]);
                let method = Method::Chunked(c);
                let r = backward(
                    method,
                    &q,
                    &k,
                    &v,
                    (n, m, dv),
                    &g,
                    &mut dq,
                    &mut dk,
                    &mut dvo,
                );
                assert_eq!(r, Some(()));
                for (got, want) in [(&dq, &want.0), (&dk, &want.1), (&dvo, &want.2)] {
                    let tol = 2e-6 * scale(want);
                    for (a, b) in got.iter().zip(want.iter()) {
                        assert!((f64::from(*a) - b).abs() < tol, "n={n} c={c}: {a} vs {b}");
                    }
                }
            }
        }
        // widths that are not multiples of 16, and the other methods, are left to `forms`
        let x = [0.0f32; 10];
        let g = Grads {
            o: &x,
            den: &[1.0],
            go: &x,
            gden: &[0.0],
            eps: 0.0,
        };
        let (mut a, mut b, mut c) = ([0.0f32; 10], [0.0f32; 10], [0.0f32; 10]);
        for (method, dims) in [
            (Method::Chunked(4), (1, 10, 10)),
            (Method::Scan, (1, 16, 16)),
        ] {
            let r = backward(method, &x, &x, &x, dims, &g, &mut a, &mut b, &mut c);
            assert_eq!(r, None);
        }
    }

    #[test]
    fn mapped_chunks_match_mapping_first() {
        use crate::attention::features::{FeatureMap, Spec};
        let (n, d, dv) = (45, 16, 16);
        let (q, k, v) = (
            random(n * d, 4, false),
            random(n * d, 5, false),
            random(n * dv, 6, false),
        );
        let w = random(32 * d, 7, false);
        for (map, projection) in [
            (FeatureMap::Positive, Some((&w[..], 32))),
            (FeatureMap::Hyperbolic, Some((&w[..], 32))),
            (FeatureMap::Exp, Some((&w[..], 32))),
            (FeatureMap::EluPlusOne, None),
            (FeatureMap::Relu, Some((&w[..], 32))),
        ] {
            let spec = |is_query| Spec {
                map,
                d,
                projection,
                is_query,
                offset: None,
            };
            let (sq, sk) = (spec(true), spec(false));
            let m = sq.out_dim();
            let mapper = Mapper::new(&sq, &sk);
            let run = |method, q: &[f32], k: &[f32], maps| {
                let (mut o, mut den) = (vec![0.0f32; n * dv], vec![0.0f32; n]);
                let mut s = vec![0.0; m * (dv + 1)];
                let mut scale = f64::NEG_INFINITY;
                let (dims, st) = ((n, m, dv), (&mut s[..], &mut scale));
                let ok = forward(method, q, k, &v, dims, maps, 1e-6, st, &mut o, &mut den);
                assert_eq!(ok, Some(true), "{map:?}");
                (o, s)
            };
            let (mut fq, mut fk) = (vec![0.0; n * m], vec![0.0; n * m]);
            sq.forward(&q, &mut fq).unwrap();
            sk.forward(&k, &mut fk).unwrap();
            for method in [Method::Chunked(16), Method::Scan] {
                let (want, want_s) = run(method, &fq, &fk, None);
                let (got, got_s) = run(method, &q, &k, Some(&mapper));
                for (a, b) in want.iter().zip(&got) {
                    assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{map:?}");
                }
                // the same sums up to the stabilisers' ratio (the running maximum's is larger)
                let z = |s: &[f64]| s[dv..].iter().step_by(dv + 1).sum::<f64>();
                let ratio = z(&want_s) / z(&got_s);
                let top = want_s.iter().fold(0.0f64, |t, x| t.max(x.abs()));
                for (a, b) in want_s.iter().zip(&got_s) {
                    assert!((a - b * ratio).abs() <= 1e-5 * top, "{map:?}");
                }
            }
        }
    }
}
