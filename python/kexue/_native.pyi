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

LM_MAX_ORDER: int

class NgramCorpus:
    def __init__(self, skip_symbols: bool = False) -> None: ...
    def add_text(self, text: bytes, source: str, first_line: int) -> int: ...
    def add_sentences(self, sentences: list[str]) -> None: ...
    def __len__(self) -> int: ...
    def tokens(self) -> int: ...
    def build(
        self,
        order: int,
        backward: bool = False,
        min_count: int = 1,
        discount_fallback: bool = False,
    ) -> tuple[NgramModel, NgramModel | None]: ...

class NgramModel:
    @property
    def order(self) -> int: ...
    def __len__(self) -> int: ...
    def words(self) -> list[str]: ...
    def word_id(self, word: str) -> int | None: ...
    def counts(self) -> list[int]: ...
    def nbytes(self) -> int: ...
    def score_batch(
        self, sentences: list[str], bos: bool = True, eos: bool = True, f32_sum: bool = False
    ) -> npt.NDArray[np.float64]: ...
    def token_scores(
        self, sentence: str, bos: bool = True, eos: bool = True
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]: ...
    def next_scores(
        self, context: list[str], candidates: list[str] | None = None, bos: bool = True
    ) -> npt.NDArray[np.float64]: ...
    def save_arpa(self, path: str) -> None: ...

def lm_read_arpa(path: str) -> NgramModel: ...
def lm_save(path: str, forward: NgramModel, backward: NgramModel | None = None) -> None: ...
def lm_load(path: str) -> tuple[NgramModel, NgramModel | None]: ...
def lm_to_bytes(forward: NgramModel, backward: NgramModel | None = None) -> bytes: ...
def lm_from_bytes(data: bytes) -> tuple[NgramModel, NgramModel | None]: ...
def lm_from_counts(
    unigrams: list[tuple[str, int]], bigrams: list[tuple[str, str, int]], eos_count: int
) -> NgramModel: ...

# --- cgmh -------------------------------------------------------------------------------

class CgmhNgram:
    """A forward n-gram model (and backward twin), shared with the Rust loop."""

    def __init__(self, forward: NgramModel, backward: NgramModel | None = None) -> None: ...
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
