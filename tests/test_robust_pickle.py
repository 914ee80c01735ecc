"""Every public object pickles and comes back equivalent."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from kexue import multitask
from kexue.cgmh import Sentence, generate
from kexue.lm import NgramLM
from kexue.scorers import NgramScorer
from kexue.vmf import VonMisesFisher

LINES = ["the cat sat on the mat", "a dog saw the cat"] * 5


@pytest.fixture(scope="module")
def lm() -> NgramLM:
    return NgramLM.build(LINES, order=3, progress=False, discount_fallback=True)


def roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


def test_native_model(lm) -> None:
    back = roundtrip(lm.native)
    assert back.words() == lm.native.words()
    np.testing.assert_array_equal(back.score_batch(LINES), lm.native.score_batch(LINES))


def test_ngram_scorer(lm) -> None:
    scorer = NgramScorer(lm)
    back = roundtrip(scorer)
    assert back.vocab_size == scorer.vocab_size and back.lowercase == scorer.lowercase
    assert back.text_tokenizer == scorer.text_tokenizer
    a = generate(["cat"], scorer, n=2, steps=20, seed=3)
    b = generate(["cat"], back, n=2, steps=20, seed=3)
    assert [s.tokens for s in a] == [s.tokens for s in b]
    assert isinstance(roundtrip(a[0]), Sentence)


def test_default_lm(monkeypatch, tmp_path) -> None:
    pytest.importorskip("symspellpy")
    from kexue import scorers

    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path))
    monkeypatch.setattr(scorers, "_DEFAULT", {})
    scorer = scorers.default_lm()
    back = roundtrip(scorer)
    ids = [scorer.word_id(w) for w in ("the", "house")]
    assert back.sentence_logprob(ids) == scorer.sentence_logprob(ids)


def test_loaded_lm_after_its_file_is_gone(lm, tmp_path) -> None:
    path = tmp_path / "m.kxlm"
    lm.save(path)
    loaded = NgramLM.load(path)
    path.unlink()
    np.testing.assert_array_equal(roundtrip(loaded).logprob(LINES), lm.logprob(LINES))


def test_vmf_numpy_and_multitask() -> None:
    q = VonMisesFisher(np.array([1.0, 0.0, 0.0]), 4.0, seed=1)
    back = roundtrip(q)
    np.testing.assert_array_equal(back.sample(3, seed=2), q.sample(3, seed=2))
    weighted = multitask.Weighted(1.0, np.ones(3))
    assert roundtrip(weighted)._fields == weighted._fields


@pytest.mark.torch
def test_vmf_torch() -> None:
    import torch

    q = VonMisesFisher(torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([5.0]))
    back = roundtrip(q)
    assert type(back) is type(q)
    torch.testing.assert_close(back.rsample((4,), seed=0), q.rsample((4,), seed=0))


@pytest.mark.torch
def test_nn_modules() -> None:
    import torch

    from kexue import nn

    assert roundtrip(multitask.GradNorm(3)) is not None
    for module in (nn.SquarePlus(), nn.GlobalPointer(8, 2, 4)):
        back = roundtrip(module)
        assert type(back) is type(module)
        for a, b in zip(module.state_dict().values(), back.state_dict().values()):
            torch.testing.assert_close(a, b)


def test_causal_state_after_float32_steps() -> None:
    from kexue.attention import CausalState, orthogonal_random_matrix

    rng = np.random.default_rng(0)
    w = orthogonal_random_matrix(16, 8, seed=1, dtype=np.float32)
    state = CausalState(feature_map="favor+", projection=w)
    q, k = (rng.normal(size=(1, 2, 5, 8)).astype(np.float32) for _ in range(2))
    v = rng.normal(size=(1, 2, 5, 16)).astype(np.float32)
    for t in range(3):  # float32 tokens one by one: the native decoder holds buffered tokens
        state.update(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1])
    assert state._decoder is not None  # the float32 decoder is in use
    back = pickle.loads(pickle.dumps(state))
    for t in range(3, 5):
        a = state.update(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1])
        b = back.update(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1])
        np.testing.assert_array_equal(a, b)
