"""Side-by-side benchmark harness: warm-up, median of N, shapes printed, ratio ours/peer.

Every benchmark (``kexue bench NAME`` and the scripts in ``benches/``) reports through
:func:`compare`, one line per case, so figures read the same across the project. Each module
of this package is one ``kexue bench NAME`` and defines ``run(size=None, repeat=7)``.
"""

from __future__ import annotations

import pkgutil
import statistics
import time
from collections.abc import Callable

__all__ = ["available", "compare", "median_time"]


def median_time(
    fn: Callable[[], object], *, repeat: int = 7, warmup: int = 2, warmup_seconds: float = 0.2
) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs, after at least ``warmup``
    runs and ``warmup_seconds`` of them (a fresh process needs time before its heap, page
    tables and thread pools reach their steady state)."""
    start, runs = time.perf_counter(), 0
    while runs < warmup or time.perf_counter() - start < warmup_seconds:
        fn()
        runs += 1
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(
    case: str,
    shape: str,
    ours: Callable[[], object],
    peers: dict[str, Callable[[], object]],
    *,
    repeat: int = 7,
) -> dict[str, float]:
    """Times ``ours`` and each peer in this process and prints ``ours/peer`` ratios
    (below 1 means kexue is faster). Returns the median seconds by name."""
    times = {"kexue": median_time(ours, repeat=repeat)}
    times.update({name: median_time(fn, repeat=repeat) for name, fn in peers.items()})
    print(f"{case} [{shape}]  kexue {times['kexue'] * 1e3:9.2f} ms")
    for name in peers:
        ratio = times["kexue"] / times[name]
        print(f"    vs {name:<34} {times[name] * 1e3:9.2f} ms   ours/peer = {ratio:5.2f}")
    return times


def available() -> list[str]:
    """Names accepted by ``kexue bench``."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
