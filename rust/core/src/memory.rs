//! Allocations sized by a caller or by a file: refused with [`Error::Memory`] (Python's
//! `MemoryError`, naming the request) instead of aborting the process.
//!
//! Two checks: the request against the machine's memory (RAM + swap; with Linux's default
//! overcommit a larger allocation may succeed and the process is killed later, when the
//! pages are touched), and a fallible reservation (which honours `RLIMIT_AS` and allocator
//! failure).

use std::sync::OnceLock;

use crate::{Error, Result};

/// Bytes of RAM plus swap, when the system says (Linux `/proc/meminfo`).
fn machine_bytes() -> Option<u128> {
    static BYTES: OnceLock<Option<u128>> = OnceLock::new();
    *BYTES.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = |key: &str| -> Option<u128> {
            let line = info.lines().find(|l| l.starts_with(key))?;
            line[key.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        Some((kib("MemTotal:")? + kib("SwapTotal:").unwrap_or(0)) * 1024)
    })
}

/// Refuses `bytes` for `what` when it exceeds the machine's memory.
pub fn check_bytes(bytes: u128, what: &str) -> Result<()> {
    match machine_bytes() {
        Some(limit) if bytes > limit => Err(Error::memory(what, bytes)),
        _ if bytes > isize::MAX as u128 => Err(Error::memory(what, bytes)),
        _ => Ok(()),
    }
}

/// Bytes of `n` values of `T` (never overflows).
pub fn bytes_of<T>(n: usize) -> u128 {
    n as u128 * std::mem::size_of::<T>() as u128
}

/// Reserves room for `additional` more elements of `v`.
pub fn reserve<T>(v: &mut Vec<T>, additional: usize, what: &str) -> Result<()> {
    let bytes = bytes_of::<T>(additional);
    check_bytes(bytes, what)?;
    v.try_reserve_exact(additional)
        .map_err(|_| Error::memory(what, bytes))
}

/// A vector of `n` copies of `value`.
pub fn filled<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, n, what)?;
    v.resize(n, value);
    Ok(v)
}

/// An empty vector with room for `n` elements.
pub fn with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, n, what)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_requests_are_errors_naming_them() {
        let e = filled(usize::MAX / 2, 0u64, "n").unwrap_err();
        assert!(
            matches!(&e, Error::Memory { what, .. } if what == "n"),
            "{e}"
        );
        let e = with_capacity::<u8>(isize::MAX as usize, "table").unwrap_err();
        assert!(e.to_string().starts_with("table: cannot allocate"), "{e}");
        assert_eq!(filled(3, 7u8, "x").unwrap(), vec![7, 7, 7]);
    }
}
