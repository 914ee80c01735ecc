//! Cooperative cancellation of long native work (Ctrl-C).
//!
//! Kernels poll [`requested`] or [`check`] between chunks, chains or steps: a relaxed atomic
//! load, so polling costs nothing measurable. The bindings raise the flag with a [`Request`]
//! when the calling thread sees a signal (Python's `check_signals`), wait for the kernel to
//! wind down, then drop the request. A signal is process-wide, so one interrupt cancels every
//! native call running at that moment, as Ctrl-C stops the whole program.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Error, Result};

/// Number of live [`Request`]s (several threads may be interrupted at once).
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Whether running work should stop as soon as it can.
#[inline]
pub fn requested() -> bool {
    PENDING.load(Ordering::Relaxed) != 0
}

/// `Err(Error::Interrupted)` when cancellation is requested.
#[inline]
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// [`check`] at every 65536th `i`: for sequential loops over millions of items, which a
/// check per item would slow and a check per loop would not stop in time.
#[inline]
pub fn check_every(i: usize) -> Result<()> {
    if i.is_multiple_of(1 << 16) {
        check()
    } else {
        Ok(())
    }
}

/// Cancellation requested for as long as this value lives.
pub struct Request(());

impl Request {
    #[allow(clippy::new_without_default)] // raising the flag is an action, not a default
    pub fn new() -> Self {
        PENDING.fetch_add(1, Ordering::SeqCst);
        Request(())
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        PENDING.fetch_sub(1, Ordering::SeqCst);
    }
}
