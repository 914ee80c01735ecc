//! One Metropolis–Hastings chain over (sentence, keyword marking).
//!
//! Target π(x, m) ∝ ρ(x)^(1/T) with log ρ(x) = γ·log p(x) + log λ(|x|) + Σ priors(x) − log N(x)
//! over sentences x with min_len ≤ |x| ≤ max_len and markings m (which block of consecutive
//! positions holds which keyword, in one of its forms), where λ is the optional length prior
//! and N(x) counts the markings of x (see [`super::unit_markings`]); sentences with a blocked
//! word outside the keyword slots have ρ = 0. Every move below is an exact MH (or Gibbs) step
//! for that target. A gap inside a keyword of several tokens is never offered: every state of
//! length n has n + 1 − D offerable gaps, D = Σ (tokens − 1) over the keywords, a constant the
//! insert/delete ratios use on both sides.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand::Rng as _;

use super::{unit_markings, Config, Index, Move, Sample, Scorer, Task};
use crate::rng::Rng;
use crate::{Error, Result};

/// `slot` value of a position that holds no keyword.
const FREE: u32 = u32::MAX;

/// Scratch buffers and the current state of one chain.
pub struct Chain<'a, S: Scorer + ?Sized> {
    scorer: &'a S,
    task: &'a Task<'a>,
    config: &'a Config,
    /// Admissible words (sorted) of each token of each keyword, in the task's keyword order.
    forms: Vec<Vec<Vec<u32>>>,
    /// Every keyword form (sorted): only these words can change the marking count, and they
    /// are exempt from `Config::blocked`.
    form_words: Vec<u32>,
    /// (keyword, token) pairs with at least two forms (the `Reform` move's choices).
    reformable: Vec<(u32, usize)>,
    /// Gaps inside keyword units (Σ tokens − 1), never offered to insert or reorder.
    inner_gaps: usize,
    /// Move weights for this task (moves it cannot make at 0), and their sum.
    moves: [f64; Move::COUNT],
    moves_sum: f64,
    x: Vec<u32>,
    /// Per position: the keyword it holds, or `FREE`.
    slot: Vec<u32>,
    logp: f64,
    lt: f64,
    fwd: Vec<f32>,
    bwd: Vec<f32>,
    heap: BinaryHeap<Ranked>,
    cands: Vec<u32>,
    cand_lp: Vec<f64>,
    cand_lt: Vec<f64>,
    /// One prior's scores of the candidates.
    cand_prior: Vec<f64>,
    scratch: Vec<u32>,
}

/// A word ranked by its candidate index: "greater" means worse (lower index, then larger
/// id), so the top-K set is a function of the index alone, ties included.
#[derive(Clone, Copy, Debug)]
struct Ranked(f32, u32);

/// Words per block of the candidate scan (a block below the K-th best is skipped whole).
const CHUNK: usize = 16;

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
        let initial = task
            .tokens
            .iter()
            .zip(&task.fixed)
            .filter(|(_, &f)| f)
            .map(|(&w, _)| w);
        let token_forms: Vec<Vec<u32>> = initial
            .enumerate()
            .map(|(j, w)| {
                let mut f = task.forms.get(j).cloned().unwrap_or_default();
                f.push(w);
                f.sort_unstable();
                f.dedup();
                f
            })
            .collect();
        let units = if task.units.is_empty() {
            vec![1; token_forms.len()]
        } else {
            task.units.clone()
        };
        let mut rest = token_forms.into_iter();
        let forms: Vec<Vec<Vec<u32>>> = units
            .iter()
            .map(|&len| rest.by_ref().take(len).collect())
            .collect();
        let mut form_words: Vec<u32> = forms.iter().flatten().flatten().copied().collect();
        form_words.sort_unstable();
        form_words.dedup();
        let reformable: Vec<(u32, usize)> = (0..forms.len())
            .flat_map(|j| (0..forms[j].len()).map(move |t| (j as u32, t)))
            .filter(|&(j, t)| forms[j as usize][t].len() > 1)
            .collect();
        let inner_gaps = units.iter().map(|&len| len - 1).sum();
        let mut moves = config.moves;
        if reformable.is_empty() {
            moves[Move::Reform as usize] = 0.0;
        }
        if !task.free_order || forms.is_empty() {
            moves[Move::Reorder as usize] = 0.0;
        }
        let moves_sum = moves.iter().sum();
        if moves_sum <= 0.0 {
            return Err(Error::value(
                "moves",
                "leave no move this input can make (reform needs a keyword with two forms, reorder a free keyword order)",
            ));
        }
        // Keyword j's tokens all hold slot j.
        let mut owner = units
            .iter()
            .enumerate()
            .flat_map(|(j, &len)| std::iter::repeat_n(j as u32, len));
        let slot = task
            .fixed
            .iter()
            .map(|&f| {
                if f {
                    owner.next().unwrap_or(FREE)
                } else {
                    FREE
                }
            })
            .collect();
        let mut chain = Chain {
            scorer,
            task,
            config,
            forms,
            form_words,
            reformable,
            inner_gaps,
            moves,
            moves_sum,
            x: task.tokens.clone(),
            slot,
            logp: 0.0,
            lt: 0.0,
            fwd: vec![0.0; vocab],
            bwd: vec![0.0; vocab],
            heap: BinaryHeap::new(),
            cands: Vec::new(),
            cand_lp: Vec::new(),
            cand_lt: Vec::new(),
            cand_prior: Vec::new(),
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

    fn log_markings(&self, x: &[u32]) -> f64 {
        unit_markings(&self.forms, self.task.free_order, x).ln()
    }

    fn is_form(&self, w: u32) -> bool {
        self.form_words.binary_search(&w).is_ok()
    }

    /// Log target terms that depend on the words only through the length.
    fn length_term(&self, len: usize) -> f64 {
        self.config.length.map_or(0.0, |l| l.log_score(len))
    }

    /// log ρ(x) for a sentence whose LM log-probability is `logp`.
    fn log_target(&self, x: &[u32], logp: f64) -> Result<f64> {
        let mut lt = self.config.gamma * logp - self.log_markings(x) + self.length_term(x.len());
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
        let both =
            index != Index::Forward && self.scorer.backward_logprobs(y, pos, &mut self.bwd)?;
        // One fused pass over the vocabulary: combine, check, and select with a size-K heap
        // whose top is the worst kept word, so almost every word is rejected by a single
        // comparison (a full selection over V, or separate passes, cost several times more).
        let k = self.config.top_k;
        let heap = &mut self.heap;
        heap.clear();
        // The kept words' smallest value once K are kept: anything below it cannot enter.
        let mut worst = f32::NEG_INFINITY;
        let min = index == Index::Min;
        for (c, chunk) in self.fwd.chunks_mut(CHUNK).enumerate() {
            let base = c * CHUNK;
            if both {
                let b = &self.bwd[base..base + chunk.len()];
                for (f, &b) in chunk.iter_mut().zip(b) {
                    // (f32::min would drop a NaN operand; the check below must see it)
                    *f = if f.is_nan() || b.is_nan() {
                        f32::NAN
                    } else if min {
                        f.min(b)
                    } else {
                        *f + b
                    };
                }
            }
            // Once K words are kept, most chunks hold none that can enter: a branch-free test
            // (vectorised) skips them; NaN fails it and is caught below.
            if chunk.iter().fold(true, |below, &f| below & (f < worst)) {
                continue;
            }
            for (i, &f) in chunk.iter().enumerate() {
                if f.is_nan() {
                    return Err(Error::value(
                        "lm",
                        "returned NaN in a next-word distribution",
                    ));
                }
                if f < worst {
                    continue;
                }
                let e = Ranked(f, (base + i) as u32);
                if heap.len() < k {
                    heap.push(e);
                } else if let Some(mut top) = heap.peek_mut() {
                    if e < *top {
                        *top = e;
                    }
                }
                if heap.len() == k {
                    worst = heap.peek().map_or(worst, |r| r.0);
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
        // N(x) only changes when the slot holds a keyword form, so others share one value.
        y[pos] = FREE;
        let mut cache: Vec<(u32, f64)> = Vec::new();
        // Every candidate gives the same length.
        let length = self.length_term(y.len());
        let shared = length - self.log_markings(&y);
        for j in 0..n {
            let (c, lp) = (self.cands[j], check_logprob(self.cand_lp[j])?);
            y[pos] = c;
            let is_form = self.is_form(c);
            if !is_form && self.config.blocked.binary_search(&c).is_ok() {
                self.cand_lt.push(f64::NEG_INFINITY);
                continue;
            }
            let rest = if is_form {
                match cache.iter().find(|(w, _)| *w == c) {
                    Some(&(_, v)) => v,
                    None => {
                        let v = length - self.log_markings(&y);
                        cache.push((c, v));
                        v
                    }
                }
            } else {
                shared
            };
            self.cand_lt.push(self.config.gamma * lp + rest);
        }
        y[pos] = FREE;
        for p in &self.task.priors {
            self.cand_prior.resize(n, 0.0);
            p.replace_scores(&y, pos, &self.cands, &mut self.cand_prior)?;
            for (lt, &v) in self.cand_lt.iter_mut().zip(&self.cand_prior) {
                *lt += check_logprob(v)?;
            }
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
        self.slot.iter().filter(|&&s| s == FREE).count()
    }

    fn nth_free(&self, k: usize) -> usize {
        self.slot
            .iter()
            .enumerate()
            .filter(|(_, &s)| s == FREE)
            .nth(k)
            .map_or(0, |(i, _)| i)
    }

    fn position_of(&self, keyword: u32) -> usize {
        self.slot.iter().position(|&s| s == keyword).unwrap_or(0)
    }

    /// The `r`-th gap of a sentence with these slots that is not inside a keyword unit.
    fn nth_gap(slot: &[u32], r: usize) -> usize {
        (0..=slot.len())
            .filter(|&g| g == 0 || g == slot.len() || slot[g - 1] != slot[g] || slot[g] == FREE)
            .nth(r)
            .unwrap_or(slot.len())
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

    /// Insert a word at a uniform gap (of the |x| + 1 − D outside keyword units), drawn from
    /// top-K ∝ target (mixed with ε-uniform); the reverse move is a delete of that (editable)
    /// position.
    fn insert(&mut self, temp: f64, rng: &mut Rng) -> Result<bool> {
        let len = self.x.len();
        if len >= self.config.max_len {
            return Ok(false);
        }
        let gaps = len + 1 - self.inner_gaps;
        let gap = Self::nth_gap(&self.slot, rng.random_range(0..gaps));
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
        let (p_ins, p_del) = (
            self.moves[Move::Insert as usize],
            self.moves[Move::Delete as usize],
        );
        let lse = log_sum_exp(self.cand_lt[..k].iter().map(|&v| v / temp));
        let log_q = self.log_q((j < k).then_some(j), self.cands[j], lse, temp);
        let free_y = (self.free() + 1) as f64;
        let log_a = self.cand_lt[j] / temp - self.lt / temp + p_del.ln() - free_y.ln() - p_ins.ln()
            + (gaps as f64).ln()
            - log_q;
        // Below min_len (a start shorter than the bound) the state is outside the target's
        // support (π = 0): every insert towards it is accepted.
        if len < self.config.min_len || Self::accept(log_a, rng) {
            y[gap] = self.cands[j];
            self.scratch = std::mem::replace(&mut self.x, y);
            self.slot.insert(gap, FREE);
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
        let (p_ins, p_del) = (
            self.moves[Move::Insert as usize],
            self.moves[Move::Delete as usize],
        );
        // The reverse insert offers the |x| − 1 + 1 − D gaps of y.
        let gaps_y = (len - self.inner_gaps) as f64;
        let log_q_ratio = p_ins.ln() - gaps_y.ln() + log_q - p_del.ln() + (free as f64).ln();
        self.propose_whole(y, log_q_ratio, temp, rng, |slot| {
            slot.remove(pos);
        })
    }

    /// MH step to the whole sentence `y` (scored in full) with log proposal ratio
    /// `log_q_ratio`; on acceptance `y` becomes the state and `relabel` updates the keyword
    /// slots. `y`'s buffer goes back to the scratch space otherwise.
    fn propose_whole(
        &mut self,
        y: Vec<u32>,
        log_q_ratio: f64,
        temp: f64,
        rng: &mut Rng,
        relabel: impl FnOnce(&mut Vec<u32>),
    ) -> Result<bool> {
        let scored = self
            .scorer
            .sentence_logprob(&y)
            .and_then(check_logprob)
            .and_then(|lp| Ok((lp, self.log_target(&y, lp)?)));
        let (logp_y, lt_y) = match scored {
            Ok(v) => v,
            Err(e) => {
                self.scratch = y;
                return Err(e);
            }
        };
        if Self::accept((lt_y - self.lt) / temp + log_q_ratio, rng) {
            self.scratch = std::mem::replace(&mut self.x, y);
            relabel(&mut self.slot);
            self.logp = logp_y;
            self.lt = lt_y;
            Ok(true)
        } else {
            self.scratch = y;
            Ok(false)
        }
    }

    /// Switch a keyword token (uniform among those with two or more forms) to a form drawn ∝
    /// the target: a Gibbs step on that position, accepted by construction.
    fn reform(&mut self, temp: f64, rng: &mut Rng) -> Result<bool> {
        let (keyword, token) = self.reformable[rng.random_range(0..self.reformable.len())];
        let pos = self.position_of(keyword) + token;
        self.cands.clear();
        self.cands
            .extend_from_slice(&self.forms[keyword as usize][token]);
        let x = std::mem::take(&mut self.x);
        let scored = self.score_cands(&x, pos);
        self.x = x;
        scored?;
        let Some(j) = self.draw(self.cands.len(), temp, rng) else {
            return Ok(false);
        };
        self.x[pos] = self.cands[j];
        self.logp = self.cand_lp[j];
        self.lt = self.cand_lt[j];
        Ok(true)
    }

    /// Move a uniform keyword (its whole unit) to a uniform gap of the sentence without it,
    /// among the |x| − D outside the other units: the same two choices undo it, so the
    /// proposal is symmetric.
    fn reorder(&mut self, temp: f64, rng: &mut Rng) -> Result<bool> {
        let gaps = self.x.len() - self.inner_gaps;
        if gaps < 2 {
            return Ok(false);
        }
        let keyword = rng.random_range(0..self.forms.len()) as u32;
        let pos = self.position_of(keyword);
        let size = self.forms[keyword as usize].len();
        let mut slot = self.slot.clone();
        let unit: Vec<u32> = slot.drain(pos..pos + size).collect();
        let gap = Self::nth_gap(&slot, rng.random_range(0..gaps));
        if gap == pos {
            return Ok(true);
        }
        let mut y = std::mem::take(&mut self.scratch);
        y.clone_from(&self.x);
        let words: Vec<u32> = y.drain(pos..pos + size).collect();
        y.splice(gap..gap, words);
        self.propose_whole(y, 0.0, temp, rng, move |labels| {
            slot.splice(gap..gap, unit);
            *labels = slot;
        })
    }

    /// One MH step at temperature `temp`: draws a move, returns (move, accepted).
    pub fn step(&mut self, temp: f64, rng: &mut Rng) -> Result<(Move, bool)> {
        let mut u = rng.random::<f64>() * self.moves_sum;
        let mut chosen = Move::Replace;
        for m in Move::ALL {
            let w = self.moves[m as usize];
            if w > 0.0 {
                chosen = m;
                if u < w {
                    break;
                }
                u -= w;
            }
        }
        let accepted = match chosen {
            Move::Replace => self.replace(temp, rng)?,
            Move::Insert => self.insert(temp, rng)?,
            Move::Delete => self.delete(temp, rng)?,
            Move::Reform => self.reform(temp, rng)?,
            Move::Reorder => self.reorder(temp, rng)?,
        };
        Ok((chosen, accepted))
    }

    pub fn tokens(&self) -> &[u32] {
        &self.x
    }
}

/// The `keep` best distinct states seen, best first.
struct Kept {
    keep: usize,
    by_length: bool,
    min_len: usize,
    states: Vec<(f64, Vec<u32>, f64, f64)>,
}

impl Kept {
    /// States shorter than `min_len` (where a chain starts below the bound) are kept only
    /// until a state within it is seen, then dropped: outputs respect the bound whenever
    /// the chain reached it.
    fn offer(&mut self, x: &[u32], logp: f64, lt: f64) {
        let within = x.len() >= self.min_len;
        let held_within = self
            .states
            .first()
            .is_some_and(|s| s.1.len() >= self.min_len);
        if !within && held_within {
            return;
        }
        if within && !held_within {
            self.states.clear();
        }
        let score = if self.by_length {
            lt
        } else {
            lt / (x.len() + 1) as f64
        };
        if self.states.len() == self.keep && score <= self.states[self.keep - 1].0 {
            return;
        }
        if let Some(i) = self.states.iter().position(|s| s.1 == x) {
            if score <= self.states[i].0 {
                return;
            }
            self.states.remove(i);
        }
        let at = self.states.partition_point(|s| s.0 >= score);
        self.states.insert(at, (score, x.to_vec(), logp, lt));
        self.states.truncate(self.keep);
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
    let mut kept = Kept {
        keep: config.keep,
        by_length: config.length.is_some(),
        min_len: config.min_len,
        states: Vec::new(),
    };
    kept.offer(&chain.x, chain.logp, chain.lt);
    if config.trace {
        let cap = config.steps.min(1 << 20); // a huge step count grows the trace as it goes
        out.trace_log_target.reserve(cap);
        out.trace_accepted.reserve(cap);
    }
    for t in 0..config.steps {
        crate::cancel::check()?;
        let (action, accepted) = chain.step(config.temperature(t), rng)?;
        out.proposed[action as usize] += 1;
        out.accepted[action as usize] += u64::from(accepted);
        if accepted {
            kept.offer(&chain.x, chain.logp, chain.lt);
        }
        if config.trace {
            out.trace_log_target.push(chain.lt);
            out.trace_accepted.push(accepted);
        }
    }
    out.kept = kept
        .states
        .into_iter()
        .map(|(_, x, lp, lt)| (x, lp, lt))
        .collect();
    if best {
        (out.tokens, out.logprob, out.log_target) = out.kept[0].clone();
    } else {
        out.tokens = chain.x.clone();
        out.logprob = chain.logp;
        out.log_target = chain.lt;
    }
    out.last = chain.x;
    out.last_logprob = chain.logp;
    Ok(out)
}
