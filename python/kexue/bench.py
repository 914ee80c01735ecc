"""Side-by-side benchmark harness: warm-up, median of N, shapes printed, ratio ours/peer.

Every benchmark (``kexue bench NAME`` and the scripts in ``benches/``) reports through
:func:`compare`, one line per case, so figures read the same across the project.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

__all__ = ["compare", "median_time", "squareplus"]


def median_time(fn: Callable[[], object], *, repeat: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
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


def squareplus(size: int = 10**7, repeat: int = 7) -> dict[str, dict[str, float]]:
    """SquarePlus forward+backward on ``size`` float32 values, numpy and torch CPU roads,
    against torch ``softplus``, SquarePlus as torch expressions, and a plain copy of the same
    number of bytes (the memory-bandwidth floor)."""
    from . import get_num_threads
    from .activations import squareplus as sp

    rng = np.random.default_rng(0)
    x = rng.standard_normal(size, dtype=np.float32) * 10
    g = rng.standard_normal(size, dtype=np.float32)
    shape = f"{size:.0e} float32, fwd+bwd, {get_num_threads()} threads"
    from . import _native

    def numpy_road() -> None:
        _native.squareplus_forward(x, 4.0)
        _native.squareplus_backward(x, g, 4.0)

    results = {}
    try:
        import torch
    except ImportError:
        print("torch is not installed: timing the numpy road alone")
        results["numpy"] = {"kexue": median_time(numpy_road, repeat=repeat)}
        print(f"squareplus numpy [{shape}] {results['numpy']['kexue'] * 1e3:.2f} ms")
        return results

    xt, gt = torch.from_numpy(x), torch.from_numpy(g)
    # fwd reads x and writes y; bwd reads x and grad and writes dx: 5·size floats moved.
    floor_src = torch.empty(size * 5 // 2, dtype=torch.float32).normal_()

    def autograd(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            leaf = xt.detach().requires_grad_()
            fn(leaf).backward(gt)

        return run

    def expression(t: torch.Tensor) -> torch.Tensor:
        return (t + torch.sqrt(t * t + 4.0)) / 2

    peers = {
        "torch softplus (autograd)": autograd(torch.nn.functional.softplus),
        "torch squareplus expression": autograd(expression),
        "copy of the same bytes (floor)": lambda: floor_src.clone(),
    }
    shape += f", torch {torch.get_num_threads()} threads"
    results["numpy"] = compare("squareplus numpy road", shape, numpy_road, peers, repeat=repeat)
    results["torch"] = compare(
        "squareplus torch CPU road", shape, autograd(lambda t: sp(t)), peers, repeat=repeat
    )
    return results
