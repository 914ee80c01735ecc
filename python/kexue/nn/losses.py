"""GlobalPointer and the loss modules of :mod:`kexue.losses`."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..losses import (
    EPS_DEFAULT,
    global_pointer_kl,
    global_pointer_scores,
    multilabel_categorical_crossentropy,
    nxm_crossentropy,
    sparse_multilabel_categorical_crossentropy,
)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class GlobalPointer(nn.Module):
    """GlobalPointer span scorer (kexue.fm/archives/8373) and, with ``efficient=True``,
    Efficient GlobalPointer (8877), as bert4keras builds them.

    ``forward(x, mask=None)`` maps hidden states ``(B, L, hidden_size)`` and an optional
    ``(B, L)`` token mask to span scores ``(B, heads, L, L)``: ``s[b, type, start, end]``,
    ``-inf`` at padding and start > end. Train with
    :func:`kexue.losses.sparse_multilabel_categorical_crossentropy` on
    ``scores.flatten(2)`` and labels ``start * L + end``; decode with
    :func:`kexue.losses.global_pointer_decode` (threshold 0).

    * standard: one ``Linear(hidden, heads·2·head_size)`` gives each type its own q and k.
    * efficient: one shared ``Linear(hidden, 2·head_size)`` gives q (even features) and k
      (odd features); a ``Linear(2·head_size, 2·heads)`` on those features, halved, adds a
      per-type start and end bias: 4·head_size parameters per type instead of
      2·hidden·head_size.

    Example:
        >>> import torch
        >>> from kexue.nn import GlobalPointer
        >>> gp = GlobalPointer(16, heads=3, head_size=8, efficient=True)
        >>> gp(torch.randn(2, 5, 16), mask=torch.ones(2, 5)).shape
        torch.Size([2, 3, 5, 5])
    """

    def __init__(
        self,
        hidden_size: int,
        heads: int,
        head_size: int,
        *,
        rope: bool = True,
        efficient: bool = False,
        tril: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.heads = _positive_int(heads, "heads")
        self.head_size = _positive_int(head_size, "head_size")
        if rope and head_size % 2:
            raise ValueError(f"head_size must be even for RoPE, got {head_size}")
        self.rope, self.efficient, self.tril = bool(rope), bool(efficient), bool(tril)
        if efficient:
            self.p_dense = nn.Linear(hidden_size, 2 * head_size, bias=bias)
            self.q_dense = nn.Linear(2 * head_size, 2 * heads, bias=bias)
        else:
            self.dense = nn.Linear(hidden_size, heads * 2 * head_size, bias=bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(
                f"x must have shape (batch, length, {self.hidden_size}), got {tuple(x.shape)}"
            )
        batch, length, _ = x.shape
        d = self.head_size
        if self.efficient:
            h = self.p_dense(x)
            q, k = h[..., None, ::2], h[..., None, 1::2]
            bias = self.q_dense(h).transpose(1, 2) / 2  # (B, 2·heads, L)
            pair = (bias[:, 1::2], bias[:, ::2])  # odd: start (row), even: end (column)
            return global_pointer_scores(q, k, mask=mask, bias=pair, rope=self.rope, tril=self.tril)
        h = self.dense(x).view(batch, length, self.heads, 2 * d)
        return global_pointer_scores(
            h[..., :d], h[..., d:], mask=mask, rope=self.rope, tril=self.tril
        )

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, heads={self.heads}, head_size={self.head_size}, "
            f"rope={self.rope}, efficient={self.efficient}, tril={self.tril}"
        )


class MultilabelCategoricalCrossentropy(nn.Module):
    """``forward(y_pred, y_true, mask=None)``: see
    :func:`kexue.losses.multilabel_categorical_crossentropy`.

    Example:
        >>> import torch
        >>> from kexue.nn import MultilabelCategoricalCrossentropy
        >>> loss = MultilabelCategoricalCrossentropy()
        >>> y_pred, y_true = torch.tensor([[5.0, -5.0]]), torch.tensor([[1.0, 0.0]])
        >>> round(float(loss(y_pred, y_true)), 4)
        0.0134
    """

    def __init__(self, *, reduction: str = "mean", eps: float = EPS_DEFAULT) -> None:
        super().__init__()
        self.reduction, self.eps = reduction, eps

    def forward(self, y_pred: Tensor, y_true: Tensor, mask: Tensor | None = None) -> Tensor:
        return multilabel_categorical_crossentropy(
            y_true, y_pred, mask=mask, reduction=self.reduction, eps=self.eps
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, eps={self.eps}"


class SparseMultilabelCategoricalCrossentropy(nn.Module):
    """``forward(y_pred, y_true_indices)``: see
    :func:`kexue.losses.sparse_multilabel_categorical_crossentropy`.

    Example:
        >>> import torch
        >>> from kexue.nn import SparseMultilabelCategoricalCrossentropy
        >>> loss = SparseMultilabelCategoricalCrossentropy()
        >>> float(loss(torch.tensor([[5.0, -5.0]]), torch.tensor([[0]])))  # doctest: +ELLIPSIS
        0.0134...
    """

    def __init__(self, *, mask_zero: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        self.mask_zero, self.reduction = mask_zero, reduction

    def forward(self, y_pred: Tensor, y_true_indices: Tensor) -> Tensor:
        return sparse_multilabel_categorical_crossentropy(
            y_true_indices, y_pred, mask_zero=self.mask_zero, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"mask_zero={self.mask_zero}, reduction={self.reduction!r}"


class GlobalPointerKL(nn.Module):
    """``forward(s, t, mask=None)``: the R-Drop divergence
    :func:`kexue.losses.global_pointer_kl`.

    Example:
        >>> import torch
        >>> from kexue.nn import GlobalPointerKL
        >>> s = torch.zeros(2, 3, 4, 4)
        >>> float(GlobalPointerKL()(s, s))
        0.0
    """

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
        return global_pointer_kl(s, t, mask=mask, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class NxMCrossentropy(nn.Module):
    """``forward(y_pred, y_true)``: see :func:`kexue.losses.nxm_crossentropy`.

    Example:
        >>> import torch
        >>> from kexue.nn import NxMCrossentropy
        >>> y = torch.eye(3)[[0, 2]]
        >>> s = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
        >>> round(float(NxMCrossentropy()(s, y)), 4)
        0.072
    """

    def __init__(self, *, form: str = "analogy", reduction: str = "mean") -> None:
        super().__init__()
        self.form, self.reduction = form, reduction

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return nxm_crossentropy(y_true, y_pred, form=self.form, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"form={self.form!r}, reduction={self.reduction!r}"


__all__ = [
    "GlobalPointer",
    "GlobalPointerKL",
    "MultilabelCategoricalCrossentropy",
    "NxMCrossentropy",
    "SparseMultilabelCategoricalCrossentropy",
]
