"""One tokenisation rule: the Rust splitter and Python (``kexue.lm.split_words``) agree on
which characters separate words, for every character of U+0000–U+3000."""

from __future__ import annotations

import numpy as np
import pytest

from kexue import _native
from kexue.lm import NgramLM, split_words

CHARS = [chr(c) for c in range(0x3001) if not 0xD800 <= c <= 0xDFFF]
SEPARATORS = {c for c in CHARS if c.isspace() or c == "\0"}


@pytest.fixture(scope="module")
def lm() -> NgramLM:
    return NgramLM.build(["a b", "b a a"] * 3, order=2, progress=False, discount_fallback=True)


def test_the_rule_is_python_whitespace_and_nul() -> None:
    assert {c for c in CHARS if len(split_words(f"a{c}b")) == 2} == SEPARATORS
    assert {"\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u3000", "\0"} <= SEPARATORS


def test_rust_scoring_splits_as_python(lm) -> None:
    for c in CHARS:
        text = f"a{c}b"
        _, _, oov = lm.native.token_scores(text, bos=True, eos=False)
        assert len(oov) == len(split_words(text)), repr(c)


def test_rust_training_splits_as_python() -> None:
    corpus = _native.NgramCorpus()
    lines = [f"a{c}b" for c in CHARS]
    corpus.add_sentences(lines)
    assert corpus.tokens() == sum(len(split_words(s)) for s in lines)
    text = "\n".join(line for line in lines if line.count("\n") == 0 and "\r" not in line)
    corpus = _native.NgramCorpus()
    corpus.add_text(text.encode("utf-8", "surrogatepass"), "text", 1)
    want = sum(len(split_words(s)) for s in text.split("\n"))
    assert corpus.tokens() == want


def test_perplexity_agrees_with_its_token_scores(lm) -> None:
    for c in ("\x1c", "\x1f", "\0", "\u2028", "\t"):
        s = f"a{c}b a"
        tokens = lm.token_logprobs(s)
        assert len(tokens) == len(split_words(s)) + 1
        np.testing.assert_allclose(lm.perplexity([s]), np.exp(-tokens.sum() / len(tokens)))
