//! The one error type of the core; the bindings convert it once at the boundary.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument has the right type but a bad value (maps to `ValueError`).
    #[error("{name} {expected}")]
    Value { name: String, expected: String },
    /// An argument has the wrong kind or dtype (maps to `TypeError`).
    #[error("{name} {expected}")]
    Type { name: String, expected: String },
    /// A file exists but its content is not what was expected (maps to `ValueError`).
    #[error("{path}{}: {message}", at_line(*.line), path = .path.display())]
    Format {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The operating system refused a read or write (maps to `OSError`).
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An allocation the machine cannot satisfy (maps to `MemoryError`); `what` names the
    /// request (an argument or the structure being built).
    #[error("{what}: cannot allocate {} ({bytes} bytes)", human_bytes(*.bytes))]
    Memory { what: String, bytes: u128 },
    /// The work was cancelled by [`crate::cancel`] (the bindings raise the caller's
    /// `KeyboardInterrupt`).
    #[error("interrupted")]
    Interrupted,
    /// An error raised by caller-supplied code (a Python callback) that must reach the caller
    /// unchanged; the bindings downcast it back to the exception it carries.
    #[error("{0}")]
    Callback(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// `name` has a bad value: the message reads "`name` `expected`".
    pub fn value(name: impl Into<String>, expected: impl Into<String>) -> Self {
        Error::Value {
            name: name.into(),
            expected: expected.into(),
        }
    }

    /// `name` has the wrong type: the message reads "`name` `expected`".
    pub fn type_(name: impl Into<String>, expected: impl Into<String>) -> Self {
        Error::Type {
            name: name.into(),
            expected: expected.into(),
        }
    }

    /// Content of `path` is malformed at `line` (1-based; 0 when no line applies).
    pub fn format(path: impl AsRef<Path>, line: usize, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// Allocating `bytes` for `what` failed or would exceed the machine.
    pub fn memory(what: impl Into<String>, bytes: u128) -> Self {
        Error::Memory {
            what: what.into(),
            bytes,
        }
    }

    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

fn at_line(line: usize) -> String {
    match line {
        0 => String::new(),
        n => format!(": line {n}"),
    }
}

fn human_bytes(bytes: u128) -> String {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    }
}

/// Checks that a scalar parameter is finite and at least `min`.
pub fn check_finite_at_least(name: &str, value: f64, min: f64) -> Result<f64> {
    if value.is_finite() && value >= min {
        Ok(value)
    } else {
        Err(Error::value(
            name,
            format!("must be a finite number >= {min}, got {value}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_argument() {
        let e = check_finite_at_least("b", f64::NAN, 0.0).unwrap_err();
        assert_eq!(e.to_string(), "b must be a finite number >= 0, got NaN");
        let e = Error::format("model.arpa", 12, "expected 3 fields");
        assert_eq!(e.to_string(), "model.arpa: line 12: expected 3 fields");
        let e = Error::format("model.bin", 0, "corrupt");
        assert_eq!(e.to_string(), "model.bin: corrupt");
        let e = Error::memory("n", 3 << 30);
        assert_eq!(
            e.to_string(),
            "n: cannot allocate 3.0 GiB (3221225472 bytes)"
        );
    }
}
