//! The one place where core errors become Python exceptions.

use kexue_core::Error;
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::PyErr;

pub fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::Type { .. } => PyTypeError::new_err(message),
        Error::Value { .. } | Error::Format { .. } => PyValueError::new_err(message),
        Error::Io { source, .. } => PyOSError::new_err((source.raw_os_error(), message)),
    }
}
