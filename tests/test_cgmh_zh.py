"""用词造句: CGMH in Chinese — jieba segmentation travelling with the model, multi-word
keywords kept whole, Chinese output, language selection. Skips without the ``zh`` extra
(jieba, snownlp), except under ``CI=true``, which installs it."""

from __future__ import annotations

import os
import sys

import pytest

from kexue import cgmh, text
from kexue.lm import NgramLM
from kexue.scorers import NgramScorer

if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("jieba")

# Short sentences, segmented as the People's Daily corpus is (美食节 as 美食 节).
CORPUS = [
    "广州 的 美食 节 又 开幕 了 。",
    "今天 广州 的 美食 节 隆重 开幕 。",
    "北京 的 美食 很 多 。",
    "这 个 节 在 广州 开幕 。",
    "我们 在 北京 看 电影 。",
    "今天 的 电影 节 在 北京 开幕 了 。",
    "他 说 广州 的 天气 很 好 。",
    "美食 节 吸引 了 很 多 游客 。",
] * 3


@pytest.fixture(scope="module")
def zh_lm() -> NgramScorer:
    lm = NgramLM.build(
        [s.split() for s in CORPUS], 3, tokenizer="jieba", progress=False, discount_fallback=True
    )
    return NgramScorer(lm)


def contiguous(tokens: list[str], unit: list[str]) -> bool:
    return any(tokens[i : i + len(unit)] == unit for i in range(len(tokens) - len(unit) + 1))


@pytest.mark.parametrize(
    "sentence",
    ["广州的美食节又开幕了。", "今天，北京下雨了！", "我爱吃北京烤鸭和广州早茶？", "他说：“好。”"],
)
def test_jieba_segmentation_round_trips(sentence):
    tokens = text.tokenize(sentence, "jieba")
    assert len(tokens) > 2 and all(t.strip() == t and t for t in tokens)
    assert "".join(tokens) == sentence
    assert text.detokenize(tokens, "jieba") == sentence


def test_the_jieba_tokenizer_travels_with_the_model(zh_lm):
    assert zh_lm.text_tokenizer == "jieba"
    lm = NgramLM.build(["今天 开幕 。"] * 3, 2, tokenizer="jieba", progress=False,
                       discount_fallback=True)  # fmt: skip
    assert lm.tokenizer == "jieba"
    # A str line is segmented by jieba; the model then knows its words.
    built = NgramLM.build(["广州的美食节又开幕了"] * 3, 2, tokenizer="jieba", progress=False,
                          discount_fallback=True)  # fmt: skip
    words = set(NgramScorer(built)._words)
    assert {"广州", "开幕"} <= words


def test_missing_jieba_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)
    with pytest.raises(ImportError, match=r"kexue\[zh\]"):
        text.tokenize("广州", "jieba")


def test_keywords_are_matched_to_the_model_vocabulary(zh_lm):
    known = lambda w: zh_lm.word_id(w) is not None  # noqa: E731
    assert text.segment_keyword("美食节", "jieba", known) == ["美食", "节"]
    assert text.segment_keyword("广州", "jieba", known) == ["广州"]
    # Latin words are never split into letters the model happens to know.
    assert text.segment_keyword("xyz", "jieba", lambda w: len(w) == 1) == ["xyz"]


@pytest.mark.parametrize("order", ["free", "fixed"])
def test_multi_word_keywords_stay_whole_and_every_keyword_is_present(zh_lm, order):
    sets = [["广州", "美食节", "开幕"], ["美食节", "北京"], ["电影节", "开幕"], ["游客", "美食节"]]
    out = cgmh.generate_many(sets, zh_lm, n=4, steps=150, seed=3, order=order)
    for keywords, row in zip(sets, out):
        for s in row:
            for k in keywords:
                unit = text.segment_keyword(k, "jieba", lambda w: zh_lm.word_id(w) is not None)
                assert contiguous(s.tokens, unit), (k, s.tokens)
            assert " " not in s.text
            assert s.text.endswith("。") and "，。" not in s.text


def test_multi_word_keywords_move_whole_under_annealing(zh_lm):
    # The reorder move carries 美食 节 as one unit: many chains, all contiguous.
    out = cgmh.generate(["开幕", "美食节", "广州"], zh_lm, n=8, steps=300, seed=5, anneal=True)
    assert all(contiguous(s.tokens, ["美食", "节"]) for s in out)
    assert sum(s.proposed["reorder"] for s in out) > 0


def test_chinese_output_is_written_as_chinese():
    assert text.as_sentence("今天开幕，") == "今天开幕。"
    assert text.as_sentence("今天开幕") == "今天开幕。"
    assert text.as_sentence("今天开幕！") == "今天开幕！"
    assert text.detokenize(["我", "爱", "New", "York", "。"], "jieba") == "我爱New York。"


def test_mixed_chinese_and_english_keywords_are_a_clear_error():
    with pytest.raises(ValueError, match="mix Chinese"):
        cgmh.generate(["广州", "food"])
    with pytest.raises(ValueError, match="lang"):
        cgmh.generate(["广州"], lang="fr")
    assert text.keyword_language(["广州", "123"]) == "zh"
    assert text.keyword_language(["rain", "city"]) == "en"


def test_lang_and_lm_together_are_an_error(zh_lm):
    with pytest.raises(ValueError, match="not both"):
        cgmh.generate(["广州"], zh_lm, lang="zh")


def test_english_multi_word_keywords_are_units_too():
    lm = NgramLM.build(["we ate ice cream today", "ice cream is cold", "we like cold days"] * 3,
                       3, progress=False, discount_fallback=True)  # fmt: skip
    out = cgmh.generate(["ice cream", "cold"], NgramScorer(lm), n=4, steps=100, seed=1)
    assert all(contiguous(s.tokens, ["ice", "cream"]) for s in out)


def test_built_in_chinese_lm_writes_the_posts_example():
    pytest.importorskip("snownlp")
    out = cgmh.generate(["广州", "美食节", "开幕"], n=2, seed=0, anneal=True)
    for s in out:
        assert contiguous(s.tokens, ["美食", "节"])
        assert {"广州", "开幕"} <= set(s.tokens)
        assert " " not in s.text and s.text.endswith(("。", "！", "？"))
    assert out[0].text != out[1].text


def test_cli_lang_and_mixed_keywords(capsys):
    from kexue import cli

    with pytest.raises(SystemExit, match="mix Chinese"):
        cli.main(["generate", "广州", "food"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:  # a usage error: exit 2, one line on stderr
        cli.main(["generate", "广州", "--lang", "zh", "--lm", "x.kxlm"])
    assert usage.value.code == 2 and "--lang" in capsys.readouterr().err


def test_pipelines_take_lang():
    pytest.importorskip("snownlp")
    pd = pytest.importorskip("pandas")
    from kexue import pipelines

    batch = pd.DataFrame({"keywords": [["广州", "开幕"], ["美食节"]]})
    out = pipelines.generate_batch(batch, lang="zh", steps=50)
    assert "广州" in out["text"][0] and "开幕" in out["text"][0] and "美食节" in out["text"][1]
    assert not any(" " in t for t in out["text"])
