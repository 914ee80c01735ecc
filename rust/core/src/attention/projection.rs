//! Orthogonal random projections for FAVOR+ (Choromanski et al., §2.4): `m` rows in blocks
//! of `d` mutually orthogonal directions, each block from its own seeded stream.

use rand::Rng as _;
use rand_distr::StandardNormal;

use crate::rng;
use crate::{Error, Result};

/// Row lengths of the projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scaling {
    /// Lengths drawn from χ_d (the norm of a fresh Gaussian vector), so each row is
    /// marginally `N(0, I_d)`: the estimator stays unbiased.
    Chi,
    /// Every row has length `√d` (performer-pytorch's `ortho_scaling=1`).
    Sqrt,
}

impl std::str::FromStr for Scaling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "chi" => Ok(Scaling::Chi),
            "sqrt" => Ok(Scaling::Sqrt),
            _ => Err(Error::value(
                "scaling",
                format!("must be 'chi' or 'sqrt', got {s:?}"),
            )),
        }
    }
}

/// Rows largest per allocation: `m·d` f64 are returned, refuse absurd requests early.
const MAX_ELEMENTS: usize = 1 << 30;

/// Gram–Schmidt, done twice per vector ("twice is enough"), orthonormalises the rows of a
/// `d × d` Gaussian block in place: the rows are then a Haar-random orthonormal set (what QR
/// with a positive diagonal gives). Hand-written: the core has no linear-algebra dependency
/// and `d` is small.
fn orthonormalise(block: &mut [f64], d: usize) {
    for i in 0..d {
        let (done, rest) = block.split_at_mut(i * d);
        let row = &mut rest[..d];
        for _ in 0..2 {
            for prev in done.chunks_exact(d) {
                let dot: f64 = prev.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                row.iter_mut().zip(prev).for_each(|(r, p)| *r -= dot * p);
            }
        }
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

/// An `m × d` projection (row-major, f64): block `b` (rows `b·d ..`) comes from stream
/// `(seed, b)`, its row lengths from stream `(seed, blocks + row)`.
pub fn orthogonal_random(m: usize, d: usize, seed: u64, scaling: Scaling) -> Result<Vec<f64>> {
    if m == 0 {
        return Err(Error::value(
            "m",
            "must be a positive number of features, got 0",
        ));
    }
    if d == 0 {
        return Err(Error::value("d", "must be a positive dimension, got 0"));
    }
    if m.checked_mul(d).is_none_or(|n| n > MAX_ELEMENTS) || d.saturating_mul(d) > MAX_ELEMENTS {
        return Err(Error::value(
            "m",
            format!("m·d must be at most {MAX_ELEMENTS}, got m={m}, d={d}"),
        ));
    }
    let blocks = m.div_ceil(d);
    let mut out = Vec::with_capacity(m * d);
    let mut block = vec![0.0; d * d];
    for b in 0..blocks {
        let mut rng = rng::stream(seed, b as u64);
        block
            .iter_mut()
            .for_each(|x| *x = rng.sample(StandardNormal));
        orthonormalise(&mut block, d);
        let rows = d.min(m - b * d);
        out.extend_from_slice(&block[..rows * d]);
    }
    for (i, row) in out.chunks_exact_mut(d).enumerate() {
        let length = match scaling {
            Scaling::Sqrt => (d as f64).sqrt(),
            Scaling::Chi => {
                let mut rng = rng::stream(seed, (blocks + i) as u64);
                (0..d)
                    .map(|_| rng.sample::<f64, _>(StandardNormal).powi(2))
                    .sum::<f64>()
                    .sqrt()
            }
        };
        row.iter_mut().for_each(|x| *x *= length);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_orthogonal_and_lengths_follow_the_scaling() {
        let (m, d) = (10, 4);
        let w = orthogonal_random(m, d, 3, Scaling::Sqrt).unwrap();
        for (i, a) in w.chunks(d).enumerate() {
            let norm2: f64 = a.iter().map(|x| x * x).sum();
            assert!((norm2 - d as f64).abs() < 1e-12);
            for (j, b) in w.chunks(d).enumerate() {
                if i != j && i / d == j / d {
                    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                    assert!(dot.abs() < 1e-12, "rows {i},{j}: {dot}");
                }
            }
        }
        assert_eq!(w, orthogonal_random(m, d, 3, Scaling::Sqrt).unwrap());
        assert_ne!(w, orthogonal_random(m, d, 4, Scaling::Sqrt).unwrap());
        let chi = orthogonal_random(m, d, 3, Scaling::Chi).unwrap();
        let lengths: Vec<f64> = chi
            .chunks(d)
            .map(|r| r.iter().map(|x| x * x).sum())
            .collect();
        assert!(lengths.windows(2).any(|p| (p[0] - p[1]).abs() > 1e-6));
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(orthogonal_random(0, 4, 0, Scaling::Chi).is_err());
        assert!(orthogonal_random(4, 0, 0, Scaling::Chi).is_err());
        assert!(orthogonal_random(usize::MAX, 4, 0, Scaling::Chi).is_err());
    }
}
