"""kexue in Dask and Ray, started locally as a user would (needs the ``pipelines`` extra).

    python examples/pipelines_dask_ray.py [--rows 2000] [--steps 100]

1. Keyword-to-sentence generation for ``--rows`` keyword sets drawn from wikitext-2 test.txt,
   with the LM broadcast once per Dask worker (``client.scatter(..., broadcast=True)``).
2. Perplexity filtering of the wikitext-2 validation text with Dask ``map_partitions`` and Ray
   Data ``map_batches``.
Both engines' outputs are checked equal to the single-process result.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import dask.dataframe as dd
import distributed
import numpy as np
import pandas as pd
import ray

from kexue.lm import NgramLM
from kexue.pipelines import generate_batch, perplexity_batch

DATA = "/work/shared/data/wikitext-2"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    path = os.path.join(tempfile.mkdtemp(), "wiki.kxlm")
    NgramLM.build(os.path.join(DATA, "train.txt"), order=3, progress=False).save(path)
    lm = NgramLM.load(path)  # pickles as path + SHA-256

    with open(os.path.join(DATA, "test.txt"), encoding="utf-8") as f:
        words = [[w for w in ln.split() if w.isalpha() and len(w) > 3] for ln in f]
    sets = [" ".join(w[:2]) for w in words if len(w) >= 2][: args.rows]
    df = pd.DataFrame({"keywords": sets})
    with open(os.path.join(DATA, "valid.txt"), encoding="utf-8") as f:
        corpus = pd.DataFrame({"text": [ln.strip() for ln in f if ln.strip()]})
    opts = {"steps": args.steps, "seed": 0, "anneal": True}

    with (
        distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1) as cluster,
        distributed.Client(cluster) as client,
    ):
        lm_f = client.scatter(lm, broadcast=True)
        parts = [df.iloc[a : a + 200] for a in range(0, len(df), 200)]
        futures = [client.submit(generate_batch, p, lm=lm_f, threads=1, **opts) for p in parts]
        sentences = pd.concat(client.gather(futures))
        ref = perplexity_batch(corpus, lm=lm, max_perplexity=1000.0)
        kept = (
            dd.from_pandas(corpus, npartitions=8)
            .map_partitions(perplexity_batch, lm=lm, max_perplexity=1000.0, meta=ref.iloc[:0])
            .compute()
        )
    print(sentences[["keywords", "text", "acceptance_rate"]].head(10).to_string())
    print(f"Dask: kept {len(kept)} of {len(corpus)} lines with perplexity <= 1000")
    pd.testing.assert_frame_equal(kept, ref, check_dtype=False)

    ray.init(num_cpus=2)
    try:
        out = ray.data.from_pandas(corpus).map_batches(
            perplexity_batch, batch_format="pandas", fn_kwargs={"lm": lm, "max_perplexity": 1000.0}
        )
        got = out.to_pandas()
        print(f"Ray: kept {len(got)} lines")
        assert np.array_equal(np.sort(got["perplexity"]), np.sort(ref["perplexity"]))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
