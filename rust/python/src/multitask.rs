//! Bindings of `kexue_core::multitask`: `J` is read in place (a borrowed C-contiguous view).

use kexue_core::multitask;
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::arrays::{
    array, detached, filled, int, ints, slice, with_float_array, Dtype, FloatArray, Shape,
};
use crate::errors::{Error, Result};

/// `(K, P)` of a 2-D array named `name`.
fn rows_cols(shape: &[usize], name: &str) -> Result<(usize, usize)> {
    match shape {
        [k, p] => Ok((*k, *p)),
        _ => Err(Error::value(
            name,
            format!("must have 2 dimensions (K, P), got shape {shape:?}"),
        )),
    }
}

/// A float64 K×K matrix as (values, K).
fn square<'py>(g: &Bound<'py, PyAny>) -> Result<(PyReadonlyArrayDyn<'py, f64>, usize)> {
    let a = array::<f64>(g, "G", Dtype::Own, Shape::Any)?;
    let (k, k2) = rows_cols(a.shape(), "G")?;
    if k != k2 {
        return Err(Error::value(
            "G",
            format!("must be square (K, K), got shape {:?}", a.shape()),
        ));
    }
    Ok((a, k))
}

fn vector<'py>(py: Python<'py>, w: Vec<f64>) -> Result<Bound<'py, PyAny>> {
    filled(py, &[w.len()], |out: &mut [f64]| {
        out.copy_from_slice(&w);
        Ok(())
    })
}

/// `J Jᵀ` as a (K, K) float64 array, accumulated in f64 in a fixed order.
#[pyfunction]
fn multitask_gram<'py>(py: Python<'py>, j: &Bound<'py, PyAny>) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(j, "J")?, a => {
        let (k, _) = rows_cols(a.shape(), "J")?;
        let values = slice(&a, "J")?;
        let g = detached(py, || multitask::gram(values, k))?;
        filled(py, &[k, k], |out: &mut [f64]| {
            out.copy_from_slice(&g);
            Ok(())
        })
    })
}

/// `u = weightsᵀ J`, a (P,) array of J's dtype.
#[pyfunction]
fn multitask_combine<'py>(
    py: Python<'py>,
    j: &Bound<'py, PyAny>,
    weights: Vec<f64>,
) -> Result<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(j, "J")?, a => {
        let (k, p) = rows_cols(a.shape(), "J")?;
        let values = slice(&a, "J")?;
        if weights.len() != k {
            return Err(Error::value(
                "weights", format!("must have K = {k} elements, got {}", weights.len()),
            ));
        }
        filled(py, &[p], |out| multitask::combine(values, k, &weights, out))
    })
}

/// MGDA min-norm weights from the Gram matrix.
#[pyfunction]
fn multitask_mgda_weights<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let (a, k) = square(g)?;
    let values = slice(&a, "G")?;
    vector(py, detached(py, || multitask::mgda(values, k))?)
}

/// Primary/auxiliary weights (every task not in `primary` is an auxiliary).
#[pyfunction]
fn multitask_primary_auxiliary_weights<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    primary: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let primary: Vec<usize> = ints(primary, "primary")?;
    let (a, k) = square(g)?;
    let values = slice(&a, "G")?;
    vector(
        py,
        detached(py, || multitask::primary_auxiliary(values, k, &primary))?,
    )
}

/// `1/‖g_i‖` (0 for a zero gradient).
#[pyfunction]
fn multitask_gradnorm_sum_weights<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let (a, k) = square(g)?;
    let values = slice(&a, "G")?;
    vector(py, detached(py, || multitask::gradnorm_sum(values, k))?)
}

/// PCGrad's seeded K×K projection orders (row i: the order for task i), flattened.
#[pyfunction]
fn multitask_pcgrad_orders(k: &Bound<'_, PyAny>, seed: &Bound<'_, PyAny>) -> Result<Vec<usize>> {
    Ok(multitask::pcgrad_orders(int(k, "k")?, int(seed, "seed")?)?)
}

/// PCGrad weights in Gram form for flattened K×K `orders`.
#[pyfunction]
fn multitask_pcgrad_weights<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    orders: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let orders: Vec<usize> = ints(orders, "orders")?;
    let (a, k) = square(g)?;
    let values = slice(&a, "G")?;
    vector(py, detached(py, || multitask::pcgrad(values, k, &orders))?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MULTITASK_MAX_TASKS", multitask::MAX_TASKS)?;
    m.add_function(wrap_pyfunction!(multitask_gram, m)?)?;
    m.add_function(wrap_pyfunction!(multitask_combine, m)?)?;
    m.add_function(wrap_pyfunction!(multitask_mgda_weights, m)?)?;
    m.add_function(wrap_pyfunction!(multitask_primary_auxiliary_weights, m)?)?;
    m.add_function(wrap_pyfunction!(multitask_gradnorm_sum_weights, m)?)?;
    m.add_function(wrap_pyfunction!(multitask_pcgrad_orders, m)?)?;
    m.add_function(wrap_pyfunction!(multitask_pcgrad_weights, m)?)?;
    Ok(())
}
