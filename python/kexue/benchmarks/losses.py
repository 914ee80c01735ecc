"""``kexue bench losses``: multi-label CE (ZLPR) forward+backward beside the torch forms a
user would write (bert4keras ports), dense and sparse on GlobalPointer-shaped scores, and
the peak memory of each road."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from . import compare, header

NINF = float("-inf")


# --- the torch implementations users write (spec §6), for comparison ------------------


def torch_legacy_1e12(y_true: Any, y_pred: Any) -> Any:
    """bert4keras 2021 form, still the most copied port: ``(1-2y)s`` and ±1e12 masks."""
    import torch

    y_pred = (1 - 2 * y_true) * y_pred
    y_neg = y_pred - y_true * 1e12
    y_pos = y_pred - (1 - y_true) * 1e12
    zeros = torch.zeros_like(y_pred[..., :1])
    neg = torch.logsumexp(torch.cat([y_neg, zeros], -1), -1)
    return (neg + torch.logsumexp(torch.cat([y_pos, zeros], -1), -1)).mean()


def torch_bert4keras_2023(y_true: Any, y_pred: Any) -> Any:
    """bert4keras 0.11.5 (soft labels, -inf masking) in torch."""
    import torch

    y_mask = y_pred != NINF
    ninf = torch.full_like(y_pred, NINF)
    y_neg = torch.where(y_mask, y_pred, ninf) + torch.log(1 - y_true)
    y_pos = torch.where(y_mask, -y_pred, ninf) + torch.log(y_true)
    zeros = torch.zeros_like(y_pred[..., :1])
    neg = torch.logsumexp(torch.cat([y_neg, zeros], -1), -1)
    return (neg + torch.logsumexp(torch.cat([y_pos, zeros], -1), -1)).mean()


def torch_where_softplus(y_true: Any, y_pred: Any) -> Any:
    """The fastest torch form measured in the spec: ``where`` + ``softplus(logsumexp)``."""
    import torch
    import torch.nn.functional as F

    pos = y_true > 0.5
    neg_lse = torch.logsumexp(torch.where(pos, NINF, y_pred), -1)
    pos_lse = torch.logsumexp(torch.where(pos, -y_pred, NINF), -1)
    return (F.softplus(neg_lse) + F.softplus(pos_lse)).mean()


def torch_sparse_gather(y_true: Any, y_pred: Any) -> Any:
    """bert4keras' sparse form with ``mask_zero=True`` in torch (GPLinker ports): gathers
    the positives and uses the cancelling ``a + log(1 - exp(b - a))``."""
    import torch

    zeros = torch.zeros_like(y_pred[..., :1])
    y_pred = torch.cat([y_pred, zeros], -1)
    infs = zeros + 1e12
    y_pred = torch.cat([infs, y_pred[..., 1:]], -1)
    y_pos_2 = torch.gather(y_pred, -1, y_true)
    y_pos_1 = torch.cat([y_pos_2, zeros], -1)
    y_pred = torch.cat([-infs, y_pred[..., 1:]], -1)
    y_pos_2 = torch.gather(y_pred, -1, y_true)
    pos_loss = torch.logsumexp(-y_pos_1, -1)
    all_loss = torch.logsumexp(y_pred, -1)
    aux = torch.clamp(1 - torch.exp(torch.logsumexp(y_pos_2, -1) - all_loss), 1e-7, 1)
    return (pos_loss + all_loss + torch.log(aux)).mean()


# --- inputs ---------------------------------------------------------------------------


def _mlce_inputs(rows: int, cols: int, k: int, seed: int = 0) -> tuple:
    """float32 logits, dense 0/1 labels with ``k`` positives per row, and the same labels
    as ``k + 1`` indices led by a 0 (padding for ``mask_zero``); no float64 temporaries."""
    rng = np.random.default_rng(seed)
    y_pred = rng.standard_normal((rows, cols), dtype=np.float32)
    idx = rng.integers(1, cols, (rows, k + 1))
    idx[:, 0] = 0
    y_true = np.zeros((rows, cols), np.float32)
    np.put_along_axis(y_true, idx[:, 1:], 1.0, axis=-1)
    y_true[:, 0] = 0.0
    return y_pred, y_true, idx


def _cases(y_pred: np.ndarray, y_true: np.ndarray, idx: np.ndarray) -> dict[str, Callable]:
    """Every road, as a no-argument fwd+bwd call, by name."""
    import torch

    from ..losses import multilabel_categorical_crossentropy as mlce
    from ..losses import sparse_multilabel_categorical_crossentropy as sparse

    # the dense roads score class 0 as a negative (label 0), the sparse ones skip it
    # (mask_zero): one column of difference in the work, none in the comparison
    tp, tt, ti = torch.from_numpy(y_pred), torch.from_numpy(y_true), torch.from_numpy(idx)

    def autograd(loss: Callable[[Any], Any]) -> Callable[[], None]:
        def run() -> None:
            leaf = tp.detach().requires_grad_()
            loss(leaf).backward()

        return run

    def numpy_dense() -> None:
        from .. import _native

        loss, stats = _native.mlce_forward(y_pred, y_true, None, 1e-7)
        _native.mlce_backward(y_pred, y_true, None, 1e-7, stats, np.ones_like(loss) / loss.size)

    def numpy_sparse() -> None:
        from .. import _native

        loss, stats = _native.sparse_mlce_forward(y_pred, idx, True)
        _native.sparse_mlce_backward(y_pred, idx, True, stats, np.ones_like(loss) / loss.size)

    return {
        "kexue dense, numpy road": numpy_dense,
        "kexue dense, torch CPU road": autograd(lambda x: mlce(tt, x)),
        "kexue sparse, numpy road": numpy_sparse,
        "kexue sparse, torch CPU road": autograd(lambda x: sparse(ti, x, mask_zero=True)),
        "torch legacy 1e12 port": autograd(lambda x: torch_legacy_1e12(tt, x)),
        "torch bert4keras-2023": autograd(lambda x: torch_bert4keras_2023(tt, x)),
        "torch where+softplus(LSE)": autograd(lambda x: torch_where_softplus(tt, x)),
        "torch sparse gather (bert4keras)": autograd(lambda x: torch_sparse_gather(ti, x)),
    }


def _scores_case(batch: int, repeat: int, threads: str) -> dict[str, float]:
    """GlobalPointer scores with RoPE and masking, fwd+bwd, beside the same maths in torch
    ops (RoPE, ``einsum``, ``masked_fill``) under autograd."""
    import torch

    from ..losses import _torch_scores, global_pointer_scores

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, 256, 8, 64, generator=gen)
    k = torch.randn(batch, 256, 8, 64, generator=gen)
    mask = torch.arange(256)[None, :] < torch.randint(128, 257, (batch, 1), generator=gen)
    grad = torch.randn(batch, 8, 256, 256, generator=gen)

    def fwd_bwd(scores: Callable[..., Any]) -> Callable[[], None]:
        def run() -> None:
            qq, kk = q.detach().requires_grad_(), k.detach().requires_grad_()
            s = scores(qq, kk)
            torch.autograd.backward(s, torch.where(s.isinf(), 0.0, grad))

        return run

    shape = f"q, k ({batch}, 256, 8, 64) float32 -> ({batch}, 8, 256, 256), RoPE, fwd+bwd, "
    return compare(
        "GP scores kexue (torch CPU road)",
        shape + threads,
        fwd_bwd(lambda a, b: global_pointer_scores(a, b, mask=mask)),
        {
            "torch RoPE + einsum + masked_fill": fwd_bwd(
                lambda a, b: _torch_scores(a, b, None, None, mask, rope=True, tril=True)
            )
        },
        repeat=repeat,
    )


def _peak_mib(rows: int, cols: int, k: int, case: str) -> float:
    """Peak resident memory (MiB) above the inputs of one fwd+bwd call of ``case``, in a
    fresh process so earlier cases do not hide it."""
    code = (
        "import json, sys; from kexue.benchmarks.losses import _measure; "
        f"print(json.dumps(_measure({rows}, {cols}, {k}, {case!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1])


def _measure(rows: int, cols: int, k: int, case: str) -> float:
    """Peak resident memory above the inputs (MiB) of one call of ``case``: Linux's
    high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` just before."""
    inputs = _mlce_inputs(rows, cols, k)
    for a in inputs:  # touch every page, so untouched np.zeros pages do not count later
        flat = a.reshape(-1)
        flat[::512] = flat[::512]
    cases = _cases(*inputs)
    _cases(*_mlce_inputs(2, cols, k))[case]()  # import and warm up on a tiny problem
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    cases[case]()
    return (_status_kib("VmHWM") - before) / 1024


def run(size: int | None = None, repeat: int = 7, memory: bool = True) -> dict[str, Any]:
    """Dense ZLPR fwd+bwd on ``(size, 10000)`` float32 (default 4096 rows, ~1% positives),
    then GlobalPointer-shaped scores ``(size/256, 8, 256, 256)`` as ``(B·H, L·L)`` rows
    (default B = 16, 8 spans per row) dense and sparse, each beside the torch forms of
    spec §6; ratios below 1 mean kexue is faster. With ``memory``, the peak memory of
    each road on the GlobalPointer shape is measured in a fresh process."""
    print(header())
    from .. import get_num_threads

    try:
        import torch
    except ImportError:
        print("kexue bench losses compares against torch: install the torch extra")
        return {}

    rows = 4096 if size is None else size
    batch = max(1, rows // 256)
    threads = f"{get_num_threads()} kexue threads, torch {torch.get_num_threads()} threads"
    results: dict[str, Any] = {}
    peers = (
        "torch legacy 1e12 port",
        "torch bert4keras-2023",
        "torch where+softplus(LSE)",
        "torch sparse gather (bert4keras)",
    )

    shape = f"({rows}, 10000) float32, ~1% positive, fwd+bwd, {threads}"
    cases = _cases(*_mlce_inputs(rows, 10000, 100))
    for ours in ("kexue dense, numpy road", "kexue dense, torch CPU road"):
        results[f"mlce {ours}"] = compare(
            f"ZLPR {ours}", shape, cases[ours], {p: cases[p] for p in peers[:3]}, repeat=repeat
        )
    del cases

    gp_rows, gp_cols = batch * 8, 256 * 256
    shape = f"GlobalPointer ({batch}, 8, 256, 256) float32 = ({gp_rows}, {gp_cols}), K = 8, "
    shape += f"fwd+bwd, {threads}"
    cases = _cases(*_mlce_inputs(gp_rows, gp_cols, 8))
    for ours in (
        "kexue sparse, numpy road",
        "kexue sparse, torch CPU road",
        "kexue dense, torch CPU road",
    ):
        results[f"gp {ours}"] = compare(
            f"GP {ours}", shape, cases[ours], {p: cases[p] for p in peers}, repeat=repeat
        )
    del cases

    results["gp scores"] = _scores_case(batch, repeat, threads)

    if memory:
        label_mib = gp_rows * gp_cols * 4 / 2**20
        print(
            f"peak memory above the inputs, one fwd+bwd on ({gp_rows}, {gp_cols}) float32 "
            f"(logits {label_mib:.0f} MiB; a dense float32 label tensor is another "
            f"{label_mib:.0f} MiB, which the sparse roads never build):"
        )
        names = [
            "kexue sparse, numpy road",
            "kexue sparse, torch CPU road",
            "kexue dense, torch CPU road",
            *peers,
        ]
        results["peak_mib"] = {}
        for name in names:
            mib = _peak_mib(gp_rows, gp_cols, 8, name)
            results["peak_mib"][name] = mib
            print(f"    {name:<36} {mib:8.1f} MiB")
    return results
