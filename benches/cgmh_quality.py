"""CGMH quality as in the paper's keyword-to-sentence table, on WikiText-2.

Data: sentences of ``wikitext-2/test.txt`` (paragraph lines split at " . ", headings dropped)
with 8 to 25 words and no ``<unk>``, every 5th one until ``--sentences`` have keywords.
Keyword rule: sentence i gets k = 1 + i mod 4 keywords, drawn uniformly (seed i) from its
content words (alphabetic, >= 3 letters, not a stop word, in the LM's vocabulary), kept in
sentence order; sentences with fewer than k content words are skipped.
LM: modified Kneser-Ney (kexue.lm, order 3) on the sentences of ``wikitext-2/valid.txt`` (split
the same way, one per line), forward and backward.
Metric: mean per-token NLL (natural log, ``</s>`` counted) under that forward LM.
Rows: the human sentences; CGMH sampling (last state); CGMH with simulated annealing (best
state); sep-B/F (one keyword: greedy backward to ``<s>`` with the backward LM, then greedy
forward to ``</s>``; the paper's baseline for one keyword); grid beam search (Hokamp & Liu
2017: beams indexed by the number of keywords placed, in order, beam 5, length-normalised).

    python benches/cgmh_quality.py [--sentences 300] [--steps 200]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict

import numpy as np

from kexue import cgmh
from kexue.lm import NgramLM
from kexue.scorers import NgramScorer

DATA = "/work/shared/data/wikitext-2"
STOP = set(
    """the a an of and or but in on at to for from by with as is was were be been being are it its
    this that these those he she they we you i his her their our your my him them us who whom
    which what when where why how not no than then there here also into onto over under after
    before about between during while has have had do does did will would can could may might
    must shall should one two s""".split()
)


def split(path: str) -> list[list[str]]:
    """The sentences of a WikiText file: headings dropped, paragraphs split at " . "."""
    pool = []
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.strip().startswith("=")]
    for line in lines:
        for s in line.split(" . "):
            words = s.split()
            if words and words[-1] != ".":
                words.append(".")
            pool.append(words)
    return pool


def sentences(path: str, stride: int = 5) -> list[list[str]]:
    pool = [w for w in split(path) if 8 <= len(w) <= 25 and "<unk>" not in w]
    return pool[::stride]  # the caller stops once enough have keywords


def keywords(words: list[str], k: int, seed: int, vocab: set[str]) -> list[str] | None:
    content = [
        i
        for i, w in enumerate(words)
        if w.isalpha() and len(w) >= 3 and w.lower() not in STOP and w in vocab
    ]
    if len(content) < k:
        return None
    pick = sorted(random.Random(seed).sample(content, k))
    return [words[i] for i in pick]


def nll(lm: NgramLM, words: list[str]) -> float:
    return -float(lm.logprob(" ".join(words))) / (len(words) + 1)


class Next:
    """Cached whole-vocabulary next-word log-probs of an NgramLM (context: last order-1)."""

    def __init__(self, lm: NgramLM, bos: bool = True) -> None:
        self.lm, self.keep, self.bos, self.cache = lm, lm.order - 1, bos, {}

    def __call__(self, context: list[str]) -> np.ndarray:
        short = self.bos and len(context) < self.keep  # the context starts at <s>
        key = (short, *context[-self.keep :])
        if key not in self.cache:
            text = " ".join(context[-self.keep :])
            self.cache[key] = self.lm.next_logprobs(text, bos=short)
        return self.cache[key]


def sep_bf(fwd: Next, bwd: Next, vocab: list[str], kw: str, max_len: int = 25) -> list[str]:
    """Greedy backward from the keyword to <s>, then greedy forward to </s>."""
    left: list[str] = []
    for _ in range(max_len // 2):
        p = bwd([kw, *left]).copy()  # the backward LM reads the sentence right to left
        p[0] = -np.inf  # <unk>
        w = vocab[int(np.argmax(p))]
        if w == "</s>":  # the backward model's end of sentence is the sentence start
            break
        left.append(w)
    sent = [*reversed(left), kw]
    while len(sent) < max_len:
        p = fwd(sent).copy()
        p[0] = -np.inf
        w = vocab[int(np.argmax(p))]
        if w == "</s>":
            break
        sent.append(w)
    return sent


def grid_beam(
    fwd: Next, vocab: list[str], kws: list[str], beam: int = 5, max_len: int = 25
) -> list[str]:
    """Grid beam search: grid[c] holds hypotheses with the first c keywords placed."""
    index = {w: i for i, w in enumerate(vocab)}
    k = len(kws)
    grid: list[list[tuple[float, list[str]]]] = [[(0.0, [])]] + [[] for _ in range(k)]
    done: list[tuple[float, list[str]]] = []
    for _ in range(max_len):
        new: list[list[tuple[float, list[str]]]] = [[] for _ in range(k + 1)]
        for c in range(k + 1):
            for score, hyp in grid[c]:
                p = fwd(hyp)
                if c == k and hyp:
                    done.append((score + float(p[2]), hyp))  # close with </s>
                if c < k:  # place the next keyword
                    new[c + 1].append((score + float(p[index[kws[c]]]), [*hyp, kws[c]]))
                q = p.copy()
                q[:3] = -np.inf
                for w in np.argpartition(-q, beam)[:beam]:
                    new[c].append((score + float(q[w]), [*hyp, vocab[w]]))
        grid = [sorted(b, key=lambda t: -t[0])[:beam] for b in new]
    if not done:
        done = [(s, h) for s, h in grid[k]]
    return max(done, key=lambda t: t[0] / (len(t[1]) + 1))[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--gamma", type=float, default=1.0, help="exponent on p(x) for CGMH")
    args = ap.parse_args()
    t0 = time.perf_counter()
    train = [" ".join(w) for w in split(f"{DATA}/valid.txt")]
    lm = NgramLM.build(train, args.order, backward=True, progress=False)
    scorer = NgramScorer(lm)
    vocab = list(lm.vocab)
    vset = set(vocab)
    took = time.perf_counter() - t0
    print(f"LM: KN order {args.order} on wikitext-2/valid.txt, vocab {len(vocab)}, {took:.1f} s")
    items = []
    for i, words in enumerate(sentences(f"{DATA}/test.txt")):
        k = 1 + len(items) % 4
        kw = keywords(words, k, i, vset)
        if kw is not None:
            items.append((words, kw))
        if len(items) == args.sentences:
            break
    print(f"{len(items)} test sentences; keywords per sentence 1-4 (cycled)")
    rows: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for words, kw in items:
        rows["human"][len(kw)].append(nll(lm, words))
    kwsets = [kw for _, kw in items]
    common = dict(
        lm=scorer,
        n=1,
        steps=args.steps,
        seed=0,
        order="fixed",
        top_k=50,
        max_len=30,
        gamma=args.gamma,
    )
    t = time.perf_counter()
    sampled = cgmh.generate_many(kwsets, **common)
    t_s = time.perf_counter() - t
    t = time.perf_counter()
    annealed = cgmh.generate_many(kwsets, anneal=True, **common)
    t_a = time.perf_counter() - t
    for kw, s, a in zip(kwsets, sampled, annealed):
        assert all(w in a[0].tokens for w in kw) and all(w in s[0].tokens for w in kw)
        rows["CGMH (sampling, last state)"][len(kw)].append(nll(lm, s[0].tokens))
        rows["CGMH (annealing, best state)"][len(kw)].append(nll(lm, a[0].tokens))
    # The keyword is not at the sentence end: the backward context does not start at <s>.
    fwd, bwd = Next(lm), Next(lm.reverse, bos=False)
    t = time.perf_counter()
    seps = {}
    for i, kw in enumerate(kwsets):
        if len(kw) == 1:
            seps[i] = sep_bf(fwd, bwd, vocab, kw[0])
            rows["sep-B/F (1 keyword)"][1].append(nll(lm, seps[i]))
    t_b = time.perf_counter() - t
    t = time.perf_counter()
    gbs = []
    for kw in kwsets:
        gbs.append(grid_beam(fwd, vocab, kw))
        assert all(w in gbs[-1] for w in kw)
        rows["grid beam search (beam 5)"][len(kw)].append(nll(lm, gbs[-1]))
    t_g = time.perf_counter() - t
    print(
        f"\ntimes: CGMH sampling {t_s:.1f} s, annealing {t_a:.1f} s ({args.steps} steps/chain), "
        f"sep-B/F {t_b:.1f} s, GBS {t_g:.1f} s"
    )
    print("\nmean per-token NLL under the KN LM (lower = more fluent to the LM), by keyword count")
    head = f"{'method':<32}" + "".join(f"{f'k={k}':>9}" for k in range(1, 5)) + f"{'all':>9}"
    print(head)
    print("-" * len(head))
    for name, by_k in rows.items():
        cells = "".join(
            f"{np.mean(by_k[k]):9.3f}" if by_k.get(k) else f"{'—':>9}" for k in range(1, 5)
        )
        allv = [v for k in by_k for v in by_k[k]]
        print(f"{name:<32}{cells}{np.mean(allv):9.3f}")
    print(f"\n(n per column: {[len(rows['human'][k]) for k in range(1, 5)]})")
    lengths = {
        "human": [len(w) for w, _ in items],
        "CGMH sampling": [len(s[0].tokens) for s in sampled],
        "CGMH annealing": [len(a[0].tokens) for a in annealed],
        "sep-B/F": [len(s) for s in seps.values()],
        "GBS": [len(g) for g in gbs],
    }
    print("mean length (words): " + ", ".join(f"{k} {np.mean(v):.1f}" for k, v in lengths.items()))
    for i in range(8):
        (words, kw), s, a = items[i], sampled[i][0], annealed[i][0]
        print(f"\n  keywords {kw}\n    human:     {' '.join(words)}\n    CGMH-SA:   {a.text}")
        print(f"    CGMH-MH:   {s.text}\n    GBS:       {' '.join(gbs[i])}")
        if i in seps:
            print(f"    sep-B/F:   {' '.join(seps[i])}")


if __name__ == "__main__":
    main()
