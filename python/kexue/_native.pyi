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

class CgmhNgram:
    """A forward n-gram model (and backward twin) from ``lm_to_bytes``, for the Rust loop."""

    def __init__(self, image: bytes) -> None: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def has_backward(self) -> bool: ...

def cgmh_run(
    lm: Any,
    inputs: list[list[int]],
    fixed: list[list[bool]],
    priors: list[list[Any]],
    n: int,
    steps: int,
    top_k: int,
    actions: tuple[float, float, float],
    min_len: int,
    max_len: int,
    gamma: float,
    anneal: tuple[float, float] | None,
    index: str,
    explore: float,
    seed: int,
    best: bool,
    trace: bool,
) -> list[dict[str, Any]]: ...

# --- attention --------------------------------------------------------------------------

# --- vmf --------------------------------------------------------------------------------

# --- multitask --------------------------------------------------------------------------
