//! Token-by-token decoding in f32 with a float64 state that stays exact to f32 products.
//!
//! A decode step reads and writes the whole state, `M × D_v` per head: in f64 that is
//! 33 KB per head at `M = D_v = 64`, and moving it costs more than the arithmetic. The
//! decoder therefore steps an f32 working copy (half the bytes) and keeps the f64 state
//! (`(M, D_v + 1)` per head, owned by the caller) exact: it buffers the last tokens' key
//! features and values, and every [`FOLD`] tokens adds their `Kᵀ V` (an f32 product, as the
//! chunked form adds each chunk's) into the f64 state and re-rounds the working copy from
//! it. So the working copy is never more than [`FOLD`] f32 additions away from the rounded
//! f64 state, however long the sequence: plain f32 accumulation would drift like `√N·ε`
//! (and stall once `S` dwarfs each token's term), a compensated f32 state would move as
//! many bytes as f64.
//!
//! Keys under the running maximum (see `forms`): each head's working copy and buffered key
//! features share one stabiliser, the largest key logit the head has seen; a key that raises
//! it rescales them first. A fold brings the f64 state (whose stabiliser the caller keeps in
//! [`State::scale`]) to it before adding.
//!
//! Everything that does not change between tokens (`scale·Ωᵀ`, the feature constants) is
//! prepared once, in [`Decoder::new`]. A step maps the `q`, `k` of [`GROUP`] heads at a time
//! (their rows share each pass over `Ωᵀ`), then per head does the state update and the
//! readout `φ(q)ᵀ S` in one pass over the working copy.

use rayon::prelude::*;

use super::fast::{gemm16, project, scan_token};
use super::features::{Mapper, Spec};
use super::forms::State;
use super::types::{denominator, inverse, rescale};
use crate::num::{transpose16, tree};
use crate::{Error, Result};

/// Tokens buffered between folds into the f64 state.
pub const FOLD: usize = 64;
/// f32 lanes of one cache line.
const L: usize = 16;
/// Elements of the work of one step above which heads are spread over the pool's threads.
const PARALLEL: usize = 1 << 18;
/// Heads mapped together: their rows share each pass over the projection.
const GROUP: usize = 8;

/// One cache line of f32, so that every head's rows start on a line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; L]);

/// The decoding state of `bh` heads for one feature map and projection (f32 inputs, feature
/// and value counts multiples of 16).
pub struct Decoder {
    mapper: Mapper<f32>,
    bh: usize,
    dv: usize,
    eps: f64,
    /// Per head, one block of whole lines (see [`Parts`]).
    heads: Vec<Line>,
    /// Lines per head.
    lines: usize,
    /// Per group of [`GROUP`] heads, the projections then the features of their `q` and `k`.
    scratch: Vec<f32>,
    /// Per head, the stabiliser of the working copy and the buffered key features.
    scales: Vec<f64>,
    /// Tokens buffered since the last fold.
    fill: usize,
    /// Whether the working copy is the rounded f64 state plus the buffered tokens (false
    /// until it is read from the caller's state, and after [`Decoder::flush`]).
    fresh: bool,
}

/// One head's block: the working copy `s` (`m × dv`) and `z` (`m`), and the buffered tokens'
/// key features (`FOLD × m`) and values (`FOLD × dv`).
struct Parts<'a> {
    s: &'a mut [f32],
    z: &'a mut [f32],
    kb: &'a mut [f32],
    vb: &'a mut [f32],
}

/// Lengths of the parts of [`Parts`], in order.
fn part_lens(m: usize, dv: usize) -> [usize; 4] {
    [m * dv, m, FOLD * m, FOLD * dv]
}

fn parts<'a>(block: &'a mut [Line], lens: &[usize; 4]) -> Parts<'a> {
    // SAFETY: `Line` is 16 f32 with no padding, so a block of lines is a block of f32.
    let all = unsafe {
        std::slice::from_raw_parts_mut(block.as_mut_ptr().cast::<f32>(), block.len() * L)
    };
    let (s, rest) = all.split_at_mut(lens[0]);
    let (z, rest) = rest.split_at_mut(lens[1]);
    let (kb, vb) = rest.split_at_mut(lens[2]);
    Parts { s, z, kb, vb }
}

impl Decoder {
    /// A decoder of `bh` heads of `d`-dimensional `q`, `k` (the maps' `d`) and `dv`-dimensional
    /// values; an error where the decoder does not apply (use the general forms there).
    pub fn new(sq: &Spec<f32>, sk: &Spec<f32>, bh: usize, dv: usize, eps: f64) -> Result<Self> {
        sq.check(sq.d)?;
        sk.check(sk.d)?;
        if sk.d != sq.d || sk.out_dim() != sq.out_dim() {
            return Err(Error::value(
                "feature_map",
                "must give queries and keys one dimension and one feature count",
            ));
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::value(
                "eps",
                format!("must be finite and >= 0, got {eps}"),
            ));
        }
        let mapper = Mapper::new(sq, sk);
        if bh == 0
            || [mapper.m, mapper.mp, dv]
                .iter()
                .any(|x| x % L != 0 || *x == 0)
        {
            return Err(Error::value(
                "q",
                "decodes here with heads >= 1 and feature and value counts that are positive \
                 multiples of 16",
            ));
        }
        let lines = part_lens(mapper.m, dv).iter().sum::<usize>() / L;
        let groups = bh.div_ceil(GROUP);
        let (heads, scratch) = (
            zeros(bh.checked_mul(lines))?,
            zeros(groups.checked_mul(group_len(&mapper)))?,
        );
        Ok(Decoder {
            mapper,
            bh,
            dv,
            eps,
            heads,
            lines,
            scratch,
            scales: vec![f64::NEG_INFINITY; bh],
            fill: 0,
            fresh: false,
        })
    }

    /// Elements of the caller's f64 state: `bh × m × (dv + 1)`.
    pub fn state_len(&self) -> usize {
        self.bh * self.mapper.m * (self.dv + 1)
    }

    /// Whether a step spreads its heads over the pool's threads.
    pub fn is_large(&self) -> bool {
        self.bh * self.mapper.m * self.dv >= PARALLEL
    }

    /// Whether the next [`Decoder::step`] reads or writes the f64 state.
    pub fn needs_state(&self) -> bool {
        !self.fresh || self.fill + 1 == FOLD
    }

    /// Consumes one token per head (`q`, `k`: `bh × d`; `v`: `bh × dv`) and writes its
    /// outputs into `o` (`bh × dv`). `state` is the f64 state, required when
    /// [`Decoder::needs_state`].
    pub fn step(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        state: Option<State>,
        o: &mut [f32],
    ) -> Result<()> {
        let (bh, d, dv) = (self.bh, self.mapper.d, self.dv);
        for (name, len, want) in [
            ("q", q.len(), bh * d),
            ("k", k.len(), bh * d),
            ("v", v.len(), bh * dv),
            ("o", o.len(), bh * dv),
        ] {
            if len != want {
                return Err(Error::value(
                    name,
                    format!("must have {want} elements, got {len}"),
                ));
            }
        }
        let state = match state {
            Some(s) => Some(self.check_state(s)?),
            None if self.needs_state() => {
                return Err(Error::value("state", "is needed by this step"))
            }
            None => None,
        };
        let mut state = state;
        if !self.fresh {
            self.load(state.as_ref().expect("checked above"));
        }
        let large = self.is_large();
        let (mp, fill, eps) = (&self.mapper, self.fill, self.eps);
        let (lines, per) = (GROUP * self.lines, group_len(mp));
        let task = |((((blocks, o), (q, k)), (v, scratch)), scales): Task| {
            step_group(mp, blocks, (q, k, v), (fill, eps), o, scratch, scales)
        };
        let (x, y) = (GROUP * d, GROUP * dv);
        if large {
            let heads = self.heads.par_chunks_mut(lines).zip(o.par_chunks_mut(y));
            let rest = v.par_chunks(y).zip(self.scratch.par_chunks_mut(per));
            let qk = q.par_chunks(x).zip(k.par_chunks(x));
            let scales = self.scales.par_chunks_mut(GROUP);
            heads.zip(qk).zip(rest).zip(scales).for_each(task);
        } else {
            let heads = self.heads.chunks_mut(lines).zip(o.chunks_mut(y));
            let rest = v.chunks(y).zip(self.scratch.chunks_mut(per));
            let qk = q.chunks(x).zip(k.chunks(x));
            let scales = self.scales.chunks_mut(GROUP);
            heads.zip(qk).zip(rest).zip(scales).for_each(task);
        }
        self.fill += 1;
        if self.fill == FOLD {
            self.fold(state.as_mut().expect("checked above"));
        }
        Ok(())
    }

    fn check_state<'a>(&self, s: State<'a>) -> Result<State<'a>> {
        let want = self.state_len();
        if s.kv.len() != want {
            return Err(Error::value(
                "state",
                format!("must have {want} elements, got {}", s.kv.len()),
            ));
        }
        if s.scale.len() != self.bh {
            return Err(Error::value(
                "scale",
                format!("must have {} elements, got {}", self.bh, s.scale.len()),
            ));
        }
        Ok(s)
    }

    /// Adds the buffered tokens into `state` (so it is the state after every token stepped)
    /// and forgets the working copy: the caller may change `state` before the next step.
    pub fn flush(&mut self, state: State) -> Result<()> {
        let mut state = self.check_state(state)?;
        if self.fresh {
            self.fold(&mut state);
        }
        self.fresh = false;
        Ok(())
    }

    /// Reads the working copy and its stabilisers from `state`.
    fn load(&mut self, state: &State) {
        let (lens, w) = (part_lens(self.mapper.m, self.dv), self.dv + 1);
        let rows = self.mapper.m * w;
        for (block, st) in self.heads.chunks_mut(self.lines).zip(state.kv.chunks(rows)) {
            let p = parts(block, &lens);
            round(st, w, p.s, p.z);
        }
        self.scales.copy_from_slice(state.scale);
        self.fill = 0;
        self.fresh = true;
    }

    /// `state += Kᵀ [V 1]` of the buffered tokens (the state first brought to their
    /// stabiliser), then the working copy rounded from it.
    fn fold(&mut self, state: &mut State) {
        let (lens, fill, m, dv) = (
            part_lens(self.mapper.m, self.dv),
            self.fill,
            self.mapper.m,
            self.dv,
        );
        let rows = m * (dv + 1);
        let task = |((block, st), (scale, &work)): FoldTask| {
            if work > *scale {
                rescale(st, (*scale - work).exp());
                *scale = work;
            }
            fold_head(parts(block, &lens), fill, (m, dv), st)
        };
        let scales = state.scale.iter_mut().zip(&self.scales);
        if self.is_large() {
            let heads = self.heads.par_chunks_mut(self.lines);
            let scales = state.scale.par_iter_mut().zip(&self.scales);
            heads
                .zip(state.kv.par_chunks_mut(rows))
                .zip(scales)
                .for_each(task);
        } else {
            let heads = self.heads.chunks_mut(self.lines);
            heads
                .zip(state.kv.chunks_mut(rows))
                .zip(scales)
                .for_each(task);
        }
        self.fill = 0;
    }
}

/// `s`, `z` = the f64 state `st` (rows of `w = dv + 1`, `z` last) rounded to f32.
fn round(st: &[f64], w: usize, s: &mut [f32], z: &mut [f32]) {
    let dv = w - 1;
    for ((row, s), z) in st
        .chunks_exact(w)
        .zip(s.chunks_exact_mut(dv))
        .zip(z.iter_mut())
    {
        s.iter_mut().zip(row).for_each(|(s, &x)| *s = x as f32);
        *z = row[dv] as f32;
    }
}

/// What a fold gives each head: its block and f64 state, the state's stabiliser and the
/// working copy's.
type FoldTask<'a> = ((&'a mut [Line], &'a mut [f64]), (&'a mut f64, &'a f64));

/// What a step gives each group of heads: its heads' blocks and outputs, its `q`, `k`, `v`
/// rows and its scratch.
type Task<'a> = (
    (
        ((&'a mut [Line], &'a mut [f32]), (&'a [f32], &'a [f32])),
        (&'a [f32], &'a mut [f32]),
    ),
    &'a mut [f64],
);

/// A zeroed vector of `n` (`None`: an overflow) elements, or an error rather than an abort
/// when that much memory cannot be had.
fn zeros<T: Clone + Default>(n: Option<usize>) -> Result<Vec<T>> {
    let too_many = || Error::value("q", "has too many heads for memory");
    let n = n.ok_or_else(too_many)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| too_many())?;
    v.resize(n, T::default());
    Ok(v)
}

/// Scratch elements per group: the projections of its `q` and `k` rows, then their features.
fn group_len(mp: &Mapper<f32>) -> usize {
    2 * GROUP * (mp.mp + mp.m)
}

crate::per_road! {
/// A group of heads' step: φ of their `q`, `k` (one pass over the projection for all rows;
/// under the running maximum, a head whose key raises its stabiliser `scales` is rescaled
/// first), then each head's `S += φ(k) vᵀ`, `z += φ(k)`, readout, and the token into its
/// buffer at `fill`.
fn step_group(
    mp: &Mapper<f32>,
    blocks: &mut [Line],
    (q, k, v): (&[f32], &[f32], &[f32]),
    (fill, eps): (usize, f64),
    o: &mut [f32],
    scratch: &mut [f32],
    scales: &mut [f64],
) {
    let (d, m, heads) = (mp.d, mp.m, q.len() / mp.d);
    let dv = v.len() / heads;
    let (u, phi) = scratch.split_at_mut(2 * GROUP * mp.mp);
    let (uq, uk) = u.split_at_mut(GROUP * mp.mp);
    let (pq, pk) = phi.split_at_mut(GROUP * m);
    let lens = part_lens(m, dv);
    let lines = blocks.len() / heads;
    for (side, (x, u, f)) in [(q, &mut *uq, &mut *pq), (k, &mut *uk, &mut *pk)]
        .into_iter()
        .enumerate()
    {
        let u = project(mp, x, heads, u);
        let rows = u.chunks_exact(mp.mp).zip(x.chunks_exact(d));
        if side == 0 || !mp.running() {
            for ((u, x), f) in rows.zip(f.chunks_exact_mut(m)) {
                mp.row(side, u, x, f);
            }
            continue;
        }
        let heads = blocks.chunks_exact_mut(lines).zip(scales.iter_mut());
        for (((u, x), f), (block, scale)) in rows.zip(f.chunks_exact_mut(m)).zip(heads) {
            let (top, own) = mp.key_max(u, x);
            if f64::from(top) > *scale {
                let a = (*scale - f64::from(top)).exp() as f32;
                let p = parts(block, &lens);
                let buffered = p.kb[..fill * m].iter_mut();
                p.s.iter_mut()
                    .chain(p.z.iter_mut())
                    .chain(buffered)
                    .for_each(|x| *x *= a);
                *scale = f64::from(top);
            }
            mp.key_row(u, own, *scale as f32, f);
        }
    }
    let rows = pq.chunks_exact(m).zip(pk.chunks_exact(m));
    let io = v.chunks_exact(dv).zip(o.chunks_exact_mut(dv));
    for ((block, (fq, fk)), (v, o)) in blocks.chunks_exact_mut(lines).zip(rows).zip(io) {
        step_head(parts(block, &lens), (fq, fk, v), (fill, eps), o);
    }
}
}

/// One head's `S += φ(k) vᵀ`, `z += φ(k)`, readout `o`, and the token into its buffer.
#[inline(always)]
fn step_head(
    p: Parts,
    (fq, fk, v): (&[f32], &[f32], &[f32]),
    (fill, eps): (usize, f64),
    o: &mut [f32],
) {
    let (m, dv) = (fq.len(), v.len());
    scan_token(fq, fk, v, p.s, dv, o);
    // z and the denominator in 16 lanes
    let mut acc = [0.0f32; L];
    let zs =
        p.z.chunks_exact_mut(L)
            .zip(fq.chunks_exact(L).zip(fk.chunks_exact(L)));
    for (z, (q, k)) in zs {
        for (((z, &q), &k), a) in z.iter_mut().zip(q).zip(k).zip(acc.iter_mut()) {
            *z += k;
            *a = q.mul_add(*z, *a);
        }
    }
    let den = denominator(f64::from(tree(acc, |a, b| a + b)), eps);
    let inv = inverse(den);
    o.iter_mut().for_each(|y| *y = (f64::from(*y) * inv) as f32);
    p.kb[fill * m..(fill + 1) * m].copy_from_slice(fk);
    p.vb[fill * dv..(fill + 1) * dv].copy_from_slice(v);
}

crate::per_road! {
/// One head's fold of `fill` buffered tokens into its f64 state `st`.
fn fold_head(p: Parts, fill: usize, (m, dv): (usize, usize), st: &mut [f64]) {
    let w = dv + 1;
    let mut kt = vec![0.0; m * FOLD];
    transpose16(p.kb, m, fill, &mut kt, FOLD);
    // The working copy is about to be re-rounded: meanwhile it holds the f32 sums.
    gemm16(m, dv, fill, &kt, FOLD, p.vb, dv, p.s, dv, false);
    p.z.fill(0.0);
    for key in p.kb.chunks_exact(m).take(fill) {
        p.z.iter_mut().zip(key).for_each(|(z, &k)| *z += k);
    }
    for ((row, delta), &z) in st.chunks_exact_mut(w).zip(p.s.chunks_exact(dv)).zip(&*p.z) {
        row.iter_mut()
            .zip(delta)
            .for_each(|(s, &d)| *s += f64::from(d));
        row[dv] += f64::from(z);
    }
    round(st, w, p.s, p.z);
}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::features::FeatureMap;

    /// The query and key maps `map` with projection `w` (`m × d`).
    fn specs<T>(map: FeatureMap, d: usize, w: &[T]) -> [Spec<'_, T>; 2] {
        [true, false].map(|is_query| Spec {
            map,
            d,
            projection: Some((w, w.len() / d)),
            is_query,
            offset: None,
        })
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        use rand::Rng as _;
        let mut rng = crate::rng::stream(seed, 0);
        (0..len).map(|_| 2.0 * rng.random::<f32>() - 1.0).collect()
    }

    /// The f64 recurrence on f64 features (mapped by the same specs in f64).
    fn reference(
        map: FeatureMap,
        w: &[f32],
        (n, bh, d, dv): (usize, usize, usize, usize),
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Vec<f64> {
        let w64: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
        let [sq, sk] = specs(map, d, &w64);
        let m = sq.out_dim();
        let up = |x: &[f32]| x.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let (mut fq, mut fk) = (vec![0.0; n * bh * m], vec![0.0; n * bh * m]);
        sq.forward(&up(q), &mut fq).unwrap();
        sk.forward(&up(k), &mut fk).unwrap();
        let mut s = vec![0.0f64; bh * m * (dv + 1)];
        let mut o = vec![0.0; n * bh * dv];
        for t in 0..n {
            for h in 0..bh {
                let r = t * bh + h;
                let st = &mut s[h * m * (dv + 1)..(h + 1) * m * (dv + 1)];
                for p in 0..m {
                    for j in 0..dv {
                        st[p * (dv + 1) + j] += fk[r * m + p] * f64::from(v[r * dv + j]);
                    }
                    st[p * (dv + 1) + dv] += fk[r * m + p];
                }
                let y = |j: usize| {
                    (0..m)
                        .map(|p| fq[r * m + p] * st[p * (dv + 1) + j])
                        .sum::<f64>()
                };
                let den = y(dv) * (1.0 + 1e-6);
                for j in 0..dv {
                    o[r * dv + j] = y(j) / den;
                }
            }
        }
        o
    }

    #[test]
    fn steps_match_the_f64_recurrence_across_folds_and_flushes() {
        let (n, bh, d, dv) = (150, 3, 16, 32);
        for (map, mp) in [
            (FeatureMap::Positive, 32),
            (FeatureMap::Hyperbolic, 16),
            (FeatureMap::Exp, 16),
        ] {
            let w = random(mp * d, 9);
            let (q, mut k, v) = (
                random(n * bh * d, 1),
                random(n * bh * d, 2),
                random(n * bh * dv, 3),
            );
            // keys growing along the sequence: the running maximum rises again and again,
            // between folds and inside the buffer
            for (t, row) in k.chunks_exact_mut(bh * d).enumerate() {
                row.iter_mut().for_each(|x| *x *= 1.0 + t as f32 / 25.0);
            }
            let want = reference(map, &w, (n, bh, d, dv), &q, &k, &v);
            let [sq, sk] = specs(map, d, &w);
            let mut dec = Decoder::new(&sq, &sk, bh, dv, 1e-6).unwrap();
            let mut state = vec![0.0; dec.state_len()];
            let mut scale = vec![f64::NEG_INFINITY; bh];
            let mut o = vec![0.0f32; bh * dv];
            for t in 0..n {
                let (x, y) = (t * bh * d..(t + 1) * bh * d, t * bh * dv..(t + 1) * bh * dv);
                let st = dec.needs_state().then_some(State {
                    kv: &mut state,
                    scale: &mut scale,
                });
                dec.step(&q[x.clone()], &k[x], &v[y.clone()], st, &mut o)
                    .unwrap();
                for (a, b) in o.iter().zip(&want[y]) {
                    assert!(
                        (f64::from(*a) - b).abs() < 1e-5,
                        "{map:?} t={t}: {a} vs {b}"
                    );
                }
                if t == 100 {
                    // mid-buffer: the next step reloads
                    let st = State {
                        kv: &mut state,
                        scale: &mut scale,
                    };
                    dec.flush(st).unwrap();
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let w = random(20 * 4, 1);
        let [sq, sk] = specs(FeatureMap::Positive, 4, &w);
        assert!(Decoder::new(&sq, &sk, 2, 16, 1e-6).is_err()); // m = 20
        let [sq, sk] = specs(FeatureMap::Positive, 4, &w[..16 * 4]);
        assert!(Decoder::new(&sq, &sk, 2, 8, 1e-6).is_err()); // dv = 8
        assert!(Decoder::new(&sq, &sk, 2, 16, f64::NAN).is_err());
        let mut dec = Decoder::new(&sq, &sk, 2, 16, 1e-6).unwrap();
        let mut state = vec![0.0; dec.state_len()];
        let mut scale = [f64::NEG_INFINITY; 2];
        let x = [0.0f32; 8];
        let mut o = [0.0f32; 32];
        assert!(dec.step(&x, &x, &[0.0; 32], None, &mut o).is_err()); // needs the state first
        for (lo, heads, vlen, ok) in [(0, 2, 31, false), (1, 2, 32, false), (0, 1, 32, false)]
            .into_iter()
            .chain([(0, 2, 32, true)])
        {
            let st = State {
                kv: &mut state[lo..],
                scale: &mut scale[..heads],
            };
            let r = dec.step(&x, &x, &vec![0.0; vlen], Some(st), &mut o);
            assert_eq!(r.is_ok(), ok, "{lo} {heads} {vlen}");
        }
    }
}
