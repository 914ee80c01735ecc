//! The native n-gram scorer: a forward [`Model`] (and optionally its backward twin) behind
//! the [`Scorer`] trait, so with an n-gram LM the whole CGMH loop runs in Rust.

use std::sync::Arc;

use rand::Rng as _;
use rayon::prelude::*;

use super::Scorer;
use crate::lm::{Model, State, BOS, EOS, LN_10, UNK};
use crate::{parallel, rng, Error, Result};

/// One direction's model and its unigram distribution; a whole next-word distribution costs
/// O(order · V) vector adds plus the explicit n-grams of the context, read in place from the
/// model's context-sorted keys (shared, when the model is memory-mapped) instead of V hash
/// look-ups.
struct Side {
    model: Arc<Model>,
    /// ln p(w) for every id.
    unigram: Vec<f32>,
}

fn ln(v: f32) -> f32 {
    (f64::from(v) * LN_10) as f32
}

impl Side {
    fn new(model: Arc<Model>) -> Self {
        let unigram = (0..model.vocab().len() as u32)
            .map(|w| model.get(&[w]).map_or(f32::NEG_INFINITY, |pb| ln(pb.prob)))
            .collect();
        Side { model, unigram }
    }

    /// `out[w]` = ln p(w | `<s>` + context) over the whole vocabulary (specials −∞), by the
    /// back-off recursion p(w | c) = explicit(c, w) or bo(c) · p(w | shorter c), unrolled: a
    /// word whose longest explicit context is level l scores ln p_l(w) + Σ_{j>l} ln bo_j. The
    /// unigram pass is the only one over the whole vocabulary (adding each level's back-off to
    /// all V words made the proposal cost grow with the order as well as with V).
    fn next(&self, context: &[u32], out: &mut [f32]) {
        let vocab = self.unigram.len();
        let id = |w: u32| if (w as usize) < vocab { w } else { UNK };
        let mut key: Vec<u32> = Vec::with_capacity(self.model.order());
        // Per context level, shortest first: (back-off of the context, its key length).
        let mut levels: Vec<(f32, usize)> = Vec::with_capacity(self.model.order());
        // Newest word first, `<s>` before the sentence's first word.
        let words = context
            .iter()
            .rev()
            .map(|&w| id(w))
            .chain(std::iter::once(BOS));
        for w in words.take(self.model.order() - 1) {
            key.push(w);
            // The context's back-off (0 when the context itself is absent).
            let backoff = self.model.get(&key).map_or(0.0, |pb| ln(pb.backoff));
            levels.push((backoff, key.len()));
            if self.model.successors(&key).len() == 0 {
                // No n-gram continues this context, so no longer context can exist.
                break;
            }
        }
        // above[l] = Σ of the back-offs of the levels longer than l (level 0 = unigram).
        let mut above = vec![0.0f32; levels.len() + 1];
        for l in (0..levels.len()).rev() {
            above[l] = above[l + 1] + levels[l].0;
        }
        let base = above[0];
        out.iter_mut()
            .zip(&self.unigram)
            .for_each(|(o, &u)| *o = u + base);
        for (l, &(_, len)) in levels.iter().enumerate() {
            for (w, p) in self.model.successors(&key[..len]) {
                out[w as usize] = ln(p) + above[l + 1];
            }
        }
        for s in [UNK, BOS, EOS] {
            if let Some(o) = out.get_mut(s as usize) {
                *o = f32::NEG_INFINITY;
            }
        }
    }
}

/// The native n-gram scorer. Word ids are the model's ids; `<unk>`, `<s>` and `</s>` are
/// never proposed (their candidate scores are −∞), and ids past the vocabulary score as
/// `<unk>`.
pub struct Ngram {
    forward: Side,
    backward: Option<Side>,
}

fn special(w: u32) -> bool {
    w == UNK || w == BOS || w == EOS
}

impl Ngram {
    /// Wraps the models (shared, not copied) with their unigram distributions; `backward`
    /// must be trained on reversed sentences and share the forward model's vocabulary.
    pub fn new(forward: Arc<Model>, backward: Option<Arc<Model>>) -> Result<Self> {
        if let Some(b) = &backward {
            if b.vocab() != forward.vocab() {
                return Err(Error::value(
                    "backward",
                    "must share the forward model's vocabulary",
                ));
            }
        }
        Ok(Ngram {
            forward: Side::new(forward),
            backward: backward.map(Side::new),
        })
    }

    /// The forward model (shared).
    pub fn forward_model(&self) -> &Arc<Model> {
        &self.forward.model
    }

    pub fn has_backward(&self) -> bool {
        self.backward.is_some()
    }

    /// Draws `count` sentences word by word from the forward model, sentence `i` from
    /// `rng::stream(seed, i)`, each ended by `</s>` or cut at `max_len` words: (words, ln p of
    /// the words drawn, `</s>` included when drawn).
    pub fn sample(&self, count: usize, seed: u64, max_len: usize) -> Vec<(Vec<u32>, f64)> {
        let m = &*self.forward.model;
        let keep = m.order() - 1;
        let one = |i: usize| {
            let mut rng = rng::stream(seed, i as u64);
            let mut out = vec![0.0f32; self.vocab_size()];
            let mut words: Vec<u32> = vec![BOS];
            let mut logp = 0.0;
            while words.len() <= max_len {
                let state = m.state_from_context(&words[words.len().saturating_sub(keep)..]);
                let end = f64::from(m.score_word(&state, EOS).0) * LN_10;
                self.forward.next(&words[1..], &mut out);
                // `<unk>` and `<s>` are never written: draw from the rest, renormalised.
                let mass = end.exp() + out.iter().map(|&lp| f64::from(lp).exp()).sum::<f64>();
                let mut u = rng.random::<f64>() * mass;
                if u < end.exp() {
                    logp += end;
                    break;
                }
                u -= end.exp();
                // Rounding can leave u past the last word: that draw takes the last one.
                let mut pick = out.len() - 1;
                for (w, &lp) in out.iter().enumerate() {
                    let p = f64::from(lp).exp();
                    if u < p {
                        pick = w;
                        break;
                    }
                    u -= p;
                }
                logp += f64::from(out[pick]);
                words.push(pick as u32);
            }
            words.remove(0);
            (words, logp)
        };
        parallel::install(|| (0..count).into_par_iter().map(one).collect())
    }

    /// ln p of `first` then `rest[..window]` (and `</s>` when the sentence ends inside the
    /// window) after `state`: the terms that depend on the word in the slot.
    fn window(&self, mut state: State, first: u32, rest: &[u32], window: usize) -> f64 {
        let m = &*self.forward.model;
        let (p, s) = m.score_word(&state, first);
        let mut total = f64::from(p);
        state = s;
        for &w in rest.iter().take(window) {
            let (p, s) = m.score_word(&state, w);
            total += f64::from(p);
            state = s;
        }
        if rest.len() < window {
            total += f64::from(m.score_word(&state, EOS).0);
        }
        total
    }
}

impl Scorer for Ngram {
    fn vocab_size(&self) -> usize {
        self.forward.unigram.len()
    }

    /// −∞ for sentences holding `<unk>`, `<s>` or `</s>` ids: the target excludes them (the
    /// candidate scores agree), while unknown words carry ids past the vocabulary.
    fn sentence_logprob(&self, x: &[u32]) -> Result<f64> {
        if x.iter().any(|&w| special(w)) {
            return Ok(f64::NEG_INFINITY);
        }
        Ok(self.forward.model.score_ids(x, true, true) * LN_10)
    }

    /// Only the `order - 1` words after the slot (and `</s>`) see the candidate, so each
    /// candidate costs O(order) look-ups: log p(y_c) = log p(y_0) − window(c_0) + window(c).
    fn replace_logprobs(
        &self,
        x: &[u32],
        pos: usize,
        cands: &[u32],
        out: &mut [f64],
    ) -> Result<()> {
        let m = &*self.forward.model;
        let vocab = self.vocab_size();
        let keep = m.order() - 1;
        let mut ctx: Vec<u32> = Vec::with_capacity(keep + 1);
        if pos < keep {
            ctx.push(BOS);
        }
        // Unknown ids read as <unk>, as score_ids does.
        let id = |w: &u32| if (*w as usize) < vocab { *w } else { UNK };
        ctx.extend(x[pos.saturating_sub(keep)..pos].iter().map(id));
        let state = m.state_from_context(&ctx);
        let rest = &x[pos + 1..];
        if x[..pos].iter().chain(rest).any(|&w| special(w)) {
            out.fill(f64::NEG_INFINITY);
            return Ok(());
        }
        let mut base = None;
        for (o, &c) in out.iter_mut().zip(cands) {
            if special(c) {
                *o = f64::NEG_INFINITY;
                continue;
            }
            let local = self.window(state, c, rest, keep);
            let (full, local0) = *base.get_or_insert_with(|| {
                let mut y = x.to_vec();
                y[pos] = c;
                (m.score_ids(&y, true, true), local)
            });
            *o = (full - local0 + local) * LN_10;
        }
        Ok(())
    }

    fn forward_logprobs(&self, x: &[u32], pos: usize, out: &mut [f32]) -> Result<()> {
        self.forward.next(&x[..pos], out);
        Ok(())
    }

    fn backward_logprobs(&self, x: &[u32], pos: usize, out: &mut [f32]) -> Result<bool> {
        let Some(b) = &self.backward else {
            return Ok(false);
        };
        // The backward model read sentences reversed: its context is x[pos + 1..] reversed.
        let ctx: Vec<u32> = x[pos + 1..].iter().rev().copied().collect();
        b.next(&ctx, out);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cgmh::{run, Config, Task};
    use crate::lm::{build, BuildOptions, Corpus};

    fn models() -> (Arc<Model>, Arc<Model>) {
        let mut corpus = Corpus::new(false);
        for line in [
            "the cat sat on the mat",
            "the dog sat on the log",
            "a cat ran to the dog",
            "the dog ran",
            "a cat sat",
        ] {
            corpus.add_sentence(line);
        }
        let opts = BuildOptions {
            order: 3,
            discount_fallback: true,
            ..Default::default()
        };
        let (f, b) = build(&corpus, &opts, true).unwrap();
        (Arc::new(f), Arc::new(b.unwrap()))
    }

    #[test]
    fn windowed_scores_match_full_scores() {
        let (f, b) = models();
        let lm = Ngram::new(f.clone(), Some(b.clone())).unwrap();
        let v = f.vocab();
        let x: Vec<u32> = "the cat sat on zebra mat"
            .split(' ')
            .map(|w| v.get(w).unwrap_or(v.len() as u32 + 7)) // an unknown word's id
            .collect();
        let cands: Vec<u32> = (0..v.len() as u32).collect();
        for pos in 0..x.len() {
            let mut out = vec![0.0; cands.len()];
            lm.replace_logprobs(&x, pos, &cands, &mut out).unwrap();
            for (&c, &o) in cands.iter().zip(&out) {
                let mut y = x.clone();
                y[pos] = c;
                if special(c) {
                    assert_eq!(o, f64::NEG_INFINITY);
                } else {
                    assert!(
                        (o - lm.sentence_logprob(&y).unwrap()).abs() < 1e-9,
                        "{pos} {c}"
                    );
                }
            }
        }
        // Whole next-word distributions agree with cond_logprob (hash look-ups) everywhere.
        let mut fw = vec![0.0f32; v.len()];
        let mut bw = vec![0.0f32; v.len()];
        for pos in 0..=x.len() {
            let mut y = x.clone();
            y.insert(pos, 0);
            lm.forward_logprobs(&y, pos, &mut fw).unwrap();
            assert!(lm.backward_logprobs(&y, pos, &mut bw).unwrap());
            let ctx: Vec<u32> = std::iter::once(BOS)
                .chain(x[..pos].iter().copied())
                .collect();
            let rctx: Vec<u32> = std::iter::once(BOS)
                .chain(x[pos..].iter().rev().copied())
                .collect();
            for w in 3..v.len() as u32 {
                let want = f.cond_logprob(&ctx, w);
                assert!((f64::from(fw[w as usize]) - want).abs() < 1e-4, "{pos} {w}");
                let want = b.cond_logprob(&rctx, w);
                assert!((f64::from(bw[w as usize]) - want).abs() < 1e-4, "{pos} {w}");
            }
            assert!(fw[..3].iter().all(|p| *p == f32::NEG_INFINITY));
        }
    }

    #[test]
    fn generates_with_keywords_natively() {
        let (f, b) = models();
        let lm = Ngram::new(f.clone(), Some(b)).unwrap();
        let v = f.vocab();
        let kw = [v.id("dog"), v.id("mat")];
        let config = Config {
            steps: 100,
            top_k: 5,
            ..Config::default()
        };
        let out = run(&lm, &[Task::keywords(&kw)], 4, &config, 1, true).unwrap();
        for s in out {
            assert!(crate::cgmh::embeddings(&kw, &s.tokens) >= 1.0);
            assert!(!s.tokens.iter().any(|&w| special(w)));
        }
    }

    #[test]
    fn samples_are_seeded_and_scored_by_the_model() {
        let (f, b) = models();
        let ngram = Ngram::new(f, Some(b)).unwrap();
        let a = ngram.sample(50, 7, 30);
        assert_eq!(a, ngram.sample(50, 7, 30));
        assert_ne!(a, ngram.sample(50, 8, 30));
        assert!(a.iter().any(|(x, _)| x.len() > 1));
        for (x, lp) in &a {
            assert!(x.len() <= 30 && x.iter().all(|&w| !special(w)));
            if x.len() < 30 {
                // ended by </s>: the log-probability is the sentence's own
                let want = ngram.sentence_logprob(x).unwrap();
                assert!(
                    (lp - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{lp} vs {want}"
                );
            }
        }
    }
}
