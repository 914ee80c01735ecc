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

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["HFCausalLM"]


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

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
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
        self.batch_size = batch_size
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
