"""torch ``nn.Module`` front ends of kexue kernels (needs the ``torch`` extra)."""

from __future__ import annotations

from .activations import SquarePlus
from .losses import (
    GlobalPointer,
    GlobalPointerKL,
    MultilabelCategoricalCrossentropy,
    NxMCrossentropy,
    SparseMultilabelCategoricalCrossentropy,
)
from .vmf import VMFLatent

__all__ = [
    "GlobalPointer",
    "GlobalPointerKL",
    "MultilabelCategoricalCrossentropy",
    "NxMCrossentropy",
    "SparseMultilabelCategoricalCrossentropy",
    "SquarePlus",
    "VMFLatent",
]
from .multitask import DynamicWeightAverage, UncertaintyWeighting

__all__ = ["DynamicWeightAverage", "SquarePlus", "UncertaintyWeighting"]
from .attention import LinearAttention

__all__ = ["LinearAttention", "SquarePlus"]
