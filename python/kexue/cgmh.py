"""CGMH: sentences that contain given keywords, by Metropolis–Hastings over word edits.

Miao et al., "CGMH: Constrained Sentence Generation by Metropolis–Hastings Sampling" (AAAI
2019). Each chain starts from the keywords and edits the sentence by replace / insert / delete;
candidate words come from the LM's forward and backward next-word distributions (top-K), and
every edit is accepted with the exact MH ratio, so chains sample
``p(x)^gamma · [x contains every keyword]``. With ``anneal`` the target is sharpened step by
step (simulated annealing) and the best sentence seen is returned. The whole loop runs in Rust,
chains and inputs in parallel; a Python scorer (e.g. :class:`kexue.scorers.HFCausalLM`) is
called back for scores.

>>> from kexue.cgmh import generate
>>> out = generate(["cat", "mat"], n=2, steps=60, seed=0)   # the built-in English LM
>>> all("cat" in s.tokens and "mat" in s.tokens for s in out)
True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _native
from ._dispatch import check_int, check_request
from .lm import split_words

__all__ = [
    "Sentence",
    "correct",
    "detokenize",
    "generate",
    "generate_many",
    "paraphrase",
    "plot_trace",
    "tokenize",
]

Tokenizer = str | Callable[[str], Sequence[str]] | None
_ACTIONS = ("replace", "insert", "delete")


@dataclass
class Sentence:
    """One chain's result."""

    text: str
    tokens: list[str]
    #: natural-log probability of ``tokens`` under the LM (γ not applied)
    logprob: float
    #: log of the (untempered) target: γ·log p − log N + soft terms
    log_target: float
    #: the chain's final state (equal to ``tokens`` when ``select="last"``)
    last_tokens: list[str]
    last_logprob: float
    #: proposals and acceptances per action; a replace that redraws the current word counts
    #: as accepted (it is a Gibbs draw), a move with no valid target as rejected
    proposed: dict[str, int]
    accepted: dict[str, int]
    #: per step, with ``return_trace=True``: log target of the current state, acceptance
    trace_log_target: np.ndarray | None = field(default=None, repr=False)
    trace_accepted: np.ndarray | None = field(default=None, repr=False)

    @property
    def acceptance_rate(self) -> float:
        total = sum(self.proposed.values())
        return sum(self.accepted.values()) / total if total else 0.0

    @property
    def nll_per_token(self) -> float:
        """−log p per token, the end of sentence counted as a token."""
        return -self.logprob / (len(self.tokens) + 1)


def tokenize(text: str, tokenizer: Tokenizer = None) -> list[str]:
    """Splits ``text``: on whitespace by default, into characters with ``"chars"`` (Chinese),
    or with any callable (e.g. ``jieba.lcut``)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if tokenizer is None or tokenizer == "whitespace":
        return split_words(text)
    if tokenizer == "chars":
        return split_words(" ".join(text))
    if callable(tokenizer):
        return [t for t in tokenizer(text) if t.strip()]
    raise ValueError(
        f"tokenizer must be None, 'whitespace', 'chars' or a callable, got {tokenizer!r}"
    )


_NO_SPACE_BEFORE = {
    ".",
    ",",
    ";",
    ":",
    "!",
    "?",
    ")",
    "]",
    "}",
    "%",
    "'s",
    "n't",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
}
_NO_SPACE_AFTER = {"(", "[", "{", "$"}


def detokenize(tokens: Sequence[str], tokenizer: Tokenizer = None) -> str:
    """Joins tokens for display: characters without spaces, words with English punctuation
    spacing."""
    if tokenizer == "chars" or (callable(tokenizer) and all(len(t) == 1 for t in tokens)):
        return "".join(tokens)
    out = ""
    for i, t in enumerate(tokens):
        if i and t not in _NO_SPACE_BEFORE and tokens[i - 1] not in _NO_SPACE_AFTER:
            out += " "
        out += t
    return out


def _scorer(lm: Any) -> Any:
    """The default LM for None; n-gram models wrapped in the native scorer."""
    from . import scorers

    if lm is None:
        return scorers.default_lm()
    from .lm import NgramLM

    if isinstance(lm, (NgramLM, _native.NgramModel)):
        return scorers.NgramScorer(lm)
    return lm


class _Ids:
    """Word ↔ id for one call: LM words keep their ids; unknown words get ids past the
    vocabulary (scored as the LM's unknown word, never proposed)."""

    def __init__(self, lm: Any) -> None:
        for m in ("vocab_size", "word_id", "word", "sentence_logprob", "forward_logprobs"):
            if not hasattr(lm, m):
                raise TypeError(f"lm must be a scorer with {m} (see kexue.scorers), got {lm!r}")
        self.lm = lm
        self.vocab_size = int(lm.vocab_size)
        self.extra: dict[str, int] = {}
        self.extra_words: list[str] = []

    def id(self, word: str) -> int:
        i = self.lm.word_id(word)
        if i is not None and 0 <= i < self.vocab_size:
            return int(i)
        if word not in self.extra:
            self.extra[word] = self.vocab_size + len(self.extra_words)
            self.extra_words.append(word)
            if hasattr(self.lm, "name_unknown"):  # scorers that score text need its spelling
                self.lm.name_unknown(self.extra[word], word)
        return self.extra[word]

    def word(self, i: int) -> str:
        return self.lm.word(i) if i < self.vocab_size else self.extra_words[i - self.vocab_size]


def _anneal(anneal: object) -> tuple[float, float] | None:
    if anneal is None or anneal is False:
        return None
    if anneal is True:
        return (1.0, 0.01)
    if isinstance(anneal, (int, float)) and not isinstance(anneal, bool):
        return (float(anneal), 0.01)
    if isinstance(anneal, (tuple, list)) and len(anneal) == 2:
        return (float(anneal[0]), float(anneal[1]))
    raise ValueError(f"anneal must be None, True, a start temperature or (t0, t1), got {anneal!r}")


def _run(
    lm: Any,
    inputs: list[list[str]],
    fixed: list[list[bool]],
    priors: list[list[object]],
    *,
    n: int,
    steps: int,
    seed: int,
    anneal: object,
    select: str | None,
    return_trace: bool,
    top_k: int,
    gamma: float,
    min_len: int,
    max_len: int,
    index: str,
    explore: float,
    actions: Sequence[float],
    tokenizer: Tokenizer,
    permute: bool,
    ids: _Ids | None = None,
) -> list[list[Sentence]]:
    n = check_int(n, "n", low=1)
    steps = check_int(steps, "steps", low=1)
    top_k = check_int(top_k, "top_k", low=1)
    seed = check_int(seed, "seed", low=0, high=2**64 - 1)
    min_len = check_int(min_len, "min_len", low=1, high=2**32)
    max_len = check_int(max_len, "max_len", low=1, high=2**32)
    # Each chain's result holds its sentences: refuse what the machine cannot hold.
    check_request(n * len(inputs) * (256 + 16 * max_len), "n")
    anneal_t = _anneal(anneal)
    if select is None:
        select = "best" if anneal_t else "last"
    if select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got {select!r}")
    if len(actions) != 3:
        raise ValueError(
            f"actions must be 3 probabilities (replace, insert, delete), got {actions!r}"
        )
    lm = _scorer(lm)
    ids = ids or _Ids(lm)
    tokens = [[ids.id(w) for w in ws] for ws in inputs]
    # "free" order: each chain starts from its own permutation of the keywords (keywords are
    # never moved within a chain), so the order varies across chains.
    if permute:
        rng = random.Random(seed)
        tasks, flags, pri = [], [], []
        for t, f, p in zip(tokens, fixed, priors):
            for _ in range(n):
                tasks.append(rng.sample(t, len(t)))
                flags.append(f)
                pri.append(p)
        chains = 1
    else:
        tasks, flags, pri, chains = tokens, fixed, priors, n
    raw = _native.cgmh_run(
        lm, tasks, flags, pri, chains, steps, top_k, tuple(float(a) for a in actions), min_len,
        max_len, float(gamma), anneal_t, index, float(explore), seed, select == "best",
        bool(return_trace),
    )  # fmt: skip
    out = []
    for i in range(len(inputs)):
        row = []
        for r in raw[i * n : (i + 1) * n]:
            words = [ids.word(t) for t in r["tokens"]]
            row.append(
                Sentence(
                    text=detokenize(words, tokenizer),
                    tokens=words,
                    logprob=r["logprob"],
                    log_target=r["log_target"],
                    last_tokens=[ids.word(t) for t in r["last"]],
                    last_logprob=r["last_logprob"],
                    proposed=dict(zip(_ACTIONS, r["proposed"])),
                    accepted=dict(zip(_ACTIONS, r["accepted"])),
                    trace_log_target=r.get("trace_log_target"),
                    trace_accepted=r.get("trace_accepted"),
                )
            )
        out.append(row)
    return out


def _check_keyword(word: str, name: str) -> None:
    """A keyword must be a word the LM can hold and write: not a reserved symbol, and valid
    text (a lone surrogate cannot be encoded as UTF-8)."""
    if word in ("<s>", "</s>", "<unk>"):
        raise ValueError(f"{name} must not hold the reserved symbol {word!r}")
    if any("\ud800" <= c <= "\udfff" for c in word):
        raise ValueError(f"{name} must be valid text, got {word!r} (a lone surrogate)")


def _keywords(keywords: object, tokenizer: Tokenizer, name: str) -> list[str]:
    if isinstance(keywords, str):
        keywords = [keywords]
    if not isinstance(keywords, (list, tuple)):
        raise TypeError(f"{name} must be a str or a list of str, got {type(keywords).__name__}")
    words: list[str] = []
    for k in keywords:
        if not isinstance(k, str):
            raise TypeError(f"{name} must hold str, got {type(k).__name__}")
        toks = tokenize(k, tokenizer)
        if not toks:
            raise ValueError(f"{name} must not hold empty strings, got {k!r}")
        for t in toks:
            _check_keyword(t, name)
        words.extend(toks)
    if not words:
        raise ValueError(f"{name} must hold at least one keyword")
    return words


def generate_many(
    keyword_lists: Sequence[Sequence[str] | str],
    lm: Any = None,
    *,
    n: int = 1,
    steps: int = 200,
    seed: int = 0,
    order: str = "free",
    anneal: object = None,
    select: str | None = None,
    return_trace: bool = False,
    top_k: int = 50,
    gamma: float = 1.0,
    min_len: int = 1,
    max_len: int = 40,
    index: str = "min",
    explore: float = 0.01,
    actions: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
    tokenizer: Tokenizer = None,
) -> list[list[Sentence]]:
    """:func:`generate` for many keyword sets at once (all chains of all inputs in parallel);
    returns one list of ``n`` sentences per input."""
    if order not in ("free", "fixed"):
        raise ValueError(f"order must be 'free' or 'fixed', got {order!r}")
    if isinstance(keyword_lists, str) or not isinstance(keyword_lists, Sequence):
        raise TypeError("keyword_lists must be a list of keyword lists")
    inputs = [_keywords(k, tokenizer, f"keyword_lists[{i}]") for i, k in enumerate(keyword_lists)]
    return _run(
        lm, inputs, [[True] * len(k) for k in inputs], [[] for _ in inputs],
        n=n, steps=steps, seed=seed, anneal=anneal, select=select, return_trace=return_trace,
        top_k=top_k, gamma=gamma, min_len=min_len, max_len=max_len, index=index,
        explore=explore, actions=actions, tokenizer=tokenizer, permute=order == "free",
    )  # fmt: skip


def generate(
    keywords: Sequence[str] | str,
    lm: Any = None,
    *,
    n: int = 1,
    steps: int = 200,
    seed: int = 0,
    order: str = "free",
    anneal: object = None,
    return_trace: bool = False,
    **options: Any,
) -> list[Sentence]:
    """``n`` sentences containing every keyword.

    ``lm``: a scorer (:mod:`kexue.scorers`; default: the built-in English n-gram LM).
    ``order``: ``"fixed"`` keeps the keywords in the given order; ``"free"`` starts each chain
    from its own permutation. ``anneal``: ``True``, a start temperature or ``(t0, t1)``
    (geometric schedule) turns sampling into search and returns the best sentence seen
    (``select="best"``; otherwise the last state). Other options: ``top_k`` (candidates per
    edit), ``gamma`` (exponent on p(x); below 1 favours longer sentences), ``min_len``,
    ``max_len``, ``index`` (``"min"``/``"product"``/``"forward"``: how forward and backward
    LMs pick candidates), ``explore`` (probability of a uniform word proposal), ``actions``
    (replace, insert, delete probabilities), ``tokenizer``.

    >>> [s.text for s in generate("dog park", n=1, steps=80, anneal=True)]  # doctest: +SKIP
    ['the dog park .']
    """
    return generate_many([keywords], lm, n=n, steps=steps, seed=seed, order=order,
                         anneal=anneal, return_trace=return_trace, **options)[0]  # fmt: skip


def _sentence(sentence: object, tokenizer: Tokenizer) -> list[str]:
    words = tokenize(sentence, tokenizer)  # type: ignore[arg-type]
    if not words:
        raise ValueError("sentence must hold at least one word")
    return words


def paraphrase(
    sentence: str,
    lm: Any = None,
    *,
    n: int = 1,
    steps: int = 200,
    seed: int = 0,
    similarity: Callable[[str], Sequence[float]] | None = None,
    weight: float = 8.0,
    keywords: Sequence[str] = (),
    anneal: object = True,
    tokenizer: Tokenizer = None,
    **options: Any,
) -> list[Sentence]:
    """Paraphrases by sampling ``p(x) · exp(weight · sim(x, sentence))`` (UPSA-style with
    ``anneal``). ``sim``: cosine of bags of words by default, or of ``similarity(text)``
    embeddings (any callable text → vector). ``keywords``: words that must stay."""
    words = _sentence(sentence, tokenizer)
    keep = set(_keywords(list(keywords), tokenizer, "keywords")) if keywords else set()
    lm = _scorer(lm)
    ids = _Ids(lm)
    src = [ids.id(w) for w in words]
    if similarity is None:
        prior: object = ("cosine", src, float(weight))
    else:
        ref = _unit(similarity(detokenize(words, tokenizer)))

        def prior(x: list[int]) -> float:
            text = detokenize([ids.word(t) for t in x], tokenizer)
            return float(weight) * float(np.dot(_unit(similarity(text)), ref))

    return _run(
        lm, [words], [[w in keep for w in words]], [[prior]], n=n, steps=steps, seed=seed,
        anneal=anneal, tokenizer=tokenizer, permute=False, ids=ids, **_defaults(options),
    )[0]  # fmt: skip


def correct(
    sentence: str,
    lm: Any = None,
    *,
    n: int = 1,
    steps: int = 200,
    seed: int = 0,
    weight: float = 3.0,
    anneal: object = True,
    tokenizer: Tokenizer = None,
    **options: Any,
) -> list[Sentence]:
    """Error correction: samples ``p(x) · exp(−weight · edit distance(x, sentence))`` (with
    ``anneal``: searches), so edits that raise fluency enough are kept."""
    words = _sentence(sentence, tokenizer)
    lm = _scorer(lm)
    ids = _Ids(lm)
    prior = ("edit", [ids.id(w) for w in words], float(weight))
    return _run(
        lm, [words], [[False] * len(words)], [[prior]], n=n, steps=steps, seed=seed,
        anneal=anneal, tokenizer=tokenizer, permute=False, ids=ids, **_defaults(options),
    )[0]  # fmt: skip


def _defaults(options: dict[str, Any]) -> dict[str, Any]:
    known = {"select": None, "return_trace": False, "top_k": 50, "gamma": 1.0, "min_len": 1,
             "max_len": 40, "index": "min", "explore": 0.01,
             "actions": (1 / 3, 1 / 3, 1 / 3)}  # fmt: skip
    unknown = set(options) - set(known)
    if unknown:
        raise TypeError(f"unexpected options: {sorted(unknown)}")
    return {**known, **options}


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).ravel()
    norm = np.linalg.norm(a)
    return a / norm if norm > 0 else a


def plot_trace(sentences: Sequence[Sentence], path: str) -> None:
    """Draws log target and running acceptance rate over steps (needs ``return_trace=True``
    and matplotlib, the ``plot`` extra) into ``path`` (written via a temp file + rename)."""
    import os
    import tempfile

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plot_trace needs matplotlib: pip install 'kexue[plot]'") from e
    if not sentences or any(s.trace_log_target is None for s in sentences):
        raise ValueError("sentences must come from a call with return_trace=True")
    fig, (a, b) = plt.subplots(2, 1, sharex=True, figsize=(7, 5))
    for i, s in enumerate(sentences):
        acc = np.asarray(s.trace_accepted, dtype=np.float64)
        a.plot(s.trace_log_target, lw=0.8, label=f"chain {i}")
        b.plot(np.cumsum(acc) / np.arange(1, len(acc) + 1), lw=0.8)
    a.set_ylabel("log target")
    b.set_ylabel("acceptance rate")
    b.set_xlabel("step")
    if len(sentences) <= 8:
        a.legend(fontsize=7)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


from .pipelines import generate_batch as generate_batch  # noqa: E402  (DataFrame/Arrow batches)
