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
from kexue.text import as_sentence, detokenize

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
        keywords,
        lm,
        n=3,
        steps=40,
        seed=seed,
        order=order,
        anneal=anneal,
        max_len=12,
        forms="exact",
    )
    assert len(out) == 3
    for s in out:
        assert not Counter(keywords) - Counter(s.tokens)
        assert len(s.tokens) <= 12
        if order == "fixed":
            assert contains_in_order(s.tokens, keywords)
        assert s.text == as_sentence(detokenize(s.tokens))
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


def _forms(word: str) -> list[str]:
    """Toy inflections: "a" may also be written "A"."""
    return {"a": ["A"], "b": ["B"]}.get(word, [])


@pytest.mark.parametrize(
    "moves, keywords, order, forms, lo",
    [
        ((1, 0, 0, 0, 0), None, "fixed", "exact", 3),  # replace alone, length fixed at 3
        ((1, 1, 1, 0, 0), None, "fixed", "exact", 1),  # replace, insert, delete
        ((1, 1, 1, 0, 0), ["b", "b"], "fixed", "exact", 2),  # with a repeated keyword
        ((1, 1, 1, 1, 0), ["a", "c"], "fixed", _forms, 2),  # keyword forms
        ((1, 1, 1, 1, 1), ["c", "a"], "free", _forms, 2),  # forms and free order
    ],
)
def test_mh_samples_the_enumerated_target(moves, keywords, order, forms, lo):
    """Final states of many independent chains vs p(x)·χ(x) over every sentence of 1..3
    words, through the Python scorer protocol (the Rust tests cover every move set natively,
    insert + delete alone included)."""
    # The forms cases need the capitalised words too, and more candidates to mix as fast.
    lm = ToyBigram(["a", "b", "c", "A", "B"] if callable(forms) else ["a", "b", "c"], seed=7)
    hi, chains = 3, 3000
    steps = 60  # insert + delete alone mix slowly: tested natively (cargo test cgmh)
    options = dict(
        top_k=4 if callable(forms) else 2, max_len=hi, explore=0.2, length=None, block=None,
        forms=forms, distinct=False, moves=dict(zip(cgmh.MOVES, moves)),
    )  # fmt: skip
    if keywords is None:
        start = ["a", "b", "c"] if moves[0] and not moves[1] else ["a"]
        raw = cgmh._run(
            lm, [start], [[False] * len(start)], [[]], n=chains, steps=steps, seed=1,
            anneal=None, tokenizer=None, permute=False, sentence_case=False,
            **cgmh._options(options),
        )[0]  # fmt: skip
    else:
        raw = cgmh.generate(keywords, lm, n=chains, steps=steps, seed=1, order=order, **options)
    counts = Counter(tuple(s.tokens) for s in raw)
    target = {}
    for words, lp in lm.enumerate(lo, hi):
        if keywords is None or _holds(words, keywords, forms, order == "free"):
            target[tuple(words)] = math.exp(lp)
    assert _chi_square(counts, target, chains) > 1e-4


def _holds(words: list[str], keywords: list[str], forms, free: bool) -> bool:
    """Some assignment of distinct positions to the keywords (in order unless ``free``)
    holds a form of each: brute force over position tuples."""
    from itertools import permutations

    ok = [{k} | (set(forms(k)) if callable(forms) else set()) for k in keywords]
    for pos in permutations(range(len(words)), len(keywords)):
        if (free or list(pos) == sorted(pos)) and all(words[p] in o for p, o in zip(pos, ok)):
            return True
    return False


@settings(max_examples=25, deadline=None)
@given(
    keywords=st.lists(
        st.sampled_from(["run", "throw", "dog", "ball", "catch"]), min_size=1, max_size=4
    ),  # fmt: skip
    order=st.sampled_from(["free", "fixed"]),
    seed=st.integers(0, 2**32),
)
def test_every_output_holds_a_form_of_every_keyword(keywords, order, seed):
    words = "the a dog dogs ball balls run ran running throw threw thrown catch caught".split()
    lm = ToyBigram(words, seed=11)
    out = cgmh.generate(keywords, lm, n=2, steps=40, seed=seed, order=order, anneal=True)
    for s in out:
        assert _holds(s.tokens, keywords, _english, order == "free")


def _english(word: str) -> list[str]:
    from kexue.text import english_forms

    return english_forms(word)


def test_forms_follow_english_inflection_and_exact_keeps_the_word():
    words = "the a man men throws threw throw ball balls".split()
    lm = ToyBigram(words, seed=2)
    got = {w for s in cgmh.generate(["throw", "man"], lm, n=12, steps=60, seed=1) for w in s.tokens}
    assert got & {"threw", "throws"} and "men" in got  # other forms are used
    exact = cgmh.generate(["throw", "man"], lm, n=6, steps=60, seed=1, forms="exact")
    assert all({"throw", "man"} <= set(s.tokens) for s in exact)
    custom = cgmh.generate(["ball"], lm, n=4, steps=30, seed=1, forms=lambda w: ["balls"])
    assert all({"ball", "balls"} & set(s.tokens) for s in custom)


def test_n_annealed_sentences_are_distinct():
    lm = ToyBigram(WORDS, seed=5)
    out = cgmh.generate(["cat"], lm, n=4, steps=80, seed=3, anneal=True, forms="exact")
    assert len({s.text for s in out}) == 4  # the texts: tokens differing by a final "." read alike
    # (the built-in LM: two chains found "A ritual during the festival" with and without ".")
    ritual = cgmh.generate(["ritual"], n=5, seed=20, anneal=True, order="fixed")
    assert len({s.text for s in ritual}) == 5, [s.text for s in ritual]
    same = cgmh.generate(["cat"], lm, n=4, steps=80, seed=3, anneal=True, distinct=False)
    assert len(same) == 4


@pytest.mark.parametrize("anneal", [None, True])
def test_outputs_reach_min_len_from_a_shorter_start(anneal):
    # one keyword, min_len 6: the chain starts outside the support and must grow into it,
    # on the Python-scorer road and the native n-gram road
    from kexue.lm import NgramLM

    corpus = ["the cat sat on the mat with a dog"] * 4
    native = NgramLM.build(corpus, order=2, progress=False, discount_fallback=True)
    lms = [ToyBigram(WORDS, seed=5), native]
    for lm in lms:
        out = cgmh.generate(["cat"], lm, n=3, steps=60, seed=1, min_len=6, length=None,
                            anneal=anneal)  # fmt: skip
        assert all(len(s.tokens) >= 6 for s in out), [s.tokens for s in out]


def test_length_prior_lengthens_annealed_sentences():
    lm = ToyBigram(WORDS, seed=5)
    short = cgmh.generate(["cat"], lm, n=6, steps=150, seed=2, anneal=True, length=None)
    long = cgmh.generate(["cat"], lm, n=6, steps=150, seed=2, anneal=True, length=(8, 6.0))
    assert np.mean([len(s.tokens) for s in long]) > np.mean([len(s.tokens) for s in short]) + 2
    assert all(len(s.tokens) >= 6 for s in long)


def test_blocked_words_never_appear_unless_keywords():
    lm = ToyBigram(WORDS, seed=5)
    out = cgmh.generate(["cat"], lm, n=8, steps=100, seed=1, block=["dog", "mat"], length=(6, 5.0))
    assert all(not {"dog", "mat"} & set(s.tokens) for s in out)
    kept = cgmh.generate(["dog"], lm, n=3, steps=50, seed=1, block=["dog"], forms="exact")
    assert all("dog" in s.tokens for s in kept)


def bleu_plus_one(h: list, r: list) -> float:
    """Sentence BLEU-4 of h against r with Lin & Och's (2004) add-one smoothing of the
    2- to 4-gram precisions and the usual brevity penalty, from the paper's definition."""
    if not h:
        return 0.0
    logs = []
    for n in range(1, 5):
        hn = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
        rn = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
        matches = sum(min(c, rn[g]) for g, c in hn.items())
        add = 0 if n == 1 else 1
        if matches + add == 0:
            return 0.0
        logs.append(math.log((matches + add) / (max(len(h) - n + 1, 0) + add)))
    return math.exp(sum(logs) / 4 + min(0.0, 1 - len(r) / len(h)))


def agreement(pool: list) -> list[float]:
    if len(pool) == 1:
        return [0.0]
    return [
        sum(bleu_plus_one(h, r) for j, r in enumerate(pool) if j != i) / (len(pool) - 1)
        for i, h in enumerate(pool)
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=10), min_size=1, max_size=7),
        max_size=4,
    )
)
def test_agreement_is_the_mean_smoothed_bleu_against_the_pool(pools):
    got = kexue._native.cgmh_agreement(pools)
    assert len(got) == len(pools)
    for pool, row in zip(pools, got):
        np.testing.assert_allclose(row, agreement(pool), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "pools, exc, match",
    [
        ([[[-1]]], ValueError, r"pools\[0\]\[0\]\[0\] must be between 0 and 2\*\*32 - 1"),
        ([[[2**40]]], ValueError, "between 0 and"),
        ("x", TypeError, "pools must be a sequence"),
        ([[1]], TypeError, r"pools\[0\]\[0\] must be a sequence of ints"),
    ],
)
def test_agreement_rejects_what_is_not_pools_of_word_ids(pools, exc, match):
    with pytest.raises(exc, match=match):
        kexue._native.cgmh_agreement(pools)


SENTENCES = [
    "the dog sat on the mat", "a cat sat on the mat", "the dog ran to the cat",
    "a dog and a cat sat", "the cat ran on the mat", "the dog saw a cat",
]  # fmt: skip


def consensus_scores(chains: list) -> list[float]:
    """Agreement with the pool plus the target's weight times each sentence's log target."""
    w = cgmh.CONSENSUS_TARGET_WEIGHT
    return [a + w * s.log_target for a, s in zip(agreement([s.tokens for s in chains]), chains)]


@pytest.fixture(scope="module")
def small_lm():
    from kexue.lm import NgramLM

    return NgramLM.build(SENTENCES * 3, order=3, progress=False, discount_fallback=True)


def test_consensus_weighs_agreement_with_the_pool_and_the_target(small_lm):
    kw = ["dog", "ran"]  # a pool where the target changes the pick agreement alone makes
    chains = cgmh.generate(kw, small_lm, n=6, steps=40, seed=4, anneal=True, select="best",
                           distinct=False)  # fmt: skip
    picked = cgmh.generate(kw, small_lm, n=2, steps=40, seed=4, anneal=True, pool=6)
    scores = consensus_scores(chains)
    by_agreement = agreement([s.tokens for s in chains])
    assert np.argmax(scores) != np.argmax(by_agreement)
    ranked = []
    for i in sorted(range(6), key=lambda i: -scores[i]):  # stable: ties keep chain order
        if chains[i].tokens not in ranked:
            ranked.append(chains[i].tokens)
    assert [s.tokens for s in picked] == ranked[:2]
    assert all({"dog", "dogs"} & set(s.tokens) and "ran" in s.tokens for s in picked)
    # distinct=False: the n highest-scoring chains as they are, repeats included
    top = cgmh.generate(kw, small_lm, n=6, steps=40, seed=4, anneal=True, pool=6, distinct=False)
    order = sorted(range(6), key=lambda i: -scores[i])
    assert [s.tokens for s in top] == [chains[i].tokens for i in order]


def test_annealing_with_a_native_lm_runs_a_pool_of_short_chains(small_lm):
    kw = [["dog"], ["cat", "mat"]]
    default = cgmh.generate_many(kw, small_lm, n=2, seed=1, anneal=True)
    explicit = cgmh.generate_many(kw, small_lm, n=2, seed=1, anneal=True,
                                  pool=cgmh.DEFAULT_POOL, steps=cgmh.POOL_STEPS)  # fmt: skip
    assert [[s.tokens for s in r] for r in default] == [[s.tokens for s in r] for r in explicit]
    assert all(sum(s.proposed.values()) == cgmh.POOL_STEPS for r in default for s in r)
    many = cgmh.generate(["dog"], small_lm, n=cgmh.DEFAULT_POOL + 2, seed=1, anneal=True)
    assert len(many) == cgmh.DEFAULT_POOL + 2
    assert all(sum(s.proposed.values()) == cgmh.POOL_STEPS for s in many)
    single = cgmh.generate(["dog"], small_lm, seed=1, anneal=True, select="best")[0]
    assert sum(single.proposed.values()) == cgmh.DEFAULT_STEPS
    sampled = cgmh.generate(["dog"], small_lm, seed=1)[0]  # no pool without search
    assert sum(sampled.proposed.values()) == cgmh.DEFAULT_STEPS
    # a Python scorer pays per chain: one chain per sentence
    toy = cgmh.generate(["cat"], ToyBigram(WORDS, seed=5), seed=1, anneal=True)[0]
    assert sum(toy.proposed.values()) == cgmh.DEFAULT_STEPS


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"pool": 0}, ValueError, "pool"),
        ({"pool": "many"}, TypeError, "pool"),
        ({"pool": True}, TypeError, "pool"),
        ({"pool": 4, "select": "best"}, ValueError, "consensus"),
        ({"select": "mode"}, ValueError, "select"),
    ],
)
def test_bad_pool(small_lm, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cgmh.generate(["dog"], small_lm, anneal=True, **kwargs)


def unseen_ngrams(tokens: list[str], order: int = 3) -> int:
    """Tokens of ``tokens`` (and the end) whose n-gram of ``order`` words (shorter at the
    start: ``<s> w1`` for the first word) never occurs in :data:`SENTENCES`."""
    seen = set()
    for line in SENTENCES:
        t = ["<s>", *line.split(), "</s>"]
        seen.update(tuple(t[i:j]) for i in range(len(t)) for j in range(i + 2, len(t) + 1))
    t = ["<s>", *tokens, "</s>"]
    return sum(tuple(t[max(0, i - order + 1) : i + 1]) not in seen for i in range(1, len(t)))


@pytest.mark.parametrize("order, cost", [(3, 0.7), (2, 2.0)])
def test_backoff_penalty_enters_the_target(small_lm, order, cost):
    """log target = log p − cost · (tokens whose n-gram the corpus never held) − log N, with
    N the ways the keywords sit in the sentence, counted from the corpus itself."""
    kw = [["dog", "mat"], ["cat"], ["ran", "saw"]]
    out = cgmh.generate_many(kw, small_lm, n=6, steps=40, seed=1, anneal=True, length=None,
                             block=None, forms="exact", backoff=(order, cost), select="best",
                             distinct=False)  # fmt: skip
    penalised = 0
    for keywords, row in zip(kw, out):
        for s in row:
            ways = math.prod(s.tokens.count(k) for k in keywords)
            unseen = unseen_ngrams(s.tokens, order)
            penalised += unseen > 0
            want = s.logprob - cost * unseen - math.log(ways)
            assert math.isclose(s.log_target, want, abs_tol=1e-6), s.tokens
    assert penalised  # the check saw the penalty at work


def test_backoff_penalty_defaults(small_lm):
    kw = [["dog"], ["cat", "mat"]]
    same = {"n": 2, "steps": 30, "seed": 3}

    def targets(**options: object) -> list[list[float]]:
        out = cgmh.generate_many(kw, small_lm, **options, **same)
        return [[s.log_target for s in row] for row in out]

    for searching in ({"anneal": True, "pool": 4}, {}):  # on when searching and sampling
        default = targets(**searching)
        assert default == targets(backoff=cgmh.DEFAULT_BACKOFF, **searching)
        assert default != targets(backoff=None, **searching)
    # a Python scorer has no n-gram table to check
    toy = ToyBigram(WORDS, seed=5)
    assert cgmh.generate(["cat"], toy, anneal=True, **same)  # "auto": no penalty, no error
    with pytest.raises(ValueError, match="native n-gram"):
        cgmh.generate(["cat"], toy, backoff=(2, 1.0), **same)


def test_backoff_rate_counts_what_the_corpus_lacks(small_lm):
    from kexue.scorers import backoff_rate, resolve

    scorer = resolve(small_lm)
    drawn = scorer._cgmh_native.sample(200, 0, 100)
    sentences = [[scorer.word(i) for i in ids] for ids, _ in drawn]
    want = sum(unseen_ngrams(t) for t in sentences) / sum(len(t) + 1 for t in sentences)
    assert math.isclose(backoff_rate(scorer, 3, sentences=200), want)
    assert 0 < want < 1
    # the binding counts by the target's own rule, words the LM lacks included
    made_up = [["cat", "the", "dog"], ["mat", "zebra"], []]
    ids = [[scorer.word_id(w) or 10**6 for w in t] for t in made_up]
    for order in (2, 3):
        want = [unseen_ngrams(t, order) for t in made_up]
        assert scorer._cgmh_native.backed_off(ids, order) == want
    with pytest.raises(ValueError, match="order must be in 2..=3"):
        scorer._cgmh_native.backed_off(ids, 4)
    with pytest.raises(ValueError, match="sentences"):
        scorer._cgmh_native.backed_off([[1, -2]], 3)


@pytest.mark.parametrize(
    "backoff, match",
    [((1, 1.0), "backoff order"), ((4, 1.0), "backoff order"), ((3, -1.0), "backoff cost"),
     ((3, math.nan), "backoff cost"), ("strong", "backoff must be"), ((3,), "backoff must be")],
)  # fmt: skip
def test_bad_backoff(small_lm, backoff, match):
    with pytest.raises(ValueError, match=match):
        cgmh.generate(["dog"], small_lm, anneal=True, backoff=backoff)


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
    best = cgmh.generate(["cat"], lm, n=8, steps=150, seed=2, anneal=True, return_trace=True,
                         distinct=False)  # fmt: skip
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
        assert s.text.endswith("。")
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
        ({"moves": {"replace": 0, "insert": 0}}, ValueError, "moves"),
        ({"moves": {"swap": 1}}, ValueError, "moves"),
        ({"moves": [1, 1]}, TypeError, "moves"),
        ({"forms": "fuzzy"}, ValueError, "forms"),
        ({"length": "long"}, ValueError, "length"),
        ({"length": (5, -1.0)}, ValueError, "length"),
        ({"block": "dog"}, TypeError, "block"),
        ({"order": "free", "keywords": ["cat"] * 17, "max_len": 30}, ValueError, "free"),
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


@pytest.mark.parametrize("index", ["min", "product", "forward"])
def test_nan_anywhere_in_a_next_word_distribution_is_a_clear_error(index):
    """The candidate scan skips blocks of words below the K-th best: a NaN deep in such a
    block (its other words far below) is still found."""
    words = [f"w{i}" for i in range(40)]

    class NaNDeep(ToyBigram):
        def forward_logprobs(self, ids, pos):
            out = np.full(self.vocab_size, -50.0, np.float32)
            out[:2] = -1.0  # the top 2 are kept first
            out[37] = np.nan
            return out

    with pytest.raises(ValueError, match="NaN in a next-word distribution"):
        cgmh.generate(["w5"], NaNDeep(words), steps=20, top_k=2, index=index)


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
