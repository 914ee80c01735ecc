"""用词造句: CGMH in Chinese with the built-in Chinese LM, on sentences it never saw.

Data: the last 10% of the People's Daily January 1998 sentences (``kexue.scorers.
people_daily_sentences``), held out of the built-in model. Keyword rule (seed 0): a held-out
sentence drawn at random gives k = 2..4 (uniform) distinct content words in sentence order:
tagged n (noun), v (verb) or a (adjective), two characters or more, known to the model;
sentences with fewer than k are redrawn. Generation: the library's defaults,
``cgmh.generate_many(sets, n=1, seed=0)`` (lang detected from the keywords), and the same
call with ``anneal=True`` (a consensus pool of 24 chains of 64 steps per set). Checks every
output holds every keyword as one contiguous unit and no spaces, prints all outputs for
reading, and times seconds per sentence against the built-in English LM on CommonGen dev
concept sets (same call, same process).

    python benches/cgmh_chinese.py [--sets 50]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from kexue import cgmh, scorers
from kexue.text import segment_keyword

COMMONGEN_DEV = "/work/shared/data/commongen/commongen.dev.jsonl"
POST_EXAMPLE = ["广州", "美食", "开幕"]


def keyword_sets(count: int, seed: int = 0) -> list[list[str]]:
    sentences = scorers.people_daily_sentences()
    held_out = sentences[len(sentences) - len(sentences) // 10 :]
    lm = scorers.chinese_lm()
    rng = random.Random(seed)
    out: list[list[str]] = []
    while len(out) < count:
        sentence = held_out[rng.randrange(len(held_out))]
        k = rng.randint(2, 4)
        words = []
        for w, tag in sentence:
            if tag in ("n", "v", "a") and len(w) >= 2 and w not in words:
                if lm.word_id(w) is not None:
                    words.append(w)
        if len(words) >= k:
            picked = sorted(rng.sample(range(len(words)), k))
            out.append([words[i] for i in picked])
    return out


def english_sets(count: int) -> list[list[str]]:
    with open(COMMONGEN_DEV, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:count]
    return [[c.split("_")[0] for c in r["concept_set"].split("#")] for r in rows]


def contiguous(tokens: list[str], unit: list[str]) -> bool:
    n = len(unit)
    return any(tokens[i : i + n] == unit for i in range(len(tokens) - n + 1))


def timed(sets: list[list[str]], **kw) -> tuple[list, float]:
    cgmh.generate_many(sets[:2], n=1, seed=1, **kw)  # builds / loads the LM, warms caches
    t0 = time.perf_counter()
    out = cgmh.generate_many(sets, n=1, seed=0, **kw)
    return out, (time.perf_counter() - t0) / len(sets)


def median_ratio(zh: list[list[str]], en: list[list[str]], repeat: int, **kw) -> tuple:
    """Median seconds per sentence of each language over ``repeat`` interleaved runs (the
    machine is shared, so runs alternate)."""
    times: dict[str, list[float]] = {"zh": [], "en": []}
    for _ in range(repeat):
        for lang, sets in (("en", en), ("zh", zh)):
            times[lang].append(timed(sets, **kw)[1])
    return statistics.median(times["zh"]), statistics.median(times["en"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=50)
    ap.add_argument("--steps", type=int, default=None, help="MH steps per chain (default: the "
                    "library's, 200; 64 per chain of the annealed consensus pool)")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=5, help="interleaved timing runs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = scorers.chinese_lm()
    print(f"built-in Chinese LM ready in {time.perf_counter() - t0:.1f} s "
          f"(vocabulary {lm.vocab_size}, length prior {scorers.length_prior(lm)})")  # fmt: skip
    sets = keyword_sets(args.sets)
    known = lambda w: lm.word_id(w) is not None  # noqa: E731
    for anneal in (None, True):
        out, per = timed(sets, anneal=anneal, steps=args.steps)  # None: the library's
        print(f"\n== anneal={anneal}: {per * 1e3:.1f} ms per sentence ==")
        ok = 0
        for i, (kws, (s,)) in enumerate(zip(sets, out)):
            units = [segment_keyword(k, "jieba", known) for k in kws]
            good = all(contiguous(s.tokens, u) for u in units) and " " not in s.text
            ok += good
            print(f"{i:2d} {'/'.join(kws)} → {s.text}{'' if good else '  [KEYWORD MISSING]'}")
        print(f"every keyword present and contiguous, no spaces: {ok}/{len(sets)}")
        for k in (POST_EXAMPLE, ["广州", "美食节", "开幕"]):
            ex = cgmh.generate(k, n=3, seed=0, anneal=anneal, steps=args.steps)
            print(" / ".join(k), "→", " | ".join(s.text for s in ex))
    en = english_sets(args.sets)
    for anneal in (None, True):
        per_zh, per_en = median_ratio(sets, en, args.repeat, anneal=anneal, steps=args.steps)
        steps = args.steps or "default"
        print(f"\nspeed, anneal={anneal}, steps={steps}, median of {args.repeat}: zh "
              f"{per_zh * 1e3:.1f} ms/sentence, en (CommonGen dev concepts) "
              f"{per_en * 1e3:.1f} ms/sentence, zh/en {per_zh / per_en:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
