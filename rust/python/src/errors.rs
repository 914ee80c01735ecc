//! The one place where core errors become Python exceptions, and Python exceptions raised by
//! callbacks travel through core code (as [`Error::Callback`]) back to the caller unchanged.

use std::any::Any;

use kexue_core::Error;
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::PyErr;

pub fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::Type { .. } => PyTypeError::new_err(message),
        Error::Value { .. } | Error::Format { .. } => PyValueError::new_err(message),
        Error::Io { source, .. } => PyOSError::new_err((source.raw_os_error(), message)),
        Error::Memory { .. } => PyMemoryError::new_err(message),
        Error::Interrupted => PyKeyboardInterrupt::new_err(()),
        Error::Callback(e) => match e.downcast::<PyErr>() {
            Ok(e) => *e,
            Err(e) => PyRuntimeError::new_err(e.to_string()),
        },
    }
}

/// A Python exception raised by a callback (scorer, prior), carried through the core as
/// itself: `KeyboardInterrupt`, a user's own exception class or a torch error reach the
/// caller with their type and traceback.
pub fn from_py(err: PyErr) -> Error {
    Error::Callback(Box::new(err))
}

/// A Rust panic caught at the boundary, as an ordinary exception (a panic is a kexue bug;
/// pyo3's `PanicException` is a `BaseException` that `except Exception` would not catch).
pub fn panic_to_py(payload: Box<dyn Any + Send>) -> PyErr {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    PyRuntimeError::new_err(format!(
        "internal error in kexue (please report it): {message}"
    ))
}
