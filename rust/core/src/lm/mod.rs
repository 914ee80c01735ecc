//! Native n-gram language model: modified Kneser–Ney, ARPA and binary formats, queries.
//!
//! - [`Corpus`] collects training sentences; [`build`] estimates an interpolated modified
//!   Kneser–Ney model exactly as KenLM's `lmplz` does (and its backward twin on reversed
//!   sentences when asked); [`from_counts`] estimates a bigram model from count tables.
//! - [`Model`] answers queries. For generation loops (CGMH): [`Vocab::get`] / [`Vocab::word`]
//!   map words ↔ ids, [`Model::order`], [`Model::cond_logprob`] gives ln p(word | context
//!   slice), [`Model::begin_state`] + [`Model::score_word`] / [`Model::logprob_word`] score
//!   incrementally (O(order) hash look-ups per word; a [`State`] is a small `Copy` value, so a
//!   changed word only rescoring the positions after it is cheap), [`Model::next_scores`]
//!   scores many candidate words after one state, [`Model::score_ids_batch`] many id
//!   sentences in parallel. [`build`] and [`load`] return the forward model and, when asked,
//!   the backward one (trained on reversed sentences, same vocabulary and ids). Scores are
//!   log10 (ARPA's unit, and `kenlm`'s) except the `logprob`/`cond_logprob` ones (natural log).
//! - [`write_arpa`] / [`read_arpa`] (reads lmplz output), [`save`] / [`load`] (binary).
//!
//! Word ids: [`UNK`] = 0, [`BOS`] = 1, [`EOS`] = 2, then words; [`Vocab`] maps both ways.

mod arpa;
mod binary;
mod estimate;
mod files;
mod model;
mod sort;
mod storage;
mod vocab;

pub use arpa::{read_arpa, write_arpa};
pub use binary::{from_bytes, load, save, to_bytes, MAGIC, VERSION};
pub use estimate::{build, from_counts, BuildOptions, FALLBACK_DISCOUNTS};
pub use model::{Model, ProbBackoff, State, TokenScore, LN_10, MAX_ORDER};
pub use vocab::{is_separator, tokens, Corpus, Vocab, BOS, EOS, UNK};

#[cfg(test)]
mod tests;
