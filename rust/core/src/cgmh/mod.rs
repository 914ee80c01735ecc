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

pub mod consensus;
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

    /// `out[j]` = the log score of `x` with `x[pos]` replaced by `cands[j]`. The default
    /// scores each sentence in full; a prior that looks at a few words around each position
    /// overrides it to rescore only those.
    fn replace_scores(&self, x: &[u32], pos: usize, cands: &[u32], out: &mut [f64]) -> Result<()> {
        let mut y = x.to_vec();
        for (o, &c) in out.iter_mut().zip(cands) {
            y[pos] = c;
            *o = self.log_score(&y)?;
        }
        Ok(())
    }
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

/// The edits a chain proposes. Each is an exact Metropolis–Hastings (or Gibbs) step for the
/// same target, so any mixture of them samples it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Move {
    /// A non-keyword word redrawn from the top-K candidates of its context.
    Replace,
    /// A word inserted at a uniform gap (reverse: delete).
    Insert,
    /// A uniform non-keyword word removed (reverse: insert).
    Delete,
    /// A keyword switched among its forms (a Gibbs draw over the forms).
    Reform,
    /// A keyword moved to a uniform gap (symmetric; only when the keyword order is free).
    Reorder,
}

impl Move {
    pub const COUNT: usize = 5;
    pub const ALL: [Move; Move::COUNT] = [
        Move::Replace,
        Move::Insert,
        Move::Delete,
        Move::Reform,
        Move::Reorder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Move::Replace => "replace",
            Move::Insert => "insert",
            Move::Delete => "delete",
            Move::Reform => "reform",
            Move::Reorder => "reorder",
        }
    }
}

impl std::str::FromStr for Move {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Move::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::value(
                    "moves",
                    format!("keys must be replace, insert, delete, reform or reorder, got {s:?}"),
                )
            })
    }
}

impl std::str::FromStr for Index {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "min" => Ok(Index::Min),
            "product" => Ok(Index::Product),
            "forward" => Ok(Index::Forward),
            _ => Err(Error::value(
                "index",
                format!("must be 'min', 'product' or 'forward', got {s:?}"),
            )),
        }
    }
}

/// A length prior e^{−per_word · max(0, target − |x|)}: every word a sentence is short of
/// `target` costs `per_word` nats. Without it the mode of p(x) is the shortest string that
/// holds the keywords; above `target` the LM alone decides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LengthPrior {
    pub target: usize,
    pub per_word: f64,
}

impl LengthPrior {
    /// log of the prior for a sentence of `len` words.
    pub fn log_score(&self, len: usize) -> f64 {
        -self.per_word * self.target.saturating_sub(len) as f64
    }
}

/// Sampler settings shared by every chain of a run.
#[derive(Clone, Debug)]
pub struct Config {
    /// MH steps per chain (≥ 1).
    pub steps: usize,
    /// Candidates pre-selected per replace/insert (≥ 1).
    pub top_k: usize,
    /// Move weights, indexed by [`Move`] order; non-negative, normalised per task over the
    /// moves the task can make (no `Reform` without a keyword of two forms, no `Reorder` when
    /// the keyword order is fixed).
    pub moves: [f64; Move::COUNT],
    /// Sentence length bounds (in words, keywords included).
    pub min_len: usize,
    pub max_len: usize,
    /// Exponent γ on p(x) (Su: slightly below 1 against the bias to short sentences).
    pub gamma: f64,
    pub length: Option<LengthPrior>,
    /// Simulated annealing: temperature geometric from `t0` to `t1` over the steps
    /// (`None`: plain sampling at temperature 1).
    pub anneal: Option<(f64, f64)>,
    pub index: Index,
    /// Probability ε of proposing a uniformly random word instead of a top-K one. Any ε > 0
    /// makes every word reachable and every deletion reversible (a word that left the top-K
    /// of its context can otherwise never be replaced or deleted under exact MH).
    pub explore: f64,
    /// Word ids the target excludes (sorted): a sentence holding one outside a keyword slot
    /// has probability 0 (the offensive-word filter).
    pub blocked: Vec<u32>,
    /// Distinct best states each chain returns (≥ 1).
    pub keep: usize,
    /// Record log ρ and acceptance at every step.
    pub trace: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            steps: 200,
            top_k: 50,
            moves: [1.0, 1.0, 1.0, 0.0, 0.0],
            min_len: 1,
            max_len: 40,
            gamma: 1.0,
            length: None,
            anneal: None,
            index: Index::Min,
            explore: 0.01,
            blocked: Vec::new(),
            keep: 1,
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
        if self.keep == 0 {
            return Err(Error::value("keep", "must be >= 1, got 0"));
        }
        if vocab == 0 || vocab > MAX_VOCAB {
            return Err(Error::value(
                "lm",
                format!("must have 1..=2^28 words, got {vocab}"),
            ));
        }
        let sum: f64 = self.moves.iter().sum();
        if self.moves.iter().any(|p| !(p.is_finite() && *p >= 0.0)) || sum <= 0.0 {
            return Err(Error::value(
                "moves",
                format!(
                    "must be finite weights >= 0 with a positive sum, got {:?}",
                    self.moves
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
        if let Some(l) = self.length {
            if !(l.per_word.is_finite() && l.per_word >= 0.0) {
                return Err(Error::value(
                    "length",
                    format!(
                        "per-word cost must be a finite number >= 0, got {}",
                        l.per_word
                    ),
                ));
            }
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
        if !self.blocked.windows(2).all(|w| w[0] < w[1]) {
            return Err(Error::value(
                "blocked",
                "must be sorted and without repeats",
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

/// Largest number of keywords whose order may be free (the marking count is a sum over
/// keyword subsets).
pub const MAX_FREE_KEYWORDS: usize = 16;

/// One input: the initial sentence, which of its positions are keywords (never replaced or
/// deleted), each keyword's admissible forms, and the soft terms of its target.
pub struct Task<'a> {
    pub tokens: Vec<u32>,
    pub fixed: Vec<bool>,
    /// Admissible words of each fixed position, in order (any of them satisfies that token of
    /// its keyword; the initial word is added if missing). Empty: the initial words only.
    pub forms: Vec<Vec<u32>>,
    /// Tokens of each keyword, in order: keyword `j` is the next `units[j]` fixed positions,
    /// which must be contiguous. A keyword of several tokens (a word the tokenizer splits,
    /// 美食节 → 美食 节) is one unbreakable unit: no move inserts inside it, removes or replaces
    /// one of its tokens, and the reorder move moves it whole. Empty: one token each.
    pub units: Vec<usize>,
    /// Keywords may appear in any order (and move); otherwise in their initial order.
    pub free_order: bool,
    pub priors: Vec<&'a dyn Prior>,
}

impl Task<'_> {
    /// Keyword-to-sentence: starts from the keywords in this order, all fixed, exact forms.
    pub fn keywords(keywords: &[u32]) -> Task<'static> {
        Task {
            tokens: keywords.to_vec(),
            fixed: vec![true; keywords.len()],
            forms: Vec::new(),
            units: Vec::new(),
            free_order: false,
            priors: Vec::new(),
        }
    }
}

/// What one chain returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// The returned sentence: the last state, or the best one seen (see [`run`]).
    pub tokens: Vec<u32>,
    /// LM log-probability of `tokens` (γ not applied).
    pub logprob: f64,
    /// Log target (γ·log p − log N + length prior + priors) of `tokens`.
    pub log_target: f64,
    /// Up to `Config::keep` distinct best states seen (the initial one included), best first,
    /// as (tokens, log p, log target); with `best` the first is `tokens`.
    pub kept: Vec<(Vec<u32>, f64, f64)>,
    /// Final state and its LM log-probability (equal to the above when `best` is off).
    pub last: Vec<u32>,
    pub last_logprob: f64,
    /// Proposals and acceptances per move, in [`Move`] order.
    pub proposed: [u64; Move::COUNT],
    pub accepted: [u64; Move::COUNT],
    /// Per step (when `Config::trace`): log target of the current state and whether the move
    /// was accepted.
    pub trace_log_target: Vec<f64>,
    pub trace_accepted: Vec<bool>,
}

/// Runs `chains` chains for every task in parallel; chain `c` of task `i` uses
/// `rng::stream(seed, i * chains + c)`, so results do not depend on the thread count.
/// Returns samples task-major. `best`: return the best state seen instead of the last: the
/// highest log target with a length prior, the highest log target per word (end included)
/// without one.
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
    // What the results hold: each sample's kept sentences (up to `keep`, at most one per
    // step, and the last) and its trace.
    let states = config.keep.min(config.steps.saturating_add(1)) as u128 + 1;
    let per_state =
        std::mem::size_of::<(Vec<u32>, f64, f64)>() as u128 + 4 * config.max_len as u128;
    let per_chain = std::mem::size_of::<Sample>() as u128
        + states * per_state
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
    let fixed = t.fixed.iter().filter(|&&f| f).count();
    if !t.forms.is_empty() && t.forms.len() != fixed {
        return Err(Error::value(
            name,
            format!(
                "must have one form list per keyword token ({fixed}), got {}",
                t.forms.len()
            ),
        ));
    }
    if !t.units.is_empty() {
        if t.units.contains(&0) || t.units.iter().sum::<usize>() != fixed {
            return Err(Error::value(
                name,
                format!(
                    "units must be token counts >= 1 summing to the keyword tokens ({fixed}), got {:?}",
                    t.units
                ),
            ));
        }
        let positions: Vec<usize> = (0..t.fixed.len()).filter(|&i| t.fixed[i]).collect();
        let mut start = 0;
        for &len in &t.units {
            if positions[start + len - 1] - positions[start] != len - 1 {
                return Err(Error::value(
                    name,
                    "must hold the tokens of each keyword unit contiguously",
                ));
            }
            start += len;
        }
    }
    let keywords = if t.units.is_empty() {
        fixed
    } else {
        t.units.len()
    };
    if t.free_order && keywords > MAX_FREE_KEYWORDS {
        return Err(Error::value(
            name,
            format!(
                "has {keywords} keywords; a free keyword order allows at most {MAX_FREE_KEYWORDS} (use a fixed order)"
            ),
        ));
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

/// Number of ways the fixed-word sequence `kw` embeds in `x` as a subsequence (exact forms,
/// fixed order; see [`markings`]).
pub fn embeddings(kw: &[u32], x: &[u32]) -> f64 {
    let forms: Vec<Vec<u32>> = kw.iter().map(|&w| vec![w]).collect();
    markings(&forms, false, x)
}

/// Number of markings of the keywords in `x`: ways to give each keyword `j` its own position
/// holding one of `forms[j]` (sorted), in keyword order unless `free_order`. The chain tracks
/// which positions are keywords, so a sentence with repeated keyword words is reached
/// through several markings; dividing the target by this count makes the sentence marginal
/// exactly ρ(x)·χ(x). (f64: counts up to C(max_len, k)·k! stay exact far beyond real sizes.)
pub fn markings(forms: &[Vec<u32>], free_order: bool, x: &[u32]) -> f64 {
    let units: Vec<Vec<Vec<u32>>> = forms.iter().map(|f| vec![f.clone()]).collect();
    unit_markings(&units, free_order, x)
}

/// [`markings`] for keywords of several tokens: `units[j][t]` the admissible words (sorted) of
/// token `t` of keyword `j`; a marking gives each keyword its own block of consecutive
/// positions (blocks disjoint), in keyword order unless `free_order`.
pub fn unit_markings(units: &[Vec<Vec<u32>>], free_order: bool, x: &[u32]) -> f64 {
    let k = units.len();
    let fits = |j: usize, i: usize| {
        let u = &units[j];
        i + u.len() <= x.len()
            && u.iter()
                .zip(&x[i..])
                .all(|(f, w)| f.binary_search(w).is_ok())
    };
    // States: keywords placed so far, as a count (fixed order) or a subset (free order, a
    // sum over injective assignments). Placing keyword `j` from state `s` leads to a state
    // numbered above `s`, so single tokens can update `ways` in place, states descending.
    let states = if free_order { 1 << k } else { k + 1 };
    let next = |s: usize, j: usize| {
        if free_order {
            (s & (1 << j) == 0).then_some(s | (1 << j))
        } else {
            (s == j).then_some(j + 1)
        }
    };
    let mut ways = vec![0.0f64; states];
    ways[0] = 1.0;
    // Blocks of several tokens add their ways where they end.
    let mut pending: Vec<(usize, Vec<f64>)> = Vec::new();
    for i in 0..=x.len() {
        pending.retain(|(end, delta)| {
            if *end != i {
                return true;
            }
            for (w, d) in ways.iter_mut().zip(delta) {
                *w += d;
            }
            false
        });
        if i == x.len() {
            break;
        }
        let can: Vec<usize> = (0..k).filter(|&j| fits(j, i)).collect();
        for &j in can.iter().filter(|&&j| units[j].len() > 1) {
            let mut delta = vec![0.0f64; states];
            for (s, &w) in ways.iter().enumerate() {
                if let (true, Some(t)) = (w != 0.0, next(s, j)) {
                    delta[t] += w;
                }
            }
            pending.push((i + units[j].len(), delta));
        }
        for s in (0..states).rev() {
            if ways[s] == 0.0 {
                continue;
            }
            for &j in can.iter().filter(|&&j| units[j].len() == 1) {
                if let Some(t) = next(s, j) {
                    ways[t] += ways[s];
                }
            }
        }
    }
    ways[states - 1]
}

#[cfg(test)]
mod tests;
