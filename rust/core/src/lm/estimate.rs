//! Interpolated modified Kneser–Ney estimation, step for step as KenLM's `lmplz`
//! (corpus_count → adjust_counts → initial_probabilities → interpolate), in memory.
//!
//! Every n-gram table is a flat array of ids, one key per n-gram with the newest word first,
//! sorted: in that ("suffix") order the n-grams sharing a suffix are contiguous, so continuation
//! counts and the lower-order probability of each suffix come from linear merges. Contexts
//! (all words but the newest) are found by binary search, in parallel.

use rayon::prelude::*;

use super::model::{Model, ProbBackoff, Table, MAX_ORDER};
use super::sort;
use super::vocab::{Corpus, Vocab, BOS, EOS};
use crate::{cancel, Error, Result};

/// How to estimate a model.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildOptions {
    /// Longest n-gram, 1..=7.
    pub order: usize,
    /// Words seen fewer times become `<unk>` (1 keeps every word).
    pub min_count: u64,
    /// Instead of failing on degenerate count-of-counts, use discounts 0.5, 1, 1.5 for that
    /// order (lmplz `--discount_fallback`).
    pub discount_fallback: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            order: 5,
            min_count: 1,
            discount_fallback: false,
        }
    }
}

/// lmplz's `--discount_fallback` values for D1, D2, D3+.
pub const FALLBACK_DISCOUNTS: [f64; 3] = [0.5, 1.0, 1.5];

/// N-grams of one order with their (adjusted) counts; keys newest word first, sorted.
pub(crate) struct Counted {
    n: usize,
    keys: Vec<u32>,
    counts: Vec<u64>,
}

impl Counted {
    fn len(&self) -> usize {
        self.counts.len()
    }

    fn key(&self, i: usize) -> &[u32] {
        &self.keys[i * self.n..(i + 1) * self.n]
    }
}

/// Checks the options and the corpus; shared by [`build`] and [`super::from_counts`].
pub(crate) fn check_order(order: usize) -> Result<()> {
    if (1..=MAX_ORDER).contains(&order) {
        Ok(())
    } else {
        Err(Error::value(
            "order",
            format!("must be between 1 and {MAX_ORDER}, got {order}"),
        ))
    }
}

/// Estimates the forward model of `corpus` and, when `backward`, the model of its reversed
/// sentences (same vocabulary), both in one call.
pub fn build(
    corpus: &Corpus,
    opts: &BuildOptions,
    backward: bool,
) -> Result<(Model, Option<Model>)> {
    check_order(opts.order)?;
    if opts.min_count == 0 {
        return Err(Error::value("min_count", "must be at least 1, got 0"));
    }
    if corpus.tokens() == 0 {
        return Err(Error::value(
            "corpus",
            format!(
                "has no words ({} sentences, all blank); an n-gram model needs some text",
                corpus.len()
            ),
        ));
    }
    let pruned;
    let corpus = if opts.min_count > 1 {
        pruned = corpus.prune(opts.min_count);
        &pruned
    } else {
        corpus
    };
    // One direction after the other: each is parallel inside, and the peak memory is one
    // estimation's working set, not two.
    let forward = estimate(corpus, opts, false)?;
    let backward = if backward {
        Some(estimate(corpus, opts, true)?)
    } else {
        None
    };
    Ok((forward, backward))
}

fn estimate(corpus: &Corpus, opts: &BuildOptions, reverse: bool) -> Result<Model> {
    let counted = count(corpus, opts.order, reverse)?;
    let discounts = counted
        .iter()
        .map(|c| discounts(c, opts.discount_fallback))
        .collect::<Result<Vec<_>>>()?;
    interpolate(corpus.vocab().clone(), &counted, &discounts, &[])
}

/// Sorts keys of stride `K` in place and merges equal ones into counts.
fn sort_count<const K: usize>(mut flat: Vec<u32>) -> Result<Counted> {
    debug_assert_eq!(flat.len() % K, 0);
    // SAFETY: `[u32; K]` has the size of K `u32`s and their alignment, and `flat.len()` is a
    // multiple of K, so the slice reinterprets exactly the vector's elements.
    let grams: &mut [[u32; K]] =
        unsafe { std::slice::from_raw_parts_mut(flat.as_mut_ptr().cast(), flat.len() / K) };
    sort::par_sort(grams)?;
    let mut keys = Vec::with_capacity(grams.len() * K);
    let mut counts: Vec<u64> = Vec::with_capacity(grams.len());
    for (i, g) in grams.iter().enumerate() {
        cancel::check_every(i)?;
        if i > 0 && grams[i - 1] == *g {
            if let Some(c) = counts.last_mut() {
                *c += 1;
            }
        } else {
            keys.extend_from_slice(g);
            counts.push(1);
        }
    }
    Ok(Counted { n: K, keys, counts })
}

/// Sorts and counts keys of stride `n` over ids below `vocab_len`. When a key fits in 128
/// bits it is packed into a `u128` first (same order, much cheaper comparisons).
fn sort_count_dyn(n: usize, flat: Vec<u32>, vocab_len: usize) -> Result<Counted> {
    let bits = (usize::BITS - vocab_len.saturating_sub(1).leading_zeros()).max(1);
    if n > 1 && bits as usize * n <= 128 {
        return sort_count_packed(n, flat, bits);
    }
    match n {
        1 => sort_count::<1>(flat),
        2 => sort_count::<2>(flat),
        3 => sort_count::<3>(flat),
        4 => sort_count::<4>(flat),
        5 => sort_count::<5>(flat),
        6 => sort_count::<6>(flat),
        _ => sort_count::<7>(flat),
    }
}

fn sort_count_packed(n: usize, flat: Vec<u32>, bits: u32) -> Result<Counted> {
    let mut packed: Vec<u128> = flat
        .par_chunks_exact(n)
        .map(|g| {
            g.iter()
                .fold(0u128, |acc, &w| (acc << bits) | u128::from(w))
        })
        .collect();
    drop(flat); // the sort's merge buffer takes its place
    sort::par_sort(&mut packed)?;
    let mask = (1u128 << bits) - 1;
    let mut keys = Vec::with_capacity(packed.len() * n);
    let mut counts: Vec<u64> = Vec::with_capacity(packed.len());
    for (i, &p) in packed.iter().enumerate() {
        cancel::check_every(i)?;
        if i > 0 && packed[i - 1] == p {
            if let Some(c) = counts.last_mut() {
                *c += 1;
            }
        } else {
            keys.extend(
                (0..n)
                    .rev()
                    .map(|k| ((p >> (bits as usize * k)) & mask) as u32),
            );
            counts.push(1);
        }
    }
    Ok(Counted { n, keys, counts })
}

/// Raw counts of the n-grams lmplz counts: every `order`-gram of `<s> words </s>`, and for
/// shorter sentence prefixes the `<s>`-started n-gram (lmplz pads with `<s>` and collapses
/// the padding). Returns, per length 1..=order, the flat keys (newest word first).
fn raw_grams(corpus: &Corpus, order: usize, reverse: bool) -> Vec<Vec<u32>> {
    let (ids, starts) = corpus.parts();
    let sentences: Vec<(usize, usize)> = starts.windows(2).map(|w| (w[0], w[1])).collect();
    let chunk = sentences.len().div_ceil(64).max(1);
    let parts: Vec<Vec<Vec<u32>>> = sentences
        .par_chunks(chunk)
        .map(|part| {
            let mut out = vec![Vec::new(); order];
            let mut t = Vec::new();
            for &(a, b) in part {
                if cancel::requested() {
                    break; // `count` returns the error
                }
                t.clear();
                t.push(BOS);
                if reverse {
                    t.extend(ids[a..b].iter().rev());
                } else {
                    t.extend_from_slice(&ids[a..b]);
                }
                t.push(EOS);
                for i in 1..t.len() {
                    let len = (i + 1).min(order);
                    out[len - 1].extend(t[i + 1 - len..=i].iter().rev());
                }
            }
            out
        })
        .collect();
    (0..order)
        .map(|k| {
            let mut all = Vec::with_capacity(parts.iter().map(|p| p[k].len()).sum());
            for p in &parts {
                all.extend_from_slice(&p[k]);
            }
            all
        })
        .collect()
}

/// Adjusted counts of every order (index n - 1): raw counts at the highest order and for
/// `<s>`-started n-grams, continuation counts (distinct left extensions) elsewhere.
fn count(corpus: &Corpus, order: usize, reverse: bool) -> Result<Vec<Counted>> {
    let vocab_len = corpus.vocab().len();
    let mut raw = raw_grams(corpus, order, reverse);
    cancel::check()?;
    let mut out: Vec<Counted> = Vec::with_capacity(order);
    let top = std::mem::take(&mut raw[order - 1]);
    out.push(sort_count_dyn(order, top, vocab_len)?);
    for n in (1..order).rev() {
        cancel::check()?;
        let upper = out.last().expect("the highest order is counted first");
        let bos_started = sort_count_dyn(n, std::mem::take(&mut raw[n - 1]), vocab_len)?;
        let merged = merge_continuation(upper, &bos_started)?;
        out.push(merged);
    }
    out.reverse();
    // Unigrams dense by id: <unk> (when absent) and <s> get count 0, as in lmplz.
    let uni = &out[0];
    let mut counts = vec![0u64; vocab_len];
    for (k, &c) in uni.keys.iter().zip(&uni.counts) {
        counts[*k as usize] = c;
    }
    out[0] = Counted {
        n: 1,
        keys: (0..vocab_len as u32).collect(),
        counts,
    };
    Ok(out)
}

/// Continuation counts of the suffixes of `upper` (its keys' prefixes), merged with the raw
/// counts of the `<s>`-started n-grams (disjoint: no suffix starts with `<s>`).
fn merge_continuation(upper: &Counted, bos: &Counted) -> Result<Counted> {
    let n = upper.n - 1;
    let mut keys = Vec::with_capacity(upper.keys.len() / 2 + bos.keys.len());
    let mut counts = Vec::with_capacity(upper.len() / 2 + bos.len());
    let mut j = 0;
    let mut last: Option<&[u32]> = None;
    for i in 0..upper.len() {
        cancel::check_every(i)?;
        let p = &upper.key(i)[..n];
        if last == Some(p) {
            if let Some(c) = counts.last_mut() {
                *c += 1;
            }
            continue;
        }
        while j < bos.len() && bos.key(j) < p {
            keys.extend_from_slice(bos.key(j));
            counts.push(bos.counts[j]);
            j += 1;
        }
        keys.extend_from_slice(p);
        counts.push(1);
        last = Some(p);
    }
    for j in j..bos.len() {
        keys.extend_from_slice(bos.key(j));
        counts.push(bos.counts[j]);
    }
    Ok(Counted { n, keys, counts })
}

/// The three discounts of one order from its count-of-counts (Chen & Goodman eq. 26), index
/// = min(count, 3); index 0 is 0.
fn discounts(c: &Counted, fallback: bool) -> Result<[f64; 4]> {
    let mut t = [0u64; 5];
    for &k in &c.counts {
        if (1..5).contains(&k) {
            t[k as usize] += 1;
        }
    }
    discounts_from(c.n, &t, fallback)
}

pub(crate) fn discounts_from(n: usize, t: &[u64; 5], fallback: bool) -> Result<[f64; 4]> {
    let fall = [
        0.0,
        FALLBACK_DISCOUNTS[0],
        FALLBACK_DISCOUNTS[1],
        FALLBACK_DISCOUNTS[2],
    ];
    if let Some(j) = (1..4).find(|&j| t[j] == 0) {
        if fallback {
            return Ok(fall);
        }
        return Err(Error::value(
            "corpus",
            format!(
                "is too small or artificial for modified Kneser-Ney: no {n}-grams have adjusted \
                 count {j}, so the discount for count {} cannot be estimated; \
                 pass discount_fallback=True to use D = 0.5, 1, 1.5 (lmplz --discount_fallback)",
                j + 1
            ),
        ));
    }
    let y = t[1] as f64 / (t[1] as f64 + 2.0 * t[2] as f64);
    let mut d = [0.0; 4];
    for j in 1..4 {
        d[j] = j as f64 - (j + 1) as f64 * y * t[j + 1] as f64 / t[j] as f64;
        if !(0.0..=j as f64).contains(&d[j]) {
            if fallback {
                return Ok(fall);
            }
            return Err(Error::value(
                "corpus",
                format!(
                    "gives a {n}-gram discount for count {j} of {:.4}, outside [0, {j}]; \
                     pass discount_fallback=True to use D = 0.5, 1, 1.5",
                    d[j]
                ),
            ));
        }
    }
    Ok(d)
}

/// Index of `key` in the sorted table `t` (always present: contexts of kept n-grams are
/// n-grams themselves).
fn find(t: &Counted, key: &[u32]) -> usize {
    let (mut lo, mut hi) = (0, t.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if t.key(mid) < key {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Probabilities and back-offs from adjusted counts. `context_totals[n - 2]`, when given for
/// order n, overrides a context's denominator with a larger count (n-grams known only by
/// their total, as with truncated count tables; their mass goes to the back-off, as lmplz
/// does for pruned n-grams).
pub(crate) fn interpolate(
    vocab: Vocab,
    counted: &[Counted],
    discounts: &[[f64; 4]],
    context_totals: &[Vec<u64>],
) -> Result<Model> {
    let order = counted.len();
    // Uniform over the vocabulary without <s> (lmplz: "includes <unk> but excludes <s>").
    let uniform = 1.0 / (vocab.len() as f64 - 1.0);
    // Unigrams: one context.
    let d = &discounts[0];
    let uni = &counted[0];
    let total: u64 = uni.counts.iter().sum();
    let mut nk = [0u64; 4];
    for &c in &uni.counts {
        nk[c.min(3) as usize] += u64::from(c > 0);
    }
    let gamma0 = (1..4).map(|k| d[k] * nk[k] as f64).sum::<f64>() / total as f64;
    let mut prob: Vec<f64> = uni
        .counts
        .iter()
        .map(|&c| (c as f64 - d[c.min(3) as usize]) / total as f64 + gamma0 * uniform)
        .collect();
    prob[BOS as usize] = 1.0;
    let mut weights: Vec<Vec<ProbBackoff>> = Vec::with_capacity(order);
    for n in 2..=order {
        cancel::check()?;
        let lower = &counted[n - 2];
        let cur = &counted[n - 1];
        let d = &discounts[n - 1];
        let ctx: Vec<u32> = (0..cur.len())
            .into_par_iter()
            .with_min_len(4096)
            .map(|i| match cancel::requested() {
                true => 0, // checked below
                false => find(lower, &cur.key(i)[1..]) as u32,
            })
            .collect();
        cancel::check()?;
        let mut denom: Vec<u64> = match context_totals.get(n - 2) {
            Some(t) => t.clone(),
            None => vec![0; lower.len()],
        };
        let mut sums = vec![0u64; lower.len()];
        let mut buckets = vec![[0u32; 4]; lower.len()];
        for (i, (&c, &x)) in cur.counts.iter().zip(&ctx).enumerate() {
            cancel::check_every(i)?;
            sums[x as usize] += c;
            buckets[x as usize][c.min(3) as usize] += u32::from(c > 0);
        }
        for (dn, &s) in denom.iter_mut().zip(&sums) {
            *dn = (*dn).max(s);
        }
        let gamma: Vec<f64> = denom
            .iter()
            .zip(&sums)
            .zip(&buckets)
            .map(|((&dn, &s), b)| {
                let discounted: f64 = (1..4).map(|k| d[k] * f64::from(b[k])).sum();
                if dn == 0 {
                    1.0
                } else {
                    (discounted + (dn - s) as f64) / dn as f64
                }
            })
            .collect();
        // Back-offs of the lower order: contexts get γ, other n-grams 1 (log 0).
        weights.push(
            prob.iter()
                .zip(&gamma)
                .zip(&denom)
                .map(|((&p, &g), &dn)| ProbBackoff {
                    prob: log10_prob(p),
                    backoff: if dn == 0 { 0.0 } else { g.log10() as f32 },
                })
                .collect(),
        );
        // Interpolate: the suffix (key without its oldest word) is a prefix of the key, so its
        // index in the lower order only moves forward.
        let mut next = Vec::with_capacity(cur.len());
        let mut j = 0;
        for (i, (&c, &x)) in cur.counts.iter().zip(&ctx).enumerate() {
            cancel::check_every(i)?;
            let suffix = &cur.key(i)[..n - 1];
            while lower.key(j) < suffix {
                j += 1;
            }
            let x = x as usize;
            let p = (c as f64 - d[c.min(3) as usize]) / denom[x] as f64 + gamma[x] * prob[j];
            next.push(p);
        }
        prob = next;
    }
    weights.push(
        prob.iter()
            .map(|&p| ProbBackoff {
                prob: log10_prob(p),
                backoff: 0.0,
            })
            .collect(),
    );
    let mut weights = weights.into_iter();
    let unigrams = weights.next().expect("order >= 1");
    cancel::check()?;
    let tables = counted[1..]
        .iter()
        .zip(weights)
        .map(|(c, w)| Table::new(c.n, c.keys.clone(), w))
        .collect::<Result<Vec<_>>>()?;
    Model::new(vocab, unigrams, tables)
}

/// log10 p as stored, clipped at 0 against rounding (lmplz does the same).
fn log10_prob(p: f64) -> f32 {
    (p.log10() as f32).min(0.0)
}

/// A bigram model from count tables (e.g. word and word-pair frequency lists): unigram
/// probabilities from the raw `unigram_counts`, bigram probabilities from `bigrams`
/// (`(w1, w2, count)`), discounted with modified Kneser–Ney discounts of each table (lmplz's
/// fallback 0.5, 1, 1.5 where the count-of-counts are degenerate, as in truncated lists).
/// A bigram context's denominator is its unigram count, so the mass of pairs missing from a
/// truncated table goes to the back-off. `</s>` gets `eos_count`; `<s>` is a context without
/// bigrams (`p(w | <s>) = p(w)`).
pub fn from_counts(
    unigram_counts: &[(String, u64)],
    bigrams: &[(String, String, u64)],
    eos_count: u64,
) -> Result<Model> {
    // Every sum the estimate forms is at most one of these two totals: checked once here,
    // the sums below cannot wrap.
    let unigram_total = unigram_counts
        .iter()
        .try_fold(eos_count, |t, (_, c)| t.checked_add(*c));
    let bigram_total = bigrams
        .iter()
        .try_fold(0u64, |t, (_, _, c)| t.checked_add(*c));
    for (total, name) in [(unigram_total, "unigram_counts"), (bigram_total, "bigrams")] {
        if total.is_none() {
            return Err(Error::value(
                name,
                "counts sum past 2**64 - 1 (with eos_count for the unigrams)",
            ));
        }
    }
    let mut vocab = Vocab::new();
    let mut uni = vec![0u64; 3];
    for (w, c) in unigram_counts {
        let id = vocab.insert(w) as usize;
        if id < 3 {
            continue;
        }
        if id == uni.len() {
            uni.push(0);
        }
        uni[id] += c;
    }
    uni[EOS as usize] += eos_count;
    if uni.iter().all(|&c| c == 0) {
        return Err(Error::value(
            "unigram_counts",
            "must hold at least one word with a count > 0",
        ));
    }
    // (newest word, context word, count) triples, sorted into the table's key order.
    let mut flat = Vec::with_capacity(bigrams.len());
    for (a, b, c) in bigrams {
        let (Some(x), Some(y)) = (vocab.get(a), vocab.get(b)) else {
            continue;
        };
        if *c == 0 || x == EOS || y == BOS {
            continue;
        }
        flat.push((y, x, *c));
    }
    sort::par_sort(&mut flat)?;
    let mut keys = Vec::with_capacity(flat.len() * 2);
    let mut counts: Vec<u64> = Vec::with_capacity(flat.len());
    let mut last = None;
    for &(y, x, c) in &flat {
        if last == Some((y, x)) {
            if let Some(v) = counts.last_mut() {
                *v += c;
            }
        } else {
            keys.extend([y, x]);
            counts.push(c);
            last = Some((y, x));
        }
    }
    let v = vocab.len();
    let unigrams = Counted {
        n: 1,
        keys: (0..v as u32).collect(),
        counts: uni.clone(),
    };
    let bigram = Counted { n: 2, keys, counts };
    let cc = |c: &Counted| {
        let mut t = [0u64; 5];
        for &k in &c.counts {
            if (1..5).contains(&k) {
                t[k as usize] += 1;
            }
        }
        t
    };
    let discounts = vec![
        discounts_from(1, &cc(&unigrams), true)?,
        discounts_from(2, &cc(&bigram), true)?,
    ];
    interpolate(vocab, &[unigrams, bigram], &discounts, &[uni])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(lines: &[&str]) -> Corpus {
        let mut c = Corpus::new(false);
        for l in lines {
            c.add_sentence(l);
        }
        c
    }

    fn fallback(order: usize) -> BuildOptions {
        BuildOptions {
            order,
            discount_fallback: true,
            ..Default::default()
        }
    }

    #[test]
    fn adjusted_counts_follow_lmplz() {
        // "a b" twice and "c b": bigram "a b" raw 2 at the top order; unigram b has two
        // distinct left words (a, c); "<s> a" keeps its raw count 2.
        let c = corpus(&["a b", "a b", "c b"]);
        let counted = count(&c, 2, false).unwrap();
        let v = c.vocab();
        let (a, b) = (v.id("a"), v.id("b"));
        let top = &counted[1];
        let i = find(top, &[b, a]);
        assert_eq!(top.counts[i], 2);
        assert_eq!(counted[0].counts[b as usize], 2);
        assert_eq!(counted[0].counts[a as usize], 1);
        assert_eq!(counted[0].counts[BOS as usize], 0);
        let c3 = count(&c, 3, false).unwrap();
        let i = find(&c3[1], &[a, BOS]);
        assert_eq!(c3[1].counts[i], 2);
    }

    #[test]
    fn distributions_sum_to_one() {
        let c = corpus(&["a b c d", "a b d", "b c a", "d d a b c", "c"]);
        for order in 1..=4 {
            let (m, _) = build(&c, &fallback(order), false).unwrap();
            for ctx in [&[BOS][..], &[3], &[3, 4], &[BOS, 3, 4], &[6, 6, 6]] {
                let s = m.state_from_context(ctx);
                let total: f64 = (0..m.vocab().len() as u32)
                    .filter(|&w| w != BOS)
                    .map(|w| 10f64.powf(f64::from(m.score_word(&s, w).0)))
                    .sum();
                assert!(
                    (total - 1.0).abs() < 1e-5,
                    "order {order} ctx {ctx:?}: {total}"
                );
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let c = corpus(&["", "  "]);
        let e = build(&c, &fallback(3), false).unwrap_err();
        assert!(e.to_string().contains("no words"), "{e}");
        let c = corpus(&["a b"]);
        for order in [0, 8] {
            let e = build(&c, &fallback(order), false).unwrap_err();
            assert!(e.to_string().starts_with("order must be between 1 and 7"));
        }
        let e = build(&c, &BuildOptions::default(), false).unwrap_err();
        assert!(e.to_string().contains("discount_fallback"), "{e}");
    }

    #[test]
    fn backward_model_reverses_sentences() {
        let c = corpus(&["a b c", "a c b", "b b a c"]);
        let (f, b) = build(&c, &fallback(2), true).unwrap();
        let b = b.unwrap();
        let v = f.vocab();
        let (a, bb) = (v.id("a"), v.id("b"));
        // The forward bigram "a b" is the backward bigram "b a": same key order swapped.
        assert!(f.get(&[bb, a]).is_some());
        assert!(b.get(&[a, bb]).is_some());
    }

    #[test]
    fn from_counts_is_normalised() {
        let uni: Vec<(String, u64)> = [("a", 50), ("b", 30), ("c", 20)]
            .iter()
            .map(|(w, c)| (w.to_string(), *c))
            .collect();
        let bi = vec![
            ("a".to_string(), "b".to_string(), 20),
            ("b".to_string(), "c".to_string(), 10),
            ("a".to_string(), "a".to_string(), 5),
        ];
        let m = from_counts(&uni, &bi, 10).unwrap();
        for ctx in [BOS, 3, 4, 5] {
            let s = m.state_from_context(&[ctx]);
            let total: f64 = (0..m.vocab().len() as u32)
                .filter(|&w| w != BOS)
                .map(|w| 10f64.powf(f64::from(m.score_word(&s, w).0)))
                .sum();
            assert!((total - 1.0).abs() < 1e-5, "{total}");
        }
    }
}
