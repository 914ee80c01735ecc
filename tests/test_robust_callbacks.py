"""Exceptions raised by user callbacks (a CGMH scorer or prior) reach the caller as
themselves, through the Rust sampler: their type, message and traceback are kept."""

from __future__ import annotations

import traceback

import numpy as np
import pytest

from kexue.cgmh import generate, paraphrase
from kexue.lm import NgramLM
from kexue.scorers import NgramScorer


class ScorerFailure(Exception):
    pass


@pytest.fixture(scope="module")
def lm() -> NgramLM:
    return NgramLM.build(
        ["the cat sat on the mat", "a dog saw the cat"] * 5,
        order=2,
        progress=False,
        discount_fallback=True,
    )


def failing_scorer(lm: NgramLM, exc: BaseException, method: str) -> NgramScorer:
    scorer = NgramScorer(lm)
    scorer._cgmh_native = None  # the Python road (no length prior: it samples natively)

    def fail(*args, **kwargs):
        raise exc

    setattr(scorer, method, fail)
    return scorer


@pytest.mark.parametrize("method", ["sentence_logprob", "forward_logprobs", "backward_logprobs"])
@pytest.mark.parametrize(
    "exc", [ScorerFailure("custom"), KeyboardInterrupt(), ValueError("own"), ZeroDivisionError()]
)
def test_scorer_exceptions_keep_their_type(lm, method, exc) -> None:
    scorer = failing_scorer(lm, exc, method)
    with pytest.raises(type(exc)) as info:
        generate(["cat"], scorer, n=2, steps=5, seed=0, length=None)
    assert info.value is exc
    assert any("fail" in line for line in traceback.format_tb(info.value.__traceback__))


def similarity_failing_after(first: int, fail) -> object:
    """A paraphrase similarity: a fixed embedding for the first ``first`` calls (the
    reference sentence), then ``fail()``."""
    calls = []

    def similarity(text: str):
        calls.append(text)
        return np.ones(4) if len(calls) <= first else fail()

    return similarity


def test_prior_exceptions_keep_their_type(lm) -> None:
    def fail():
        raise ScorerFailure("prior")

    with pytest.raises(ScorerFailure, match="prior"):
        paraphrase("the cat sat", lm, similarity=similarity_failing_after(1, fail), steps=5)


def test_a_nan_from_a_prior_is_blamed_on_the_prior(lm) -> None:
    similarity = similarity_failing_after(1, lambda: np.full(4, np.nan))
    with pytest.raises(ValueError, match="a prior .*invalid log-probability"):
        paraphrase("the cat sat", lm, similarity=similarity, steps=5)


@pytest.mark.torch
def test_torch_errors_keep_their_type(lm) -> None:
    import torch

    def bad(*args, **kwargs):
        return torch.ones(2, 2) @ torch.ones(3, 3)  # raises RuntimeError from torch

    scorer = NgramScorer(lm)
    scorer._cgmh_native = None
    scorer.forward_logprobs = bad
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        generate(["cat"], scorer, n=2, steps=50, length=None)


def test_wrong_dtype_from_a_scorer_names_the_rule(lm) -> None:
    scorer = NgramScorer(lm)
    scorer._cgmh_native = None
    real = scorer.forward_logprobs
    scorer.forward_logprobs = lambda ids, pos: real(ids, pos).astype(np.float64)
    with pytest.raises(TypeError, match="float32"):
        generate(["cat"], scorer, n=2, steps=50, length=None)
