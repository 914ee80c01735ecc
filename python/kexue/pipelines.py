"""kexue inside data pipelines: batch entry points for Dask, Ray Data and plain pandas/pyarrow.

Each function takes a batch in the formats the engines hand to user code — a pandas DataFrame
(Dask ``map_partitions``, Ray ``batch_format="pandas"``), a pyarrow Table (Ray
``batch_format="pyarrow"``) or a dict of numpy arrays (Ray's default ``"numpy"``) — and returns
the same kind with columns added, so it drops into ``ddf.map_partitions(generate_batch, ...)``
or ``ds.map_batches(generate_batch, fn_kwargs=...)`` as is.

Results never depend on how the data is partitioned: every random row gets its own seed, read
from ``seed_col`` or derived from ``(seed, row index)`` by :class:`numpy.random.SeedSequence`.
The row index is ``index_col`` if given, else the DataFrame's index (Dask keeps the global one;
a non-integer index raises), else the row's position in the batch — so give Ray batches, which
carry no index, an id or seed column.

>>> import pandas as pd
>>> from kexue.pipelines import generate_batch
>>> df = pd.DataFrame({"keywords": ["cat mat", "dog park", "rain"]})
>>> out = generate_batch(df, steps=40, seed=1)
>>> list(out.columns)
['keywords', 'text', 'logprob', 'nll_per_token', 'acceptance_rate']
>>> out.iloc[1:].equals(generate_batch(df.iloc[1:], steps=40, seed=1))  # any partitioning
True

Sharing and safety. The LM is used read-only: a :class:`kexue.lm.NgramLM` (and the native
``NgramModel`` / CGMH scorer behind it) may be used by many threads at once. Pass the LM itself
(``client.scatter(lm, broadcast=True)`` in Dask; ``ray.put(lm)`` in Ray): an LM read by
:meth:`~kexue.lm.NgramLM.load` pickles as path + SHA-256, and each worker process builds its
CGMH scorer once (cached per LM object). A path string also works: each process then loads the
file once. kexue's thread pool survives ``fork``: a child process starts fresh threads on its
first kernel call (inherited pools are never used). The corpus builder
(``kexue._native.NgramCorpus``) is the one mutable native object; concurrent use of one builder
raises ``RuntimeError`` instead of corrupting it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from . import get_num_threads, scorers
from ._dispatch import check_int
from .cgmh import generate_many
from .lm import NgramLM, split_words

__all__ = ["generate_batch", "perplexity_batch", "row_seeds"]


def row_seeds(seed: int, index: Sequence[int] | np.ndarray) -> np.ndarray:
    """One 64-bit seed per row from ``(seed, row index)``: independent streams for nearby
    indices, identical whatever the partitioning.

    >>> from kexue.pipelines import row_seeds
    >>> a = row_seeds(0, [0, 1, 2, 3])
    >>> a.dtype, len(set(a.tolist()))
    (dtype('uint64'), 4)
    >>> bool((row_seeds(0, [2, 3]) == a[2:]).all())  # a row's seed needs only its index
    True
    """
    seed = check_int(seed, "seed", low=0, high=2**64 - 1)
    idx = np.asarray(index)
    if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0):
        raise ValueError("the row index must hold ints >= 0 (give index_col or seed_col)")
    return np.array(
        [np.random.SeedSequence((int(seed), int(i))).generate_state(1, np.uint64)[0] for i in idx],
        dtype=np.uint64,
    )


def generate_batch(
    batch: Any,
    keywords_col: str = "keywords",
    lm: Any = None,
    *,
    seed_col: str | None = None,
    seed: int = 0,
    index_col: str | None = None,
    n: int = 1,
    steps: int | None = None,
    threads: int | None = None,
    **options: Any,
) -> Any:
    """CGMH sentences for every row's keywords (:func:`kexue.cgmh.generate`).

    ``keywords_col`` holds a whitespace-separated str or a list of words per row. ``lm``: a
    :class:`kexue.lm.NgramLM`, a path of an LM file (loaded once per process), any
    :mod:`kexue.scorers` scorer, or None for the built-in English LM. Row ``i`` is seeded by
    ``batch[seed_col][i]``, else by ``(seed, row index)`` (see the module notes). Adds columns
    ``text``, ``logprob`` (natural log), ``nll_per_token`` and ``acceptance_rate``; with
    ``n > 1`` each row is repeated ``n`` times and a ``sample`` column added. Rows run on
    ``threads`` threads (default: :func:`kexue.get_num_threads`); ``options`` go to
    :func:`kexue.cgmh.generate` (``anneal``, ``top_k``, ``order``, ...; ``steps`` defaults as
    there).

    >>> from kexue.pipelines import generate_batch
    >>> out = generate_batch({"keywords": ["cat", "dog park"]}, steps=30, n=2, seed=0)
    >>> sorted(out), out["sample"].tolist()  # a dict of arrays in, a dict of arrays out
    (['acceptance_rate', 'keywords', 'logprob', 'nll_per_token', 'sample', 'text'], [0, 1, 0, 1])
    >>> all("park" in t.lower() for t in out["text"][2:])
    True
    """
    kind, cols, index, rows = _columns(batch, "batch")
    words = [_keywords(k, i) for i, k in enumerate(_column(cols, keywords_col, "keywords_col"))]
    if seed_col is not None:
        seeds = np.asarray(_column(cols, seed_col, "seed_col"))
        if rows and (seeds.dtype.kind not in "iu" or seeds.min() < 0):
            raise ValueError(f"seed_col {seed_col!r} must hold ints >= 0")
    else:
        if index_col is not None:
            index = np.asarray(_column(cols, index_col, "index_col"))
        seeds = row_seeds(seed, np.arange(rows) if index is None else index)
    # lang="zh" picks the built-in Chinese LM (resolved once here, not per row).
    scorer = scorers.resolve(lm, options.pop("lang", None) or "en")
    if threads is None:
        threads = get_num_threads()

    def one(i: int) -> list:
        return generate_many([words[i]], scorer, n=n, steps=steps, seed=int(seeds[i]), **options)[0]

    with ThreadPoolExecutor(max(1, min(int(threads), rows))) as pool:
        results = list(pool.map(one, range(rows)))
    flat = [s for row in results for s in row]
    new = {
        "text": np.array([s.text for s in flat], dtype=object),
        "logprob": np.array([s.logprob for s in flat], dtype=np.float64),
        "nll_per_token": np.array([s.nll_per_token for s in flat], dtype=np.float64),
        "acceptance_rate": np.array([s.acceptance_rate for s in flat], dtype=np.float64),
    }
    take = None
    if n > 1:
        take = np.repeat(np.arange(rows), n)
        new["sample"] = np.tile(np.arange(n), rows)
    return _with_columns(kind, batch, take, new)


def perplexity_batch(
    batch: Any,
    text_col: str = "text",
    lm: Any = None,
    *,
    max_perplexity: float | None = None,
) -> Any:
    """Per-row LM scores for corpus filtering: adds ``logprob`` (natural log of the sentence,
    ``</s>`` included), ``tokens`` (words + ``</s>``) and ``perplexity`` columns, and keeps only
    rows with ``perplexity <= max_perplexity`` when given. ``lm``: a :class:`kexue.lm.NgramLM`
    or the path of one (loaded once per process). Deterministic: no seeds involved.

    >>> import pandas as pd
    >>> from kexue.lm import NgramLM
    >>> from kexue.pipelines import perplexity_batch
    >>> lm = NgramLM.build(["the cat sat", "the dog sat"] * 3, order=2, progress=False,
    ...                    discount_fallback=True)
    >>> df = pd.DataFrame({"text": ["the cat sat", "sat cat the"]})
    >>> out = perplexity_batch(df, lm=lm)
    >>> list(out.columns), bool(out.perplexity[0] < out.perplexity[1])
    (['text', 'logprob', 'tokens', 'perplexity'], True)
    >>> len(perplexity_batch(df, lm=lm, max_perplexity=out.perplexity[0]))  # filtering
    1
    """
    if lm is None:
        raise TypeError("lm must be a kexue.lm.NgramLM or the path of an LM file, got None")
    if not isinstance(lm, NgramLM):
        if not isinstance(lm, (str, os.PathLike)):
            raise TypeError(f"lm must be an NgramLM or a path, got {type(lm).__name__}")
        lm = scorers.load(lm)
    kind, cols, _, _ = _columns(batch, "batch")
    texts = list(_column(cols, text_col, "text_col"))
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text_col must hold str, row {i} is {type(t).__name__}")
    prepped = [lm._prep(t) for t in texts]
    logprob = np.asarray(lm.logprob(prepped), dtype=np.float64) if texts else np.zeros(0)
    tokens = np.array([len(split_words(t)) + 1 for t in prepped], dtype=np.int64)
    ppl = np.exp(-logprob / np.maximum(tokens, 1))
    take = None
    if max_perplexity is not None:
        if isinstance(max_perplexity, bool) or not isinstance(max_perplexity, (int, float)):
            raise TypeError(f"max_perplexity must be a number, got {max_perplexity!r}")
        take = np.flatnonzero(ppl <= max_perplexity)
        logprob, tokens, ppl = logprob[take], tokens[take], ppl[take]
    return _with_columns(
        kind, batch, take, {"logprob": logprob, "tokens": tokens, "perplexity": ppl}
    )


# --- batch formats ---------------------------------------------------------------------------


def _columns(batch: Any, name: str) -> tuple[str, Any, np.ndarray | None, int]:
    """(kind, column mapping, integer row index or None, row count)."""
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(batch, pd.DataFrame):
        return "pandas", batch, batch.index.to_numpy(), len(batch)
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(batch, pa.Table):
        return "arrow", batch, None, batch.num_rows
    if isinstance(batch, dict):
        lengths = {len(v) for v in batch.values()}
        if len(lengths) > 1:
            raise ValueError(f"{name} columns must have equal lengths, got {sorted(lengths)}")
        return "dict", batch, None, lengths.pop() if lengths else 0
    raise TypeError(
        f"{name} must be a pandas DataFrame, a pyarrow Table or a dict of arrays, "
        f"got {type(batch).__name__}"
    )


def _column(cols: Any, key: object, name: str) -> Any:
    if not isinstance(key, str):
        raise TypeError(f"{name} must be a column name (str), got {type(key).__name__}")
    names = cols.column_names if hasattr(cols, "column_names") else list(cols.keys())
    if key not in names:
        raise ValueError(f"{name}: no column {key!r} in the batch (columns: {list(names)})")
    col = cols[key]
    return col.to_pylist() if hasattr(col, "to_pylist") else col


def _keywords(cell: Any, row: int) -> list[str]:
    if isinstance(cell, str):
        words = split_words(cell)
    elif isinstance(cell, (list, tuple, np.ndarray)) and all(isinstance(w, str) for w in cell):
        words = [str(w) for w in cell]
    else:
        raise TypeError(f"keywords of row {row} must be a str or a list of str, got {cell!r}")
    if not words:
        raise ValueError(f"keywords of row {row} are empty")
    return words


def _with_columns(kind: str, batch: Any, take: np.ndarray | None, new: dict[str, Any]) -> Any:
    if kind == "pandas":
        out = batch.iloc[take] if take is not None else batch
        return out.assign(**new)
    if kind == "arrow":
        import pyarrow as pa

        out = batch.take(pa.array(take, type=pa.int64())) if take is not None else batch
        for k, v in new.items():
            out = out.append_column(k, pa.array(v.tolist() if v.dtype == object else v))
        return out
    out = {k: np.asarray(v)[take] if take is not None else v for k, v in batch.items()}
    out.update(new)
    return out
