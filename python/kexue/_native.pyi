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

def attention_orthogonal_random(
    m: int, d: int, seed: int, scaling_name: str
) -> npt.NDArray[np.float64]: ...
def attention_features_forward(
    x: npt.NDArray[np.floating[Any]],
    feature_map: str,
    projection: npt.NDArray[np.floating[Any]] | None,
    is_query: bool,
    offset: float | None = None,
) -> npt.NDArray[np.floating[Any]]: ...
def attention_features_backward(
    x: npt.NDArray[np.floating[Any]],
    feature_map: str,
    projection: npt.NDArray[np.floating[Any]] | None,
    is_query: bool,
    phi: npt.NDArray[np.floating[Any]],
    grad: npt.NDArray[np.floating[Any]],
) -> npt.NDArray[np.floating[Any]]: ...
def attention_causal_forward(
    q: npt.NDArray[np.floating[Any]],
    k: npt.NDArray[np.floating[Any]],
    v: npt.NDArray[np.floating[Any]],
    eps: float,
    method: str,
    chunk_size: int,
    state: npt.NDArray[np.float64] | None = None,
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]]]: ...
def attention_causal_backward(
    q: npt.NDArray[np.floating[Any]],
    k: npt.NDArray[np.floating[Any]],
    v: npt.NDArray[np.floating[Any]],
    o: npt.NDArray[np.floating[Any]],
    den: npt.NDArray[np.floating[Any]],
    grad_o: npt.NDArray[np.floating[Any]],
    grad_den: npt.NDArray[np.floating[Any]],
    method: str,
    chunk_size: int,
) -> tuple[
    npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]]
]: ...
def attention_noncausal_forward(
    q: npt.NDArray[np.floating[Any]],
    k: npt.NDArray[np.floating[Any]],
    v: npt.NDArray[np.floating[Any]],
    eps: float,
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]]]: ...
def attention_noncausal_backward(
    q: npt.NDArray[np.floating[Any]],
    k: npt.NDArray[np.floating[Any]],
    v: npt.NDArray[np.floating[Any]],
    o: npt.NDArray[np.floating[Any]],
    den: npt.NDArray[np.floating[Any]],
    grad_o: npt.NDArray[np.floating[Any]],
    grad_den: npt.NDArray[np.floating[Any]],
) -> tuple[
    npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]]
]: ...

# --- vmf --------------------------------------------------------------------------------

# --- multitask --------------------------------------------------------------------------
