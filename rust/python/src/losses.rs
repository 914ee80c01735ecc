//! Bindings of `kexue_core::losses`.

use kexue_core::losses::squareplus;
use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;

use crate::arrays::{filled, same_as, slice, with_float_array, FloatArray};

/// SquarePlus of a C-contiguous float array, as a new array of the same shape and dtype.
#[pyfunction]
fn squareplus_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    b: f64,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(x, "x")?, x => {
        let xs = slice(&x, "x")?;
        Ok(filled(py, x.shape(), |out| squareplus::forward(xs, b, out))?.into_any())
    })
}

/// `grad * squareplus'(x)`: the vector-Jacobian product of SquarePlus.
#[pyfunction]
fn squareplus_backward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    grad: &Bound<'py, PyAny>,
    b: f64,
) -> PyResult<Bound<'py, PyAny>> {
    with_float_array!(FloatArray::extract(x, "x")?, x => {
        let grad = same_as(grad, "grad", &x, "x")?;
        let (xs, gs) = (slice(&x, "x")?, slice(&grad, "grad")?);
        Ok(filled(py, x.shape(), |out| squareplus::backward(xs, gs, b, out))?.into_any())
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SQUAREPLUS_B_DEFAULT", squareplus::B_DEFAULT)?;
    m.add("SQUAREPLUS_B_SOFTPLUS_UPPER", squareplus::B_SOFTPLUS_UPPER)?;
    m.add(
        "SQUAREPLUS_B_SOFTPLUS_MINIMAX",
        squareplus::B_SOFTPLUS_MINIMAX,
    )?;
    m.add_function(wrap_pyfunction!(squareplus_forward, m)?)?;
    m.add_function(wrap_pyfunction!(squareplus_backward, m)?)?;
    Ok(())
}
