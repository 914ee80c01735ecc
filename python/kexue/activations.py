"""Activations: SquarePlus.

``squareplus(x, b) = (x + sqrt(x² + b)) / 2`` (Barron 2021; Su, kexue.fm/archives/8833), the
same definition and default ``b = 4`` as ``jax.nn.squareplus``, computed without the naive
form's underflow (0 at x = -1e4 in float32) and overflow (inf at |x| = 1e20).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _native
from ._dispatch import Kernel, check_float, check_scalar

__all__ = [
    "B_DEFAULT",
    "B_SOFTPLUS_MINIMAX",
    "B_SOFTPLUS_UPPER",
    "squareplus",
]

#: The default of ``jax.nn.squareplus``: its curvature at 0 matches softplus'.
B_DEFAULT: float = _native.SQUAREPLUS_B_DEFAULT
#: ``4·ln²2``: equal to softplus at 0, and the smallest ``b`` that keeps SquarePlus above
#: softplus everywhere (max |difference| 0.10387).
B_SOFTPLUS_UPPER: float = _native.SQUAREPLUS_B_SOFTPLUS_UPPER
#: The minimax fit to softplus, ``argmin_b max_x |squareplus - softplus|`` (max error 0.07593).
B_SOFTPLUS_MINIMAX: float = _native.SQUAREPLUS_B_SOFTPLUS_MINIMAX


def _torch_forward(x: Any, *, b: float) -> Any:
    import torch

    h = torch.hypot(x, x.new_tensor(b**0.5)) / 2 + x.abs() / 2
    return torch.where(x >= 0, h, (b / 4) / h)


def _torch_backward(inputs: tuple, outputs: tuple, grads: tuple, *, b: float) -> tuple:
    import torch

    (x,), (grad,) = inputs, grads
    r = torch.hypot(x, x.new_tensor(b**0.5))
    h = r / 2 + x.abs() / 2
    slope = torch.where(x >= 0, h / r, (b / 4) / r / h)  # r·h would overflow first
    slope = torch.where(r == 0, 0.5, slope)  # b = 0 at x = 0: the limit f'(0) = 1/2
    slope = torch.where(x == float("inf"), 1.0, slope)
    return (grad * slope,)


_squareplus = Kernel(
    lambda x, *, b: _native.squareplus_forward(x, b),
    lambda inputs, outputs, grads, *, b: (_native.squareplus_backward(inputs[0], grads[0], b),),
    torch_forward=_torch_forward,
    torch_backward=_torch_backward,
    torch_backward_twice=True,
)


def squareplus(x: Any, b: float = B_DEFAULT) -> Any:
    """SquarePlus, a smooth ReLU: ``(x + sqrt(x² + b)) / 2``, elementwise.

    Args:
        x: float32/float64 numpy array (or anything ``np.asarray`` takes; integers become
            float64), or a torch tensor on any device (differentiable).
        b: smoothing, finite and ``>= 0``; ``b = 0`` is ReLU. See :data:`B_DEFAULT`,
            :data:`B_SOFTPLUS_UPPER`, :data:`B_SOFTPLUS_MINIMAX`.

    Returns:
        An array or tensor of ``x``'s shape and dtype (a numpy scalar for 0-d input).

    Example:
        >>> import numpy as np
        >>> from kexue.activations import squareplus
        >>> squareplus(np.array([-1e4, 0.0, 3.0], dtype=np.float32))
        array([9.9999997e-05, 1.0000000e+00, 3.3027756e+00], dtype=float32)
    """
    b = check_scalar(b, "b", low=0.0)
    x = check_float(x, "x")
    limit = float(np.finfo(np.float32).max)
    if b > limit and str(x.dtype).endswith("float32"):  # numpy's and torch's float32
        raise ValueError(f"b must fit the input's dtype (at most {limit:e}), got {b:e}")
    return _squareplus(x, b=b)
