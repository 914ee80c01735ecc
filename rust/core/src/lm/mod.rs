//! Native n-gram language model: modified Kneser–Ney, ARPA and binary formats, queries.
//!
//! - [`Corpus`] collects training sentences; [`build`] estimates an interpolated modified
//!   Kneser–Ney model exactly as KenLM's `lmplz` does (and its backward twin on reversed
//!   sentences when asked); [`from_counts`] estimates a bigram model from count tables.
//! - [`Model`] answers queries: [`Model::score_word`] from a [`State`] (incremental scoring,
//!   O(order) hash look-ups per word), [`Model::cond_logprob`] from a context slice,
//!   sentence scores ([`Model::score_ids`], [`Model::score_batch`], parallel), per-token
//!   scores and next-word distributions. Scores are log10 (ARPA's unit) except
//!   `cond_logprob`, which is a natural log.
//! - [`write_arpa`] / [`read_arpa`] (reads lmplz output), [`save`] / [`load`] (binary).
//!
//! Word ids: [`UNK`] = 0, [`BOS`] = 1, [`EOS`] = 2, then words; [`Vocab`] maps both ways.

mod arpa;
mod binary;
mod estimate;
mod model;
mod vocab;

use std::fs::File;
use std::path::Path;

pub use arpa::{read_arpa, write_arpa};
pub use binary::{from_bytes, load, save, to_bytes, MAGIC, VERSION};
pub use estimate::{build, from_counts, BuildOptions, FALLBACK_DISCOUNTS};
pub use model::{Model, ProbBackoff, State, TokenScore, LN_10, MAX_ORDER};
pub use vocab::{tokens, Corpus, Vocab, BOS, EOS, UNK};

use crate::{Error, Result};

/// Writes through a temporary file in the same directory, renamed over `path` once complete,
/// so a failed write never leaves a truncated file behind.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::value("path", format!("must name a file, got {path:?}")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = File::create(&tmp).and_then(|mut f| {
        write(&mut f)?;
        f.sync_all()
    });
    match result.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::io(path, e))
        }
    }
}

#[cfg(test)]
mod tests;
