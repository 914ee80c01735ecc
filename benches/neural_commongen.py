"""Neural-target CGMH on CommonGen dev: cheap n-gram proposals + neural acceptance
(:mod:`kexue.neural`) against the full-K mode (:func:`kexue.cgmh.generate_many` with
:class:`kexue.scorers.HFCausalLM`: every candidate of an edit scored by the neural LM),
constrained beam search with the same model (``benches/cgmh_beam_tf4.py``, transformers 4.x,
run in a subprocess with ``--tf4 DIR`` on its path) and the n-gram default, with the GPT-2
trained by ``benches/train_tiny_gpt2.py``.

Metrics as in ``benches/cgmh_commongen.py`` (its ``score``), plus neural token evaluations
per set (positions run through the model), seconds per set, and the model's throughput while
scoring: ``tokens/s`` computed, and ``scored tokens/s`` (the tokens of the scored sentences,
those taken from a reused key/value cache included). Neural rows run with the prefix cache
(:meth:`~kexue.scorers.HFCausalLM.score_words_from`) and, with ``--uncached``, the first
``--steps`` value also without it (every sentence scored whole: the same chains, the same
outputs). Every row uses the library
defaults with ``n=1, seed=0, anneal=True`` (neural rows: ``n=--chains``, the sentence
with the highest target kept); the neural rows share one scorer (same target,
same length prior). The full-K mode is slow on CPU, so it runs on the first ``--full-sets``
sets, and the neural mode is reported on that subset too.

    python benches/neural_commongen.py --model /tmp/cg-gpt2 [--sets 200] [--full-sets 30] \
        [--steps 100 200] [--uncached] [--tf4 /tmp/tf4]
Needs ``pip install pycocoevalcap``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from cgmh_commongen import score

from kexue import cgmh, neural
from kexue.scorers import HFCausalLM, default_lm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="directory written by train_tiny_gpt2.py")
    ap.add_argument("--sets", type=int, default=200)
    ap.add_argument("--full-sets", type=int, default=30)
    ap.add_argument("--steps", type=int, nargs="+", default=[200], help="neural-mode steps")
    ap.add_argument("--chains", type=int, default=1,
                    help="neural chains per set; the output: the highest target")  # fmt: skip
    ap.add_argument("--uncached", action="store_true",
                    help="the first --steps row without the cache too")  # fmt: skip
    ap.add_argument("--tf4", help="a folder with transformers 4.x: the beam-search row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(Path(__file__).parents[2] / "shared/data/commongen"))
    ap.add_argument("--show", type=int, default=30, help="outputs to print for reading")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = [json.loads(line) for line in open(Path(args.data) / "commongen.dev.jsonl")]
    dev = dev[: args.sets]
    concepts = [[c.rsplit("_", 1)[0] for c in d["concept_set"].split("#")] for d in dev]
    refs = [d["scene"] for d in dev]
    hf = HFCausalLM.from_pretrained(args.model, default_lm(), device="cpu")
    t = time.perf_counter()
    neural.generate_many([["warm", "up"]], hf, steps=2)  # length prior: sampled once, cached
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; model {args.model}: "
        f"{sum(p.numel() for p in hf.model.parameters()) / 1e6:.1f} M parameters; "
        f"length prior (L, beta) = {hf._length_prior} in {time.perf_counter() - t:.1f} s"
    )

    rows, texts = {}, {}
    forward_seconds = [0.0]
    forward = hf._forward

    def timed(*a, **kw):  # the model's share of either mode, for tokens per second
        t = time.perf_counter()
        forward(*a, **kw)
        forward_seconds[0] += time.perf_counter() - t

    hf._forward = timed

    def row(name: str, k: int, call, reuse: bool = True) -> None:
        hf.reuse_cache = reuse
        computed, reused, forward_seconds[0] = hf.tokens_scored, hf.tokens_reused, 0.0
        t = time.perf_counter()
        out = call(concepts[:k])
        seconds = time.perf_counter() - t
        texts[name] = [r[0].text for r in out]
        computed, reused = hf.tokens_scored - computed, hf.tokens_reused - reused
        rows[name] = {
            **score(concepts[:k], refs[:k], texts[name]), "sets": k, "s/set": seconds / k,
            "neural tokens/set": computed / k,
            "tokens/s": computed / forward_seconds[0] if forward_seconds[0] else 0.0,
            "scored tokens/s": (computed + reused) / forward_seconds[0]
            if forward_seconds[0] else 0.0,
        }  # fmt: skip
        print(name, rows[name], flush=True)

    def sampled(steps: int):
        def run(c):
            out = neural.generate_many(c, hf, n=args.chains, seed=0, anneal=True, steps=steps)
            return [[max(r, key=lambda s: s.log_target)] for r in out]

        return run

    k_full = min(args.full_sets, len(dev))
    per = f", {args.chains} chains" if args.chains > 1 else ""
    cgmh.generate_many([["warm", "up"]], None, steps=5)
    row("n-gram default", len(dev),
        lambda c: cgmh.generate_many(c, None, n=1, seed=0, anneal=True))  # fmt: skip
    for steps in args.steps:
        if args.uncached and steps == args.steps[0]:
            row(f"neural target, {steps} steps{per}, whole sentences", len(dev), sampled(steps),
                False)  # fmt: skip
        row(f"neural target, {steps} steps{per}", len(dev), sampled(steps))
    if args.tf4:  # run now, so that it meets the same machine load as the rows beside it
        path = os.pathsep.join([args.tf4, os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "PYTHONPATH": path}
        cmd = [sys.executable, str(Path(__file__).with_name("cgmh_beam_tf4.py")), "--model",
               args.model, "--sets", str(len(dev)), "--threads", str(args.threads), "--data",
               args.data, "--show", "0", "--json"]  # fmt: skip
        beam = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                         text=True).stdout.splitlines()[-1])  # fmt: skip
        name = f"constrained beam search (transformers {beam.pop('transformers')}, " \
               f"{beam.pop('beams')} beams)"  # fmt: skip
        rows[name] = {**beam, "sets": len(dev), "tokens/s": float("nan"),
                      "scored tokens/s": float("nan")}  # fmt: skip
        print(name, rows[name], flush=True)
    if k_full:
        for steps in args.steps if k_full < len(dev) else ():  # else the rows above
            row(f"neural target, {steps} steps{per} (first {k_full})", k_full, sampled(steps))
        row(f"full-K (first {k_full})", k_full,
            lambda c: cgmh.generate_many(c, hf, n=1, seed=0, anneal=True))  # fmt: skip

    cols = ["sets", "BLEU-4", "CIDEr", "coverage %", "words", "distinct %",
            "neural tokens/set", "tokens/s", "scored tokens/s", "s/set"]  # fmt: skip
    print("\n| row | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else
                                          str(r[c]) for c in cols) + " |")  # fmt: skip
    neural_row = next(n for n in texts if n.startswith("neural") and "first" not in n)
    print(f"\nfirst {args.show} outputs: concepts → {neural_row} | n-gram default | human")
    for i in range(min(args.show, len(dev))):
        print(f"{i}. {' '.join(concepts[i])} → {texts[neural_row][i]} | "
              f"{texts['n-gram default'][i]} | {refs[i][0]}")  # fmt: skip
    if k_full:
        print(f"\nfull-K outputs (first {min(10, k_full)}):")
        for i in range(min(10, k_full)):
            print(f"{i}. {texts[f'full-K (first {k_full})'][i]}")


if __name__ == "__main__":
    main()
