"""torch ``nn.Module`` front ends of kexue kernels (needs the ``torch`` extra)."""

from __future__ import annotations

from .activations import SquarePlus
from .attention import LinearAttention

__all__ = ["LinearAttention", "SquarePlus"]
