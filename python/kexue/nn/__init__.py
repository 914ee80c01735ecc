"""torch ``nn.Module`` front ends of kexue kernels (needs the ``torch`` extra)."""

from __future__ import annotations

from .activations import SquarePlus
from .attention import LinearAttention
from .losses import (
    GlobalPointer,
    GlobalPointerKL,
    MultilabelCategoricalCrossentropy,
    NxMCrossentropy,
    SparseMultilabelCategoricalCrossentropy,
)
from .multitask import DynamicWeightAverage, UncertaintyWeighting
from .vmf import VMFLatent

__all__ = [
    "DynamicWeightAverage",
    "GlobalPointer",
    "GlobalPointerKL",
    "LinearAttention",
    "MultilabelCategoricalCrossentropy",
    "NxMCrossentropy",
    "SparseMultilabelCategoricalCrossentropy",
    "SquarePlus",
    "UncertaintyWeighting",
    "VMFLatent",
]
