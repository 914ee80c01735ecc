//! numpy ↔ slice conversion shared by every binding: dtype dispatch, contiguity,
//! uninitialised outputs, and running a kernel with the GIL released in the kexue pool.

use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use kexue_core::{cancel, memory, parallel};
use numpy::npyffi::{npy_intp, NpyTypes, PY_ARRAY_API};
use numpy::{
    Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::{panic_to_py, to_py};

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

/// How often the calling thread looks for signals (Ctrl-C) while a kernel runs.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Runs `kernel` with the GIL released, inside the kexue thread pool, and turns a panic into
/// a `RuntimeError`. The kernel runs on a pool thread while the calling thread checks for
/// signals every 50 ms: on one (`KeyboardInterrupt`), [`cancel`] is raised so that the kernel
/// stops at its next poll, and the signal's exception is returned once it has.
pub fn detached<R: Send>(
    py: Python<'_>,
    kernel: impl FnOnce() -> kexue_core::Result<R> + Send,
) -> PyResult<R> {
    detached_sized(py, usize::MAX, kernel)
}

/// Items of work below which a kernel is over in microseconds: it runs on the calling thread
/// (handing it to the pool and back costs ~5 µs, more than the work) and is not polled.
const SMALL_WORK: usize = parallel::MIN_CHUNK;

/// [`detached`] for a kernel of `work` items (elements, sentences, candidates): a small one
/// runs on the calling thread, GIL released and panics caught, without the signal polling.
pub fn detached_sized<R: Send>(
    py: Python<'_>,
    work: usize,
    kernel: impl FnOnce() -> kexue_core::Result<R> + Send,
) -> PyResult<R> {
    let guarded = || match catch_unwind(AssertUnwindSafe(kernel)) {
        Ok(result) => result.map_err(to_py),
        Err(payload) => Err(panic_to_py(payload)),
    };
    if work < SMALL_WORK || rayon::current_thread_index().is_some() {
        // Small, or called from a pool thread (a callback of another kernel), where parking
        // the thread to poll could starve the pool and signals are the outer call's to see.
        return py.allow_threads(|| parallel::install(guarded));
    }
    py.allow_threads(|| {
        let done = AtomicBool::new(false);
        let caller = thread::current();
        let mut result = None;
        let mut interrupted = None;
        parallel::in_place_scope(|scope| {
            scope.spawn(|_| {
                result = Some(guarded());
                done.store(true, Ordering::Release);
                caller.unpark();
            });
            while !done.load(Ordering::Acquire) {
                thread::park_timeout(SIGNAL_POLL);
                if interrupted.is_none() && !done.load(Ordering::Acquire) {
                    if let Err(e) = Python::with_gil(|py| py.check_signals()) {
                        interrupted = Some((e, cancel::Request::new()));
                    }
                }
            }
        });
        match (interrupted, result) {
            (Some((e, _request)), _) => Err(e),
            (None, Some(result)) => result,
            (None, None) => unreachable!("the scope waits for its job"),
        }
    })
}

/// A new uninitialised C-order array, or a `MemoryError` naming `what` (numpy's own
/// constructor panics when the allocation fails).
pub fn empty<'py, T: Element>(
    py: Python<'py>,
    shape: &[usize],
    what: &str,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    new_array(py, shape, what, false)
}

/// A new zero-filled C-order array, or a `MemoryError` naming `what`.
pub fn zeros<'py, T: Element>(
    py: Python<'py>,
    shape: &[usize],
    what: &str,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    new_array(py, shape, what, true)
}

fn new_array<'py, T: Element>(
    py: Python<'py>,
    shape: &[usize],
    what: &str,
    zeroed: bool,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let elements = shape
        .iter()
        .try_fold(1u128, |n, &d| n.checked_mul(d as u128))
        .unwrap_or(u128::MAX);
    let bytes = elements.saturating_mul(std::mem::size_of::<T>() as u128);
    memory::check_bytes(bytes, what).map_err(to_py)?;
    let mut dims: Vec<npy_intp> = shape.iter().map(|&d| d as npy_intp).collect();
    // SAFETY: the numpy C API is called with the GIL held, a dims array of `shape.len()`
    // entries, and a new reference to the dtype (which the callee steals).
    let ptr = unsafe {
        let dtype = T::get_dtype(py).into_dtype_ptr();
        let ndim = dims.len() as c_int;
        if zeroed {
            PY_ARRAY_API.PyArray_Zeros(py, ndim, dims.as_mut_ptr(), dtype, 0)
        } else {
            let subtype = PY_ARRAY_API.get_type_object(py, NpyTypes::PyArray_Type);
            PY_ARRAY_API.PyArray_NewFromDescr(
                py,
                subtype,
                dtype,
                ndim,
                dims.as_mut_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
            )
        }
    };
    // SAFETY: a new reference or NULL with an exception set.
    let array = unsafe { Bound::from_owned_ptr_or_err(py, ptr) };
    match array {
        Ok(a) => Ok(unsafe { a.downcast_into_unchecked() }),
        Err(e) if e.is_instance_of::<PyMemoryError>(py) => {
            Err(to_py(kexue_core::Error::memory(what, bytes)))
        }
        Err(e) => Err(e),
    }
}

/// A new array of `shape` filled by `kernel` (GIL released); no zero-fill pass first.
pub fn filled<'py, T: Element + Send>(
    py: Python<'py>,
    shape: &[usize],
    kernel: impl FnOnce(&mut [T]) -> kexue_core::Result<()> + Send,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    // `kernel` writes every element before the array is returned to Python; on error the
    // array is dropped unread.
    let out = empty::<T>(py, shape, "output")?;
    // SAFETY: the array was just created here, so no other reference to it exists.
    let data = unsafe { out.as_slice_mut() }.expect("a new array is contiguous");
    detached_sized(py, data.len(), || kernel(data))?;
    Ok(out)
}
