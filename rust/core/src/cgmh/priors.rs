//! Built-in soft terms of the target: similarity for paraphrase and error correction, and
//! the back-off penalty that keeps generated text on n-grams people wrote.

use std::sync::Arc;

use super::Prior;
use crate::lm::{Model, BOS, EOS};
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

/// `−cost` per word (and per end of sentence) that the n-gram model scores from a context
/// shorter than `order − 1` words — that is, whose n-gram of that order never occurred in its
/// training text, so the model backed off (the first words count against what their short
/// context allows: the second word's trigram is `<s> w1 w2`). Kneser–Ney gives such joins a
/// probability that is small but not small enough: the keywords force joins no text
/// contains ("in a field of ." ), and a reader rejects exactly those.
pub struct BackoffPenalty {
    model: Arc<Model>,
    order: usize,
    cost: f64,
}

impl BackoffPenalty {
    /// `order` in 2..=the model's order; `cost` in nats, finite and ≥ 0.
    pub fn new(model: Arc<Model>, order: usize, cost: f64) -> Result<Self> {
        if !(2..=model.order()).contains(&order) {
            return Err(Error::value(
                "backoff",
                format!(
                    "order must be in 2..={} (the LM's order), got {order}",
                    model.order()
                ),
            ));
        }
        if !(cost.is_finite() && cost >= 0.0) {
            return Err(Error::value(
                "backoff",
                format!("cost must be a finite number >= 0, got {cost}"),
            ));
        }
        Ok(BackoffPenalty { model, order, cost })
    }

    /// How many tokens of `x` (and its end) the model scores from a shorter context.
    pub fn count(&self, x: &[u32]) -> usize {
        let padded = padded(x);
        (1..padded.len())
            .filter(|&t| self.backed_off(&padded, t))
            .count()
    }

    /// Whether the token at `t` of a sentence `padded` with `<s>` and `</s>` lacks its
    /// n-gram of the penalty's order (or of the `t + 1` words the start allows). The model
    /// matches a k-gram when scoring exactly when it holds it (n-gram models hold every
    /// prefix of their n-grams), so this is what scoring calls backing off, at one probe.
    fn backed_off(&self, padded: &[u32], t: usize) -> bool {
        let reach = self.order.min(t + 1);
        !self.model.contains(&padded[t + 1 - reach..=t])
    }
}

/// `<s> x </s>`
fn padded(x: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(x.len() + 2);
    out.push(BOS);
    out.extend_from_slice(x);
    out.push(EOS);
    out
}

impl Prior for BackoffPenalty {
    fn log_score(&self, x: &[u32]) -> Result<f64> {
        Ok(-self.cost * self.count(x) as f64)
    }

    /// Whether token i backs off depends on words i − order + 1..=i only, so a candidate in
    /// slot `pos` changes tokens pos..pos + order − 1 (the end included): those are checked
    /// per candidate in a padded copy of the sentence, the rest counted once.
    fn replace_scores(&self, x: &[u32], pos: usize, cands: &[u32], out: &mut [f64]) -> Result<()> {
        let mut padded = padded(x);
        let slot = pos + 1; // in `padded`
        let window = slot..(slot + self.order).min(padded.len());
        let outside = (1..padded.len())
            .filter(|t| !window.contains(t) && self.backed_off(&padded, *t))
            .count();
        for (o, &c) in out.iter_mut().zip(cands) {
            padded[slot] = c;
            let inside = window
                .clone()
                .filter(|&t| self.backed_off(&padded, t))
                .count();
            *o = -self.cost * (outside + inside) as f64;
        }
        Ok(())
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

    #[test]
    fn backoff_penalty_counts_unseen_ngrams() {
        use crate::lm::{build, BuildOptions, Corpus};
        let mut corpus = Corpus::new(false);
        for line in ["the cat sat on the mat", "a dog sat on a log"] {
            corpus.add_sentence(line);
        }
        let opts = BuildOptions {
            order: 3,
            discount_fallback: true,
            ..Default::default()
        };
        let model = Arc::new(build(&corpus, &opts, false).unwrap().0);
        let ids = |s: &str| -> Vec<u32> { s.split(' ').map(|w| model.vocab().id(w)).collect() };
        let p = BackoffPenalty::new(model.clone(), 3, 0.5).unwrap();
        // Every trigram (with <s> and </s>) occurs in the corpus.
        assert_eq!(p.count(&ids("the cat sat on a log")), 0);
        // "dog sat on the" is fine, "<s> a dog" too; "on the log" and "the log </s>" are not.
        assert_eq!(p.count(&ids("a dog sat on the log")), 2);
        // "<s> cat" (a bigram: all the first word's context allows), "<s> cat sat" and
        // "cat sat </s>" are unseen.
        assert_eq!(p.count(&ids("cat sat")), 3);
        assert_eq!(p.log_score(&ids("cat sat")).unwrap(), -1.5);
        // Unknown words always back off.
        assert_eq!(p.count(&ids("zebra")), 2);
        let bigram = BackoffPenalty::new(model.clone(), 2, 1.0).unwrap();
        // "the log" is the one unseen bigram.
        assert_eq!(bigram.count(&ids("a dog sat on the log")), 1);
        // One probe per token finds what scoring matches (a k-gram is held exactly when
        // scoring matches k words): every sentence of three ids, unknown ones included.
        let words = model.vocab().len() as u32 + 1;
        for id in 0..words.pow(3) {
            let x = [id % words, id / words % words, id / words / words];
            for (penalty, order) in [(&p, 3), (&bigram, 2)] {
                let scored = model.token_scores(&x, true, true);
                let short = scored.iter().enumerate();
                let want = short
                    .filter(|(i, s)| s.ngram_len < order.min(i + 2))
                    .count();
                assert_eq!(penalty.count(&x), want, "{x:?}");
            }
        }
        // Windowed rescoring agrees with scoring each sentence in full, unknown ids included.
        let mut x = ids("a dog sat on the mat");
        x.push(model.vocab().len() as u32 + 5);
        let cands: Vec<u32> = (0..model.vocab().len() as u32 + 2).collect();
        for penalty in [&p, &bigram] {
            for pos in 0..x.len() {
                let mut out = vec![0.0; cands.len()];
                penalty.replace_scores(&x, pos, &cands, &mut out).unwrap();
                for (&c, &o) in cands.iter().zip(&out) {
                    let mut y = x.clone();
                    y[pos] = c;
                    assert_eq!(o, penalty.log_score(&y).unwrap(), "{pos} {c}");
                }
            }
        }
        for (order, cost) in [(1, 1.0), (4, 1.0), (3, -1.0), (3, f64::NAN)] {
            assert!(BackoffPenalty::new(model.clone(), order, cost).is_err());
        }
    }
}
