//! Exact vMF sampling: `x = wμ + sqrt((1−w)(1+w))·v`, with `w = μᵀx` from its marginal
//! `∝ e^{κw}(1−w²)^{(d−3)/2}` and `v` uniform on the unit sphere orthogonal to μ.
//!
//! `w` comes from Wood's (1994) rejection sampler with the cancellation-free
//! `b = (d−1)/(2κ + sqrt(4κ² + (d−1)²))`, written in terms of `1−w` and `1+w` so that
//! nothing cancels near w = ±1; from the closed-form inverse CDF at d = 3; and, when
//! `κ ≫ d²`, from a Gamma envelope on `t = 1−w` (accepting ≥ 73% of proposals where used,
//! versus Wood's ~70% floor at two gamma variates each). `v` projects a Gaussian orthogonal
//! to μ (Su, kexue.fm/archives/8404): O(d), no rotation matrix, no special case at μ = e1.
//! Set-up and `w` are f64 whatever the output dtype. Row `i` draws from `rng::stream(seed, i)`,
//! so the samples do not depend on the thread count.

use num_traits::Float;
use rand::Rng as _;
use rand_distr::{Distribution, Gamma, StandardNormal};
use rayon::prelude::*;

use super::{check_d, check_kappa};
use crate::parallel::MIN_CHUNK;
use crate::rng::{self, Rng};
use crate::{cancel, Error, Result};

/// How `w` is drawn for one (d, κ).
#[derive(Clone)]
enum Method {
    /// Wood's beta-proposal rejection; `gamma` draws the two halves of the Beta(m/2, m/2).
    Wood {
        kappa: f64,
        m: f64,
        b: f64,
        /// `κ(1 − x0) + m log(1 + b) − m log 2`, the acceptance threshold's constant part.
        offset: f64,
        gamma: Gamma<f64>,
    },
    /// d = 3: `1 − w = −log1p((1−u)·expm1(−2κ))/κ`; `e = expm1(−2κ)`, `inv = 1/κ`.
    Closed { inv: f64, e: f64 },
    /// `t = 1−w ~ Gamma((d−1)/2, κ)`, accepted with probability `(1 − t/2)^{(d−3)/2}`.
    GammaEnvelope {
        kappa: f64,
        half_d3: f64,
        gamma: Gamma<f64>,
    },
}

impl Method {
    fn new(d: usize, kappa: f64, wood_only: bool) -> Result<Self> {
        check_d(d)?;
        let kappa = check_kappa(kappa)?;
        let m = d as f64 - 1.0;
        let gamma = |shape: f64| {
            Gamma::new(shape, 1.0).map_err(|e| Error::value("d", format!("gives no gamma: {e}")))
        };
        if !wood_only && d == 3 {
            let (inv, e) = (1.0 / kappa, (-2.0 * kappa).exp_m1());
            return Ok(Method::Closed { inv, e });
        }
        if !wood_only && d >= 4 && m * (m - 2.0) < 2.5 * kappa {
            return Ok(Method::GammaEnvelope {
                kappa,
                half_d3: 0.5 * (m - 2.0),
                gamma: gamma(0.5 * m)?,
            });
        }
        let b = m / (2.0 * kappa + (4.0 * kappa * kappa + m * m).sqrt());
        Ok(Method::Wood {
            kappa,
            m,
            b,
            offset: kappa * 2.0 * b / (1.0 + b) + m * (b.ln_1p() - std::f64::consts::LN_2),
            gamma: gamma(0.5 * m)?,
        })
    }

    /// One draw: `(1 − w, 1 + w, ε)`, ε being Wood's accepted beta variate (NaN otherwise).
    fn draw(&self, rng: &mut Rng) -> (f64, f64, f64) {
        match *self {
            Method::Wood {
                kappa,
                m,
                b,
                offset,
                ref gamma,
            } => loop {
                // ε = X/(X+Y): 1−w = 2bε/den, 1+w = 2(1−ε)/den, den = 1 − (1−b)ε.
                let (x, y) = (gamma.sample(rng), gamma.sample(rng));
                let (sum, den) = (x + y, y + b * x);
                let omw = 2.0 * b * x / den;
                // κ(w − x0) + m log(1 − x0 w) − m log(1 − x0²) ≥ log u, rewritten.
                let accept = offset - kappa * omw - m * (den / sum).ln();
                let u: f64 = rng.random();
                if accept >= u.ln() {
                    return (omw, 2.0 * y / den, x / sum);
                }
            },
            Method::Closed { inv, e } => {
                let u: f64 = rng.random(); // [0, 1): 1 − u ∈ (0, 1]
                let t = if inv.is_infinite() {
                    2.0 * (1.0 - u) // κ = 0
                } else {
                    (-ln_1p((1.0 - u) * e) * inv).min(2.0)
                };
                (t, 2.0 - t, f64::NAN)
            }
            Method::GammaEnvelope {
                kappa,
                half_d3,
                ref gamma,
            } => loop {
                let t = gamma.sample(rng) / kappa;
                let u: f64 = rng.random();
                if t < 2.0 && u.ln() <= half_d3 * (-0.5 * t).ln_1p() {
                    return (t, 2.0 - t, f64::NAN);
                }
            },
        }
    }
}

/// `log(1 + y)` to a few ulps by Kahan's trick: one `ln` and a division, where glibc's
/// `log1p` took a quarter of the d = 3 sampler's time.
fn ln_1p(y: f64) -> f64 {
    let z = 1.0 + y;
    if z == 1.0 {
        y
    } else {
        z.ln() * y / (z - 1.0)
    }
}

fn methods(d: usize, kappa: &[f64], wood_only: bool) -> Result<Vec<Method>> {
    kappa
        .iter()
        .map(|&k| Method::new(d, k, wood_only))
        .collect()
}

/// `1/‖μ_r‖` of every row (scaled by the largest |entry| first, so huge entries cannot
/// overflow the sum of squares), refusing rows that are zero or not finite.
fn inverse_norms<T: Float>(mu: &[T], d: usize) -> Result<Vec<f64>> {
    mu.chunks_exact(d)
        .enumerate()
        .map(|(r, row)| {
            let value = |v: &T| v.to_f64().unwrap_or(f64::NAN);
            let big = row.iter().map(|v| value(v).abs()).fold(0.0, f64::max);
            let n2: f64 = row.iter().map(|v| (value(v) / big).powi(2)).sum();
            let inv = 1.0 / (big * n2.sqrt());
            if big.is_finite() && inv.is_finite() {
                Ok(inv)
            } else {
                Err(Error::value(
                    "mu",
                    format!(
                        "must have finite rows of nonzero norm (above 1e-308); row {r} does not"
                    ),
                ))
            }
        })
        .collect()
}

fn rows_of(name: &str, len: usize, n: usize) -> Result<()> {
    if len == 1 || len == n {
        Ok(())
    } else {
        Err(Error::value(
            name,
            format!("must have 1 or {n} rows, got {len}"),
        ))
    }
}

/// The parameter row of sample row `r` when there are `len` (1 or n) of them; a branch, as a
/// 64-bit `%` per row costs as much as a normal variate.
fn pick(r: usize, len: usize) -> usize {
    if len == 1 {
        0
    } else {
        r
    }
}

/// Rows per rayon task: enough elements that splitting pays.
fn min_rows(d: usize) -> usize {
    (MIN_CHUNK / d / 4).max(1)
}

/// Writes `x = wμ̂ + s·v` into `out`, `v` being a Gaussian projected orthogonally to μ̂ and
/// normalised, given `1 ∓ w`. Two passes: draw `g` (accumulating `gᵀμ̂` and `‖g‖²`), then
/// `x = (w − s·gᵀμ̂/‖v‖) μ̂ + (s/‖v‖) g`.
fn compose<T: Float>(mu: &[T], inv_norm: f64, omw: f64, opw: f64, out: &mut [T], rng: &mut Rng) {
    let w = if omw < 1.0 { 1.0 - omw } else { opw - 1.0 };
    let s2 = omw * opw;
    let m = |i: usize| mu[i].to_f64().unwrap_or(0.0) * inv_norm;
    loop {
        let (mut dot, mut g2) = (0.0, 0.0);
        for (i, o) in out.iter_mut().enumerate() {
            *o = T::from(rng.sample::<f64, _>(StandardNormal)).unwrap_or_else(T::zero);
            // The stored (rounded) g, so that v is orthogonal to μ to f64 rounding.
            let g = o.to_f64().unwrap_or(0.0);
            dot += g * m(i);
            g2 += g * g;
        }
        let v2 = g2 - dot * dot;
        if v2 <= g2 / 64.0 {
            // g nearly along μ (small d: 0.4% of rows at d = 3, more at d = 2): composing
            // from g would amplify rounding by ‖g‖/‖v‖, so build v itself, projected twice
            // (Gram–Schmidt: twice is enough to be orthogonal to μ̂ at f64 rounding).
            let mut v: Vec<f64> = out.iter().map(|g| g.to_f64().unwrap_or(0.0)).collect();
            for _ in 0..2 {
                let along: f64 = v.iter().enumerate().map(|(i, x)| x * m(i)).sum();
                v.iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x -= along * m(i));
            }
            let v2: f64 = v.iter().map(|x| x * x).sum();
            if v2 > 0.0 {
                let scale = (s2 / v2).sqrt();
                for (i, o) in out.iter_mut().enumerate() {
                    *o = T::from(w * m(i) + scale * v[i]).unwrap_or_else(T::zero);
                }
                return;
            }
        } else {
            let scale = (s2 / v2).sqrt();
            let along = w - scale * dot;
            for (i, o) in out.iter_mut().enumerate() {
                *o = T::from(along * m(i) + scale * o.to_f64().unwrap_or(0.0))
                    .unwrap_or_else(T::zero);
            }
            return;
        }
        // g exactly along μ (probability zero): draw again.
    }
}

/// Draws `out.len()/d` samples of vMF(μ_r, κ_r) in parallel. `mu` has 1 or n rows of `d`
/// values (normalised here; zero rows are an error), `kappa` 1 or n values.
pub fn sample<T: Float + Send + Sync>(
    mu: &[T],
    d: usize,
    kappa: &[f64],
    seed: u64,
    out: &mut [T],
) -> Result<()> {
    check_d(d)?;
    if !mu.len().is_multiple_of(d) || !out.len().is_multiple_of(d) || mu.is_empty() {
        return Err(Error::value(
            "mu",
            format!("must have rows of d = {d} values"),
        ));
    }
    let n = out.len() / d;
    rows_of("mu", mu.len() / d, n)?;
    rows_of("kappa", kappa.len(), n)?;
    let methods = methods(d, kappa, false)?;
    let inv = inverse_norms(mu, d)?;
    out.par_chunks_mut(d)
        .with_min_len(min_rows(d))
        .enumerate()
        .for_each(|(r, row)| {
            if cancel::requested() {
                return; // the output is discarded: check() below reports the interrupt
            }
            let mut rng = rng::stream(seed, r as u64);
            let (omw, opw, _) = methods[pick(r, methods.len())].draw(&mut rng);
            let mr = pick(r, inv.len());
            compose(&mu[mr * d..(mr + 1) * d], inv[mr], omw, opw, row, &mut rng);
        });
    cancel::check()
}

/// The parts of a reparameterised sample for autodiff front ends, always by Wood's sampler:
/// per row the accepted beta variate `eps` (from which `w` is a differentiable function of κ)
/// and `w` itself, and a standard Gaussian `g` (`d` values per row) to be projected
/// orthogonally to μ. Row `i` draws from `rng::stream(seed, i)`.
pub fn sample_wood<T: Float + Send + Sync>(
    d: usize,
    kappa: &[f64],
    seed: u64,
    w: &mut [f64],
    eps: &mut [f64],
    g: &mut [T],
) -> Result<()> {
    check_d(d)?;
    let n = w.len();
    if eps.len() != n || g.len() != n * d {
        return Err(Error::value("eps", "and g must have n and n·d values"));
    }
    rows_of("kappa", kappa.len(), n)?;
    let methods = methods(d, kappa, true)?;
    g.par_chunks_mut(d)
        .zip(w.par_iter_mut().zip(eps.par_iter_mut()))
        .with_min_len(min_rows(d))
        .enumerate()
        .for_each(|(r, (row, (wr, er)))| {
            if cancel::requested() {
                return;
            }
            let mut rng = rng::stream(seed, r as u64);
            let (omw, opw, e) = methods[pick(r, methods.len())].draw(&mut rng);
            *wr = if omw < 1.0 { 1.0 - omw } else { opw - 1.0 };
            *er = e;
            for o in row.iter_mut() {
                let v: f64 = rng.sample(StandardNormal);
                *o = T::from(v).unwrap_or_else(T::zero);
            }
        });
    cancel::check()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel;
    use crate::vmf::{mean_resultant_length, mean_resultant_length_derivative};

    fn mean_w(d: usize, kappa: f64, n: usize, wood_only: bool) -> f64 {
        let m = Method::new(d, kappa, wood_only).unwrap();
        let mut rng = rng::stream(1, 0);
        (0..n).map(|_| -m.draw(&mut rng).0).sum::<f64>() / n as f64 + 1.0
    }

    #[test]
    fn w_has_mean_a_on_every_path() {
        let n = 20_000;
        for &(d, k) in &[
            (2, 0.5),
            (3, 1.0),
            (3, 1e5),
            (4, 1e4),
            (5, 2.0),
            (64, 10.0),
            (64, 1e5),
            (512, 50.0),
            (10, 0.0),
        ] {
            for wood in [false, true] {
                let a = mean_resultant_length(d, k).unwrap();
                let se = (mean_resultant_length_derivative(d, k).unwrap() / n as f64).sqrt();
                let got = mean_w(d, k, n, wood);
                assert!(
                    (got - a).abs() < 4.5 * se,
                    "{d} {k} {wood}: {got} vs {a} ± {se}"
                );
            }
        }
    }

    #[test]
    fn samples_are_unit_and_thread_count_independent() {
        let d = 7;
        let mu: Vec<f32> = (0..d).map(|i| i as f32 - 2.0).collect();
        let mut a = vec![0f32; 5000 * d];
        let mut b = a.clone();
        parallel::set_num_threads(1).unwrap();
        sample(&mu, d, &[3.0], 9, &mut a).unwrap();
        parallel::set_num_threads(3).unwrap();
        parallel::install(|| sample(&mu, d, &[3.0], 9, &mut b)).unwrap();
        parallel::set_num_threads(0).unwrap();
        assert_eq!(a, b);
        for row in a.chunks(d) {
            let n: f32 = row.iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut out = vec![0f64; 6];
        assert!(sample(&[0.0, 0.0, 0.0], 3, &[1.0], 0, &mut out).is_err());
        assert!(sample(&[1.0, 0.0, 0.0], 3, &[-1.0], 0, &mut out).is_err());
        assert!(sample(&[1.0, 0.0, 0.0], 3, &[1.0, 2.0, 3.0], 0, &mut out).is_err());
        assert!(sample(&[1.0, 0.0], 1, &[1.0], 0, &mut out).is_err());
        assert!(sample(&[f64::NAN, 0.0, 0.0], 3, &[1.0], 0, &mut out).is_err());
    }
}
