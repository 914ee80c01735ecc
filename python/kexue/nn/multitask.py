"""Multi-task loss-weighting modules: the stateful baselines of :mod:`kexue.multitask`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import multitask as mt
from .._dispatch import check_scalar


def _num_tasks(num_tasks: int) -> int:
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
    return num_tasks


class UncertaintyWeighting(nn.Module):
    """Uncertainty weighting (Kendall et al. 2018) with learnable ``s = log σ²``:
    ``Σ L_i / (2 e^{s_i}) + s_i / 2`` (:func:`kexue.multitask.uncertainty`). Put its
    parameters in the optimiser beside the model's.

    Example:
        >>> import torch
        >>> from kexue.nn import UncertaintyWeighting
        >>> uw = UncertaintyWeighting(2)
        >>> uw([torch.tensor(1.0), torch.tensor(2.0)]).shape
        torch.Size([])
    """

    def __init__(self, num_tasks: int, init: float = -0.5) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.full((_num_tasks(num_tasks),), float(init)))

    def forward(self, losses: Sequence[Tensor]) -> Tensor:
        return mt.uncertainty(list(losses), self.log_vars)


class DynamicWeightAverage(nn.Module):
    """DWA (Liu et al. 2019) with its loss history: call :meth:`end_epoch` with each epoch's
    mean task losses; the forward pass returns ``Σ sg(w_i) L_i`` with
    ``w = K softmax(r/T)``, ``r_i = L_i(t−1)/L_i(t−2)`` (:func:`kexue.multitask.dwa`).

    Example:
        >>> import torch
        >>> from kexue.nn import DynamicWeightAverage
        >>> dwa = DynamicWeightAverage(2)
        >>> dwa.end_epoch([1.0, 1.0]); dwa.end_epoch([1.0, 0.5])
        >>> float(dwa([torch.tensor(1.0), torch.tensor(1.0)]))
        2.0
    """

    def __init__(self, num_tasks: int, temperature: float = 2.0) -> None:
        super().__init__()
        self.num_tasks = _num_tasks(num_tasks)
        self.temperature = check_scalar(temperature, "temperature", low=0.0, low_open=True)
        self.history: list[list[float]] = []

    def end_epoch(self, mean_losses: Sequence[float]) -> None:
        values = [float(v.detach()) if isinstance(v, Tensor) else float(v) for v in mean_losses]
        if len(values) != self.num_tasks:
            raise ValueError(f"mean_losses must have {self.num_tasks} entries, got {len(values)}")
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"mean_losses must be finite and > 0, got {values}")
        self.history = [*self.history[-1:], values]

    def forward(self, losses: Sequence[Tensor]) -> Tensor:
        if len(losses) != self.num_tasks:
            raise ValueError(f"losses must have {self.num_tasks} entries, got {len(losses)}")
        return mt.dwa(list(losses), self.history, self.temperature)

    # The history is the module's state: it travels in ``state_dict`` (a checkpoint that
    # dropped it would give weights 1 for two epochs after resuming).
    def get_extra_state(self) -> dict[str, list[list[float]]]:
        return {"history": [list(h) for h in self.history]}

    def set_extra_state(self, state: dict[str, list[list[float]]]) -> None:
        history = state.get("history") if isinstance(state, dict) else None
        if not isinstance(history, list) or len(history) > 2:
            raise ValueError(f"state must hold 'history', a list of <= 2 epochs, got {state!r}")
        self.history = []
        for h in history:
            self.end_epoch(h)
