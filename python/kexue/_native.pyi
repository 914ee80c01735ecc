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

def vmf_evaluate(
    quantity: str, d: int, kappa: npt.NDArray[np.floating[Any]]
) -> npt.NDArray[np.floating[Any]]: ...
def vmf_log_bessel_i(
    nu: float, x: npt.NDArray[np.floating[Any]]
) -> npt.NDArray[np.floating[Any]]: ...
def vmf_kappa_mle(d: int, rbar: float) -> float: ...
def vmf_sample(
    mu: npt.NDArray[np.floating[Any]], kappa: npt.NDArray[np.float64], n: int, seed: int
) -> npt.NDArray[np.floating[Any]]: ...
def vmf_sample_wood(
    d: int, kappa: npt.NDArray[np.float64], n: int, seed: int, double: bool
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.floating[Any]]]: ...

# --- multitask --------------------------------------------------------------------------
