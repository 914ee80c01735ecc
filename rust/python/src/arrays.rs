//! numpy ↔ slice conversion shared by every binding: dtype dispatch, contiguity,
//! uninitialised outputs, and running a kernel with the GIL released in the kexue pool.

use kexue_core::parallel;
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::to_py;

/// A read-only float32 or float64 numpy array.
pub enum FloatArray<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

impl<'py> FloatArray<'py> {
    pub fn extract(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Self> {
        if let Ok(a) = obj.downcast::<PyArrayDyn<f32>>() {
            return Ok(FloatArray::F32(a.try_readonly()?));
        }
        if let Ok(a) = obj.downcast::<PyArrayDyn<f64>>() {
            return Ok(FloatArray::F64(a.try_readonly()?));
        }
        let got = match obj.getattr("dtype") {
            Ok(dtype) => format!("dtype {dtype}"),
            Err(_) => obj.get_type().name()?.to_string(),
        };
        Err(PyTypeError::new_err(format!(
            "{name} must be a float32 or float64 numpy array, got {got}"
        )))
    }
}

/// Expands `$body` once per dtype with `$a` bound to the typed array.
macro_rules! with_float_array {
    ($array:expr, $a:ident => $body:expr) => {
        match $array {
            $crate::arrays::FloatArray::F32($a) => $body,
            $crate::arrays::FloatArray::F64($a) => $body,
        }
    };
}
pub(crate) use with_float_array;

/// The array's elements as a slice; views that are not C-contiguous are refused (the
/// Python layer copies them once, only when needed).
pub fn slice<'a, T: Element>(a: &'a PyReadonlyArrayDyn<'_, T>, name: &str) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be a C-contiguous array")))
}

/// A read-only numpy array of exactly dtype `T`; otherwise a `TypeError` reading
/// "`name` must be `expected`" (e.g. "a float64 numpy array").
pub fn typed<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let a = obj
        .downcast::<PyArrayDyn<T>>()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be {expected}")))?;
    Ok(a.try_readonly()?)
}

/// Extracts an array of the same dtype and shape as `like`.
pub fn same_as<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    like: &PyReadonlyArrayDyn<'py, T>,
    like_name: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let expected = format!("a numpy array with the dtype of {like_name}");
    let a = typed(obj, name, &expected)?;
    if a.shape() != like.shape() {
        return Err(PyValueError::new_err(format!(
            "{name} must have the shape of {like_name} {:?}, got {:?}",
            like.shape(),
            a.shape()
        )));
    }
    Ok(a)
}

/// Runs `kernel` with the GIL released, inside the kexue thread pool.
pub fn detached<R: Send>(
    py: Python<'_>,
    kernel: impl FnOnce() -> kexue_core::Result<R> + Send,
) -> PyResult<R> {
    py.allow_threads(|| parallel::install(kernel))
        .map_err(to_py)
}

/// A new array of `shape` filled by `kernel` (GIL released); no zero-fill pass first.
pub fn filled<'py, T: Element + Send>(
    py: Python<'py>,
    shape: &[usize],
    kernel: impl FnOnce(&mut [T]) -> kexue_core::Result<()> + Send,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    // SAFETY: `kernel` writes every element before the array is returned to Python; on
    // error the array is dropped unread.
    let out = unsafe { PyArrayDyn::<T>::new(py, shape, false) };
    // SAFETY: the array was just created here, so no other reference to it exists.
    let data = unsafe { out.as_slice_mut() }.expect("a new array is contiguous");
    detached(py, || kernel(data))?;
    Ok(out)
}
