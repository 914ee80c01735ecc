//! The bindings' one error type, converted to a Python exception once, when a binding returns
//! (as polars' `PyPolarsErr`): bindings build core errors (`Error::value`, `Error::type_`)
//! and propagate pyo3's with `?`; Python exceptions raised by callbacks travel through core
//! code (as [`kexue_core::Error::Callback`]) back to the caller unchanged.

use std::any::Any;

use kexue_core::Error as Core;
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::{DowncastError, PyErr};

/// An error of a binding: a core error, or a Python exception already made (a failed
/// conversion, a callback's own).
pub enum Error {
    Core(Core),
    Py(PyErr),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `name` has a bad value (`ValueError`): the message reads "`name` `expected`".
    pub fn value(name: &str, expected: impl Into<String>) -> Self {
        Error::Core(Core::value(name, expected))
    }

    /// `name` has the wrong type or dtype (`TypeError`): "`name` `expected`".
    pub fn type_(name: &str, expected: impl Into<String>) -> Self {
        Error::Core(Core::type_(name, expected))
    }
}

impl From<Core> for Error {
    fn from(e: Core) -> Self {
        Error::Core(e)
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Error::Py(e)
    }
}

impl From<numpy::BorrowError> for Error {
    fn from(e: numpy::BorrowError) -> Self {
        Error::Py(e.into())
    }
}

impl From<numpy::NotContiguousError> for Error {
    fn from(e: numpy::NotContiguousError) -> Self {
        Error::Py(e.into())
    }
}

impl From<DowncastError<'_, '_>> for Error {
    fn from(e: DowncastError<'_, '_>) -> Self {
        Error::Py(e.into())
    }
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let err = match err {
            Error::Py(e) => return e,
            Error::Core(e) => e,
        };
        let message = err.to_string();
        match err {
            Core::Type { .. } => PyTypeError::new_err(message),
            Core::Value { .. } | Core::Format { .. } => PyValueError::new_err(message),
            Core::Io { source, .. } => PyOSError::new_err((source.raw_os_error(), message)),
            Core::Memory { .. } => PyMemoryError::new_err(message),
            Core::Interrupted => PyKeyboardInterrupt::new_err(()),
            Core::Callback(e) => match e.downcast::<PyErr>() {
                Ok(e) => *e,
                Err(e) => PyRuntimeError::new_err(e.to_string()),
            },
        }
    }
}

/// A Python exception raised by a callback (scorer, prior), carried through the core as
/// itself: `KeyboardInterrupt`, a user's own exception class or a torch error reach the
/// caller with their type and traceback.
pub fn from_py(err: PyErr) -> Core {
    Core::Callback(Box::new(err))
}

/// A Rust panic caught at the boundary, as an ordinary exception (a panic is a kexue bug;
/// pyo3's `PanicException` is a `BaseException` that `except Exception` would not catch).
pub fn panic_to_py(payload: Box<dyn Any + Send>) -> Error {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Error::Py(PyRuntimeError::new_err(format!(
        "internal error in kexue (please report it): {message}"
    )))
}
