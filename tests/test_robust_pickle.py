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


# --- every public class, found by walking the package ---------------------------------------


def public_classes() -> set[str]:
    """``module.Class`` of every class a public kexue module defines or exports (``__all__``
    where the module has one); benchmarks are scripts, not API."""
    import importlib
    import inspect
    import pkgutil

    import kexue

    found = set()
    names = ["kexue"] + [
        "kexue." + m.name
        for m in pkgutil.walk_packages(kexue.__path__)
        if not any(p.startswith("_") for p in m.name.split(".")) and "benchmarks" not in m.name
    ]
    for name in names:
        module = importlib.import_module(name)
        public = getattr(module, "__all__", None)
        for attr, value in vars(module).items():
            if attr.startswith("_") or not inspect.isclass(value):
                continue
            if not value.__module__.startswith("kexue") or (public and attr not in public):
                continue
            found.add(f"{value.__module__}.{value.__qualname__}")
    return found


def _instances(lm: NgramLM, tmp_path) -> dict:
    """One instance of each public class, built the way a user builds it."""
    import torch

    from kexue import nn
    from kexue.attention import CausalState
    from kexue.text import RegexTokenizer

    state = CausalState(feature_map="identity")
    state.update(*(np.ones((1, 1, 2, 4)) for _ in range(3)))
    return {
        "kexue.attention.CausalState": state,
        "kexue.cgmh.Sentence": generate(["cat"], lm, steps=5, seed=0)[0],
        "kexue.lm.NgramLM": lm,
        "kexue.multitask.Weighted": multitask.Weighted(1.0, np.ones(3)),
        "kexue.multitask.GradNorm": multitask.GradNorm(3),
        "kexue.nn.activations.SquarePlus": nn.SquarePlus(),
        "kexue.nn.attention.LinearAttention": nn.LinearAttention(8, 2),
        "kexue.nn.losses.GlobalPointer": nn.GlobalPointer(8, 2, 4),
        "kexue.nn.losses.GlobalPointerKL": nn.GlobalPointerKL(),
        "kexue.nn.losses.MultilabelCategoricalCrossentropy": (
            nn.MultilabelCategoricalCrossentropy()
        ),
        "kexue.nn.losses.NxMCrossentropy": nn.NxMCrossentropy(),
        "kexue.nn.losses.SparseMultilabelCategoricalCrossentropy": (
            nn.SparseMultilabelCategoricalCrossentropy()
        ),
        "kexue.nn.multitask.DynamicWeightAverage": nn.DynamicWeightAverage(3),
        "kexue.nn.multitask.UncertaintyWeighting": nn.UncertaintyWeighting(3),
        "kexue.nn.vmf.VMFLatent": nn.VMFLatent(3, 4.0),
        "kexue.scorers.NgramScorer": NgramScorer(lm),
        "kexue.text.RegexTokenizer": RegexTokenizer(r"\w+"),
        "kexue.vmf.VonMisesFisher": VonMisesFisher(torch.tensor([[1.0, 0.0]]), torch.tensor([2.0])),
    }


@pytest.mark.torch
def test_every_public_class_pickles(lm, tmp_path) -> None:
    """Each public class has an instance here (a new class without one fails), and each
    instance survives pickling with its whole state (attributes compared recursively).
    HFCausalLM needs a model on disk: test_neural pickles it."""
    pytest.importorskip("torch")
    instances = _instances(lm, tmp_path)
    untested = {"kexue.scorers.HFCausalLM"}
    assert public_classes() - untested == set(instances)
    for name, obj in instances.items():
        data = pickle.dumps(obj)
        back = pickle.loads(data)
        assert same_state(obj, back), name


def same_state(a, b) -> bool:
    """Whether ``a`` and ``b`` hold equal state: arrays and tensors elementwise, containers
    and objects' pickled state (``__reduce_ex__``) recursively."""
    import copyreg
    import inspect

    import torch

    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float, str, bytes, bool, type(None))):
        return a == b or (a != a and b != b)
    if isinstance(a, type) or inspect.isroutine(a):  # pickled by name
        return a is b
    # what pickling keeps (caches left out): the reconstructor, its arguments, the state
    reduce = copyreg.dispatch_table.get(type(a), lambda x: x.__reduce_ex__(4))
    ra, rb = reduce(a), reduce(b)
    return ra[0] == rb[0] and same_state(tuple(ra[1:3]), tuple(rb[1:3]))
