"""A tiny random bigram scorer for the CGMH tests (enumerable; not a product LM)."""

from __future__ import annotations

import itertools

import numpy as np


class ToyBigram:
    """p(w | prev) over ``words`` with start (row v) and end of sentence (column v)."""

    def __init__(self, words: list[str], seed: int = 0, backward: bool = True) -> None:
        rng = np.random.default_rng(seed)
        self.words = list(words)
        self.vocab_size = v = len(words)
        self.fwd = np.log(rng.dirichlet(np.ones(v + 1), size=v + 1))
        self.bwd = np.log(rng.dirichlet(np.ones(v + 1), size=v + 1)) if backward else None
        self.calls = 0

    def word_id(self, word: str) -> int | None:
        return self.words.index(word) if word in self.words else None

    def word(self, i: int) -> str:
        return self.words[i]

    def _id(self, i: int) -> int:
        return min(int(i), self.vocab_size - 1)  # unknown ids score as the last word

    def sentence_logprob(self, ids) -> float:
        self.calls += 1
        prev, lp = self.vocab_size, 0.0
        for w in ids:
            lp += self.fwd[prev, self._id(w)]
            prev = self._id(w)
        return float(lp + self.fwd[prev, self.vocab_size])

    def forward_logprobs(self, ids, pos: int) -> np.ndarray:
        prev = self.vocab_size if pos == 0 else self._id(ids[pos - 1])
        return self.fwd[prev, : self.vocab_size].astype(np.float32)

    def backward_logprobs(self, ids, pos: int):
        if self.bwd is None:
            return None
        nxt = self._id(ids[pos + 1]) if pos + 1 < len(ids) else self.vocab_size
        return self.bwd[nxt, : self.vocab_size].astype(np.float32)

    def enumerate(self, lo: int, hi: int):
        """(sentence as words, natural-log probability) for every length in lo..hi."""
        for n in range(lo, hi + 1):
            for ids in itertools.product(range(self.vocab_size), repeat=n):
                yield [self.words[i] for i in ids], self.sentence_logprob(ids)
