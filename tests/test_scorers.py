"""kexue.scorers: native n-gram scorer vs its Python protocol path, HFCausalLM on a tiny
random GPT-2, the embedded default LM, and the `kexue generate` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kexue import _native, cgmh
from kexue.cli import main
from kexue.scorers import HFCausalLM, NgramScorer, default_lm

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat ran to the dog",
    "the dog ran home",
    "a cat sat on a dog",
    "the bird sang on the tree",
]


@pytest.fixture(scope="module")
def ngram() -> NgramScorer:
    corpus = _native.NgramCorpus()
    corpus.add_sentences(SENTENCES)
    forward, backward = corpus.build(3, backward=True, discount_fallback=True)
    return NgramScorer(forward, backward)


class PythonPath:
    """The same scorer seen only through the Python protocol (no native fast path)."""

    def __init__(self, inner: NgramScorer) -> None:
        self.inner = inner
        self.vocab_size = inner.vocab_size

    def __getattr__(self, name):
        if name == "_cgmh_native":
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_native_and_python_paths_agree(ngram):
    """The Rust n-gram scorer and the NgramModel's Python queries give the same chains."""
    kw = [["cat", "mat"], ["dog"], ["zebra", "the"]]
    same = {"n": 3, "steps": 60, "seed": 4, "top_k": 5, "backoff": None}  # (a native-only term)
    a = cgmh.generate_many(kw, ngram, **same)
    b = cgmh.generate_many(kw, PythonPath(ngram), **same)
    for ra, rb in zip(a, b):
        for sa, sb in zip(ra, rb):
            assert sa.tokens == sb.tokens
            assert math.isclose(sa.logprob, sb.logprob, rel_tol=1e-6, abs_tol=1e-6)
    for keywords, row in zip(kw, a):
        for s in row:
            assert all(k in s.tokens for k in keywords)
            ids = [ngram.word_id(w) for w in s.tokens]
            ids = [ngram.vocab_size if i is None else i for i in ids]  # unknown: past the vocab
            assert math.isclose(s.logprob, ngram.sentence_logprob(ids))


def test_ngram_scorer_distributions(ngram):
    ids = [ngram.word_id(w) for w in "the cat sat".split()]
    f = ngram.forward_logprobs(ids, 1)
    assert f.shape == (ngram.vocab_size,) and np.all(np.isneginf(f[:3]))
    assert math.isclose(float(np.exp(f[3:].astype(np.float64)).sum()) + 0.0, 1.0, abs_tol=0.2)
    b = ngram.backward_logprobs(ids, 1)
    assert b is not None and b.shape == f.shape
    assert ngram.word_id("<s>") is None and ngram.word_id("qqq") is None
    with pytest.raises(TypeError, match="NgramLM"):
        NgramScorer(object())


@pytest.mark.torch
def test_hf_causal_lm_on_a_tiny_random_gpt2(ngram):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=64, n_embd=16, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)

    class CharTokenizer:  # a byte-level stand-in: no download
        bos_token_id = eos_token_id = 0

        def encode(self, text):
            return [1 + (ord(c) % 63) for c in text]

        def decode(self, ids):  # for the length prior's sampled sentences
            return "".join(chr(96 + i % 27) if i % 27 else " " for i in ids)

    tok = CharTokenizer()
    lm = HFCausalLM(model, tok, candidates=ngram, batch_size=4)
    texts = ["the cat", "a dog ran", "x"]
    got = lm.score_texts(texts)
    for t, g in zip(texts, got):  # against an unbatched, unpadded forward pass
        ids = torch.tensor([[0, *tok.encode(t), 0]])
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        want = logp.gather(-1, ids[0, 1:, None]).sum().item()
        assert math.isclose(g, want, rel_tol=1e-4, abs_tol=1e-4)
    out = cgmh.generate(["cat", "unseenword"], lm, n=2, steps=15, seed=1, top_k=4)
    for s in out:
        assert "cat" in s.tokens and "unseenword" in s.tokens
        # scored as the text the user gets: sentence case, final punctuation
        assert math.isclose(s.logprob, lm.score_texts([s.text])[0], rel_tol=1e-4, abs_tol=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        HFCausalLM(model, tok, candidates=ngram, batch_size=0)


def test_default_lm_is_an_english_sentence_model():
    lm = default_lm()
    assert lm.vocab_size > 9000 and lm.word_id("the") is not None
    assert lm.text_tokenizer == "words"

    def logp(text: str) -> float:
        return lm.sentence_logprob([lm.word_id(w) for w in text.split()])

    assert logp("A dog catches a frisbee .") > logp("frisbee a catches dog A .")
    assert logp("A man sits on a bench .") > logp("A man sits on a bench the")  # a true end
    out = cgmh.generate(["music", "night"], n=2, steps=50, anneal=True)
    for s in out:
        assert {"music", "night", "nights"} & set(s.tokens) and s.text[0].isupper()
        assert s.text[-1] in ".!?" and s.text != out[0].text or s is out[0]
    unseen = cgmh.generate(["zeppelinoid", "dog"], steps=40)[0]  # unknown words still work
    assert "zeppelinoid" in unseen.tokens


def test_default_lm_never_writes_an_offensive_word():
    from kexue.text import blocked_words

    lm = default_lm()
    blocked = set(blocked_words(lm.word(i) for i in range(lm.vocab_size)))
    assert len(blocked) >= 10
    out = cgmh.generate_many([["night", "party"], ["man", "fight"], ["kill", "game"]], n=3,
                             steps=80, anneal=True)  # fmt: skip
    for row, kws in zip(out, [["night", "party"], ["man", "fight"], ["kill", "game"]]):
        for s in row:
            assert not (blocked - set(kws)) & set(s.tokens), s.text
    assert any("kill" in s.tokens or "killed" in s.tokens for s in out[2])  # keywords excepted
    free = cgmh.generate(["night", "party"], n=3, steps=80, block=None)
    assert len(free) == 3


def test_cli_generate(capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 3) + "\n", encoding="utf-8")
    assert main(["generate", "cat", "dog", "--corpus", str(corpus), "--order", "3", "--n", "2",
                 "--steps", "40", "--json", "--anneal"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all({"cat", "dog"} <= set(r["tokens"]) for r in rows)
    # --no-backoff: the same run without the back-off penalty, as generate(backoff=None)
    from kexue.lm import NgramLM

    lm = NgramLM.build(str(corpus), order=3, progress=False, discount_fallback=True)
    runs = []
    for flags, backoff in [([], "auto"), (["--no-backoff"], None)]:
        assert main(["generate", "bird", "mat", "--corpus", str(corpus), "--order", "3",
                     "--n", "4", "--json", "--anneal", *flags]) == 0  # fmt: skip
        got = [json.loads(line)["tokens"] for line in capsys.readouterr().out.splitlines()]
        want = cgmh.generate(["bird", "mat"], lm, n=4, anneal=True, backoff=backoff)
        assert got == [s.tokens for s in want]
        runs.append(got)
    assert runs[0] != runs[1]
    inp = tmp_path / "kw.txt"
    inp.write_text("cat\nbird tree\n\n", encoding="utf-8")
    png = tmp_path / "trace.png"
    assert main(["generate", "--input", str(inp), "--corpus", str(corpus), "--n", "1",
                 "--steps", "30", "--plot", str(png)]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "cat" in lines[0].lower() and "tree" in lines[1].lower()
    assert png.stat().st_size > 1000
    with pytest.raises(SystemExit):
        main(["generate"])


def test_native_loop_is_thread_count_independent_and_takes_ngramlm(ngram):
    import kexue
    from kexue.lm import NgramLM

    kw = [["cat"], ["dog", "tree"], ["the", "the"]]
    kexue.set_num_threads(1)
    a = cgmh.generate_many(kw, ngram, n=5, steps=80, seed=3, anneal=True)
    kexue.set_num_threads(0)
    b = cgmh.generate_many(kw, ngram, n=5, steps=80, seed=3, anneal=True)
    assert [[s.tokens for s in r] for r in a] == [[s.tokens for s in r] for r in b]
    lm = NgramLM.build(SENTENCES, 3, progress=False, discount_fallback=True)
    out = cgmh.generate(["bird", "mat"], lm, n=2, steps=40)  # an NgramLM is wrapped natively
    assert all({"bird", "mat"} <= set(s.tokens) for s in out)
    src = "the cat sat on on the mat"
    fixed = cgmh.correct(src, lm, n=1, steps=100, weight=1.0)[0]
    # the best state seen is at least as good (per token) as the input, the chain's start
    assert fixed.log_target / (len(fixed.tokens) + 1) >= lm.logprob(src) / 8 - 1e-9


def test_a_scorer_of_a_loaded_lm_pickles_as_the_file_reference(tmp_path):
    import pickle

    from kexue.lm import NgramLM

    corpus = [f"the cat number {i} sat on the mat near dog {i}" for i in range(300)]
    path = str(tmp_path / "m.kxlm")
    NgramLM.build(corpus, order=3, progress=False, discount_fallback=True).save(path)
    scorer = NgramScorer(NgramLM.load(path))
    data = pickle.dumps(scorer)
    # the LM's path and digest, not its tables (workers share the mapped file)
    assert len(data) < 2_000 < len(pickle.dumps(scorer._forward))
    again = pickle.loads(data)
    a = cgmh.generate(["cat"], scorer, n=2, steps=30, seed=1)
    b = cgmh.generate(["cat"], again, n=2, steps=30, seed=1)
    assert [s.text for s in a] == [s.text for s in b]
