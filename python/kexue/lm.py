"""Native n-gram language model: interpolated modified Kneser–Ney, as KenLM's ``lmplz``.

:class:`NgramLM` builds a model (and its backward twin) from text, reads and writes ARPA files
(KenLM-compatible both ways) and a fast binary format, and scores sentences in parallel in
Rust with the GIL released.

>>> import numpy as np
>>> from kexue.lm import NgramLM
>>> lines = ["the cat sat on the mat", "the dog sat on the log", "a cat saw a dog"] * 3
>>> lm = NgramLM.build(lines, order=3, progress=False, discount_fallback=True)
>>> lm.order, len(lm)
(3, 12)
>>> bool(lm.logprob("the cat sat") > lm.logprob("sat the cat"))
True
>>> s = "the cat sat on the mat"
>>> # score is log10 summed in float32, like kenlm; logprob is ln summed in float64
>>> bool(abs(lm.score(s) - lm.logprob(s) / np.log(10)) < 1e-5)
True
>>> p = np.exp(lm.next_logprobs("the cat"))  # over lm.vocab
>>> round(float(p.sum()), 6), lm.vocab[int(p.argmax())]
(1.0, 'sat')

Conventions (those of ``kenlm`` and ``lmplz``):

- Every line is a sentence, scored as ``<s> words </s>``; blank lines included. Words are
  split on whitespace (a ``tokenizer`` callable can be given instead).
- ``<unk>`` in the training text is counted as an ordinary word by default (SRILM's and the
  usual PTB convention). ``skip_symbols=True`` drops it, as ``lmplz --skip_symbols``; the model
  then equals lmplz's (ARPA entries within 1e-6). Words outside the vocabulary score as
  ``<unk>``. Literal ``<s>``/``</s>`` in the text are dropped.
- :meth:`NgramLM.logprob`, :meth:`NgramLM.token_logprobs` and :meth:`NgramLM.next_logprobs`
  return natural logs; :meth:`NgramLM.score` returns log10 exactly like
  ``kenlm.Model.score``; ARPA files hold log10.
- ``lm.reverse`` is the same estimator on reversed sentences. Both assign a probability to
  every sentence, but not the same one: Kneser–Ney discounts and continuation counts depend
  on the direction, so forward and backward totals differ by a few percent in log space
  (they would agree exactly only for maximum-likelihood estimates).
"""

from __future__ import annotations

import copyreg
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np

from . import _native, text
from ._dispatch import check_int
from .text import Tokenizer, split_words, tokenize

__all__ = ["NgramLM", "split_words"]

LN10 = float(np.log(10.0))
MAX_ORDER: int = _native.LM_MAX_ORDER

Sentence = str | Sequence[str]

_BATCH_LINES = 20_000


def _is_path(obj: object) -> TypeGuard[str | os.PathLike[Any]]:
    return isinstance(obj, (str, os.PathLike)) and not isinstance(obj, bytes)


class NgramLM:
    """A back-off n-gram language model with an optional backward twin (``.reverse``).

    Build one with :meth:`build` or :meth:`from_counts`, or read one with :meth:`load`
    (binary) or :meth:`load_arpa` (e.g. from ``lmplz``). Sentences are strings (split on
    whitespace, or by the model's ``tokenizer``) or lists of tokens.

    >>> import os, tempfile
    >>> from kexue.lm import NgramLM
    >>> lm = NgramLM.build(["a b c", "a c b"] * 4, order=2, progress=False,
    ...                    discount_fallback=True)
    >>> path = os.path.join(tempfile.mkdtemp(), "ab.kxlm")
    >>> lm.save(path)
    >>> again = NgramLM.load(path)
    >>> again.order, bool(again.logprob("a b c") == lm.logprob("a b c"))
    (2, True)
    >>> again.reverse is not None  # the backward model travels in the same file
    True
    """

    def __init__(
        self,
        model: _native.NgramModel,
        reverse: _native.NgramModel | None = None,
        *,
        lowercase: bool = False,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        if not isinstance(model, _native.NgramModel):
            raise TypeError(f"model must be a kexue._native.NgramModel, got {type(model).__name__}")
        self._model = model
        self._reverse_native = reverse
        self.lowercase = bool(lowercase)
        self.tokenizer = tokenizer
        self._vocab: tuple[str, ...] | None = None
        self._reverse: NgramLM | None = None
        # (path, sha256, mmap, file stamp) from load()
        self._source: tuple[str, str, bool, tuple[int, ...]] | None = None

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        corpus: str | os.PathLike[str] | Iterable[Sentence],
        order: int = 5,
        *,
        backward: bool = True,
        lowercase: bool = False,
        min_count: int = 1,
        progress: bool = True,
        tokenizer: Tokenizer | None = None,
        skip_symbols: bool = False,
        discount_fallback: bool = False,
    ) -> NgramLM:
        """Estimates an interpolated modified Kneser–Ney model of ``order`` (1 to 7).

        ``corpus`` is a path to a UTF-8 text file (one sentence per line), or any iterable of
        lines (strings) or of token lists. ``backward=True`` also builds ``.reverse``.
        ``min_count`` maps rarer words to ``<unk>``. ``skip_symbols`` drops ``<unk>`` from the
        text (``lmplz --skip_symbols``). Degenerate count-of-counts (tiny or artificial text)
        raise ``ValueError`` unless ``discount_fallback=True`` (discounts 0.5, 1, 1.5, as
        ``lmplz --discount_fallback``).
        """
        order = check_int(order, "order", low=1, high=MAX_ORDER)
        min_count = check_int(min_count, "min_count", low=1)
        text.check_tokenizer(tokenizer)

        def prep(sentence: Sentence) -> str:
            return _prep(sentence, lowercase, tokenizer)

        native = _native.NgramCorpus(skip_symbols=bool(skip_symbols))
        if _is_path(corpus):
            transform = bool(lowercase) or tokenizer is not None
            _read_file(native, os.fspath(corpus), prep if transform else None, progress)
        elif isinstance(corpus, (bytes, bytearray)) or not isinstance(corpus, Iterable):
            raise TypeError(
                "corpus must be a path or an iterable of lines or token lists, "
                f"got {type(corpus).__name__}"
            )
        else:
            _read_lines(native, corpus, prep, progress)
        model, reverse = native.build(
            order, backward=bool(backward), min_count=min_count, discount_fallback=discount_fallback
        )
        return cls(model, reverse, lowercase=lowercase, tokenizer=tokenizer)

    @classmethod
    def from_counts(
        cls,
        unigram_counts: Mapping[str, int] | Iterable[tuple[str, int]] | str | os.PathLike[str],
        bigram_counts: Mapping[tuple[str, str], int]
        | Iterable[tuple[str, str, int]]
        | str
        | os.PathLike[str],
        *,
        eos_count: int | None = None,
        lowercase: bool = False,
    ) -> NgramLM:
        """A bigram model from word and word-pair count tables (no ``.reverse``).

        Tables are mappings (``{"the": 5, ...}``, ``{("of", "the"): 3, ...}``), iterables of
        tuples, or paths of files with one ``word count`` / ``word1 word2 count`` per line
        (the format of the frequency dictionaries shipped by the ``symspellpy`` package).
        Unigram probabilities come from the raw counts, bigram probabilities from the pair
        counts, both with modified Kneser–Ney discounts (0.5, 1, 1.5 when the count-of-counts
        are degenerate, as in lists truncated at a minimum count); a context's denominator is
        its unigram count, so the mass of pairs missing from a truncated list goes to the
        back-off. ``</s>`` gets ``eos_count`` (default: total count / 20, i.e. a mean sentence
        length of 20 words); ``p(w | <s>) = p(w)``.

        >>> lm = NgramLM.from_counts({"the": 50, "cat": 10, "sat": 8}, {("the", "cat"): 9})
        >>> bool(lm.logprob("the cat") > lm.logprob("cat the"))
        True

        With ``symspellpy`` installed, its English tables give a general-purpose default::

            import importlib.resources as res
            d = res.files("symspellpy")
            lm = NgramLM.from_counts(d / "frequency_dictionary_en_82_765.txt",
                                     d / "frequency_bigramdictionary_en_243_342.txt")
        """
        unigrams = [(_norm(w, lowercase), c) for w, c in _table(unigram_counts, 1)]
        bigrams = [
            (_norm(a, lowercase), _norm(b, lowercase), c) for a, b, c in _table(bigram_counts, 2)
        ]
        if eos_count is None:
            eos_count = max(1, sum(c for _, c in unigrams) // 20)
        eos_count = check_int(eos_count, "eos_count", low=0)
        model = _native.lm_from_counts(unigrams, bigrams, eos_count)
        return cls(model, None, lowercase=lowercase)

    # --- files ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the binary format (forward and backward models), via temp file + rename."""
        _native.lm_save(os.fspath(path), self._model, self._reverse_native)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        lowercase: bool = False,
        tokenizer: Tokenizer | None = None,
        mmap: bool = True,
    ) -> NgramLM:
        """Reads a file written by :meth:`save` (``lowercase``/``tokenizer`` are not stored:
        pass them again).

        With ``mmap`` (the default) the file is memory-mapped and its tables are used in
        place: every process that loads the same file (Dask / Ray workers on one machine)
        shares one copy in the page cache. :meth:`save` replaces a file by a rename, which
        leaves models mapped from the old file intact. A file rewritten or truncated in place
        by another program (``cp new.kxlm loaded.kxlm``) would crash a plain mmap reader
        (SIGBUS, as with KenLM); here every call first checks the file's size and
        modification time and raises ``OSError`` ("rewritten or truncated since it was
        loaded") instead: load it again. (A rewrite during a call can still fault; replace
        model files, do not rewrite them.) ``mmap=False`` reads the file into private memory
        instead. Only regular files are read: a FIFO, device or directory is an ``OSError``."""
        path = os.path.abspath(os.fspath(path))
        stamp = _regular_file(path)
        digest = _sha256(path)
        model, reverse = _native.lm_load(path, mmap)
        lm = cls(model, reverse, lowercase=lowercase, tokenizer=tokenizer)
        if _regular_file(path) == stamp:  # else it changed while loading: pickle by content
            lm._source = (path, digest, mmap, stamp)  # pickled by reference: see __getstate__
        return lm

    def save_arpa(self, path: str | os.PathLike[str]) -> None:
        """Writes the forward model as ARPA (``lm.reverse.save_arpa`` for the backward one);
        exact: :meth:`load_arpa` gives back the same scores."""
        self._model.save_arpa(os.fspath(path))

    @classmethod
    def load_arpa(
        cls,
        path: str | os.PathLike[str],
        *,
        lowercase: bool = False,
        tokenizer: Tokenizer | None = None,
    ) -> NgramLM:
        """Reads an ARPA file (from ``lmplz``, SRILM or :meth:`save_arpa`); no ``.reverse``."""
        return cls(
            _native.lm_read_arpa(os.fspath(path)), None, lowercase=lowercase, tokenizer=tokenizer
        )

    def __getstate__(self) -> dict[str, Any]:
        """A model read by :meth:`load` pickles as its file's path and the SHA-256 it had when
        loaded (a few hundred bytes, so broadcasting it to workers is cheap; unpickling
        re-reads the file and raises ``ValueError`` if its content changed); any other model,
        or a loaded one whose file has since been replaced or deleted, as its binary image."""
        state: dict[str, Any] = {"lowercase": self.lowercase, "tokenizer": self.tokenizer}
        if self._source is not None and _stamp(self._source[0]) == self._source[3]:
            state["path"], state["sha256"], state["mmap"], _ = self._source
        else:
            state["model"] = bytes(_native.lm_to_bytes(self._model, self._reverse_native))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "path" in state:
            path, digest, mmap = state["path"], state["sha256"], state["mmap"]
            stamp = _regular_file(path)
            if _sha256(path) != digest:
                raise ValueError(
                    f"{path}: the LM file changed since this model was loaded and pickled "
                    "(its SHA-256 differs); pickle the model again"
                )
            model, reverse = _native.lm_load(path, mmap)
        else:
            model, reverse = _native.lm_from_bytes(state["model"])
        NgramLM.__init__(
            self, model, reverse, lowercase=state["lowercase"], tokenizer=state["tokenizer"]
        )
        if "path" in state:
            self._source = (path, digest, mmap, stamp)

    # --- properties -----------------------------------------------------------------------

    @property
    def order(self) -> int:
        return self._model.order

    @property
    def vocab(self) -> tuple[str, ...]:
        """Words in id order: ``<unk>``, ``<s>``, ``</s>``, then the rest."""
        if self._vocab is None:
            self._vocab = tuple(self._model.words())
        return self._vocab

    @property
    def reverse(self) -> NgramLM | None:
        """The backward model (built on reversed sentences), or None."""
        if self._reverse is None and self._reverse_native is not None:
            self._reverse = NgramLM(
                self._reverse_native, None, lowercase=self.lowercase, tokenizer=self.tokenizer
            )
            self._reverse._vocab = self._vocab
        return self._reverse

    @property
    def native(self) -> _native.NgramModel:
        """The Rust model, for other kexue kernels (e.g. CGMH) that take it as an argument."""
        return self._model

    @property
    def counts(self) -> list[int]:
        """Number of n-grams of each order."""
        return self._model.counts()

    def __len__(self) -> int:
        return len(self._model)

    def __repr__(self) -> str:
        back = ", with reverse" if self._reverse_native is not None else ""
        return f"NgramLM(order={self.order}, vocab={len(self)}, ngrams={self.counts}{back})"

    # --- queries --------------------------------------------------------------------------

    def _prep(self, sentence: Sentence) -> str:
        return _prep(sentence, self.lowercase, self.tokenizer)

    def _batch(self, sentences: Sentence | Iterable[Sentence]) -> tuple[list[str], bool]:
        if isinstance(sentences, str):
            return [self._prep(sentences)], True
        if isinstance(sentences, (bytes, bytearray)) or not isinstance(sentences, Iterable):
            raise TypeError(
                "sentences must be a str or an iterable of sentences, "
                f"got {type(sentences).__name__}"
            )
        if (
            isinstance(sentences, list)
            and self.tokenizer is None
            and not self.lowercase
            and all(type(s) is str for s in sentences)
        ):
            return sentences, False  # already what the native side takes
        return [self._prep(s) for s in sentences], False

    def logprob(
        self, sentences: Sentence | Iterable[Sentence], *, bos: bool = True, eos: bool = True
    ) -> np.ndarray | float:
        """Natural-log probability of each sentence (float64 array; a float for one str),
        computed in parallel with the GIL released."""
        batch, single = self._batch(sentences)
        out = self._model.score_batch(batch, bos=bool(bos), eos=bool(eos)) * LN10
        return float(out[0]) if single else out

    def score(self, sentence: Sentence, bos: bool = True, eos: bool = True) -> float:
        """log10 probability, exactly as ``kenlm.Model.score`` (summed in float32 as it does;
        :meth:`logprob` sums in float64)."""
        batch = [self._prep(sentence)]
        return float(self._model.score_batch(batch, bos=bool(bos), eos=bool(eos), f32_sum=True)[0])

    def token_logprobs(
        self, sentence: Sentence, *, bos: bool = True, eos: bool = True
    ) -> np.ndarray:
        """Natural-log probability of each word (and of ``</s>`` when ``eos``)."""
        log10, _, _ = self._model.token_scores(self._prep(sentence), bos=bool(bos), eos=bool(eos))
        return log10 * LN10

    def full_scores(
        self, sentence: Sentence, bos: bool = True, eos: bool = True
    ) -> list[tuple[float, int, bool]]:
        """``(log10 p, n-gram length, is_oov)`` per token, as ``kenlm.Model.full_scores``."""
        s, n, oov = self._model.token_scores(self._prep(sentence), bos=bool(bos), eos=bool(eos))
        return list(zip(s.tolist(), n.tolist(), oov.tolist()))

    def perplexity(self, sentences: Sentence | Iterable[Sentence]) -> float:
        """exp(−total log p / tokens), tokens counting each ``</s>`` (``kenlm``'s convention;
        OOV words included)."""
        batch, _ = self._batch(sentences)
        if not batch:
            raise ValueError("sentences must not be empty")
        total = float(self._model.score_batch(batch).sum()) * LN10
        tokens = sum(len(split_words(s)) + 1 for s in batch)
        return float(np.exp(-total / tokens))

    def next_logprobs(
        self, context: Sentence, candidates: Sequence[str] | None = None, *, bos: bool = True
    ) -> np.ndarray:
        """Natural-log p(w | context): over the vocabulary (indexed like :attr:`vocab`;
        ``<s>``, never predicted, gets −inf, and the rest sums to 1) or over ``candidates``.
        ``context`` starts after ``<s>`` when ``bos``. A candidate outside the vocabulary
        scores as ``<unk>`` (as in ``kenlm``); when ``<unk>`` was counted as a word it can be
        likely, so filter candidates by :attr:`vocab` where that matters."""
        ctx = split_words(self._prep(context))
        if candidates is not None:
            if isinstance(candidates, str):
                raise TypeError("candidates must be a sequence of words, not a str")
            candidates = [self._prep(c) for c in candidates]
        return self._model.next_scores(ctx, candidates, bos=bool(bos)) * LN10


def _model_from_bytes(data: bytes) -> _native.NgramModel:
    return _native.lm_from_bytes(data)[0]


def _reduce_model(model: _native.NgramModel) -> tuple:
    return _model_from_bytes, (bytes(_native.lm_to_bytes(model)),)


copyreg.pickle(_native.NgramModel, _reduce_model)  # NgramLM.native pickles by content


def _stamp(path: str) -> tuple[int, ...] | None:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime."""
    try:
        return _key(os.stat(path))
    except OSError:
        return None


def _key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _regular_file(path: str) -> tuple[int, ...]:
    """The stamp of ``path``; ``OSError`` unless it is a regular file (opening a FIFO would
    block, and a device or directory is never a model)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else (
            "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or other special file"
        )  # fmt: skip
        raise OSError(errno.EINVAL, f"{path}: is {kind}, not a regular file")
    return _key(st)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_file(
    native: _native.NgramCorpus, path: str, prep: Callable[[str], str] | None, progress: bool
) -> None:
    bar = _progress(progress, total=os.path.getsize(path), unit="B", desc="reading")
    first = 1
    with open(path, "rb") as f:
        while True:
            batch = f.readlines(1 << 22)
            if not batch:
                break
            if prep is not None:
                lines = []
                for i, raw in enumerate(batch):
                    try:
                        text = raw.decode("utf-8-sig" if first + i == 1 else "utf-8")
                    except UnicodeDecodeError as e:
                        raise ValueError(
                            f"{path}: line {first + i}: invalid UTF-8 at byte {e.start} of the line"
                        ) from None
                    lines.append(prep(text))
                native.add_sentences(lines)
            else:
                native.add_text(b"".join(batch), path, first)
            first += len(batch)
            if bar is not None:
                bar.update(sum(map(len, batch)))
    if bar is not None:
        bar.close()


def _read_lines(
    native: _native.NgramCorpus, lines: Iterable[Sentence], prep: Callable, progress: bool
) -> None:
    bar = _progress(progress, unit=" lines", desc="reading")
    batch: list[str] = []
    for line in lines:
        batch.append(prep(line))
        if len(batch) == _BATCH_LINES:
            native.add_sentences(batch)
            if bar is not None:
                bar.update(len(batch))
            batch = []
    native.add_sentences(batch)
    if bar is not None:
        bar.update(len(batch))
        bar.close()


def _prep(sentence: Sentence, lowercase: bool, tokenizer: Tokenizer | None) -> str:
    if isinstance(sentence, str):
        text = sentence
        if tokenizer is not None:
            text = " ".join(tokenize(text, tokenizer))
    elif isinstance(sentence, Sequence) and all(isinstance(t, str) for t in sentence):
        text = " ".join(sentence)
    else:
        raise TypeError(
            f"a sentence must be a str or a sequence of str, got {type(sentence).__name__}"
        )
    return text.lower() if lowercase else text


def _progress(enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit_scale=True, **kwargs)


def _norm(word: object, lowercase: bool) -> str:
    if not isinstance(word, str):
        raise TypeError(f"words must be str, got {type(word).__name__}")
    # A word is what split_words gives: not empty, no separator (the files and every query
    # split there, so such a word could be neither saved nor scored).
    if split_words(word) != [word]:
        raise ValueError(f"words must be non-empty and hold no whitespace or NUL, got {word!r}")
    return word.lower() if lowercase else word


def _table(table: object, n: int) -> Iterable[tuple]:
    """Rows ``(*words, count)`` of a count table given as a mapping, iterable or file."""
    if _is_path(table):
        path = os.fspath(table)
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != n + 1 or not fields[-1].isdigit():
                    raise ValueError(
                        f"{path}: line {i}: expected {n} word(s) and a count, got {line.strip()!r}"
                    )
                yield (*fields[:n], int(fields[-1]))
        return
    if isinstance(table, Mapping):
        for key, count in table.items():
            words = (key,) if n == 1 else tuple(key)
            if len(words) != n:
                raise ValueError(f"bigram keys must be (word1, word2) pairs, got {key!r}")
            yield (*words, check_int(count, "count", low=0))
        return
    if isinstance(table, Iterable) and not isinstance(table, (str, bytes)):
        for row in table:
            row = tuple(row)
            if len(row) != n + 1:
                raise ValueError(f"rows must be {n} word(s) and a count, got {row!r}")
            yield (*row[:n], check_int(row[n], "count", low=0))
        return
    raise TypeError(
        f"a count table must be a mapping, an iterable or a path, got {type(table).__name__}"
    )
