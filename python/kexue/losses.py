"""Multi-label "softmax + cross-entropy" (ZLPR), GlobalPointer and its R-Drop divergence,
and the n×m-class loss, after Su Jianlin (kexue.fm/archives/7359, 9064, 8888, 8373, 8877,
9039, 9158).

Every loss takes raw scores (no sigmoid) whose decision threshold is 0. A score of ``-inf``
(a masked entry) is dropped from every sum whatever its label. numpy inputs run the Rust
kernels; CPU tensors run the Rust forward *and* backward through autograd; tensors on other
devices (or inside :func:`kexue.torch_fallback`) run the same maths in torch ops.

Unlike bert4keras, whose ``(y_true, y_pred)`` order is kept, every loss here reduces with
``reduction="mean"`` over the leading (batch) axes by default, like torch's losses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _native
from ._dispatch import Kernel, check_finite, check_float, check_scalar, is_tensor, unwrap_0d

__all__ = [
    "EPS_DEFAULT",
    "global_pointer_decode",
    "global_pointer_kl",
    "global_pointer_scores",
    "multilabel_categorical_crossentropy",
    "nxm_crossentropy",
    "sparse_multilabel_categorical_crossentropy",
]

#: Soft labels within this of 0 or 1 count as exactly 0 or 1 (Su's ``K.epsilon()``), so a
#: masked logit never comes back through ``log(ε)``.
EPS_DEFAULT: float = _native.MLCE_EPS_DEFAULT

_REDUCTIONS = ("mean", "sum", "none")


# --- shared helpers -------------------------------------------------------------------


def _check_reduction(reduction: Any) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _reduce(loss: Any, reduction: str) -> Any:
    if reduction == "none":
        return unwrap_0d(loss) if isinstance(loss, np.ndarray) else loss
    if reduction == "sum":
        return loss.sum()
    size = loss.numel() if is_tensor(loss) else loss.size
    if size == 0:
        raise ValueError("the batch is empty: reduction='mean' is undefined (use 'sum' or 'none')")
    return loss.mean()


def _like(x: Any, lead: Any, name: str, *, dtype: Any = None, integer: bool = False) -> Any:
    """``x`` as a C-contiguous array/tensor on ``lead``'s side (same library and device),
    of ``dtype`` (default: ``lead``'s). Never differentiated."""
    if is_tensor(x):
        if x.dtype.is_complex or (integer and x.dtype.is_floating_point):
            raise TypeError(f"{name} must be {'integer' if integer else 'real'}, got {x.dtype}")
        a = x.detach()
    else:
        if isinstance(x, (str, bytes)):
            raise TypeError(f"{name} must be an array, got {type(x).__name__}")
        try:
            a = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a real array: {exc}") from None
        if a.dtype.kind not in ("biu" if integer else "biuf"):
            want = "an integer" if integer else "a real"
            raise TypeError(f"{name} must be {want} array, got dtype {a.dtype}")
    if is_tensor(lead):
        import torch

        t = a if is_tensor(a) else torch.from_numpy(np.ascontiguousarray(a))
        return t.to(device=lead.device, dtype=lead.dtype if dtype is None else dtype).contiguous()
    a = a.cpu().numpy() if is_tensor(a) else a
    return np.ascontiguousarray(a, dtype=lead.dtype if dtype is None else dtype)


def _mask(mask: Any, lead: Any, shape: tuple) -> Any:
    """A keep-mask broadcast to ``shape`` as uint8 (nonzero = keep), or None."""
    if mask is None:
        return None
    if is_tensor(lead):
        import torch

        m = _like(mask, lead, "mask", dtype=torch.bool)
        try:
            return m.expand(shape).to(torch.uint8).contiguous()
        except RuntimeError as exc:
            raise ValueError(f"mask must broadcast to {tuple(shape)}: {exc}") from None
    m = _like(mask, lead, "mask", dtype=bool)
    try:
        return np.ascontiguousarray(np.broadcast_to(m, shape), dtype=np.uint8)
    except ValueError as exc:
        raise ValueError(f"mask must broadcast to {tuple(shape)}: {exc}") from None


def _same_shape(a: Any, b: Any, a_name: str, b_name: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{a_name} must have the shape of {b_name} {tuple(b.shape)}, got {tuple(a.shape)}"
        )


def _torch_check_logits(x: Any, name: str) -> None:
    """The Rust kernels' rule on the torch road: finite or -inf, never NaN or +inf."""
    import torch

    bad = torch.isnan(x) | (x == float("inf"))
    if bool(bad.any()):
        index = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite or -inf (masked), got {x[index].item()} at {index}"
        )


def _lse0(x: Any) -> Any:
    """``log(1 + Σ exp(x))`` over the last axis: the appended zero column. Where every
    ``x <= 0`` it is ``log1p(Σ exp(x))``, which keeps a small loss's digits (``logsumexp``
    rounds ``1 + 3e-7`` in float32); the clamp keeps the other branch finite for autograd."""
    import torch

    if x.shape[-1] == 0:  # no classes: log(1 + 0)
        return x.new_zeros(x.shape[:-1])
    top = x.max(dim=-1).values.clamp_min(0.0)
    small = torch.log1p(x.clamp_max(0.0).exp().sum(-1))
    large = top + torch.log((-top).exp() + (x - top.unsqueeze(-1)).exp().sum(-1))
    return torch.where(top == 0, small, large)


# --- multi-label categorical cross-entropy (ZLPR) -------------------------------------


def _torch_dense(y_pred: Any, y_true: Any, mask: Any, *, eps: float) -> tuple:
    import torch

    _torch_check_logits(y_pred, "y_pred")
    if bool(((y_true < 0) | (y_true > 1) | torch.isnan(y_true)).any()):
        raise ValueError("y_true must be in [0, 1]")
    keep = y_pred != float("-inf")
    if mask is not None:
        keep = keep & (mask != 0)
    t = torch.where(y_true <= eps, 0.0, torch.where(y_true >= 1 - eps, 1.0, y_true))
    ninf = y_pred.new_tensor(float("-inf"))
    neg = torch.where(keep & (t < 1), y_pred + torch.log1p(-t), ninf)
    pos = torch.where(keep & (t > 0), -y_pred + torch.log(t), ninf)
    return _lse0(neg) + _lse0(pos), None


def _dense_backward(
    inputs: tuple[Any, Any, Any], outputs: tuple[Any, Any], grads: tuple[Any, Any], *, eps: float
) -> tuple[Any, None, None]:
    return _native.mlce_backward(*inputs, eps, outputs[1], grads[0]), None, None


_dense = Kernel(
    lambda s, t, m, *, eps: _native.mlce_forward(s, t, m, eps),
    _dense_backward,
    torch_forward=_torch_dense,
)


def multilabel_categorical_crossentropy(
    y_true: Any,
    y_pred: Any,
    *,
    mask: Any = None,
    reduction: str = "mean",
    eps: float = EPS_DEFAULT,
) -> Any:
    """Multi-label "softmax + cross-entropy" (ZLPR), per row of the last axis:
    ``log(1 + Σ_i (1-t_i) e^{s_i}) + log(1 + Σ_i t_i e^{-s_i})``.

    Positives are pushed above 0 and negatives below 0, so decode with ``y_pred > 0``. With
    soft labels the optimum is ``t = sigmoid(2 s)``: report probabilities as
    ``sigmoid(2 * y_pred)``, not ``sigmoid(y_pred)``.

    Args:
        y_true: labels of ``y_pred``'s shape, hard 0/1 or soft in [0, 1] (not differentiated).
            Labels within ``eps`` of 0 or 1 (compared in their dtype) count as exactly 0 or 1.
        y_pred: raw scores ``(..., num_classes)``, float32/float64 array or tensor. ``-inf``
            marks a masked entry, dropped whatever its label; NaN and ``+inf`` are errors.
        mask: optional keep-mask broadcastable to ``y_pred`` (False = drop, as ``-inf``).
        reduction: ``"mean"`` (over the leading axes), ``"sum"`` or ``"none"``.
        eps: in [0, 0.5).

    Example:
        >>> import numpy as np
        >>> from kexue.losses import multilabel_categorical_crossentropy
        >>> y_pred = np.array([[2.0, -3.0, 0.5]], dtype=np.float32)
        >>> float(multilabel_categorical_crossentropy([[1, 0, 1]], y_pred))  # doctest: +ELLIPSIS
        0.6...
    """
    reduction = _check_reduction(reduction)
    eps = check_scalar(eps, "eps", low=0.0, high=0.4999999)
    y_pred = check_float(y_pred, "y_pred")
    if y_pred.ndim < 1:
        raise ValueError("y_pred must have at least 1 dimension (the classes), got a 0-d array")
    y_true = _like(y_true, y_pred, "y_true")
    _same_shape(y_true, y_pred, "y_true", "y_pred")
    loss = _dense(y_pred, y_true, _mask(mask, y_pred, tuple(y_pred.shape)), eps=eps)[0]
    return _reduce(loss, reduction)


def _torch_sparse(y_pred: Any, y_true: Any, *, mask_zero: bool) -> tuple:
    import torch

    _torch_check_logits(y_pred, "y_pred")
    # the fallback materialises a bool positive mask; the Rust road never does
    positive = torch.zeros(y_pred.shape, dtype=torch.bool, device=y_pred.device)
    positive.scatter_(-1, y_true, True)
    keep = y_pred != float("-inf")
    if mask_zero and keep.shape[-1] > 0:
        keep[..., 0] = False
    ninf = y_pred.new_tensor(float("-inf"))
    neg = torch.where(keep & ~positive, y_pred, ninf)
    pos = torch.where(keep & positive, -y_pred, ninf)
    return _lse0(neg) + _lse0(pos), None


def _sparse_backward(
    inputs: tuple[Any, Any], outputs: tuple[Any, Any], grads: tuple[Any, Any], *, mask_zero: bool
) -> tuple[Any, None]:
    return _native.sparse_mlce_backward(*inputs, mask_zero, outputs[1], grads[0]), None


_sparse = Kernel(
    lambda s, idx, *, mask_zero: _native.sparse_mlce_forward(s, idx, mask_zero),
    _sparse_backward,
    torch_forward=_torch_sparse,
)


def sparse_multilabel_categorical_crossentropy(
    y_true_indices: Any,
    y_pred: Any,
    *,
    mask_zero: bool = False,
    reduction: str = "mean",
) -> Any:
    """:func:`multilabel_categorical_crossentropy` with labels given as the positive class
    indices, so no dense label tensor is ever built (GPLinker's form, kexue.fm/archives/8888).

    The negative term ``log(1 + Σ_{i∉P} e^{s_i})`` is summed over the complement of the
    positives directly: exact, unlike bert4keras' ``a + log(1 - exp(b - a))``, which cancels
    (NaN, negative losses, a clip floor with the wrong gradient). Duplicate indices count
    once, so the dense and sparse forms agree on the same labels.

    Args:
        y_true_indices: integer ``(..., k)`` positive class indices for ``y_pred (..., C)``.
        y_pred: raw scores ``(..., C)``; ``-inf`` entries are dropped.
        mask_zero: index 0 is padding (rows with fewer than k positives) and class 0 is
            never scored, bert4keras' convention.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import numpy as np
        >>> from kexue.losses import sparse_multilabel_categorical_crossentropy as sparse_mlce
        >>> y_pred = np.array([[2.0, -3.0, 0.5]], dtype=np.float32)
        >>> float(sparse_mlce([[0, 2]], y_pred))  # doctest: +ELLIPSIS
        0.6...
    """
    reduction = _check_reduction(reduction)
    if not isinstance(mask_zero, (bool, np.bool_)):
        raise TypeError(f"mask_zero must be a bool, got {type(mask_zero).__name__}")
    mask_zero = bool(mask_zero)
    if str(getattr(y_true_indices, "dtype", "")).endswith("bool"):  # numpy's and torch's
        raise TypeError(
            "y_true_indices must hold integer class indices, got a bool array (for multi-hot "
            "labels use multilabel_categorical_crossentropy)"
        )
    y_pred = check_float(y_pred, "y_pred")
    if y_pred.ndim < 1:
        raise ValueError("y_pred must have at least 1 dimension (the classes), got a 0-d array")
    if not is_tensor(y_true_indices):  # uint64 beyond int64 would read as negative below
        raw = np.asarray(y_true_indices)
        if raw.dtype.kind == "u" and raw.size and int(raw.max()) >= y_pred.shape[-1]:
            raise ValueError(
                f"y_true_indices must be in [0, {y_pred.shape[-1]}), got {int(raw.max())}"
            )
    idx = _like(y_true_indices, y_pred, "y_true_indices", dtype=_int64(y_pred), integer=True)
    if idx.ndim != y_pred.ndim or tuple(idx.shape[:-1]) != tuple(y_pred.shape[:-1]):
        raise ValueError(
            f"y_true_indices must have shape {tuple(y_pred.shape[:-1])} + (k,) to match "
            f"y_pred, got {tuple(idx.shape)}"
        )
    classes = y_pred.shape[-1]
    if idx.numel() if is_tensor(idx) else idx.size:
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise ValueError(f"y_true_indices must be in [0, {classes}), got {bad}")
    return _reduce(_sparse(y_pred, idx, mask_zero=mask_zero)[0], reduction)


def _int64(lead: Any) -> Any:
    if is_tensor(lead):
        import torch

        return torch.int64
    return np.int64


# --- GlobalPointer --------------------------------------------------------------------


def _rope(x: Any) -> Any:
    """bert4keras' RoPE on ``(B, L, H, d)``: pairs ``(2p, 2p+1)`` rotated by
    ``position · 10000^(-2p/d)``."""
    import torch

    length, d = x.shape[1], x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = torch.arange(length, dtype=torch.float64)[:, None] * theta
    cos = angle.cos().repeat_interleave(2, -1).to(x)[None, :, None, :]
    sin = angle.sin().repeat_interleave(2, -1).to(x)[None, :, None, :]
    swapped = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)
    return x * cos + swapped * sin


def _keep(mask: Any, length: int, tril: bool, like: Any) -> Any:
    """``(B or 1, 1, L, L)`` bool: real tokens on both ends and, with tril, start <= end."""
    import torch

    keep = torch.ones((1, 1, length, length), dtype=torch.bool, device=like.device)
    if tril:
        keep = keep.triu()
    if mask is not None:
        m = mask != 0
        keep = keep & m[:, None, :, None] & m[:, None, None, :]
    return keep


def _torch_scores(q: Any, k: Any, rb: Any, cb: Any, mask: Any, *, rope: bool, tril: bool) -> Any:
    import torch

    check_finite(q, "q")  # the Rust road checks inside its kernel
    check_finite(k, "k")
    if rope:
        q, k = _rope(q), _rope(k)
    s = torch.einsum("bmhd,bnhd->bhmn", q, k) / q.shape[-1] ** 0.5
    if rb is not None:
        s = s + rb[..., :, None] + cb[..., None, :]
    return s.masked_fill(~_keep(mask, q.shape[1], tril, q), float("-inf"))


def _scores_backward(
    inputs: tuple[Any, Any, Any, Any, Any],
    outputs: tuple[Any],
    grads: tuple[Any],
    *,
    rope: bool,
    tril: bool,
) -> tuple[Any, Any, Any, Any, None]:
    q, k, rb, cb, mask = inputs
    dq, dk, drb, dcb = _native.gp_scores_backward(q, k, rb, cb, mask, rope, tril, grads[0])
    return dq, dk, drb, dcb, None


_scores = Kernel(
    lambda q, k, rb, cb, m, *, rope, tril: _native.gp_scores_forward(q, k, rb, cb, m, rope, tril),
    _scores_backward,
    torch_forward=_torch_scores,
)


def global_pointer_scores(
    q: Any,
    k: Any,
    *,
    mask: Any = None,
    bias: tuple[Any, Any] | None = None,
    rope: bool = True,
    tril: bool = True,
) -> Any:
    """GlobalPointer span scores ``s[b,h,i,j] = RoPE(q_i)·RoPE(k_j)/√d`` (+ biases).

    ``q, k (B, L, H, d)`` give GlobalPointer (kexue.fm/archives/8373). With ``H = 1`` and
    ``bias = (start_bias, end_bias)`` of shape ``(B, heads, L)`` this is Efficient
    GlobalPointer (8877): one shared q·k plus a per-type bias for the start and the end.
    Padding (``mask`` False, shape ``(B, L)``) and, with ``tril``, start > end are ``-inf``.

    Returns ``(B, heads, L, L)`` scores; decode with :func:`global_pointer_decode`.

    Example:
        >>> import numpy as np
        >>> from kexue.losses import global_pointer_scores
        >>> q = np.ones((1, 3, 2, 4), np.float32)
        >>> global_pointer_scores(q, q, mask=[[1, 1, 0]], rope=False)[0, 0]
        array([[  2.,   2., -inf],
               [-inf,   2., -inf],
               [-inf, -inf, -inf]], dtype=float32)
    """
    if not isinstance(rope, bool) or not isinstance(tril, bool):
        raise TypeError("rope and tril must be bools")
    q = check_float(q, "q", ndim=4)
    k = check_float(k, "k", ndim=4)
    if is_tensor(q) != is_tensor(k) or k.dtype != q.dtype:
        raise TypeError("k must be of the same kind (array or tensor) and dtype as q")
    _same_shape(k, q, "k", "q")
    batch, length, qk_heads, head_size = q.shape
    if head_size < 1:
        raise ValueError("head_size (q.shape[-1]) must be at least 1, got 0")
    if rope and head_size % 2:
        raise ValueError(f"head_size (q.shape[-1]) must be even for RoPE, got {head_size}")
    rb = cb = None
    if bias is not None:
        try:
            rb, cb = bias
        except (TypeError, ValueError):
            raise TypeError("bias must be a pair (start_bias, end_bias)") from None
        rb = check_float(rb, "bias[0]", ndim=3, finite=True)
        cb = check_float(cb, "bias[1]", ndim=3, finite=True)
        _same_shape(cb, rb, "bias[1]", "bias[0]")
        if rb.shape[0] != batch or rb.shape[2] != length or qk_heads not in (1, rb.shape[1]):
            raise ValueError(
                f"bias must have shape ({batch}, heads, {length}) with heads = {qk_heads} or "
                f"q with 1 head, got {tuple(rb.shape)}"
            )
        if is_tensor(rb) != is_tensor(q) or rb.dtype != q.dtype or cb.dtype != q.dtype:
            raise TypeError("bias must be of the same kind and dtype as q")
    if mask is not None:
        mask = _mask(mask, q, (batch, length))
    return _scores(q, k, rb, cb, mask, rope=rope, tril=tril)


def global_pointer_decode(scores: Any, threshold: float = 0.0) -> Any:
    """Spans where ``scores > threshold`` and start <= end, as an int64 array (or tensor)
    of rows ``(*leading indices, start, end)`` — ``(batch, type, start, end)`` for the
    ``(B, H, L, L)`` output of GlobalPointer.

    Example:
        >>> import numpy as np
        >>> from kexue.losses import global_pointer_decode
        >>> s = np.full((1, 2, 3, 3), -1.0)
        >>> s[0, 1, 0, 2] = 3.0
        >>> global_pointer_decode(s).tolist()
        [[0, 1, 0, 2]]
    """
    threshold = check_scalar(threshold, "threshold")
    scores = check_float(scores, "scores")
    if scores.ndim < 2 or scores.shape[-1] != scores.shape[-2]:
        raise ValueError(f"scores must have shape (..., L, L), got {tuple(scores.shape)}")
    if is_tensor(scores):
        import torch

        hit = (scores > threshold).triu()
        return torch.nonzero(hit)
    return np.argwhere(np.triu(scores > threshold)).astype(np.int64)


def _torch_kl(s: Any, t: Any, mask: Any) -> Any:
    import torch

    _torch_check_logits(s, "s")
    _torch_check_logits(t, "t")
    ninf = float("-inf")
    skip = (s == ninf) | (t == ninf)
    if mask is not None:
        skip = skip | (mask == 0)
    # Zero the skipped entries before the product so no 0·inf is formed (gradients too); an
    # entry -inf on one side only (and kept) adds +inf, with gradient 0 as on the native road.
    s0, t0 = s.masked_fill(skip, 0.0), t.masked_fill(skip, 0.0)
    d = (torch.sigmoid(s0) - torch.sigmoid(t0)) * (s0 - t0)
    one_sided = (s == ninf) != (t == ninf)
    if mask is not None:
        one_sided = one_sided & (mask != 0)
    d = d.masked_fill(one_sided, float("inf"))
    return d.reshape(d.shape[0], -1).sum(-1)


def _kl_backward(
    inputs: tuple[Any, Any, Any], outputs: tuple[Any], grads: tuple[Any]
) -> tuple[Any, Any, None]:
    return (*_native.gp_kl_backward(*inputs, grads[0]), None)


_kl = Kernel(
    lambda s, t, m: _native.gp_kl_forward(s, t, m),
    _kl_backward,
    torch_forward=_torch_kl,
)


def global_pointer_kl(s: Any, t: Any, *, mask: Any = None, reduction: str = "mean") -> Any:
    """Symmetric divergence of two GlobalPointer score tensors, for R-Drop or virtual
    adversarial training (kexue.fm/archives/9039):
    ``D = Σ (sigmoid(s) - sigmoid(t)) (s - t)``, the sum of the symmetric KLs of the
    Bernoulli(σ(s_i)) and Bernoulli(σ(t_i)) entries.

    ``D >= 0``, ``D = 0`` iff ``s = t`` (where kept), symmetric. Entries that are ``-inf`` in
    both inputs (masked the same way) or False in ``mask`` add exactly 0; an entry ``-inf``
    in one input only gives ``+inf`` (and gradient 0 there: no finite slope exists). Both
    inputs are differentiated.

    Args:
        s, t: scores of the same shape ``(B, ...)``; summed over all axes but the first.
        mask: optional keep-mask broadcastable to ``s``.
        reduction: ``"mean"`` over the batch axis, ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Example:
        >>> import numpy as np
        >>> from kexue.losses import global_pointer_kl
        >>> s = np.array([[0.0, -np.inf]])
        >>> float(global_pointer_kl(s, np.array([[1.0, -np.inf]])))  # doctest: +ELLIPSIS
        0.231...
    """
    reduction = _check_reduction(reduction)
    s = check_float(s, "s")
    if s.ndim < 1:
        raise ValueError("s must have at least 1 dimension (the batch), got a 0-d array")
    t = check_float(t, "t")
    if is_tensor(s) != is_tensor(t) or s.dtype != t.dtype:
        raise TypeError("t must be of the same kind and dtype as s")
    _same_shape(t, s, "t", "s")
    return _reduce(_kl(s, t, _mask(mask, s, tuple(s.shape))), reduction)


# --- n independent m-class problems ---------------------------------------------------


def _torch_nxm(y_pred: Any, y_true: Any, *, form: str) -> tuple:
    import torch

    if not bool(torch.isfinite(y_pred).all()):
        raise ValueError("y_pred must be finite")
    m = y_pred.shape[-1]
    if form == "centered":
        offset = y_pred.mean(-1, keepdim=True) - y_pred
    else:
        # LSE over k != j per class j: the diagonal is dropped, never subtracted
        eye = torch.eye(m, dtype=torch.bool, device=y_pred.device)
        others = y_pred[..., None, :].expand(*y_pred.shape, m).masked_fill(eye, float("-inf"))
        offset = torch.logsumexp(others, dim=-1) - y_pred
    a = torch.where(y_true > 0, torch.log(y_true) + offset, float("-inf"))
    return _lse0(a.transpose(-1, -2)).sum(-1), None


def _nxm_backward(
    inputs: tuple[Any, Any], outputs: tuple[Any, Any], grads: tuple[Any, Any], *, form: str
) -> tuple[Any, None]:
    return _native.nxm_backward(*inputs, form, outputs[1], grads[0]), None


_nxm = Kernel(
    lambda s, t, *, form: _native.nxm_forward(s, t, form),
    _nxm_backward,
    torch_forward=_torch_nxm,
)


def nxm_crossentropy(
    y_true: Any, y_pred: Any, *, form: str = "analogy", reduction: str = "mean"
) -> Any:
    """Loss for n independent m-class problems per sample (kexue.fm/archives/9158).

    ``y_pred`` and ``y_true`` are ``(..., n, m)``; ``y_true`` holds label distributions
    (one-hot for hard labels). For each class j the n problems share one log, which
    balances classes the way ZLPR does:

    * ``form="analogy"`` (the post's loss 1, its recommendation for hard labels):
      ``Σ_j log(1 + Σ_i t_ij exp(LSE_{k≠j} s_ik - s_ij))``. What it converges to for *soft*
      labels is not known: the post could not solve for its stationary point.
    * ``form="centered"`` (loss 3): ``Σ_j log(1 + Σ_i t_ij exp(mean_k s_ik - s_ij))``. Its
      optimum is exactly ``t = softmax(s)``, but near hard labels it is satisfied by
      ``s_ij`` far above the row mean without being the row maximum, so it trains badly.

    A loss with both properties is what the post leaves open. For m = 2 both reduce to ZLPR
    (on ``s_1 - s_2`` and on half of it). Decode with ``argmax`` over m.

    Example:
        >>> import numpy as np
        >>> from kexue.losses import nxm_crossentropy
        >>> y = np.eye(3)[[0, 2]]                         # n = 2 problems, m = 3 classes
        >>> s = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
        >>> round(float(nxm_crossentropy(y, s)), 4)
        0.072
    """
    reduction = _check_reduction(reduction)
    if form not in ("analogy", "centered"):
        raise ValueError(f"form must be 'analogy' or 'centered', got {form!r}")
    y_pred = check_float(y_pred, "y_pred")
    if y_pred.ndim < 2:
        raise ValueError(f"y_pred must have shape (..., n, m), got {tuple(y_pred.shape)}")
    y_true = _like(y_true, y_pred, "y_true")
    _same_shape(y_true, y_pred, "y_true", "y_pred")
    if is_tensor(y_true):
        import torch

        bad = bool(((y_true < 0) | (y_true > 1) | torch.isnan(y_true)).any())
    else:
        bad = bool(((y_true < 0) | (y_true > 1) | np.isnan(y_true)).any())
    if bad:
        raise ValueError("y_true must hold label weights in [0, 1]")
    return _reduce(_nxm(y_pred, y_true, form=form)[0], reduction)
