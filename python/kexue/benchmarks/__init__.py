"""Side-by-side benchmark harness: warm-up, median of N, shapes printed, ratio ours/peer.

Every benchmark (``kexue bench NAME`` and the scripts in ``benches/``) reports through
:func:`compare`, one line per case, so figures read the same across the project; inside
:func:`recording` each case is also kept as a dict (``kexue bench NAME --json``). Each module
of this package is one ``kexue bench NAME`` and defines ``run(size=None, repeat=7)``.
"""

from __future__ import annotations

import contextlib
import pkgutil
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["available", "compare", "header", "median_time", "recording"]

_RECORDS: list[list[dict[str, Any]]] = []


def header() -> str:
    """The line every bench prints first (each ``run``, and the scripts in ``benches/``):
    the version, the SIMD road and the thread count, what its figures depend on besides
    the machine.

    >>> from kexue.benchmarks import header
    >>> header().startswith("kexue ")
    True
    """
    from .. import __version__, get_num_threads, simd_road

    return f"kexue {__version__}, SIMD road {simd_road()}, {get_num_threads()} threads"


@contextlib.contextmanager
def recording() -> Iterator[list[dict[str, Any]]]:
    """Collects every :func:`compare` case run inside the block: ``{"case", "shape",
    "seconds": {name: median s}, "ratios": {peer: ours/peer}}``, in order.

    >>> from kexue.benchmarks import compare, recording
    >>> with recording() as cases:
    ...     _ = compare("sum", "n=1000", lambda: sum(range(1000)), {"loop": lambda: [0] * 1000},
    ...                 repeat=3)  # doctest: +ELLIPSIS
    sum [n=1000]  kexue ...
    >>> [(c["case"], c["shape"], sorted(c["ratios"])) for c in cases]
    [('sum', 'n=1000', ['loop'])]
    """
    cases: list[dict[str, Any]] = []
    _RECORDS.append(cases)
    try:
        yield cases
    finally:
        _RECORDS.remove(cases)


def median_time(
    fn: Callable[[], object], *, repeat: int = 7, warmup: int = 2, warmup_seconds: float = 0.2
) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs, after at least ``warmup``
    runs and ``warmup_seconds`` of them (a fresh process needs time before its heap, page
    tables and thread pools reach their steady state).

    >>> from kexue.benchmarks import median_time
    >>> 0 < median_time(lambda: sum(range(100)), repeat=3, warmup_seconds=0.0) < 1
    True
    """
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
    peers: Mapping[str, Callable[[], object]],
    *,
    repeat: int = 7,
) -> dict[str, float]:
    """Times ``ours`` and each peer in this process and prints ``ours/peer`` ratios
    (below 1 means kexue is faster). Returns the median seconds by name.

    >>> from kexue.benchmarks import compare
    >>> times = compare("sort", "n=1000", lambda: sorted(range(1000)),
    ...                 {"list.sort": lambda: list(range(1000)).sort()}, repeat=3)
    ... # doctest: +ELLIPSIS
    sort [n=1000]  kexue ...
        vs list.sort ... ms   ours/peer = ...
    >>> sorted(times)
    ['kexue', 'list.sort']
    """
    times = {"kexue": median_time(ours, repeat=repeat)}
    times.update({name: median_time(fn, repeat=repeat) for name, fn in peers.items()})
    ratios = {name: times["kexue"] / times[name] for name in peers}
    print(f"{case} [{shape}]  kexue {times['kexue'] * 1e3:9.2f} ms")
    for name, ratio in ratios.items():
        print(f"    vs {name:<34} {times[name] * 1e3:9.2f} ms   ours/peer = {ratio:5.2f}")
    for cases in _RECORDS:
        cases.append({"case": case, "shape": shape, "seconds": dict(times), "ratios": ratios})
    return times


def available() -> list[str]:
    """Names accepted by ``kexue bench``.

    >>> from kexue.benchmarks import available
    >>> "attention" in available() and "vmf" in available()
    True
    """
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
