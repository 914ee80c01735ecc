//! The plain types and small formulas shared by the attention forms and the f32 fast path.

use crate::{Error, Result};

/// How a causal pass is scheduled; all give the same result up to rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Blocks of `C` tokens: masked `C × C` products inside, the carried state across.
    Chunked(usize),
    /// The prefix-sum recurrence, one token at a time in f64 (what decoding runs).
    Scan,
    /// The parallel masked quadratic form, `O(N²)`: a reference.
    Quadratic,
}

/// Largest chunk: each holds `C × C` products per thread (128 MiB in f64 at 4096), and a
/// larger one gives the same result at more memory.
pub const MAX_CHUNK: usize = 4096;

impl Method {
    pub fn parse(name: &str, chunk_size: usize) -> Result<Self> {
        match name {
            "chunked" if !(1..=MAX_CHUNK).contains(&chunk_size) => Err(Error::value(
                "chunk_size",
                format!("must be in 1..={MAX_CHUNK}, got {chunk_size}"),
            )),
            "chunked" => Ok(Method::Chunked(chunk_size)),
            "scan" => Ok(Method::Scan),
            "quadratic" => Ok(Method::Quadratic),
            _ => Err(Error::value(
                "method",
                format!("must be 'chunked', 'scan' or 'quadratic', got {name:?}"),
            )),
        }
    }
}

/// `bh` heads of `nq` queries and `nk` keys/values (equal when causal), `m` features,
/// `dv` value columns.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub bh: usize,
    pub nq: usize,
    pub nk: usize,
    pub m: usize,
    pub dv: usize,
}

/// The forward outputs and the gradients flowing into them, and the forward's `eps`.
pub struct Grads<'a, T> {
    pub o: &'a [T],
    pub den: &'a [T],
    pub go: &'a [T],
    pub gden: &'a [T],
    pub eps: f64,
}

/// The denominator from `qᵀz` (see the module doc).
#[inline(always)]
pub(crate) fn denominator(qz: f64, eps: f64) -> f64 {
    qz * (1.0 + eps)
}

/// `1/den`, or 0 where the denominator is 0 (so those outputs and gradients are 0, not NaN).
#[inline(always)]
pub(crate) fn inverse(den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        1.0 / den
    }
}

/// How far a chunk's key logits may rise above its stabiliser before the chunk is cut there:
/// its key features stay below `e^SLACK`, and a chunk is cut only where the running maximum
/// jumps (a few times in a random sequence, however long).
pub(crate) const SLACK: f64 = 8.0;

/// `s ← a·s` (the state brought to a larger stabiliser).
pub(crate) fn rescale(s: &mut [f64], a: f64) {
    s.iter_mut().for_each(|x| *x *= a);
}
