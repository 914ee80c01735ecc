//! von Mises–Fisher: Bessel functions, Wood sampler, densities, fitting.
//!
//! All functions take the ambient dimension `d ≥ 2` (the sphere is `S^{d−1}`) and the
//! concentration `κ ≥ 0`, and work in f64 whatever the dtype of the data. With
//! `ν = d/2 − 1` and `L = log ₀F₁(; d/2; κ²/4) ≥ 0` ([`bessel::log_0f1`]):
//! `log C_d(κ) = −log|S^{d−1}| − L`, `A_d(κ) = I_{ν+1}(κ)/I_ν(κ)`,
//! `KL(vMF ‖ uniform) = κA − L` and `H = log|S^{d−1}| + L − κA` — forms in which nothing
//! overflows and nothing cancels at small κ (where `log C + log|S|` would).

pub mod bessel;
pub mod sample;

use std::f64::consts::{LN_2, PI};

use num_traits::Float;
use rayon::prelude::*;

use crate::{Error, Result};

pub use sample::{sample, sample_wood};

/// Checks the dimension and returns `ν = d/2 − 1`.
pub fn check_d(d: usize) -> Result<f64> {
    if d < 2 {
        return Err(Error::value("d", format!("must be >= 2, got {d}")));
    }
    Ok(d as f64 / 2.0 - 1.0)
}

/// Checks a concentration: finite and `>= 0`.
pub fn check_kappa(kappa: f64) -> Result<f64> {
    if kappa.is_finite() && kappa >= 0.0 {
        Ok(kappa)
    } else {
        Err(Error::value(
            "kappa",
            format!("must be finite and >= 0, got {kappa}"),
        ))
    }
}

/// `log |S^{d−1}| = log 2 + (d/2) log π − ln Γ(d/2)`, the log surface area of the sphere.
pub fn log_sphere_area(d: usize) -> Result<f64> {
    check_d(d)?;
    let h = d as f64 / 2.0;
    Ok(LN_2 + h * PI.ln() - bessel::ln_gamma(h))
}

/// `log C_d(κ)`: the log density normaliser with respect to surface measure.
pub fn log_normalizer(d: usize, kappa: f64) -> Result<f64> {
    let nu = check_d(d)?;
    let kappa = check_kappa(kappa)?;
    Ok(-log_sphere_area(d)? - bessel::log_0f1(nu, kappa))
}

/// `A_d(κ) = E[μᵀx]`, the mean resultant length.
pub fn mean_resultant_length(d: usize, kappa: f64) -> Result<f64> {
    let nu = check_d(d)?;
    Ok(bessel::ratio(nu, check_kappa(kappa)?))
}

/// `A'_d(κ) = Var[μᵀx] = 1 − A² − (d−1)A/κ` (`1/d` at κ = 0), computed without that
/// form's cancellation ([`bessel::ratio_and_slope`]).
pub fn mean_resultant_length_derivative(d: usize, kappa: f64) -> Result<f64> {
    let nu = check_d(d)?;
    let kappa = check_kappa(kappa)?;
    if kappa == 0.0 {
        return Ok(1.0 / d as f64);
    }
    Ok(bessel::ratio_and_slope(nu, kappa).1.max(0.0))
}

/// `KL(vMF(μ, κ) ‖ Unif(S^{d−1})) = κA − L ≥ 0`, a function of (d, κ) only.
pub fn kl_to_uniform(d: usize, kappa: f64) -> Result<f64> {
    let nu = check_d(d)?;
    let kappa = check_kappa(kappa)?;
    let kl = if bessel::hankel_regime(nu, kappa) {
        // κA and L are both ≈ κ: subtract κ from each analytically instead,
        // κA − L = −κ(1 − A) + (κ − L), with 1 − A from Hankel's sums term by term.
        let h = bessel::hankel_pair(nu, kappa);
        let kappa_minus_l = 0.5 * ((2.0 * PI).ln() + kappa.ln()) - h.s0.ln()
            + nu * (0.5 * kappa).ln()
            - bessel::ln_gamma(nu + 1.0);
        -kappa * (h.diff / h.s0) + kappa_minus_l
    } else {
        kappa * bessel::ratio(nu, kappa) - bessel::log_0f1(nu, kappa)
    };
    Ok(kl.max(0.0))
}

/// Differential entropy `H = −log C − κA` with respect to surface measure.
pub fn entropy(d: usize, kappa: f64) -> Result<f64> {
    Ok(log_sphere_area(d)? - kl_to_uniform(d, kappa)?)
}

/// Maximum-likelihood κ for mean resultant length `r̄ = ‖Σxᵢ‖/n ∈ [0, 1]`: the root of
/// `A_d(κ) = r̄`, from Banerjee et al.'s (2005) start by safeguarded Newton steps (Sra 2012).
/// `r̄ = 1` (all points equal) gives `+inf`.
pub fn kappa_mle(d: usize, rbar: f64) -> Result<f64> {
    check_d(d)?;
    if !(0.0..=1.0).contains(&rbar) {
        return Err(Error::value(
            "rbar",
            format!("must be in [0, 1], got {rbar}"),
        ));
    }
    if rbar == 0.0 {
        return Ok(0.0);
    }
    if rbar == 1.0 {
        return Ok(f64::INFINITY);
    }
    let df = d as f64;
    let mut kappa = rbar * (df - rbar * rbar) / (1.0 - rbar * rbar);
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    for _ in 0..200 {
        let a = mean_resultant_length(d, kappa)?;
        let f = a - rbar;
        if f == 0.0 {
            break;
        }
        if f > 0.0 {
            hi = hi.min(kappa);
        } else {
            lo = lo.max(kappa);
        }
        let slope = mean_resultant_length_derivative(d, kappa)?;
        let mut next = kappa - f / slope;
        if !(next > lo && next < hi) {
            // Newton left the bracket: bisect it (geometrically once it is far from 0).
            next = if hi.is_infinite() {
                2.0 * kappa
            } else if lo > 0.0 {
                (lo * hi).sqrt()
            } else {
                0.5 * hi
            };
        }
        let done = (next - kappa).abs() <= 1e-15 * kappa;
        kappa = next;
        if done {
            break;
        }
    }
    Ok(kappa)
}

/// A function of (d, κ) that [`evaluate`] maps over an array of κ.
#[derive(Clone, Copy, Debug)]
pub enum Quantity {
    LogNormalizer,
    MeanResultantLength,
    MeanResultantLengthDerivative,
    KlToUniform,
    Entropy,
}

/// The quantity called by its snake-case Python name.
impl std::str::FromStr for Quantity {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Ok(match name {
            "log_normalizer" => Quantity::LogNormalizer,
            "mean_resultant_length" => Quantity::MeanResultantLength,
            "mean_resultant_length_derivative" => Quantity::MeanResultantLengthDerivative,
            "kl_to_uniform" => Quantity::KlToUniform,
            "entropy" => Quantity::Entropy,
            _ => return Err(Error::value("quantity", format!("is unknown: {name:?}"))),
        })
    }
}

impl Quantity {
    pub fn eval(self, d: usize, kappa: f64) -> Result<f64> {
        match self {
            Quantity::LogNormalizer => log_normalizer(d, kappa),
            Quantity::MeanResultantLength => mean_resultant_length(d, kappa),
            Quantity::MeanResultantLengthDerivative => mean_resultant_length_derivative(d, kappa),
            Quantity::KlToUniform => kl_to_uniform(d, kappa),
            Quantity::Entropy => entropy(d, kappa),
        }
    }
}

/// Elements per rayon task: one evaluation may take thousands of continued-fraction steps.
const EVAL_CHUNK: usize = 64;

fn map_f64<T: Float + Send + Sync>(
    x: &[T],
    out: &mut [T],
    f: impl Fn(f64) -> Result<f64> + Sync,
) -> Result<()> {
    if x.len() != out.len() {
        return Err(Error::value(
            "out",
            "must have as many elements as the input",
        ));
    }
    out.par_iter_mut()
        .zip(x.par_iter())
        .with_min_len(EVAL_CHUNK)
        .try_for_each(|(o, &v)| {
            let y = f(v.to_f64().unwrap_or(f64::NAN))?;
            *o = T::from(y).unwrap_or_else(T::nan);
            Ok(())
        })
}

/// `out[i] = q(d, kappa[i])`, in parallel; any bad κ is an error.
pub fn evaluate<T: Float + Send + Sync>(
    q: Quantity,
    d: usize,
    kappa: &[T],
    out: &mut [T],
) -> Result<()> {
    check_d(d)?;
    map_f64(kappa, out, |k| q.eval(d, k))
}

/// `out[i] = log I_ν(x[i])` for ν ≥ 0 and x ≥ 0.
pub fn log_bessel_i<T: Float + Send + Sync>(nu: f64, x: &[T], out: &mut [T]) -> Result<()> {
    if !(nu.is_finite() && nu >= 0.0) {
        return Err(Error::value(
            "nu",
            format!("must be finite and >= 0, got {nu}"),
        ));
    }
    map_f64(x, out, |v| {
        if v >= 0.0 && v.is_finite() {
            Ok(bessel::log_iv(nu, v))
        } else {
            Err(Error::value(
                "x",
                format!("must be finite and >= 0, got {v}"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bessel_matches_closed_forms_and_identities() {
        // I_{1/2}(x) = sqrt(2/(πx)) sinh x, across the series/Hankel boundary.
        for &x in &[1e-8, 0.3, 7.0, 49.9, 50.1, 300.0, 1e6] {
            let want = 0.5 * (2.0 / (PI * x)).ln() + x - LN_2 + (-(-2.0 * x).exp_m1()).ln();
            let got = bessel::log_iv(0.5, x);
            assert!(
                (got - want).abs() <= 1e-13 * want.abs().max(1.0),
                "{x}: {got} {want}"
            );
            // I_{3/2}/I_{1/2} = coth x − 1/x.
            let r = 1.0 / x.tanh() - 1.0 / x;
            if x > 1e-3 {
                assert!((bessel::ratio(0.5, x) / r - 1.0).abs() < 1e-12, "{x}");
            }
        }
        // Recurrence 1/R_{ν−1} − R_ν = 2ν/x on both sides of the Debye switch at ν = 10.
        for &nu in &[1.0, 9.5, 10.0, 10.5, 300.0] {
            for &x in &[0.01, 1.0, 20.0, 60.0, 1e4, 1e7] {
                let lhs = 1.0 / bessel::ratio(nu - 1.0, x) - bessel::ratio(nu, x);
                assert!((lhs / (2.0 * nu / x) - 1.0).abs() < 1e-9, "{nu} {x}");
                // log I_{ν+1} − log I_ν = log R_ν.
                let diff = bessel::log_iv(nu + 1.0, x) - bessel::log_iv(nu, x);
                let tol = 1e-12 * bessel::log_iv(nu, x).abs().max(1.0);
                assert!(
                    (diff - bessel::ratio(nu, x).ln()).abs() < tol.max(1e-11),
                    "{nu} {x}"
                );
            }
        }
    }

    #[test]
    fn normaliser_identities() {
        for &d in &[2usize, 3, 5, 22, 64, 1000] {
            for &k in &[1e-6, 0.5, 30.0, 2e3, 1e6] {
                // d/dκ log C = −dL/dκ = −A by central differences (unresolvable at κ = 1e-6).
                let (h, nu) = (1e-5 * k, d as f64 / 2.0 - 1.0);
                let fd = (bessel::log_0f1(nu, k - h) - bessel::log_0f1(nu, k + h)) / (2.0 * h);
                let a = mean_resultant_length(d, k).unwrap();
                assert!(k < 1e-3 || (fd + a).abs() <= 1e-6 * a, "{d} {k}: {fd} {a}");
                let e = entropy(d, k).unwrap();
                let lc = log_normalizer(d, k).unwrap();
                assert!((e + lc + k * a).abs() <= 1e-9 * e.abs().max(1.0));
            }
            // Small-κ limits: A ≈ κ/d, KL ≈ κ²/(2d).
            let k = 1e-4;
            let df = d as f64;
            assert!((mean_resultant_length(d, k).unwrap() * df / k - 1.0).abs() < 1e-7);
            assert!((kl_to_uniform(d, k).unwrap() * 2.0 * df / (k * k) - 1.0).abs() < 1e-5);
            assert_eq!(
                log_normalizer(d, 0.0).unwrap(),
                -log_sphere_area(d).unwrap()
            );
        }
    }

    #[test]
    fn mle_inverts_a() {
        for &d in &[2usize, 3, 64, 512, 5000] {
            for &k in &[1e-3, 1.0, 50.0, 1e3, 1e5] {
                let r = mean_resultant_length(d, k).unwrap();
                let got = kappa_mle(d, r).unwrap();
                assert!((got / k - 1.0).abs() < 1e-8, "{d} {k} {got}");
            }
        }
        assert_eq!(kappa_mle(3, 0.0).unwrap(), 0.0);
        assert!(kappa_mle(3, 1.5).is_err() && kappa_mle(3, f64::NAN).is_err());
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(log_normalizer(1, 1.0).is_err());
        assert!(log_normalizer(3, -1.0).is_err());
        assert!(entropy(3, f64::NAN).is_err());
        assert!(kl_to_uniform(3, f64::INFINITY).is_err());
    }
}
