//! Losses and activations: multi-label CE, GlobalPointer, n×m loss, SquarePlus.

pub mod squareplus;
