//! Linear attention: feature maps, streaming causal state, parallel and chunked forms.
//!
//! All forms compute `o_t = φ(q_t)ᵀ S_t / ((1 + eps)·φ(q_t)ᵀ z_t)` with `S_t = Σ_{s≤t} φ(k_s) v_sᵀ`
//! and `z_t = Σ_{s≤t} φ(k_s)` (causal) or the sums over every key (non-causal). The
//! normaliser rides along as one extra value column of ones, so `S` and `z` live in one
//! `M × (D_v + 1)` state, kept in f64 whatever the input dtype.
//!
//! Layout: feature-mapped queries/keys `(BH, N, M)`, values `(BH, N, D_v)`, C-contiguous;
//! every `(b, h)` slab is independent and is what rayon parallelises over.

pub mod decode;
mod fast;
pub mod features;
pub mod forms;
mod gemm;
pub mod projection;
mod types;

pub use fast::Real;
pub use types::MAX_CHUNK;
