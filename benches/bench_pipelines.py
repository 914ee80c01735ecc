"""The 10,000-keyword job (issue 9): sentences/s on 1 process vs 2 Dask workers vs 2 Ray
workers, scaling efficiency, and the memory 2 Dask workers use for one loaded LM.

    python benches/bench_pipelines.py [--rows 10000] [--steps 50] [--lm-lines 20000]

Keyword sets: two words of 4+ letters from each line of wikitext-2 test.txt (seeded choice).
The LM (order 3, forward + backward) is built on wikitext-2 train.txt, saved, and loaded from
the file, so it travels to workers as path + SHA-256. Every engine's output is checked equal to
the single-process output row for row.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import numpy as np
import pandas as pd
import psutil

from kexue.benchmarks import header
from kexue.lm import NgramLM
from kexue.pipelines import generate_batch

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "wikitext-2")
DATA = DATA if os.path.isdir(DATA) else "/work/shared/data/wikitext-2"


def keyword_sets(rows: int) -> pd.DataFrame:
    rng = random.Random(0)
    sets = []
    with open(os.path.join(DATA, "test.txt"), encoding="utf-8") as f:
        lines = [ln.split() for ln in f]
    while len(sets) < rows:
        for words in lines:
            words = [w for w in words if w.isalpha() and len(w) >= 4]
            if len(words) >= 2:
                sets.append(" ".join(rng.sample(words, 2)))
                if len(sets) == rows:
                    break
    return pd.DataFrame({"id": np.arange(rows), "keywords": sets})


def memory(pid: int) -> dict[str, float]:
    """MiB of a process: RSS, USS (pages no other process maps), PSS, and anonymous memory
    (what can never be shared: the heap; a memory-mapped LM is file-backed, not anonymous)."""
    m = psutil.Process(pid).memory_full_info()
    with open(f"/proc/{pid}/smaps_rollup") as f:
        anon = next(int(line.split()[1]) for line in f if line.startswith("Anonymous:")) << 10
    mib = 1 << 20
    return {"rss": m.rss / mib, "uss": m.uss / mib, "pss": m.pss / mib, "anon": anon / mib}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lm-lines", type=int, default=0, help="train.txt lines (0: all)")
    args = ap.parse_args()
    print(header())
    opts = {"steps": args.steps, "seed": 0}
    df = keyword_sets(args.rows)
    with open(os.path.join(DATA, "train.txt"), encoding="utf-8") as f:
        lines = [ln for i, ln in enumerate(f) if not args.lm_lines or i < args.lm_lines]
    path = os.path.join(tempfile.mkdtemp(), "wiki.kxlm")
    NgramLM.build(lines, order=3, progress=False).save(path)
    lm = NgramLM.load(path)
    print(
        f"job: {args.rows} keyword sets, steps={args.steps}; {lm}; "
        f"file {os.path.getsize(path) / 2**20:.1f} MiB"
    )
    rates = {}

    base = memory(os.getpid())["anon"]
    t = time.perf_counter()
    ref = generate_batch(df, lm=lm, threads=1, **opts)
    rates["1 process, 1 thread"] = args.rows / (time.perf_counter() - t)
    t = time.perf_counter()
    same = generate_batch(df, lm=lm, **opts)  # kexue threads: one per core
    rates["1 process, 2 threads"] = args.rows / (time.perf_counter() - t)
    pd.testing.assert_frame_equal(same, ref)
    print(f"single process: anonymous +{memory(os.getpid())['anon'] - base:.0f} MiB, LM + scorer")

    import distributed

    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        before = {w: memory(p) for w, p in pids.items()}
        lm_f = client.scatter(lm, broadcast=True)
        parts = [df.iloc[a : a + 250] for a in range(0, len(df), 250)]
        t = time.perf_counter()
        futures = [client.submit(generate_batch, p, lm=lm_f, threads=1, **opts) for p in parts]
        got = pd.concat(client.gather(futures))
        rates["2 Dask workers"] = args.rows / (time.perf_counter() - t)
        pd.testing.assert_frame_equal(got, ref)
        for w, p in pids.items():
            after = memory(p)
            print(
                f"Dask worker {p}: RSS {after['rss']:.0f} MiB "
                f"(+{after['rss'] - before[w]['rss']:.0f}),"
                f" USS +{after['uss'] - before[w]['uss']:.0f} MiB,"
                f" anonymous +{after['anon'] - before[w]['anon']:.0f} MiB,"
                f" PSS {after['pss']:.0f} MiB"
            )

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.from_pandas(df).repartition(2 * len(df) // 250 or 1)
        t = time.perf_counter()
        got = (
            ds.map_batches(
                generate_batch,
                batch_format="pandas",
                batch_size=250,
                fn_kwargs={"lm": lm, "index_col": "id", "threads": 1, **opts},
            )
            .to_pandas()
            .sort_values("id")
            .reset_index(drop=True)
        )
        rates["2 Ray workers"] = args.rows / (time.perf_counter() - t)
        pd.testing.assert_frame_equal(got, ref, check_dtype=False)
    finally:
        ray.shutdown()

    one = rates["1 process, 1 thread"]
    print(f"{'engine':<22}{'sentences/s':>12}{'ratio':>8}{'efficiency':>12}")
    for name, r in rates.items():
        cores = 1 if name == "1 process, 1 thread" else 2
        print(f"{name:<22}{r:>12.1f}{r / one:>8.2f}{r / one / cores:>12.2f}")
    print("(ratio: rate / 1-thread rate; efficiency: ratio / cores used)")


if __name__ == "__main__":
    main()
