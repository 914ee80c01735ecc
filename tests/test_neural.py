"""kexue.neural: exact MH with n-gram proposals and a neural target (chi-square against
enumeration with a toy target that differs from the proposer), keywords always present, and
`kexue generate --hf` end to end with a tiny GPT-2 built here (offline): device placement,
bad model paths."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue import _native, cgmh, neural
from kexue.cli import main
from kexue.scorers import HFCausalLM, NgramScorer

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "benches"))
from cgmh_toy import ToyBigram  # noqa: E402
from test_cgmh import _chi_square, _holds  # noqa: E402

SENTENCES = [
    "A cat sat on the mat.",
    "The dog sat on the log.",
    "A cat ran to the dog.",
    "The dog ran home.",
    "A bird sang on the tree.",
]


class ToyNeural(ToyBigram):
    """Proposals from one random bigram (``ToyBigram``'s forward/backward), target from
    another (``score_words``): the case the neural mode is for."""

    def __init__(self, words: list[str], seed: int) -> None:
        super().__init__(words, seed=seed)
        self.target = ToyBigram(words, seed=seed + 100, backward=False)

    def score_words(self, sentences) -> np.ndarray:
        ids = [[self.vocab_size if (i := self.word_id(w)) is None else i for w in s]
               for s in sentences]  # fmt: skip
        return np.array([self.target.sentence_logprob(x) for x in ids])


def _forms(word: str) -> list[str]:
    return {"a": ["A"]}.get(word, [])


@pytest.mark.parametrize(
    "moves, keywords, order, forms",
    [
        ((1, 1, 1, 0, 0), ["b"], "fixed", "exact"),  # replace, insert, delete
        ((1, 1, 1, 1, 1), ["c", "a"], "free", _forms),  # with keyword forms and reorder
    ],
)
def test_mh_samples_the_neural_target_not_the_proposer(moves, keywords, order, forms):
    words = ["a", "b", "c", "A"] if callable(forms) else ["a", "b", "c"]
    lm = ToyNeural(words, seed=7)
    hi, chains = 3, 1200
    out = neural.generate_many(
        [keywords], lm, n=chains, steps=100, seed=1, order=order, top_k=2, max_len=hi,
        explore=0.5, length=None, block=None, forms=forms, distinct=False,
        moves=dict(zip(neural.cgmh.MOVES, moves)),
    )[0]  # fmt: skip
    counts = Counter(tuple(s.tokens) for s in out)
    target, proposer = {}, {}
    for ws, _ in lm.enumerate(len(keywords), hi):
        if _holds(ws, keywords, forms, order == "free"):
            target[tuple(ws)] = math.exp(lm.score_words([ws])[0])
            proposer[tuple(ws)] = math.exp(lm.sentence_logprob([lm.word_id(w) for w in ws]))
    assert _chi_square(counts, target, chains) > 1e-4
    assert _chi_square(counts, proposer, chains) < 1e-6  # the test can tell the two apart
    for s in out[:20]:
        assert math.isclose(s.logprob, lm.score_words([s.tokens])[0])


@settings(max_examples=20, deadline=None)
@given(
    keywords=st.lists(st.sampled_from(["cat", "dog", "ran", "zebra"]), min_size=1, max_size=4),
    order=st.sampled_from(["free", "fixed"]),
    anneal=st.sampled_from([None, True]),
    seed=st.integers(0, 2**32),
)
def test_every_output_holds_every_keyword(keywords, order, anneal, seed):
    words = "the a cat cats dog dogs run ran sat on mat".split()
    lm = ToyNeural(words, seed=3)
    out = neural.generate(keywords, lm, n=3, steps=30, seed=seed, order=order, anneal=anneal,
                          max_len=10)  # fmt: skip
    assert len(out) == 3 and len({tuple(s.tokens) for s in out}) >= 1
    for s in out:
        assert _holds(s.tokens, keywords, neural.cgmh._auto_forms, order == "free")
        assert len(s.tokens) <= 10 and s.text[0].isupper() and s.text.endswith(".")


@pytest.mark.parametrize("order", ["free", "fixed"])
def test_a_keyword_of_several_tokens_stays_whole(order):
    lm = ToyNeural("the a hot dog bun cat on with".split(), seed=4)
    out = neural.generate_many([["hot dog", "bun"], ["cat", "hot dog"]], lm, n=3, steps=60,
                               seed=2, order=order)  # fmt: skip
    for row, first in zip(out, ["hot dog", "cat"]):
        for s in row:
            t = [w.lower() for w in s.tokens]
            at = [i for i in range(len(t) - 1) if t[i : i + 2] == ["hot", "dog"]]
            assert at, t  # contiguous
            if order == "fixed" and first == "cat":  # a form of "cat" comes first
                assert any(w.startswith("cat") for w in t[: at[-1]]), t


@pytest.mark.parametrize("anneal", [None, True])
def test_outputs_reach_min_len_from_a_shorter_start(anneal):
    # one keyword, min_len 4: the chain starts outside the support and must grow into it
    lm = ToyNeural("the a cat dog sat on mat".split(), seed=5)
    out = neural.generate(["cat"], lm, n=3, steps=60, seed=1, min_len=4, length=None,
                          anneal=anneal)  # fmt: skip
    assert all(len(s.tokens) >= 4 for s in out), [s.tokens for s in out]


def test_same_seed_same_output_and_annealing_sharpens():
    lm = ToyNeural("the a cat dog sat on mat".split(), seed=5)
    a = neural.generate_many([["cat"], ["dog", "mat"]], lm, n=3, steps=40, seed=9)
    b = neural.generate_many([["cat"], ["dog", "mat"]], lm, n=3, steps=40, seed=9)
    assert [[s.tokens for s in r] for r in a] == [[s.tokens for s in r] for r in b]
    hot = neural.generate(["cat"], lm, n=8, steps=80, seed=2, length=None, distinct=False)
    cold = neural.generate(["cat"], lm, n=8, steps=80, seed=2, length=None, distinct=False,
                           anneal=True)  # fmt: skip
    assert np.mean([s.logprob for s in cold]) > np.mean([s.logprob for s in hot])


def test_consensus_pool_picks_the_sentence_the_chains_agree_with_most():
    from test_cgmh import consensus_scores

    lm = ToyNeural("the a cat dog sat on mat".split(), seed=5)
    chains = neural.generate(["cat"], lm, n=5, steps=30, seed=3, anneal=True, distinct=False)
    picked = neural.generate(["cat"], lm, n=1, steps=30, seed=3, anneal=True, pool=5)
    scores = consensus_scores(chains)
    assert picked[0].tokens == chains[int(np.argmax(scores))].tokens
    # a neural scorer pays per chain: no pool unless asked for
    default = neural.generate(["cat"], lm, n=1, steps=30, seed=3, anneal=True)
    assert default[0].tokens == chains[0].tokens


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"pool": 3, "select": "best"}, ValueError, "consensus"),
        ({"pool": 0}, ValueError, "pool"),
        ({"steps": 0}, ValueError, "steps"),
        ({"order": "sideways"}, ValueError, "order"),
        ({"gamma": float("nan")}, ValueError, "gamma"),
        ({"explore": 1.5}, ValueError, "explore"),
        ({"keywords": ["cat"] * 5, "max_len": 4}, ValueError, "max_len"),
        ({"moves": {"swap": 1}}, ValueError, "moves"),
        ({"keywords": []}, ValueError, "at least one"),
    ],
)
def test_bad_input(kwargs, exc, match):
    lm = ToyNeural("the a cat dog".split(), seed=5)
    kw = kwargs.pop("keywords", ["cat"])
    with pytest.raises(exc, match=match):
        neural.generate(kw, lm, **kwargs)
    with pytest.raises(TypeError, match="score_words"):
        neural.generate(["cat"], ToyBigram(["cat"]))


# --- a tiny GPT-2 built here (random weights, BPE trained on five sentences) ----------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from train_tiny_gpt2 import build

    path = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    build(SENTENCES * 4, path, vocab=300, layers=2, dim=32, heads=2, seconds=0)
    return path


@pytest.fixture(scope="module")
def ngram() -> NgramScorer:
    corpus = _native.NgramCorpus()
    corpus.add_sentences([s.rstrip(".") for s in SENTENCES])
    forward, backward = corpus.build(3, backward=True, discount_fallback=True)
    return NgramScorer(forward, backward)


@pytest.mark.torch
def test_hf_neural_target_scores_the_returned_text(tiny, ngram):
    lm = HFCausalLM.from_pretrained(tiny, ngram, device="cpu", dtype="float32")
    param = next(lm.model.parameters())
    assert param.device.type == "cpu" and str(param.dtype) == "torch.float32"
    stats: dict = {}
    out = neural.generate_many([["cat", "dog"], ["bird"]], lm, n=2, steps=20, seed=0,
                               stats=stats, anneal=True)  # fmt: skip
    for row, kw in zip(out, [["cat", "dog"], ["bird"]]):
        for s in row:
            assert _holds(s.tokens, kw, neural.cgmh._auto_forms, True)
            want = lm.score_texts([s.text])[0]
            assert math.isclose(s.logprob, want, rel_tol=1e-4, abs_tol=1e-4)
    # one sentence per chain and step at most (plus the start states)
    assert 0 < stats["sentences_scored"] <= 4 * 21 and stats["tokens_scored"] > 0


@pytest.mark.torch
def test_hf_target_never_writes_the_candidate_lms_symbols(tiny, ngram):
    # the ε-uniform draw can offer <unk>, <s>, </s>; the HF model would score their text
    lm = HFCausalLM.from_pretrained(tiny, ngram, device="cpu", dtype="float32")
    cat = lm.word_id("cat")
    assert [lm.word(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    for i in range(3):
        assert lm.sentence_logprob([i, cat]) == -math.inf
    got = lm.replace_logprobs([cat, cat], 1, np.array([0, 1, 2, cat]))
    assert np.isneginf(got[:3]).all() and np.isfinite(got[3])
    assert got[3] == pytest.approx(lm.sentence_logprob([cat, cat]), abs=1e-4)
    out = cgmh.generate(["cat"], lm, n=4, steps=40, seed=0, explore=0.5)
    assert all(not {"<unk>", "<s>", "</s>"} & set(s.tokens) for s in out)


@pytest.mark.torch
@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no CUDA device")
def test_hf_on_cuda(tiny, ngram):
    lm = HFCausalLM.from_pretrained(tiny, ngram, device="cuda", dtype="bfloat16")
    assert next(lm.model.parameters()).device.type == "cuda"
    out = neural.generate(["cat"], lm, n=2, steps=10, seed=0)
    assert all("cat" in {w.lower() for w in s.tokens} for s in out)


@pytest.mark.torch
def test_cli_generate_hf(tiny, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 3) + "\n", encoding="utf-8")
    assert main(["generate", "cat", "dog", "--hf", str(tiny), "--corpus", str(corpus),
                 "--order", "3", "--n", "2", "--steps", "20", "--device", "cpu", "--json",
                 "--anneal"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    for r in rows:
        toks = {t.lower() for t in r["tokens"]}
        assert toks & {"cat", "cats"} and toks & {"dog", "dogs"} and r["text"].endswith(".")


@pytest.mark.torch
@pytest.mark.parametrize("command", ["paraphrase", "correct"])
def test_cli_paraphrase_and_correct_hf(command, tiny, ngram, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 3) + "\n", encoding="utf-8")
    inputs = tmp_path / "in.txt"
    inputs.write_text("the cat sat on on the mat\n\nthe dog ran home\n", encoding="utf-8")
    keep = ["--keep", "cat"] if command == "paraphrase" else []
    assert main([command, "--input", str(inputs), "--hf", str(tiny), "--corpus", str(corpus),
                 "--order", "3", "--n", "2", "--steps", "10", "--top-k", "5", "--device", "cpu",
                 "--dtype", "float32", "--json", *keep]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == ["the cat sat on on the mat"] * 2 + [
        "the dog ran home"
    ] * 2
    lm = HFCausalLM.from_pretrained(tiny, ngram, device="cpu", dtype="float32")
    for r in rows:  # the neural LM was the target: its score of the output's words
        assert math.isclose(r["logprob"], lm.score_words([r["tokens"]])[0], abs_tol=1e-4)
    if keep:
        assert all("cat" in r["tokens"] for r in rows[:2])
    with pytest.raises(SystemExit) as e:
        main([command, "the", "cat", "--hf", str(tmp_path / "missing")])
    assert f"kexue {command}: --hf" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.torch
def test_bad_model_paths_are_clear_errors(tiny, ngram, tmp_path, capsys):
    pytest.importorskip("transformers")
    for bad in [tmp_path / "missing", tmp_path, "no-such-org/no-such-model-kexue"]:
        with pytest.raises(OSError, match="offline"):
            HFCausalLM.from_pretrained(bad, ngram)
    with pytest.raises(SystemExit) as e:
        main(["generate", "cat", "--hf", str(tmp_path / "missing")])
    assert "--hf" in str(e.value) and "missing" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="dtype"):
        HFCausalLM.from_pretrained(tiny, ngram, dtype="float99")
    with pytest.raises(ValueError, match="device"):
        HFCausalLM.from_pretrained(tiny, ngram, device="toaster")


@pytest.mark.torch
def test_cached_scores_equal_uncached(tiny, ngram):
    """Edits scored from the previous sentence's key/value cache (batched, prefixes of
    different lengths, an unchanged sentence among them) equal whole-sentence scores."""
    lm = HFCausalLM.from_pretrained(tiny, ngram, device="cpu", dtype="float32", batch_size=5)
    rng = np.random.default_rng(0)
    words = "the a cat dog sat on mat log ran home bird sang tree".split()
    xs = [list(rng.choice(words, rng.integers(1, 9))) for _ in range(12)]
    scores, states = lm.score_words_from(xs, [None] * len(xs))
    np.testing.assert_allclose(scores, lm.score_words(xs), rtol=0, atol=1e-5)
    for _ in range(6):
        ys = []
        for x in xs:
            y, i, w = list(x), int(rng.integers(len(x) + 1)), str(rng.choice(words))
            edit = rng.integers(4)
            if edit == 0 and i < len(y):
                y[i] = w
            elif edit == 1:
                y.insert(i, w)
            elif edit == 2 and len(y) > 1 and i < len(y):
                del y[i]
            ys.append(y)  # else unchanged
        computed, reused = lm.tokens_scored, lm.tokens_reused
        scores, states = lm.score_words_from(ys, states)
        whole = sum(len(x) - 1 for x in lm._encode([lm._format(y) for y in ys]))
        assert lm.tokens_scored - computed + lm.tokens_reused - reused == whole
        assert lm.tokens_reused > reused
        np.testing.assert_allclose(scores, lm.score_words(ys), rtol=0, atol=1e-5)
        xs = ys
    # the chains take the same path with and without the cache
    run = {"n": 3, "steps": 30, "seed": 0, "length": None}
    a = neural.generate_many([["cat", "dog"], ["bird"]], lm, **run)
    lm.reuse_cache = False
    b = neural.generate_many([["cat", "dog"], ["bird"]], lm, **run)
    assert [[s.tokens for s in r] for r in a] == [[s.tokens for s in r] for r in b]
    assert lm.score_words_from(xs, states)[1] == [None] * len(xs)


def test_cli_correct_and_paraphrase_ngram(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\na dog sat on the log\n" * 5, encoding="utf-8")
    lm = ["--corpus", str(corpus), "--order", "3"]
    assert main(["correct", "the", "cat", "sat", "on", "on", "the", "mat", *lm, "--steps",
                 "150"]) == 0  # fmt: skip
    assert "on on" not in capsys.readouterr().out  # as kexue.cgmh.correct's example
    assert main(["paraphrase", "the cat sat on the log", *lm, "--keep", "cat", "--n", "2",
                 "--sample", "--json"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all("cat" in r["tokens"] for r in rows)
    for bad in (["correct"], ["correct", "x", "--input", str(corpus)],
                ["paraphrase", "x", "--lm", "a", "--corpus", "b"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2
    assert "give a sentence" in capsys.readouterr().err
