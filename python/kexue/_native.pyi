# Type stubs of the Rust extension; the public, documented API is in the Python modules.
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...

# --- losses / activations ---------------------------------------------------------------

SQUAREPLUS_B_DEFAULT: float
SQUAREPLUS_B_SOFTPLUS_UPPER: float
SQUAREPLUS_B_SOFTPLUS_MINIMAX: float

def squareplus_forward(
    x: npt.NDArray[np.floating[Any]], b: float
) -> npt.NDArray[np.floating[Any]]: ...
def squareplus_backward(
    x: npt.NDArray[np.floating[Any]], grad: npt.NDArray[np.floating[Any]], b: float
) -> npt.NDArray[np.floating[Any]]: ...

# --- lm ---------------------------------------------------------------------------------

# --- cgmh -------------------------------------------------------------------------------

# --- attention --------------------------------------------------------------------------

# --- vmf --------------------------------------------------------------------------------

# --- multitask --------------------------------------------------------------------------

MULTITASK_MAX_TASKS: int

def multitask_gram(J: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]: ...
def multitask_combine(
    J: npt.NDArray[np.floating[Any]], weights: list[float]
) -> npt.NDArray[np.floating[Any]]: ...
def multitask_mgda_weights(G: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
def multitask_primary_auxiliary_weights(
    G: npt.NDArray[np.float64], primary: list[int]
) -> npt.NDArray[np.float64]: ...
def multitask_gradnorm_sum_weights(G: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
def multitask_pcgrad_orders(k: int, seed: int) -> list[int]: ...
def multitask_pcgrad_weights(
    G: npt.NDArray[np.float64], orders: list[int]
) -> npt.NDArray[np.float64]: ...
