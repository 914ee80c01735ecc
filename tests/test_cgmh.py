"""kexue.cgmh: keywords always present, exact MH (chi-square against enumeration), bad input,
determinism, tasks, trace plot."""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kexue
from kexue import cgmh

sys.path.insert(0, str(Path(__file__).parent))
from cgmh_toy import ToyBigram  # noqa: E402

WORDS = "the a cat dog sat on mat ran".split()


def contains_in_order(tokens: list[str], keywords: list[str]) -> bool:
    it = iter(tokens)
    return all(any(t == k for t in it) for k in keywords)


@settings(max_examples=30, deadline=None)
@given(
    keywords=st.lists(
        st.sampled_from(WORDS + ["zebra", "Ünïcode", "北京"]), min_size=1, max_size=6
    ),
    order=st.sampled_from(["free", "fixed"]),
    anneal=st.sampled_from([None, True]),
    seed=st.integers(0, 2**32),
)
def test_every_output_contains_every_keyword(keywords, order, anneal, seed):
    lm = ToyBigram(WORDS, seed=3)
    out = cgmh.generate(
        keywords, lm, n=3, steps=40, seed=seed, order=order, anneal=anneal, max_len=12
    )
    assert len(out) == 3
    for s in out:
        assert not Counter(keywords) - Counter(s.tokens)
        assert len(s.tokens) <= 12
        if order == "fixed":
            assert contains_in_order(s.tokens, keywords)
        assert s.text.split() == s.tokens
        ids = [99 if lm.word_id(w) is None else lm.word_id(w) for w in s.tokens]
        assert math.isclose(s.logprob, lm.sentence_logprob(ids))


def _chi_square(counts: Counter, target: dict[tuple, float], total: int) -> float:
    from scipy import stats

    z = sum(target.values())
    exp, obs = [], []
    pooled_e = pooled_o = 0.0
    for s, p in target.items():
        e = total * p / z
        if e < 5:
            pooled_e += e
            pooled_o += counts.get(s, 0)
        else:
            exp.append(e)
            obs.append(counts.get(s, 0))
    exp.append(pooled_e)
    obs.append(pooled_o)
    assert sum(counts.values()) == total and set(counts) <= set(target)
    return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize(
    "actions, keywords, order, lo",
    [
        ((1, 0, 0), None, "fixed", 3),  # replace alone, length fixed at 3
        ((1, 1, 1), None, "fixed", 1),  # all three
        ((1, 1, 1), ["b", "b"], "fixed", 2),  # with a repeated keyword
    ],
)
def test_mh_samples_the_enumerated_target(actions, keywords, order, lo):
    """Final states of many independent chains vs p(x)·χ(x) over every sentence of 1..3
    words, through the Python scorer protocol (the Rust tests cover every move set natively,
    insert + delete alone included)."""
    lm = ToyBigram(["a", "b", "c"], seed=7)
    hi, chains = 3, 3000
    steps = 60  # insert + delete alone mix slowly: tested natively (cargo test cgmh)
    if keywords is None:
        start = ["a", "b", "c"] if actions == (1, 0, 0) else ["a"]
        raw = cgmh._run(
            lm, [start], [[False] * len(start)], [[]], n=chains, steps=steps, seed=1,
            anneal=None, select="last", return_trace=False, top_k=2, gamma=1.0, min_len=1,
            max_len=hi, index="min", explore=0.2, actions=actions, tokenizer=None, permute=False,
        )[0]  # fmt: skip
    else:
        raw = cgmh.generate(keywords, lm, n=chains, steps=steps, seed=1, order=order, top_k=2,
                            max_len=hi, explore=0.2, actions=actions)  # fmt: skip
    counts = Counter(tuple(s.tokens) for s in raw)
    target = {}
    for words, lp in lm.enumerate(lo, hi):
        if keywords is None or contains_in_order(words, keywords):
            target[tuple(words)] = math.exp(lp)
    assert _chi_square(counts, target, chains) > 1e-4


def test_same_seed_same_output_on_any_thread_count():
    lm = ToyBigram(WORDS, seed=5)
    kw = [["cat"], ["dog", "mat"], ["the", "the"]]
    kexue.set_num_threads(1)
    a = cgmh.generate_many(kw, lm, n=4, steps=50, seed=9)
    kexue.set_num_threads(0)
    b = cgmh.generate_many(kw, lm, n=4, steps=50, seed=9)
    c = cgmh.generate_many(kw, lm, n=4, steps=50, seed=10)
    assert [[s.tokens for s in r] for r in a] == [[s.tokens for s in r] for r in b]
    assert [[s.tokens for s in r] for r in a] != [[s.tokens for s in r] for r in c]


def test_annealing_finds_likely_sentences_and_trace():
    lm = ToyBigram(WORDS, seed=5)
    best = cgmh.generate(["cat"], lm, n=8, steps=150, seed=2, anneal=True, return_trace=True)
    sampled = cgmh.generate(["cat"], lm, n=8, steps=150, seed=2)
    assert np.mean([s.nll_per_token for s in best]) < np.mean([s.nll_per_token for s in sampled])
    for s in best:
        assert s.trace_log_target.shape == (150,) and s.trace_accepted.dtype == bool
        assert sum(s.proposed.values()) == 150 and 0 <= s.acceptance_rate <= 1
        # the best state seen has the highest length-normalised log target on the trace
        assert (
            s.log_target / (len(s.tokens) + 1)
            >= s.trace_log_target[-1] / (len(s.last_tokens) + 1) - 1e-9
        )


def test_plot_trace(tmp_path):
    pytest.importorskip("matplotlib")
    lm = ToyBigram(WORDS, seed=5)
    out = cgmh.generate(["cat"], lm, n=2, steps=30, return_trace=True)
    cgmh.plot_trace(out, str(tmp_path / "trace.png"))
    assert (tmp_path / "trace.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="return_trace"):
        cgmh.plot_trace(cgmh.generate(["cat"], lm, steps=5), str(tmp_path / "x.png"))


def test_paraphrase_and_correct_stay_close():
    lm = ToyBigram(WORDS, seed=5)
    src = "the cat sat on the mat"
    for s in cgmh.paraphrase(src, lm, n=3, steps=60, seed=1):
        assert s.tokens and set(s.tokens) & set(src.split())
    for s in cgmh.paraphrase(
        src, lm, n=2, steps=30, keywords=["mat"], similarity=lambda t: [len(t), 1.0]
    ):
        assert "mat" in s.tokens
    fixed = cgmh.correct("the cat sat sat on the mat", lm, n=2, steps=80, weight=20.0)
    for s in fixed:  # a huge closeness weight keeps the output within an edit or two
        assert abs(len(s.tokens) - 7) <= 2


def test_chinese_characters_and_callable_tokenizer():
    chars = list("北京美食节开幕了")
    lm = ToyBigram(chars, seed=1)
    out = cgmh.generate(["北京", "开幕"], lm, n=2, steps=40, tokenizer="chars", max_len=10)
    for s in out:
        assert "北" in s.tokens and "幕" in s.tokens and " " not in s.text
    out = cgmh.generate(["北京"], lm, steps=10, tokenizer=lambda t: list(t))
    assert "北" in out[0].tokens
    assert cgmh.detokenize(["Hello", ",", "world", "!"]) == "Hello, world!"


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"keywords": []}, ValueError, "at least one"),
        ({"keywords": [""]}, ValueError, "empty"),
        ({"keywords": ["  "]}, ValueError, "empty"),
        ({"keywords": [3]}, TypeError, "str"),
        ({"keywords": ["cat"] * 5, "max_len": 4}, ValueError, "max_len"),
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": -3}, ValueError, "steps"),
        ({"n": 0}, ValueError, "n must"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"order": "sideways"}, ValueError, "order"),
        ({"anneal": "hot"}, ValueError, "anneal"),
        ({"anneal": (1.0, -1.0)}, ValueError, "anneal"),
        ({"gamma": float("nan")}, ValueError, "gamma"),
        ({"index": "max"}, ValueError, "index"),
        ({"explore": 1.5}, ValueError, "explore"),
        ({"actions": (0, 0, 0)}, ValueError, "actions"),
        ({"min_len": 9, "max_len": 4}, ValueError, "min_len"),
    ],
)
def test_bad_input(kwargs, exc, match):
    lm = ToyBigram(WORDS, seed=5)
    kw = kwargs.pop("keywords", ["cat"])
    with pytest.raises(exc, match=match):
        cgmh.generate(kw, lm, **kwargs)


class NaNScorer(ToyBigram):
    def sentence_logprob(self, ids) -> float:
        return float("nan") if len(ids) > 1 else super().sentence_logprob(ids)


class RaisingScorer(ToyBigram):
    def forward_logprobs(self, ids, pos):
        raise RuntimeError("model fell over")


class ShortScorer(ToyBigram):
    def forward_logprobs(self, ids, pos):
        return np.zeros(2, np.float32)


@pytest.mark.parametrize(
    "scorer, exc, match",
    [
        (NaNScorer, ValueError, "invalid log-probability"),
        (RaisingScorer, RuntimeError, "fell over"),  # the scorer's own exception, unchanged
        (ShortScorer, ValueError, "expected 8"),
    ],
)
def test_bad_scorer_is_a_clear_error(scorer, exc, match):
    with pytest.raises(exc, match=match):
        cgmh.generate(["cat"], scorer(WORDS), steps=20)
    with pytest.raises(TypeError, match="scorer"):
        cgmh.generate(["cat"], object(), steps=20)
