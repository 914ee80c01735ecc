"""Activation modules."""

from __future__ import annotations

from torch import Tensor, nn

from .._dispatch import check_scalar
from ..activations import B_DEFAULT, squareplus


class SquarePlus(nn.Module):
    """``(x + sqrt(x² + b)) / 2`` elementwise; see :func:`kexue.activations.squareplus`.

    Example:
        >>> import torch
        >>> from kexue.nn import SquarePlus
        >>> SquarePlus(b=4.0)(torch.zeros(2))
        tensor([1., 1.])
    """

    def __init__(self, b: float = B_DEFAULT) -> None:
        super().__init__()
        self.b = check_scalar(b, "b", low=0.0)

    def forward(self, x: Tensor) -> Tensor:
        return squareplus(x, self.b)

    def extra_repr(self) -> str:
        return f"b={self.b}"
