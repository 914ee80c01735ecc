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
