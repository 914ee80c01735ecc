//! The thread pool every kernel runs in.
//!
//! rayon's global pool can be sized only once per process, but `kexue.set_num_threads`
//! must work at any time, so kernels run inside a replaceable pool of our own. Until a
//! size is set, rayon's global pool (which honours `RAYON_NUM_THREADS`) is used.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::{Error, Result};

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);
/// Process that started the pool's threads: a `fork` child inherits the pool but not its
/// threads, so a kernel run there would wait forever on workers that do not exist.
static PID: AtomicU32 = AtomicU32::new(0);
/// Set in a `fork` child: rayon's global pool may be one of the dead inherited ones.
static FORKED: AtomicBool = AtomicBool::new(false);

/// Elements per task below which splitting work costs more than it saves.
pub const MIN_CHUNK: usize = 1 << 14;

/// Sizes the pool; `0` returns to rayon's default (`RAYON_NUM_THREADS` or the core count).
pub fn set_num_threads(n: usize) -> Result<()> {
    current(); // in a fork child, first replaces the inherited pool (never drops it)
    let n = if n == 0 && FORKED.load(Ordering::Acquire) {
        rayon::current_num_threads() // the default size, but in a pool of live threads
    } else {
        n
    };
    let pool = if n == 0 {
        None
    } else {
        let pool = ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("kexue-{i}"))
            .build()
            .map_err(|e| Error::value("n", format!("could not start {n} threads: {e}")))?;
        Some(Arc::new(pool))
    };
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = pool;
    Ok(())
}

/// Number of threads a kernel started now would use.
pub fn num_threads() -> usize {
    current().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
}

fn current() -> Option<Arc<ThreadPool>> {
    let pid = std::process::id();
    if PID.load(Ordering::Acquire) != pid {
        let mut pool = POOL.write().unwrap_or_else(|e| e.into_inner());
        let owner = PID.load(Ordering::Acquire);
        if owner != pid {
            if owner != 0 {
                // Forked child: start live threads, as many as before. The inherited pool is
                // leaked, not dropped: dropping would signal threads that are not there.
                let n = pool
                    .as_ref()
                    .map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
                std::mem::forget(pool.take());
                FORKED.store(true, Ordering::Release);
                *pool = ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("kexue-{i}"))
                    .build()
                    .ok()
                    .map(Arc::new);
            }
            PID.store(pid, Ordering::Release);
        }
    }
    POOL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Runs `f` inside the kexue pool, so rayon calls in `f` use its threads.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match current() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// `rayon::in_place_scope` in the kexue pool: `f` runs on the calling thread, the jobs it
/// spawns on the pool's threads.
pub fn in_place_scope<'scope, R>(f: impl FnOnce(&rayon::Scope<'scope>) -> R) -> R {
    match current() {
        Some(pool) => pool.in_place_scope(f),
        None => rayon::in_place_scope(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_follows_set_num_threads() {
        set_num_threads(3).unwrap();
        assert_eq!(num_threads(), 3);
        assert_eq!(install(rayon::current_num_threads), 3);
        set_num_threads(0).unwrap();
        assert_eq!(num_threads(), rayon::current_num_threads());
    }
}
