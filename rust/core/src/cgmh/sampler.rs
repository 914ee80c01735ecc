//! One Metropolis–Hastings chain over (sentence, keyword marking).
//!
//! Target π(x, m) ∝ ρ(x)^(1/T) with log ρ(x) = γ·log p(x) + Σ priors(x) − log N(x), where
//! N(x) counts the markings of the keyword sequence in x (see [`super::embeddings`]), for
//! min_len ≤ |x| ≤ max_len. Every move below is an exact MH step for that target.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand::Rng as _;

use super::{embeddings, Config, Index, Sample, Scorer, Task};
use crate::rng::Rng;
use crate::{Error, Result};

const REPLACE: usize = 0;
const INSERT: usize = 1;
const DELETE: usize = 2;

/// Scratch buffers and the current state of one chain.
pub struct Chain<'a, S: Scorer + ?Sized> {
    scorer: &'a S,
    task: &'a Task<'a>,
    config: &'a Config,
    /// The keyword (fixed-word) sequence, invariant along the chain.
    kw: Vec<u32>,
    x: Vec<u32>,
    fixed: Vec<bool>,
    logp: f64,
    lt: f64,
    fwd: Vec<f32>,
    bwd: Vec<f32>,
    heap: BinaryHeap<Ranked>,
    cands: Vec<u32>,
    cand_lp: Vec<f64>,
    cand_lt: Vec<f64>,
    scratch: Vec<u32>,
}

/// A word ranked by its candidate index: "greater" means worse (lower index, then larger
/// id), so the top-K set is a function of the index alone, ties included.
#[derive(Clone, Copy, Debug)]
struct Ranked(f32, u32);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

fn check_logprob(v: f64) -> Result<f64> {
    check_score(v, "lm")
}

/// `v` from `source` (the LM, or a soft term such as a paraphrase similarity), which the
/// error names.
fn check_score(v: f64, source: &str) -> Result<f64> {
    if v.is_nan() || v == f64::INFINITY {
        Err(Error::value(
            source,
            format!("returned an invalid log-probability ({v}); expected a number <= 0 or -inf"),
        ))
    } else {
        Ok(v)
    }
}

/// log Σ exp(v) over `v` (−∞ for an empty or all −∞ input).
fn log_sum_exp(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = v.clone().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.map(|a| (a - m).exp()).sum::<f64>().ln()
}

impl<'a, S: Scorer + ?Sized> Chain<'a, S> {
    pub fn new(scorer: &'a S, task: &'a Task<'a>, config: &'a Config) -> Result<Self> {
        let vocab = scorer.vocab_size();
        let kw = task
            .tokens
            .iter()
            .zip(&task.fixed)
            .filter(|(_, &f)| f)
            .map(|(&w, _)| w)
            .collect();
        let mut chain = Chain {
            scorer,
            task,
            config,
            kw,
            x: task.tokens.clone(),
            fixed: task.fixed.clone(),
            logp: 0.0,
            lt: 0.0,
            fwd: vec![0.0; vocab],
            bwd: vec![0.0; vocab],
            heap: BinaryHeap::new(),
            cands: Vec::new(),
            cand_lp: Vec::new(),
            cand_lt: Vec::new(),
            scratch: Vec::new(),
        };
        chain.logp = check_logprob(scorer.sentence_logprob(&chain.x)?)?;
        chain.lt = chain.log_target(&chain.x.clone(), chain.logp)?;
        if chain.lt == f64::NEG_INFINITY {
            return Err(Error::value(
                "inputs",
                "start from a sentence the target gives probability 0 (the LM or a prior returned -inf)",
            ));
        }
        Ok(chain)
    }

    /// log ρ(x) for a sentence whose LM log-probability is `logp`.
    fn log_target(&self, x: &[u32], logp: f64) -> Result<f64> {
        let mut lt = self.config.gamma * logp - embeddings(&self.kw, x).ln();
        for p in &self.task.priors {
            lt += check_score(p.log_score(x)?, "a prior (soft term)")?;
        }
        Ok(lt)
    }

    /// Top-K word ids for slot `pos` of `y` by the candidate index, into `self.cands`; ties go
    /// to the smaller id, so the set is a function of the context alone (needed for exactness).
    fn top_k(&mut self, y: &[u32], pos: usize) -> Result<()> {
        self.scorer.forward_logprobs(y, pos, &mut self.fwd)?;
        let index = self.config.index;
        if index != Index::Forward && self.scorer.backward_logprobs(y, pos, &mut self.bwd)? {
            for (f, &b) in self.fwd.iter_mut().zip(&self.bwd) {
                *f = if index == Index::Min {
                    f.min(b)
                } else {
                    *f + b
                };
            }
        }
        if self.fwd.iter().any(|v| v.is_nan()) {
            return Err(Error::value(
                "lm",
                "returned NaN in a next-word distribution",
            ));
        }
        // One pass with a size-K heap whose top is the worst kept word: almost every word is
        // rejected by a single comparison (a full selection over V costs several times more).
        let k = self.config.top_k;
        let heap = &mut self.heap;
        heap.clear();
        for (w, &v) in self.fwd.iter().enumerate() {
            let e = Ranked(v, w as u32);
            if heap.len() < k {
                heap.push(e);
            } else if let Some(mut worst) = heap.peek_mut() {
                if e < *worst {
                    *worst = e;
                }
            }
        }
        self.cands.clear();
        self.cands.extend(heap.iter().map(|r| r.1));
        self.cands
            .sort_unstable_by_key(|&w| Ranked(self.fwd[w as usize], w));
        Ok(())
    }

    /// Scores `self.cands` in slot `pos` of `y`: LM log-probs and log targets.
    fn score_cands(&mut self, y: &[u32], pos: usize) -> Result<()> {
        let n = self.cands.len();
        self.cand_lp.resize(n, 0.0);
        self.scorer
            .replace_logprobs(y, pos, &self.cands, &mut self.cand_lp)?;
        self.cand_lt.clear();
        let mut y = y.to_vec();
        // N(x) only changes when the slot holds a keyword word, so others share one value.
        y[pos] = u32::MAX;
        let mut cache: Vec<(u32, f64)> = Vec::new();
        let log_n_other = embeddings(&self.kw, &y).ln();
        for j in 0..n {
            let (c, lp) = (self.cands[j], check_logprob(self.cand_lp[j])?);
            y[pos] = c;
            let log_n = if self.kw.contains(&c) {
                match cache.iter().find(|(w, _)| *w == c) {
                    Some(&(_, v)) => v,
                    None => {
                        let v = embeddings(&self.kw, &y).ln();
                        cache.push((c, v));
                        v
                    }
                }
            } else {
                log_n_other
            };
            let mut lt = self.config.gamma * lp - log_n;
            for p in &self.task.priors {
                lt += check_logprob(p.log_score(&y)?)?;
            }
            self.cand_lt.push(lt);
        }
        Ok(())
    }

    /// Draws an index among the first `n` candidates with probability ∝ exp(lt / temp);
    /// `None` when every weight is zero.
    fn draw(&self, n: usize, temp: f64, rng: &mut Rng) -> Option<usize> {
        let lse = log_sum_exp(self.cand_lt[..n].iter().map(|&v| v / temp));
        if lse == f64::NEG_INFINITY {
            return None;
        }
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut last = 0;
        for (j, &v) in self.cand_lt[..n].iter().enumerate() {
            let p = (v / temp - lse).exp();
            if p > 0.0 {
                last = j;
                acc += p;
                if u < acc {
                    return Some(j);
                }
            }
        }
        Some(last)
    }

    /// The editable (non-keyword) positions of the current state.
    fn free(&self) -> usize {
        self.fixed.iter().filter(|f| !**f).count()
    }

    fn nth_free(&self, k: usize) -> usize {
        self.fixed
            .iter()
            .enumerate()
            .filter(|(_, f)| !**f)
            .nth(k)
            .map_or(0, |(i, _)| i)
    }

    fn accept(log_a: f64, rng: &mut Rng) -> bool {
        log_a >= 0.0 || rng.random::<f64>() < log_a.exp()
    }

    /// log q(c) of the candidate mixture: with probability 1 − ε a draw ∝ exp(lt / temp) over
    /// the first `n` candidates (log-normaliser `lse`), with probability ε a uniform word.
    /// `j`: the index of `c` among the first `n` candidates, if there.
    fn log_q(&self, j: Option<usize>, c: u32, lse: f64, temp: f64) -> f64 {
        let eps = self.config.explore;
        let gibbs = match j {
            Some(j) if lse > f64::NEG_INFINITY => (self.cand_lt[j] / temp - lse).exp(),
            _ => 0.0,
        };
        let uniform = if (c as usize) < self.fwd.len() {
            eps / self.fwd.len() as f64
        } else {
            0.0
        };
        ((1.0 - eps) * gibbs + uniform).ln()
    }

    /// Draws the word for slot `pos` of `y` from the mixture over the first `n` candidates
    /// (already in `self.cands`), scoring them (and a uniform draw outside them, appended).
    /// Returns the drawn candidate's index, or `None` for "stay".
    fn propose(
        &mut self,
        y: &[u32],
        pos: usize,
        n: usize,
        temp: f64,
        rng: &mut Rng,
    ) -> Result<Option<usize>> {
        let vocab = self.fwd.len();
        let uniform = self.config.explore > 0.0 && rng.random::<f64>() < self.config.explore;
        let mut pick = None;
        if uniform {
            let c = rng.random_range(0..vocab) as u32;
            pick = Some(self.cands.iter().position(|&w| w == c).unwrap_or_else(|| {
                self.cands.push(c);
                n
            }));
        }
        self.score_cands(y, pos)?;
        if !uniform {
            pick = self.draw(n, temp, rng);
        }
        Ok(pick)
    }

    /// Replace at a uniform editable position: proposal over top-K ∪ {current word} (Gibbs)
    /// mixed with ε-uniform; the MH ratio corrects for C(y) = top-K ∪ {new word} ≠ C(x).
    fn replace(&mut self, temp: f64, rng: &mut Rng) -> Result<bool> {
        let free = self.free();
        if free == 0 {
            return Ok(false);
        }
        let pos = self.nth_free(rng.random_range(0..free));
        let x = std::mem::take(&mut self.x);
        self.top_k(&x, pos)?;
        let k = self.cands.len();
        let cur = x[pos];
        let i_cur = self
            .cands
            .iter()
            .position(|&c| c == cur)
            .unwrap_or_else(|| {
                self.cands.push(cur);
                k
            });
        let n = self.cands.len();
        let pick = self.propose(&x, pos, n, temp, rng);
        self.x = x;
        let Some(j) = pick? else {
            return Ok(false);
        };
        let c = self.cands[j];
        if c == cur {
            return Ok(true);
        }
        let lw = |i: usize| self.cand_lt[i] / temp;
        let lse_x = log_sum_exp((0..n).map(lw));
        // C(y): the top-K plus the new word (its index j when it is outside the top-K).
        let lse_y = log_sum_exp((0..k).chain((j >= k).then_some(j)).map(lw));
        let log_fwd = self.log_q((j < n).then_some(j), c, lse_x, temp);
        let log_rev = self.log_q((i_cur < k).then_some(i_cur), cur, lse_y, temp);
        let log_a = lw(j) - lw(i_cur) + log_rev - log_fwd;
        if Self::accept(log_a, rng) {
            self.x[pos] = c;
            self.logp = self.cand_lp[j];
            self.lt = self.cand_lt[j];
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Insert a word at a uniform gap (of |x| + 1), drawn from top-K ∝ target (mixed with
    /// ε-uniform); the reverse move is a delete of that (editable) position.
    fn insert(&mut self, temp: f64, rng: &mut Rng) -> Result<bool> {
        let len = self.x.len();
        if len >= self.config.max_len {
            return Ok(false);
        }
        let gap = rng.random_range(0..=len);
        let mut y = std::mem::take(&mut self.scratch);
        y.clear();
        y.extend_from_slice(&self.x[..gap]);
        y.push(0);
        y.extend_from_slice(&self.x[gap..]);
        self.top_k(&y, gap)?;
        let k = self.cands.len();
        let pick = self.propose(&y, gap, k, temp, rng);
        let j = match pick {
            Ok(Some(j)) => j,
            other => {
                self.scratch = y;
                return other.map(|_| false);
            }
        };
        let [_, p_ins, p_del] = self.config.actions;
        let lse = log_sum_exp(self.cand_lt[..k].iter().map(|&v| v / temp));
        let log_q = self.log_q((j < k).then_some(j), self.cands[j], lse, temp);
        let free_y = (self.free() + 1) as f64;
        let log_a = self.cand_lt[j] / temp - self.lt / temp + p_del.ln() - free_y.ln() - p_ins.ln()
            + ((len + 1) as f64).ln()
            - log_q;
        if Self::accept(log_a, rng) {
            y[gap] = self.cands[j];
            self.scratch = std::mem::replace(&mut self.x, y);
            self.fixed.insert(gap, false);
            self.logp = self.cand_lp[j];
            self.lt = self.cand_lt[j];
            Ok(true)
        } else {
            self.scratch = y;
            Ok(false)
        }
    }

    /// Delete a uniform editable position; the reverse move is an insert at that gap, whose
    /// candidate probability needs the top-K of the same context scored in full.
    fn delete(&mut self, temp: f64, rng: &mut Rng) -> Result<bool> {
        let len = self.x.len();
        let free = self.free();
        if free == 0 || len <= self.config.min_len {
            return Ok(false);
        }
        let pos = self.nth_free(rng.random_range(0..free));
        let x = std::mem::take(&mut self.x);
        self.top_k(&x, pos)?;
        let cur = x[pos];
        let j = self.cands.iter().position(|&c| c == cur);
        // The top-K only needs scoring when the reverse insert could draw `cur` from it.
        let scored = if j.is_some() {
            self.score_cands(&x, pos)
        } else {
            Ok(())
        };
        self.x = x;
        scored?;
        let lse = match j {
            Some(_) => log_sum_exp(self.cand_lt.iter().map(|&v| v / temp)),
            None => f64::NEG_INFINITY,
        };
        let log_q = self.log_q(j, cur, lse, temp);
        if log_q == f64::NEG_INFINITY {
            return Ok(false); // the reverse insert could never propose the deleted word
        }
        let mut y = std::mem::take(&mut self.scratch);
        y.clear();
        y.extend_from_slice(&self.x[..pos]);
        y.extend_from_slice(&self.x[pos + 1..]);
        let lt_y = check_logprob(self.scorer.sentence_logprob(&y)?)
            .and_then(|lp| Ok((lp, self.log_target(&y, lp)?)));
        let (logp_y, lt_y) = match lt_y {
            Ok(v) => v,
            Err(e) => {
                self.scratch = y;
                return Err(e);
            }
        };
        let [_, p_ins, p_del] = self.config.actions;
        let log_a = (lt_y - self.lt) / temp + p_ins.ln() - (len as f64).ln() + log_q - p_del.ln()
            + (free as f64).ln();
        if Self::accept(log_a, rng) {
            self.scratch = std::mem::replace(&mut self.x, y);
            self.fixed.remove(pos);
            self.logp = logp_y;
            self.lt = lt_y;
            Ok(true)
        } else {
            self.scratch = y;
            Ok(false)
        }
    }

    /// One MH step at temperature `temp`: draws an action, returns (action, accepted).
    pub fn step(&mut self, temp: f64, rng: &mut Rng) -> Result<(usize, bool)> {
        let [a, b, c] = self.config.actions;
        let u = rng.random::<f64>() * (a + b + c);
        let action = if u < a {
            REPLACE
        } else if u < a + b {
            INSERT
        } else {
            DELETE
        };
        let accepted = match action {
            REPLACE => self.replace(temp, rng)?,
            INSERT => self.insert(temp, rng)?,
            _ => self.delete(temp, rng)?,
        };
        Ok((action, accepted))
    }

    pub fn tokens(&self) -> &[u32] {
        &self.x
    }
}

/// Runs one chain of `config.steps` steps from the task's initial sentence.
pub fn run_chain<S: Scorer + ?Sized>(
    scorer: &S,
    task: &Task<'_>,
    config: &Config,
    best: bool,
    rng: &mut Rng,
) -> Result<Sample> {
    let mut chain = Chain::new(scorer, task, config)?;
    let mut out = Sample::default();
    let norm = |lt: f64, len: usize| lt / (len + 1) as f64;
    let (mut best_x, mut best_lp, mut best_lt) = (chain.x.clone(), chain.logp, chain.lt);
    if config.trace {
        let cap = config.steps.min(1 << 20); // a huge step count grows the trace as it goes
        out.trace_log_target.reserve(cap);
        out.trace_accepted.reserve(cap);
    }
    for t in 0..config.steps {
        crate::cancel::check()?;
        let (action, accepted) = chain.step(config.temperature(t), rng)?;
        out.proposed[action] += 1;
        out.accepted[action] += u64::from(accepted);
        if best && norm(chain.lt, chain.x.len()) > norm(best_lt, best_x.len()) {
            best_x.clone_from(&chain.x);
            best_lp = chain.logp;
            best_lt = chain.lt;
        }
        if config.trace {
            out.trace_log_target.push(chain.lt);
            out.trace_accepted.push(accepted);
        }
    }
    if best {
        out.tokens = best_x;
        out.logprob = best_lp;
        out.log_target = best_lt;
    } else {
        out.tokens = chain.x.clone();
        out.logprob = chain.logp;
        out.log_target = chain.lt;
    }
    out.last = chain.x;
    out.last_logprob = chain.logp;
    Ok(out)
}
