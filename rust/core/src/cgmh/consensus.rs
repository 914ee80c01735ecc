//! Consensus choice among a pool of chains' sentences (minimum Bayes risk with BLEU as the
//! utility; Kumar & Byrne 2004, Eikema & Aziz 2020): each sentence is scored by its mean
//! smoothed sentence BLEU against the pool's other sentences, so the pick is the sentence the
//! other searches agree with most rather than one chain's highest-probability string, which
//! under an n-gram LM is often a run of frequent fragments that no other chain repeats.
//!
//! Written here because no maintained crate computes BLEU on word ids, and the pool's
//! n(n − 1) comparisons per input sit on the generation path.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::{parallel, Result};

/// BLEU's n-gram orders 1..=ORDERS.
const ORDERS: usize = 4;

/// Counts of a sentence's n-grams, one map per order.
struct Ngrams<'a> {
    len: usize,
    counts: [HashMap<&'a [u32], u32>; ORDERS],
}

impl<'a> Ngrams<'a> {
    fn new(x: &'a [u32]) -> Self {
        let counts = std::array::from_fn(|k| {
            let mut m = HashMap::new();
            for g in x.windows(k + 1) {
                *m.entry(g).or_insert(0) += 1;
            }
            m
        });
        Ngrams {
            len: x.len(),
            counts,
        }
    }
}

/// Sentence BLEU-4 of `h` against the single reference `r`, smoothed as BLEU+1 (Lin & Och
/// 2004: one added to the matches and totals of orders 2..4), so short sentences without a
/// 4-gram match still compare.
fn bleu(h: &Ngrams<'_>, r: &Ngrams<'_>) -> f64 {
    if h.len == 0 {
        return 0.0;
    }
    let mut log_precision = 0.0;
    for (k, (hc, rc)) in h.counts.iter().zip(&r.counts).enumerate() {
        let matches: u32 = hc
            .iter()
            .map(|(g, &c)| c.min(rc.get(g).copied().unwrap_or(0)))
            .sum();
        let total = h.len.saturating_sub(k) as f64;
        let add = if k == 0 { 0.0 } else { 1.0 };
        if f64::from(matches) + add == 0.0 {
            return 0.0;
        }
        log_precision += ((f64::from(matches) + add) / (total + add)).ln();
    }
    let brevity = (1.0 - r.len as f64 / h.len as f64).min(0.0);
    (log_precision / ORDERS as f64 + brevity).exp()
}

/// For each sentence of `pool`, its mean BLEU against the others (0 for a pool of one).
/// Stops with `Error::Interrupted` on cancellation (checked per sentence: a pool of m costs
/// m(m − 1) comparisons).
pub fn agreement(pool: &[Vec<u32>]) -> Result<Vec<f64>> {
    let grams: Vec<Ngrams<'_>> = pool.iter().map(|x| Ngrams::new(x)).collect();
    let others = pool.len().saturating_sub(1).max(1) as f64;
    (0..grams.len())
        .map(|i| {
            crate::cancel::check()?;
            let total: f64 = (0..grams.len())
                .filter(|&j| j != i)
                .map(|j| bleu(&grams[i], &grams[j]))
                .sum();
            Ok(total / others)
        })
        .collect()
}

/// [`agreement`] for many pools, in parallel.
pub fn agreements(pools: &[Vec<Vec<u32>>]) -> Result<Vec<Vec<f64>>> {
    parallel::install(|| pools.par_iter().map(|pool| agreement(pool)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BLEU+1 of "a b c d" against itself is 1; written out from the definition otherwise.
    #[test]
    fn bleu_matches_the_definition() {
        let x = [1, 2, 3, 4];
        assert!((bleu(&Ngrams::new(&x), &Ngrams::new(&x)) - 1.0).abs() < 1e-12);
        // h = a b c e, r = a b c d: matches 3/4, (2+1)/(3+1), (1+1)/(2+1), (0+1)/(1+1).
        let h = [1, 2, 3, 5];
        let want = ((0.75f64 * 0.75 * (2.0 / 3.0) * 0.5).ln() / 4.0).exp();
        let got = bleu(&Ngrams::new(&h), &Ngrams::new(&x));
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // A hypothesis shorter than its reference pays the brevity penalty exp(1 - 4/2).
        let short = [1, 2];
        // Every order matches in full (orders 3 and 4 have no n-gram: (0+1)/(0+1)).
        let want = (1.0f64 - 4.0 / 2.0).exp();
        let got = bleu(&Ngrams::new(&short), &Ngrams::new(&x));
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn the_sentence_the_pool_repeats_agrees_most() {
        let pool = vec![
            vec![1, 2, 3, 4, 5],
            vec![9, 8, 7],
            vec![1, 2, 3, 4, 6],
            vec![1, 2, 3, 4, 5],
        ];
        let a = agreement(&pool).unwrap();
        assert!(a[0] > a[2] && a[2] > a[1], "{a:?}");
        assert_eq!(a[0], a[3]);
        assert_eq!(agreement(&[vec![1, 2]]).unwrap(), vec![0.0]);
        assert!(agreement(&[]).unwrap().is_empty());
    }
}
