"""CGMH on CommonGen dev: BLEU-4, CIDEr, coverage, length, distinct share, seconds per set.

Metric definitions (as in the CGMH quality issue, so figures compare across runs): lowercase,
tokenise with ``[A-Za-z0-9]+(?:'[a-z]+)?|[^\\sA-Za-z0-9]``, join with spaces; BLEU-4 = 100 ×
pycocoevalcap ``Bleu(4)``'s 4th value and CIDEr = 10 × pycocoevalcap ``Cider()``, all
references of the set; coverage = mean over sets of the share of concepts whose lemma is among
the ``lemminflect.getAllLemmas`` lemmas (or the word itself) of the output's tokens.

Rows, each with the library defaults (``generate_many(concepts, lm, n=1, seed=0,
anneal=True)``; concepts are the lemmas of each set, part-of-speech suffixes dropped):
- the built-in LM (``lm=None``);
- ``NgramLM.build(train, order=5, tokenizer=<the metric regex, case kept>)`` of the CommonGen
  train sentences (unsupervised: no concept sets);
- "before": both LMs with the behaviour of the previous release (exact keyword forms, no
  length prior, no word filter);
- human leave-one-out: each set's first reference scored against the others.

    python benches/cgmh_commongen.py [--sets 993] [--data ../shared/data/commongen]
        [--save outputs.json]
Needs ``pip install pycocoevalcap``. ``--save`` writes every row's sentences (and each set's
first human sentence, in sentence case) as JSON, for ``benches/link_grammar.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from lemminflect import getAllLemmas
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

import kexue
from kexue import cgmh
from kexue.lm import NgramLM
from kexue.text import RegexTokenizer, as_sentence

METRIC_RX = r"[A-Za-z0-9]+(?:'[a-z]+)?|[^\sA-Za-z0-9]"
METRIC = RegexTokenizer(METRIC_RX)
BEFORE = {"forms": "exact", "length": None, "block": None, "pool": 1, "backoff": None}


def tokens(text: str) -> list[str]:
    return METRIC(text.lower())


def covered(concept: str, toks: list[str]) -> bool:
    return any(
        concept == t or concept in {x for ls in getAllLemmas(t).values() for x in ls} for t in toks
    )


def score(concepts: list[list[str]], refs: list[list[str]], outs: list[str]) -> dict:
    gts = {i: [" ".join(tokens(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(tokens(o))] for i, o in enumerate(outs)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    cov = np.mean([np.mean([covered(c, tokens(o)) for c in cs]) for cs, o in zip(concepts, outs)])
    return {
        "BLEU-4": 100 * bleu[3],
        "CIDEr": 10 * cider,
        "coverage %": 100 * cov,
        "words": float(np.mean([len(tokens(o)) for o in outs])),
        "distinct %": 100 * len(set(outs)) / len(outs),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=993)
    ap.add_argument("--data", default=str(Path(__file__).parents[2] / "shared/data/commongen"))
    ap.add_argument("--examples", type=int, default=12)
    ap.add_argument("--save", type=Path, help="write the outputs here (JSON)")
    args = ap.parse_args()
    data = Path(args.data)
    dev = [json.loads(line) for line in open(data / "commongen.dev.jsonl", encoding="utf-8")]
    dev = dev[: args.sets]
    concepts = [[c.rsplit("_", 1)[0] for c in d["concept_set"].split("#")] for d in dev]
    refs = [d["scene"] for d in dev]
    print(f"kexue {kexue.__version__}, {kexue.get_num_threads()} threads")
    print(f"CommonGen dev: {len(dev)} concept sets, {sum(map(len, refs))} human sentences")

    t = time.perf_counter()
    train = NgramLM.build(data / "commongen.train.tgt.txt", order=5, tokenizer=METRIC,
                          progress=False)  # fmt: skip
    print(f"LM from the train sentences: {train!r}, built in {time.perf_counter() - t:.1f} s")

    rows, examples = {}, {}
    for name, lm, options in [
        ("built-in LM", None, {}),
        ("built-in LM, before", None, BEFORE),
        ("train LM", train, {}),
        ("train LM, before", train, BEFORE),
    ]:
        cgmh.generate_many([["warm", "up"]], lm, steps=5)  # LM build/load and length estimate
        t = time.perf_counter()
        out = cgmh.generate_many(concepts, lm, n=1, seed=0, anneal=True, **options)
        seconds = (time.perf_counter() - t) / len(concepts)
        texts = [row[0].text for row in out]
        rows[name] = {**score(concepts, refs, texts), "s/set": seconds}
        examples[name] = texts
    multi = [i for i, r in enumerate(refs) if len(r) > 1]
    rows["human (leave-one-out)"] = {
        **score(
            [concepts[i] for i in multi], [refs[i][1:] for i in multi], [refs[i][0] for i in multi]
        ),  # fmt: skip
        "s/set": float("nan"),
    }

    if args.save:
        humans = [as_sentence(r[0]) for r in refs]
        args.save.write_text(json.dumps({**examples, "human": humans}, indent=0), "utf-8")

    cols = ["BLEU-4", "CIDEr", "coverage %", "words", "distinct %", "s/set"]
    print("\n| row | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.2f}" if c != "s/set" else
                                          f"{r[c]:.4f}" for c in cols) + " |")  # fmt: skip
    if not args.examples:
        return
    step = max(1, len(dev) // args.examples)
    print(f"\nexamples (every {step}-th set): concepts → built-in LM | train LM | human")
    for i in range(0, len(dev), step)[: args.examples]:
        print(f"- {' '.join(concepts[i])} → {examples['built-in LM'][i]} | "
              f"{examples['train LM'][i]} | {refs[i][0]}")  # fmt: skip


if __name__ == "__main__":
    main()
