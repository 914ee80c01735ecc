//! Bindings of `kexue_core::lm`: the corpus builder, the model and its files.

use std::path::PathBuf;
use std::sync::Arc;

use kexue_core::lm::{self, BuildOptions, Corpus, Model};
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::arrays::{detached, detached_sized, int};
use crate::errors::{Error, Result};

/// Training sentences being collected (see `kexue.lm.NgramLM.build`).
#[pyclass(module = "kexue._native", name = "NgramCorpus")]
pub struct PyCorpus {
    inner: Corpus,
}

#[pymethods]
impl PyCorpus {
    #[new]
    #[pyo3(signature = (skip_symbols = false))]
    fn new(skip_symbols: bool) -> Self {
        PyCorpus {
            inner: Corpus::new(skip_symbols),
        }
    }

    /// Adds the lines of UTF-8 `text`; `source` and `first_line` name bad lines in errors.
    fn add_text(
        &mut self,
        py: Python<'_>,
        text: &[u8],
        source: PathBuf,
        first_line: &Bound<'_, PyAny>,
    ) -> Result<usize> {
        let first_line = int(first_line, "first_line")?;
        let corpus = &mut self.inner;
        detached(py, || corpus.add_text(text, &source, first_line))
    }

    /// Adds one sentence per string.
    fn add_sentences(&mut self, sentences: Vec<String>) {
        for s in &sentences {
            self.inner.add_sentence(s);
        }
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Number of word tokens so far.
    fn tokens(&self) -> usize {
        self.inner.tokens()
    }

    /// Estimates the forward model and, when `backward`, the backward one.
    #[pyo3(signature = (order, backward = false, min_count = None, discount_fallback = false))]
    fn build(
        &self,
        py: Python<'_>,
        order: &Bound<'_, PyAny>,
        backward: bool,
        min_count: Option<&Bound<'_, PyAny>>,
        discount_fallback: bool,
    ) -> Result<(PyModel, Option<PyModel>)> {
        let opts = BuildOptions {
            order: int(order, "order")?,
            min_count: min_count.map_or(Ok(1), |c| int(c, "min_count"))?,
            discount_fallback,
        };
        let corpus = &self.inner;
        let (f, b) = detached(py, || lm::build(corpus, &opts, backward))?;
        Ok((PyModel::from(f), b.map(PyModel::from)))
    }
}

/// Per-token log10 scores, matched n-gram lengths and OOV flags.
type TokenArrays<'py> = (
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<bool>>,
);

/// A back-off n-gram model (what an ARPA file holds). Scores are log10.
///
/// Other bindings of this crate (CGMH) take a model argument as `&PyModel` and share the
/// Rust [`Model`] through [`PyModel::checked`] without copying it.
#[pyclass(module = "kexue._native", name = "NgramModel", frozen)]
pub struct PyModel {
    inner: Arc<Model>,
}

impl PyModel {
    /// The model, once its memory-mapped file (if any) is checked to be unchanged.
    ///
    /// The rule for a mapped file changed by another program: every call checks the file
    /// (size and modification time) before it reads the tables, and a query or generation
    /// checks it again after, so a result computed while the file was rewritten in place is
    /// refused (`OSError`), never returned. A file truncated during a call remains undefined
    /// (SIGBUS, as for any reader of a memory map, KenLM's included): replace model files by
    /// rename, as `save()` does, or load them with `mmap=False`.
    pub fn checked(&self) -> Result<&Arc<Model>> {
        self.inner.check_file()?;
        Ok(&self.inner)
    }
}

impl From<Model> for PyModel {
    fn from(m: Model) -> Self {
        PyModel { inner: Arc::new(m) }
    }
}

#[pymethods]
impl PyModel {
    #[getter]
    fn order(&self) -> usize {
        self.inner.order()
    }

    fn __len__(&self) -> usize {
        self.inner.vocab().len()
    }

    /// The vocabulary in id order (`<unk>`, `<s>`, `</s>` first).
    fn words(&self) -> Vec<String> {
        self.inner.vocab().words().map(str::to_owned).collect()
    }

    /// The id of `word`, or None.
    fn word_id(&self, word: &str) -> Option<u32> {
        self.inner.vocab().get(word)
    }

    /// Number of n-grams per order.
    fn counts(&self) -> Vec<usize> {
        self.inner.counts()
    }

    /// Bytes held by the model's tables.
    fn nbytes(&self) -> usize {
        self.inner.heap_bytes()
    }

    /// log10 probability of each sentence (parallel, GIL released); summed in float32 like
    /// `kenlm` when `f32_sum`.
    #[pyo3(signature = (sentences, bos = true, eos = true, f32_sum = false))]
    fn score_batch<'py>(
        &self,
        py: Python<'py>,
        sentences: Vec<Bound<'py, PyString>>,
        bos: bool,
        eos: bool,
        f32_sum: bool,
    ) -> Result<Bound<'py, PyArray1<f64>>> {
        let model = self.checked()?;
        // Borrowed, not copied: CPython keeps each str's UTF-8 form (the text itself for
        // ASCII), and the list keeps the strings alive while the GIL is released.
        let sentences = sentences
            .iter()
            .map(|s| s.to_str())
            .collect::<PyResult<Vec<&str>>>()?;
        let mut out = vec![0.0; sentences.len()];
        // Sentences are scored ~10 µs each on one thread.
        detached_sized(py, sentences.len() * 64, || {
            model.score_batch(&sentences, bos, eos, f32_sum, &mut out)
        })?;
        self.checked()?;
        Ok(PyArray1::from_vec(py, out))
    }

    /// Per-token (log10 p, matched n-gram length, is OOV), `</s>` last when `eos`.
    #[pyo3(signature = (sentence, bos = true, eos = true))]
    fn token_scores<'py>(
        &self,
        py: Python<'py>,
        sentence: &str,
        bos: bool,
        eos: bool,
    ) -> Result<TokenArrays<'py>> {
        let m = self.checked()?;
        let scores = m.token_scores(&m.ids(sentence), bos, eos);
        self.checked()?;
        Ok((
            PyArray1::from_iter(py, scores.iter().map(|s| f64::from(s.log10))),
            PyArray1::from_iter(py, scores.iter().map(|s| s.ngram_len as i64)),
            PyArray1::from_iter(py, scores.iter().map(|s| s.oov)),
        ))
    }

    /// log10 p(w | context) for each candidate word, or for every vocabulary id when
    /// `candidates` is None (`<s>`, never predicted, gets -inf). `context` is a list of words,
    /// after `<s>` when `bos`.
    #[pyo3(signature = (context, candidates = None, bos = true))]
    fn next_scores<'py>(
        &self,
        py: Python<'py>,
        context: Vec<String>,
        candidates: Option<Vec<String>>,
        bos: bool,
    ) -> Result<Bound<'py, PyArray1<f64>>> {
        let m = self.checked()?;
        let v = m.vocab();
        let ctx: Vec<u32> = bos
            .then_some(lm::BOS)
            .into_iter()
            .chain(context.iter().map(|w| v.id(w)))
            .collect();
        let ids: Vec<u32> = match &candidates {
            Some(c) => c.iter().map(|w| v.id(w)).collect(),
            None => (0..v.len() as u32).collect(),
        };
        let mut out = vec![0.0; ids.len()];
        detached_sized(py, ids.len(), || {
            let state = m.state_from_context(&ctx);
            m.next_scores(&state, &ids, &mut out)
        })?;
        self.checked()?;
        // `<s>` is never predicted, whether asked for by name or in the whole vocabulary.
        for (o, &id) in out.iter_mut().zip(&ids) {
            if id == lm::BOS {
                *o = f64::NEG_INFINITY;
            }
        }
        Ok(PyArray1::from_vec(py, out))
    }

    /// Writes the model as ARPA (temporary file, then rename).
    fn save_arpa(&self, py: Python<'_>, path: PathBuf) -> Result<()> {
        let m = self.checked()?;
        detached(py, || lm::write_arpa(m, &path))
    }
}

/// Reads an ARPA file (lmplz, SRILM or kexue output).
#[pyfunction]
fn lm_read_arpa(py: Python<'_>, path: PathBuf) -> Result<PyModel> {
    Ok(detached(py, || lm::read_arpa(&path))?.into())
}

fn same_vocab(forward: &PyModel, backward: Option<&PyModel>) -> Result<()> {
    match backward {
        Some(b) if b.inner.vocab() != forward.inner.vocab() => Err(Error::value(
            "backward",
            "must share the forward model's vocabulary",
        )),
        _ => Ok(()),
    }
}

/// Saves a forward model (and its backward twin) in the binary format.
#[pyfunction]
#[pyo3(signature = (path, forward, backward = None))]
fn lm_save(
    py: Python<'_>,
    path: PathBuf,
    forward: &PyModel,
    backward: Option<&PyModel>,
) -> Result<()> {
    same_vocab(forward, backward)?;
    let f = forward.checked()?;
    let b = backward.map(PyModel::checked).transpose()?.map(|b| &**b);
    detached(py, || lm::save(&path, f, b))
}

/// Loads a binary model file: (forward, backward or None); memory-mapped when `mmap`.
#[pyfunction]
#[pyo3(signature = (path, mmap = true))]
fn lm_load(py: Python<'_>, path: PathBuf, mmap: bool) -> Result<(PyModel, Option<PyModel>)> {
    let (f, b) = detached(py, || lm::load(&path, mmap))?;
    Ok((f.into(), b.map(PyModel::from)))
}

/// The binary image (what `lm_save` writes) as bytes.
#[pyfunction]
#[pyo3(signature = (forward, backward = None))]
fn lm_to_bytes<'py>(
    py: Python<'py>,
    forward: &PyModel,
    backward: Option<&PyModel>,
) -> Result<Bound<'py, PyBytes>> {
    same_vocab(forward, backward)?;
    let f = forward.checked()?;
    let b = backward.map(PyModel::checked).transpose()?.map(|b| &**b);
    let bytes = lm::to_bytes(f, b);
    Ok(PyBytes::new(py, &bytes))
}

/// Parses a binary image: (forward, backward or None).
#[pyfunction]
fn lm_from_bytes(py: Python<'_>, data: &[u8]) -> Result<(PyModel, Option<PyModel>)> {
    let (f, b) = detached(py, || lm::from_bytes(data, std::path::Path::new("<bytes>")))?;
    Ok((f.into(), b.map(PyModel::from)))
}

/// The `(words..., count)` rows of a count table; a count out of range is named by its
/// words (`bigram_counts[('of', 'the')]`).
fn count_rows(
    table: &Bound<'_, PyAny>,
    name: &str,
    words: usize,
) -> Result<Vec<(Vec<String>, u64)>> {
    let shape = if words == 1 {
        "(word, count)"
    } else {
        "(word1, word2, count)"
    };
    let bad = || Error::type_(name, format!("must be an iterable of {shape} tuples"));
    let mut out = Vec::new();
    for row in table.try_iter().map_err(|_| bad())? {
        let row = row?;
        let row = row.downcast::<PyTuple>().map_err(|_| bad())?;
        if row.len() != words + 1 {
            return Err(bad());
        }
        let key = match words {
            1 => row.get_item(0)?.repr()?,
            _ => row.get_slice(0, words).repr()?,
        };
        let count: u64 = int(&row.get_item(words)?, &format!("{name}[{key}]"))?;
        let words = (0..words)
            .map(|i| row.get_item(i)?.extract::<String>())
            .collect::<PyResult<Vec<_>>>()?;
        out.push((words, count));
    }
    Ok(out)
}

/// A bigram model from (word, count) and (word1, word2, count) tables.
#[pyfunction]
fn lm_from_counts(
    py: Python<'_>,
    unigram_counts: &Bound<'_, PyAny>,
    bigram_counts: &Bound<'_, PyAny>,
    eos_count: &Bound<'_, PyAny>,
) -> Result<PyModel> {
    let unigrams: Vec<(String, u64)> = count_rows(unigram_counts, "unigram_counts", 1)?
        .into_iter()
        .map(|(mut w, c)| (w.swap_remove(0), c))
        .collect();
    let bigrams: Vec<(String, String, u64)> = count_rows(bigram_counts, "bigram_counts", 2)?
        .into_iter()
        .map(|(w, c)| (w[0].clone(), w[1].clone(), c))
        .collect();
    let eos_count = int(eos_count, "eos_count")?;
    Ok(detached(py, || lm::from_counts(&unigrams, &bigrams, eos_count))?.into())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LM_MAX_ORDER", lm::MAX_ORDER)?;
    m.add_class::<PyCorpus>()?;
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(lm_read_arpa, m)?)?;
    m.add_function(wrap_pyfunction!(lm_save, m)?)?;
    m.add_function(wrap_pyfunction!(lm_load, m)?)?;
    m.add_function(wrap_pyfunction!(lm_to_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(lm_from_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(lm_from_counts, m)?)?;
    Ok(())
}
