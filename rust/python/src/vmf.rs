//! Bindings of `kexue_core::vmf`.

use kexue_core::{memory, vmf};
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods, ToPyArray};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::arrays::{detached, filled, slice, typed, with_float_array, FloatArray};
use crate::errors::to_py;

/// The most elements one sampling call may allocate (2^36: 512 GiB of float64), so that a
/// huge `n` or `d` is refused before any allocation is tried.
const MAX_ELEMENTS: usize = 1 << 36;

fn checked_elements(n: usize, d: usize) -> PyResult<usize> {
    vmf::check_d(d).map_err(to_py)?;
    n.checked_mul(d)
        .filter(|&e| e <= MAX_ELEMENTS)
        .ok_or_else(|| PyValueError::new_err(format!("n·d = {n}·{d} exceeds 2^36 elements")))
}

/// `quantity(d, kappa)` elementwise, same shape and dtype as `kappa`.
#[pyfunction]
fn vmf_evaluate<'py>(
    py: Python<'py>,
    quantity: &str,
    d: usize,
    kappa: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let q = vmf::Quantity::parse(quantity).map_err(to_py)?;
    with_float_array!(FloatArray::extract(kappa, "kappa")?, k => {
        let ks = slice(&k, "kappa")?;
        Ok(filled(py, k.shape(), |out| vmf::evaluate(q, d, ks, out))?.into_any())
    })
}

/// `log I_nu(x)` elementwise, same shape and dtype as `x`.
#[pyfunction]
fn vmf_log_bessel_i<'py>(
    py: Python<'py>,
    nu: f64,
    x: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(x, "x")?, a => {
        let xs = slice(&a, "x")?;
        Ok(filled(py, a.shape(), |out| vmf::log_bessel_i(nu, xs, out))?.into_any())
    })
}

/// Maximum-likelihood kappa for mean resultant length `rbar`.
#[pyfunction]
fn vmf_kappa_mle(py: Python<'_>, d: usize, rbar: f64) -> PyResult<f64> {
    detached(py, || vmf::kappa_mle(d, rbar))
}

/// `n` samples of vMF(mu_r, kappa_r): `mu` is (1 or n, d), `kappa` float64 (1 or n,).
#[pyfunction]
fn vmf_sample<'py>(
    py: Python<'py>,
    mu: &Bound<'py, PyAny>,
    kappa: &Bound<'py, PyAny>,
    n: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let kappa = typed::<f64>(kappa, "kappa", "a float64 numpy array")?;
    let ks = slice(&kappa, "kappa")?;
    with_float_array!(FloatArray::extract(mu, "mu")?, m => {
        let shape = m.shape();
        if shape.len() != 2 {
            return Err(PyValueError::new_err(format!("mu must be 2-D, got shape {shape:?}")));
        }
        let d = shape[1];
        checked_elements(n, d)?;
        let ms = slice(&m, "mu")?;
        Ok(filled(py, &[n, d], |out| vmf::sample(ms, d, ks, seed, out))?.into_any())
    })
}

/// Wood-sampler parts for autodiff: `(w, eps, g)` with `g` (n, d) float64 or float32.
#[pyfunction]
fn vmf_sample_wood<'py>(
    py: Python<'py>,
    d: usize,
    kappa: &Bound<'py, PyAny>,
    n: usize,
    seed: u64,
    double: bool,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let kappa = typed::<f64>(kappa, "kappa", "a float64 numpy array")?;
    let ks = slice(&kappa, "kappa")?.to_vec();
    let elements = checked_elements(n, d)?;
    let zeros = |len| memory::filled(len, 0f64, "n").map_err(to_py);
    let (mut w, mut eps) = (zeros(n)?, zeros(n)?);
    macro_rules! run {
        ($t:ty) => {{
            let mut g = memory::filled(elements, <$t>::default(), "n").map_err(to_py)?;
            detached(py, || {
                vmf::sample_wood(d, &ks, seed, &mut w, &mut eps, &mut g)
            })?;
            let g = PyArray1::from_vec(py, g).reshape([n, d])?.into_any();
            (
                w.to_pyarray(py).into_any(),
                eps.to_pyarray(py).into_any(),
                g,
            )
        }};
    }
    Ok(if double { run!(f64) } else { run!(f32) })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(vmf_evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(vmf_log_bessel_i, m)?)?;
    m.add_function(wrap_pyfunction!(vmf_kappa_mle, m)?)?;
    m.add_function(wrap_pyfunction!(vmf_sample, m)?)?;
    m.add_function(wrap_pyfunction!(vmf_sample_wood, m)?)?;
    Ok(())
}
