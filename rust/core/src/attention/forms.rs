//! The causal forms (chunked, token scan, quadratic) and the non-causal form, forward and
//! backward, on feature-mapped queries/keys.
//!
//! With `v' = [v, 1]` (`w = D_v + 1` columns), every form computes `y_t = Σ_{s≤t} (q_t·k_s) v'_s`
//! plus `q_tᵀ S₀` from an initial state, and returns `o_t = y_t[..D_v] / den_t` with
//! `den_t = (1 + eps)·q_tᵀz_t` (`q_tᵀz_t = y_t[D_v]`). The state `S` (`M × w`, f64) holds
//! `Σ k v'ᵀ`; its last column is `z`.
//!
//! `eps` is relative: it changes every output by the factor `1/(1 + eps)`, whatever the number
//! of features, their dimension or the scale of the inputs (an absolute `eps` swamps the whole
//! estimate once the features are small, as FAVOR+ key features are under a fixed bound), and
//! the ratio is invariant to any positive scaling of the query or of the key features, so the
//! stabilisers cancel exactly. Where `q_tᵀz_t` is 0 (every feature product 0: padding, `relu`),
//! the output and its gradient are 0.
//!
//! Backward maps `(∂L/∂o, ∂L/∂den)` to
//! `g'_t = [∂L/∂o_t / den_t, (1 + eps)·(∂L/∂den_t − (∂L/∂o_t · o_t)/den_t)]`,
//! the gradient of the unnormalised `y_t`, then (fast-transformers' design, no subtraction):
//! a forward sweep gives `∂q_t = S_t g'_t`; a reverse sweep with `R_t = Σ_{u≥t} q_u g'_uᵀ`
//! gives `∂k_t = R_t v'_t` and `∂v'_t = R_tᵀ k_t`. Chunked, the intra-chunk part is a masked
//! `C × C` product and the inter-chunk part one product with the carried `S` or `R`: memory is
//! `O(M·D_v + C²)` per head, never `O(N·M·D_v)`.

use rayon::prelude::*;

use super::fast::Real;
use super::features::{Mapper, Spec};
use super::gemm::{gemm, Mat};
use super::types::{denominator, inverse, rescale, SLACK};
pub use super::types::{Dims, Grads, Method};
use crate::{cancel, Error, Result};

pub struct Inputs<'a, T> {
    pub dims: Dims,
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
}

/// `o` is `(bh, nq, dv)`, `den` `(bh, nq)`.
pub struct Outputs<'a, T> {
    pub o: &'a mut [T],
    pub den: &'a mut [T],
}

pub struct GradsOut<'a, T> {
    pub dq: &'a mut [T],
    pub dk: &'a mut [T],
    pub dv: &'a mut [T],
}

fn f<T: Real>(x: T) -> f64 {
    x.to_f64().unwrap_or(f64::NAN)
}

fn t<T: Real>(x: f64) -> T {
    T::from(x).unwrap_or_else(T::nan)
}

fn check_len(name: &str, len: usize, want: usize) -> Result<()> {
    if len == want {
        Ok(())
    } else {
        Err(Error::value(
            name,
            format!("must have {want} elements, got {len}"),
        ))
    }
}

impl<T: Real> Inputs<'_, T> {
    fn check(&self, causal: bool) -> Result<()> {
        let Dims { bh, nq, nk, m, dv } = self.dims;
        if m == 0 {
            return Err(Error::value("q", "must have a positive feature dimension"));
        }
        if dv == 0 {
            return Err(Error::value("v", "must have a positive value dimension"));
        }
        if causal && nq != nk {
            return Err(Error::value(
                "k",
                format!("must have as many positions as q ({nq}) when causal, got {nk}"),
            ));
        }
        let len = |a: usize, b: usize, c: usize| a.checked_mul(b).and_then(|x| x.checked_mul(c));
        let q = len(bh, nq, m).ok_or_else(|| Error::value("q", "is too large"))?;
        let k = len(bh, nk, m).ok_or_else(|| Error::value("k", "is too large"))?;
        let v = len(bh, nk, dv).ok_or_else(|| Error::value("v", "is too large"))?;
        check_len("q", self.q.len(), q)?;
        check_len("k", self.k.len(), k)?;
        check_len("v", self.v.len(), v)
    }

    fn head(&self, b: usize) -> (&[T], &[T], &[T]) {
        let Dims { nq, nk, m, dv, .. } = self.dims;
        (
            &self.q[b * nq * m..(b + 1) * nq * m],
            &self.k[b * nk * m..(b + 1) * nk * m],
            &self.v[b * nk * dv..(b + 1) * nk * dv],
        )
    }
}

fn check_eps(eps: f64) -> Result<()> {
    crate::error::check_finite_at_least("eps", eps, 0.0).map(|_| ())
}

/// `[v | 1]` for a block of rows.
fn augment<T: Real>(v: &[T], dv: usize, out: &mut [T]) {
    for (o, v) in out.chunks_exact_mut(dv + 1).zip(v.chunks_exact(dv)) {
        o[..dv].copy_from_slice(v);
        o[dv] = T::one();
    }
}

/// `g'` rows (see the module doc) for a block.
fn grad_prime<T: Real>(g: &Grads<T>, rows: std::ops::Range<usize>, dv: usize, out: &mut [T]) {
    let (o, go) = (
        &g.o[rows.start * dv..rows.end * dv],
        &g.go[rows.start * dv..rows.end * dv],
    );
    for (((gp, o), go), (&den, &gden)) in out
        .chunks_exact_mut(dv + 1)
        .zip(o.chunks_exact(dv))
        .zip(go.chunks_exact(dv))
        .zip(g.den[rows.clone()].iter().zip(&g.gden[rows]))
    {
        let inv = t(inverse(f(den)));
        let mut dot = T::zero();
        for j in 0..dv {
            gp[j] = go[j] * inv;
            dot = dot + go[j] * o[j];
        }
        gp[dv] = (gden - dot * inv) * t(1.0 + g.eps);
    }
}

/// Zeroes the strict upper triangle of a row-major `l × l` block (assignment, not a product,
/// so non-finite future entries cannot leak into the past).
fn tril<T: Real>(a: &mut [T], l: usize) {
    for (i, row) in a.chunks_exact_mut(l).enumerate() {
        row[i + 1..].iter_mut().for_each(|x| *x = T::zero());
    }
}

/// `o`/`den` from unnormalised rows `y` (`w` wide).
fn normalise<T: Real>(y: &[T], dv: usize, eps: f64, o: &mut [T], den: &mut [T]) {
    for ((y, o), den) in y.chunks_exact(dv + 1).zip(o.chunks_exact_mut(dv)).zip(den) {
        let d = denominator(f(y[dv]), eps);
        *den = t(d);
        let inv = inverse(d);
        o.iter_mut().zip(y).for_each(|(o, &y)| *o = t(f(y) * inv));
    }
}

/// `s64 += delta` and refresh the working copy `st` of the state.
fn accumulate<T: Real>(s64: &mut [f64], st: &mut [T], delta: &[T]) {
    for ((s, st), &d) in s64.iter_mut().zip(st.iter_mut()).zip(delta) {
        *s += f(d);
        *st = t(*s);
    }
}

struct Head<'a, T> {
    n: usize,
    m: usize,
    dv: usize,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    /// Under the running maximum, each key row's largest logit: row `s` is stabilised by it,
    /// and `k_s·exp(kmax_s − c)` is the row for the stabiliser `c`.
    kmax: Option<&'a [f64]>,
}

/// The next chunk under the running maximum: from row `c0`, at most `c` rows; returns its
/// length and its stabiliser, the running maximum at its first key (the larger of `scale` and
/// that key's largest logit). The chunk ends before a key more than [`SLACK`] above it, so
/// where it ends depends on its own and earlier keys only (causal).
fn running_chunk(kmax: &[f64], c0: usize, c: usize, scale: f64) -> (usize, f64) {
    let top = &kmax[c0..c0 + c];
    let r = top[0].max(scale);
    ((1..c).find(|&i| top[i] > r + SLACK).unwrap_or(c), r)
}

impl<T: Real> Head<'_, T> {
    /// Key rows `c0..c0 + l` for the stabiliser `r` (`k_s·exp(kmax_s − r)`) in `kb`.
    fn keys_under<'b>(&self, c0: usize, l: usize, r: f64, kb: &'b mut [T]) -> &'b [T] {
        let (m, kmax) = (
            self.m,
            self.kmax.expect("keys under a stabiliser need kmax"),
        );
        let ks = &self.k[c0 * m..(c0 + l) * m];
        for ((kb, k), &top) in kb
            .chunks_exact_mut(m)
            .zip(ks.chunks_exact(m))
            .zip(&kmax[c0..])
        {
            let e = (top - r).exp();
            kb.iter_mut().zip(k).for_each(|(a, &b)| *a = t(f(b) * e));
        }
        &kb[..l * m]
    }

    /// The chunks `(start, length, stabiliser)` of a pass from a zero state: those of
    /// [`Self::chunked_forward`] (stabiliser 0 without `kmax`).
    fn chunks(&self, c: usize) -> Vec<(usize, usize, f64)> {
        let (n, c) = (self.n, c.min(self.n));
        let mut out = Vec::with_capacity(n.div_ceil(c));
        let (mut c0, mut scale) = (0, f64::NEG_INFINITY);
        while c0 < n {
            let l = c.min(n - c0);
            let (l, r) = match self.kmax {
                Some(kmax) => running_chunk(kmax, c0, l, scale),
                None => (l, 0.0),
            };
            scale = r;
            out.push((c0, l, r));
            c0 += l;
        }
        out
    }

    /// Returns false (and stops) at a chunk whose values are not all finite: `0·inf` in the
    /// masked product would leak them into earlier positions of the chunk.
    fn chunked_forward(
        &self,
        c: usize,
        eps: f64,
        (s64, scale): (&mut [f64], &mut f64),
        o: &mut [T],
        den: &mut [T],
    ) -> bool {
        let (n, m, dv, w) = (self.n, self.m, self.dv, self.dv + 1);
        let c = c.min(n);
        let mut a = vec![T::zero(); c * c];
        let mut y = vec![T::zero(); c * dv];
        let mut delta = vec![T::zero(); m * w];
        let mut st: Vec<T> = s64.iter().map(|&x| t(x)).collect();
        let mut kb = vec![T::zero(); if self.kmax.is_some() { c * m } else { 0 }];
        let mut c0 = 0;
        while c0 < n {
            if cancel::requested() {
                return true; // causal_forward reports the interrupt
            }
            let mut l = c.min(n - c0);
            let mut ks = &self.k[c0 * m..(c0 + l) * m];
            if let Some(kmax) = self.kmax {
                let r;
                (l, r) = running_chunk(kmax, c0, l, *scale);
                if r > *scale {
                    rescale(s64, (*scale - r).exp());
                    st.iter_mut().zip(&*s64).for_each(|(a, &b)| *a = t(b));
                    *scale = r;
                }
                ks = self.keys_under(c0, l, r, &mut kb);
            }
            let qs = &self.q[c0 * m..(c0 + l) * m];
            let vs = &self.v[c0 * dv..(c0 + l) * dv];
            if !vs.iter().all(|x| x.is_finite()) {
                return false;
            }
            let (qc, kc, vc) = (
                Mat::new(qs, l, m, m),
                Mat::new(ks, l, m, m),
                Mat::new(vs, l, dv, dv),
            );
            // The GEMMs run on the Dv value columns; the normaliser column of ones is summed
            // apart (65 columns would cost a whole extra SIMD tile).
            gemm(T::one(), qc, kc.t(), T::zero(), &mut a, l);
            tril(&mut a[..l * l], l);
            gemm(T::one(), Mat::new(&a, l, l, l), vc, T::zero(), &mut y, dv);
            gemm(T::one(), qc, Mat::new(&st, m, dv, w), T::one(), &mut y, dv);
            for (i, ((yi, qi), (oi, di))) in y
                .chunks_exact(dv)
                .zip(qs.chunks_exact(m))
                .zip(
                    o[c0 * dv..]
                        .chunks_exact_mut(dv)
                        .zip(den[c0..c0 + l].iter_mut()),
                )
                .enumerate()
            {
                let intra = a[i * l..i * l + i + 1]
                    .iter()
                    .fold(T::zero(), |s, &x| s + x);
                let inter = qi
                    .iter()
                    .zip(st[dv..].iter().step_by(w))
                    .fold(T::zero(), |s, (&q, &z)| s + q * z);
                let d = denominator(f(intra + inter), eps);
                *di = t(d);
                let inv = inverse(d);
                oi.iter_mut().zip(yi).for_each(|(o, &y)| *o = t(f(y) * inv));
            }
            gemm(T::one(), kc.t(), vc, T::zero(), &mut delta, w);
            for (j, dz) in delta[dv..].iter_mut().step_by(w).enumerate() {
                *dz = ks[j..].iter().step_by(m).fold(T::zero(), |s, &k| s + k);
            }
            accumulate(s64, &mut st, &delta);
            c0 += l;
        }
        true
    }

    /// The token recurrence (decoding runs it), compiled for each SIMD road since the
    /// extension is built for baseline x86-64 and this loop is not a GEMM.
    fn scan_forward(
        &self,
        eps: f64,
        st: (&mut [f64], &mut f64),
        o: &mut [T],
        den: &mut [T],
    ) -> bool {
        crate::per_road! {
            fn scan_forward_road[T: Real](
                head: &Head<T>,
                eps: f64,
                st: (&mut [f64], &mut f64),
                o: &mut [T],
                den: &mut [T],
            ) -> bool {
                head.scan_forward_any(eps, st, o, den)
            }
        }
        scan_forward_road(self, eps, st, o, den)
    }

    /// Under the running maximum the state is rescaled whenever a key raises it, token by
    /// token.
    #[inline(always)]
    fn scan_forward_any(
        &self,
        eps: f64,
        (s64, scale): (&mut [f64], &mut f64),
        o: &mut [T],
        den: &mut [T],
    ) -> bool {
        let (m, dv, w) = (self.m, self.dv, self.dv + 1);
        let mut vf = vec![1.0f64; w];
        let mut y = vec![0.0f64; w];
        for (tok, (o, den)) in o.chunks_exact_mut(dv).zip(den.iter_mut()).enumerate() {
            if tok % 256 == 0 && cancel::requested() {
                return true; // causal_forward reports the interrupt
            }
            vf[..dv]
                .iter_mut()
                .zip(&self.v[tok * dv..(tok + 1) * dv])
                .for_each(|(a, &b)| *a = f(b));
            y.iter_mut().for_each(|x| *x = 0.0);
            let (q, k) = (
                &self.q[tok * m..(tok + 1) * m],
                &self.k[tok * m..(tok + 1) * m],
            );
            let mut weight = 1.0;
            if let Some(kmax) = self.kmax {
                if kmax[tok] > *scale {
                    rescale(s64, (*scale - kmax[tok]).exp());
                    *scale = kmax[tok];
                }
                weight = (kmax[tok] - *scale).exp();
            }
            for ((row, &qi), &ki) in s64.chunks_exact_mut(w).zip(q).zip(k) {
                let (qi, ki) = (f(qi), f(ki) * weight);
                for ((s, &vj), yj) in row.iter_mut().zip(&vf).zip(y.iter_mut()) {
                    *s += ki * vj;
                    *yj += qi * *s;
                }
            }
            let d = denominator(y[dv], eps);
            *den = t(d);
            let inv = inverse(d);
            o.iter_mut().zip(&y).for_each(|(o, &y)| *o = t(y * inv));
        }
        true
    }

    /// Under the running maximum, query `i` takes the running maximum `c_i` at `i` as
    /// stabiliser for every key and the initial state.
    fn quadratic_forward(
        &self,
        eps: f64,
        (s64, scale): (&mut [f64], &mut f64),
        o: &mut [T],
        den: &mut [T],
    ) -> bool {
        let (n, m, dv, w) = (self.n, self.m, self.dv, self.dv + 1);
        let mut y = vec![0.0f64; w];
        let start = *scale;
        // the weight of key j (and of the initial state) for the current stabiliser
        let weight = |j: Option<usize>, c: f64| match (self.kmax, j) {
            (None, _) => 1.0,
            (Some(kmax), Some(j)) => (kmax[j] - c).exp(),
            (Some(_), None) => (start - c).exp(),
        };
        for i in 0..n {
            if i % 64 == 0 && cancel::requested() {
                return true; // causal_forward reports the interrupt
            }
            let qi = &self.q[i * m..(i + 1) * m];
            if let Some(kmax) = self.kmax {
                *scale = scale.max(kmax[i]);
            }
            let c = *scale;
            y.iter_mut().for_each(|x| *x = 0.0);
            let w0 = weight(None, c);
            for (row, &qv) in s64.chunks_exact(w).zip(qi) {
                y.iter_mut()
                    .zip(row)
                    .for_each(|(y, &s)| *y += f(qv) * s * w0);
            }
            for j in 0..=i {
                let kj = &self.k[j * m..(j + 1) * m];
                let a: f64 = qi.iter().zip(kj).map(|(&x, &y)| f(x) * f(y)).sum();
                let a = a * weight(Some(j), c);
                for (yc, &vj) in y.iter_mut().zip(&self.v[j * dv..(j + 1) * dv]) {
                    *yc += a * f(vj);
                }
                y[dv] += a;
            }
            let d = denominator(y[dv], eps);
            den[i] = t(d);
            let inv = inverse(d);
            for (oc, &yc) in o[i * dv..(i + 1) * dv].iter_mut().zip(&y) {
                *oc = t(yc * inv);
            }
        }
        let c = *scale;
        rescale(s64, weight(None, c));
        for j in 0..n {
            let e = weight(Some(j), c);
            for (row, &kv) in s64.chunks_exact_mut(w).zip(&self.k[j * m..(j + 1) * m]) {
                let kv = f(kv) * e;
                for (s, &vj) in row.iter_mut().zip(&self.v[j * dv..(j + 1) * dv]) {
                    *s += kv * f(vj);
                }
                row[dv] += kv;
            }
        }
        true
    }

    /// Under the running maximum, the chunks and stabilisers are the forward's: a chunk's
    /// keys enter as `k_s·exp(kmax_s − r)` (their gradient takes the same factor), the forward
    /// sweep's `S` is rescaled as the forward's, and the reverse sweep's `R` is brought down to
    /// each earlier chunk's stabiliser (`R ← R·exp(r_earlier − r_later)`, at most 1).
    /// Returns early (outputs incomplete) when an interrupt is requested.
    fn chunked_backward(&self, c: usize, g: &Grads<T>, dq: &mut [T], dk: &mut [T], dvo: &mut [T]) {
        let (m, dv, w) = (self.m, self.dv, self.dv + 1);
        let chunks = self.chunks(c);
        let c = chunks.iter().map(|&(_, l, _)| l).max().unwrap_or(0);
        let mut a = vec![T::zero(); c * c];
        let mut vp = vec![T::zero(); c * w];
        let mut gp = vec![T::zero(); c * w];
        let mut dvp = vec![T::zero(); c * w];
        let mut kb = vec![T::zero(); if self.kmax.is_some() { c * m } else { 0 }];
        let mut delta = vec![T::zero(); m * w];
        let mut s64 = vec![0.0f64; m * w];
        let mut st = vec![T::zero(); m * w];
        // `S` (keys) is rescaled by exp(old − new) for a new stabiliser, `R` (queries) by
        // exp(new − old); both are zero while the stabiliser is −∞.
        let mut scale = f64::NEG_INFINITY;
        let rebase = |s64: &mut [f64], st: &mut [T], scale: &mut f64, r: f64, sign: f64| {
            if r != *scale && *scale > f64::NEG_INFINITY {
                rescale(s64, (sign * (r - *scale)).exp());
                st.iter_mut().zip(&*s64).for_each(|(a, &b)| *a = t(b));
            }
            *scale = r;
        };
        // Forward sweep: ∂q_t = Σ_{s≤t in chunk} (g'_t·v'_s) k_s + S_prev g'_t.
        for &(c0, l, r) in &chunks {
            if cancel::requested() {
                return;
            }
            rebase(&mut s64, &mut st, &mut scale, r, -1.0);
            let ks = match self.kmax {
                Some(_) => self.keys_under(c0, l, r, &mut kb),
                None => &self.k[c0 * m..(c0 + l) * m],
            };
            let kc = Mat::new(ks, l, m, m);
            augment(&self.v[c0 * dv..(c0 + l) * dv], dv, &mut vp[..l * w]);
            grad_prime(g, c0..c0 + l, dv, &mut gp[..l * w]);
            let (vpm, gpm) = (Mat::new(&vp, l, w, w), Mat::new(&gp, l, w, w));
            gemm(T::one(), gpm, vpm.t(), T::zero(), &mut a, l);
            tril(&mut a[..l * l], l);
            let dqc = &mut dq[c0 * m..(c0 + l) * m];
            gemm(T::one(), Mat::new(&a, l, l, l), kc, T::zero(), dqc, m);
            gemm(T::one(), gpm, Mat::new(&st, m, w, w).t(), T::one(), dqc, m);
            gemm(T::one(), kc.t(), vpm, T::zero(), &mut delta, w);
            accumulate(&mut s64, &mut st, &delta);
        }
        // Reverse sweep with R = Σ_{later} q g'ᵀ.
        s64.iter_mut().for_each(|x| *x = 0.0);
        st.iter_mut().for_each(|x| *x = T::zero());
        for &(c0, l, r) in chunks.iter().rev() {
            if cancel::requested() {
                return;
            }
            rebase(&mut s64, &mut st, &mut scale, r, 1.0);
            let ks = match self.kmax {
                Some(_) => self.keys_under(c0, l, r, &mut kb),
                None => &self.k[c0 * m..(c0 + l) * m],
            };
            let qc = Mat::new(&self.q[c0 * m..(c0 + l) * m], l, m, m);
            let kc = Mat::new(ks, l, m, m);
            augment(&self.v[c0 * dv..(c0 + l) * dv], dv, &mut vp[..l * w]);
            grad_prime(g, c0..c0 + l, dv, &mut gp[..l * w]);
            let (vpm, gpm) = (Mat::new(&vp, l, w, w), Mat::new(&gp, l, w, w));
            let rt = Mat::new(&st, m, w, w);
            // ∂k_s = Σ_{t≥s} (g'_t·v'_s) q_t + R v'_s
            gemm(T::one(), gpm, vpm.t(), T::zero(), &mut a, l);
            tril(&mut a[..l * l], l);
            let dkc = &mut dk[c0 * m..(c0 + l) * m];
            gemm(T::one(), Mat::new(&a, l, l, l).t(), qc, T::zero(), dkc, m);
            gemm(T::one(), vpm, rt.t(), T::one(), dkc, m);
            if let Some(kmax) = self.kmax {
                // the gradient of the given key row, which entered as k_s·exp(kmax_s − r)
                for (row, &top) in dkc.chunks_exact_mut(m).zip(&kmax[c0..]) {
                    let e = t::<T>((top - r).exp());
                    row.iter_mut().for_each(|x| *x = *x * e);
                }
            }
            // ∂v'_s = Σ_{t≥s} (q_t·k_s) g'_t + Rᵀ k_s
            gemm(T::one(), qc, kc.t(), T::zero(), &mut a, l);
            tril(&mut a[..l * l], l);
            gemm(
                T::one(),
                Mat::new(&a, l, l, l).t(),
                gpm,
                T::zero(),
                &mut dvp,
                w,
            );
            gemm(T::one(), kc, rt, T::one(), &mut dvp, w);
            for (dst, src) in dvo[c0 * dv..(c0 + l) * dv]
                .chunks_exact_mut(dv)
                .zip(dvp.chunks_exact(w))
            {
                dst.copy_from_slice(&src[..dv]);
            }
            gemm(T::one(), qc.t(), gpm, T::zero(), &mut delta, w);
            accumulate(&mut s64, &mut st, &delta);
        }
    }

    fn scan_backward(&self, g: &Grads<T>, dq: &mut [T], dk: &mut [T], dvo: &mut [T]) {
        let (n, m, dv, w) = (self.n, self.m, self.dv, self.dv + 1);
        let mut s = vec![0.0f64; m * w];
        let mut vf = vec![1.0f64; w];
        let mut gp = vec![T::zero(); w];
        let mut gf = vec![0.0f64; w];
        let load = |tok: usize, vf: &mut [f64], gp: &mut [T], gf: &mut [f64]| {
            vf[..dv]
                .iter_mut()
                .zip(&self.v[tok * dv..(tok + 1) * dv])
                .for_each(|(a, &b)| *a = f(b));
            grad_prime(g, tok..tok + 1, dv, gp);
            gf.iter_mut().zip(gp.iter()).for_each(|(a, &b)| *a = f(b));
        };
        for tok in 0..n {
            if tok % 256 == 0 && cancel::requested() {
                return;
            }
            load(tok, &mut vf, &mut gp, &mut gf);
            let k = &self.k[tok * m..(tok + 1) * m];
            for ((row, &ki), dqi) in s
                .chunks_exact_mut(w)
                .zip(k)
                .zip(&mut dq[tok * m..(tok + 1) * m])
            {
                let ki = f(ki);
                let mut acc = 0.0;
                for ((s, &vj), &gj) in row.iter_mut().zip(&vf).zip(&gf) {
                    *s += ki * vj;
                    acc += *s * gj;
                }
                *dqi = t(acc);
            }
        }
        s.iter_mut().for_each(|x| *x = 0.0);
        let mut dvf = vec![0.0f64; w];
        for tok in (0..n).rev() {
            if tok % 256 == 0 && cancel::requested() {
                return;
            }
            load(tok, &mut vf, &mut gp, &mut gf);
            let (q, k) = (
                &self.q[tok * m..(tok + 1) * m],
                &self.k[tok * m..(tok + 1) * m],
            );
            dvf.iter_mut().for_each(|x| *x = 0.0);
            for (((row, &qi), &ki), dki) in s
                .chunks_exact_mut(w)
                .zip(q)
                .zip(k)
                .zip(&mut dk[tok * m..(tok + 1) * m])
            {
                let (qi, ki) = (f(qi), f(ki));
                let mut acc = 0.0;
                for (((r, &gj), &vj), dvj) in row.iter_mut().zip(&gf).zip(&vf).zip(dvf.iter_mut()) {
                    *r += qi * gj;
                    acc += *r * vj;
                    *dvj += *r * ki;
                }
                *dki = t(acc);
            }
            for (o, &x) in dvo[tok * dv..(tok + 1) * dv].iter_mut().zip(&dvf) {
                *o = t(x);
            }
        }
    }
}

/// One head's outputs and optional state, numbered.
type HeadTask<'a, T> = (usize, ((&'a mut [T], &'a mut [T]), Option<HeadState<'a>>));

/// Multiply-adds below which a call runs on the calling thread.
const MIN_WORK: usize = 1 << 17;

/// Rows per block of the non-causal sums.
const BLOCK: usize = 256;

/// `Σ_rows aᵀ b` over row blocks, each block's product added into an f64 total.
fn sum_outer<T: Real>(a: &[T], ka: usize, b: &[T], kb: usize, scratch: &mut [T]) -> Vec<T> {
    let rows = a.len() / ka;
    let mut s64 = vec![0.0f64; ka * kb];
    let mut st = vec![T::zero(); ka * kb];
    for r0 in (0..rows).step_by(BLOCK) {
        let l = BLOCK.min(rows - r0);
        let am = Mat::new(&a[r0 * ka..(r0 + l) * ka], l, ka, ka);
        let bm = Mat::new(&b[r0 * kb..(r0 + l) * kb], l, kb, kb);
        gemm(T::one(), am.t(), bm, T::zero(), scratch, kb);
        accumulate(&mut s64, &mut st, scratch);
    }
    st
}

fn augmented<T: Real>(v: &[T], dv: usize) -> Vec<T> {
    let mut vp = vec![T::zero(); v.len() / dv * (dv + 1)];
    augment(v, dv, &mut vp);
    vp
}

/// A causal state: `kv` (`(bh, m, dv + 1)`, f64: per head `S` with `z` as its last column)
/// and per head the stabiliser `scale` of its sums (the sums of the unstabilised key
/// features are `exp(scale)·kv`; `−∞` for an empty state). Only the running maximum reads and
/// moves `scale`.
pub struct State<'a> {
    pub kv: &'a mut [f64],
    pub scale: &'a mut [f64],
}

/// One head's state: its sums and their stabiliser.
type HeadState<'a> = (&'a mut [f64], &'a mut f64);

/// The states, one per head, or fresh zero states.
fn states(state: Option<State>, bh: usize, size: usize) -> Result<Vec<Option<HeadState>>> {
    match state {
        Some(State { kv, scale }) => {
            check_len("state", kv.len(), bh * size)?;
            check_len("scale", scale.len(), bh)?;
            Ok(kv.chunks_exact_mut(size).zip(scale).map(Some).collect())
        }
        None => Ok((0..bh).map(|_| None).collect()),
    }
}

/// Causal linear attention; `state` (`(bh, m, dv + 1)`, f64), when given, is the initial state
/// and receives the final one.
pub fn causal_forward<T: Real>(
    x: &Inputs<T>,
    eps: f64,
    method: Method,
    state: Option<&mut [f64]>,
    out: Outputs<T>,
) -> Result<()> {
    // given features: no stabiliser to follow
    let mut scale = vec![0.0; x.dims.bh];
    let state = state.map(|kv| State {
        kv,
        scale: &mut scale,
    });
    causal_forward_mapped(x, None, eps, method, state, out)
}

/// [`causal_forward`] on key features each stabilised by its own largest logit `kmax`
/// (`(bh, n)`): under the running maximum of `kmax`, whose state (with its `scale`) continues
/// as [`causal_forward_mapped`]'s. The gradient road's form of the running maximum.
pub fn causal_forward_scaled<T: Real>(
    x: &Inputs<T>,
    kmax: &[f64],
    eps: f64,
    method: Method,
    state: Option<State>,
    out: Outputs<T>,
) -> Result<()> {
    check_len("kmax", kmax.len(), x.dims.bh * x.dims.nk)?;
    forward_any(x, Keys::Scaled(kmax), eps, method, state, out)
}

/// The query and key feature maps of [`causal_forward_mapped`].
pub type Maps<'a, T> = (&'a Spec<'a, T>, &'a Spec<'a, T>);

/// [`causal_forward`] on raw `q`, `k` (`dims.m` is their dimension `D`) mapped by `maps`
/// inside the pass (chunk by chunk where the fast path runs), so the feature arrays never exist
/// whole; the state has the maps' feature count. `maps = None` is [`causal_forward`].
///
/// Keys of the `exp`-family maps without a given offset are stabilised by the running maximum
/// of their logits (see the module doc), which the state carries in its `scale`.
pub fn causal_forward_mapped<T: Real>(
    x: &Inputs<T>,
    maps: Option<Maps<T>>,
    eps: f64,
    method: Method,
    state: Option<State>,
    out: Outputs<T>,
) -> Result<()> {
    let keys = maps.map_or(Keys::Given, Keys::Mapped);
    forward_any(x, keys, eps, method, state, out)
}

/// How a causal pass gets its features.
#[derive(Clone, Copy)]
enum Keys<'a, T> {
    /// Given features.
    Given,
    /// Given features, key rows stabilised by their own largest logits (`(bh, n)`).
    Scaled(&'a [f64]),
    /// Raw `q`, `k` mapped inside the pass.
    Mapped(Maps<'a, T>),
}

fn forward_any<T: Real>(
    x: &Inputs<T>,
    keys: Keys<T>,
    eps: f64,
    method: Method,
    state: Option<State>,
    out: Outputs<T>,
) -> Result<()> {
    let (maps, kmax_all) = match keys {
        Keys::Given => (None, None),
        Keys::Scaled(kmax) => (None, Some(kmax)),
        Keys::Mapped(maps) => (Some(maps), None),
    };
    x.check(true)?;
    check_eps(eps)?;
    let Dims {
        bh,
        nq: n,
        m: d,
        dv,
        ..
    } = x.dims;
    let m = match maps {
        None => d,
        Some((sq, sk)) => {
            for s in [sq, sk] {
                if s.d != d {
                    return Err(Error::value(
                        "q",
                        format!("must have the feature maps' dimension {}, got {d}", s.d),
                    ));
                }
                s.check(n * d)?;
            }
            if sq.out_dim() != sk.out_dim() {
                return Err(Error::value(
                    "feature_map",
                    "must give queries and keys the same number of features",
                ));
            }
            sq.out_dim()
        }
    };
    let w = dv + 1;
    check_len("o", out.o.len(), bh * n * dv)?;
    check_len("den", out.den.len(), bh * n)?;
    let states = states(state, bh, m * w)?;
    if n == 0 {
        return Ok(());
    }
    let mapper = maps.map(|(sq, sk)| Mapper::new(sq, sk));
    let run = |(b, ((o, den), state)): HeadTask<T>| -> Result<()> {
        cancel::check()?;
        let (q, k, v) = x.head(b);
        let (mut fresh, mut fresh_scale) = (Vec::new(), f64::NEG_INFINITY);
        let (s64, scale) = state.unwrap_or_else(|| {
            fresh = vec![0.0; m * w];
            (&mut fresh, &mut fresh_scale)
        });
        let given = kmax_all.map(|kmax| &kmax[b * n..(b + 1) * n]);
        // the fast f32 pass maps keys itself or takes them as they are
        if given.is_none() {
            if let Some(finite) = T::forward_fast(
                method,
                q,
                k,
                v,
                (n, m, dv),
                mapper.as_ref(),
                eps,
                (&mut *s64, &mut *scale),
                o,
                den,
            ) {
                return finite_or_err(finite);
            }
        }
        let (mut fq, mut fk, mut kmax);
        let (q, k, kmax) = match maps {
            None => (q, k, given),
            Some((sq, sk)) => {
                fq = vec![T::zero(); n * m];
                sq.forward(q, &mut fq)?;
                fk = vec![T::zero(); n * m];
                if sk.running() {
                    kmax = vec![0.0; n];
                    sk.forward_row_max(k, &mut fk, &mut kmax)?;
                    (&fq[..], &fk[..], Some(&kmax[..]))
                } else {
                    sk.forward(k, &mut fk)?;
                    (&fq[..], &fk[..], None)
                }
            }
        };
        let head = Head {
            n,
            m,
            dv,
            q,
            k,
            v,
            kmax,
        };
        let st = (s64, scale);
        finite_or_err(match method {
            Method::Chunked(c) => head.chunked_forward(c, eps, st, o, den),
            Method::Scan => head.scan_forward(eps, st, o, den),
            Method::Quadratic => head.quadratic_forward(eps, st, o, den),
        })
    };
    if bh * n * m * w < MIN_WORK {
        // Decoding a token: handing work to the pool's threads costs more than the work.
        out.o
            .chunks_mut(n * dv)
            .zip(out.den.chunks_mut(n))
            .zip(states)
            .enumerate()
            .try_for_each(run)?;
    } else {
        out.o
            .par_chunks_mut(n * dv)
            .zip(out.den.par_chunks_mut(n))
            .zip(states.into_par_iter())
            .enumerate()
            .try_for_each(run)?;
    }
    cancel::check() // heads cut short by an interrupt returned early
}

fn finite_or_err(finite: bool) -> Result<()> {
    if finite {
        Ok(())
    } else {
        Err(Error::value(
            "v",
            "must be finite for method='chunked' (use method='scan' to let NaN/inf propagate)",
        ))
    }
}

fn check_grads<T: Real>(d: Dims, g: &Grads<T>, gout: &GradsOut<T>) -> Result<()> {
    check_len("o", g.o.len(), d.bh * d.nq * d.dv)?;
    check_len("grad_o", g.go.len(), d.bh * d.nq * d.dv)?;
    check_len("den", g.den.len(), d.bh * d.nq)?;
    check_len("grad_den", g.gden.len(), d.bh * d.nq)?;
    check_len("dq", gout.dq.len(), d.bh * d.nq * d.m)?;
    check_len("dk", gout.dk.len(), d.bh * d.nk * d.m)?;
    check_len("dv", gout.dv.len(), d.bh * d.nk * d.dv)
}

/// Gradients of [`causal_forward`] (from a zero initial state) w.r.t. `q`, `k`, `v`; with
/// `kmax`, of [`causal_forward_scaled`] (the stabilisers are constants: the outputs do not
/// depend on them). Interruptible: returns the interrupt error.
pub fn causal_backward<T: Real>(
    x: &Inputs<T>,
    kmax: Option<&[f64]>,
    method: Method,
    g: &Grads<T>,
    gout: GradsOut<T>,
) -> Result<()> {
    x.check(true)?;
    let d = x.dims;
    check_grads(d, g, &gout)?;
    let Dims { nq: n, m, dv, .. } = d;
    if let Some(kmax) = kmax {
        check_len("kmax", kmax.len(), d.bh * n)?;
    }
    if n == 0 {
        return Ok(());
    }
    gout.dq
        .par_chunks_mut(n * m)
        .zip(gout.dk.par_chunks_mut(n * m))
        .zip(gout.dv.par_chunks_mut(n * dv))
        .enumerate()
        .for_each(|(b, ((dq, dk), dvo))| {
            if cancel::requested() {
                return;
            }
            let (q, k, v) = x.head(b);
            let kmax = kmax.map(|kmax| &kmax[b * n..(b + 1) * n]);
            let head = Head {
                n,
                m,
                dv,
                q,
                k,
                v,
                kmax,
            };
            let rows = b * n..(b + 1) * n;
            let gh = Grads {
                o: &g.o[rows.start * dv..rows.end * dv],
                den: &g.den[rows.clone()],
                go: &g.go[rows.start * dv..rows.end * dv],
                gden: &g.gden[rows],
                eps: g.eps,
            };
            if kmax.is_none()
                && T::backward_fast(method, q, k, v, (n, m, dv), &gh, dq, dk, dvo).is_some()
            {
                return;
            }
            match (method, kmax) {
                (Method::Chunked(c), _) => head.chunked_backward(c, &gh, dq, dk, dvo),
                (_, Some(kmax)) => {
                    // The same function, differentiated by the chunked schedule; only `den`
                    // is under another stabiliser (the running maximum at each query).
                    let (den, gden) = chunk_units(&head.chunks(DEFAULT_CHUNK), kmax, &gh);
                    let gh = Grads {
                        den: &den,
                        gden: &gden,
                        ..gh
                    };
                    head.chunked_backward(DEFAULT_CHUNK, &gh, dq, dk, dvo)
                }
                (Method::Scan | Method::Quadratic, None) => head.scan_backward(&gh, dq, dk, dvo),
            }
        });
    cancel::check() // heads cut short by an interrupt returned early
}

/// The chunk length of a backward under the running maximum for the unchunked methods.
const DEFAULT_CHUNK: usize = 64;

/// `den` and its gradient of a scan or quadratic pass (whose query `t` takes the running
/// maximum `c_t` of `kmax` as stabiliser) for `chunks`' stabilisers `r ≤ c_t`: `den·e^(c_t−r)`
/// and `∂den·e^(r−c_t)` (`c_t − r ≤ SLACK`: a chunk ends before a key more than `SLACK` above
/// its `r`).
fn chunk_units<T: Real>(
    chunks: &[(usize, usize, f64)],
    kmax: &[f64],
    g: &Grads<T>,
) -> (Vec<T>, Vec<T>) {
    let (mut den, mut gden) = (g.den.to_vec(), g.gden.to_vec());
    let mut top = f64::NEG_INFINITY;
    for &(c0, l, r) in chunks {
        for i in c0..c0 + l {
            top = top.max(kmax[i]);
            let e = (top - r).exp();
            den[i] = t(f(den[i]) * e);
            gden[i] = t(f(gden[i]) / e);
        }
    }
    (den, gden)
}

/// Non-causal linear attention: every query sees every key (`nq` and `nk` may differ).
pub fn non_causal_forward<T: Real>(x: &Inputs<T>, eps: f64, out: Outputs<T>) -> Result<()> {
    x.check(false)?;
    check_eps(eps)?;
    let Dims { bh, nq, m, dv, .. } = x.dims;
    let w = dv + 1;
    check_len("o", out.o.len(), bh * nq * dv)?;
    check_len("den", out.den.len(), bh * nq)?;
    if nq == 0 {
        return Ok(());
    }
    out.o
        .par_chunks_mut(nq * dv)
        .zip(out.den.par_chunks_mut(nq))
        .enumerate()
        .for_each(|(b, (o, den))| {
            let (q, k, v) = x.head(b);
            let mut scratch = vec![T::zero(); m * w];
            let st = sum_outer(k, m, &augmented(v, dv), w, &mut scratch);
            let mut y = vec![T::zero(); BLOCK.min(nq) * w];
            for r0 in (0..nq).step_by(BLOCK) {
                let l = BLOCK.min(nq - r0);
                let qm = Mat::new(&q[r0 * m..(r0 + l) * m], l, m, m);
                gemm(T::one(), qm, Mat::new(&st, m, w, w), T::zero(), &mut y, w);
                normalise(
                    &y[..l * w],
                    dv,
                    eps,
                    &mut o[r0 * dv..(r0 + l) * dv],
                    &mut den[r0..r0 + l],
                );
            }
        });
    Ok(())
}

/// Gradients of [`non_causal_forward`] w.r.t. `q`, `k`, `v`.
pub fn non_causal_backward<T: Real>(x: &Inputs<T>, g: &Grads<T>, gout: GradsOut<T>) -> Result<()> {
    x.check(false)?;
    let d = x.dims;
    check_grads(d, g, &gout)?;
    let Dims { nq, nk, m, dv, .. } = d;
    let w = dv + 1;
    if nq == 0 && nk == 0 {
        return Ok(());
    }
    gout.dq
        .par_chunks_mut((nq * m).max(1))
        .zip(gout.dk.par_chunks_mut((nk * m).max(1)))
        .zip(gout.dv.par_chunks_mut((nk * dv).max(1)))
        .enumerate()
        .for_each(|(b, ((dq, dk), dvo))| {
            let (q, k, v) = x.head(b);
            let vp = augmented(v, dv);
            let mut gp = vec![T::zero(); nq * w];
            let rows = b * nq..(b + 1) * nq;
            let gh = Grads {
                o: &g.o[rows.start * dv..rows.end * dv],
                den: &g.den[rows.clone()],
                go: &g.go[rows.start * dv..rows.end * dv],
                gden: &g.gden[rows],
                eps: g.eps,
            };
            grad_prime(&gh, 0..nq, dv, &mut gp);
            let mut scratch = vec![T::zero(); m * w];
            let st = sum_outer(k, m, &vp, w, &mut scratch);
            let gt = sum_outer(q, m, &gp, w, &mut scratch);
            let (stm, gtm) = (Mat::new(&st, m, w, w), Mat::new(&gt, m, w, w));
            gemm(
                T::one(),
                Mat::new(&gp, nq, w, w),
                stm.t(),
                T::zero(),
                &mut dq[..nq * m],
                m,
            );
            gemm(
                T::one(),
                Mat::new(&vp, nk, w, w),
                gtm.t(),
                T::zero(),
                &mut dk[..nk * m],
                m,
            );
            let mut dvp = vec![T::zero(); nk * w];
            gemm(T::one(), Mat::new(k, nk, m, m), gtm, T::zero(), &mut dvp, w);
            for (dst, src) in dvo[..nk * dv].chunks_exact_mut(dv).zip(dvp.chunks_exact(w)) {
                dst.copy_from_slice(&src[..dv]);
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    fn random(n: usize, seed: u64, positive: bool) -> Vec<f64> {
        let mut rng = crate::rng::stream(seed, 0);
        (0..n)
            .map(|_| {
                let x: f64 = rng.random::<f64>();
                if positive {
                    x + 0.05
                } else {
                    2.0 * x - 1.0
                }
            })
            .collect()
    }

    struct Case {
        dims: Dims,
        q: Vec<f64>,
        k: Vec<f64>,
        v: Vec<f64>,
    }

    fn case(bh: usize, n: usize, m: usize, dv: usize) -> Case {
        Case {
            dims: Dims {
                bh,
                nq: n,
                nk: n,
                m,
                dv,
            },
            q: random(bh * n * m, 1, true),
            k: random(bh * n * m, 2, true),
            v: random(bh * n * dv, 3, false),
        }
    }

    impl Case {
        fn inputs(&self) -> Inputs<'_, f64> {
            Inputs {
                dims: self.dims,
                q: &self.q,
                k: &self.k,
                v: &self.v,
            }
        }

        fn run(&self, method: Method, state: Option<&mut [f64]>) -> (Vec<f64>, Vec<f64>) {
            let d = self.dims;
            let mut o = vec![0.0; d.bh * d.nq * d.dv];
            let mut den = vec![0.0; d.bh * d.nq];
            let out = Outputs {
                o: &mut o,
                den: &mut den,
            };
            causal_forward(&self.inputs(), 1e-6, method, state, out).unwrap();
            (o, den)
        }
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn forms_agree_and_states_continue() {
        let c = case(3, 37, 7, 6);
        let (reference, _) = c.run(Method::Quadratic, None);
        for method in [
            Method::Scan,
            Method::Chunked(1),
            Method::Chunked(5),
            Method::Chunked(64),
        ] {
            let (o, _) = c.run(method, None);
            assert!(max_diff(&o, &reference) < 1e-12, "{method:?}");
        }
        // prefix then suffix through the state equals one pass
        let (t0, d) = (20, c.dims);
        let split = |x: &[f64], w: usize, lo: usize, hi: usize| -> Vec<f64> {
            x.chunks(d.nq * w)
                .flat_map(|h| h[lo * w..hi * w].to_vec())
                .collect()
        };
        let part = |lo: usize, hi: usize| Case {
            dims: Dims {
                nq: hi - lo,
                nk: hi - lo,
                ..d
            },
            q: split(&c.q, d.m, lo, hi),
            k: split(&c.k, d.m, lo, hi),
            v: split(&c.v, d.dv, lo, hi),
        };
        let mut state = vec![0.0; d.bh * d.m * (d.dv + 1)];
        let (first, _) = part(0, t0).run(Method::Chunked(8), Some(&mut state));
        let (second, _) = part(t0, d.nq).run(Method::Scan, Some(&mut state));
        assert!(max_diff(&split(&reference, d.dv, 0, t0), &first) < 1e-12);
        assert!(max_diff(&split(&reference, d.dv, t0, d.nq), &second) < 1e-12);
    }

    /// Asserts `analytic` (the gradients w.r.t. `q`, `k`, `v`) against central differences
    /// of `loss`.
    fn check_gradients(c: &Case, loss: impl Fn(&Case) -> f64, analytic: [&[f64]; 3], what: &str) {
        for (which, analytic) in analytic.into_iter().enumerate() {
            for i in 0..analytic.len() {
                let bump = |h: f64| {
                    let mut p = Case {
                        q: c.q.clone(),
                        k: c.k.clone(),
                        v: c.v.clone(),
                        ..*c
                    };
                    [&mut p.q, &mut p.k, &mut p.v][which][i] += h;
                    loss(&p)
                };
                let fd = (bump(1e-6) - bump(-1e-6)) / 2e-6;
                assert!(
                    (analytic[i] - fd).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{what} input {which}[{i}]: {} vs {fd}",
                    analytic[i]
                );
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        // causal with given features, with features under the running maximum of logits that
        // jump by more than SLACK (the chunked passes cut there) in both heads, and non-causal
        let c = case(2, 9, 3, 2);
        let d = c.dims;
        let kmax = [
            0.0, 1.0, 12.0, 3.0, 30.0, 2.0, 31.0, 45.0, 0.0, //
            -5.0, 20.0, 19.0, 21.0, 40.0, 0.0, 1.0, 50.0, 50.5,
        ];
        let go = random(d.bh * d.nq * d.dv, 4, false);
        let gden = random(d.bh * d.nq, 5, false);
        let methods = [Method::Chunked(4), Method::Scan, Method::Quadratic];
        for (causal, kmax) in [(true, None), (true, Some(&kmax[..])), (false, None)] {
            for method in methods.into_iter().take(if causal { 3 } else { 1 }) {
                let loss = |c: &Case| {
                    let mut o = vec![0.0; go.len()];
                    let mut den = vec![0.0; gden.len()];
                    let out = Outputs {
                        o: &mut o,
                        den: &mut den,
                    };
                    match (causal, kmax) {
                        (false, _) => non_causal_forward(&c.inputs(), 1e-3, out),
                        (true, None) => causal_forward(&c.inputs(), 1e-3, method, None, out),
                        (true, Some(kmax)) => {
                            causal_forward_scaled(&c.inputs(), kmax, 1e-3, method, None, out)
                        }
                    }
                    .unwrap();
                    let l: f64 = o.iter().zip(&go).map(|(a, b)| a * b).sum();
                    let l = l + den.iter().zip(&gden).map(|(a, b)| a * b).sum::<f64>();
                    (l, o, den)
                };
                let (_, o, den) = loss(&c);
                let grads = Grads {
                    o: &o,
                    den: &den,
                    go: &go,
                    gden: &gden,
                    eps: 1e-3,
                };
                let mut dq = vec![0.0; c.q.len()];
                let mut dk = vec![0.0; c.k.len()];
                let mut dv = vec![0.0; c.v.len()];
                let gout = GradsOut {
                    dq: &mut dq,
                    dk: &mut dk,
                    dv: &mut dv,
                };
                if causal {
                    causal_backward(&c.inputs(), kmax, method, &grads, gout).unwrap();
                } else {
                    non_causal_backward(&c.inputs(), &grads, gout).unwrap();
                }
                let what = format!("causal={causal} kmax={} {method:?}", kmax.is_some());
                check_gradients(&c, |p| loss(p).0, [&dq, &dk, &dv], &what);
            }
        }
    }

    #[test]
    fn the_running_maximum_is_exact_causal_and_continues() {
        use crate::attention::features::FeatureMap;
        let (bh, n, d, mp, dv) = (2, 50, 5, 7, 3);
        let w = random(mp * d, 7, false);
        let (q, mut k, v) = (
            random(bh * n * d, 8, false),
            random(bh * n * d, 9, false),
            random(bh * n * dv, 10, false),
        );
        // keys growing along the sequence: the maximum rises again and again, cutting chunks
        for (i, x) in k.iter_mut().enumerate() {
            *x *= 1.0 + ((i / d) % n) as f64 / 5.0;
        }
        for map in [
            FeatureMap::Positive,
            FeatureMap::Hyperbolic,
            FeatureMap::Exp,
        ] {
            let spec = |is_query, offset| Spec {
                map,
                d,
                projection: Some((&w[..], mp)),
                is_query,
                offset,
            };
            let (sq, sk) = (spec(true, None), spec(false, None));
            let m = sq.out_dim();
            let dims = |n| Dims {
                bh,
                nq: n,
                nk: n,
                m: d,
                dv,
            };
            let run = |method, (q, k, v): (&[f64], &[f64], &[f64]), st: Option<State>| {
                let n = v.len() / bh / dv;
                let (mut o, mut den) = (vec![0.0; bh * n * dv], vec![0.0; bh * n]);
                let x = Inputs {
                    dims: dims(n),
                    q,
                    k,
                    v,
                };
                let out = Outputs {
                    o: &mut o,
                    den: &mut den,
                };
                causal_forward_mapped(&x, Some((&sq, &sk)), 1e-6, method, st, out).unwrap();
                o
            };
            // the reference: features under one constant offset, given to the plain form
            let fixed = spec(false, Some(40.0));
            let (mut fq, mut fk) = (vec![0.0; bh * n * m], vec![0.0; bh * n * m]);
            sq.forward(&q, &mut fq).unwrap();
            fixed.forward(&k, &mut fk).unwrap();
            let c = Case {
                dims: Dims { m, ..dims(n) },
                q: fq,
                k: fk,
                v: v.clone(),
            };
            let (want, _) = c.run(Method::Quadratic, None);
            let top = want.iter().fold(0.0f64, |t, x| t.max(x.abs()));
            for method in [
                Method::Quadratic,
                Method::Scan,
                Method::Chunked(1),
                Method::Chunked(8),
            ] {
                let got = run(method, (&q, &k, &v), None);
                assert!(max_diff(&got, &want) < 1e-10 * top, "{map:?} {method:?}");
                // a later key, much larger, leaves every earlier output bitwise equal
                let mut k2 = k.clone();
                k2.chunks_mut(n * d).for_each(|h| h[40 * d] = 30.0);
                let edited = run(method, (&q, &k2, &v), None);
                for (a, b) in got.chunks(n * dv).zip(edited.chunks(n * dv)) {
                    assert_eq!(a[..40 * dv], b[..40 * dv], "{map:?} {method:?}");
                }
            }
            // a prefix, then the rest from the state and its stabiliser
            let t0 = 23;
            let part = |x: &[f64], w: usize, lo: usize, hi: usize| -> Vec<f64> {
                x.chunks(n * w)
                    .flat_map(|h| h[lo * w..hi * w].to_vec())
                    .collect()
            };
            let (mut kv, mut scale) = (vec![0.0; bh * m * (dv + 1)], vec![f64::NEG_INFINITY; bh]);
            let mut got = Vec::new();
            for (lo, hi, method) in [(0, t0, Method::Chunked(8)), (t0, n, Method::Scan)] {
                let st = State {
                    kv: &mut kv,
                    scale: &mut scale,
                };
                let x = (
                    part(&q, d, lo, hi),
                    part(&k, d, lo, hi),
                    part(&v, dv, lo, hi),
                );
                got.push(run(method, (&x.0, &x.1, &x.2), Some(st)));
            }
            let whole = [part(&want, dv, 0, t0), part(&want, dv, t0, n)];
            for (g, w) in got.iter().zip(&whole) {
                assert!(max_diff(g, w) < 1e-10 * top, "{map:?} continued");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let c = case(1, 4, 2, 2);
        let mut o = vec![0.0; 8];
        let mut den = vec![0.0; 4];
        let mut x = c.inputs();
        x.dims.nk = 3;
        let out = Outputs {
            o: &mut o,
            den: &mut den,
        };
        assert!(causal_forward(&x, 1e-6, Method::Scan, None, out).is_err());
        assert!(Method::parse("chunked", 0).is_err());
        assert!(Method::parse("fast", 4).is_err());
        let out = Outputs {
            o: &mut o,
            den: &mut den,
        };
        assert!(causal_forward(&c.inputs(), f64::NAN, Method::Scan, None, out).is_err());
    }
}
