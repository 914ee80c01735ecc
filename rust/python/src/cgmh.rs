//! Bindings of `kexue_core::cgmh`: a Python scorer object (or a native model) behind the
//! core's `Scorer` trait, soft terms behind `Prior`, results as dicts.

use std::sync::Arc;

use kexue_core::cgmh::ngram::Ngram;
use kexue_core::cgmh::priors::{BackoffPenalty, BowCosine, EditPenalty, PriorKind};
use std::collections::HashMap;

use kexue_core::cgmh::{self, Config, LengthPrior, Move, Prior, Scorer, Task};
use kexue_core::lm::Model;
use kexue_core::Error;
use numpy::{PyArray1, PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::arrays::{detached, detached_sized, int, ints, on_caller};
use crate::errors::{self, from_py};
use crate::lm::PyModel;

/// A Python object with `vocab_size`, `sentence_logprob(ids)`, `forward_logprobs(ids, pos)`,
/// `backward_logprobs(ids, pos)` (array or None) and optionally
/// `replace_logprobs(ids, pos, cands)`; calls take the GIL, so chains over it serialise.
struct PyScorer {
    obj: Py<PyAny>,
    vocab: usize,
    batched: bool,
}

impl PyScorer {
    fn new(obj: &Bound<'_, PyAny>) -> errors::Result<Self> {
        let vocab: usize = obj
            .getattr("vocab_size")
            .and_then(|v| v.extract())
            .map_err(|_| {
                errors::Error::type_(
                    "lm",
                    "must be a scorer with an int vocab_size (see kexue.scorers)",
                )
            })?;
        for m in ["sentence_logprob", "forward_logprobs", "backward_logprobs"] {
            if !obj.hasattr(m)? {
                return Err(errors::Error::type_(
                    "lm",
                    format!("must be a scorer with a {m} method (see kexue.scorers)"),
                ));
            }
        }
        Ok(PyScorer {
            obj: obj.clone().unbind(),
            vocab,
            batched: obj.hasattr("replace_logprobs")?,
        })
    }

    fn fill<'py, T: numpy::Element + Copy>(
        got: &Bound<'py, PyAny>,
        what: &str,
        out: &mut [T],
    ) -> kexue_core::Result<()> {
        let a: PyReadonlyArray1<'py, T> = got.extract().map_err(|_| {
            let dtype = T::get_dtype(got.py());
            Error::type_(
                "lm",
                format!("{what} must return a 1-d {dtype} numpy array"),
            )
        })?;
        let s = a
            .as_slice()
            .map_err(|_| Error::value("lm", format!("{what} must return a contiguous array")))?;
        if s.len() != out.len() {
            return Err(Error::value(
                "lm",
                format!("{what} returned {} values, expected {}", a.len(), out.len()),
            ));
        }
        out.copy_from_slice(s);
        Ok(())
    }
}

impl Scorer for PyScorer {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn sentence_logprob(&self, x: &[u32]) -> kexue_core::Result<f64> {
        Python::with_gil(|py| {
            self.obj
                .bind(py)
                .call_method1("sentence_logprob", (x.to_vec(),))
                .and_then(|v| v.extract::<f64>())
                .map_err(from_py)
        })
    }

    fn replace_logprobs(
        &self,
        x: &[u32],
        pos: usize,
        cands: &[u32],
        out: &mut [f64],
    ) -> kexue_core::Result<()> {
        if !self.batched {
            return cgmh::replace_by_sentences(self, x, pos, cands, out);
        }
        Python::with_gil(|py| {
            let cands = PyArray1::from_slice(py, cands);
            let got = self
                .obj
                .bind(py)
                .call_method1("replace_logprobs", (x.to_vec(), pos, cands))
                .map_err(from_py)?;
            Self::fill(&got, "replace_logprobs", out)
        })
    }

    fn forward_logprobs(&self, x: &[u32], pos: usize, out: &mut [f32]) -> kexue_core::Result<()> {
        Python::with_gil(|py| {
            let got = self
                .obj
                .bind(py)
                .call_method1("forward_logprobs", (x.to_vec(), pos))
                .map_err(from_py)?;
            Self::fill(&got, "forward_logprobs", out)
        })
    }

    fn backward_logprobs(
        &self,
        x: &[u32],
        pos: usize,
        out: &mut [f32],
    ) -> kexue_core::Result<bool> {
        Python::with_gil(|py| {
            let got = self
                .obj
                .bind(py)
                .call_method1("backward_logprobs", (x.to_vec(), pos))
                .map_err(from_py)?;
            if got.is_none() {
                return Ok(false);
            }
            Self::fill(&got, "backward_logprobs", out).map(|_| true)
        })
    }
}

/// A forward n-gram model and its optional backward twin (shared, not copied: the sampler
/// reads next-word lists from their tables); a scorer exposing one as `_cgmh_native` runs the
/// whole loop in Rust.
#[pyclass(module = "kexue._native", name = "CgmhNgram", frozen)]
struct PyNgram {
    inner: Arc<Ngram>,
    /// The models behind `inner`, whose mapped files every run checks first.
    models: Vec<Arc<Model>>,
}

#[pymethods]
impl PyNgram {
    #[new]
    #[pyo3(signature = (forward, backward = None))]
    fn new(py: Python<'_>, forward: &PyModel, backward: Option<&PyModel>) -> errors::Result<Self> {
        let f = forward.checked()?.clone();
        let b = backward.map(|b| b.checked().cloned()).transpose()?;
        let models = [Some(f.clone()), b.clone()].into_iter().flatten().collect();
        let inner = detached(py, || Ngram::new(f, b))?;
        Ok(PyNgram {
            inner: Arc::new(inner),
            models,
        })
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    #[getter]
    fn has_backward(&self) -> bool {
        self.inner.has_backward()
    }

    /// `count` sentences drawn from the forward model (seeded): (word ids, ln p) each.
    fn sample(
        &self,
        py: Python<'_>,
        count: &Bound<'_, PyAny>,
        seed: &Bound<'_, PyAny>,
        max_len: &Bound<'_, PyAny>,
    ) -> errors::Result<Vec<(Vec<u32>, f64)>> {
        let (count, seed, max_len) = (
            int(count, "count")?,
            int(seed, "seed")?,
            int(max_len, "max_len")?,
        );
        let inner = &self.inner;
        let check_files = || self.models.iter().try_for_each(|m| m.check_file());
        check_files()?;
        let samples = on_caller(py, || Ok(inner.sample(count, seed, max_len)))?;
        check_files()?;
        Ok(samples)
    }

    /// Per sentence of word ids, how many tokens (its end included) the back-off penalty of
    /// `order` charges: the one rule the chain's target uses, for `scorers.backoff_rate`.
    fn backed_off(
        &self,
        py: Python<'_>,
        sentences: &Bound<'_, PyAny>,
        order: &Bound<'_, PyAny>,
    ) -> errors::Result<Vec<usize>> {
        let sentences: Vec<Vec<u32>> = ints(sentences, "sentences")?;
        let order = int(order, "order")?;
        let penalty = BackoffPenalty::new(self.inner.forward_model().clone(), order, 0.0)?;
        self.models.iter().try_for_each(|m| m.check_file())?;
        on_caller(py, || {
            Ok(sentences.iter().map(|x| penalty.count(x)).collect())
        })
    }
}

enum AnyScorer {
    Native(Arc<Ngram>),
    Py(PyScorer),
}

/// A Python callable `f(ids) -> float` as a soft term.
struct PyPrior(Py<PyAny>);

impl Prior for PyPrior {
    fn log_score(&self, x: &[u32]) -> kexue_core::Result<f64> {
        Python::with_gil(|py| {
            self.0
                .bind(py)
                .call1((x.to_vec(),))
                .and_then(|v| v.extract::<f64>())
                .map_err(from_py)
        })
    }
}

enum AnyPrior {
    Cosine(BowCosine),
    Edit(EditPenalty),
    Py(PyPrior),
}

impl AnyPrior {
    fn extract(obj: &Bound<'_, PyAny>) -> errors::Result<Self> {
        if let Ok((kind, source, weight)) = obj.extract::<(String, Bound<'_, PyAny>, f64)>() {
            if !weight.is_finite() {
                return Err(errors::Error::value(
                    "priors",
                    format!("weights must be finite, got {weight}"),
                ));
            }
            let source: Vec<u32> = ints(&source, "priors source ids")?;
            return Ok(match kind.parse()? {
                PriorKind::Cosine => AnyPrior::Cosine(BowCosine::new(&source, weight)),
                PriorKind::Edit => AnyPrior::Edit(EditPenalty::new(&source, weight)),
            });
        }
        if obj.is_callable() {
            return Ok(AnyPrior::Py(PyPrior(obj.clone().unbind())));
        }
        Err(errors::Error::type_(
            "priors",
            "must be (kind, source ids, weight) tuples or callables ids -> float",
        ))
    }

    fn as_dyn(&self) -> &dyn Prior {
        match self {
            AnyPrior::Cosine(p) => p,
            AnyPrior::Edit(p) => p,
            AnyPrior::Py(p) => p,
        }
    }
}

/// Runs `n` chains per input; returns one dict per chain, input-major.
/// Sampler settings, read from the dict `kexue.cgmh` builds (one key per field).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Settings<'py> {
    chains: Bound<'py, PyAny>,
    steps: Bound<'py, PyAny>,
    top_k: Bound<'py, PyAny>,
    moves: HashMap<String, f64>,
    min_len: Bound<'py, PyAny>,
    max_len: Bound<'py, PyAny>,
    gamma: f64,
    length: Option<(Bound<'py, PyAny>, f64)>,
    /// (n-gram order, cost): the native LM's back-off penalty, a soft term of every input.
    backoff: Option<(Bound<'py, PyAny>, f64)>,
    anneal: Option<(f64, f64)>,
    index: String,
    explore: f64,
    blocked: Bound<'py, PyAny>,
    keep: Bound<'py, PyAny>,
    free_order: bool,
    /// Per input: tokens of each keyword (empty: one each); see `Task::units`.
    units: Bound<'py, PyAny>,
    seed: Bound<'py, PyAny>,
    best: bool,
    trace: bool,
}

impl Settings<'_> {
    fn config(&self) -> errors::Result<Config> {
        let mut moves = [0.0; Move::COUNT];
        for (name, &w) in &self.moves {
            moves[name.parse::<Move>()? as usize] = w;
        }
        let mut blocked: Vec<u32> = ints(&self.blocked, "settings['blocked']")?;
        blocked.sort_unstable();
        blocked.dedup();
        Ok(Config {
            steps: int(&self.steps, "settings['steps']")?,
            top_k: int(&self.top_k, "settings['top_k']")?,
            moves,
            min_len: int(&self.min_len, "settings['min_len']")?,
            max_len: int(&self.max_len, "settings['max_len']")?,
            gamma: self.gamma,
            length: match &self.length {
                Some((target, per_word)) => Some(LengthPrior {
                    target: int(target, "settings['length'][0]")?,
                    per_word: *per_word,
                }),
                None => None,
            },
            anneal: self.anneal,
            index: self.index.parse()?,
            explore: self.explore,
            blocked,
            keep: int(&self.keep, "settings['keep']")?,
            trace: self.trace,
        })
    }
}

/// Runs CGMH chains: `inputs[i]` the initial words (ids), `fixed[i]` the keyword flags,
/// `forms[i]` each keyword token's admissible ids, `priors[i]` its soft terms.
#[pyfunction]
fn cgmh_run<'py>(
    py: Python<'py>,
    lm: &Bound<'py, PyAny>,
    inputs: &Bound<'py, PyAny>,
    fixed: Vec<Vec<bool>>,
    forms: &Bound<'py, PyAny>,
    priors: Vec<Vec<Bound<'py, PyAny>>>,
    settings: &Bound<'py, PyAny>,
) -> errors::Result<Bound<'py, PyList>> {
    let settings: Settings<'py> = settings
        .downcast::<PyDict>()
        .map_err(|_| errors::Error::type_("settings", "must be a dict (see kexue.cgmh)"))?
        .extract()
        .map_err(|e| errors::Error::type_("settings", format!("is incomplete: {e}")))?;
    let inputs: Vec<Vec<u32>> = ints(inputs, "inputs")?;
    let forms: Vec<Vec<Vec<u32>>> = ints(forms, "forms")?;
    let units: Vec<Vec<usize>> = ints(&settings.units, "settings['units']")?;
    if fixed.len() != inputs.len()
        || priors.len() != inputs.len()
        || forms.len() != inputs.len()
        || units.len() != inputs.len()
    {
        return Err(errors::Error::value(
            "fixed",
            "forms, priors and settings['units'] must have one entry per input",
        ));
    }
    let config = settings.config()?;
    let native = lm
        .getattr("_cgmh_native")
        .ok()
        .and_then(|n| n.downcast_into::<PyNgram>().ok());
    // Mapped model files are checked before and after the run (see `PyModel::checked`).
    let models: Vec<Arc<Model>> = native.iter().flat_map(|n| n.get().models.clone()).collect();
    let check_files = || models.iter().try_for_each(|m| m.check_file());
    check_files()?;
    let native = native.map(|n| n.get().inner.clone());
    let scorer = match native {
        Some(ngram) => AnyScorer::Native(ngram),
        None => AnyScorer::Py(PyScorer::new(lm)?),
    };
    let priors: Vec<Vec<AnyPrior>> = priors
        .iter()
        .map(|ps| ps.iter().map(AnyPrior::extract).collect())
        .collect::<errors::Result<_>>()?;
    let backoff = match (&settings.backoff, &scorer) {
        (None, _) => None,
        (Some((order, cost)), AnyScorer::Native(ngram)) => {
            let order = int(order, "settings['backoff'][0]")?;
            Some(BackoffPenalty::new(
                ngram.forward_model().clone(),
                order,
                *cost,
            )?)
        }
        (Some(_), AnyScorer::Py(_)) => {
            return Err(errors::Error::value(
                "backoff",
                "needs a native n-gram LM (kexue.lm.NgramLM or NgramScorer)",
            ))
        }
    };
    let tasks: Vec<Task<'_>> = inputs
        .into_iter()
        .zip(fixed)
        .zip(forms)
        .zip(&priors)
        .zip(&units)
        .map(|((((tokens, fixed), forms), ps), units)| Task {
            tokens,
            fixed,
            forms,
            units: units.clone(),
            free_order: settings.free_order,
            priors: ps
                .iter()
                .map(AnyPrior::as_dyn)
                .chain(backoff.as_ref().map(|b| b as &dyn Prior))
                .collect(),
        })
        .collect();
    let n = int(&settings.chains, "settings['chains']")?;
    let seed = int(&settings.seed, "settings['seed']")?;
    let best = settings.best;
    let samples = detached(py, || match &scorer {
        AnyScorer::Native(ngram) => cgmh::run(&**ngram, &tasks, n, &config, seed, best),
        AnyScorer::Py(s) => cgmh::run(s, &tasks, n, &config, seed, best),
    })?;
    check_files()?;
    let out = PyList::empty(py);
    for s in samples {
        let d = PyDict::new(py);
        d.set_item("tokens", s.tokens)?;
        d.set_item("logprob", s.logprob)?;
        d.set_item("log_target", s.log_target)?;
        d.set_item("kept", s.kept)?;
        d.set_item("last", s.last)?;
        d.set_item("last_logprob", s.last_logprob)?;
        d.set_item("proposed", s.proposed.to_vec())?;
        d.set_item("accepted", s.accepted.to_vec())?;
        if settings.trace {
            d.set_item(
                "trace_log_target",
                PyArray1::from_vec(py, s.trace_log_target),
            )?;
            let acc: Vec<bool> = s.trace_accepted;
            d.set_item("trace_accepted", PyArray1::from_vec(py, acc))?;
        }
        out.append(d)?;
    }
    Ok(out)
}

/// Each sentence's mean BLEU against the other sentences of its pool, for every pool.
#[pyfunction]
fn cgmh_agreement(py: Python<'_>, pools: &Bound<'_, PyAny>) -> errors::Result<Vec<Vec<f64>>> {
    let pools: Vec<Vec<Vec<u32>>> = ints(pools, "pools")?;
    let work = pools.iter().map(|p| p.len() * p.len()).sum();
    detached_sized(py, work, || cgmh::consensus::agreements(&pools))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNgram>()?;
    m.add_function(wrap_pyfunction!(cgmh_run, m)?)?;
    m.add_function(wrap_pyfunction!(cgmh_agreement, m)?)?;
    Ok(())
}
