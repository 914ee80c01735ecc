//! Keeps the OpenMP threads of another library in the process (torch's) off the cores while a
//! kernel runs.
//!
//! torch runs its operations on an OpenMP team whose threads, after each operation, spin for
//! milliseconds waiting for the next one (libgomp's default `GOMP_SPINCOUNT`). A kexue kernel
//! started meanwhile (an attention backward right after `loss.backward()` began, say) shares
//! the cores with them: on 2 cores with torch's default 2 threads, forward + backward of
//! causal attention took 8.6 ms instead of 4.5. No OpenMP call stops the spinning (the spin
//! count is read once, when the runtime loads), but a parallel region ends it: [`quiet`] runs
//! the kernel as thread 0 of a region of that runtime in which every other thread sleeps on a
//! condition variable until the kernel is done.
//!
//! The runtime is found among the loaded objects (libgomp, or Intel's or LLVM's, which export
//! the same GNU entry points; the first loaded, where a process has several) and used only if
//! it is there: kexue never loads one. Linux only (elsewhere [`quiet`] just runs the kernel).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

/// Runs `kernel` on the calling thread with the OpenMP team of the process asleep (see the
/// module doc). Only on the process's main thread, where torch's own work runs: a team
/// belongs to the thread that starts it, and a region on another thread would start a new
/// team there (a worker thread of a data pipeline would get as many threads as there are
/// cores). Elsewhere, without an OpenMP runtime or with a team of one, it just runs `kernel`.
///
/// Never in a `fork` child: the parent's team threads do not exist there, and a region would
/// wait for them forever (libgomp is not fork-safe; torch's own operations hang in such a
/// child too, once the parent has run them).
pub fn quiet<R>(kernel: impl FnOnce() -> R) -> R {
    match runtime::find() {
        Some(rt) if runtime::on_main_thread() && !forked() && rt.max_threads() > 1 => {
            rt.region(kernel)
        }
        _ => kernel(),
    }
}

/// The process the extension was loaded in: a `fork` child has another id.
static LOADED_IN: OnceLock<u32> = OnceLock::new();

/// Has [`forked`] report `fork` children from now on (called when the extension loads).
pub fn watch_forks() {
    LOADED_IN.get_or_init(std::process::id);
}

/// Whether this process is a `fork` child of the one that loaded the extension.
fn forked() -> bool {
    LOADED_IN
        .get()
        .is_some_and(|&pid| pid != std::process::id())
}

/// What [`quiet`]'s region shares between its threads.
struct Region<F, R> {
    kernel: Mutex<Option<F>>,
    result: Mutex<Option<std::thread::Result<R>>>,
    done: Mutex<bool>,
    woken: Condvar,
}

/// A lock that a panic elsewhere does not poison (the region's data stays consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<F: FnOnce() -> R, R> Region<F, R> {
    fn new(kernel: F) -> Self {
        Self {
            kernel: Mutex::new(Some(kernel)),
            result: Mutex::new(None),
            done: Mutex::new(false),
            woken: Condvar::new(),
        }
    }

    /// Thread 0 runs the kernel (a panic is kept, not unwound through the runtime's frames),
    /// then wakes the others, which sleep until then.
    fn enter(&self, thread: i32) {
        if thread == 0 {
            if let Some(kernel) = lock(&self.kernel).take() {
                *lock(&self.result) = Some(catch_unwind(AssertUnwindSafe(kernel)));
            }
            *lock(&self.done) = true;
            self.woken.notify_all();
            return;
        }
        let mut done = lock(&self.done);
        while !*done {
            done = self.woken.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The kernel's result, or its panic resumed; the kernel itself if no thread 0 ran it.
    fn finish(self) -> R {
        match self.result.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => resume_unwind(panic),
            None => match self.kernel.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(kernel) => kernel(),
                None => unreachable!("a kernel taken has left a result"),
            },
        }
    }
}

#[cfg(target_os = "linux")]
mod runtime {
    use std::ffi::{c_int, c_uint, c_void, CStr, CString};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    use super::Region;

    type Body = unsafe extern "C" fn(*mut c_void);

    type Parallel = unsafe extern "C" fn(Body, *mut c_void, c_uint, c_uint);
    type Query = unsafe extern "C" fn() -> c_int;

    /// The entry points of the process's OpenMP runtime.
    #[derive(Clone, Copy)]
    pub struct Runtime {
        parallel: Parallel,
        thread_num: Query,
        max_threads: Query,
    }

    /// Names of the objects that provide an OpenMP runtime.
    const RUNTIMES: [&str; 3] = ["libgomp", "libiomp5", "libomp"];

    static FOUND: OnceLock<Runtime> = OnceLock::new();
    /// How many objects had been loaded when a search last found none (`dlpi_adds`).
    static SEARCHED_AT: AtomicU64 = AtomicU64::new(u64::MAX);

    /// The runtime, once one is loaded: searched for again only when objects were loaded since
    /// the last search (torch may be imported after kexue).
    pub fn find() -> Option<Runtime> {
        if let Some(rt) = FOUND.get() {
            return Some(*rt);
        }
        let loaded = loads();
        if SEARCHED_AT.swap(loaded, Ordering::Relaxed) == loaded {
            return None;
        }
        let rt = search()?;
        Some(*FOUND.get_or_init(|| rt))
    }

    /// Whether this is the process's first thread (Python's main thread).
    pub fn on_main_thread() -> bool {
        // SAFETY: `gettid` and `getpid` have no preconditions.
        unsafe { libc::gettid() == libc::getpid() }
    }

    impl Runtime {
        /// The team size a region started now would get (torch sets it to its thread count).
        pub fn max_threads(&self) -> c_int {
            // SAFETY: `omp_get_max_threads` takes no arguments and has no preconditions.
            unsafe { (self.max_threads)() }
        }

        /// `kernel` in a region of the default team size, as [`Region::enter`] says.
        pub fn region<F: FnOnce() -> R, R>(self, kernel: F) -> R {
            unsafe extern "C" fn body<F: FnOnce() -> R, R>(data: *mut c_void) {
                // SAFETY: `data` is the `(Region, Runtime)` below, alive until the region ends;
                // the region's threads share it by `&` only.
                let (region, rt) = unsafe { &*data.cast::<(Region<F, R>, Runtime)>() };
                // SAFETY: called inside the region, as `omp_get_thread_num` expects.
                region.enter(unsafe { (rt.thread_num)() });
            }
            let shared = (Region::new(kernel), self);
            let data = (&shared as *const (Region<_, R>, Runtime))
                .cast_mut()
                .cast();
            // SAFETY: `GOMP_parallel(fn, data, 0, 0)` runs `fn(data)` on every thread of a team
            // of the default size (the caller as thread 0) and returns once all have returned;
            // `body` does not unwind (the kernel's panic is caught in `enter`).
            unsafe { (self.parallel)(body::<F, R>, data, 0, 0) };
            shared.0.finish()
        }
    }

    /// `dlpi_adds`: how many objects the process has loaded so far.
    fn loads() -> u64 {
        unsafe extern "C" fn first(
            info: *mut libc::dl_phdr_info,
            _: usize,
            data: *mut c_void,
        ) -> c_int {
            // SAFETY: the loader passes a valid entry, `data` is the `u64` below.
            unsafe { *data.cast::<u64>() = (*info).dlpi_adds };
            1 // one entry is enough
        }
        let mut adds = 0u64;
        // SAFETY: `first` matches the callback type and writes only `adds`.
        unsafe { libc::dl_iterate_phdr(Some(first), (&mut adds as *mut u64).cast()) };
        adds
    }

    /// Opens (without loading) the first loaded object named as an OpenMP runtime and takes
    /// its entry points. The handle is never closed, so the runtime stays loaded.
    fn search() -> Option<Runtime> {
        unsafe extern "C" fn named(
            info: *mut libc::dl_phdr_info,
            _: usize,
            data: *mut c_void,
        ) -> c_int {
            // SAFETY: the loader passes a valid entry whose name, when set, is a C string;
            // `data` is the `Option<CString>` below.
            let name = unsafe { (*info).dlpi_name };
            if name.is_null() {
                return 0;
            }
            let name = unsafe { CStr::from_ptr(name) };
            let file = name.to_bytes().rsplit(|&b| b == b'/').next().unwrap_or(&[]);
            if RUNTIMES.iter().any(|r| file.starts_with(r.as_bytes())) {
                unsafe { *data.cast::<Option<CString>>() = Some(name.to_owned()) };
                return 1;
            }
            0
        }
        let mut path: Option<CString> = None;
        // SAFETY: `named` matches the callback type and writes only `path`.
        unsafe { libc::dl_iterate_phdr(Some(named), (&mut path as *mut Option<_>).cast()) };
        let path = path?;
        // SAFETY: RTLD_NOLOAD opens only an object already loaded (no initialisers run).
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if handle.is_null() {
            return None;
        }
        let symbol = |name: &CStr| {
            // SAFETY: a valid handle and a C string.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let (parallel, thread_num, max_threads) = (
            symbol(c"GOMP_parallel")?,
            symbol(c"omp_get_thread_num")?,
            symbol(c"omp_get_max_threads")?,
        );
        // SAFETY: these are the GNU OpenMP ABI's signatures of the three symbols.
        unsafe {
            Some(Runtime {
                parallel: std::mem::transmute::<*mut c_void, Parallel>(parallel),
                thread_num: std::mem::transmute::<*mut c_void, Query>(thread_num),
                max_threads: std::mem::transmute::<*mut c_void, Query>(max_threads),
            })
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod runtime {
    /// No OpenMP runtime is looked for off Linux.
    pub enum Runtime {}

    pub fn find() -> Option<Runtime> {
        None
    }

    pub fn on_main_thread() -> bool {
        false
    }

    impl Runtime {
        pub fn max_threads(&self) -> i32 {
            match *self {}
        }

        pub fn region<R>(self, _: impl FnOnce() -> R) -> R {
            match self {}
        }
    }
}
