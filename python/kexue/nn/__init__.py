"""torch ``nn.Module`` front ends of kexue kernels (needs the ``torch`` extra)."""

from __future__ import annotations

from .activations import SquarePlus
from .multitask import DynamicWeightAverage, UncertaintyWeighting

__all__ = ["DynamicWeightAverage", "SquarePlus", "UncertaintyWeighting"]
