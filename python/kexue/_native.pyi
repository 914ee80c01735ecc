# Type stubs of the Rust extension; the public, documented API is in the Python modules.
# CI checks them against the built module (`python -m mypy.stubtest kexue._native`): the
# names, parameters and defaults here are those of the bindings.
from typing import Any, TypedDict, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "ATTENTION_MAX_CHUNK",
    "AttentionDecoder",
    "CgmhNgram",
    "LM_MAX_ORDER",
    "MLCE_EPS_DEFAULT",
    "MULTITASK_MAX_TASKS",
    "NgramCorpus",
    "NgramModel",
    "SQUAREPLUS_B_DEFAULT",
    "SQUAREPLUS_B_SOFTPLUS_MINIMAX",
    "SQUAREPLUS_B_SOFTPLUS_UPPER",
    "__version__",
    "_panic_in_kernel",
    "attention_causal_backward",
    "attention_causal_forward",
    "attention_causal_mapped_forward",
    "attention_features_backward",
    "attention_features_forward",
    "attention_noncausal_backward",
    "attention_noncausal_forward",
    "attention_orthogonal_random",
    "cgmh_agreement",
    "cgmh_run",
    "get_num_threads",
    "gp_kl_backward",
    "gp_kl_forward",
    "gp_scores_backward",
    "gp_scores_forward",
    "lm_from_bytes",
    "lm_from_counts",
    "lm_load",
    "lm_read_arpa",
    "lm_save",
    "lm_to_bytes",
    "mlce_backward",
    "mlce_forward",
    "multitask_combine",
    "multitask_gradnorm_sum_weights",
    "multitask_gram",
    "multitask_mgda_weights",
    "multitask_pcgrad_orders",
    "multitask_pcgrad_weights",
    "multitask_primary_auxiliary_weights",
    "nxm_backward",
    "nxm_forward",
    "set_num_threads",
    "simd_road",
    "sparse_mlce_backward",
    "sparse_mlce_forward",
    "squareplus_backward",
    "squareplus_forward",
    "vmf_evaluate",
    "vmf_kappa_mle",
    "vmf_log_bessel_i",
    "vmf_sample",
    "vmf_sample_wood",
]
__version__: str

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def simd_road() -> str: ...
def _panic_in_kernel() -> None: ...  # raises RuntimeError: tests the panic boundary

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

_F = npt.NDArray[np.floating[Any]]
_U8 = npt.NDArray[np.uint8] | None

MLCE_EPS_DEFAULT: float

def mlce_forward(y_pred: _F, y_true: _F, mask: _U8, eps: float) -> tuple[_F, _F]: ...
def mlce_backward(
    y_pred: _F, y_true: _F, mask: _U8, eps: float, stats: _F, grad_loss: _F
) -> _F: ...
def sparse_mlce_forward(
    y_pred: _F, y_true: npt.NDArray[np.int64], mask_zero: bool
) -> tuple[_F, _F]: ...
def sparse_mlce_backward(
    y_pred: _F, y_true: npt.NDArray[np.int64], mask_zero: bool, stats: _F, grad_loss: _F
) -> _F: ...
def gp_scores_forward(
    q: _F, k: _F, row_bias: _F | None, col_bias: _F | None, mask: _U8, rope: bool, tril: bool
) -> _F: ...
def gp_scores_backward(
    q: _F,
    k: _F,
    row_bias: _F | None,
    col_bias: _F | None,
    mask: _U8,
    rope: bool,
    tril: bool,
    grad: _F,
) -> tuple[_F, _F, _F | None, _F | None]: ...
def gp_kl_forward(s: _F, t: _F, mask: _U8) -> _F: ...
def gp_kl_backward(s: _F, t: _F, mask: _U8, grad: _F) -> tuple[_F, _F]: ...
def nxm_forward(y_pred: _F, y_true: _F, form: str) -> tuple[_F, _F]: ...
def nxm_backward(y_pred: _F, y_true: _F, form: str, stats: _F, grad_loss: _F) -> _F: ...

# --- lm ---------------------------------------------------------------------------------

LM_MAX_ORDER: int

@final
class NgramCorpus:
    def __new__(cls, skip_symbols: bool = False) -> NgramCorpus: ...
    def add_text(self, text: bytes, source: str, first_line: int) -> int: ...
    def add_sentences(self, sentences: list[str]) -> None: ...
    def __len__(self) -> int: ...
    def tokens(self) -> int: ...
    def build(
        self,
        order: int,
        backward: bool = False,
        min_count: int | None = None,  # None: 1
        discount_fallback: bool = False,
    ) -> tuple[NgramModel, NgramModel | None]: ...

@final
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
def lm_load(path: str, mmap: bool = True) -> tuple[NgramModel, NgramModel | None]: ...
def lm_to_bytes(forward: NgramModel, backward: NgramModel | None = None) -> bytes: ...
def lm_from_bytes(data: bytes) -> tuple[NgramModel, NgramModel | None]: ...
def lm_from_counts(
    unigram_counts: list[tuple[str, int]],
    bigram_counts: list[tuple[str, str, int]],
    eos_count: int,
) -> NgramModel: ...

# --- cgmh -------------------------------------------------------------------------------

@final
class CgmhNgram:
    """A forward n-gram model (and backward twin), shared with the Rust loop."""

    def __new__(cls, forward: NgramModel, backward: NgramModel | None = None) -> CgmhNgram: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def has_backward(self) -> bool: ...
    def sample(self, count: int, seed: int, max_len: int) -> list[tuple[list[int], float]]: ...
    def backed_off(self, sentences: list[list[int]], order: int) -> list[int]: ...

class _CgmhSettings(TypedDict):
    chains: int
    steps: int
    top_k: int
    moves: dict[str, float]
    min_len: int
    max_len: int
    gamma: float
    length: tuple[int, float] | None
    backoff: tuple[int, float] | None  # (n-gram order, cost in nats): native n-gram LMs only
    anneal: tuple[float, float] | None
    index: str
    explore: float
    blocked: list[int]
    keep: int
    free_order: bool
    units: list[list[int]]  # per input: tokens of each keyword (empty: one each)
    seed: int
    best: bool
    trace: bool

def cgmh_run(
    lm: Any,
    inputs: list[list[int]],
    fixed: list[list[bool]],
    forms: list[list[list[int]]],
    priors: list[list[Any]],
    settings: _CgmhSettings,
) -> list[dict[str, Any]]: ...
def cgmh_agreement(pools: list[list[list[int]]]) -> list[list[float]]: ...

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
    row_max: bool = False,
) -> (
    npt.NDArray[np.floating[Any]] | tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.float64]]
): ...
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
    kmax: npt.NDArray[np.float64] | None = None,
    scale: npt.NDArray[np.float64] | None = None,
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]]]: ...
def attention_causal_mapped_forward(
    q: npt.NDArray[np.floating[Any]],
    k: npt.NDArray[np.floating[Any]],
    v: npt.NDArray[np.floating[Any]],
    feature_map: str,
    projection: npt.NDArray[np.floating[Any]] | None,
    key_offset: float | None,
    eps: float,
    method: str,
    chunk_size: int,
    state: npt.NDArray[np.float64] | None = None,
    scale: npt.NDArray[np.float64] | None = None,
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
    eps: float = 0.0,
    kmax: npt.NDArray[np.float64] | None = None,
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
    eps: float = 0.0,
) -> tuple[
    npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]]
]: ...

@final
class AttentionDecoder:
    def __new__(
        cls,
        feature_map: str,
        projection: npt.NDArray[np.float32] | None,
        key_offset: float | None,
        eps: float,
        d: int,
        state: npt.NDArray[np.float64],
        scale: npt.NDArray[np.float64] | None = None,
    ) -> AttentionDecoder: ...
    def step(
        self, q: npt.NDArray[np.float32], k: npt.NDArray[np.float32], v: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32] | None: ...
    def flush(self) -> None: ...

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

MULTITASK_MAX_TASKS: int
ATTENTION_MAX_CHUNK: int

def multitask_gram(j: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]: ...
def multitask_combine(
    j: npt.NDArray[np.floating[Any]], weights: list[float]
) -> npt.NDArray[np.floating[Any]]: ...
def multitask_mgda_weights(g: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
def multitask_primary_auxiliary_weights(
    g: npt.NDArray[np.float64], primary: list[int]
) -> npt.NDArray[np.float64]: ...
def multitask_gradnorm_sum_weights(g: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
def multitask_pcgrad_orders(k: int, seed: int) -> list[int]: ...
def multitask_pcgrad_weights(
    g: npt.NDArray[np.float64], orders: list[int]
) -> npt.NDArray[np.float64]: ...
