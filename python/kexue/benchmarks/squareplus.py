"""``kexue bench squareplus``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import compare, header, median_time


def run(size: int | None = None, repeat: int = 7) -> dict[str, dict[str, float]]:
    """SquarePlus forward+backward on ``size`` float32 values, numpy and torch CPU roads,
    against torch ``softplus``, SquarePlus as torch expressions, and a plain copy of the same
    number of bytes (the memory-bandwidth floor)."""
    print(header())
    from .. import _native, get_num_threads
    from ..activations import squareplus as sp

    size = 10**7 if size is None else size

    rng = np.random.default_rng(0)
    x = rng.standard_normal(size, dtype=np.float32) * 10
    g = rng.standard_normal(size, dtype=np.float32)
    shape = f"{size:.0e} float32, fwd+bwd, {get_num_threads()} threads"

    def numpy_road() -> tuple[np.ndarray, np.ndarray]:
        # Keeps the forward output alive across the backward, as training code does (and as
        # autograd does); freeing it first makes the kernel's page-fault pattern costlier.
        return _native.squareplus_forward(x, 4.0), _native.squareplus_backward(x, g, 4.0)

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
