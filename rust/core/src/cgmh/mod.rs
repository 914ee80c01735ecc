//! CGMH: keyword-constrained generation by Metropolis–Hastings over word edits.
//!
//! Miao et al., "CGMH: Constrained Sentence Generation by Metropolis–Hastings Sampling"
//! (AAAI 2019), with Su Jianlin's length exponent γ and UPSA's simulated annealing. The chain
//! edits a sentence by replace / insert / delete; candidate words are pre-selected by the
//! forward and backward LMs (top-K) and drawn in proportion to the target, and every move is
//! accepted with the exact Metropolis–Hastings ratio (action, position and candidate
//! probabilities of both directions), so long chains sample the target exactly.
//!
//! The language model is any [`Scorer`]; extra soft terms of the target (similarity for
//! paraphrase, closeness for error correction) are [`Prior`]s.

pub mod ngram;
pub mod priors;
mod sampler;

pub use sampler::{run_chain, Chain};

use rayon::prelude::*;

use crate::{parallel, rng, Error, Result};

/// Largest vocabulary accepted (each chain holds two float buffers of this size).
pub const MAX_VOCAB: usize = 1 << 28;

/// What the sampler needs from a language model over word ids `0..vocab_size()`.
///
/// Sentences are slices of word ids without boundary markers; the scorer adds its own
/// sentence start and end. Ids `>= vocab_size()` may appear in sentences (keywords the LM
/// does not know) and must be scored as the model's unknown word; they are never proposed.
pub trait Scorer: Sync {
    /// Number of proposable word ids.
    fn vocab_size(&self) -> usize;

    /// Natural log-probability of the whole sentence (with start and end of sentence).
    fn sentence_logprob(&self, x: &[u32]) -> Result<f64>;

    /// `out[j]` = log p of `x` with `x[pos]` replaced by `cands[j]`. The default scores each
    /// sentence in full; Markov models override it to rescore only the changed window.
    fn replace_logprobs(
        &self,
        x: &[u32],
        pos: usize,
        cands: &[u32],
        out: &mut [f64],
    ) -> Result<()> {
        replace_by_sentences(self, x, pos, cands, out)
    }

    /// `out[w]` = log p→(w | x[..pos]) for every word `w` (the value of `x[pos..]` is unused).
    fn forward_logprobs(&self, x: &[u32], pos: usize, out: &mut [f32]) -> Result<()>;

    /// `out[w]` = log p←(w | x[pos + 1..]) from a backward model; returns `false` (and leaves
    /// `out` alone) when the scorer has none, in which case candidates use the forward model.
    fn backward_logprobs(&self, x: &[u32], pos: usize, out: &mut [f32]) -> Result<bool>;
}

/// [`Scorer::replace_logprobs`] by scoring each candidate sentence in full.
pub fn replace_by_sentences<S: Scorer + ?Sized>(
    scorer: &S,
    x: &[u32],
    pos: usize,
    cands: &[u32],
    out: &mut [f64],
) -> Result<()> {
    let mut y = x.to_vec();
    for (o, &c) in out.iter_mut().zip(cands) {
        y[pos] = c;
        *o = scorer.sentence_logprob(&y)?;
    }
    Ok(())
}

/// A soft term `log s(x)` added to the target (paraphrase similarity, closeness to a source).
pub trait Prior: Sync {
    fn log_score(&self, x: &[u32]) -> Result<f64>;
}

/// How the forward and backward conditionals combine into the candidate index (top-K).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Index {
    /// min(p→, p←): CGMH's and Su's choice.
    Min,
    /// p→ · p←.
    Product,
    /// p→ only.
    Forward,
}

/// Sampler settings shared by every chain of a run.
#[derive(Clone, Debug)]
pub struct Config {
    /// MH steps per chain (≥ 1).
    pub steps: usize,
    /// Candidates pre-selected per replace/insert (≥ 1).
    pub top_k: usize,
    /// Action probabilities (replace, insert, delete); non-negative, normalised here.
    pub actions: [f64; 3],
    /// Sentence length bounds (in words, keywords included).
    pub min_len: usize,
    pub max_len: usize,
    /// Exponent γ on p(x) (Su: slightly below 1 against the bias to short sentences).
    pub gamma: f64,
    /// Simulated annealing: temperature geometric from `t0` to `t1` over the steps
    /// (`None`: plain sampling at temperature 1).
    pub anneal: Option<(f64, f64)>,
    pub index: Index,
    /// Probability ε of proposing a uniformly random word instead of a top-K one. Any ε > 0
    /// makes every word reachable and every deletion reversible (a word that left the top-K
    /// of its context can otherwise never be replaced or deleted under exact MH).
    pub explore: f64,
    /// Record log ρ and acceptance at every step.
    pub trace: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            steps: 200,
            top_k: 50,
            actions: [1.0 / 3.0; 3],
            min_len: 1,
            max_len: 40,
            gamma: 1.0,
            anneal: None,
            index: Index::Min,
            explore: 0.01,
            trace: false,
        }
    }
}

impl Config {
    /// Checks every setting; `vocab` is the scorer's vocabulary size.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::value("steps", "must be >= 1, got 0"));
        }
        if self.top_k == 0 {
            return Err(Error::value("top_k", "must be >= 1, got 0"));
        }
        if vocab == 0 || vocab > u32::MAX as usize {
            return Err(Error::value(
                "lm",
                format!("must have 1..=2^28 words, got {vocab}"),
            ));
        }
        let sum: f64 = self.actions.iter().sum();
        if self.actions.iter().any(|p| !(p.is_finite() && *p >= 0.0)) || sum <= 0.0 {
            return Err(Error::value(
                "actions",
                format!(
                    "must be 3 finite probabilities >= 0 with a positive sum, got {:?}",
                    self.actions
                ),
            ));
        }
        if self.min_len == 0 || self.min_len > self.max_len {
            return Err(Error::value(
                "min_len",
                format!(
                    "must satisfy 1 <= min_len <= max_len, got {} and {}",
                    self.min_len, self.max_len
                ),
            ));
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(Error::value(
                "gamma",
                format!("must be a finite number > 0, got {}", self.gamma),
            ));
        }
        if let Some((t0, t1)) = self.anneal {
            if !(t0.is_finite() && t1.is_finite() && t0 > 0.0 && t1 > 0.0) {
                return Err(Error::value(
                    "anneal",
                    format!("must be two finite temperatures > 0, got ({t0}, {t1})"),
                ));
            }
        }
        if !(self.explore.is_finite() && (0.0..1.0).contains(&self.explore)) {
            return Err(Error::value(
                "explore",
                format!("must be in [0, 1), got {}", self.explore),
            ));
        }
        Ok(())
    }

    /// Temperature at step `t` of `steps`.
    pub fn temperature(&self, t: usize) -> f64 {
        match self.anneal {
            None => 1.0,
            Some((t0, t1)) if self.steps > 1 => {
                t0 * (t1 / t0).powf(t as f64 / (self.steps - 1) as f64)
            }
            Some((t0, _)) => t0,
        }
    }
}

/// One input: the initial sentence, which of its positions are fixed (keywords: never
/// replaced or deleted), and the soft terms of its target.
pub struct Task<'a> {
    pub tokens: Vec<u32>,
    pub fixed: Vec<bool>,
    pub priors: Vec<&'a dyn Prior>,
}

impl Task<'_> {
    /// Keyword-to-sentence: starts from the keywords in this order, all fixed.
    pub fn keywords(keywords: &[u32]) -> Task<'static> {
        Task {
            tokens: keywords.to_vec(),
            fixed: vec![true; keywords.len()],
            priors: Vec::new(),
        }
    }
}

/// What one chain returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// The returned sentence: the last state, or the best one seen (see [`Chain`]).
    pub tokens: Vec<u32>,
    /// LM log-probability of `tokens` (γ not applied).
    pub logprob: f64,
    /// Log target (γ·log p − log N + priors) of `tokens`.
    pub log_target: f64,
    /// Final state and its LM log-probability (equal to the above when `best` is off).
    pub last: Vec<u32>,
    pub last_logprob: f64,
    /// Proposals and acceptances per action (replace, insert, delete).
    pub proposed: [u64; 3],
    pub accepted: [u64; 3],
    /// Per step (when `Config::trace`): log target of the current state and whether the move
    /// was accepted.
    pub trace_log_target: Vec<f64>,
    pub trace_accepted: Vec<bool>,
}

/// Runs `chains` chains for every task in parallel; chain `c` of task `i` uses
/// `rng::stream(seed, i * chains + c)`, so results do not depend on the thread count.
/// Returns samples task-major. `best`: return the best state seen (length-normalised log
/// target) instead of the last.
pub fn run<S: Scorer + ?Sized>(
    scorer: &S,
    tasks: &[Task<'_>],
    chains: usize,
    config: &Config,
    seed: u64,
    best: bool,
) -> Result<Vec<Sample>> {
    config.validate(scorer.vocab_size())?;
    if chains == 0 {
        return Err(Error::value("n", "must be >= 1, got 0"));
    }
    for (i, t) in tasks.iter().enumerate() {
        check_task(t, config, i)?;
    }
    let total = tasks
        .len()
        .checked_mul(chains)
        .ok_or_else(|| Error::value("n", "times the number of inputs overflows"))?;
    // What the results hold: each sample's sentences (best and last) and its trace.
    let per_chain = std::mem::size_of::<Sample>() as u128
        + 8 * config.max_len as u128
        + 9 * config.steps as u128 * u128::from(config.trace);
    crate::memory::check_bytes(total as u128 * per_chain, "n")?;
    parallel::install(|| {
        (0..total)
            .into_par_iter()
            .map(|j| {
                let mut rng = rng::stream(seed, j as u64);
                run_chain(scorer, &tasks[j / chains], config, best, &mut rng)
            })
            .collect()
    })
}

fn check_task(t: &Task<'_>, config: &Config, i: usize) -> Result<()> {
    let name = format!("inputs[{i}]");
    if t.tokens.is_empty() {
        return Err(Error::value(name, "must hold at least one word"));
    }
    if t.fixed.len() != t.tokens.len() {
        return Err(Error::value(name, "must have one fixed flag per word"));
    }
    if t.tokens.len() > config.max_len {
        return Err(Error::value(
            name,
            format!(
                "has {} words, more than max_len = {}",
                t.tokens.len(),
                config.max_len
            ),
        ));
    }
    Ok(())
}

/// Number of ways the fixed-word sequence `kw` embeds in `x` as a subsequence: the chain
/// tracks which positions are keywords, so a sentence with repeated keyword words is reached
/// through several markings; dividing the target by this count makes the sentence marginal
/// exactly ρ(x)·χ(x). (f64: counts up to C(max_len, k) stay exact far beyond real sizes.)
pub fn embeddings(kw: &[u32], x: &[u32]) -> f64 {
    let mut ways = vec![0.0f64; kw.len() + 1];
    ways[0] = 1.0;
    for &w in x {
        for j in (0..kw.len()).rev() {
            if kw[j] == w {
                ways[j + 1] += ways[j];
            }
        }
    }
    ways[kw.len()]
}

#[cfg(test)]
mod tests;
