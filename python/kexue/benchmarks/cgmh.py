"""``kexue bench cgmh``."""

from __future__ import annotations

from typing import Any

from . import header


class _PythonRoad:
    """The same scorer reached only through the Python scorer protocol: the sampler calls
    back into Python for every next-word distribution and candidate score."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.vocab_size = inner.vocab_size
        for name in (
            "word",
            "word_id",
            "sentence_logprob",
            "forward_logprobs",
            "backward_logprobs",
            "sample",  # so both roads estimate the same length prior
        ):
            setattr(self, name, getattr(inner, name))


def run(size: int | None = None, repeat: int = 7) -> dict[str, float]:
    """Keyword-to-sentence with the built-in English LM: ``size`` chains (default 8) of 100
    steps over 4 keyword sets, the native n-gram loop against the same sampler calling the
    same LM through the Python scorer protocol. (Against a pure-Python CGMH over
    ``kenlm.Model``: ``python benches/bench_cgmh.py``.)"""
    print(header())
    from .. import get_num_threads
    from ..cgmh import generate_many
    from ..scorers import default_lm
    from . import compare

    chains = 8 if size is None else size
    lm = default_lm()
    sets = [["rain", "city"], ["music"], ["old", "king", "castle"], ["river", "night"]]
    steps = 100
    shape = f"{len(sets)} inputs x {chains} chains x {steps} steps, vocab {lm.vocab_size}, "
    shape += f"{get_num_threads()} threads"
    py = _PythonRoad(lm)
    return compare(
        "cgmh generate",
        shape,
        lambda: generate_many(sets, lm, n=chains, steps=steps),
        {
            "same sampler, LM via Python protocol": lambda: generate_many(
                sets, py, n=chains, steps=steps
            )
        },
        repeat=repeat,
    )
