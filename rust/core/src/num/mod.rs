//! The numeric layer the kernels share: the float trait [`Real`] (with the one vectorising
//! f32 `exp`), lane reductions, transposes and prefetches, hashing, and the SIMD road
//! every per-ISA kernel runs on ([`road`], [`per_road!`](crate::per_road)).

mod hash;
mod lanes;
mod real;
mod road;

pub use hash::{eq_mask16, fmix64};
pub use lanes::{lanes, prefetch, prefetch_lines, transpose16, tree};
pub use real::Real;
pub use road::{road, try_road, Road, VAR};
