"""CGMH with a neural target and cheap proposals: one neural sentence score per chain and step.

:func:`kexue.cgmh.generate` with :class:`kexue.scorers.HFCausalLM` scores all K candidates of
an edit with the neural model (K sentences per step). Here candidates are *proposed* by the
cheap n-gram scorer behind the neural one and *accepted* with the neural sentence probability
and the exact proposal ratio, so each step scores one sentence per chain, all chains of all
inputs batched. A scorer with ``score_words_from`` (:class:`~kexue.scorers.HFCausalLM`) keeps
each chain's key/value cache, so a proposal runs the model only from its first changed token.
The chains sample the same target as :mod:`kexue.cgmh`,

    π(x) ∝ p(x)^γ · λ(|x|) · [x holds a form of every keyword] · [no blocked word]

with p the neural LM's probability of the text the user gets (``scorer.score_words``: for
:class:`~kexue.scorers.HFCausalLM`, the detokenised words in sentence case with final
punctuation, framed by start and end of sentence), λ the length prior of :mod:`kexue.cgmh`
(by default estimated from sentences the neural model itself writes), keyword forms from
:func:`kexue.text.english_forms` (``forms="auto"``) and order as in :mod:`kexue.cgmh`
(``"fixed"``: the keywords appear in the given order). Edits stay word-level; words come from
the n-gram vocabulary, and keyword forms it lacks are reached by the reform move.

Moves (weights ``moves``), each accepted with probability
min(1, (π(x')/π(x))^(1/T) · q(x | x') / q(x' | x)), T = 1 unless annealing:

- replace word i (uniform) by w ~ q(· | x without x_i);
- insert w ~ q(· | x_<i, x_≥i) before word i (i uniform in 0..|x|); delete word i (uniform):
  the reverse of each other, so delete's ratio holds q(x_i | context) of the insert that
  would put x_i back;
- reform: a keyword form x_i becomes another form of the keywords it is a form of (uniform);
- reorder: word i moves to position j (ordered pair uniform): symmetric. A keyword of several
  tokens is a unit whose tokens must stay contiguous (moves that split it leave the support
  and are rejected), so a chain keeps its start's order of such units; the pool's chains
  start from different orders.

q(w | context) = (1 − ε) · softmax over the top-K words of log p_fwd(w | left) + log p_bwd(w |
right) (the n-gram's forward and backward models) + ε / |V| (uniform over the allowed
vocabulary V; ε = ``explore``), so every allowed word can be proposed and both directions of
a move have a computable probability. A proposal outside the support (a missing keyword, a
length outside ``min_len..max_len``) is rejected without a neural call.

>>> from kexue.neural import generate
>>> from kexue.scorers import HFCausalLM
>>> lm = HFCausalLM.from_pretrained("./my-model")     # doctest: +SKIP
>>> out = generate(["dog", "ball"], lm, n=2, anneal=True)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import cgmh
from ._dispatch import check_int
from .cgmh import Sentence
from .text import Tokenizer

__all__ = ["generate", "generate_many"]


class _Chain:
    """One chain's state: word ids, their neural log-probability, and the best states seen."""

    def __init__(
        self, tokens: list[int], rng: np.random.Generator, keep: int, min_len: int
    ) -> None:
        self.x = tokens
        self.min_len = min_len
        self.logp = -math.inf
        self.state: Any = None  # the scorer's record of x, reused when scoring an edit of x
        self.log_target = -math.inf
        self.rng = rng
        self.keep = keep
        self.kept: dict[tuple[int, ...], tuple[float, float]] = {}
        self.proposed = dict.fromkeys(cgmh.MOVES, 0)
        self.accepted = dict.fromkeys(cgmh.MOVES, 0)

    def remember(self) -> None:
        """Keeps the best states; below ``min_len`` (a start shorter than the bound) only
        until a state within it is seen, as the native sampler does."""
        key = tuple(self.x)
        within = len(key) >= self.min_len
        held_within = any(len(k) >= self.min_len for k in self.kept)
        if not within and held_within:
            return
        if within and not held_within:
            self.kept.clear()
        if key in self.kept or len(self.kept) < self.keep:
            self.kept[key] = (self.logp, self.log_target)
        else:
            worst = min(self.kept, key=lambda k: self.kept[k][1])
            if self.kept[worst][1] < self.log_target:
                del self.kept[worst]
                self.kept[key] = (self.logp, self.log_target)

    def raw(self) -> dict[str, Any]:
        kept = sorted(self.kept.items(), key=lambda kv: -kv[1][1])
        return {
            "kept": [(list(k), lp, lt) for k, (lp, lt) in kept],
            "last": list(self.x),
            "last_logprob": self.logp,
            "log_target": self.log_target,
            "proposed": [self.proposed[m] for m in cgmh.MOVES],
            "accepted": [self.accepted[m] for m in cgmh.MOVES],
        }


class _Input:
    """What the chains of one keyword set share: each keyword's tokens with their forms (as
    id sets; a keyword of several tokens is one unit, written as given), the allowed
    vocabulary mask, and the support test."""

    def __init__(
        self,
        given: list[list[int]],
        units: list[list[set[int]]],
        allowed: np.ndarray,
        free: bool,
    ) -> None:
        self.given = given
        self.units = units
        self.allowed = allowed
        self.free = free
        self.form_ids: set[int] = set().union(*(f for u in units for f in u))

    def start(self, rng: random.Random | None) -> list[int]:
        """A first state: the keywords as given (each unit's tokens together), in a random
        order of units when ``rng`` is given."""
        order = list(range(len(self.units)))
        if rng is not None:
            order = rng.sample(order, len(order))
        return [w for k in order for w in self.given[k]]

    def _at(self, x: list[int], k: int, p: int) -> bool:
        """Whether unit ``k`` matches ``x`` from position ``p``."""
        unit = self.units[k]
        return p + len(unit) <= len(x) and all(x[p + j] in f for j, f in enumerate(unit))

    def holds(self, x: list[int]) -> bool:
        """Every keyword has a form at its own positions, a unit's tokens contiguous (in order
        unless free)."""
        if not self.free:  # the earliest match of each unit in turn is optimal
            p = 0
            for k in range(len(self.units)):
                while p < len(x) and not self._at(x, k, p):
                    p += 1
                if p == len(x):
                    return False
                p += len(self.units[k])
            return True
        used = [False] * len(x)

        def place(k: int) -> bool:  # backtracking over non-overlapping spans (few units)
            if k == len(self.units):
                return True
            size = len(self.units[k])
            for p in range(len(x) - size + 1):
                if not any(used[p : p + size]) and self._at(x, k, p):
                    used[p : p + size] = [True] * size
                    if place(k + 1):
                        return True
                    used[p : p + size] = [False] * size
            return False

        return place(0)

    def reforms(self, w: int) -> list[int]:
        """The forms of every one-token keyword ``w`` is a form of (sorted; empty if none)."""
        if w not in self.form_ids:
            return []
        return sorted(set().union(*(u[0] for u in self.units if len(u) == 1 and w in u[0])))


class _Proposal:
    """q(· | context) of one slot: top-K of the n-gram's forward + backward scores mixed with
    an ε-uniform over the allowed words."""

    def __init__(self, lm: Any, y: list[int], pos: int, allowed: np.ndarray, top_k: int,
                 explore: float) -> None:  # fmt: skip
        s = np.asarray(lm.forward_logprobs(y, pos), dtype=np.float64)
        back = lm.backward_logprobs(y, pos)
        if back is not None:
            s = s + back
        ok = allowed & (s > -np.inf)
        s[~ok] = -np.inf
        self.n_ok = n_ok = int(np.count_nonzero(ok))
        k = min(top_k, n_ok)
        top = np.argpartition(-s, k - 1)[:k] if 0 < k < len(s) else np.flatnonzero(ok)
        top.sort()  # a fixed order: the same context gives the same q
        p = np.exp(s[top] - s[top].max()) if k else np.zeros(0)
        self.top, self.cdf = top, np.cumsum(p / p.sum()) if k else p
        self.ok, self.explore = ok, explore

    def sample(self, rng: np.random.Generator) -> int | None:
        if self.n_ok == 0:
            return None
        if rng.random() < self.explore:
            return int(np.flatnonzero(self.ok)[int(rng.integers(self.n_ok))])
        hit = int(np.searchsorted(self.cdf, rng.random() * self.cdf[-1], side="right"))
        return int(self.top[min(hit, len(self.top) - 1)])

    def logq(self, w: int) -> float:
        if w >= len(self.ok) or not self.ok[w]:
            return -math.inf
        hit = int(np.searchsorted(self.top, w))
        top = 0.0
        if hit < len(self.top) and self.top[hit] == w:
            top = self.cdf[hit] - (self.cdf[hit - 1] if hit else 0.0)
        return math.log((1 - self.explore) * top + self.explore / self.n_ok)


def generate_many(
    keyword_lists: Sequence[Sequence[str] | str],
    lm: Any,
    *,
    n: int = 1,
    steps: int = 200,
    seed: int = 0,
    order: str = "free",
    anneal: object = None,
    tokenizer: Tokenizer = None,
    select: str | None = None,
    top_k: int = 50,
    gamma: float = 1.0,
    min_len: int = 1,
    max_len: int = 40,
    length: object = "auto",
    forms: str | Callable[[str], Iterable[str]] = "auto",
    block: object = "auto",
    explore: float = 0.01,
    moves: Mapping[str, float] | None = None,
    distinct: bool = True,
    pool: object = "auto",
    stats: dict[str, float] | None = None,
) -> list[list[Sentence]]:
    """``n`` sentences per keyword set, sampled (or, with ``anneal``, searched) from the
    neural target of the module doc. ``lm``: a scorer with ``score_words`` (a batch of word
    lists → natural-log probabilities; e.g. :class:`kexue.scorers.HFCausalLM`) whose
    ``forward_logprobs``/``backward_logprobs`` propose words. Options as in
    :func:`kexue.cgmh.generate` (``pool="auto"`` is one chain per sentence here: each chain
    costs neural scores; ``pool=m`` with ``anneal`` returns the consensus of ``m`` chains, of
    ``steps`` each); ``stats``: a dict that receives ``sentences_scored``,
    ``tokens_scored``, ``tokens_reused`` (when the scorer counts them) and ``score_seconds``.

    With a tiny random GPT-2 and a byte tokenizer standing in for a real model:

    >>> import torch, transformers
    >>> from kexue.lm import NgramLM
    >>> from kexue.scorers import HFCausalLM, NgramScorer
    >>> text = ["the cat sat on the mat", "a dog sat on a log"] * 3
    >>> ngram = NgramScorer(NgramLM.build(text, 2, progress=False, discount_fallback=True))
    >>> _ = torch.manual_seed(0)
    >>> config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2)
    >>> class Bytes:  # any Hugging Face tokenizer has these members
    ...     bos_token_id = eos_token_id = 0
    ...     def encode(self, text):
    ...         return [1 + ord(c) % 63 for c in text]
    >>> lm = HFCausalLM(transformers.GPT2LMHeadModel(config), Bytes(), candidates=ngram)
    >>> stats = {}
    >>> out = generate_many([["cat", "log"], ["dog"]], lm, steps=20, seed=0, stats=stats)
    >>> [len(row) for row in out], stats["sentences_scored"] <= 2 * 21
    ([1, 1], True)
    """
    if order not in ("free", "fixed"):
        raise ValueError(f"order must be 'free' or 'fixed', got {order!r}")
    if isinstance(keyword_lists, str) or not isinstance(keyword_lists, Sequence):
        raise TypeError("keyword_lists must be a list of keyword lists")
    if not hasattr(lm, "score_words"):
        raise TypeError(
            f"lm must be a neural scorer with score_words (kexue.scorers.HFCausalLM), got {lm!r}"
        )
    tokenizer = tokenizer if tokenizer is not None else getattr(lm, "text_tokenizer", None)
    inputs = [cgmh._keyword_units(k, tokenizer, f"keyword_lists[{i}]", lm)
              for i, k in enumerate(keyword_lists)]  # fmt: skip
    n = check_int(n, "n", low=1)
    steps = check_int(steps, "steps", low=1)
    top_k = check_int(top_k, "top_k", low=1)
    seed = check_int(seed, "seed", low=0, high=2**64 - 1)
    min_len = check_int(min_len, "min_len", low=1)
    max_len = check_int(max_len, "max_len", low=min_len)
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    if not 0 <= explore <= 1:
        raise ValueError(f"explore must be in [0, 1], got {explore}")
    if any(sum(map(len, k)) > max_len for k in inputs):
        raise ValueError("max_len must be at least the number of keywords")
    anneal_t = cgmh._anneal(anneal)
    if anneal_t is not None and not (anneal_t[0] > 0 and anneal_t[1] > 0):
        raise ValueError(f"anneal temperatures must be > 0, got {anneal!r}")
    select, per_input = cgmh._selection(select, pool, lm, anneal_t, n)
    weights = cgmh._moves(moves)
    total = sum(weights.values())
    if not total > 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"moves must hold weights >= 0 with a positive sum, got {moves!r}")
    p_move = np.array([weights[m] / total for m in cgmh.MOVES])
    cum_move = np.cumsum(p_move)
    forms_fn = cgmh._forms_of(forms)
    prior = cgmh._length(length, lm, None)
    blocked = cgmh._blocked(block, lm)
    ids = cgmh._Ids(lm)
    vocab = ids.vocab_size

    jobs: list[_Input] = []
    for units in inputs:
        per = []
        for unit in units:
            if len(unit) > 1:  # a keyword of several tokens: written as given
                per.append([{ids.id(t)} for t in unit])
                continue
            alt = forms_fn(unit[0]) if forms_fn is not None else ()
            per.append([{ids.id(unit[0])} | {ids.id(v) for v in alt if isinstance(v, str)}])
        allowed = np.ones(vocab, dtype=bool)
        keyword_ids = set().union(*(f for u in per for f in u))
        allowed[[b for b in blocked if b not in keyword_ids]] = False
        given = [[ids.id(t) for t in unit] for unit in units]
        jobs.append(_Input(given, per, allowed, order == "free"))

    def log_target(x: list[int], logp: float) -> float:
        short = max(0, prior[0] - len(x)) if prior else 0
        return gamma * logp - (prior[1] * short if prior else 0.0)

    order_rng = random.Random(seed)
    chains: list[tuple[_Input, _Chain]] = []
    for i, job in enumerate(jobs):
        for c in range(per_input):
            start = job.start(order_rng if order == "free" else None)
            rng = np.random.default_rng([seed, i, c])
            chains.append((job, _Chain(start, rng, n + 1, min_len)))
    scored = {"sentences_scored": 0, "score_seconds": 0.0}
    tokens_before = getattr(lm, "tokens_scored", None)
    reused_before = getattr(lm, "tokens_reused", None)
    incremental = getattr(lm, "score_words_from", None)

    def score(xs: list[list[int]], previous: list[Any]) -> tuple[np.ndarray, list[Any]]:
        t = time.perf_counter()
        words = [[ids.word(w) for w in x] for x in xs]
        if incremental is not None:  # an edit's unchanged prefix is not scored again
            out, states = incremental(words, previous)
        else:
            out, states = lm.score_words(words), previous
        out = np.asarray(out, np.float64)
        scored["score_seconds"] += time.perf_counter() - t
        scored["sentences_scored"] += len(xs)
        if out.shape != (len(xs),) or np.isnan(out).any():
            raise ValueError(f"score_words returned {out!r} for {len(xs)} sentences")
        return out, states

    for (job, ch), lp, state in zip(
        chains, *score([ch.x for _, ch in chains], [None] * len(chains))
    ):
        ch.logp, ch.state = float(lp), state
        ch.log_target = log_target(ch.x, ch.logp) if job.holds(ch.x) else -math.inf
        ch.remember()

    for t in range(steps):
        temp = 1.0
        if anneal_t is not None:
            frac = t / max(1, steps - 1)
            temp = anneal_t[0] * (anneal_t[1] / anneal_t[0]) ** frac
        pending = []  # (chain, move, proposal, log q ratio)
        for job, ch in chains:
            pick = int(np.searchsorted(cum_move, ch.rng.random() * cum_move[-1], side="right"))
            move = cgmh.MOVES[min(pick, len(cgmh.MOVES) - 1)]
            ch.proposed[move] += 1
            y, log_ratio = _propose(move, ch, job, lm, p_move, top_k, explore)
            # below min_len only a lengthening edit is allowed (towards the support)
            short = len(y) < min_len and len(y) <= len(ch.x) if y is not None else False
            if y is None or short or len(y) > max_len or not job.holds(y):
                continue
            if y == ch.x:  # a redraw of the current state: accepted, nothing to score
                ch.accepted[move] += 1
                continue
            pending.append((ch, move, y, log_ratio))
        if not pending:
            continue
        lps, states = score([p[2] for p in pending], [p[0].state for p in pending])
        for (ch, move, y, log_ratio), lp, state in zip(pending, lps, states):
            new = log_target(y, float(lp))
            # from outside the support (π = 0: -inf target, or shorter than min_len) accept
            outside = ch.log_target == -math.inf or len(ch.x) < min_len
            log_a = 0 if outside else (new - ch.log_target) / temp + log_ratio
            if math.log(ch.rng.random() or 1e-300) < log_a:
                ch.x, ch.logp, ch.log_target, ch.state = y, float(lp), new, state
                ch.accepted[move] += 1
                ch.remember()
    if stats is not None:
        stats.update(scored)
        if tokens_before is not None:
            stats["tokens_scored"] = lm.tokens_scored - tokens_before
        if reused_before is not None:
            stats["tokens_reused"] = lm.tokens_reused - reused_before
    text = cgmh._text_of(ids, tokenizer, True)
    pools = cgmh._pools([ch.raw() for _, ch in chains], per_input, select, distinct, text)
    return cgmh._results(pools, n, select != "last", distinct, ids, text)


def _propose(
    move: str,
    ch: _Chain,
    job: _Input,
    lm: Any,
    p_move: np.ndarray,
    top_k: int,
    explore: float,
) -> tuple[list[int] | None, float]:
    """A proposed state and log q(x | y) − log q(y | x) (None: nothing to propose)."""
    x, rng = ch.x, ch.rng
    length = len(x)
    p_ins, p_del = p_move[cgmh.MOVES.index("insert")], p_move[cgmh.MOVES.index("delete")]
    if move == "replace" and length:
        i = int(rng.integers(length))
        q = _Proposal(lm, x, i, job.allowed, top_k, explore)
        w = q.sample(rng)
        if w is None:
            return None, 0.0
        return [*x[:i], w, *x[i + 1 :]], q.logq(x[i]) - q.logq(w)
    if move == "insert" and p_del > 0:
        i = int(rng.integers(length + 1))
        y = [*x[:i], 0, *x[i:]]
        q = _Proposal(lm, y, i, job.allowed, top_k, explore)
        w = q.sample(rng)
        if w is None:
            return None, 0.0
        y[i] = w
        # forward: p_ins/(L+1)·q(w); reverse: delete position i of L+1 words, p_del/(L+1)
        return y, math.log(p_del) - math.log(p_ins) - q.logq(w)
    if move == "delete" and length and p_ins > 0:
        i = int(rng.integers(length))
        q = _Proposal(lm, x, i, job.allowed, top_k, explore)
        return [*x[:i], *x[i + 1 :]], math.log(p_ins) + q.logq(x[i]) - math.log(p_del)
    if move == "reform" and length:
        i = int(rng.integers(length))
        options = job.reforms(x[i])
        if not options:
            return None, 0.0
        w = options[int(rng.integers(len(options)))]
        return [*x[:i], w, *x[i + 1 :]], math.log(len(options)) - math.log(len(job.reforms(w)))
    if move == "reorder" and length > 1:
        i, j = (int(v) for v in rng.choice(length, 2, replace=False))
        y = [*x[:i], *x[i + 1 :]]
        y.insert(j, x[i])
        return y, 0.0
    return None, 0.0


def generate(
    keywords: Sequence[str] | str,
    lm: Any,
    *,
    n: int = 1,
    steps: int = 200,
    seed: int = 0,
    order: str = "free",
    anneal: object = None,
    **options: Any,
) -> list[Sentence]:
    """:func:`generate_many` for one keyword set: ``n`` sentences, each holding a form of
    every keyword. ``lm`` must score whole sentences with ``score_words``:

    >>> generate(["cat"], None)
    Traceback (most recent call last):
    TypeError: lm must be a neural scorer with score_words (kexue.scorers.HFCausalLM), got None
    """
    return generate_many([keywords], lm, n=n, steps=steps, seed=seed, order=order,
                         anneal=anneal, **options)[0]  # fmt: skip
