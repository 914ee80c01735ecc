"""Text in and out of the language models: tokenizers that travel with a model, detokenisation,
sentence formatting, keyword forms and the offensive-word list.

A tokenizer is a name or any callable ``str -> list[str]``:

- ``"whitespace"`` (or ``None``): split on whitespace;
- ``"words"``: words, numbers and punctuation marks as separate tokens, clitics such as
  ``'s`` kept on their word and a run of one mark kept whole (``"A dog's ball..."`` →
  ``["A", "dog's", "ball", "..."]``);
- ``"chars"``: one token per non-space character (Chinese without segmentation);
- ``"jieba"``: Chinese word segmentation by ``jieba`` (MIT; the ``zh`` extra:
  ``pip install 'kexue[zh]'``), Latin words kept whole;
- :class:`RegexTokenizer`: the matches of a regular expression.

>>> from kexue.text import tokenize, detokenize
>>> tokenize("A dog's ball, thrown.", "words")
['A', "dog's", 'ball', ',', 'thrown', '.']
>>> detokenize(["a", "dog's", "ball", ",", "thrown", "."], "words")
"a dog's ball, thrown."
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import cache

__all__ = [
    "RegexTokenizer",
    "as_sentence",
    "blocked_words",
    "detokenize",
    "english_forms",
    "keyword_language",
    "segment_keyword",
    "tokenize",
]

Tokenizer = str | Callable[[str], Sequence[str]] | None


class RegexTokenizer:
    """The matches of ``pattern`` as tokens (picklable, unlike a lambda, so it can travel with
    a model to worker processes).

    >>> RegexTokenizer(r"[A-Za-z0-9]+(?:'[a-z]+)?|[^\\sA-Za-z0-9]")("It's 5 o'clock!")
    ["It's", '5', "o'clock", '!']
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._re = re.compile(pattern)

    def __call__(self, text: str) -> list[str]:
        return [m.group(0) for m in self._re.finditer(text)]  # whole matches, groups or not

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RegexTokenizer) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __repr__(self) -> str:
        return f"RegexTokenizer({self.pattern!r})"

    def __reduce__(self) -> tuple:
        return (RegexTokenizer, (self.pattern,))


# A run of one punctuation mark ("...", "!!") is one token, so a model cannot pile up dots.
WORDS = RegexTokenizer(r"[^\W_]+(?:['’][^\W_]+)?|([^\w\s])\1*|_")


def _jieba(text: str) -> list[str]:
    try:
        import jieba
    except ImportError as e:
        raise ImportError(
            "tokenizer='jieba' needs jieba: pip install 'kexue[zh]' (or pip install jieba)"
        ) from e
    jieba.setLogLevel(60)  # its dictionary-loading chatter goes to stderr otherwise
    return [t for t in jieba.lcut(text) if t.strip()]


_NAMED: dict[str, Callable[[str], list[str]]] = {"words": WORDS, "jieba": _jieba}


def split_words(text: str) -> list[str]:
    """The words of ``text`` as the Rust side splits them: separated by what
    ``str.isspace()`` accepts (Unicode White_Space and the ASCII separators U+001C–U+001F)
    and by NUL, which the binary format reserves.

    >>> split_words("a b\\tc\\x1cd\\x00e\\u3000f")
    ['a', 'b', 'c', 'd', 'e', 'f']
    """
    return text.replace("\0", " ").split()


def tokenize(text: str, tokenizer: Tokenizer = None) -> list[str]:
    """Splits ``text`` into tokens (see the module doc for the tokenizers).

    >>> from kexue.text import tokenize
    >>> tokenize("the  cat sat")
    ['the', 'cat', 'sat']
    >>> tokenize("It's raining, isn't it?", "words")
    ["It's", 'raining', ',', "isn't", 'it', '?']
    >>> tokenize("下雨了", "chars")
    ['下', '雨', '了']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if tokenizer is None or tokenizer == "whitespace":
        return split_words(text)
    if tokenizer == "chars":
        return split_words(" ".join(text))
    if isinstance(tokenizer, str) and tokenizer in _NAMED:
        return _NAMED[tokenizer](text)
    if callable(tokenizer):
        return [t for t in tokenizer(text) if t.strip()]
    raise ValueError(
        f"tokenizer must be None, 'whitespace', 'words', 'chars', 'jieba' or a callable, "
        f"got {tokenizer!r}"
    )


def check_tokenizer(tokenizer: object, name: str = "tokenizer") -> None:
    """Raises unless ``tokenizer`` is one :func:`tokenize` accepts."""
    if tokenizer is None or callable(tokenizer):
        return
    if tokenizer in ("whitespace", "chars") or tokenizer in _NAMED:
        return
    raise ValueError(
        f"{name} must be None, 'whitespace', 'words', 'chars', 'jieba' or a callable, "
        f"got {tokenizer!r}"
    )


_NO_SPACE_BEFORE = frozenset(".,;:!?)]}%…") | {"'s", "n't", "'re", "'ve", "'m", "'ll", "'d"}
_NO_SPACE_AFTER = frozenset("([{$#")
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def _is_cjk(token: str) -> bool:
    return bool(token) and all(_CJK.match(c) for c in token)


_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


def keyword_language(keywords: Iterable[str]) -> str:
    """``"zh"`` when the keywords are written in Chinese characters, ``"en"`` otherwise (the
    built-in LM they select); keywords that mix Chinese and Latin letters raise ValueError.

    >>> keyword_language(["广州", "美食"]), keyword_language(["dog", "ball"])
    ('zh', 'en')
    """
    words = list(keywords)
    han = [w for w in words if _HAN.search(w)]
    latin = [w for w in words if _LATIN.search(w)]
    if han and latin:
        raise ValueError(
            f"keywords mix Chinese {han} and Latin-script {latin} words; no built-in LM writes "
            "both: pass lang='zh' or lang='en' (the other words become unknown words), or an lm"
        )
    return "zh" if han else "en"


def segment_keyword(
    keyword: str, tokenizer: Tokenizer, known: Callable[[str], bool] | None = None
) -> list[str]:
    """The tokens of one keyword, matched to an LM's vocabulary when ``known`` (word → is
    it in the LM) is given: a keyword the LM knows whole stays one token, and a token the LM
    does not know is split into the fewest words it knows, if it can be (the built-in Chinese
    LM keeps its corpus's segmentation, which is finer than jieba's: 美食节 → 美食 节).

    >>> segment_keyword("美食节", "jieba", {"美食", "节"}.__contains__)
    ['美食', '节']
    """
    if known is not None and keyword.strip() == keyword and known(keyword):
        return [keyword]
    tokens = tokenize(keyword, tokenizer)
    if known is None:
        return tokens
    # Only Chinese tokens are split: a Latin word the LM lacks is one unknown word, not
    # letters ("frisbees" is not "fris bees").
    return [
        piece
        for t in tokens
        for piece in ((_split_known(t, known) if all(map(_HAN.match, t)) else None) or [t])
    ]


def _split_known(token: str, known: Callable[[str], bool]) -> list[str] | None:
    """``token`` as the fewest words ``known`` accepts (None: none covers it)."""
    if known(token):
        return [token]
    n = len(token)
    best: list[list[str] | None] = [[]] + [None] * n  # best[i]: split of token[:i]
    for i in range(1, n + 1):
        for j in range(i):
            head = best[j]
            current = best[i]
            if head is not None and known(token[j:i]):
                if current is None or len(head) + 1 < len(current):
                    best[i] = [*head, token[j:i]]
    return best[n]


def detokenize(tokens: Sequence[str], tokenizer: Tokenizer = None) -> str:
    """Joins tokens as text is written: English punctuation attached to its word, straight
    double quotes alternately opening and closing, no spaces between CJK tokens (and none
    at all for ``"chars"``).

    >>> from kexue.text import detokenize
    >>> detokenize(["rain", ",", "city", "(", "night", ")", "."])
    'rain, city (night).'
    >>> detokenize(["下", "雨"], "chars")
    '下雨'
    """
    if tokenizer == "chars":
        return "".join(tokens)
    out: list[str] = []
    quote_open = False
    prev = ""
    for i, t in enumerate(tokens):
        space = bool(i)
        if t == '"':
            space = space and not quote_open
            quote_open = not quote_open
        elif prev == '"' and quote_open:
            space = False
        if t in _NO_SPACE_BEFORE or prev in _NO_SPACE_AFTER or _is_cjk(t) or _is_cjk(prev):
            space = False
        if space:
            out.append(" ")
        out.append(t)
        prev = t
    return "".join(out)


_FINAL = ".!?…。！？"
_PAUSES = ",;:，、；：—"
_CLOSING = "\"')]”’」』"
# The marks that end a text: pauses, then the first final mark, then more marks (an n-gram
# LM pads with runs of "." its corpus holds), then closing quotes.
_MARKS_AT_END = re.compile(
    f"[{re.escape(_PAUSES)} ]*([{re.escape(_FINAL)}])[{re.escape(_PAUSES + _FINAL)} ]*"
    f"([{re.escape(_CLOSING)}]*)$"
)


def as_sentence(text: str) -> str:
    """Sentence case and final punctuation: the first letter upper-cased and a full stop
    added unless the text already ends a sentence (``"。"`` after Chinese).

    >>> as_sentence("a dog catches a frisbee")
    'A dog catches a frisbee.'
    """
    text = text.strip()
    if not text:
        return text
    for i, c in enumerate(text):
        if c.isalpha():
            text = text[:i] + c.upper() + text[i + 1 :]
            break
        if not (c in _CLOSING or c in "\"'(["):
            break
    if text.rstrip(_CLOSING)[-1:] in _FINAL:
        # "…、。", "…, ." and "…...." end with one mark: "…。", "….", "…."
        return _MARKS_AT_END.sub(r"\1\2", text)
    cjk = bool(_CJK.match(text[-1]))
    text = text.rstrip(_PAUSES + " ") or text  # "…，" ends as "…。", not "…，。"
    return text + ("。" if cjk else ".")


def _lemmas(word: str) -> set[str]:
    from lemminflect import getAllLemmas

    return {lemma for lemmas in getAllLemmas(word).values() for lemma in lemmas}


@cache
def _inflections(word: str) -> frozenset[str]:
    from lemminflect import getAllInflections, getAllInflectionsOOV

    lemmas = _lemmas(word)
    # A keyword that is a lemma itself ("lay", "saw") means that lemma, not the words it is
    # also a form of ("lie", "see"); an inflected keyword ("ran") stands for its lemmas.
    sources = {word} if word in lemmas or not lemmas else lemmas
    forms = set(sources)
    for lemma in sources:
        for found in getAllInflections(lemma).values():
            forms.update(found)
    if forms == {word} and word.isalpha():  # unknown to lemminflect: its regular rules
        for upos in ("NOUN", "VERB"):
            for found in getAllInflectionsOOV(word, upos).values():
                forms.update(found)
    # Only forms lemminflect lemmatises back to a source: a guessed inflection of an unknown
    # word ("sle" → "sled") is another word, and a reader (or CommonGen's coverage metric)
    # would not count it.
    return frozenset(f for f in forms if f == word or (_lemmas(f) | {f}) & sources)


def english_forms(word: str) -> list[str]:
    """The keyword itself, then its English inflections (plural, verb forms, comparative…;
    from ``lemminflect``, which ships its data), each also capitalised (sentence start).
    A keyword that is a lemma keeps its own forms (``"saw"``: saws, sawed…, not *seen*); an
    inflected one stands for its lemma (``"ran"``: run, runs, running, ran).

    >>> sorted(english_forms("throw"))[:4]
    ['Threw', 'Throw', 'Throwing', 'Thrown']
    """
    base = _inflections(word.lower()) if word.islower() else _inflections(word)
    out = [word]
    for f in sorted(base):
        for variant in (f, f[:1].upper() + f[1:]):
            if variant not in out:
                out.append(variant)
    return out


@cache
def _profanity() -> frozenset[str]:
    from importlib.resources import files

    text = (files("better_profanity") / "profanity_wordlist.txt").read_text(encoding="utf-8")
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip() and " " not in w)


def blocked_words(vocabulary: Iterable[str]) -> list[str]:
    """The words of ``vocabulary`` on the offensive-word list that ``better-profanity`` ships
    (MIT; single words, any case): what the built-in filter keeps out of generated text.

    >>> from kexue.text import blocked_words
    >>> blocked_words(["the", "Damn", "dog", "crap"])
    ['Damn', 'crap']
    """
    bad = _profanity()
    return [w for w in vocabulary if w.lower() in bad]
