//! Losses and activations: multi-label CE, GlobalPointer, n×m loss, SquarePlus.

mod common;
pub mod global_pointer;
pub mod mlce;
pub mod nxm;
pub mod squareplus;
