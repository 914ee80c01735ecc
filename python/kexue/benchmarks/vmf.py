"""``kexue bench vmf``: vMF sampling beside ``scipy.stats.vonmises_fisher``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from . import compare as _compare
from . import header, median_time

CASES = [(3, 1.0), (64, 10.0), (512, 50.0), (512, 5000.0)]


def compare(*args: Any, **kwargs: Any) -> dict[str, float]:
    """:func:`kexue.benchmarks.compare`, plus the speed-up peer/ours (ratios far below 0.01
    print as 0.00 there)."""
    times = _compare(*args, **kwargs)
    for name, seconds in times.items():
        if name != "kexue":
            print(f"    speed-up vs {name}: {seconds / times['kexue']:.1f}x")
    return times


def run(size: int | None = None, repeat: int = 7) -> dict[str, dict[str, float]]:
    """``size`` (default 10^5) float64 samples at (d, κ) ∈ {(3, 1), (64, 10), (512, 50),
    (512, 5000)} against scipy's ``vonmises_fisher(mu, kappa).rvs(size)``; then a different μ
    per row (``size/10`` rows, d = 64) against the scipy loop a user would write, and the
    torch CPU road (Wood parts from Rust, direction in torch, differentiable)."""
    print(header())
    from .. import get_num_threads
    from ..vmf import sample_vmf

    size = 10**5 if size is None else size
    threads = f"{get_num_threads()} threads"
    try:
        from scipy.stats import vonmises_fisher
    except ImportError:
        vonmises_fisher = None
        print("scipy is not installed: timing kexue alone")

    results = {}
    for d, kappa in CASES:
        mu = np.random.default_rng(d).standard_normal(d)
        mu /= np.linalg.norm(mu)
        shape = f"n={size:.0e}, d={d}, kappa={kappa:g}, float64, {threads}"
        ours = lambda mu=mu, kappa=kappa: sample_vmf(mu, kappa, size, seed=0)  # noqa: E731
        peers: dict[str, Callable[[], object]] = {}
        if vonmises_fisher is not None:
            frozen = vonmises_fisher(mu, kappa)
            peers["scipy vonmises_fisher.rvs"] = partial(frozen.rvs, size, random_state=0)
        # scipy takes seconds per call at d = 512: fewer timed runs there.
        reps = repeat if d < 512 else max(1, repeat // 3)
        results[f"d={d},kappa={kappa:g}"] = compare("vmf sample", shape, ours, peers, repeat=reps)

    rows, d, kappa = max(size // 10, 1), 64, 10.0
    mus = np.random.default_rng(1).standard_normal((rows, d))
    mus /= np.linalg.norm(mus, axis=1, keepdims=True)
    shape = f"{rows} rows, a different mu per row, d={d}, kappa={kappa:g}, {threads}"
    peers = {}
    if vonmises_fisher is not None:

        def scipy_loop() -> None:
            for i, m in enumerate(mus):
                vonmises_fisher(m, kappa).rvs(1, random_state=i)

        peers["scipy loop over rows"] = scipy_loop
    results["per-row mu"] = compare(
        "vmf sample per-row mu",
        shape,
        lambda: sample_vmf(mus, kappa, seed=0),
        peers,
        repeat=max(1, repeat // 3),
    )

    try:
        import torch
    except ImportError:
        return results
    mu_t = torch.from_numpy(mus).requires_grad_()
    kappa_t = torch.full((rows,), kappa, dtype=torch.float64)

    def torch_road() -> None:
        sample_vmf(mu_t, kappa_t, seed=0).sum().backward()

    seconds = median_time(torch_road, repeat=repeat)
    print(f"vmf torch CPU road, rsample + backward [{shape}]  kexue {seconds * 1e3:9.2f} ms")
    results["torch road"] = {"kexue": seconds}
    return results
