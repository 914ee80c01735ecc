"""kexue.text: tokenizers, detokenisation, sentence formatting, keyword forms, word list."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue.text import (
    WORDS,
    RegexTokenizer,
    as_sentence,
    blocked_words,
    detokenize,
    english_forms,
    tokenize,
)


def test_words_tokenizer_keeps_clitics_and_runs_of_one_mark():
    assert tokenize("A dog's ball... Wow!! (yes)", "words") == [
        "A", "dog's", "ball", "...", "Wow", "!!", "(", "yes", ")",
    ]  # fmt: skip
    assert tokenize("café 3,5 x_y", "words") == ["café", "3", ",", "5", "x", "_", "y"]
    assert tokenize("北京 美食", "chars") == ["北", "京", "美", "食"]
    assert tokenize(" a  b ") == ["a", "b"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["A", "dog", "ran", ",", ".", "!", "(", ")", "'s", "3"]),
                max_size=12))  # fmt: skip
def test_detokenized_words_tokenize_back(tokens):
    """Joining then splitting with the same rule gives the tokens back (up to the clitic and
    mark runs that the tokenizer merges)."""
    text = detokenize(tokens, "words")
    assert "".join(tokenize(text, "words")) == "".join(tokens)
    assert "  " not in text


def test_detokenize_spacing():
    assert detokenize(["Hello", ",", "world", "!"]) == "Hello, world!"
    assert detokenize(["a", '"', "b", "c", '"', "d"]) == 'a "b c" d'
    assert detokenize(["(", "x", ")", "y"]) == "(x) y"
    assert detokenize(["广州", "的", "美食节", "。"]) == "广州的美食节。"
    assert detokenize(["北", "京"], "chars") == "北京"


def test_as_sentence():
    assert as_sentence("a dog catches a frisbee") == "A dog catches a frisbee."
    assert as_sentence("is it raining?") == "Is it raining?"
    assert as_sentence('"hello" she said.') == '"Hello" she said.'
    assert as_sentence("广州的美食节又开幕了") == "广州的美食节又开幕了。"
    assert as_sentence("") == ""
    # a pause the LM wrote last is not left before the final mark
    assert as_sentence("龙眼、荔枝、") == "龙眼、荔枝。" and as_sentence("美食节、。") == "美食节。"
    assert as_sentence("a dog ,") == "A dog." and as_sentence('a dog , ."') == 'A dog."'
    assert as_sentence("a, b: c.") == "A, b: c."
    # a run of marks at the end (a padding the LM wrote) ends as its first mark
    assert as_sentence("wear the phone talking........") == "Wear the phone talking."
    assert as_sentence("what?!") == "What?" and as_sentence("a dog , . . .") == "A dog."
    assert as_sentence('he said "go.."') == 'He said "go."' and as_sentence("好。。") == "好。"
    assert as_sentence("wait... then go") == "Wait... then go."  # only the end


def test_regex_tokenizer_pickles_and_compares():
    tok = RegexTokenizer(r"[A-Za-z0-9]+(?:'[a-z]+)?|[^\sA-Za-z0-9]")
    assert tok("It's 5 o'clock!") == ["It's", "5", "o'clock", "!"]
    back = pickle.loads(pickle.dumps(tok))
    assert back == tok and hash(back) == hash(tok) and back("a b") == ["a", "b"]
    assert pickle.loads(pickle.dumps(WORDS)) == WORDS


@pytest.mark.parametrize(
    "word, has, lacks",
    [
        ("throw", {"threw", "thrown", "throwing", "throws", "Throw"}, set()),
        ("ran", {"run", "running", "runs"}, set()),
        ("lay", {"laid", "laying", "lays"}, {"lying", "lie"}),  # lay, the lemma
        ("saw", {"sawing", "saws"}, {"seen", "see"}),
        ("good", {"better", "best"}, set()),
        ("sle", set(), {"sled"}),  # a guessed inflection is another word
    ],
)
def test_english_forms(word, has, lacks):
    forms = english_forms(word)
    assert forms[0] == word and len(forms) == len(set(forms))
    assert has <= set(forms) and not lacks & set(forms)


def test_tokenizer_errors():
    with pytest.raises(ValueError, match="tokenizer"):
        tokenize("a", "spaces")
    with pytest.raises(TypeError, match="text"):
        tokenize(3, "words")  # type: ignore[arg-type]


def test_blocked_words_come_from_the_package_list():
    assert set(blocked_words(["Fuck", "dog", "shit", "table"])) == {"Fuck", "shit"}
