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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _native
from ._dispatch import check_int

__all__ = ["HFCausalLM", "NgramScorer", "default_lm"]

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
        self._forward, self._backward = forward, back
        self._words = list(forward.words())
        self._index = {w: i for i, w in enumerate(self._words)}
        self.vocab_size = len(self._words)
        self.lowercase = bool(getattr(lm, "lowercase", False))

    def __reduce__(self) -> tuple:  # the native sampler object is rebuilt from the models
        return _ngram_scorer, (self._forward, self._backward, self.lowercase)

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

    def backward_logprobs(self, ids: Sequence[int], pos: int) -> np.ndarray | None:
        if self._backward is None:
            return None
        return self._next(self._backward, self._text(ids[pos + 1 :])[::-1])


def _ngram_scorer(forward: Any, backward: Any, lowercase: bool) -> NgramScorer:
    scorer = NgramScorer(forward, backward)
    scorer.lowercase = lowercase
    return scorer


def _models(lm: Any) -> tuple[Any, Any]:
    from .lm import NgramLM

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


_DEFAULT: NgramScorer | None = None


def default_lm() -> NgramScorer:
    """The built-in English LM: bigram forward and backward models estimated from the word and
    word-pair frequency tables shipped with ``symspellpy`` (MIT; 82,765 words, 243,342 pairs),
    built once and cached in the user's cache directory (``$KEXUE_CACHE``,
    ``$XDG_CACHE_HOME/kexue`` or ``~/.cache/kexue``)."""
    global _DEFAULT
    if _DEFAULT is not None:
        return _DEFAULT
    import importlib.metadata
    import importlib.resources

    version = importlib.metadata.version("symspellpy")
    path = _cache_dir() / f"symspell-en-{version}.kxlm"
    try:
        forward, backward = _native.lm_load(str(path))
    except (OSError, ValueError):  # not built yet, or written by another kexue version
        files = importlib.resources.files("symspellpy")

        def table(name: str, n: int) -> list[tuple]:
            rows = []
            for line in (files / name).read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == n + 1:
                    rows.append((*parts[:n], int(parts[n])))
            return rows

        uni = table("frequency_dictionary_en_82_765.txt", 1)
        bi = table("frequency_bigramdictionary_en_243_342.txt", 2)
        eos = max(1, sum(c for _, c in uni) // 20)  # a mean sentence length of 20 words
        forward = _native.lm_from_counts(uni, bi, eos)
        # The backward model reads sentences reversed: the same pairs, swapped.
        backward = _native.lm_from_counts(uni, [(b, a, c) for a, b, c in bi], eos)
        path.parent.mkdir(parents=True, exist_ok=True)
        _native.lm_save(str(path), forward, backward)  # written to a temp file, then renamed
    _DEFAULT = NgramScorer(forward, backward)
    return _DEFAULT


class HFCausalLM:
    """Sentence scores from a Hugging Face causal LM; vocabulary and candidate words from
    ``candidates`` (another scorer, typically the n-gram one).

    ``model``: a ``transformers`` causal LM; ``tokenizer``: its tokenizer; ``device``: where
    to run (default: the model's). Candidate sentences of one edit are scored as one padded
    batch of at most ``batch_size``.

    >>> from kexue.scorers import HFCausalLM
    >>> lm = HFCausalLM(model, tokenizer, candidates=ngram)  # doctest: +SKIP
    >>> kexue.cgmh.generate(["cat", "mat"], lm)              # doctest: +SKIP
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
    ) -> None:
        import torch

        from .cgmh import detokenize as _detok

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
        self.vocab_size = int(candidates.vocab_size)
        self._detok = detokenize or _detok
        bos = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        )
        eos = tokenizer.eos_token_id
        if bos is None or eos is None:
            raise ValueError("tokenizer must define bos_token_id or eos_token_id")
        self._bos, self._eos = int(bos), int(eos)
        self._extra: dict[int, str] = {}

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
        return self._detok([self._word(i) for i in ids])

    def _word(self, i: int) -> str:
        return self.candidates.word(i) if i < self.vocab_size else self._extra.get(i, "<unk>")

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Natural-log probability of each text (with start and end of sentence), batched."""
        torch = self._torch
        out = np.empty(len(texts), dtype=np.float64)
        for lo in range(0, len(texts), self.batch_size):
            chunk = texts[lo : lo + self.batch_size]
            seqs = [[self._bos, *self.tokenizer.encode(t), self._eos] for t in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self._eos, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tok = logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
            out[lo : lo + len(chunk)] = tok.sum(-1).double().cpu().numpy()
        return out

    def sentence_logprob(self, ids: Sequence[int]) -> float:
        return float(self.score_texts([self._text(ids)])[0])

    def replace_logprobs(self, ids: Sequence[int], pos: int, cands: np.ndarray) -> np.ndarray:
        y = list(ids)
        texts = []
        for c in cands:
            y[pos] = int(c)
            texts.append(self._text(y))
        return self.score_texts(texts)
