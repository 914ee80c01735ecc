"""Multi-task aggregators beside their peers, same process.

1. ``kexue bench multitask``: Gram + min-norm weights for K ∈ {2, 4, 8}, P ∈ {1e6, 1e7}
   float32, vs numpy/torch ``J @ J.T`` + the LibMTL-style Frank–Wolfe solver (and torchjd's
   MGDAWeighting / PCGrad when installed), with peak extra memory.
2. PCGrad: kexue's Gram form (one Gram pass, a K×K loop, one combine pass) vs the textbook
   vector form on P-vectors (a (K, P) clone and K² dot/axpy passes, as LibMTL runs it),
   numpy float32, same per-task orders.

Run: ``python benches/bench_multitask.py [P]``.
"""

from __future__ import annotations

import sys

import numpy as np

from kexue import get_num_threads
from kexue import multitask as mt
from kexue.benchmarks import compare
from kexue.benchmarks import multitask as bench


def pcgrad_vector_form(J: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Textbook PCGrad: project each task's clone off every conflicting g_j, then sum."""
    pc = J.copy()
    for i in range(len(J)):
        for j in orders[i]:
            if j == i:
                continue
            d = pc[i] @ J[j]
            if d < 0:
                pc[i] -= d / (J[j] @ J[j] + 1e-8) * J[j]
    return pc.sum(axis=0)


def main(p: int | None = None) -> None:
    bench.run(size=p)
    for size in [10**6, 10**7] if p is None else [p]:
        k = 8
        J = np.random.default_rng(0).standard_normal((k, size), dtype=np.float32)
        orders = mt.pcgrad_order(k, 0)
        ours, ref = mt.pcgrad(J, seed=0)[1], pcgrad_vector_form(J, orders)
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        shape = f"K={k} P={size:.0e} float32, {get_num_threads()} threads, max rel diff {err:.1e}"
        compare(
            "pcgrad Gram form vs vector form",
            shape,
            lambda J=J: mt.pcgrad(J, seed=0),
            {"numpy vector-form PCGrad": lambda J=J, o=orders: pcgrad_vector_form(J, o)},
            repeat=5,
        )


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else None)
