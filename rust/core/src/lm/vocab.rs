//! Vocabulary (dense `u32` ids, the three special words first) and the training corpus.

use std::path::Path;

use crate::num::{eq_mask16, fmix64, prefetch};
use crate::{Error, Result};

/// Id of `<unk>`: every word outside the vocabulary maps here.
pub const UNK: u32 = 0;
/// Id of `<s>`, the sentence-start context (never predicted).
pub const BOS: u32 = 1;
/// Id of `</s>`, the sentence end (predicted like a word).
pub const EOS: u32 = 2;

/// Word ↔ id map. Ids 0, 1, 2 are `<unk>`, `<s>`, `</s>` (KenLM's numbering); other words
/// follow in order of first appearance.
///
/// Look-ups go through an open-addressing table of 64-bit word hashes, as KenLM's vocabulary
/// does: a hit is decided by the hash alone (no string comparison, no pointer chase), which
/// halves the cost of mapping text to ids. Words of the vocabulary never collide (an insert
/// that meets a colliding hash switches the table to comparing strings); an unknown word is
/// mistaken for a known one only if their 64-bit hashes collide, odds ~ 10^-15 per look-up.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    words: Vec<Box<str>>,
    /// (hash, id) with hash 0 marking an empty slot; at most half full.
    slots: Vec<(u64, u32)>,
    compare_strings: bool,
}

/// 64-bit hash of a word: 8 bytes at a time through MurmurHash3's finaliser. Words of up to
/// 8 bytes (most words) are one zero-padded 8-byte value, so a bijection hashes them: two
/// such words of one length never collide.
fn word_hash(word: &str) -> u64 {
    let b = word.as_bytes();
    let n = b.len();
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let u32_at = |i: usize| {
        u64::from(u32::from_le_bytes(
            b[i..i + 4].try_into().unwrap_or_default(),
        ))
    };
    // The zero-padded value is assembled from overlapping loads rather than copied into a
    // buffer: that copy was a `memcpy` call and a store-forwarding stall per word.
    match n {
        9.. => {
            let mut h = seed(n);
            for i in (0..n - 8).step_by(8) {
                h = fmix64(h ^ u64_at(i)).wrapping_add(0x2545_f491_4f6c_dd1d);
            }
            fmix64(h ^ u64_at(n - 8)).max(1)
        }
        8 => short_word_hash(8, u64_at(0)),
        4..=7 => short_word_hash(n, u32_at(0) | u32_at(n - 4) << (8 * (n - 4))),
        1..=3 => {
            let x = u64::from(b[0]) | u64::from(b[n / 2]) << (8 * (n / 2));
            short_word_hash(n, x | u64::from(b[n - 1]) << (8 * (n - 1)))
        }
        0 => short_word_hash(0, 0),
    }
}

/// [`word_hash`] of a word of `n ≤ 8` bytes whose zero-padded little-endian value is `x`.
#[inline]
fn short_word_hash(n: usize, x: u64) -> u64 {
    fmix64(seed(n) ^ x).max(1)
}

#[inline]
fn seed(n: usize) -> u64 {
    0x243f_6a88_85a3_08d3 ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// [`word_hash`] of `line[start..end]`, a short word read with one 8-byte load (masked)
/// where the line has 8 bytes from `start`.
#[inline]
fn word_hash_at(line: &str, start: usize, end: usize) -> u64 {
    let n = end - start;
    match line.as_bytes().get(start..start + 8) {
        Some(b) if (1..=8).contains(&n) => {
            let x = u64::from_le_bytes(b.try_into().unwrap_or_default());
            short_word_hash(n, x & (u64::MAX >> (8 * (8 - n))))
        }
        _ => word_hash(&line[start..end]),
    }
}

impl Default for Vocab {
    fn default() -> Self {
        Self::new()
    }
}

impl Vocab {
    /// A vocabulary holding only `<unk>`, `<s>`, `</s>`.
    pub fn new() -> Self {
        let mut v = Vocab {
            words: Vec::new(),
            slots: vec![(0, 0); 16],
            compare_strings: false,
        };
        for w in ["<unk>", "<s>", "</s>"] {
            v.insert(w);
        }
        v
    }

    /// Slot of `word`: where it is, or the empty slot where it would go.
    #[inline]
    fn slot(&self, word: &str, hash: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = (hash as usize) & mask;
        loop {
            let (h, id) = self.slots[i];
            if h == 0 || (h == hash && (!self.compare_strings || &*self.words[id as usize] == word))
            {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// The id of `word`, adding it if new.
    pub fn insert(&mut self, word: &str) -> u32 {
        let hash = word_hash(word);
        let i = self.slot(word, hash);
        let (h, id) = self.slots[i];
        if h != 0 {
            if self.compare_strings || &*self.words[id as usize] == word {
                return id;
            }
            // A 64-bit collision between two words: compare strings from now on.
            self.compare_strings = true;
            return self.insert(word);
        }
        let id = self.words.len() as u32;
        self.words.push(word.into());
        self.slots[i] = (hash, id);
        if 2 * self.words.len() > self.slots.len() {
            let mut bigger = vec![(0, 0); 2 * self.slots.len()];
            let mask = bigger.len() - 1;
            for &(h, id) in self.slots.iter().filter(|s| s.0 != 0) {
                let mut j = (h as usize) & mask;
                while bigger[j].0 != 0 {
                    j = (j + 1) & mask;
                }
                bigger[j] = (h, id);
            }
            self.slots = bigger;
        }
        id
    }

    /// The id of `word`, or `None` when it is not in the vocabulary.
    #[inline]
    pub fn get(&self, word: &str) -> Option<u32> {
        let (h, id) = self.slots[self.slot(word, word_hash(word))];
        (h != 0).then_some(id)
    }

    /// The ids of the words of each sentence (`<unk>` for unknown ones), appended to `ids`;
    /// each sentence's end offset is pushed to `ends`. All words are hashed and their slots
    /// prefetched first, so the look-ups' cache misses overlap.
    pub fn ids_batch<S: AsRef<str>>(
        &self,
        sentences: &[S],
        ids: &mut Vec<u32>,
        ends: &mut Vec<usize>,
    ) {
        let mut words: Vec<(&str, u64)> = Vec::new();
        let mut lens = Vec::with_capacity(sentences.len());
        let mask = self.slots.len() - 1;
        for s in sentences {
            let line = s.as_ref();
            let before = words.len();
            for (start, end) in tokens(line).spans() {
                let h = word_hash_at(line, start, end);
                prefetch(self.slots.as_ptr().wrapping_add(h as usize & mask));
                words.push((&line[start..end], h));
            }
            lens.push(words.len() - before);
        }
        ids.extend(words.iter().map(|&(w, h)| {
            let (found, id) = self.slots[self.slot(w, h)];
            if found == 0 {
                UNK
            } else {
                id
            }
        }));
        let mut end = ends.last().copied().unwrap_or(0);
        for n in lens {
            end += n;
            ends.push(end);
        }
    }

    /// The id of `word`, [`UNK`] when it is not in the vocabulary.
    pub fn id(&self, word: &str) -> u32 {
        self.get(word).unwrap_or(UNK)
    }

    /// The word of `id`, or `None` when `id` is out of range.
    pub fn word(&self, id: u32) -> Option<&str> {
        self.words.get(id as usize).map(|w| &**w)
    }

    /// Number of words, the three special ones included.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Always false: the special words are always there.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// All words in id order.
    pub fn words(&self) -> impl ExactSizeIterator<Item = &str> {
        self.words.iter().map(|w| &**w)
    }
}

/// Whether `c` separates words: what Python's `str.isspace` accepts (Unicode White_Space and
/// the information separators U+001C–U+001F) and NUL, which the binary format reserves. One
/// rule with `kexue.lm.split_words`.
pub fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\0' | '\u{1c}'..='\u{1f}')
}

/// The tokens of one line, split by [`is_separator`], as Python's `str.split()` does
/// (`kenlm.Model.score` and lmplz split on ASCII whitespace only: they agree on text
/// without other whitespace characters, such as U+00A0 or U+3000).
pub fn tokens(line: &str) -> Tokens<'_> {
    let spaces_only = !has_other_whitespace(line.as_bytes());
    Tokens {
        line,
        pos: 0,
        spaced: spaces_only.then_some(SpacedWords {
            boundaries: 0,
            space_before: true,
            start: None,
        }),
    }
}

/// Whether `line` may hold a separator other than ' ': a control character (below 0x20) or
/// one of Unicode's non-ASCII spaces (U+0085, U+00A0, U+1680, U+2000–U+200A, U+2028,
/// U+2029, U+202F, U+205F, U+3000, encoded after a lead byte C2, E1, E2 or E3). A
/// branch-free (vectorised) pass finds the candidate bytes; only lines that have some
/// (dashes and quotes start with E2) are looked at closely.
fn has_other_whitespace(line: &[u8]) -> bool {
    let suspect = |b: u8| b < 0x20 || b == 0xC2 || (0xE1..=0xE3).contains(&b);
    if !line.iter().fold(false, |any, &b| any | suspect(b)) {
        return false;
    }
    (0..line.len()).any(|i| {
        let next = |k: usize| line.get(i + k).copied().unwrap_or(0);
        match line[i] {
            0..0x20 => true,
            0xC2 => matches!(next(1), 0x85 | 0xA0),
            0xE1 => next(1) == 0x9A && next(2) == 0x80,
            0xE2 => match next(1) {
                0x80 => matches!(next(2), 0x80..=0x8A | 0xA8 | 0xA9 | 0xAF),
                0x81 => next(2) == 0x9F,
                _ => false,
            },
            0xE3 => next(1) == 0x80 && next(2) == 0x80,
            _ => false,
        }
    })
}

/// Iterator of [`tokens`]; bytes below 0x80 are classified without decoding characters, and
/// lines whose only whitespace is ' ' (most text) are split on spaces alone, 64 bytes at a
/// time.
pub struct Tokens<'a> {
    line: &'a str,
    /// Where the scan goes on.
    pos: usize,
    spaced: Option<SpacedWords>,
}

/// Scan state of a line split on spaces alone, found 64 bytes at a time: a bit mask of the
/// spaces marks where words start and end, so a word costs a few instructions instead of a
/// compare and a mispredicted branch per byte (hand-written: `str::split` and `memchr` find
/// one separator per call).
struct SpacedWords {
    /// Bytes of the current block (from `Tokens::pos - 64`) where a word starts or ends.
    boundaries: u64,
    /// Whether the byte before the next block is a space (or the line's start).
    space_before: bool,
    /// Start of the word being read.
    start: Option<usize>,
}

/// Bit `i` set where `block[i]` is a space; bytes past the block's end count as spaces.
#[inline]
fn space_mask(block: &[u8]) -> u64 {
    let mut padded = [b' '; 64];
    let full: &[u8; 64] = match block.try_into() {
        Ok(full) => full,
        Err(_) => {
            padded[..block.len()].copy_from_slice(block);
            &padded
        }
    };
    (0..4).fold(0, |m, i| {
        let group = full[16 * i..16 * (i + 1)].try_into().unwrap_or(&[0; 16]);
        m | u64::from(eq_mask16(group, b' ')) << (16 * i)
    })
}

/// ASCII separators: what Python's `str.isspace` accepts below 0x80 (`char::is_whitespace`'s
/// and the information separators U+001C–U+001F), and NUL; one rule with
/// `kexue.lm.split_words`.
const fn ascii_separators() -> [bool; 128] {
    let mut t = [false; 128];
    let seps = [
        b' ', b'\t', b'\n', 0x0b, 0x0c, b'\r', 0x1c, 0x1d, 0x1e, 0x1f, 0,
    ];
    let mut i = 0;
    while i < seps.len() {
        t[seps[i] as usize] = true;
        i += 1;
    }
    t
}

static SEPARATOR: [bool; 128] = ascii_separators();

impl<'a> Tokens<'a> {
    /// Byte ranges of the tokens instead of the tokens.
    pub(crate) fn spans(self) -> impl Iterator<Item = (usize, usize)> + 'a {
        let mut this = self;
        std::iter::from_fn(move || this.next_span())
    }

    /// Whether a separator starts at byte `i` (a char boundary), and the char's length.
    #[inline]
    fn at(&self, i: usize) -> (bool, usize) {
        let b = self.line.as_bytes()[i];
        if b < 0x80 {
            (SEPARATOR[b as usize], 1)
        } else {
            match self.line[i..].chars().next() {
                Some(c) => (is_separator(c), c.len_utf8()),
                None => (false, 1),
            }
        }
    }

    #[inline]
    fn next_span(&mut self) -> Option<(usize, usize)> {
        let n = self.line.len();
        if let Some(w) = &mut self.spaced {
            loop {
                if w.boundaries != 0 {
                    let at = self.pos - 64 + w.boundaries.trailing_zeros() as usize;
                    w.boundaries &= w.boundaries - 1;
                    match w.start.take() {
                        Some(start) => return Some((start, at.min(n))),
                        None => w.start = Some(at),
                    }
                } else if self.pos >= n {
                    return w.start.take().map(|start| (start, n));
                } else {
                    let block = &self.line.as_bytes()[self.pos..n.min(self.pos + 64)];
                    let spaces = space_mask(block);
                    // Bits where a byte differs from the one before in being a space.
                    w.boundaries = spaces ^ (spaces << 1 | u64::from(w.space_before));
                    w.space_before = spaces >> 63 == 1;
                    self.pos += 64;
                }
            }
        }
        let mut start = self.pos;
        loop {
            if start == n {
                self.pos = n;
                return None;
            }
            match self.at(start) {
                (true, k) => start += k,
                (false, _) => break,
            }
        }
        let mut end = start;
        while end < n {
            match self.at(end) {
                (false, k) => end += k,
                (true, _) => break,
            }
        }
        self.pos = end;
        Some((start, end))
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let (start, end) = self.next_span()?;
        Some(&self.line[start..end])
    }
}

/// Training sentences as id sequences over a growing vocabulary.
///
/// Every line is a sentence, blank ones included (they train `p(</s> | <s>)`, as in lmplz).
/// Literal `<s>` and `</s>` in the text are dropped; `<unk>` is counted as a word unless
/// `skip_symbols` is set, which drops it too (lmplz `--skip_symbols`).
#[derive(Clone, Debug)]
pub struct Corpus {
    vocab: Vocab,
    ids: Vec<u32>,
    starts: Vec<usize>,
    skip_symbols: bool,
}

impl Corpus {
    pub fn new(skip_symbols: bool) -> Self {
        Corpus {
            vocab: Vocab::new(),
            ids: Vec::new(),
            starts: vec![0],
            skip_symbols,
        }
    }

    /// Adds one sentence (whitespace-separated words).
    pub fn add_sentence(&mut self, line: &str) {
        for t in tokens(line) {
            let id = self.vocab.insert(t);
            if id == BOS || id == EOS || (id == UNK && self.skip_symbols) {
                continue;
            }
            self.ids.push(id);
        }
        self.starts.push(self.ids.len());
    }

    /// Adds every line of `text` (UTF-8 bytes; a leading byte-order mark is skipped when
    /// `first_line` is 1). `source` and `first_line` only name the place of a bad line in errors.
    /// Returns the number of lines added.
    pub fn add_text(&mut self, text: &[u8], source: &Path, first_line: usize) -> Result<usize> {
        let text = match text.strip_prefix(b"\xEF\xBB\xBF") {
            Some(rest) if first_line == 1 => rest,
            _ => text,
        };
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        if text.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = std::str::from_utf8(line).map_err(|e| {
                Error::format(
                    source,
                    first_line + i,
                    format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
                )
            })?;
            self.add_sentence(line);
            n += 1;
        }
        Ok(n)
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Number of sentences.
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of word tokens (without `<s>`, `</s>`).
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// The sentences as id slices.
    pub fn sentences(&self) -> impl Iterator<Item = &[u32]> {
        self.starts.windows(2).map(|w| &self.ids[w[0]..w[1]])
    }

    pub(crate) fn parts(&self) -> (&[u32], &[usize]) {
        (&self.ids, &self.starts)
    }

    /// Maps words seen fewer than `min_count` times to `<unk>` and renumbers the rest (first
    /// appearance order kept).
    pub fn prune(&self, min_count: u64) -> Corpus {
        if min_count <= 1 {
            return self.clone();
        }
        let mut counts = vec![0u64; self.vocab.len()];
        for &id in &self.ids {
            counts[id as usize] += 1;
        }
        let mut vocab = Vocab::new();
        let map: Vec<u32> = self
            .vocab
            .words()
            .zip(&counts)
            .enumerate()
            .map(|(id, (w, &c))| {
                if id < 3 {
                    id as u32
                } else if c >= min_count {
                    vocab.insert(w)
                } else {
                    UNK
                }
            })
            .collect();
        Corpus {
            vocab,
            ids: self.ids.iter().map(|&id| map[id as usize]).collect(),
            starts: self.starts.clone(),
            skip_symbols: self.skip_symbols,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials_and_symbols() {
        let mut c = Corpus::new(true);
        c.add_sentence("a <unk> b <s> a");
        c.add_sentence("");
        assert_eq!(c.len(), 2);
        let s: Vec<_> = c.sentences().collect();
        assert_eq!(s[0], &[3, 4, 3]);
        assert!(s[1].is_empty());
        let mut c = Corpus::new(false);
        c.add_sentence("a <unk>");
        assert_eq!(c.sentences().next().unwrap(), &[3, UNK]);
    }

    #[test]
    fn spaced_lines_split_as_str_split_and_hash_in_place() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
        // Lengths around the 64-byte blocks; runs of spaces anywhere, words of 1..=20 bytes.
        for len in (0..200).chain([64, 127, 128, 129, 256]) {
            for _ in 0..20 {
                // Printable ASCII, some non-ASCII letters and dashes, rarely other spaces.
                let line: String = (0..len)
                    .map(|_| match rng.random_range(0..100) {
                        0..30 => ' ',
                        30..35 => ['é', '—', '中', '“'][rng.random_range(0..4)],
                        35 => ['\t', '\u{a0}', '\u{2009}'][rng.random_range(0..3)],
                        _ => char::from(rng.random_range(0x21u8..0x7f)),
                    })
                    .collect();
                let want: Vec<&str> = line.split(is_separator).filter(|t| !t.is_empty()).collect();
                assert_eq!(tokens(&line).collect::<Vec<_>>(), want, "{line:?}");
                for (start, end) in tokens(&line).spans() {
                    assert_eq!(
                        word_hash_at(&line, start, end),
                        word_hash(&line[start..end])
                    );
                }
            }
        }
        // Every separator other than ' ' is seen (all of char::is_whitespace, and NUL).
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let line = format!("a{c}b");
            let other = c != ' ' && (c.is_whitespace() || c < ' ');
            assert!(has_other_whitespace(line.as_bytes()) || !other, "{c:?}");
            let want: Vec<&str> = line.split(is_separator).filter(|t| !t.is_empty()).collect();
            assert_eq!(tokens(&line).collect::<Vec<_>>(), want);
        }
        let long = "a".repeat(64) + " " + &"b".repeat(64);
        assert_eq!(tokens(&long).count(), 2);
    }

    #[test]
    fn short_words_of_one_length_never_collide() {
        let mut seen = std::collections::HashSet::new();
        for a in 0u8..128 {
            for b in 0u8..128 {
                let word = [b'x', a, b, b'y'];
                assert!(seen.insert(word_hash(std::str::from_utf8(&word).unwrap())));
            }
        }
    }

    #[test]
    fn tokens_split_on_unicode_whitespace() {
        let line = "\u{a0}a  b\tc\u{3000}dé\0e\u{2028}\r\n ";
        let want: Vec<&str> = line.split(is_separator).filter(|t| !t.is_empty()).collect();
        assert_eq!(tokens(line).collect::<Vec<_>>(), want);
        assert_eq!(want, ["a", "b", "c", "dé", "e"]);
        assert_eq!(tokens("a\u{1c}b\u{1f}c").count(), 3); // as Python's str.split()
        assert_eq!(tokens("").count(), 0);
        assert_eq!(tokens(" \u{85} ").count(), 0);
    }

    #[test]
    fn text_errors_name_the_line() {
        let mut c = Corpus::new(false);
        let e = c
            .add_text(b"\xEF\xBB\xBFok\nbad \xff\n", Path::new("x.txt"), 1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.txt: line 2: invalid UTF-8 at byte 4 of the line"
        );
        assert_eq!(c.vocab().get("ok"), Some(3));
    }

    #[test]
    fn prune_maps_rare_words_to_unk() {
        let mut c = Corpus::new(false);
        c.add_sentence("a b a c a");
        let p = c.prune(2);
        assert_eq!(p.vocab().len(), 4);
        assert_eq!(p.sentences().next().unwrap(), &[3, 0, 3, 0, 3]);
    }
}
