"""CGMH: sentences that contain given keywords, by Metropolis–Hastings over word edits.

Miao et al., "CGMH: Constrained Sentence Generation by Metropolis–Hastings Sampling" (AAAI
2019). Each chain starts from the keywords and edits the sentence: replace, insert and delete a
word, switch a keyword between its inflected forms (``"throw"`` may be written *threw*,
*throwing*…), move a keyword (``order="free"``). Candidate words come from the LM's forward and
backward next-word distributions (top-K), and every edit is accepted with the exact MH ratio,
so chains sample

    π(x) ∝ p(x)^γ · λ(|x|) · e^{−c·u(x)} · [x holds a form of every keyword] · [no blocked word]

where λ(l) = exp(−β · max(0, L − l)) is the length prior: each word a sentence is short of L
costs β nats (``length``; by default L and β are estimated from sentences the LM itself
generates, so a sentence is as long as the LM's typical one; no prior for a scorer that
cannot generate). Without it the most probable sentence is the shortest string that holds
the keywords. With a native n-gram LM, u(x) counts the words (and the end) the LM scores from
a context shorter than k − 1 words, a k-gram its text never held, at c nats each
(``backoff=(k, c)``, default (3, 1): the joins no text contains, as in "… holding a ."; β then
adds c times the LM's own rate of such words; c = 0 for other scorers). With ``anneal`` the
target is sharpened step by step (simulated annealing) and each chain keeps the best sentence
it saw; :func:`generate` then runs a pool of short chains per input (with a native n-gram
LM) and returns the sentence the others agree with most (minimum Bayes risk with sentence
BLEU), weighed with its log target, not one chain's most probable string. The whole
loop runs in Rust, chains and inputs in parallel; a Python scorer (e.g.
:class:`kexue.scorers.HFCausalLM`) is called back for scores.

>>> from kexue.cgmh import generate
>>> out = generate(["cat", "mat"], n=2, steps=60, seed=0)   # the built-in English LM
>>> all({"cat", "cats", "Cat", "Cats"} & set(s.tokens) for s in out)
True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _native, scorers
from ._dispatch import check_int, check_request
from .text import (
    Tokenizer,
    as_sentence,
    detokenize,
    english_forms,
    keyword_language,
    segment_keyword,
    tokenize,
)

if TYPE_CHECKING:
    from ._native import _CgmhSettings  # defined in the stub only

__all__ = [
    "MOVES",
    "Sentence",
    "correct",
    "detokenize",
    "generate",
    "generate_many",
    "paraphrase",
    "plot_trace",
    "tokenize",
]

#: The chain's moves, in the order of the native counters.
MOVES = ("replace", "insert", "delete", "reform", "reorder")
#: Default move weights (normalised per input over the moves it can make).
DEFAULT_MOVES = {"replace": 0.3, "insert": 0.25, "delete": 0.25, "reform": 0.1, "reorder": 0.1}

#: Chains per input of a consensus choice (``pool="auto"`` with a native n-gram LM), and
#: steps per chain: the default, and a pool's (restarts search better than long chains: on
#: CommonGen dev, 24 chains of 64 steps score CIDEr 10.9 with the built-in LM against 9.0
#: for one chain of 200).
DEFAULT_POOL = 24
#: How a consensus pool weighs each sentence's log target against its agreement (mean
#: sentence BLEU, in [0, 1]) with the others: 0.01 per nat, so 10 nats of target count as
#: 0.1 of agreement. Agreement alone ignores the target, and picked central sentences such as
#: "… sitting on a his arm and."; on CommonGen dev this weight halves the outputs that end on
#: a function word, at BLEU-4 +1.1 and CIDEr −0.6 / −0.7 (built-in / train LM).
CONSENSUS_TARGET_WEIGHT = 0.01
#: The back-off penalty with a native n-gram LM (``backoff="auto"``): (n-gram order, nats
#: per word the LM scores from a shorter context than that order's). On CommonGen dev it cuts
#: the outputs that end on a function word ("… holding a.") by 29% / 13% (built-in / train LM)
#: at CIDEr +0.3 / +0.2 when searching, by 33% / 30% at CIDEr +0.9 / +1.0 when sampling.
DEFAULT_BACKOFF = (3, 1.0)
DEFAULT_STEPS = 200
POOL_STEPS = 64

Forms = str | Callable[[str], Iterable[str]]


@dataclass
class Sentence:
    """One chain's result.

    >>> from kexue.cgmh import MOVES, generate
    >>> s = generate("rain", steps=30, seed=0)[0]
    >>> set(s.proposed) <= set(MOVES), sum(s.proposed.values())  # one proposal per step
    (True, 30)
    >>> 0.0 <= s.acceptance_rate <= 1.0
    True
    >>> bool(abs(s.nll_per_token + s.logprob / (len(s.tokens) + 1)) < 1e-12)
    True
    """

    text: str
    tokens: list[str]
    #: natural-log probability of ``tokens`` under the LM (γ not applied)
    logprob: float
    #: log of the (untempered) target: γ·log p + log λ(|x|) − log N + soft terms
    log_target: float
    #: the chain's final state (equal to ``tokens`` when ``select="last"``)
    last_tokens: list[str]
    last_logprob: float
    #: proposals and acceptances per move (:data:`MOVES`); a replace or reform that redraws
    #: the current word counts as accepted (it is a Gibbs draw), a move with no valid target
    #: as rejected
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

    def known(self, word: str) -> int | None:
        i = self.lm.word_id(word)
        return int(i) if i is not None and 0 <= i < self.vocab_size else None

    def id(self, word: str) -> int:
        i = self.known(word)
        if i is not None:
            return i
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


def _moves(moves: Mapping[str, float] | None) -> dict[str, float]:
    if moves is None:
        return dict(DEFAULT_MOVES)
    if not isinstance(moves, Mapping):
        raise TypeError(f"moves must be a dict of move weights, got {type(moves).__name__}")
    unknown = set(moves) - set(MOVES)
    if unknown:
        raise ValueError(f"moves keys must be among {MOVES}, got {sorted(unknown)}")
    return {m: float(moves.get(m, 0.0)) for m in MOVES}


def _runs_natively(lm: Any) -> bool:
    """Whether the scorer's chains run wholly in Rust (an n-gram scorer hands its tables over
    as ``_cgmh_native``)."""
    return getattr(lm, "_cgmh_native", None) is not None


def _backoff(backoff: object, lm: Any) -> tuple[int, float] | None:
    """(order, cost) of the back-off penalty; ``"auto"``: :data:`DEFAULT_BACKOFF` with a
    native n-gram LM of at least that order, else none."""
    if backoff is None or backoff is False:
        return None
    native = _runs_natively(lm)
    if backoff == "auto":
        usable = native and lm.order >= DEFAULT_BACKOFF[0]
        return DEFAULT_BACKOFF if usable else None
    if not (isinstance(backoff, (tuple, list)) and len(backoff) == 2):
        raise ValueError(f"backoff must be 'auto', None or (n-gram order, cost), got {backoff!r}")
    if not native:
        raise ValueError("backoff needs a native n-gram LM (kexue.lm.NgramLM); pass None")
    cost = float(backoff[1])
    if not (cost >= 0 and np.isfinite(cost)):
        raise ValueError(f"backoff cost must be a finite number >= 0, got {cost}")
    return (check_int(backoff[0], "backoff order", low=2, high=lm.order), cost)


def _length(length: object, lm: Any, backoff: tuple[int, float] | None) -> tuple[int, float] | None:
    if length is None or length is False:
        return None
    if isinstance(length, (tuple, list)) and len(length) == 2:
        per_word = float(length[1])
        if not (per_word >= 0 and np.isfinite(per_word)):
            raise ValueError(f"length per-word cost must be a finite number >= 0, got {per_word}")
        return (check_int(length[0], "length", low=1), per_word)
    by_target = isinstance(length, int) and not isinstance(length, bool)
    if length != "auto" and not by_target:
        raise ValueError(
            "length must be 'auto', None, a target length or (target, per-word cost), "
            f"got {length!r}"
        )
    estimated = scorers.length_prior(lm)
    if estimated is None:
        if by_target:
            raise ValueError(
                "length: this scorer cannot estimate the per-word cost; pass (target, cost)"
            )
        return None
    target, per_word = estimated
    if backoff is not None:
        # A typical word costs its log-probability and its share of the back-off penalty.
        per_word += backoff[1] * scorers.backoff_rate(lm, backoff[0])
    return (check_int(length, "length", low=1) if by_target else target, per_word)


def _forms_of(forms: Forms) -> Callable[[str], Iterable[str]] | None:
    if forms == "exact":
        return None
    if forms == "auto":
        return _auto_forms
    if callable(forms):
        return forms
    raise ValueError(f"forms must be 'auto', 'exact' or a callable word -> forms, got {forms!r}")


def _auto_forms(word: str) -> Iterable[str]:
    """English inflections for words in Latin letters, the word alone otherwise."""
    if word.isascii() and word.replace("'", "").replace("-", "").isalpha():
        return english_forms(word)
    return (word,)


def _blocked(block: object, lm: Any) -> list[int]:
    if block is None or block is False:
        return []
    if block == "auto":
        return scorers.blocked_ids(lm)
    if isinstance(block, str) or not isinstance(block, Iterable):
        raise TypeError(f"block must be 'auto', None or a list of words, got {block!r}")
    ids = []
    for w in block:
        if not isinstance(w, str):
            raise TypeError(f"block must hold str, got {type(w).__name__}")
        i = lm.word_id(w)
        if i is not None and 0 <= i < int(lm.vocab_size):
            ids.append(int(i))
    return ids


def _pick(
    rows: list[dict[str, Any]], best: bool, distinct: bool, text: Callable[[list[int]], str]
) -> list[tuple]:
    """One (tokens, logprob, log_target, row) per chain: its best or last state; with
    ``distinct``, a chain whose pick's ``text`` repeats an earlier one's gives its best state
    not yet taken instead (the text: token lists differing by a final mark read the same)."""
    taken: set[str] = set()
    out = []
    for r in rows:
        options = list(r["kept"]) if best else [(r["last"], r["last_logprob"], None), *r["kept"]]
        fresh = (o for o in options if not distinct or text(o[0]) not in taken)
        choice = next(fresh, options[0])
        taken.add(text(choice[0]))
        lt = choice[2] if choice[2] is not None else r["log_target"]
        out.append((list(choice[0]), choice[1], lt, r))
    return out


def _selection(
    select: str | None, pool: object, lm: Any, anneal: tuple[float, float] | None, n: int
) -> tuple[str, int]:
    """The output choice (``select``, its default resolved) and the chains to run per input."""
    pool = _pool(pool, lm, anneal is not None and select in (None, "consensus"))
    if select is None:
        select = "consensus" if pool > 1 else "best" if anneal else "last"
    if select not in ("best", "last", "consensus"):
        raise ValueError(f"select must be 'best', 'last' or 'consensus', got {select!r}")
    if pool > 1 and select != "consensus":
        raise ValueError(f"pool = {pool} needs select='consensus', got select={select!r}")
    return select, max(n, pool) if select == "consensus" else n


def _pools(
    raw: list[dict[str, Any]],
    per_input: int,
    select: str,
    distinct: bool,
    text: Callable[[list[int]], str],
) -> list[list[dict[str, Any]]]:
    """The chains' raw results grouped by input; with ``select="consensus"``, each group in
    consensus order (:func:`_by_consensus`)."""
    pools = [raw[i : i + per_input] for i in range(0, len(raw), per_input)]
    if select != "consensus":
        return pools
    agreement = _native.cgmh_agreement([[r["kept"][0][0] for r in p] for p in pools])
    return [_by_consensus(p, a, distinct, text) for p, a in zip(pools, agreement)]


def _by_consensus(
    rows: list[dict[str, Any]],
    agreement: list[float],
    distinct: bool,
    text: Callable[[list[int]], str],
) -> list[dict[str, Any]]:
    """A pool's chains by their best sentence's agreement with the others' plus
    :data:`CONSENSUS_TARGET_WEIGHT` × its log target, highest first; with ``distinct``, a
    chain repeating a sentence already listed goes to the end (so ``n`` picks are ``n``
    different sentences where the pool has them)."""
    score = [a + CONSENSUS_TARGET_WEIGHT * r["kept"][0][2] for r, a in zip(rows, agreement)]
    ranked = sorted(range(len(rows)), key=lambda i: -score[i])
    if not distinct:
        return [rows[i] for i in ranked]
    seen: set[str] = set()
    firsts: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    for i in ranked:
        sentence = text(rows[i]["kept"][0][0])
        (repeats if sentence in seen else firsts).append(rows[i])
        seen.add(sentence)
    return firsts + repeats


def _pool(pool: object, lm: Any, searching: bool) -> int:
    """Chains per input for a consensus choice; ``"auto"``: :data:`DEFAULT_POOL` when
    searching with a native n-gram LM (cheap chains), else 1 (a neural scorer pays per
    chain)."""
    if pool == "auto":
        return DEFAULT_POOL if searching and _runs_natively(lm) else 1
    if isinstance(pool, bool) or not isinstance(pool, int):
        raise TypeError(f"pool must be 'auto' or an int >= 1, got {pool!r}")
    return check_int(pool, "pool", low=1, high=2**20)


def _run(
    lm: Any,
    inputs: list[list[str]],
    fixed: list[list[bool]],
    priors: list[list[object]],
    *,
    n: int,
    steps: int | None,
    seed: int,
    anneal: object,
    select: str | None,
    return_trace: bool,
    top_k: int,
    gamma: float,
    min_len: int,
    max_len: int,
    length: object,
    backoff: object,
    forms: Forms,
    block: object,
    index: str,
    explore: float,
    moves: Mapping[str, float] | None,
    distinct: bool,
    pool: object,
    tokenizer: Tokenizer,
    permute: bool,
    sentence_case: bool,
    ids: _Ids | None = None,
    units: list[list[int]] | None = None,
) -> list[list[Sentence]]:
    n = check_int(n, "n", low=1)
    top_k = check_int(top_k, "top_k", low=1)
    seed = check_int(seed, "seed", low=0, high=2**64 - 1)
    min_len = check_int(min_len, "min_len", low=1, high=2**32)
    max_len = check_int(max_len, "max_len", low=1, high=2**32)
    anneal_t = _anneal(anneal)
    lm = scorers.resolve(lm)
    select, chains_per_input = _selection(select, pool, lm, anneal_t, n)
    # A consensus pool spends its budget on restarts: many short chains rather than one long.
    pooled = select == "consensus" and chains_per_input > 1
    steps = check_int((POOL_STEPS if pooled else DEFAULT_STEPS) if steps is None else steps,
                      "steps", low=1)  # fmt: skip
    # Each chain's result holds its kept sentences (up to n + 1, at most one per step, as
    # Python lists of up to max_len ids): refuse what the machine cannot hold.
    states = min(n + 1, steps + 1) + 1
    check_request(chains_per_input * len(inputs) * (256 + states * (120 + 8 * max_len)),
                  "n" if chains_per_input == n else "pool")  # fmt: skip
    move_weights = _moves(moves)
    backoff_setting = _backoff(backoff, lm)
    best = select != "last"  # keep each chain's best state, not its last
    forms_fn = _forms_of(forms)
    ids = ids or _Ids(lm)
    tokens = [[ids.id(w) for w in ws] for ws in inputs]
    units = units or [[] for _ in inputs]
    alternatives = []
    for ws, fl, us in zip(inputs, fixed, units):
        # Forms per keyword token; the tokens of a keyword of several are written as given.
        single = [n == 1 for n in us for _ in range(n)] if us else [True] * sum(fl)
        per_keyword = []
        fixed_at = 0
        for w, f in zip(ws, fl):
            fixed_at += f
            if f and forms_fn is not None and single[fixed_at - 1]:
                known = (ids.known(v) for v in forms_fn(w) if isinstance(v, str) and v != w)
                per_keyword.append(sorted({i for i in known if i is not None}))
            elif f:
                per_keyword.append([])
        alternatives.append(per_keyword)
    # "free" order: each chain starts from its own permutation of the keywords (and the
    # reorder move moves them), so the order varies across chains.
    if permute:  # (keyword inputs: every token is a keyword's)
        rng = random.Random(seed)
        tasks, flags, alts, pri, unit_lists = [], [], [], [], []
        for t, fl, a, p, us in zip(tokens, fixed, alternatives, priors, units):
            sizes = us or [1] * len(t)
            starts = np.cumsum([0, *sizes])
            for _ in range(chains_per_input):
                order = rng.sample(range(len(sizes)), len(sizes))
                span = [i for u in order for i in range(starts[u], starts[u + 1])]
                tasks.append([t[i] for i in span])
                flags.append(fl)
                alts.append([a[i] for i in span])
                pri.append(p)
                unit_lists.append([sizes[u] for u in order] if us else [])
        chains = 1
    else:
        tasks, flags, alts, pri, chains = tokens, fixed, alternatives, priors, chains_per_input
        unit_lists = units
    settings: _CgmhSettings = {
        "chains": chains,
        "steps": steps,
        "top_k": top_k,
        "moves": move_weights,
        "min_len": min_len,
        "max_len": max_len,
        "gamma": float(gamma),
        "length": _length(length, lm, backoff_setting),
        "backoff": backoff_setting,
        "anneal": anneal_t,
        "index": index,
        "explore": float(explore),
        "blocked": _blocked(block, lm),
        "keep": n + 1,
        "free_order": permute,
        "units": unit_lists,
        "seed": seed,
        "best": best,
        "trace": bool(return_trace),
    }
    raw = _native.cgmh_run(lm, tasks, flags, alts, pri, settings)
    text = _text_of(ids, tokenizer, sentence_case)
    pools = _pools(raw, chains_per_input, select, distinct, text)
    return _results(pools, n, best, distinct, ids, text)


def _text_of(ids: _Ids, tokenizer: Tokenizer, sentence_case: bool) -> Callable[[list[int]], str]:
    """The text a token-id list is returned as."""

    def text(toks: list[int]) -> str:
        out = detokenize([ids.word(t) for t in toks], tokenizer)
        return as_sentence(out) if sentence_case else out

    return text


def _results(
    pools: list[list[dict[str, Any]]],
    n: int,
    best: bool,
    distinct: bool,
    ids: _Ids,
    text: Callable[[list[int]], str],
) -> list[list[Sentence]]:
    """The :class:`Sentence` rows of each input's first ``n`` chains (of its ``pool``, in
    order of preference) from the chains' raw results (``kept``: best states, ``last``,
    ``last_logprob``, ``log_target``, move counters); ``text`` (:func:`_text_of`) writes
    each token list as it is returned."""
    out = []
    for pool in pools:
        row = []
        for toks, logprob, log_target, r in _pick(pool, best, distinct, text)[:n]:
            words = [ids.word(t) for t in toks]
            row.append(
                Sentence(
                    text=text(toks),
                    tokens=words,
                    logprob=logprob,
                    log_target=log_target,
                    last_tokens=[ids.word(t) for t in r["last"]],
                    last_logprob=r["last_logprob"],
                    proposed=dict(zip(MOVES, r["proposed"])),
                    accepted=dict(zip(MOVES, r["accepted"])),
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


def _keyword_units(
    keywords: object, tokenizer: Tokenizer, name: str, lm: Any = None
) -> list[list[str]]:
    """Each keyword's tokens (matched to ``lm``'s vocabulary when given, see
    :func:`kexue.text.segment_keyword`): a keyword of several tokens is one unit."""
    if isinstance(keywords, str):
        keywords = [keywords]
    if not isinstance(keywords, (list, tuple)):
        raise TypeError(f"{name} must be a str or a list of str, got {type(keywords).__name__}")
    known = None if lm is None else (lambda w: lm.word_id(w) is not None)
    units: list[list[str]] = []
    for k in keywords:
        if not isinstance(k, str):
            raise TypeError(f"{name} must hold str, got {type(k).__name__}")
        toks = segment_keyword(k, tokenizer, known)
        if not toks:
            raise ValueError(f"{name} must not hold empty strings, got {k!r}")
        for t in toks:
            _check_keyword(t, name)
        units.append(toks)
    if not units:
        raise ValueError(f"{name} must hold at least one keyword")
    return units


def _keywords(keywords: object, tokenizer: Tokenizer, name: str) -> list[str]:
    return [w for unit in _keyword_units(keywords, tokenizer, name) for w in unit]


_OPTIONS = {
    "select": None,
    "return_trace": False,
    "top_k": 50,
    "gamma": 1.0,
    "min_len": 1,
    "max_len": 40,
    "length": "auto",
    "backoff": "auto",
    "forms": "auto",
    "block": "auto",
    "index": "min",
    "explore": 0.01,
    "moves": None,
    "distinct": True,
    "pool": 1,
}


def _options(options: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"unexpected options: {sorted(unknown)}")
    return {**_OPTIONS, **defaults, **options}


def _resolve(lm: Any, tokenizer: Tokenizer, lang: str = "en") -> tuple[Any, Tokenizer]:
    """The scorer for ``lm`` (the built-in LM of ``lang`` for None) and the tokenizer: the
    given one, else the one the LM was built with."""
    scorer = scorers.resolve(lm, lang)
    return scorer, tokenizer if tokenizer is not None else getattr(scorer, "text_tokenizer", None)


def generate_many(
    keyword_lists: Sequence[Sequence[str] | str],
    lm: Any = None,
    *,
    n: int = 1,
    steps: int | None = None,
    seed: int = 0,
    order: str = "free",
    anneal: object = None,
    tokenizer: Tokenizer = None,
    lang: str | None = None,
    **options: Any,
) -> list[list[Sentence]]:
    """:func:`generate` for many keyword sets at once (all chains of all inputs in parallel);
    returns one list of ``n`` sentences per input.

    >>> out = generate_many([["dog", "ball"], ["rain", "city"]], n=1, steps=80, anneal=True)
    >>> [len(row) for row in out]
    [1, 1]
    """
    if order not in ("free", "fixed"):
        raise ValueError(f"order must be 'free' or 'fixed', got {order!r}")
    if isinstance(keyword_lists, str) or not isinstance(keyword_lists, Sequence):
        raise TypeError("keyword_lists must be a list of keyword lists")
    lm, tokenizer = _resolve(lm, tokenizer, _language(keyword_lists, lm, lang))
    units = [
        _keyword_units(k, tokenizer, f"keyword_lists[{i}]", lm) for i, k in enumerate(keyword_lists)
    ]
    inputs = [[w for u in us for w in u] for us in units]
    return _run(
        lm, inputs, [[True] * len(k) for k in inputs], [[] for _ in inputs],
        n=n, steps=steps, seed=seed, anneal=anneal, tokenizer=tokenizer,
        permute=order == "free", sentence_case=True,
        units=[[len(u) for u in us] for us in units], **_options(options, pool="auto"),
    )  # fmt: skip


def _language(keyword_lists: Sequence[Sequence[str] | str], lm: Any, lang: str | None) -> str:
    """Which built-in LM ``lm=None`` means: ``lang``, else the keywords' script."""
    if lang is not None:
        if lang not in ("en", "zh"):
            raise ValueError(f"lang must be None, 'en' or 'zh', got {lang!r}")
        if lm is not None:
            raise ValueError("lang chooses a built-in LM: pass lang or lm, not both")
        return lang
    if lm is not None:
        return "en"
    words = [w for k in keyword_lists for w in ([k] if isinstance(k, str) else k)]
    return keyword_language(w for w in words if isinstance(w, str))


def generate(
    keywords: Sequence[str] | str,
    lm: Any = None,
    *,
    n: int = 1,
    steps: int | None = None,
    seed: int = 0,
    order: str = "free",
    anneal: object = None,
    lang: str | None = None,
    **options: Any,
) -> list[Sentence]:
    """``n`` distinct sentences, each holding a form of every keyword.

    ``lm``: a :class:`kexue.lm.NgramLM`, a path of an LM file or a scorer
    (:mod:`kexue.scorers`); default: a built-in LM, chosen by ``lang`` (``"en"`` or
    ``"zh"``, :func:`kexue.scorers.chinese_lm`, the ``zh`` extra) or, with ``lang=None``, by
    the keywords' script (Chinese characters: ``"zh"``; keywords mixing Chinese and Latin
    letters: ValueError, pass ``lang``). A keyword the tokenizer splits into several tokens
    (美食节 → 美食 节) is one unit: it stays whole and contiguous and moves as one.
    ``order``: ``"fixed"`` keeps the keywords in the given order; ``"free"`` starts each
    chain from its own permutation and lets the chain move keywords. ``anneal``: ``True``, a
    start temperature or ``(t0, t1)`` (geometric schedule) turns sampling into search: each
    chain keeps the best sentence it saw and, with a native n-gram LM, a pool of ``pool``
    chains (default 24, of 64 steps each) runs per input and the ``n`` sentences returned
    are those that agree most with the pool's others (``select="consensus"``: minimum Bayes
    risk, the mean sentence BLEU against the other chains' sentences, plus
    :data:`CONSENSUS_TARGET_WEIGHT` × the sentence's log target). Otherwise the last
    state (``select="last"``); ``select="best"``: each chain's best sentence, no pool.
    ``steps``: MH steps per chain (default 200; 64 in a consensus pool).

    Options: ``forms`` (``"auto"``: English inflections of Latin-script keywords, kept to
    those the LM knows; ``"exact"``: the keyword as given; or a callable word → forms, for
    other languages), ``length`` (``"auto"``, ``None``, a target length, or ``(target,
    per-word cost)``: the length prior of the module doc), ``block`` (``"auto"``: the
    offensive-word list, keywords excepted; ``None``; or a list of words the output may not
    contain), ``top_k`` (candidates per edit), ``gamma`` (exponent on p(x)), ``min_len``,
    ``max_len``, ``backoff`` (``"auto"``, ``None`` or ``(order, cost)``: the back-off
    penalty of the module doc; ``"auto"``: on with a native n-gram LM),
    ``index`` (``"min"``/``"product"``/``"forward"``: how forward and backward LMs pick
    candidates), ``explore`` (probability of a uniform word proposal), ``moves``
    (weights of :data:`MOVES`), ``distinct`` (default True: a chain whose sentence repeats an
    earlier chain's returns its best state not yet taken, so the ``n`` sentences differ when
    the chains saw ``n`` different ones; False: every chain's own state, e.g. to use the
    chains as independent samples), ``pool`` (``"auto"`` or chains per input for
    ``select="consensus"``; ``"auto"`` is 24 when annealing with a native n-gram LM, else 1),
    ``tokenizer`` (default: the LM's own), ``select``, ``return_trace``. Text comes back in
    sentence case with final punctuation.

    >>> out = generate(["dog", "frisbee", "catch"], n=2, anneal=True, seed=0)
    >>> len({s.text for s in out})
    2
    >>> all({"catch", "catches", "caught", "catching"} & {w.lower() for w in s.tokens}
    ...     for s in out)
    True
    """
    return generate_many([keywords], lm, n=n, steps=steps, seed=seed, order=order,
                         anneal=anneal, lang=lang, **options)[0]  # fmt: skip


def _sentence(sentence: str, tokenizer: Tokenizer) -> list[str]:
    words = tokenize(sentence, tokenizer)  # TypeError for a non-str
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
    embeddings (any callable text → vector). ``keywords``: words that must stay (as given).
    No length prior by default (the similarity keeps the length).

    >>> from kexue.cgmh import paraphrase
    >>> out = paraphrase("the old city is very quiet", keywords=["city"], n=2, steps=100)
    >>> all("city" in s.text.lower() for s in out)
    True
    """
    lm, tokenizer = _resolve(lm, tokenizer)
    words = _sentence(sentence, tokenizer)
    keep = set(_keywords(list(keywords), tokenizer, "keywords")) if keywords else set()
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
        anneal=anneal, tokenizer=tokenizer, permute=False, sentence_case=False, ids=ids,
        **_options(options, length=None, backoff=None, forms="exact"),
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
    ``anneal``: searches), so edits that raise fluency enough are kept.

    >>> from kexue.cgmh import correct
    >>> from kexue.lm import NgramLM
    >>> lm = NgramLM.build(["the cat sat on the mat", "a dog sat on the log"] * 5, order=3,
    ...                    progress=False, discount_fallback=True)
    >>> fixed = correct("the cat sat on on the mat", lm, steps=150, seed=0)[0]
    >>> "on on" in fixed.text, bool(fixed.logprob > lm.logprob("the cat sat on on the mat"))
    (False, True)
    """
    lm, tokenizer = _resolve(lm, tokenizer)
    words = _sentence(sentence, tokenizer)
    ids = _Ids(lm)
    prior = ("edit", [ids.id(w) for w in words], float(weight))
    return _run(
        lm, [words], [[False] * len(words)], [[prior]], n=n, steps=steps, seed=seed,
        anneal=anneal, tokenizer=tokenizer, permute=False, sentence_case=False, ids=ids,
        **_options(options, length=None, backoff=None, forms="exact"),
    )[0]  # fmt: skip


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).ravel()
    norm = np.linalg.norm(a)
    return a / norm if norm > 0 else a


def plot_trace(sentences: Sequence[Sentence], path: str) -> None:
    """Draws log target and running acceptance rate over steps (needs ``return_trace=True``
    and matplotlib, the ``plot`` extra) into ``path`` (written via a temp file + rename).

    >>> import os, tempfile
    >>> from kexue.cgmh import generate, plot_trace
    >>> path = os.path.join(tempfile.mkdtemp(), "trace.png")
    >>> plot_trace(generate("rain", n=2, steps=30, return_trace=True), path)
    >>> os.path.getsize(path) > 1000
    True
    """
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
