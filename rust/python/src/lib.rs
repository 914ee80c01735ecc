//! kexue._native: bindings of kexue-core. Conversion, GIL release and error mapping only —
//! every formula lives in the core crate.

use pyo3::prelude::*;

mod alloc;
mod arrays;
mod attention;
mod cgmh;
mod errors;
mod lm;
mod losses;
mod multitask;
mod openmp;
mod vmf;

#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

/// Sizes the thread pool used by every kernel; 0 restores the default.
#[pyfunction]
fn set_num_threads(n: &Bound<'_, PyAny>) -> errors::Result<()> {
    Ok(kexue_core::parallel::set_num_threads(arrays::int(n, "n")?)?)
}

/// Number of threads a kernel started now would use.
#[pyfunction]
fn get_num_threads() -> usize {
    kexue_core::parallel::num_threads()
}

/// The SIMD road the kernels run on (`KEXUE_SIMD`, else the widest the CPU has).
#[pyfunction]
fn simd_road() -> errors::Result<&'static str> {
    Ok(kexue_core::num::try_road()?.name())
}

/// Panics inside a kernel run, to test that the boundary turns it into `RuntimeError`.
#[pyfunction]
fn _panic_in_kernel(py: Python<'_>) -> errors::Result<()> {
    arrays::detached(py, || -> kexue_core::Result<()> {
        panic!("forced by a test")
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A bad KEXUE_SIMD is a ValueError at import, before any kernel can meet it.
    kexue_core::num::try_road().map_err(errors::Error::from)?;
    openmp::watch_forks();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(simd_road, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_in_kernel, m)?)?;
    losses::register(m)?;
    lm::register(m)?;
    vmf::register(m)?;
    multitask::register(m)?;
    attention::register(m)?;
    cgmh::register(m)?;
    Ok(())
}
