"""kexue.lm: KenLM equality, round trips, distributions, bad input.

The reference is the ``kenlm`` module (test extra): our ARPA files loaded into
``kenlm.Model`` must give our scores. When ``KEXUE_LMPLZ`` names an ``lmplz`` binary, the
estimator itself is checked against it too (CI has no lmplz; see benches/bench_lm.py).
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kexue
from kexue import cli
from kexue.lm import NgramLM

kenlm = pytest.importorskip("kenlm")


def synthetic_corpus(n_sentences: int, seed: int, vocab: int = 3000) -> list[str]:
    """Text from a random chain: a Zipfian word distribution plus, for each word, a short
    Zipfian list of likely successors (repeated phrases, as in real text), so Kneser–Ney
    count-of-counts are non-degenerate up to order 7; 5% blank lines, some ``<unk>``."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab)] + ["<unk>"]
    cum = np.cumsum(1.0 / np.arange(1, len(words) + 1) ** 1.05)
    cum /= cum[-1]
    succ = rng.integers(0, len(words), size=(len(words), 40))
    scum = np.cumsum(1.0 / np.arange(1, 41) ** 2)
    scum /= scum[-1]
    lines = []
    for _ in range(n_sentences):
        n = int(rng.integers(1, 20))
        u = rng.random((n, 3))
        w = int(np.searchsorted(cum, u[0, 0]))
        out = [w]
        for i in range(1, n):
            if u[i, 0] < 0.85:
                w = int(succ[w, np.searchsorted(scum, u[i, 1])])
            else:
                w = int(np.searchsorted(cum, u[i, 2]))
            out.append(w)
        lines.append(" ".join(words[i] for i in out) if u[0, 1] > 0.05 else "")
    return lines


TRAIN = synthetic_corpus(4000, seed=1)
TEST = synthetic_corpus(300, seed=2) + ["w1 never-seen w2", "", "w3"]


@pytest.fixture(scope="module", params=[3, 5])
def lm(request) -> NgramLM:
    return NgramLM.build(TRAIN, order=request.param, progress=False)


@pytest.fixture(scope="module")
def arpa(lm: NgramLM, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("arpa") / f"o{lm.order}.arpa")
    lm.save_arpa(path)
    return path


# --- equality with kenlm ------------------------------------------------------------------


@pytest.mark.parametrize("bos,eos", [(True, True), (False, True), (True, False), (False, False)])
def test_scores_equal_kenlm(lm: NgramLM, arpa: str, bos: bool, eos: bool) -> None:
    ref = kenlm.Model(arpa)
    ours = [lm.score(s, bos=bos, eos=eos) for s in TEST]
    theirs = [ref.score(s, bos=bos, eos=eos) for s in TEST]
    np.testing.assert_array_equal(ours, theirs)  # the same float32 sums, bit for bit
    batch = lm.logprob(TEST, bos=bos, eos=eos) / math.log(10)
    np.testing.assert_allclose(batch, theirs, rtol=0, atol=1e-4)


def test_full_scores_equal_kenlm(lm: NgramLM, arpa: str) -> None:
    ref = kenlm.Model(arpa)
    for s in TEST[:50]:
        ours = lm.full_scores(s)
        theirs = list(ref.full_scores(s))
        assert [n for _, n, _ in ours] == [n for _, n, _ in theirs]
        assert [o for _, _, o in ours] == [o for _, _, o in theirs]
        np.testing.assert_allclose([p for p, _, _ in ours], [p for p, _, _ in theirs], atol=1e-5)


def test_perplexity_equals_kenlm(lm: NgramLM, arpa: str) -> None:
    ref = kenlm.Model(arpa)
    total = sum(ref.score(s) for s in TEST)
    tokens = sum(len(s.split()) + 1 for s in TEST)
    assert lm.perplexity(TEST) == pytest.approx(10 ** (-total / tokens), rel=1e-6)
    assert lm.perplexity(TEST[0]) == pytest.approx(ref.perplexity(TEST[0]), rel=1e-5)


HAND_ARPA = """
\\data\\
ngram 1=6
ngram 2=5
ngram 3=2

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.30103
-0.69897\t</s>
-0.52288\ta\t-0.2
-0.82391\tb\t-0.1
-1.2\tc

\\2-grams:
-0.3\t<s> a\t-0.05
-0.4\ta b\t-0.1
-0.5\tb </s>
-0.2\tb c
-0.6\t<s> b

\\3-grams:
-0.1\t<s> a b
-0.2\ta b c

\\end\\
"""


def test_reads_foreign_arpa_like_kenlm(tmp_path) -> None:
    # SRILM-style quirks: -99 for <s>, missing back-offs, n-grams out of order.
    path = tmp_path / "hand.arpa"
    path.write_text(HAND_ARPA)
    ours, ref = NgramLM.load_arpa(path), kenlm.Model(str(path))
    for s in ["a b c", "a b", "b", "c c a b </s>", "x a b", "", "a a a b b c"]:
        for bos in (True, False):
            assert ours.score(s, bos=bos) == pytest.approx(ref.score(s, bos=bos), abs=1e-5)


def test_missing_suffixes_are_filled_in_as_kenlm_does(tmp_path) -> None:
    # SRILM's pruning can drop "b c" while keeping "a b c": KenLM adds the suffix back
    # (with the backed-off probability); without it "a b c" could never be reached
    path = tmp_path / "pruned.arpa"
    path.write_text(HAND_ARPA.replace("ngram 2=5", "ngram 2=4").replace("-0.2\tb c\n", ""))
    ours, ref = NgramLM.load_arpa(path), kenlm.Model(str(path))
    for s in ["a b c", "b c", "c", "a b c c", "<s> a b c </s>", "x b c a b c"]:
        for bos in (True, False):
            assert ours.score(s, bos=bos) == pytest.approx(ref.score(s, bos=bos), abs=1e-5)
    for s in ["a b c", "x b c"]:
        assert [n for _, n, _ in ours.full_scores(s)] == [n for _, n, _ in ref.full_scores(s)]


def test_missing_contexts_are_filled_in_as_kenlm_does(tmp_path) -> None:
    # "a b c" without "a b": KenLM adds the context (backed-off probability, back-off 0),
    # so the state can hold "a b" and reach "a b c"
    path = tmp_path / "pruned.arpa"
    path.write_text(HAND_ARPA.replace("ngram 2=5", "ngram 2=4").replace("-0.4\ta b\t-0.1\n", ""))
    ours, ref = NgramLM.load_arpa(path), kenlm.Model(str(path))
    for s in ["a b c", "a b", "x a b c", "c a b c </s>", "b a b"]:
        for bos in (True, False):
            assert ours.score(s, bos=bos) == pytest.approx(ref.score(s, bos=bos), abs=1e-5)
            assert [n for _, n, _ in ours.full_scores(s, bos=bos)] == [
                n for _, n, _ in ref.full_scores(s, bos=bos)
            ]


LMPLZ = os.environ.get("KEXUE_LMPLZ")


@pytest.mark.skipif(not LMPLZ, reason="set KEXUE_LMPLZ to an lmplz binary")
@pytest.mark.parametrize("order", [2, 4])
def test_estimator_equals_lmplz(tmp_path, order: int) -> None:
    text = tmp_path / "train.txt"
    text.write_text("\n".join(TRAIN) + "\n")
    ref_arpa = tmp_path / "ref.arpa"
    with open(text, "rb") as fin, open(ref_arpa, "wb") as fout:
        subprocess.run(
            [LMPLZ, "-o", str(order), "--skip_symbols"],
            stdin=fin,
            stdout=fout,
            stderr=subprocess.DEVNULL,
            check=True,
        )
    ours = NgramLM.build(text, order=order, skip_symbols=True, backward=False, progress=False)
    ours.save_arpa(tmp_path / "ours.arpa")
    a, b = read_arpa_entries(tmp_path / "ours.arpa"), read_arpa_entries(ref_arpa)
    assert a.keys() == b.keys()
    diff = max(max(abs(a[k][0] - b[k][0]), abs(a[k][1] - b[k][1])) for k in b)
    assert diff < 1e-4


def read_arpa_entries(path) -> dict[str, tuple[float, float]]:
    out = {}
    for line in open(path, encoding="utf-8"):
        fields = line.rstrip("\n").split("\t")
        if len(fields) >= 2:
            out[fields[1]] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
    return out


# --- conventions ---------------------------------------------------------------------------


def test_unk_conventions() -> None:
    counted = NgramLM.build(TRAIN, order=3, backward=False, progress=False)
    skipped = NgramLM.build(TRAIN, order=3, backward=False, progress=False, skip_symbols=True)
    n_unk = sum(s.split().count("<unk>") for s in TRAIN)
    assert n_unk > 0
    # Counted as a word: <unk> has its own n-grams and a unigram probability from its count.
    assert counted.counts[1] > skipped.counts[1]
    assert counted.score("<unk>") > skipped.score("<unk>")
    assert counted.full_scores("w1 <unk>")[1][2] is True  # still reported as OOV, like kenlm


def test_min_count_maps_rare_words_to_unk() -> None:
    full = NgramLM.build(TRAIN, order=2, backward=False, progress=False)
    pruned = NgramLM.build(TRAIN, order=2, backward=False, progress=False, min_count=5)
    counts: dict[str, int] = {}
    for s in TRAIN:
        for w in s.split():
            counts[w] = counts.get(w, 0) + 1
    kept = {w for w, c in counts.items() if c >= 5} | {"<unk>", "<s>", "</s>"}
    assert set(pruned.vocab) == kept
    assert len(pruned) < len(full)


def test_lowercase_and_tokenizer() -> None:
    lines = [s.upper().replace(" ", ",") for s in TRAIN[:2000]]
    lm = NgramLM.build(
        lines, order=2, lowercase=True, tokenizer=lambda s: s.split(","), progress=False
    )
    plain = NgramLM.build(TRAIN[:2000], order=2, progress=False)
    assert lm.vocab == plain.vocab
    assert lm.score("W1,W2") == pytest.approx(plain.score("w1 w2"), abs=1e-6)
    assert lm.score(["w1", "w2"]) == pytest.approx(plain.score("w1 w2"), abs=1e-6)


def test_batch_equals_loop_and_threads() -> None:
    lm = NgramLM.build(TRAIN, order=4, progress=False)
    many = TEST * 20
    loop = np.array([lm.logprob(s) for s in many])
    kexue.set_num_threads(1)
    try:
        one = lm.logprob(many)
    finally:
        kexue.set_num_threads(0)
    np.testing.assert_array_equal(one, lm.logprob(many))
    np.testing.assert_allclose(one, loop, rtol=0, atol=1e-12)
    assert lm.score(TEST[0]) == pytest.approx(float(loop[0]) / math.log(10), abs=1e-4)
    np.testing.assert_allclose(lm.token_logprobs(TEST[0]).sum(), loop[0], atol=1e-9)


def test_backward_model_is_the_reversed_estimator() -> None:
    lm = NgramLM.build(TRAIN, order=3, progress=False)
    rev = NgramLM.build([" ".join(s.split()[::-1]) for s in TRAIN], order=3, progress=False)
    assert lm.reverse is not None and lm.reverse.vocab == lm.vocab
    for s in TEST[:30]:
        back = " ".join(s.split()[::-1])
        assert lm.reverse.score(back) == pytest.approx(rev.score(back), abs=1e-5)
    # Unigram models are symmetric; higher orders differ only by the estimator's asymmetry.
    uni = NgramLM.build(TRAIN, order=1, progress=False)
    for s in TEST[:30]:
        back = " ".join(s.split()[::-1])
        assert uni.reverse.score(back) == pytest.approx(uni.score(s), abs=1e-4)
    fwd = lm.logprob(TEST)
    bwd = lm.reverse.logprob([" ".join(s.split()[::-1]) for s in TEST])
    assert np.corrcoef(fwd, bwd)[0, 1] > 0.95
    assert np.abs(fwd - bwd).mean() < 0.1 * np.abs(fwd).mean()


# --- distributions -------------------------------------------------------------------------

VOCAB = sorted({w for s in TRAIN for w in s.split()})


@settings(max_examples=60, deadline=None)
@given(
    order=st.sampled_from([1, 2, 3, 5]),
    context=st.lists(st.sampled_from(VOCAB + ["unseen"]), max_size=6),
    bos=st.booleans(),
)
def test_next_word_distribution_sums_to_one(order: int, context: list[str], bos: bool) -> None:
    lm = MODELS.setdefault(order, NgramLM.build(TRAIN, order=order, progress=False))
    logp = lm.next_logprobs(context, bos=bos)
    assert logp.shape == (len(lm),) and logp[lm.vocab.index("<s>")] == -np.inf
    assert abs(np.exp(logp).sum() - 1.0) < 1e-6
    cands = ["w1", "</s>", "unseen", context[-1] if context else "w2"]
    sub = lm.next_logprobs(context, cands, bos=bos)
    idx = [lm.vocab.index(c) if c in lm.vocab else 0 for c in cands]
    np.testing.assert_array_equal(sub, logp[idx])
    # Consistent with scoring the whole sentence token by token.
    sent = lm.token_logprobs(context + ["w1"], bos=bos, eos=False)
    assert sent[-1] == pytest.approx(logp[lm.vocab.index("w1")], abs=1e-9)


MODELS: dict[int, NgramLM] = {}


# --- round trips ---------------------------------------------------------------------------


def test_binary_and_arpa_round_trips(lm: NgramLM, arpa: str, tmp_path) -> None:
    ref = lm.logprob(TEST)
    lm.save(tmp_path / "m.kxlm")
    back = NgramLM.load(tmp_path / "m.kxlm")
    np.testing.assert_array_equal(back.logprob(TEST), ref)
    rev = [" ".join(s.split()[::-1]) for s in TEST]
    np.testing.assert_array_equal(back.reverse.logprob(rev), lm.reverse.logprob(rev))
    np.testing.assert_array_equal(NgramLM.load_arpa(arpa).logprob(TEST), ref)
    pick = pickle.loads(pickle.dumps(lm))
    np.testing.assert_array_equal(pick.logprob(TEST), ref)
    assert pick.vocab == lm.vocab and pick.order == lm.order and len(pick) == len(lm)
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must be renamed away"


def test_file_corpus_equals_list_corpus(tmp_path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(TRAIN).encode() + b"\n")
    a = NgramLM.build(path, order=3, progress=False)
    b = NgramLM.build(TRAIN, order=3, progress=False)
    assert a.vocab == b.vocab
    np.testing.assert_array_equal(a.logprob(TEST), b.logprob(TEST))


# --- from_counts ---------------------------------------------------------------------------


def test_from_counts_is_a_normalised_bigram_model(tmp_path) -> None:
    uni = {"the": 500, "cat": 60, "dog": 40, "sat": 50, "on": 80, "mat": 20}
    bi = {("the", "cat"): 30, ("the", "dog"): 20, ("cat", "sat"): 25, ("sat", "on"): 30}
    lm = NgramLM.from_counts(uni, bi, eos_count=100)
    assert lm.order == 2 and lm.reverse is None
    for ctx in ["", "the", "cat", "mat", "zebra"]:
        assert np.exp(lm.next_logprobs(ctx)).sum() == pytest.approx(1.0, abs=1e-6)
    p = np.exp(lm.next_logprobs("the", ["cat", "dog"]))
    assert p[0] > p[1] > np.exp(lm.next_logprobs("mat", ["dog"]))[0]
    (tmp_path / "u.txt").write_text("".join(f"{w} {c}\n" for w, c in uni.items()))
    (tmp_path / "b.txt").write_text("".join(f"{a} {b} {c}\n" for (a, b), c in bi.items()))
    same = NgramLM.from_counts(tmp_path / "u.txt", tmp_path / "b.txt", eos_count=100)
    np.testing.assert_array_equal(
        same.logprob(["the cat sat on the mat"]), lm.logprob(["the cat sat on the mat"])
    )
    (tmp_path / "bad.txt").write_text("the 5\ncat x\n")
    with pytest.raises(ValueError, match="bad.txt: line 2"):
        NgramLM.from_counts(tmp_path / "bad.txt", bi)


@pytest.mark.parametrize("word", ["", "a b", "a\tb", "a\0b", "a\u00a0b"])
def test_from_counts_refuses_words_no_file_or_query_could_hold(word: str) -> None:
    with pytest.raises(ValueError, match="words must be non-empty"):
        NgramLM.from_counts({"the": 5, word: 3}, {})


def test_from_counts_refuses_counts_summing_past_64_bits() -> None:
    with pytest.raises(ValueError, match="unigram_counts"):
        NgramLM.from_counts({"a": 2**63, "b": 2**63}, {}, eos_count=1)
    with pytest.raises(ValueError, match="bigrams"):
        NgramLM.from_counts({"a": 5, "b": 5}, {("a", "b"): 2**63, ("b", "a"): 2**63})


def test_bos_is_never_predicted_even_by_name() -> None:
    lm = NgramLM.from_counts({"a": 5, "b": 3}, {("a", "b"): 2}, eos_count=2)
    got = lm.next_logprobs("a", ["<s>", "b"])
    assert got[0] == -np.inf and got[1] == lm.next_logprobs("a")[lm.vocab.index("b")]


def test_arpa_fields_split_on_spaces_and_tabs_only(tmp_path) -> None:
    # lmplz keeps U+00A0 inside a word ("10\u00a0000"); kexue's queries split there, so
    # such a word is refused by name rather than misread as extra fields
    path = tmp_path / "nbsp.arpa"
    path.write_text(HAND_ARPA.replace("-1.2\tc\n", "-1.2\tc\u00a0d\n", 1), encoding="utf-8")
    assert "c\u00a0d" in path.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="holds whitespace or NUL"):
        NgramLM.load_arpa(path)


def test_from_counts_symspell_tables() -> None:
    symspell = pytest.importorskip("symspellpy")
    d = os.path.dirname(symspell.__file__)
    lm = NgramLM.from_counts(
        os.path.join(d, "frequency_dictionary_en_82_765.txt"),
        os.path.join(d, "frequency_bigramdictionary_en_243_342.txt"),
    )
    assert len(lm) > 80_000
    good, bad = lm.logprob(["the cat sat on the mat", "mat the on sat cat the"])
    assert good > bad + 5
    assert np.exp(lm.next_logprobs("of")).sum() == pytest.approx(1.0, abs=1e-6)


# --- bad input -----------------------------------------------------------------------------


def test_bad_build_inputs(tmp_path) -> None:
    with pytest.raises(ValueError, match="no words"):
        NgramLM.build([], progress=False)
    with pytest.raises(ValueError, match="no words"):
        NgramLM.build(["", "  ", "\t"], progress=False)
    for order in (0, 8, -1):
        with pytest.raises(ValueError, match="order must be between 1 and 7"):
            NgramLM.build(TRAIN, order=order, progress=False)
    with pytest.raises(TypeError, match="order"):
        NgramLM.build(TRAIN, order=2.5, progress=False)
    with pytest.raises(ValueError, match="discount_fallback"):
        NgramLM.build(["a b c", "a b"], order=2, progress=False)
    with pytest.raises(TypeError, match="corpus"):
        NgramLM.build(123, progress=False)
    with pytest.raises(ValueError, match="min_count"):
        NgramLM.build(TRAIN, min_count=0, progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\nanother\nbad \xff\xfe byte\n")
    for kwargs in ({}, {"lowercase": True}):
        with pytest.raises(ValueError, match=r"bad\.txt: line 3: invalid UTF-8"):
            NgramLM.build(bad, progress=False, **kwargs)
    with pytest.raises(OSError, match="missing.txt"):
        NgramLM.build(tmp_path / "missing.txt", progress=False)


def test_bad_model_files(arpa: str, tmp_path) -> None:
    text = open(arpa, encoding="utf-8").read()
    lines = text.split("\n")
    cases = {
        "truncated.arpa": ("\n".join(lines[: len(lines) // 2]), "file ends where"),
        "corrupt.arpa": (
            text.replace("\\2-grams:", "\\2-grums:"),
            r"line \d+: expected \\2-grams:",
        ),
        "nonumber.arpa": (text.replace("\t", "\tx\t", 3), r"line \d+"),
        "header.arpa": ("hello\n" + text, r"header.arpa: line 1: expected \\data\\"),
    }
    for name, (content, msg) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(ValueError, match=msg) as e:
            NgramLM.load_arpa(path)
        assert name in str(e.value)
    utf = tmp_path / "utf.arpa"
    utf.write_bytes(text.encode().replace(b"w1", b"w\xff", 1))
    with pytest.raises(ValueError, match=r"utf.arpa: line \d+: invalid UTF-8"):
        NgramLM.load_arpa(utf)

    lm = NgramLM.load_arpa(arpa)
    good = tmp_path / "m.kxlm"
    lm.save(good)
    data = good.read_bytes()
    for name, content, msg in [
        ("short.kxlm", data[: len(data) // 2], "truncated"),
        ("tiny.kxlm", data[:5], "truncated"),
        ("magic.kxlm", b"NOTALM\0\0" + data[8:], "magic"),
        ("version.kxlm", data[:8] + b"\x07" + data[9:], "version 7"),
        ("flip.kxlm", data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:], "checksum"),
        ("arpa.kxlm", text.encode(), "magic"),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=msg) as e:
            NgramLM.load(path)
        assert name in str(e.value)
    with pytest.raises(OSError):
        NgramLM.load(tmp_path / "nope.kxlm")


def test_bad_query_inputs(lm: NgramLM) -> None:
    with pytest.raises(TypeError):
        lm.logprob(42)
    with pytest.raises(TypeError):
        lm.logprob([["a", 1]])
    with pytest.raises(TypeError):
        lm.next_logprobs("w1", "w2")
    with pytest.raises(ValueError):
        lm.perplexity([])
    assert lm.logprob([]).shape == (0,)


# --- CLI -----------------------------------------------------------------------------------


def test_cli(tmp_path, capsys, monkeypatch) -> None:
    import io

    corpus = tmp_path / "train.txt"
    corpus.write_text("\n".join(TRAIN) + "\n")
    test = tmp_path / "test.txt"
    test.write_text("\n".join(TEST) + "\n")
    model = tmp_path / "m.kxlm"
    assert cli.main(["lm", "build", str(corpus), "-o", str(model), "--order", "3"]) == 0
    assert (
        cli.main(
            ["lm", "build", str(corpus), "-o", str(tmp_path / "m.arpa"), "--order", "3", "--arpa"]
        )
        == 0
    )
    lm = NgramLM.load(model)
    capsys.readouterr()
    for m in (model, tmp_path / "m.arpa"):
        assert cli.main(["lm", "ppl", str(m), str(test)]) == 0
        out = capsys.readouterr().out
        assert f"{lm.perplexity(TEST):.4f}" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("w1 w2\n\nw3 w4 w5\n"))
    assert cli.main(["lm", "score", str(model)]) == 0
    got = [float(x) for x in capsys.readouterr().out.split()]
    np.testing.assert_allclose(got, [lm.score(s) for s in ["w1 w2", "", "w3 w4 w5"]], atol=1e-6)


PTB = os.path.join(os.environ.get("KEXUE_DATA", "/work/shared/data"), "ptb")


@pytest.mark.skipif(not os.path.exists(os.path.join(PTB, "ptb.train.txt")), reason="no PTB data")
def test_published_ptb_anchor() -> None:
    # KN5 on PTB train, <unk> counted as a word: test perplexity 141.2 (Mikolov et al.;
    # 141.19 with KenLM, per the data README).
    lm = NgramLM.build(os.path.join(PTB, "ptb.train.txt"), order=5, backward=False, progress=False)
    lines = open(os.path.join(PTB, "ptb.test.txt"), encoding="utf-8").read().splitlines()
    assert lm.perplexity(lines) == pytest.approx(141.19, abs=0.01)
