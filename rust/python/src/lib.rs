//! kexue._native: bindings of kexue-core. Conversion, GIL release and error mapping only —
//! every formula lives in the core crate.

use pyo3::prelude::*;

mod arrays;
mod attention;
mod cgmh;
mod errors;
mod lm;
mod losses;
mod multitask;
mod vmf;

/// Sizes the thread pool used by every kernel; 0 restores the default.
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    kexue_core::parallel::set_num_threads(n).map_err(errors::to_py)
}

/// Number of threads a kernel started now would use.
#[pyfunction]
fn get_num_threads() -> usize {
    kexue_core::parallel::num_threads()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    losses::register(m)?;
    lm::register(m)?;
    vmf::register(m)?;
    multitask::register(m)?;
    attention::register(m)?;
    cgmh::register(m)?;
    Ok(())
}
