//! Feature maps φ: rows of `x` (length `D`) to non-negative features (length `M`).
//!
//! FAVOR+ (`Positive`): `φ(x) = exp(Ωx' − |x'|²/2 − c)/√M` with `x' = x·D^(−1/4)`, so that
//! `E[φ(q)·φ(k)] = exp(q·k/√D)`. `Hyperbolic` uses the antithetic pair `±Ωx'` (2M features
//! over `√(2M)`). The stabiliser `c`:
//! * queries: the per-row max of the exponent. It cancels in the attention ratio, and depends
//!   on that row only, so it is causal.
//! * keys: one constant for every key, by default `max_i |ω_i|²/2`. Since
//!   `ωᵀk' − |k'|²/2 = |ω|²/2 − |k' − ω|²/2 ≤ |ω|²/2`, every key feature is then in (0, 1]
//!   whatever the key's norm: no overflow, and no dependence on other keys (the global max of
//!   google-research / performer-pytorch leaks future keys into past outputs). The bound is
//!   about `D/2` above a typical key logit, so key features are around `e^(−D/2)`: harmless
//!   now that `eps` is relative (see `forms`), but they underflow f32 for large inputs. The
//!   causal passes that map inside the kernel ([`Mapper`]) therefore use the running maximum
//!   of the key logits instead (see `forms`), and non-causal attention the sequence maximum.
//!
//! `Exp` (Su, kexue.fm/archives/8338): `φ(x) = exp(u − c)` on `u = Ωx` (or `u = x`), with the
//! same per-row query max and a constant key offset (default 0). `EluPlusOne`, `Relu` and
//! `Identity` apply to `u` elementwise.
//!
//! Backward treats `c` as a constant: for queries the output does not depend on it (up to
//! `eps`), for keys it is one. Every derivative is read off `φ` itself, so nothing else is saved.

use rayon::prelude::*;

use super::gemm::{gemm, Mat};
use crate::num::{lanes, Real};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureMap {
    Positive,
    Hyperbolic,
    Exp,
    EluPlusOne,
    Relu,
    Identity,
}

impl std::str::FromStr for FeatureMap {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Ok(match name {
            "favor+" => FeatureMap::Positive,
            "favor+hyperbolic" => FeatureMap::Hyperbolic,
            "exp" => FeatureMap::Exp,
            "elu+1" => FeatureMap::EluPlusOne,
            "relu" => FeatureMap::Relu,
            "identity" => FeatureMap::Identity,
            _ => {
                return Err(Error::value(
                    "feature_map",
                    format!("must be one of {}, got {name:?}", Self::NAMES),
                ))
            }
        })
    }
}

impl FeatureMap {
    pub const NAMES: &'static str =
        "'favor+', 'favor+hyperbolic', 'exp', 'elu+1', 'relu' or 'identity'";

    fn is_favor(self) -> bool {
        matches!(self, FeatureMap::Positive | FeatureMap::Hyperbolic)
    }

    /// Features per row, from the projection's rows `m` (or `D` without a projection).
    pub fn out_dim(self, m: usize) -> usize {
        if self == FeatureMap::Hyperbolic {
            2 * m
        } else {
            m
        }
    }
}

/// A feature map with its projection `Ω` (`m × d`, row-major) when it has one.
pub struct Spec<'a, T> {
    pub map: FeatureMap,
    pub d: usize,
    pub projection: Option<(&'a [T], usize)>,
    pub is_query: bool,
    /// The key offset `c`; `None` picks the default (see the module doc).
    pub offset: Option<f64>,
}

fn argmax<T: Real>(x: &[T]) -> usize {
    (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best })
}

/// Rows per parallel task.
const ROWS: usize = 64;

/// Per-map constants of [`Spec::row`].
#[derive(Clone, Copy)]
pub struct RowConsts<T> {
    offset: T,
    half_scale2: T,
    norm: T,
}

/// A query map and a key map prepared for use inside a causal pass (or kept by a decoder):
/// their row constants and `scale·Ωᵀ`, computed once rather than per head or token.
pub struct Mapper<T> {
    maps: [FeatureMap; 2],
    consts: [RowConsts<T>; 2],
    /// `scale·Ωᵀ` (`d × mp`), `None` without a projection.
    pub(crate) wt: Option<Vec<T>>,
    pub(crate) d: usize,
    /// Features per row of the projection (`d` without one).
    pub(crate) mp: usize,
    /// Features per mapped row.
    pub(crate) m: usize,
    /// Whether keys take the running maximum of their logits as stabiliser.
    running: bool,
}

impl<T: Real> Mapper<T> {
    pub fn new(q: &Spec<T>, k: &Spec<T>) -> Self {
        Mapper {
            maps: [q.map, k.map],
            consts: [q.consts(), k.consts()],
            wt: q.projection_t(),
            d: q.d,
            mp: q.m(),
            m: q.out_dim(),
            running: k.running(),
        }
    }

    /// Whether keys are stabilised by the running maximum of their logits (the `exp`-family
    /// maps without a user-given key offset): the pass then calls [`Mapper::key_max`] and
    /// [`Mapper::key_row`] rather than [`Mapper::row`] for keys.
    pub(crate) fn running(&self) -> bool {
        self.running
    }

    /// The largest logit of one key row (from its projection `u` and the row `x`), and the
    /// row's own part of the shift of its exponents (FAVOR+: `|x'|²/2`; `exp`: 0).
    #[inline(always)]
    pub(crate) fn key_max(&self, u: &[T], x: &[T]) -> (T, T) {
        key_max(self.maps[1], u, x, &self.consts[1])
    }

    /// φ of one key row with the stabiliser `c` in place of the key offset, from its
    /// projection `u` and its own shift (from [`Mapper::key_max`]).
    #[inline(always)]
    pub(crate) fn key_row(&self, u: &[T], own: T, c: T, o: &mut [T]) {
        key_row(self.maps[1], u, own + c, &self.consts[1], o);
    }

    /// φ of one row of side `side` (`0` queries, `1` keys) from its projection `u` and the
    /// row `x` itself.
    #[inline(always)]
    pub(crate) fn row(&self, side: usize, u: &[T], x: &[T], o: &mut [T]) {
        row(self.maps[side], side == 0, u, x, o, &self.consts[side]);
    }
}

impl<T: Real> Spec<'_, T> {
    fn m(&self) -> usize {
        self.projection.map_or(self.d, |(_, m)| m)
    }

    /// Whether these are keys stabilised by a data-dependent maximum of their logits (the
    /// `exp`-family maps without a given offset).
    pub fn running(&self) -> bool {
        !self.is_query
            && self.offset.is_none()
            && matches!(
                self.map,
                FeatureMap::Positive | FeatureMap::Hyperbolic | FeatureMap::Exp
            )
    }

    /// Key features each stabilised by its own row's largest logit, which goes to `maxes`
    /// (one per row): row `r`'s features times `exp(maxes[r] − c)` are its features for the
    /// stabiliser `c`. Only for [`Spec::running`] keys.
    pub fn forward_row_max(&self, x: &[T], out: &mut [T], maxes: &mut [f64]) -> Result<()> {
        let rows = self.check(x.len())?;
        let (m, f) = (self.m(), self.out_dim());
        if out.len() != rows * f || maxes.len() != rows {
            return Err(Error::value("out", format!("must have {rows} rows")));
        }
        let consts = self.consts();
        let block = |((o, x), mx): ((&mut [T], &[T]), &mut [f64])| {
            let n = x.len() / self.d;
            let mut u = vec![T::zero(); n * m];
            self.project(x, n, &mut u);
            let rows = o.chunks_exact_mut(f).zip(u.chunks_exact(m));
            for (((o, u), x), mx) in rows.zip(x.chunks_exact(self.d)).zip(mx) {
                let (c, own) = key_max(self.map, u, x, &consts);
                *mx = c.to_f64().unwrap_or(f64::NAN);
                key_row(self.map, u, own + c, &consts, o);
            }
        };
        out.par_chunks_mut(ROWS * f)
            .zip(x.par_chunks(ROWS * self.d))
            .zip(maxes.par_chunks_mut(ROWS))
            .for_each(block);
        Ok(())
    }

    pub fn out_dim(&self) -> usize {
        self.map.out_dim(self.m())
    }

    pub(crate) fn check(&self, x_len: usize) -> Result<usize> {
        if self.d == 0 {
            return Err(Error::value("x", "must have a non-empty last dimension"));
        }
        if !x_len.is_multiple_of(self.d) {
            return Err(Error::value(
                "x",
                format!("must have {x_len} elements divisible by D={}", self.d),
            ));
        }
        match self.projection {
            None if self.map.is_favor() => Err(Error::value(
                "projection",
                "is required by the FAVOR+ feature maps",
            )),
            Some((_, 0)) => Err(Error::value(
                "projection",
                "must have a positive number of features (rows)",
            )),
            Some((w, m)) if w.len() != m * self.d => Err(Error::value(
                "projection",
                format!("must have shape (m, {}), got {} elements", self.d, w.len()),
            )),
            _ => Ok(x_len / self.d),
        }
    }

    fn offset(&self) -> T {
        let c = match (self.offset, self.projection) {
            (Some(c), _) => c,
            (None, Some((w, _))) if self.map.is_favor() => {
                w.chunks_exact(self.d)
                    .map(|r| {
                        let s = lanes(r, T::zero(), |a, x| a + x * x, |a, b| a + b);
                        s.to_f64().unwrap_or(f64::NAN)
                    })
                    .fold(0.0, f64::max)
                    / 2.0
            }
            _ => 0.0,
        };
        T::from(c).unwrap_or_else(T::zero)
    }

    /// `u = scale·x·Ωᵀ` for a block of rows (or `x` itself without a projection).
    fn project(&self, x: &[T], rows: usize, u: &mut [T]) {
        match self.projection {
            Some((w, m)) => gemm(
                self.scale(),
                Mat::new(x, rows, self.d, self.d),
                Mat::new(w, m, self.d, self.d).t(),
                T::zero(),
                u,
                m,
            ),
            None => u.copy_from_slice(x),
        }
    }

    /// The constants of [`Self::row`]: the key offset, `D^(−1/2)/2` and `1/√features`.
    pub(crate) fn consts(&self) -> RowConsts<T> {
        RowConsts {
            // queries never use it (their shift is their own max)
            offset: if self.is_query {
                T::zero()
            } else {
                self.offset()
            },
            half_scale2: T::from(0.5 / (self.d as f64).sqrt()).unwrap_or_else(T::zero),
            norm: T::from(1.0 / (self.out_dim() as f64).sqrt()).unwrap_or_else(T::one),
        }
    }

    /// `scale·Ωᵀ` (`d × m`, row-major), the right-hand side of the projection, or `None`
    /// without a projection.
    pub(crate) fn projection_t(&self) -> Option<Vec<T>> {
        let (w, m) = self.projection?;
        let scale = self.scale();
        let mut wt = T::transposed(w, m, self.d);
        wt.iter_mut().for_each(|x| *x = *x * scale);
        Some(wt)
    }

    fn scale(&self) -> T {
        if self.map.is_favor() {
            T::from((self.d as f64).powf(-0.25)).unwrap_or_else(T::one)
        } else {
            T::one()
        }
    }

    /// Writes φ of every row of `x` into `out` (`rows × out_dim`).
    pub fn forward(&self, x: &[T], out: &mut [T]) -> Result<()> {
        let rows = self.check(x.len())?;
        let (m, f) = (self.m(), self.out_dim());
        if out.len() != rows * f {
            return Err(Error::value(
                "out",
                format!("must have {} elements", rows * f),
            ));
        }
        let consts = self.consts();
        let block = |(o, x): (&mut [T], &[T])| {
            let n = x.len() / self.d;
            let mut u = vec![T::zero(); n * m];
            self.project(x, n, &mut u);
            for ((o, u), x) in o
                .chunks_exact_mut(f)
                .zip(u.chunks_exact(m))
                .zip(x.chunks_exact(self.d))
            {
                self.row(u, x, o, &consts);
            }
        };
        if rows <= ROWS {
            // one block (decoding): no hand-off to the pool's threads
            block((out, x));
        } else {
            out.par_chunks_mut(ROWS * f)
                .zip(x.par_chunks(ROWS * self.d))
                .for_each(block);
        }
        Ok(())
    }

    /// φ of one row from its projection `u` (and the row `x` itself, for the FAVOR+ key norm).
    #[inline(always)]
    fn row(&self, u: &[T], x: &[T], o: &mut [T], c: &RowConsts<T>) {
        row(self.map, self.is_query, u, x, o, c);
    }

    /// The vector-Jacobian product: `dx` from `x`, `φ(x)` and `grad = ∂L/∂φ`.
    pub fn backward(&self, x: &[T], phi: &[T], grad: &[T], dx: &mut [T]) -> Result<()> {
        let rows = self.check(x.len())?;
        let (m, f) = (self.m(), self.out_dim());
        for (name, len, want) in [
            ("phi", phi.len(), rows * f),
            ("grad", grad.len(), rows * f),
            ("dx", dx.len(), x.len()),
        ] {
            if len != want {
                return Err(Error::value(
                    name,
                    format!("must have {want} elements, got {len}"),
                ));
            }
        }
        let favor_scale = T::from((self.d as f64).powf(-0.25)).unwrap();
        dx.par_chunks_mut(ROWS * self.d)
            .zip(x.par_chunks(ROWS * self.d))
            .zip(phi.par_chunks(ROWS * f).zip(grad.par_chunks(ROWS * f)))
            .for_each(|((dx, x), (phi, grad))| {
                let n = x.len() / self.d;
                // du = ∂L/∂u, and for FAVOR+ s = Σ_i ∂L/∂u_i^± (the |x'|²/2 term's weight).
                let mut du = vec![T::zero(); n * m];
                let mut s = vec![T::zero(); n];
                for (((du, s), phi), g) in du
                    .chunks_exact_mut(m)
                    .zip(s.iter_mut())
                    .zip(phi.chunks_exact(f))
                    .zip(grad.chunks_exact(f))
                {
                    match self.map {
                        FeatureMap::Positive | FeatureMap::Exp => {
                            du.iter_mut()
                                .zip(phi.iter().zip(g))
                                .for_each(|(d, (&p, &g))| *d = p * g);
                            *s = du.iter().fold(T::zero(), |a, &b| a + b);
                            if self.is_query {
                                // the subtracted max is u at the largest feature
                                du[argmax(phi)] = du[argmax(phi)] - *s;
                                *s = T::zero();
                            }
                        }
                        FeatureMap::Hyperbolic => {
                            let (pp, pm) = phi.split_at(m);
                            let (gp, gm) = g.split_at(m);
                            let mut total = T::zero();
                            for i in 0..m {
                                let (a, b) = (pp[i] * gp[i], pm[i] * gm[i]);
                                du[i] = a - b;
                                total = total + a + b;
                            }
                            *s = total;
                            if self.is_query {
                                // the subtracted max is |u_i| = ±u_i at the largest feature
                                let i = argmax(phi);
                                let (i, sign) = if i < m {
                                    (i, T::one())
                                } else {
                                    (i - m, -T::one())
                                };
                                du[i] = du[i] - sign * total;
                                *s = T::zero();
                            }
                        }
                        FeatureMap::EluPlusOne => du
                            .iter_mut()
                            .zip(phi.iter().zip(g))
                            .for_each(|(d, (&p, &g))| *d = if p > T::one() { g } else { g * p }),
                        FeatureMap::Relu => {
                            du.iter_mut()
                                .zip(phi.iter().zip(g))
                                .for_each(|(d, (&p, &g))| {
                                    *d = if p > T::zero() { g } else { T::zero() }
                                })
                        }
                        FeatureMap::Identity => du.copy_from_slice(g),
                    }
                }
                match self.projection {
                    Some((w, _)) => {
                        let favor = self.map.is_favor();
                        let alpha = if favor { favor_scale } else { T::one() };
                        gemm(
                            alpha,
                            Mat::new(&du, n, m, m),
                            Mat::new(w, m, self.d, self.d),
                            T::zero(),
                            dx,
                            self.d,
                        );
                        if favor {
                            // ∂(|x'|²/2)/∂x = x·D^(−1/2)
                            let k = favor_scale * favor_scale;
                            for ((dx, x), &s) in dx
                                .chunks_exact_mut(self.d)
                                .zip(x.chunks_exact(self.d))
                                .zip(&s)
                            {
                                dx.iter_mut().zip(x).for_each(|(d, &x)| *d = *d - s * k * x);
                            }
                        }
                    }
                    None => dx.copy_from_slice(&du),
                }
            });
        Ok(())
    }
}

/// The largest key logit (the exponent before the offset) of one row by `map` (an
/// `exp`-family map), and the row's own part of the shift (FAVOR+: `|x'|²/2`; `exp`: 0).
#[inline(always)]
fn key_max<T: Real>(map: FeatureMap, u: &[T], x: &[T], c: &RowConsts<T>) -> (T, T) {
    let top = if map == FeatureMap::Hyperbolic {
        lanes(u, T::neg_infinity(), |a, x| a.max(x.abs()), T::max)
    } else {
        lanes(u, T::neg_infinity(), |a, x| a.max(x), T::max)
    };
    let own = match map {
        FeatureMap::Positive | FeatureMap::Hyperbolic => {
            lanes(x, T::zero(), |a, x| a + x * x, |a, b| a + b) * c.half_scale2
        }
        _ => T::zero(),
    };
    (top - own, own)
}

/// φ of one key row by `map` (an `exp`-family map) whose exponents are `±u − shift`.
#[inline(always)]
fn key_row<T: Real>(map: FeatureMap, u: &[T], shift: T, c: &RowConsts<T>, o: &mut [T]) {
    match map {
        FeatureMap::Positive | FeatureMap::Hyperbolic => {
            let m = u.len();
            T::exp_into(u, T::one(), shift, c.norm, &mut o[..m]);
            if map == FeatureMap::Hyperbolic {
                T::exp_into(u, -T::one(), shift, c.norm, &mut o[m..]);
            }
        }
        _ => T::exp_into(u, T::one(), shift, T::one(), o),
    }
}

/// φ of one row by `map` from its projection `u` (and the row `x` itself, for the FAVOR+ key
/// norm).
#[inline(always)]
fn row<T: Real>(map: FeatureMap, is_query: bool, u: &[T], x: &[T], o: &mut [T], c: &RowConsts<T>) {
    match map {
        FeatureMap::Positive | FeatureMap::Hyperbolic => {
            let hyp = map == FeatureMap::Hyperbolic;
            // Queries drop the per-row |x'|²/2 along with the max: both cancel in the ratio.
            let shift = match (is_query, hyp) {
                (true, true) => lanes(u, T::neg_infinity(), |a, x| a.max(x.abs()), T::max),
                (true, false) => lanes(u, T::neg_infinity(), |a, x| a.max(x), T::max),
                (false, _) => {
                    lanes(x, T::zero(), |a, x| a + x * x, |a, b| a + b) * c.half_scale2 + c.offset
                }
            };
            let m = u.len();
            T::exp_into(u, T::one(), shift, c.norm, &mut o[..m]);
            if hyp {
                T::exp_into(u, -T::one(), shift, c.norm, &mut o[m..]);
            }
        }
        FeatureMap::Exp => {
            let shift = if is_query {
                lanes(u, T::neg_infinity(), |a, x| a.max(x), T::max)
            } else {
                c.offset
            };
            T::exp_into(u, T::one(), shift, T::one(), o);
        }
        FeatureMap::EluPlusOne => o.iter_mut().zip(u).for_each(|(oi, &ui)| {
            *oi = if ui > T::zero() {
                ui + T::one()
            } else {
                ui.exp()
            }
        }),
        FeatureMap::Relu => o
            .iter_mut()
            .zip(u)
            .for_each(|(oi, &ui)| *oi = ui.max(T::zero())),
        FeatureMap::Identity => o.copy_from_slice(u),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(map: FeatureMap, w: &[f64], m: usize, is_query: bool) -> Spec<'_, f64> {
        Spec {
            map,
            d: w.len() / m,
            projection: Some((w, m)),
            is_query,
            offset: None,
        }
    }

    #[test]
    fn favor_matches_the_formula_and_keys_stay_below_one() {
        let w = [0.3, -1.2, 0.5, 2.0, -0.7, 0.1]; // m = 3, d = 2
        let x = [40.0, -25.0, 0.2, 0.1];
        let s = spec(FeatureMap::Positive, &w, 3, false);
        let mut k = [0.0; 6];
        s.forward(&x, &mut k).unwrap();
        assert!(k.iter().all(|&v| v >= 0.0) && k.iter().all(|&v| v <= 1.0 / 3f64.sqrt()));
        let c = w
            .chunks(2)
            .map(|r| (r[0] * r[0] + r[1] * r[1]) / 2.0)
            .fold(0.0, f64::max);
        let sc = 2f64.powf(-0.25);
        for i in 0..3 {
            let (x0, x1) = (x[2] * sc, x[3] * sc);
            let u = w[2 * i] * x0 + w[2 * i + 1] * x1;
            let want = (u - (x0 * x0 + x1 * x1) / 2.0 - c).exp() / 3f64.sqrt();
            assert!((k[3 + i] - want).abs() < 1e-15);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let w = [0.3, -1.2, 0.5, 2.0, -0.7, 0.1, 0.9, 0.4];
        let x = [0.4, -0.3, 0.2, 0.1];
        let g: Vec<f64> = (0..8).map(|i| (f64::from(i) * 0.7).sin()).collect();
        for map in [
            FeatureMap::Positive,
            FeatureMap::Hyperbolic,
            FeatureMap::Exp,
            FeatureMap::EluPlusOne,
            FeatureMap::Relu,
            FeatureMap::Identity,
        ] {
            for is_query in [false, true] {
                let mut s = spec(map, &w, 4, is_query);
                s.offset = Some(0.25);
                let f = s.out_dim() * 2;
                let loss = |x: &[f64]| {
                    let mut p = vec![0.0; f];
                    s.forward(x, &mut p).unwrap();
                    p.iter()
                        .zip(g.iter().cycle())
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                };
                let mut phi = vec![0.0; f];
                s.forward(&x, &mut phi).unwrap();
                let gg: Vec<f64> = g.iter().cycle().take(f).copied().collect();
                let mut dx = [0.0; 4];
                s.backward(&x, &phi, &gg, &mut dx).unwrap();
                for i in 0..4 {
                    let (mut xp, mut xm) = (x, x);
                    xp[i] += 1e-6;
                    xm[i] -= 1e-6;
                    let fd = (loss(&xp) - loss(&xm)) / 2e-6;
                    assert!((dx[i] - fd).abs() < 1e-7, "{map:?} {i}: {} vs {fd}", dx[i]);
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!("softmax".parse::<FeatureMap>().is_err());
        let s: Spec<f64> = Spec {
            map: FeatureMap::Positive,
            d: 2,
            projection: None,
            is_query: true,
            offset: None,
        };
        assert!(s.forward(&[1.0, 2.0], &mut [0.0; 2]).is_err());
        let w = [1.0; 6];
        assert!(spec(FeatureMap::Relu, &w, 3, true)
            .forward(&[1.0; 3], &mut [0.0; 3])
            .is_err());
    }
}
