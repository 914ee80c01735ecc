"""``kexue bench attention``: causal linear attention against pure-torch CPU peers.

Shapes follow the spec (B = 1, H = 8, D = M = Dv = 64, float32). Peers, all in this process:
the chunked torch form (vectorised over chunks: masked ``C × C`` products inside, exclusive
cumsum of chunk states across), the naive cumsum-of-outer-products form (N ≤ 2048: it
materialises ``(N, M, Dv)``), and exact ``scaled_dot_product_attention(is_causal=True)``.
Streaming decode is timed per token against recomputing the prefix with the chunked torch form.

On a shared box, run with ``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP threads otherwise keep
spinning after each op and the interleaved timings of both sides suffer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import compare, header, median_time

B, H, D = 1, 8, 64


def _torch_chunked(q: Any, k: Any, v: Any, c: int, eps: float = 1e-6) -> Any:
    """The fastest pure-torch causal linear attention found: no Python loop over chunks."""
    import torch

    b, h, n, m = q.shape
    dv = v.shape[-1]
    vp = torch.cat([v, v.new_ones(b, h, n, 1)], -1)
    qc, kc = q.view(b, h, n // c, c, m), k.view(b, h, n // c, c, m)
    vc = vp.view(b, h, n // c, c, dv + 1)
    intra = (qc @ kc.transpose(-1, -2)).tril() @ vc
    kv = kc.transpose(-1, -2) @ vc
    y = (intra + qc @ (kv.cumsum(2) - kv)).view(b, h, n, dv + 1)
    return y[..., :dv] / (y[..., dv:] + eps)


def _torch_cumsum(q: Any, k: Any, v: Any, eps: float = 1e-6) -> Any:
    s = (k[..., :, None] * v[..., None, :]).cumsum(2)
    z = k.cumsum(2)
    num = (q[..., :, None] * s).sum(-2)
    return num / ((q * z).sum(-1, keepdim=True) + eps)


def run(size: int | None = None, repeat: int = 7) -> dict[str, dict[str, float]]:
    """Forward+backward, then forward at N ∈ {512, 2048, 8192} (or ``size``), then decoding."""
    print(header())
    sizes = [512, 2048, 8192] if size is None else [size]
    results: dict[str, dict[str, float]] = {}
    try:
        import torch  # noqa: F401 - the peers are torch implementations
    except ImportError:
        print("torch is not installed: the peers of this bench are torch implementations")
        return results
    # Every size's training step first: after the forward peers' large tensors were freed
    # (the naive cumsum's 67 MB), steps ran up to 30% slower for a while, ours and the peers'
    # unevenly, and the ratios showed that rather than the kernels.
    for case in (_train, _case):
        for n in sizes:
            results.update(case(n, repeat))
    results["decode"] = _decode(repeat)
    return results


def _inputs(n: int) -> tuple[str, Any, Any, Any, Any, Any]:
    """The case's shape line, raw ``q, k, v`` and elu + 1 features of ``q, k``."""
    import torch

    from .. import get_num_threads

    threads = f"{get_num_threads()} threads, torch {torch.get_num_threads()} threads"
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, D, generator=gen) for _ in range(3))
    phq = torch.nn.functional.elu(q) + 1
    phk = torch.nn.functional.elu(k) + 1
    return f"B={B} H={H} N={n} D=M=Dv={D} float32, {threads}", q, k, v, phq, phk


def _train(n: int, repeat: int) -> dict[str, dict[str, float]]:
    """Forward + backward (a training step's share) against torch's autograd."""
    import torch

    from ..attention import linear_attention

    shape, _, _, v, phq, phk = _inputs(n)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def train(fn: Callable[..., Any]) -> Callable[[], None]:
        def step() -> None:
            a, b, c = (x.detach().requires_grad_() for x in (phq, phk, v))
            fn(a, b, c).sum().backward()

        return step

    times = compare(
        "causal forward+backward, features given",
        shape,
        train(lambda a, b, c: linear_attention(a, b, c, causal=True, feature_map="identity")),
        {
            "torch chunked C=64 (autograd)": train(lambda a, b, c: _torch_chunked(a, b, c, 64)),
            "torch SDPA causal (autograd)": train(lambda a, b, c: sdpa(a, b, c, is_causal=True)),
        },
        # milliseconds at the small sizes: more runs there, for a median that holds still
        repeat=3 * repeat if n <= 2048 else max(3, repeat // 2),
    )
    return {f"fwd+bwd N={n}": times}


def _case(n: int, repeat: int) -> dict[str, dict[str, float]]:
    """The causal forward, features given and FAVOR+ mapped inside."""
    import torch

    from ..attention import linear_attention, orthogonal_random_matrix

    shape, q, k, v, phq, phk = _inputs(n)
    w = orthogonal_random_matrix(D, D, seed=0, dtype=np.float32)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    results = {}
    peers: dict[str, Callable[[], object]] = {
        "torch chunked C=64": lambda: _torch_chunked(phq, phk, v, 64),
        "torch chunked C=128": lambda: _torch_chunked(phq, phk, v, 128),
        "torch SDPA causal (exact softmax)": lambda: sdpa(q, k, v, is_causal=True),
    }
    if n <= 2048:
        peers["torch naive cumsum"] = lambda: _torch_cumsum(phq, phk, v)
    with torch.no_grad():
        results[f"fwd N={n}"] = compare(
            "causal forward, features given",
            shape,
            lambda: linear_attention(phq, phk, v, causal=True, feature_map="identity"),
            peers,
            repeat=repeat,
        )
        wt = torch.from_numpy(w)
        results[f"favor fwd N={n}"] = compare(
            "causal forward incl. FAVOR+ features (m=64)",
            shape,
            lambda: linear_attention(q, k, v, causal=True, projection=w),
            {
                "torch FAVOR+ features + chunked C=64": lambda: _torch_chunked(
                    *_torch_favor(q, k, wt), v, 64
                )
            },
            repeat=repeat,
        )

    return results


def _torch_favor(q: Any, k: Any, w: Any) -> tuple[Any, Any]:
    """FAVOR+ features in torch with a constant key stabiliser (causal, and cheaper than
    kexue's running maximum; it underflows float32 for inputs scaled beyond about 5)."""
    import torch

    d = q.shape[-1]
    uq, uk = (x * d**-0.25 @ w.T for x in (q, k))
    phq = torch.exp(uq - uq.amax(-1, keepdim=True))
    c = (w * w).sum(-1).amax() / 2
    phk = torch.exp(uk - (k * k).sum(-1, keepdim=True) / (2 * d**0.5) - c)
    return phq, phk


def _decode(repeat: int) -> dict[str, float]:
    """Per-token decode latency at position 2048: the streaming state vs recomputing."""
    import torch

    from ..attention import CausalState, orthogonal_random_matrix

    n = 2048
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, n + 1, D, generator=gen) for _ in range(3))
    w = orthogonal_random_matrix(D, D, seed=0, dtype=np.float32)
    state = CausalState(projection=w)
    state.update(q[:, :, :n].numpy(), k[:, :, :n].numpy(), v[:, :, :n].numpy())
    tq, tk, tv = (x[:, :, n].contiguous().numpy() for x in (q, k, v))

    def call() -> None:  # a step costs the same at every position: no need to rewind
        state.update(tq, tk, tv)

    full = torch.nn.functional.elu
    shape = f"B={B} H={H} D=M=Dv={D}, token {n + 1}, float32"
    with torch.no_grad():
        times = compare(
            "decode one token: CausalState.update (FAVOR+ m=64, numpy)",
            shape,
            call,
            {
                "recompute the prefix, torch chunked C=64 (elu+1)": lambda: _torch_chunked(
                    full(q[:, :, :n]) + 1, full(k[:, :, :n]) + 1, v[:, :, :n], 64
                ),
            },
            repeat=repeat * 20,
        )
    for batch in (B, 32):  # 32 amortises the fixed cost of one Python call over more heads
        kernel, whole = _step_times(batch, w, repeat)
        heads = batch * H
        print(
            f"    B={batch} H={H}: decode kernel alone (features given) "
            f"{kernel / heads * 1e6:.3f} µs per token per head; whole CausalState.update "
            f"(FAVOR+ inside) {whole / heads * 1e6:.3f} µs per token per head"
        )
        times[f"kernel_per_head_B{batch}"] = kernel / heads
        times[f"update_per_head_B{batch}"] = whole / heads
    return times


def _step_times(batch: int, w: np.ndarray, repeat: int) -> tuple[float, float]:
    """Seconds per decode step: the native float32 decoder on given features (the identity
    map), and CausalState.update (FAVOR+ inside)."""
    from .. import _native
    from ..attention import CausalState

    rng = np.random.default_rng(0)
    q, k = (rng.random((batch, H, D), dtype=np.float32) for _ in range(2))
    v = rng.standard_normal((batch, H, D), dtype=np.float32)
    decoder = _native.AttentionDecoder(
        "identity", None, None, 1e-6, D, np.zeros((batch, H, D, D + 1)), np.zeros((batch, H))
    )
    kernel = median_time(lambda: decoder.step(q, k, v), repeat=repeat * 200)
    state = CausalState(projection=w)
    state.update(q, k, v)
    whole = median_time(lambda: state.update(q, k, v), repeat=repeat * 200)
    return kernel, whole
