//! kexue-core: the pure-Rust kernels behind the `kexue` Python package.
//!
//! No Python types appear here; every fallible function returns [`Result`], and the
//! bindings crate maps [`Error`] to Python exceptions at the boundary.

pub mod attention;
pub mod cancel;
pub mod cgmh;
pub mod error;
pub mod lm;
pub mod losses;
pub mod memory;
pub mod multitask;
pub mod num;
pub mod parallel;
pub mod rng;
pub mod vmf;

pub use error::{Error, Result};
