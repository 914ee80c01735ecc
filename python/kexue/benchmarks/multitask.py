"""``kexue bench multitask``: Gram matrix + min-norm (MGDA) weights of a (K, P) float32 ``J``.

kexue (one f64-accumulating pass over ``J`` in place, exact K×K QP in Rust) beside the
LibMTL recipe: ``J @ J.T`` (numpy BLAS, torch CPU) followed by the Sener & Koltun
Frank–Wolfe min-norm solver as LibMTL runs it (pairwise initialisation, 0.999/0.001
clipping, at most 250 iterations, stop at 1e-5), written here from the paper's Algorithm 2
because LibMTL's wheel does not import without an old torchvision; and, when torchjd is
installed, its ``MGDAWeighting`` on the same Gram and its ``PCGrad`` aggregator. The extra
memory each road allocates while it runs (peak RSS above the start, sampled) is printed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np

from . import compare, header


def _pair(v11: Any, v12: Any, v22: Any) -> tuple[float, float]:
    """Min-norm γ (weight of the first point) and cost on the segment, LibMTL's clipping."""
    if v12 >= v11:
        return 0.999, float(v11)
    if v12 >= v22:
        return 0.001, float(v22)
    gamma = -(v12 - v22) / (v11 + v22 - 2 * v12)
    return float(gamma), float(v22 + gamma * (v12 - v22))


def frank_wolfe_min_norm(G: Any, xp: str) -> Any:
    """Sener & Koltun's MinNormSolver on the Gram matrix ``G`` (numpy or torch, per ``xp``)."""
    # the backend is chosen at run time: its functions take and give numpy or torch arrays
    zeros: Callable[..., Any]
    sort_desc: Callable[[Any], Any]
    clip0: Callable[[Any], Any]
    if xp == "torch":
        import torch

        zeros, sort_desc = torch.zeros, lambda y: torch.sort(y, descending=True)[0]
        clip0 = lambda y: torch.clamp(y, min=0.0)  # noqa: E731
    else:
        zeros, sort_desc, clip0 = np.zeros, lambda y: -np.sort(-y), lambda y: np.maximum(y, 0.0)
    n = G.shape[0]
    best: tuple[tuple[int, int], float, float] = ((0, 1), 0.0, np.inf)  # n >= 2 pairs beat inf
    for i in range(n):
        for j in range(i + 1, n):
            c, d = _pair(G[i, i], G[i, j], G[j, j])
            if d < best[2]:
                best = ((i, j), c, d)
    (i, j), c, _ = best
    sol = zeros(n, dtype=G.dtype)
    sol[i], sol[j] = c, 1 - c
    if n < 3:
        return sol

    def simplex_projection(y: Any) -> Any:
        s = sort_desc(y)
        acc: Any = 0.0  # then a scalar of the backend
        tmax = (y.sum() - 1.0) / n
        for k in range(n - 1):
            acc += s[k]
            t = (acc - 1) / (k + 1.0)
            if t > s[k + 1]:
                tmax = t
                break
        return clip0(y - tmax)

    for _ in range(250):
        grad = -(G @ sol)
        proj = grad - grad.sum() / n
        neg, pos = proj < 0, proj > 0
        tm1 = -sol[neg] / proj[neg]
        tm2 = (1.0 - sol[pos]) / proj[pos]
        t = 1.0
        if (tm1 > 1e-7).sum() > 0:
            t = tm1[tm1 > 1e-7].min()
        if (tm2 > 1e-7).sum() > 0:
            t = min(t, tm2[tm2 > 1e-7].min())
        new = simplex_projection(proj * t + sol)
        v11, v12, v22 = sol @ G @ sol, sol @ G @ new, new @ G @ new
        nc, _ = _pair(v11, v12, v22)
        nxt = nc * sol + (1 - nc) * new
        if abs(nxt - sol).sum() < 1e-5:
            return sol
        sol = nxt
    return sol


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak resident memory above the level at the call's start, sampled every 0.5 ms."""
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.0005)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], proc.memory_info().rss) - base


def run(size: int | None = None, repeat: int = 7) -> dict[str, dict[str, float]]:
    """Gram + min-norm weights for K ∈ {2, 4, 8} and P ∈ {1e6, 1e7} (or P = ``size``)."""
    print(header())
    from .. import get_num_threads
    from .. import multitask as mt

    sizes = [10**6, 10**7] if size is None else [size]
    torch: ModuleType | None
    try:
        import torch
    except ImportError:
        torch = None
    try:
        import torchjd.aggregation as torchjd
    except ImportError:
        torchjd = None
    results = {}
    for p in sizes:
        for k in (2, 4, 8):
            J = np.random.default_rng(k).standard_normal((k, p), dtype=np.float32)

            def ours(J: np.ndarray = J) -> Any:
                return mt.mgda_weights(mt.gram(J))

            def numpy_fw(J: np.ndarray = J) -> Any:
                return frank_wolfe_min_norm((J @ J.T).astype(np.float64), "numpy")

            peers: dict[str, Callable[[], object]] = {"numpy J@J.T + FW (LibMTL-style)": numpy_fw}
            if torch is not None:
                Jt = torch.from_numpy(J)

                def torch_fw(Jt: Any = Jt) -> Any:
                    return frank_wolfe_min_norm(Jt.mm(Jt.t()), "torch")

                peers["torch J@J.T + FW (LibMTL-style)"] = torch_fw
            if torchjd is not None:

                def torchjd_mgda(Jt: Any = Jt) -> Any:
                    return torchjd.MGDAWeighting()(Jt.mm(Jt.t()))

                peers["torchjd J@J.T + MGDAWeighting"] = torchjd_mgda
            shape = (
                f"K={k} P={p:.0e} float32 ({J.nbytes / 2**20:.0f} MiB), {get_num_threads()} threads"
            )
            name = f"gram+min-norm K={k} P={p:.0e}"
            results[name] = compare("gram + min-norm", shape, ours, peers, repeat=repeat)
            mem = {"kexue": peak_extra_bytes(ours)}
            mem.update({peer: peak_extra_bytes(fn) for peer, fn in peers.items()})
            print(
                "    extra peak memory: "
                + ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in mem.items())
            )
            w_ours = ours()
            w_np = numpy_fw()
            u_ours, u_np = w_ours @ J.astype(np.float64), w_np @ J.astype(np.float64)
            gap = (u_np @ u_np - u_ours @ u_ours) / (u_ours @ u_ours)
            print(f"    ‖u‖² of LibMTL-style FW above kexue's exact minimum: {gap:.2e} relative")
            if torchjd is not None:
                pc_peers = {"torchjd PCGrad aggregator": lambda Jt=Jt: torchjd.PCGrad()(Jt)}
                results[f"pcgrad K={k} P={p:.0e}"] = compare(
                    "pcgrad (weights + direction)",
                    shape,
                    partial(mt.pcgrad, J),
                    pc_peers,
                    repeat=repeat,
                )
            del J
    return results
