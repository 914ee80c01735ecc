//! The queryable back-off model: unigrams indexed by id, higher orders in open-addressing
//! hash tables keyed by a 64-bit hash of the n-gram (KenLM's "probing" layout).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rayon::prelude::*;

use super::storage::{Array, Pod};
use super::vocab::{tokens, Vocab, BOS, EOS, UNK};
use crate::num::{eq_mask16, fmix64, prefetch};
use crate::{cancel, Error, Result};

/// Highest supported order.
pub const MAX_ORDER: usize = 7;

/// Candidate words (or sentences) scored together so that their look-ups overlap.
pub const LANES: usize = 8;

/// log10 → natural log.
pub const LN_10: f64 = std::f64::consts::LN_10;

/// Probability and back-off weight of one n-gram, both log10 (ARPA convention).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct ProbBackoff {
    pub prob: f32,
    pub backoff: f32,
}

/// Bits of -0.0: a zero back-off stored with the sign bit set marks an n-gram that is no
/// context of any longer n-gram (KenLM's trick), so scoring stops extending the state there
/// and saves a hash look-up (a cache miss) per word.
const NO_EXTENSION: u32 = 0x8000_0000;

#[inline]
fn has_extension(backoff: f32) -> bool {
    backoff.to_bits() != NO_EXTENSION
}

/// One slot of a hash table: the n-gram's hash (0 marks an empty slot) and its weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Slot {
    pub key: u64,
    pub prob: f32,
    pub backoff: f32,
}

impl Pod for ProbBackoff {
    fn to_le(self) -> Self {
        ProbBackoff {
            prob: f32::from_bits(self.prob.to_bits().to_le()),
            backoff: f32::from_bits(self.backoff.to_bits().to_le()),
        }
    }
}

impl Pod for Slot {
    fn to_le(self) -> Self {
        Slot {
            key: self.key.to_le(),
            prob: f32::from_bits(self.prob.to_bits().to_le()),
            backoff: f32::from_bits(self.backoff.to_bits().to_le()),
        }
    }
}

/// N-grams of one order ≥ 2. `keys` holds each n-gram's ids *newest word first* (w, then its
/// context from nearest to farthest) in [`sorted`] order, with their log10 probabilities in
/// `probs`; `slots` is the hash table used by queries and `tags` its one-byte fingerprints.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Table {
    pub n: usize,
    pub keys: Array<u32>,
    pub probs: Array<f32>,
    pub slots: Array<Slot>,
    /// `tags[i]` = [`tag`] of slot `i`'s hash, 0 for an empty slot, then the first
    /// [`TAG_GROUP`] tags again so a group read at any slot wraps around. Searches scan 16
    /// tags at once and read a slot only on a tag match: a table's tags are 1/16 of its
    /// slots, so they stay in cache, and a search that fails (about one per scored word)
    /// touches no slot at all.
    pub tags: Array<u8>,
}

/// Tags compared at once; also the least number of slots of a table (so the wrap-around copy
/// of the first group never wraps twice).
pub(crate) const TAG_GROUP: usize = 16;

/// One-byte fingerprint of a slot hash: its low bits (slots are chosen by the high ones),
/// never 0, the empty marker.
#[inline]
pub(crate) fn tag(h: u64) -> u8 {
    (h as u8).max(1)
}

/// The tag array of `slots` (see [`Table::tags`]).
pub(crate) fn tags_of(slots: &[Slot]) -> Vec<u8> {
    let tag_of = |s: &Slot| if s.key == 0 { 0 } else { tag(s.key) };
    let mut tags: Vec<u8> = slots.iter().map(tag_of).collect();
    tags.extend_from_within(..TAG_GROUP.min(slots.len()));
    tags
}

/// Bit masks of the tags equal to `tag` and of the empty (0) tags among 16.
#[inline]
fn match_tags(group: &[u8; TAG_GROUP], tag: u8) -> (u32, u32) {
    (eq_mask16(group, tag), eq_mask16(group, 0))
}

/// Keys (stride `n`, newest word first) and weights in a table's order: by context, then by
/// word, so the words that follow one context are contiguous (CGMH's next-word lists read
/// them in place, from a memory-mapped file too).
pub(crate) fn sorted(
    n: usize,
    keys: Vec<u32>,
    weights: Vec<ProbBackoff>,
) -> Result<(Vec<u32>, Vec<ProbBackoff>)> {
    let key = |i: u32| &keys[i as usize * n..(i as usize + 1) * n];
    let mut perm: Vec<u32> = (0..weights.len() as u32).collect();
    super::sort::par_sort_by(&mut perm, |&a, &b| {
        (&key(a)[1..], key(a)[0]).cmp(&(&key(b)[1..], key(b)[0]))
    })?;
    let mut k = Vec::with_capacity(keys.len());
    let mut w = Vec::with_capacity(weights.len());
    for (at, &i) in perm.iter().enumerate() {
        cancel::check_every(at)?; // a random-access gather: a second or more on large tables
        k.extend_from_slice(key(i));
        w.push(weights[i as usize]);
    }
    Ok((k, w))
}

/// Hash of the 1-gram `w`; extend it word by word with [`hash_extend`] (newest word first).
#[inline]
pub(crate) fn hash_word(w: u32) -> u64 {
    fmix64(u64::from(w) ^ 0x5851_f42d_4c95_7f2d)
}

/// KenLM's `CombineWordHash`: two independent multiplications, so extending a hash by a
/// word costs a few cycles; slots are chosen by the well-mixed high bits.
#[inline]
pub(crate) fn hash_extend(h: u64, w: u32) -> u64 {
    h.wrapping_mul(8_978_948_897_894_561_157)
        ^ (1 + u64::from(w)).wrapping_mul(17_894_857_484_156_487_943)
}

/// Hash of a key (newest word first) as stored in slots; never 0, the empty marker.
pub(crate) fn key_hash(key: &[u32]) -> u64 {
    let mut h = hash_word(key[0]);
    for &w in &key[1..] {
        h = hash_extend(h, w);
    }
    h.max(1)
}

impl Table {
    /// Builds the hash table of `keys` (stride `n`, newest word first) with their weights.
    /// Fails only if two distinct n-grams share a 64-bit hash (odds ~ entries² / 2⁶⁵).
    pub fn new(n: usize, keys: Vec<u32>, weights: Vec<ProbBackoff>) -> Result<Table> {
        let (keys, weights) = sorted(n, keys, weights)?;
        Self::from_sorted(n, keys, weights)
    }

    /// As [`Table::new`] for keys and weights already in [`sorted`] order.
    pub fn from_sorted(n: usize, keys: Vec<u32>, weights: Vec<ProbBackoff>) -> Result<Table> {
        let len = weights.len();
        // 1.5 slots per entry (KenLM's default probing multiplier), at least one empty slot.
        let size = (len + len / 2 + 1).max(TAG_GROUP);
        let mut slots = vec![
            Slot {
                key: 0,
                prob: 0.0,
                backoff: 0.0
            };
            size
        ];
        for (at, (key, w)) in keys.chunks_exact(n).zip(&weights).enumerate() {
            cancel::check_every(at)?;
            let h = key_hash(key);
            let mut i = bucket(h, size);
            while slots[i].key != 0 {
                if slots[i].key == h {
                    return Err(Error::value(
                        "model",
                        format!("has two {n}-grams with the same 64-bit hash; please report it"),
                    ));
                }
                i = if i + 1 == size { 0 } else { i + 1 };
            }
            slots[i] = Slot {
                key: h,
                prob: w.prob,
                backoff: w.backoff,
            };
        }
        Ok(Table {
            n,
            keys: keys.into(),
            probs: weights.iter().map(|w| w.prob).collect::<Vec<_>>().into(),
            tags: tags_of(&slots).into(),
            slots: slots.into(),
        })
    }

    fn find_mut(&mut self, hash: u64) -> Option<&mut Slot> {
        let i = self.position(hash)?;
        self.slots.make_mut().get_mut(i)
    }

    /// Hints the CPU to load the tags and the first slots a search for `hash` reads.
    #[inline]
    fn prefetch(&self, hash: u64) {
        let i = bucket(hash.max(1), self.slots.len());
        prefetch(self.tags.as_ptr().wrapping_add(i));
        prefetch(self.slots.as_ptr().wrapping_add(i));
    }

    #[inline(always)]
    pub fn find(&self, hash: u64) -> Option<&Slot> {
        self.slots.get(self.position(hash)?)
    }

    /// The index of the slot holding `hash`, found through the tags.
    #[inline(always)]
    fn position(&self, hash: u64) -> Option<usize> {
        let h = hash.max(1);
        let size = self.slots.len();
        let mut i = bucket(h, size);
        loop {
            let Some(group) = self.tags.get(i..i + TAG_GROUP) else {
                return None; // unreachable: `tags` holds `size + TAG_GROUP` bytes
            };
            let (mut hits, empty) = match_tags(group.try_into().ok()?, tag(h));
            // Only tags before the first empty slot belong to this search.
            hits &= empty.wrapping_sub(1) & !empty;
            while hits != 0 {
                let j = i + hits.trailing_zeros() as usize;
                let j = if j >= size { j - size } else { j };
                if self.slots[j].key == h {
                    return Some(j);
                }
                hits &= hits - 1;
            }
            if empty != 0 {
                return None;
            }
            i += TAG_GROUP;
            if i >= size {
                i -= size;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len() / self.n
    }

    /// The keys (stride `n`) and probabilities of the n-grams whose context (newest word
    /// first) is `context`: a binary search over the sorted keys (hand-written: the keys are a
    /// flat array of stride `n`, which the slice searches cannot index).
    fn successors(&self, context: &[u32]) -> (&[u32], &[f32]) {
        let n = self.n;
        let context_of = |i: usize| &self.keys[i * n + 1..(i + 1) * n];
        let first_not = |before: &dyn Fn(&[u32]) -> bool| {
            let (mut lo, mut hi) = (0, self.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if before(context_of(mid)) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        let (lo, hi) = (first_not(&|c| c < context), first_not(&|c| c <= context));
        (&self.keys[lo * n..hi * n], &self.probs[lo..hi])
    }
}

#[inline]
fn bucket(h: u64, size: usize) -> usize {
    // Lemire's multiply-shift range reduction: no division, uses the high bits.
    ((u128::from(h) * size as u128) >> 64) as usize
}

/// What a query remembers of the words before: up to `order - 1` of them, newest first, with
/// the log10 back-off weights of the contexts they form. Cheap to copy; scoring a word from a
/// state touches only the hash tables.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct State {
    len: u8,
    words: [u32; MAX_ORDER - 1],
    backoff: [f32; MAX_ORDER - 1],
}

impl State {
    /// The empty context (KenLM's `NullContextState`).
    pub const NULL: State = State {
        len: 0,
        words: [0; MAX_ORDER - 1],
        backoff: [0.0; MAX_ORDER - 1],
    };

    /// Number of context words kept.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The kept context words, newest first.
    pub fn words(&self) -> &[u32] {
        &self.words[..self.len()]
    }
}

/// The score of one word: log10 probability, length of the n-gram that matched, and
/// whether the word was out of the vocabulary (as `kenlm.Model.full_scores`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenScore {
    pub log10: f32,
    pub ngram_len: usize,
    pub oov: bool,
}

/// A back-off n-gram language model (what an ARPA file holds), ready for queries.
///
/// ```
/// use kexue_core::lm::{BuildOptions, Corpus};
/// let mut corpus = Corpus::new(false);
/// for line in ["the cat sat", "the dog sat", "a cat ran", "the cat ran"] {
///     corpus.add_sentence(line);
/// }
/// let opts = BuildOptions { order: 3, discount_fallback: true, ..Default::default() };
/// let (lm, _) = kexue_core::lm::build(&corpus, &opts, false).unwrap();
/// let the = lm.vocab().id("the");
/// let cat = lm.vocab().id("cat");
/// // ln p(cat | <s> the) from a context slice, or token by token through states:
/// let p = lm.cond_logprob(&[kexue_core::lm::BOS, the], cat);
/// let (l1, s1) = lm.score_word(&lm.begin_state(), the);
/// let (l2, _) = lm.score_word(&s1, cat);
/// assert!((f64::from(l2) * kexue_core::lm::LN_10 - p).abs() < 1e-9 && l1 < 0.0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub(crate) vocab: Vocab,
    pub(crate) unigrams: Array<ProbBackoff>,
    pub(crate) tables: Vec<Table>,
    /// The file whose memory map holds the tables, if any.
    pub(crate) mapped: MappedFile,
}

/// The file a memory-mapped model reads its tables from, with its size and modification time
/// when it was mapped. Another program rewriting or truncating a mapped file in place would
/// make the next read of a vanished page kill the process (SIGBUS), so every query entry
/// point calls [`Model::check_file`] first and gets an error instead. (A rename over the
/// path, as [`super::save`] does, leaves the mapped file intact: nothing to detect.)
#[derive(Clone, Debug, Default)]
pub(crate) struct MappedFile(Option<Arc<Stamp>>);

#[derive(Debug)]
pub(crate) struct Stamp {
    file: File,
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl MappedFile {
    pub(crate) fn new(file: File, path: &Path) -> Result<Self> {
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        Ok(MappedFile(Some(Arc::new(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            file,
            path: path.to_path_buf(),
        }))))
    }
}

/// Models compare by content; where the tables live does not matter.
impl PartialEq for MappedFile {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Model {
    /// Assembles a model: `unigrams[id]` for every vocabulary id, then one table per order ≥ 2;
    /// marks the zero back-offs of n-grams that extend to no longer n-gram.
    pub(crate) fn new(
        vocab: Vocab,
        unigrams: Vec<ProbBackoff>,
        tables: Vec<Table>,
    ) -> Result<Self> {
        let mut m = Self::from_marked_parts(vocab, unigrams.into(), tables);
        let no_ext = f32::from_bits(NO_EXTENSION);
        let zero_to_no_ext = |b: &mut f32| {
            if *b == 0.0 {
                *b = no_ext;
            }
        };
        m.unigrams
            .make_mut()
            .iter_mut()
            .for_each(|u| zero_to_no_ext(&mut u.backoff));
        for t in &mut m.tables {
            t.slots
                .make_mut()
                .iter_mut()
                .for_each(|s| zero_to_no_ext(&mut s.backoff));
        }
        let clear = |b: &mut f32| {
            if b.to_bits() == NO_EXTENSION {
                *b = 0.0;
            }
        };
        for k in 0..m.tables.len() {
            let (lower, upper) = m.tables.split_at_mut(k);
            let t = &upper[0];
            // One hash probe per n-gram: seconds on large models, so polled.
            for (at, key) in t.keys.chunks_exact(t.n).enumerate() {
                cancel::check_every(at)?;
                let context = &key[1..];
                if k == 0 {
                    if let Some(u) = m.unigrams.make_mut().get_mut(context[0] as usize) {
                        clear(&mut u.backoff);
                    }
                } else if let Some(s) = lower[k - 1].find_mut(key_hash(context)) {
                    clear(&mut s.backoff);
                }
            }
        }
        // What every query probes, now final.
        m.unigrams.move_to_huge_pages();
        m.tables.iter_mut().for_each(|t| {
            t.slots.move_to_huge_pages();
            t.tags.move_to_huge_pages();
        });
        cancel::check()?;
        Ok(m)
    }

    /// Assembles a model whose extension marks are already set (binary files).
    pub(crate) fn from_marked_parts(
        vocab: Vocab,
        unigrams: Array<ProbBackoff>,
        tables: Vec<Table>,
    ) -> Self {
        debug_assert_eq!(vocab.len(), unigrams.len());
        Model {
            vocab,
            unigrams,
            tables,
            mapped: MappedFile::default(),
        }
    }

    /// For a memory-mapped model, an error when its file changed size or modification time
    /// since it was mapped (see [`MappedFile`]); a window remains while a call runs, so files
    /// should be replaced, not rewritten.
    pub fn check_file(&self) -> Result<()> {
        let MappedFile(Some(f)) = &self.mapped else {
            return Ok(());
        };
        let meta = f.file.metadata().map_err(|e| Error::io(&f.path, e))?;
        if meta.len() == f.len && meta.modified().ok() == f.modified {
            return Ok(());
        }
        Err(Error::io(
            &f.path,
            std::io::Error::other(
                "the memory-mapped model file was rewritten or truncated since it was loaded \
                 (replace model files, as save() does, instead of writing over them); load it again",
            ),
        ))
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The order (length of the longest n-grams).
    pub fn order(&self) -> usize {
        self.tables.len() + 1
    }

    /// Number of n-grams of each order, 1 first.
    pub fn counts(&self) -> Vec<usize> {
        std::iter::once(self.unigrams.len())
            .chain(self.tables.iter().map(Table::len))
            .collect()
    }

    /// The state after `<s>` (KenLM's `BeginSentenceState`).
    pub fn begin_state(&self) -> State {
        self.state_from_context(&[BOS])
    }

    /// The state after the words of `context` (oldest first; put [`BOS`] first for a
    /// sentence start). Only the last `order - 1` words matter.
    pub fn state_from_context(&self, context: &[u32]) -> State {
        let mut state = State::NULL;
        let keep = context.len().min(self.order() - 1);
        let mut h = 0;
        for k in 0..keep {
            let w = context[context.len() - 1 - k];
            let backoff = if k == 0 {
                match self.unigrams.get(w as usize) {
                    Some(u) => {
                        h = hash_word(w);
                        u.backoff
                    }
                    None => break,
                }
            } else {
                h = hash_extend(h, w);
                match self.tables[k - 1].find(h) {
                    Some(s) => s.backoff,
                    None => break,
                }
            };
            state.words[k] = w;
            state.backoff[k] = backoff;
            state.len += 1;
        }
        state
    }

    /// Scores `word` after `state`: log10 p and the state after it.
    #[inline]
    pub fn score_word(&self, state: &State, word: u32) -> (f32, State) {
        let (s, next) = self.score_full(state, word);
        (s.log10, next)
    }

    /// As [`Model::score_word`], with the matched n-gram length and the OOV flag.
    pub fn score_full(&self, state: &State, word: u32) -> (TokenScore, State) {
        let mut h = hash_word(self.known(word));
        let mut next = State::NULL;
        let score = self.score_impl(
            state,
            word,
            |k| {
                h = hash_extend(h, state.words[k]);
                self.tables[k].find(h)
            },
            &mut next,
        );
        (score, next)
    }

    /// Scoring itself; `find(k)` returns the slot of `word` with the first `k + 1` words of
    /// `state` (called for k = 0, 1, … until it returns `None`). The state after `word` is
    /// written field by field into `next`, where the caller keeps it: assembling it on the
    /// stack and copying it out cost a store-forwarding stall (wide loads of narrow stores)
    /// per word.
    #[inline(always)]
    fn score_impl<'a>(
        &'a self,
        state: &State,
        word: u32,
        mut find: impl FnMut(usize) -> Option<&'a Slot>,
        next: &mut State,
    ) -> TokenScore {
        let oov = word == UNK || word as usize >= self.unigrams.len();
        let word = if oov { UNK } else { word };
        let uni = self.unigrams[word as usize];
        *next = State::NULL;
        next.words[0] = word;
        next.backoff[0] = uni.backoff;
        let mut prob = uni.prob;
        let mut matched = 1;
        // The next state keeps the longest matched n-gram that some longer n-gram extends.
        let mut keep = usize::from(has_extension(uni.backoff));
        let max_len = self.order().min(state.len() + 1);
        while matched < max_len {
            let Some(slot) = find(matched - 1) else {
                break;
            };
            prob = slot.prob;
            if matched < MAX_ORDER - 1 {
                next.words[matched] = state.words[matched - 1];
                next.backoff[matched] = slot.backoff;
            }
            matched += 1;
            if has_extension(slot.backoff) {
                keep = matched;
            }
        }
        for &b in &state.backoff[matched - 1..state.len()] {
            prob += b;
        }
        next.len = keep.min(self.order() - 1) as u8;
        TokenScore {
            log10: prob,
            ngram_len: matched,
            oov,
        }
    }

    /// As [`Model::score_word`] in natural log (the unit of the ML APIs).
    #[inline]
    pub fn logprob_word(&self, state: &State, word: u32) -> (f64, State) {
        let (p, next) = self.score_word(state, word);
        (f64::from(p) * LN_10, next)
    }

    /// Natural-log probability of `word` after the words of `context` (oldest first).
    pub fn cond_logprob(&self, context: &[u32], word: u32) -> f64 {
        let state = self.state_from_context(context);
        f64::from(self.score_word(&state, word).0) * LN_10
    }

    /// Whether the model holds the n-gram `words` (oldest first; ids past the vocabulary read
    /// as `<unk>`): one probe of its table, where scoring would walk every shorter one.
    /// Every word (`<unk>` included) is a unigram; an empty or over-long n-gram is not held.
    pub fn contains(&self, words: &[u32]) -> bool {
        let Some((&last, context)) = words.split_last() else {
            return false;
        };
        if context.is_empty() {
            return true;
        }
        let Some(table) = self.tables.get(context.len() - 1) else {
            return false;
        };
        let mut h = hash_word(self.known(last));
        for &w in context.iter().rev() {
            h = hash_extend(h, self.known(w));
        }
        table.find(h).is_some()
    }

    /// Maps a sentence's words to ids (`<unk>` for unknown ones).
    pub fn ids(&self, sentence: &str) -> Vec<u32> {
        tokens(sentence).map(|t| self.vocab.id(t)).collect()
    }

    /// Per-token scores of `ids` (plus `</s>` when `eos`), starting after `<s>` when `bos`.
    pub fn token_scores(&self, ids: &[u32], bos: bool, eos: bool) -> Vec<TokenScore> {
        let mut state = if bos { self.begin_state() } else { State::NULL };
        let tail = if eos { Some(EOS) } else { None };
        ids.iter()
            .copied()
            .chain(tail)
            .map(|w| {
                let (s, next) = self.score_full(&state, w);
                state = next;
                s
            })
            .collect()
    }

    /// Total log10 probability of `ids` (and `</s>` when `eos`), after `<s>` when `bos`,
    /// summed in f64.
    pub fn score_ids(&self, ids: &[u32], bos: bool, eos: bool) -> f64 {
        self.sum_scores(ids, bos, eos, 0.0, |t, p| t + f64::from(p))
    }

    /// As [`Model::score_ids`] but summed in f32, exactly as `kenlm.Model.score` does (its
    /// rounding reaches ~1e-4 on sentences of a few hundred words).
    pub fn score_ids_f32(&self, ids: &[u32], bos: bool, eos: bool) -> f32 {
        self.sum_scores(ids, bos, eos, 0.0, |t, p| t + p)
    }

    fn sum_scores<T>(
        &self,
        ids: &[u32],
        bos: bool,
        eos: bool,
        zero: T,
        add: impl Fn(T, f32) -> T,
    ) -> T {
        let mut state = if bos { self.begin_state() } else { State::NULL };
        let mut total = zero;
        for &w in ids {
            let (p, next) = self.score_word(&state, w);
            total = add(total, p);
            state = next;
        }
        if eos {
            total = add(total, self.score_word(&state, EOS).0);
        }
        total
    }

    /// log10 scores of many sentences in parallel (rayon), written to `out`; summed in f32
    /// like `kenlm` when `f32_sum`, else in f64.
    pub fn score_batch<S: AsRef<str> + Sync>(
        &self,
        sentences: &[S],
        bos: bool,
        eos: bool,
        f32_sum: bool,
        out: &mut [f64],
    ) -> Result<()> {
        check_out_len(out, sentences.len())?;
        out.par_chunks_mut(64)
            .zip(sentences.par_chunks(64))
            .try_for_each(|(out, part)| {
                cancel::check()?;
                let (mut ids, mut ends) = (Vec::new(), vec![0]);
                self.vocab.ids_batch(part, &mut ids, &mut ends);
                let ids: Vec<&[u32]> = ends.windows(2).map(|w| &ids[w[0]..w[1]]).collect();
                self.score_many(&ids, bos, eos, f32_sum, out);
                Ok(())
            })
    }

    /// log10 scores of many id sentences (as [`Model::score_ids`]) in parallel (rayon).
    pub fn score_ids_batch(
        &self,
        sentences: &[&[u32]],
        bos: bool,
        eos: bool,
        out: &mut [f64],
    ) -> Result<()> {
        check_out_len(out, sentences.len())?;
        out.par_chunks_mut(64)
            .zip(sentences.par_chunks(64))
            .try_for_each(|(out, part)| {
                cancel::check()?;
                self.score_many(part, bos, eos, false, out);
                Ok(())
            })
    }

    /// Sentence scores (as [`Model::score_ids`], or [`Model::score_ids_f32`] when `f32_sum`).
    ///
    /// Scoring is a chain of dependent cache misses: which look-ups a word needs depends on
    /// the state the previous word left. So 2 × [`LANES`] sentences advance in lockstep, in
    /// two groups: for one group the tags and first slots that each sentence's next word may
    /// probe are prefetched (its state is known) while the other group, prefetched a step
    /// before, is scored; the misses of independent sentences overlap and land before they
    /// are needed. (Prefetching every order several words ahead wastes most prefetches: the
    /// median word matches only its unigram. A third stage that reads the tags first and
    /// prefetches only the slots they point to measured slower: more work per word, and
    /// more mispredicted branches, than the misses it saves.)
    pub fn score_many(
        &self,
        sentences: &[&[u32]],
        bos: bool,
        eos: bool,
        f32_sum: bool,
        out: &mut [f64],
    ) {
        struct Lane {
            sentence: usize,
            pos: usize,
            state: State,
            sum64: f64,
            sum32: f32,
            /// The word being scored (set with its hashes) and its hashes with 1, 2, …
            /// context words.
            word: u32,
            hashes: [u64; MAX_ORDER - 1],
        }
        let start = if bos { self.begin_state() } else { State::NULL };
        let word_at = |lane: &Lane| -> Option<u32> {
            let ids = sentences[lane.sentence];
            match ids.get(lane.pos) {
                Some(&w) => Some(w),
                None => (eos && lane.pos == ids.len()).then_some(EOS),
            }
        };
        let mut queue = 0..sentences.len().min(out.len());
        // Two groups take turns: one group's slots load while the other is scored.
        let mut loading: Vec<Lane> = Vec::with_capacity(LANES);
        let mut ready: Vec<Lane> = Vec::with_capacity(LANES);
        loop {
            // Fill free lanes; sentences with nothing to score are done at once.
            while loading.len() < LANES {
                let Some(sentence) = queue.next() else { break };
                let lane = Lane {
                    sentence,
                    pos: 0,
                    state: start,
                    sum64: 0.0,
                    sum32: 0.0,
                    word: EOS,
                    hashes: [0; MAX_ORDER - 1],
                };
                if word_at(&lane).is_some() {
                    loading.push(lane);
                } else {
                    out[sentence] = 0.0;
                }
            }
            if loading.is_empty() && ready.is_empty() {
                return;
            }
            for lane in &mut loading {
                lane.word = word_at(lane).unwrap_or(EOS);
                let mut h = hash_word(self.known(lane.word));
                for (k, (t, &c)) in self.tables.iter().zip(lane.state.words()).enumerate() {
                    h = hash_extend(h, c);
                    lane.hashes[k] = h;
                    t.prefetch(h);
                }
            }
            let mut i = 0;
            while i < ready.len() {
                let lane = &mut ready[i];
                // Read long after it was written: a copy without a forwarding stall.
                let state = lane.state;
                let hashes = &lane.hashes;
                let score = self.score_impl(
                    &state,
                    lane.word,
                    |k| self.tables[k].find(hashes[k]),
                    &mut lane.state,
                );
                lane.sum64 += f64::from(score.log10);
                lane.sum32 += score.log10;
                lane.pos += 1;
                if word_at(lane).is_none() {
                    out[lane.sentence] = if f32_sum {
                        f64::from(lane.sum32)
                    } else {
                        lane.sum64
                    };
                    ready.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            std::mem::swap(&mut loading, &mut ready);
        }
    }

    /// `word` if it is in the vocabulary, else [`UNK`].
    #[inline]
    fn known(&self, word: u32) -> u32 {
        if (word as usize) < self.unigrams.len() {
            word
        } else {
            UNK
        }
    }

    /// Starts loading the hash slots that scoring `word` after `state` may read.
    #[inline]
    fn prefetch(&self, state: &State, word: u32) {
        let mut h = hash_word(self.known(word));
        for (t, &w) in self.tables.iter().zip(state.words()) {
            h = hash_extend(h, w);
            t.prefetch(h);
        }
    }

    /// log10 p(w | context) for each `w` of `candidates` (ids), in parallel.
    pub fn next_scores(&self, state: &State, candidates: &[u32], out: &mut [f64]) -> Result<()> {
        if out.len() != candidates.len() {
            return Err(Error::value(
                "out",
                format!("must have {} elements, got {}", candidates.len(), out.len()),
            ));
        }
        out.par_chunks_mut(1024)
            .zip(candidates.par_chunks(1024))
            .for_each(|(out, part)| {
                for (out, part) in out.chunks_mut(LANES).zip(part.chunks(LANES)) {
                    for &w in part {
                        self.prefetch(state, w);
                    }
                    for (o, &w) in out.iter_mut().zip(part) {
                        *o = f64::from(self.score_word(state, w).0);
                    }
                }
            });
        Ok(())
    }

    /// The weights of the n-gram `key` (newest word first), if the model has it.
    pub fn get(&self, key: &[u32]) -> Option<ProbBackoff> {
        match key.len() {
            0 => None,
            1 => self.unigrams.get(key[0] as usize).copied(),
            n => {
                let slot = self.tables.get(n - 2)?.find(key_hash(key))?;
                Some(ProbBackoff {
                    prob: slot.prob,
                    backoff: slot.backoff,
                })
            }
        }
    }

    /// The words that follow `context` (newest word first, 1 to `order - 1` words) in an
    /// explicit n-gram, with their log10 probabilities, in id order.
    pub fn successors(&self, context: &[u32]) -> impl ExactSizeIterator<Item = (u32, f32)> + '_ {
        // Table `i` holds the (i + 2)-grams: the successors of contexts of i + 1 words.
        let table = context
            .len()
            .checked_sub(1)
            .and_then(|i| self.tables.get(i));
        let (keys, probs) = table.map_or((&[][..], &[][..]), |t| t.successors(context));
        let words = keys.iter().step_by(context.len() + 1).copied();
        words.zip(probs.iter().copied())
    }

    /// Weights of the unigrams, indexed by word id.
    pub fn unigrams(&self) -> &[ProbBackoff] {
        &self.unigrams
    }

    /// Every n-gram of order `n` ≥ 2 (keys newest word first, sorted) with its weights;
    /// nothing for other orders (see [`Model::unigrams`]).
    pub fn entries(&self, n: usize) -> impl Iterator<Item = (&[u32], ProbBackoff)> + '_ {
        let table = if n >= 2 { self.tables.get(n - 2) } else { None };
        table.into_iter().flat_map(move |t| {
            t.keys.chunks_exact(n).map(move |k| {
                let s = t.find(key_hash(k));
                let weights = s.map_or(
                    ProbBackoff {
                        prob: f32::NAN,
                        backoff: f32::NAN,
                    },
                    |s| ProbBackoff {
                        prob: s.prob,
                        backoff: s.backoff,
                    },
                );
                (k, weights)
            })
        })
    }

    /// Bytes held by the tables (for memory reports).
    pub fn heap_bytes(&self) -> usize {
        self.unigrams.len() * std::mem::size_of::<ProbBackoff>()
            + self
                .tables
                .iter()
                .map(|t| {
                    t.keys.len() * 4 + t.slots.len() * std::mem::size_of::<Slot>() + t.tags.len()
                })
                .sum::<usize>()
    }
}

/// `out` must hold one score per sentence.
fn check_out_len(out: &[f64], sentences: usize) -> Result<()> {
    if out.len() == sentences {
        Ok(())
    } else {
        Err(Error::value(
            "out",
            format!("must have {sentences} elements, got {}", out.len()),
        ))
    }
}
