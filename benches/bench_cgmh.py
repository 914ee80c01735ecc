"""CGMH speed: kexue (whole loop in Rust, chains in parallel) vs the same algorithm written in
Python over ``kenlm.Model`` — the way a user would do it today — with the same LM (a KN
order-3 model of wikitext-2/valid.txt built by kexue.lm, handed to kenlm as ARPA, forward and
backward), the same steps, top-K and proposals.

    python benches/bench_cgmh.py [--steps 50] [--chains 4] [--repeat 3]

Prints steps/s, candidate sentences scored/s and sentences/s, and the ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile

import numpy as np

from kexue import cgmh, get_num_threads
from kexue.benchmarks import median_time
from kexue.lm import NgramLM
from kexue.scorers import NgramScorer

DATA = "/work/shared/data/wikitext-2/valid.txt"
KEYWORDS = [["city", "music"], ["war"], ["album", "song", "released"], ["king", "church"]]


class PyCGMH:
    """CGMH in plain Python over kenlm: replace / insert / delete, top-K by min(forward,
    backward), candidates drawn ∝ p(x) and scored as whole sentences, exact MH ratios."""

    def __init__(self, forward, backward, vocab: list[str], top_k: int) -> None:
        import kenlm

        self.kenlm, self.fwd, self.bwd = kenlm, forward, backward
        self.vocab = [w for w in vocab if w not in ("<unk>", "<s>", "</s>")]
        self.top_k = top_k
        self.scored = 0

    def _dist(self, model, context: list[str], bos: bool) -> np.ndarray:
        s, t = self.kenlm.State(), self.kenlm.State()
        if bos:
            model.BeginSentenceWrite(s)
        else:
            model.NullContextWrite(s)
        for w in context:
            model.BaseScore(s, w, t)
            s, t = t, s
        return np.array([model.BaseScore(s, w, t) for w in self.vocab]) * math.log(10)

    def _topk(self, x: list[str], pos: int) -> list[str]:
        f = self._dist(self.fwd, x[:pos], True)
        b = self._dist(self.bwd, x[pos + 1 :][::-1], True)
        idx = np.argpartition(-np.minimum(f, b), self.top_k)[: self.top_k]
        return [self.vocab[i] for i in idx]

    def _logp(self, x: list[str]) -> float:
        self.scored += 1
        return self.fwd.score(" ".join(x), bos=True, eos=True) * math.log(10)

    def _weights(self, x: list[str], pos: int, cands: list[str]) -> np.ndarray:
        out = []
        for c in cands:
            y = list(x)
            y[pos] = c
            out.append(self._logp(y))
        return np.array(out)

    def run(self, keywords: list[str], steps: int, rng: random.Random) -> list[str]:
        x, fixed = list(keywords), [True] * len(keywords)
        lp = self._logp(x)
        for _ in range(steps):
            a = rng.random()
            free = [i for i, f in enumerate(fixed) if not f]
            if a < 1 / 3 and free:  # replace
                pos = rng.choice(free)
                cands = self._topk(x, pos)
                cur = x[pos]
                forced = cur not in cands
                if forced:
                    cands.append(cur)
                w = self._weights(x, pos, cands)
                p = np.exp(w - w.max())
                j = rng.choices(range(len(cands)), weights=p)[0]
                if cands[j] != cur and not forced:  # Gibbs over a shared set: always accepted
                    x[pos], lp = cands[j], w[j]
            elif a < 2 / 3 and len(x) < 40:  # insert
                gap = rng.randrange(len(x) + 1)
                y = x[:gap] + ["<unk>"] + x[gap:]
                cands = self._topk(y, gap)
                w = self._weights(y, gap, cands)
                lse = w.max() + math.log(np.exp(w - w.max()).sum())
                j = rng.choices(range(len(cands)), weights=np.exp(w - w.max()))[0]
                log_a = w[j] - lp + math.log(len(x) + 1) - math.log(len(free) + 1) - (w[j] - lse)
                if log_a >= 0 or rng.random() < math.exp(log_a):
                    y[gap] = cands[j]
                    x, lp = y, w[j]
                    fixed.insert(gap, False)
            elif free and len(x) > 1:  # delete
                pos = rng.choice(free)
                cands = self._topk(x, pos)
                if x[pos] in cands:
                    w = self._weights(x, pos, cands)
                    lse = w.max() + math.log(np.exp(w - w.max()).sum())
                    y = x[:pos] + x[pos + 1 :]
                    lpy = self._logp(y)
                    log_q = w[cands.index(x[pos])] - lse
                    log_a = lpy - lp - math.log(len(x)) + log_q + math.log(len(free))
                    if log_a >= 0 or rng.random() < math.exp(log_a):
                        x, lp = y, lpy
                        fixed.pop(pos)
        return x


def main() -> None:
    import kenlm

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--chains", type=int, default=4, help="chains per keyword set")
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    lm = NgramLM.build(DATA, 3, backward=True, progress=False)
    with tempfile.TemporaryDirectory() as d:
        lm.save_arpa(os.path.join(d, "f.arpa"))
        lm.reverse.save_arpa(os.path.join(d, "b.arpa"))
        kf, kb = kenlm.Model(os.path.join(d, "f.arpa")), kenlm.Model(os.path.join(d, "b.arpa"))
    peer = PyCGMH(kf, kb, list(lm.vocab), args.top_k)
    scorer = NgramScorer(lm)
    sets = KEYWORDS
    n_sent = len(sets) * args.chains
    n_steps = n_sent * args.steps

    def ours():
        # the peer's algorithm: replace / insert / delete, keywords as given and in order, no
        # length prior, back-off penalty or word filter
        cgmh.generate_many(
            sets, scorer, n=args.chains, steps=args.steps, top_k=args.top_k, explore=0.0,
            order="fixed", forms="exact", length=None, backoff=None, block=None, distinct=False,
            moves={"replace": 1, "insert": 1, "delete": 1},
        )  # fmt: skip

    def theirs():
        rng = random.Random(0)
        for kw in sets:
            for _ in range(args.chains):
                peer.run(kw, args.steps, rng)

    peer.scored = 0
    t_peer = median_time(theirs, repeat=1, warmup=0)
    per_step = peer.scored / n_steps  # candidate sentences scored per step (same algorithm)
    t_ours = median_time(ours, repeat=args.repeat, warmup=1)
    shape = f"{len(sets)} keyword sets x {args.chains} chains x {args.steps} steps"
    print(f"LM: KN order 3, vocab {len(lm.vocab)}; {shape}, top-K {args.top_k}; "
          f"threads {get_num_threads()}")  # fmt: skip
    print(f"{'':<28}{'time':>10}{'steps/s':>12}{'cands/s':>12}{'sentences/s':>13}")
    for name, t in (("kexue (Rust loop)", t_ours), ("Python over kenlm.Model", t_peer)):
        print(f"{name:<28}{t:9.3f}s{n_steps / t:12.0f}{n_steps * per_step / t:12.0f}"
              f"{n_sent / t:13.2f}")  # fmt: skip
    print(
        f"ratio peer/ours (speed-up): {t_peer / t_ours:.1f}x   (ours/peer = {t_ours / t_peer:.4f})"
    )


if __name__ == "__main__":
    main()
