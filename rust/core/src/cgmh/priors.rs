//! Built-in soft terms of the target for paraphrase and error correction.

use super::Prior;
use crate::{Error, Result};

/// The built-in soft terms, by the names the bindings take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriorKind {
    /// [`BowCosine`]
    Cosine,
    /// [`EditPenalty`]
    Edit,
}

impl std::str::FromStr for PriorKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(PriorKind::Cosine),
            "edit" => Ok(PriorKind::Edit),
            _ => Err(Error::value(
                "priors",
                format!("kinds must be 'cosine' or 'edit', got {s:?}"),
            )),
        }
    }
}

/// `weight · cos(bag of words of x, bag of words of source)`: the simple default similarity
/// for paraphrase (Miao et al. use sentence embeddings; a pluggable embedding prior lives in
/// the bindings). Counting words keeps it exact on repeats.
pub struct BowCosine {
    source: Vec<(u32, f64)>,
    norm: f64,
    weight: f64,
}

fn counts(x: &[u32]) -> Vec<(u32, f64)> {
    let mut s = x.to_vec();
    s.sort_unstable();
    let mut out: Vec<(u32, f64)> = Vec::new();
    for w in s {
        match out.last_mut() {
            Some((v, c)) if *v == w => *c += 1.0,
            _ => out.push((w, 1.0)),
        }
    }
    out
}

impl BowCosine {
    pub fn new(source: &[u32], weight: f64) -> Self {
        let source = counts(source);
        let norm = source.iter().map(|(_, c)| c * c).sum::<f64>().sqrt();
        BowCosine {
            source,
            norm,
            weight,
        }
    }
}

impl Prior for BowCosine {
    fn log_score(&self, x: &[u32]) -> Result<f64> {
        let cx = counts(x);
        let nx = cx.iter().map(|(_, c)| c * c).sum::<f64>().sqrt();
        let dot: f64 = cx
            .iter()
            .filter_map(|(w, c)| {
                let i = self.source.binary_search_by_key(w, |(v, _)| *v).ok()?;
                Some(c * self.source[i].1)
            })
            .sum();
        let cos = if nx > 0.0 && self.norm > 0.0 {
            dot / (nx * self.norm)
        } else {
            0.0
        };
        Ok(self.weight * cos)
    }
}

/// `−weight · edit distance(x, source)` in words: error correction stays close to the input.
pub struct EditPenalty {
    source: Vec<u32>,
    weight: f64,
}

impl EditPenalty {
    pub fn new(source: &[u32], weight: f64) -> Self {
        EditPenalty {
            source: source.to_vec(),
            weight,
        }
    }
}

/// Levenshtein distance over word ids (two rows; hand-written: a dozen lines, no dependency).
pub fn edit_distance(a: &[u32], b: &[u32]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

impl Prior for EditPenalty {
    fn log_score(&self, x: &[u32]) -> Result<f64> {
        Ok(-self.weight * edit_distance(x, &self.source) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_and_edit_distance() {
        let p = BowCosine::new(&[1, 2, 2], 2.0);
        assert!((p.log_score(&[1, 2, 2]).unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(p.log_score(&[3]).unwrap(), 0.0);
        // (1·1 + 2·1) / (sqrt(5) · sqrt(2))
        let want = 2.0 * 3.0 / (5f64.sqrt() * 2f64.sqrt());
        assert!((p.log_score(&[1, 2]).unwrap() - want).abs() < 1e-12);
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 3]), 1);
        assert_eq!(edit_distance(&[], &[1, 3]), 2);
        assert_eq!(edit_distance(&[1, 2, 3], &[3, 2, 1]), 2);
        assert_eq!(
            EditPenalty::new(&[1, 2], 0.5).log_score(&[2]).unwrap(),
            -0.5
        );
    }
}
