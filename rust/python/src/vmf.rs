//! Bindings of `kexue_core::vmf`.

use kexue_core::vmf;
use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;

use crate::arrays::{
    array, detached, filled, int, slice, with_float_array, Dtype, FloatArray, Out, Shape,
};
use crate::errors::{Error, Result};

/// The most elements one sampling call may allocate (2^36: 512 GiB of float64), so that a
/// huge `n` or `d` is refused before any allocation is tried.
const MAX_ELEMENTS: usize = 1 << 36;

fn checked_elements(n: usize, d: usize) -> Result<usize> {
    vmf::check_d(d)?;
    n.checked_mul(d)
        .filter(|&e| e <= MAX_ELEMENTS)
        .ok_or_else(|| Error::value("n", format!("times d must be at most 2^36, got {n}·{d}")))
}

/// `quantity(d, kappa)` elementwise, same shape and dtype as `kappa`.
#[pyfunction]
fn vmf_evaluate<'py>(
    py: Python<'py>,
    quantity: &str,
    d: &Bound<'py, PyAny>,
    kappa: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let q = quantity.parse::<vmf::Quantity>()?;
    let d = int(d, "d")?;
    with_float_array!(FloatArray::extract(kappa, "kappa")?, k => {
        let ks = slice(&k, "kappa")?;
        filled(py, k.shape(), |out| vmf::evaluate(q, d, ks, out))
    })
}

/// `log I_nu(x)` elementwise, same shape and dtype as `x`.
#[pyfunction]
fn vmf_log_bessel_i<'py>(
    py: Python<'py>,
    nu: f64,
    x: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(x, "x")?, a => {
        let xs = slice(&a, "x")?;
        filled(py, a.shape(), |out| vmf::log_bessel_i(nu, xs, out))
    })
}

/// Maximum-likelihood kappa for mean resultant length `rbar`.
#[pyfunction]
fn vmf_kappa_mle(py: Python<'_>, d: &Bound<'_, PyAny>, rbar: f64) -> Result<f64> {
    let d = int(d, "d")?;
    detached(py, || vmf::kappa_mle(d, rbar))
}

/// `n` samples of vMF(mu_r, kappa_r): `mu` is (1 or n, d), `kappa` float64 (1 or n,).
#[pyfunction]
fn vmf_sample<'py>(
    py: Python<'py>,
    mu: &Bound<'py, PyAny>,
    kappa: &Bound<'py, PyAny>,
    n: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let (n, seed): (usize, u64) = (int(n, "n")?, int(seed, "seed")?);
    let kappa = array::<f64>(kappa, "kappa", Dtype::Own, Shape::Any)?;
    let ks = slice(&kappa, "kappa")?;
    with_float_array!(FloatArray::extract(mu, "mu")?, m => {
        let shape = m.shape();
        if shape.len() != 2 {
            return Err(Error::value("mu", format!("must be 2-D, got shape {shape:?}")));
        }
        let d = shape[1];
        checked_elements(n, d)?;
        let ms = slice(&m, "mu")?;
        filled(py, &[n, d], |out| vmf::sample(ms, d, ks, seed, out))
    })
}

/// Wood-sampler parts for autodiff: `(w, eps, g)` with `g` (n, d) float64 or float32.
#[pyfunction]
fn vmf_sample_wood<'py>(
    py: Python<'py>,
    d: &Bound<'py, PyAny>,
    kappa: &Bound<'py, PyAny>,
    n: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    double: bool,
) -> Result<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (d, n, seed): (usize, usize, u64) = (int(d, "d")?, int(n, "n")?, int(seed, "seed")?);
    let kappa = array::<f64>(kappa, "kappa", Dtype::Own, Shape::Any)?;
    let ks = slice(&kappa, "kappa")?.to_vec();
    checked_elements(n, d)?;
    let (mut w, mut eps) = (Out::<f64>::new(py, &[n])?, Out::<f64>::new(py, &[n])?);
    macro_rules! run {
        ($t:ty) => {{
            let mut g = Out::<$t>::new(py, &[n, d])?;
            let (ws, es, gs) = (w.slice(), eps.slice(), g.slice());
            detached(py, || vmf::sample_wood(d, &ks, seed, ws, es, gs))?;
            g.into_any()
        }};
    }
    let g = if double { run!(f64) } else { run!(f32) };
    Ok((w.into_any(), eps.into_any(), g))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(vmf_evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(vmf_log_bessel_i, m)?)?;
    m.add_function(wrap_pyfunction!(vmf_kappa_mle, m)?)?;
    m.add_function(wrap_pyfunction!(vmf_sample, m)?)?;
    m.add_function(wrap_pyfunction!(vmf_sample_wood, m)?)?;
    Ok(())
}
