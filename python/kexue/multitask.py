"""Multi-task learning: scale-invariant loss weighting and gradient aggregation.

Su Jianlin, 多任务学习漫谈 I–III (kexue.fm/archives/8870, 8896, 8907), with the baselines of
LibMTL and the design of torchjd: every aggregator computes the Gram matrix ``G = J Jᵀ`` of
the per-task gradients ``J`` (K tasks × P shared parameters) in one pass, derives task
weights ``w`` from ``G`` alone, and returns ``u = wᵀ J``.

**Loss weighting** (part I): each rule takes a list of K task losses. Given torch tensors it
returns the scalar to backpropagate, with the stop-gradients where the post puts them; given
numbers (or a numpy array) it returns :class:`Weighted` ``(value, weights)`` where
``weights[i] = ∂value/∂L_i`` is the factor that task ``i``'s gradient receives.

**Aggregators** (parts II, III): :func:`gram`, :func:`mgda`, :func:`pcgrad`,
:func:`gradnorm_sum`, :func:`primary_auxiliary` take ``J`` as a ``(K, P)`` float32/float64
numpy array (read in place, never copied, when C-contiguous) or a torch tensor, and
:func:`backward` runs the whole step on a torch model. The weight rules alone, on ``G``, are
:func:`mgda_weights`, :func:`pcgrad_weights`, :func:`gradnorm_sum_weights`,
:func:`primary_auxiliary_weights`; :func:`combine` is ``wᵀ J``.

>>> import numpy as np
>>> from kexue import multitask as mt
>>> J = np.array([[1.0, 0.0], [-1.0, 1.0]], dtype=np.float32)
>>> w, u = mt.primary_auxiliary(J, primary=0)  # g0 conflicts with g1: project it off
>>> w, u
(array([1. , 0.5]), array([0.5, 0.5], dtype=float32))
>>> float(u @ J[1]) >= 0
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _native
from ._dispatch import _force_torch, check_finite, check_float, check_scalar, is_tensor

__all__ = [
    "METHODS",
    "GradNorm",
    "Weighted",
    "backward",
    "combine",
    "dwa",
    "equal",
    "generalized_mean",
    "gradnorm_loss",
    "gradnorm_normalised",
    "gradnorm_sum",
    "gradnorm_sum_weights",
    "gram",
    "initial_normalised",
    "log_sum",
    "mgda",
    "mgda_weights",
    "pcgrad",
    "pcgrad_order",
    "pcgrad_weights",
    "primary_auxiliary",
    "primary_auxiliary_weights",
    "prior_cross_entropy",
    "prior_mse",
    "prior_normalised",
    "realtime_normalised",
    "uncertainty",
]


# --- loss weighting (part I) --------------------------------------------------------------


class Weighted(NamedTuple):
    """A weighting rule evaluated on plain numbers: the loss value and ``∂value/∂L_i``.

    >>> from kexue.multitask import log_sum
    >>> value, weights = log_sum([2.0, 4.0])
    >>> round(value, 4), weights.tolist()
    (2.0794, [0.5, 0.25])
    """

    value: float
    weights: np.ndarray


def _losses(losses: Any) -> tuple[bool, Any]:
    """(is_torch, losses): a stacked 1-D tensor, or a float64 numpy vector."""
    if is_tensor(losses) or (
        isinstance(losses, (list, tuple)) and any(is_tensor(x) for x in losses)
    ):
        import torch

        if not is_tensor(losses):
            items = [torch.as_tensor(x) for x in losses]
            if any(x.numel() != 1 for x in items):
                raise ValueError("losses must be scalars (one element each)")
            losses = torch.stack([x.reshape(()) for x in items])
        t = losses
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"losses must be a non-empty list of scalars, got shape {t.shape}")
        return True, t
    values = check_float(losses, "losses", finite=True, ndim=1).astype(np.float64)
    if values.size == 0:
        raise ValueError("losses must hold at least one task loss")
    return False, values


def _positive(values: Any, name: str) -> None:
    """The normalising rules divide by (or take logs of) losses: they must be > 0."""
    bad = (values <= 0) | ~(values == values)
    if bool(bad.any()):
        raise ValueError(f"{name} must be > 0 for this rule, got {values.tolist()}")


def _vector(values: Any, k: int, name: str, like: Any = None) -> Any:
    if is_tensor(like):
        import torch

        v = torch.as_tensor(values, dtype=like.dtype, device=like.device)
        if v.shape != (k,):
            raise ValueError(f"{name} must have one entry per task ({k}), got shape {v.shape}")
        check_finite(v, name)
        return v
    if is_tensor(values):
        values = check_float(values, name).detach().cpu().double().numpy()
    v = check_float(values, name, finite=True, ndim=1).astype(np.float64)
    if v.shape != (k,):
        raise ValueError(f"{name} must have one entry per task ({k}), got shape {v.shape}")
    return v


def equal(losses: Any) -> Any:
    """Equal weights, ``(1/K) Σ L_i``. Not scale-invariant: the default with no prior.

    >>> equal([2.0, 4.0])
    Weighted(value=3.0, weights=array([0.5, 0.5]))
    """
    torch_, x = _losses(losses)
    if torch_:
        return x.mean()
    return Weighted(float(x.mean()), np.full(x.size, 1.0 / x.size))


def initial_normalised(losses: Any, initial: Any) -> Any:
    """``Σ L_i / L_i⁽⁰⁾`` with the initial losses (measured on a few batches, or ``log C``
    for C-class cross-entropy): invariant to rescaling any one loss.

    >>> initial_normalised([2.0, 4.0], initial=[1.0, 8.0]).weights
    array([1.   , 0.125])
    """
    torch_, x = _losses(losses)
    d = _vector(initial, len(x), "initial", x if torch_ else None)
    _positive(d, "initial")
    if torch_:
        return (x / d).sum()
    return Weighted(float((x / d).sum()), 1.0 / d)


def prior_normalised(losses: Any, prior: Any) -> Any:
    """``Σ L_i / L_i^prior`` with the loss of predicting the label prior
    (:func:`prior_cross_entropy`, :func:`prior_mse`), a better gauge of difficulty.

    >>> prior_normalised([1.0], prior=[2.0]).value
    0.5
    """
    torch_, x = _losses(losses)
    d = _vector(prior, len(x), "prior", x if torch_ else None)
    _positive(d, "prior")
    if torch_:
        return (x / d).sum()
    return Weighted(float((x / d).sum()), 1.0 / d)


def prior_cross_entropy(frequencies: Any) -> float:
    """Cross-entropy of predicting the class prior ``p``: the entropy ``−Σ p log p``.

    >>> round(prior_cross_entropy([1, 1, 1, 1]), 6) == round(math.log(4), 6)
    True
    """
    p = check_float(frequencies, "frequencies", finite=True, ndim=1).astype(np.float64)
    if p.size == 0 or (p < 0).any() or p.sum() <= 0:
        raise ValueError("frequencies must be non-negative counts or probabilities, not all 0")
    p = p / p.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def prior_mse(targets: Any) -> float:
    """Mean squared error of predicting the mean target: ``E‖y − E y‖²`` over the first axis.

    >>> prior_mse([[0.0, 1.0], [2.0, 1.0]])
    1.0
    """
    y = check_float(targets, "targets", finite=True, ndim=(1, 2)).astype(np.float64)
    if y.shape[0] == 0:
        raise ValueError("targets must hold at least one sample")
    y = y.reshape(y.shape[0], -1)
    return float(((y - y.mean(axis=0)) ** 2).sum(axis=1).mean())


def realtime_normalised(losses: Any) -> Any:
    """``Σ L_i / sg(L_i)``: every term has value 1, the gradient is ``Σ g_i / L_i``
    (Su's cheap scale-invariant baseline; same gradient as :func:`log_sum`).

    >>> realtime_normalised([2.0, 4.0])
    Weighted(value=2.0, weights=array([0.5 , 0.25]))
    """
    torch_, x = _losses(losses)
    _positive(x.detach() if torch_ else x, "losses")
    if torch_:
        return (x / x.detach()).sum()
    return Weighted(float(x.size), 1.0 / x)


def log_sum(losses: Any) -> Any:
    """``Σ log L_i``: the gradient ``Σ g_i / L_i`` of :func:`realtime_normalised`.

    >>> log_sum([1.0, 1.0]).value
    0.0
    """
    torch_, x = _losses(losses)
    _positive(x.detach() if torch_ else x, "losses")
    if torch_:
        return x.log().sum()
    return Weighted(float(np.log(x).sum()), 1.0 / x)


def generalized_mean(losses: Any, gamma: float = 0.0) -> Any:
    """``M_γ = ((1/K) Σ L_i^γ)^{1/γ}``; ``γ = 0`` is the geometric mean (the direction of
    :func:`realtime_normalised`), ``γ = 1`` the arithmetic mean; larger γ leans on the worst
    task. ``∂M/∂L_i = (1/K) (L_i/M)^{γ−1}``.

    >>> generalized_mean([1.0, 4.0], gamma=0.0).value
    2.0
    """
    gamma = check_scalar(gamma, "gamma")
    torch_, x = _losses(losses)
    _positive(x.detach() if torch_ else x, "losses")
    k = len(x)
    # log M = log(mean(e^{γ log L}))/γ: through expm1/log1p while |γ log L| <= 1 (no
    # cancellation as γ → 0), through logsumexp beyond (no overflow).
    if torch_:
        import torch

        z = gamma * x.log()
        # Below the dtype's epsilon γ·log L is the geometric mean to within rounding (log M
        # moves by γ/2·var(log L)); the formulas below would divide an underflowed z by γ.
        if float(z.detach().abs().max()) <= torch.finfo(x.dtype).eps:
            return x.log().mean().exp()
        if float(z.detach().abs().max()) <= 1.0:
            return (torch.log1p(torch.expm1(z).mean()) / gamma).exp()
        return ((torch.logsumexp(z, 0) - math.log(k)) / gamma).exp()
    z = gamma * np.log(x)
    if gamma == 0.0:
        m = math.exp(np.log(x).mean())
    elif np.abs(z).max() <= 1.0:
        m = math.exp(math.log1p(np.expm1(z).mean()) / gamma)
    else:
        top = z.max()
        m = math.exp((top + math.log(np.exp(z - top).sum()) - math.log(k)) / gamma)
    return Weighted(m, (x / m) ** (gamma - 1.0) / k)


def gradnorm_normalised(
    losses: Any, *, grad_norms: Any = None, shared_params: Iterable[Any] | None = None
) -> Any:
    """``Σ L_i / sg(‖g_i‖)``: the update ``Σ g_i/‖g_i‖``, invariant to scaling *and*
    shifting any loss (Su's "ideal"). Pass ``grad_norms``, or (torch) ``shared_params`` to
    compute them with one extra backward per task. A zero gradient gets weight 0.

    >>> gradnorm_normalised([3.0, 5.0], grad_norms=[2.0, 0.0]).weights
    array([0.5, 0. ])
    """
    torch_, x = _losses(losses)
    if (grad_norms is None) == (shared_params is None):
        raise ValueError("pass exactly one of grad_norms and shared_params")
    if shared_params is not None:
        if not torch_:
            raise TypeError("shared_params needs torch losses; pass grad_norms for numbers")
        import torch

        params = _params(shared_params)
        norms = []
        for loss in x:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            sq = sum(float((g.double() ** 2).sum()) for g in grads if g is not None)
            norms.append(math.sqrt(sq))
        grad_norms = norms
    n = _vector(grad_norms, len(x), "grad_norms", x if torch_ else None)
    if bool((n < 0).any()):
        raise ValueError("grad_norms must be >= 0")
    if torch_:
        import torch

        # the smallest normal of n's dtype: 1e-300 is 0 in float32, and 0/0 a NaN weight
        inv = (n.detach() > 0) / n.detach().clamp_min(torch.finfo(n.dtype).tiny)
        return (x * inv).sum()
    inv = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
    return Weighted(float((x * inv).sum()), inv)


def uncertainty(losses: Any, log_vars: Any) -> Any:
    """Uncertainty weighting (Kendall et al. 2018), LibMTL's form
    ``Σ L_i / (2 e^{s_i}) + s_i / 2`` with learnable ``s_i = log σ_i²`` (pass an
    ``nn.Parameter`` of K values, LibMTL starts at −0.5).

    >>> uncertainty([2.0], log_vars=[0.0])
    Weighted(value=1.0, weights=array([0.5]))
    """
    torch_, x = _losses(losses)
    if torch_:
        import torch

        s = (
            log_vars
            if is_tensor(log_vars)
            else torch.as_tensor(log_vars, dtype=x.dtype, device=x.device)
        )
        if s.shape != x.shape:
            raise ValueError(f"log_vars must have shape {tuple(x.shape)}, got {tuple(s.shape)}")
        check_finite(s.detach(), "log_vars")
        return (x / (2 * s.exp()) + s / 2).sum()
    s = _vector(log_vars, len(x), "log_vars")
    w = 0.5 * np.exp(-s)
    return Weighted(float((x * w + s / 2).sum()), w)


def dwa(losses: Any, history: Sequence[Any], temperature: float = 2.0) -> Any:
    """Dynamic Weight Average (Liu et al. 2019): ``w = K softmax(r / T)`` with
    ``r_i = L_i(t−1) / L_i(t−2)`` from the last two entries of ``history`` (per-task mean
    losses of past epochs); all weights 1 before two epochs exist. The weights are constants:
    ``Σ sg(w_i) L_i``.

    >>> dwa([1.0, 1.0], history=[[1.0, 1.0], [1.0, 0.5]]).weights.round(4)
    array([1.1244, 0.8756])
    """
    t = check_scalar(temperature, "temperature", low=0.0, low_open=True)
    torch_, x = _losses(losses)
    k = len(x)
    if len(history) >= 2:
        prev = _vector(np.asarray(_numbers(history[-1]), np.float64), k, "history[-1]")
        prev2 = _vector(np.asarray(_numbers(history[-2]), np.float64), k, "history[-2]")
        _positive(prev2, "history[-2]")
        z = prev / prev2 / t
        e = np.exp(z - z.max())
        w = k * e / e.sum()
    else:
        w = np.ones(k)
    if torch_:
        return (x * x.new_tensor(w)).sum()
    return Weighted(float((x * w).sum()), w)


def _numbers(x: Any) -> Any:
    if is_tensor(x):
        return x.detach().cpu().double().numpy()
    if isinstance(x, (list, tuple)):
        return [float(v.detach()) if is_tensor(v) else v for v in x]
    return x


def gradnorm_loss(
    weights: Any, grad_norms: Any, losses: Any, initial_losses: Any, alpha: float = 1.5
) -> Weighted:
    """GradNorm's auxiliary loss (Chen et al. 2018) on numbers:
    ``Σ |w_i n_i − sg(n̄ r_i^α)|`` with ``n_i = ‖∇_W L_i‖``, ``n̄ = mean(w n)``,
    ``r_i = (L_i/L_i⁽⁰⁾) / mean(L/L⁽⁰⁾)``. Returns the value and its gradient in ``w``
    (what :class:`GradNorm` feeds the optimiser).

    >>> gradnorm_loss([1.0, 1.0], [1.0, 3.0], [1.0, 1.0], [1.0, 1.0]).weights
    array([-1.,  3.])
    """
    alpha = check_scalar(alpha, "alpha")
    w = check_float(weights, "weights", finite=True, ndim=1).astype(np.float64)
    k = w.size
    n = _vector(grad_norms, k, "grad_norms")
    x = _vector(losses, k, "losses")
    x0 = _vector(initial_losses, k, "initial_losses")
    _positive(x0, "initial_losses")
    for values, name in ((w, "weights"), (n, "grad_norms"), (x, "losses")):
        if bool((values < 0).any()):
            raise ValueError(f"{name} must be >= 0, got {values.tolist()}")
    ratio = x / x0
    if not ratio.mean() > 0:
        raise ValueError(
            f"losses must not all be 0 (GradNorm's rates divide by their mean), got {x.tolist()}"
        )
    target = (w * n).mean() * (ratio / ratio.mean()) ** alpha
    diff = w * n - target
    return Weighted(float(np.abs(diff).sum()), np.sign(diff) * n)


class GradNorm:
    """GradNorm (Chen et al. 2018) for torch: learnable task weights ``w`` (sum K) balanced
    so that each ``w_i ‖∇_W L_i‖`` tracks the mean norm times the task's relative inverse
    training rate to the power ``alpha``.

    Calling it returns ``Σ sg(w_i) L_i + Σ |w_i sg(n_i) − sg(target_i)|``: the first term
    trains the model, the second only ``w`` (:func:`gradnorm_loss`). Give :attr:`weights` to
    the optimiser; they are renormalised to sum K at every call. ``shared_params`` is W, by
    convention the last shared layer.

    >>> import torch
    >>> lin = torch.nn.Linear(2, 1)
    >>> gn = GradNorm(2)
    >>> x = torch.ones(1, 2)
    >>> total = gn([lin(x).sum() ** 2, lin(x).sum().abs()], list(lin.parameters()))
    >>> total.backward()
    """

    def __init__(self, num_tasks: int, alpha: float = 1.5) -> None:
        import torch

        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
        self.alpha = check_scalar(alpha, "alpha")
        self.weights = torch.nn.Parameter(torch.ones(num_tasks))
        self.initial: Any = None

    def parameters(self) -> list[Any]:
        return [self.weights]

    def state_dict(self) -> dict[str, Any]:
        """The weights and the first call's losses ``L(0)`` (the training rates' reference:
        a checkpoint without them restarts the rates on resuming)."""
        initial = None if self.initial is None else self.initial.clone()
        return {"weights": self.weights.detach().clone(), "initial": initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        weights, initial = state["weights"], state["initial"]
        if not is_tensor(weights) or weights.shape != self.weights.shape:
            raise ValueError(
                f"state['weights'] must be a tensor of shape {tuple(self.weights.shape)}"
            )
        if initial is not None:
            if not is_tensor(initial) or initial.shape != self.weights.shape:
                raise ValueError(
                    "state['initial'] must be None or a tensor of shape "
                    f"{tuple(self.weights.shape)}"
                )
            _positive(initial, "state['initial']")
        with torch.no_grad():
            self.weights.copy_(weights)
        self.initial = None if initial is None else initial.clone()

    def __call__(self, losses: Sequence[Any], shared_params: Iterable[Any]) -> Any:
        import torch

        torch_, x = _losses(list(losses))
        if not torch_:
            raise TypeError("losses must be torch tensors: GradNorm differentiates them")
        k = self.weights.numel()
        if len(x) != k:
            raise ValueError(f"losses must have {k} entries, got {len(x)}")
        with torch.no_grad():
            self.weights.clamp_(min=1e-8)
            self.weights.mul_(k / self.weights.sum())
        if self.initial is None:
            _positive(x.detach(), "losses (the first call's, GradNorm's L(0))")
            self.initial = x.detach().clone()
        params = _params(shared_params)
        norms = []
        for loss in x:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            # the int 0 where no shared parameter reaches this loss: norm 0, as gradnorm_normalised
            sq = sum((g.detach() ** 2).sum() for g in grads if g is not None)
            norms.append(torch.sqrt(torch.as_tensor(sq)))
        n = torch.stack(norms).to(self.weights.dtype)
        w = self.weights.to(x.dtype)
        ratio = x.detach() / self.initial
        target = ((self.weights * n).mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        return (w.detach() * x).sum() + (self.weights * n - target).abs().sum()


# --- aggregation (parts II and III) -------------------------------------------------------

#: The rules :func:`backward` accepts by name.
METHODS = ("mean", "sum", "mgda", "pcgrad", "gradnorm_sum", "primary_auxiliary")


def _native_road(x: Any) -> bool:
    return not is_tensor(x) or (x.device.type == "cpu" and not _force_torch.get())


def _jacobian(J: Any) -> Any:
    J = check_float(J, "J", ndim=2)
    if J.shape[0] == 0:
        raise ValueError("J must have at least one task (row), got K = 0")
    if J.shape[0] > _native.MULTITASK_MAX_TASKS:
        raise ValueError(f"J must have at most {_native.MULTITASK_MAX_TASKS} tasks (rows)")
    if is_tensor(J):
        J = J.detach()
        if not J.is_contiguous():
            J = J.contiguous()
    return J


#: Columns per block on the torch road: f64 accumulation without an f64 copy of all of J.
_TORCH_BLOCK = 1 << 20


def _gram(J: Any) -> Any:
    """G of a validated J: numpy in, numpy out; tensor in, float64 tensor on J's device."""
    if not is_tensor(J):
        return _native.multitask_gram(J)
    if _native_road(J):
        import torch

        return torch.from_numpy(_native.multitask_gram(J.numpy()))
    import torch

    G = torch.zeros(J.shape[0], J.shape[0], dtype=torch.float64, device=J.device)
    for b in J.split(_TORCH_BLOCK, dim=1):
        G += b.double() @ b.double().T
    bad = ~G.diagonal().isfinite()
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"J must be finite, but row {row} holds NaN or inf")
    return G


def gram(J: Any) -> Any:
    """The Gram matrix ``J Jᵀ`` (K×K float64) of per-task gradients ``J`` (K, P).

    One pass over ``J`` (read in place), f64 accumulation in a fixed order: bit-identical
    for any thread count. NaN/inf in ``J`` raise ``ValueError``.

    >>> gram(np.array([[1.0, 2.0], [0.0, 1.0]], dtype=np.float32))
    array([[5., 2.],
           [2., 1.]])
    """
    return _gram(_jacobian(J))


def combine(J: Any, weights: Any) -> Any:
    """``u = weightsᵀ J``: a (P,) vector of ``J``'s dtype, each element summed in f64.
    Rows with weight 0 are not read.

    >>> combine(np.eye(2, dtype=np.float32), [2.0, 3.0])
    array([2., 3.], dtype=float32)
    """
    J = _jacobian(J)
    k = J.shape[0]
    if is_tensor(weights):
        weights = weights.detach().cpu().double().numpy()
    w = _vector(weights, k, "weights")
    if not is_tensor(J):
        return _native.multitask_combine(J, w.tolist())
    if _native_road(J):
        import torch

        return torch.from_numpy(_native.multitask_combine(J.numpy(), w.tolist()))
    import torch

    # Only the rows with weight != 0, as on the native road (0 · NaN would be NaN).
    rows = np.flatnonzero(w)
    read = torch.as_tensor(rows, device=J.device)
    w = torch.as_tensor(w[rows], device=J.device)
    u = J.new_empty(J.shape[1])
    for start in range(0, J.shape[1], _TORCH_BLOCK):
        block = J[read, start : start + _TORCH_BLOCK]
        u[start : start + block.shape[1]] = w @ block.double()
    return u


def _gram_matrix(G: Any) -> np.ndarray:
    """``G`` as a float64 array, checked to be a Gram matrix: square, symmetric, with
    ``G_ii >= 0`` and ``G_ij² <= G_ii G_jj`` (Cauchy–Schwarz), up to rounding. A matrix that
    is none of these has no gradients behind it, and the rules would return made-up weights."""
    if is_tensor(G):
        G = check_float(G, "G", ndim=2).detach().cpu().double().numpy()
    G = check_float(G, "G", finite=True, ndim=2).astype(np.float64)
    if G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise ValueError(f"G must be a square (K, K) matrix with K >= 1, got {G.shape}")
    scale = float(np.abs(G).max())
    diag = np.diag(G)
    if float(np.abs(G - G.T).max()) > 1e-10 * scale:
        raise ValueError("G must be symmetric (a Gram matrix J Jᵀ)")
    if bool((diag < 0).any()):
        raise ValueError(f"G's diagonal holds squared norms and must be >= 0, got {diag.tolist()}")
    # Relative slack for rounding: G from float32 gradients is exact only to ~1e-7.
    if bool((G**2 > np.outer(diag, diag) * (1 + 1e-6) + 1e-12 * scale**2).any()):
        raise ValueError("G must be a Gram matrix: |G_ij| <= sqrt(G_ii G_jj) fails")
    return np.ascontiguousarray(G)


def mgda_weights(G: Any) -> np.ndarray:
    """MGDA/min-norm weights on the simplex from the Gram matrix: ``argmin_w wᵀGw``.

    Exact: the closed form for K = 2 (γ = ½ for identical gradients), an active-set QP for
    K > 2. Non-unique minimisers (dependent gradients) give one of them.

    >>> mgda_weights(np.array([[1.0, 0.0], [0.0, 4.0]]))
    array([0.8, 0.2])
    """
    return _native.multitask_mgda_weights(_gram_matrix(G))


def _primaries(primary: Any, k: int) -> list[int]:
    try:
        items = [primary] if isinstance(primary, numbers.Integral) else list(primary)
    except TypeError:
        raise TypeError(
            f"primary must be a task index or a sequence of them, got {primary!r}"
        ) from None
    out = []
    for p in items:
        if isinstance(p, bool) or not isinstance(p, numbers.Integral) or not 0 <= int(p) < k:
            raise ValueError(f"primary must be task indices in [0, {k}), got {primary!r}")
        out.append(int(p))
    if not out:
        raise ValueError("primary must name at least one task")
    return out


def primary_auxiliary_weights(G: Any, primary: int | Sequence[int] = 0) -> np.ndarray:
    """Su's primary/auxiliary weights from the Gram matrix (see :func:`primary_auxiliary`).

    >>> primary_auxiliary_weights(np.array([[1.0, -1.0], [-1.0, 2.0]]))
    array([1. , 0.5])
    """
    G = _gram_matrix(G)
    return _native.multitask_primary_auxiliary_weights(G, _primaries(primary, G.shape[0]))


def gradnorm_sum_weights(G: Any) -> np.ndarray:
    """``w_i = 1/‖g_i‖`` (0 for a zero gradient) from the Gram matrix.

    >>> gradnorm_sum_weights(np.diag([4.0, 0.0]))
    array([0.5, 0. ])
    """
    return _native.multitask_gradnorm_sum_weights(_gram_matrix(G))


def _seed(seed: Any) -> int:
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= int(seed) < 2**64
    ):
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return int(seed)


def pcgrad_order(k: int, seed: int = 0) -> np.ndarray:
    """The (K, K) projection orders :func:`pcgrad` draws for ``seed``: row ``i`` is the
    order in which task ``i`` is projected off the others (a permutation of ``0..K``).

    >>> from kexue.multitask import pcgrad_order
    >>> o = pcgrad_order(3, seed=0)
    >>> o.shape, all(sorted(row) == [0, 1, 2] for row in o.tolist())
    ((3, 3), True)
    >>> bool((pcgrad_order(3, seed=0) == o).all())  # the same seed, the same orders
    True
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if k > _native.MULTITASK_MAX_TASKS:
        raise ValueError(f"k must be at most {_native.MULTITASK_MAX_TASKS}")
    flat = _native.multitask_pcgrad_orders(int(k), _seed(seed))
    return np.asarray(flat, dtype=np.int64).reshape(k, k)


def _orders(order: Any, k: int, seed: int) -> list[int]:
    if order is None:
        return pcgrad_order(k, seed).ravel().tolist()
    o = np.asarray(order)
    if o.dtype.kind not in "iu":
        raise TypeError(f"order must hold integers, got dtype {o.dtype}")
    if o.shape == (k,):
        o = np.tile(o, (k, 1))
    if o.shape != (k, k):
        raise ValueError(f"order must have shape ({k},) or ({k}, {k}), got {o.shape}")
    if (o < 0).any() or (o >= k).any():
        raise ValueError(f"order must be permutations of 0..{k}")
    return o.ravel().tolist()


def pcgrad_weights(G: Any, *, order: Any = None, seed: int = 0) -> np.ndarray:
    """PCGrad weights in Gram form (see :func:`pcgrad`).

    >>> pcgrad_weights(np.array([[1.0, -1.0], [-1.0, 2.0]]))
    array([2. , 1.5])
    """
    G = _gram_matrix(G)
    return _native.multitask_pcgrad_weights(G, _orders(order, G.shape[0], _seed(seed)))


def _aggregate(J: Any, rule: Callable[[np.ndarray], np.ndarray]) -> tuple[Any, Any]:
    J = _jacobian(J)
    G = _gram(J)
    w = rule(G.cpu().numpy() if is_tensor(G) else G)
    u = combine(J, w)
    if is_tensor(J):
        import torch

        return torch.from_numpy(w).to(J.device), u
    return w, u


def mgda(J: Any) -> tuple[Any, Any]:
    """MGDA (Sener & Koltun 2018; Su part II): the min-norm point of the convex hull of the
    task gradients. Returns ``(weights, direction)``: weights on the simplex, and
    ``u = Σ w_i g_i`` with ``⟨g_i, u⟩ ≥ ‖u‖²`` for every task; ``u = 0`` when the point is
    Pareto-stationary (e.g. a zero or two opposite gradients). Not scale-invariant.

    >>> w, u = mgda(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> w, u
    (array([0.5, 0.5]), array([0.5, 0.5]))
    """
    return _aggregate(J, mgda_weights)


def pcgrad(J: Any, *, order: Any = None, seed: int = 0) -> tuple[Any, Any]:
    """PCGrad (Yu et al. 2020) in Gram form: each ``g_i`` is projected off every ``g_j`` it
    conflicts with (``⟨g_i', g_j⟩ < 0``), in a per-task random order, and the projections are
    summed. ``order`` fixes the order: one permutation of ``0..K`` for every task, or a
    (K, K) array (row ``i`` for task ``i``); otherwise it is drawn from ``seed``
    (:func:`pcgrad_order`). A zero ``g_j`` is never projected on (no NaN).

    >>> pcgrad(np.array([[1.0, 0.0], [-1.0, 1.0]]))[1]
    array([0.5, 1.5])
    """
    s = _seed(seed)
    return _aggregate(J, lambda G: pcgrad_weights(G, order=order, seed=s))


def gradnorm_sum(J: Any) -> Any:
    """Su's gradient-norm rule ``Σ g_i / ‖g_i‖`` (zero gradients skipped): invariant to
    scaling and shifting each loss. Returns the direction only.

    >>> gradnorm_sum(np.array([[3.0, 0.0], [0.0, 0.5]]))
    array([1., 1.])
    """
    return _aggregate(J, gradnorm_sum_weights)[1]


def primary_auxiliary(J: Any, primary: int | Sequence[int] = 0) -> tuple[Any, Any]:
    """Su's primary/auxiliary rule (part III): the largest first-order progress on the
    primary task subject to no auxiliary task getting worse,
    ``u = g_p + Σ λ_i g_i`` with ``λ = argmin_{λ≥0} ‖g_p + Σ λ_i g_i‖²`` (a K×K NNLS in Gram
    form; for one auxiliary ``λ = relu(−⟨g_p, g_1⟩)/‖g_1‖²``). Then ``⟨u, g_i⟩ ≥ 0`` for each
    auxiliary and ``⟨u, g_p⟩ = ‖u‖²``; ``u = g_p`` when nothing conflicts;
    ``weights[primary] == 1``.

    Several primaries (``primary`` a list; the post leaves this case to the reader): the
    primaries are combined as MGDA combines tasks — weights on the simplex, so
    ``⟨u, g_p⟩ ≥ ‖u‖²`` for every primary — with the auxiliaries still constraints
    ``⟨u, g_i⟩ ≥ 0``. With every task primary this is :func:`mgda`.

    >>> primary_auxiliary(np.array([[1.0, 0.0], [0.0, 1.0]]))[0]
    array([1., 0.])
    """
    J = _jacobian(J)
    prim = _primaries(primary, J.shape[0])
    return _aggregate(J, lambda G: primary_auxiliary_weights(G, prim))


def _rule(method: Any, k: int, **options: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """G → weights for ``method``; ``None`` for the rules that need no Gram matrix."""
    if callable(method):
        return lambda G: np.asarray(method(G), dtype=np.float64)
    if method == "mgda":
        return mgda_weights
    if method == "pcgrad":
        s = _seed(options.get("seed", 0))
        return lambda G: pcgrad_weights(G, order=options.get("order"), seed=s)
    if method == "gradnorm_sum":
        return gradnorm_sum_weights
    if method == "primary_auxiliary":
        prim = _primaries(options.get("primary", 0), k)
        return lambda G: primary_auxiliary_weights(G, prim)
    if method in ("mean", "sum"):
        return None
    raise ValueError(f"method must be one of {METHODS} or a callable G -> weights, got {method!r}")


def _params(params: Iterable[Any]) -> list[Any]:
    import torch

    if is_tensor(params):
        params = [params]
    out = list(params)
    if not out or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in out):
        raise ValueError("shared_params must be a non-empty list of tensors requiring grad")
    return out


def backward(
    losses: Sequence[Any],
    shared_params: Iterable[Any],
    method: str | Callable[[np.ndarray], Any] = "mgda",
    *,
    task_params: Iterable[Any] | None = None,
    primary: int | Sequence[int] = 0,
    order: Any = None,
    seed: int = 0,
    retain_graph: bool = False,
) -> np.ndarray:
    """Replaces ``sum(losses).backward()`` for multi-task training (torchjd's
    ``mtl_backward`` style): computes each task's gradient of ``shared_params`` into a
    (K, P) matrix ``J``, aggregates it with ``method`` and *adds* the result to each
    parameter's ``.grad``. On the CPU the Gram matrix and the combination run in Rust on a
    zero-copy view of ``J``; on other devices in torch (only the K×K solve goes to the CPU).

    Args:
        losses: K scalar tensors.
        shared_params: parameters every task depends on (all of one dtype and device).
        method: one of :data:`METHODS`, or a callable mapping the (K, K) float64 Gram matrix
            to K weights (a torchjd-style weighting).
        task_params: task-specific parameters (heads); they receive ``∇ Σ_i L_i``.
        primary, order, seed: options of ``primary_auxiliary`` and ``pcgrad``. PCGrad
            draws new orders at every step: pass a seed that changes with the step (e.g.
            ``seed=step``); a fixed seed repeats the same orders.
        retain_graph: keep the graph after the last task's backward.

    NaN/inf gradients raise ``ValueError`` for the Gram-based methods; ``"mean"`` and
    ``"sum"`` need no Gram matrix and pass them on, as ``loss.backward()`` would.

    Returns:
        The K task weights (float64 numpy), for logging.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
        >>> losses = [(w[0] - 2) ** 2, (w[1] - 3) ** 2]  # gradients (-2, 0) and (0, -4)
        >>> backward(losses, [w], method="mgda").round(3)
        array([0.8, 0.2])
        >>> w.grad
        tensor([-1.6000, -0.8000])
    """
    import torch

    losses = list(losses)
    if not losses or not all(is_tensor(x) and x.numel() == 1 for x in losses):
        raise ValueError("losses must be a non-empty list of scalar tensors")
    params = _params(shared_params)
    heads = [] if task_params is None else _params(task_params)
    dtype, device = params[0].dtype, params[0].device
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"shared_params must be float32 or float64, got {dtype}")
    if any(p.dtype != dtype or p.device != device for p in params):
        raise ValueError("shared_params must share one dtype and device")
    k, sizes = len(losses), [p.numel() for p in params]
    rule = _rule(method, k, primary=primary, order=order, seed=seed)
    J = torch.zeros(k, sum(sizes), dtype=dtype, device=device)
    head_grads: list[Any] = [None] * len(heads)
    for i, loss in enumerate(losses):
        keep = retain_graph or i < k - 1
        grads = torch.autograd.grad(
            loss.reshape(()), params + heads, retain_graph=keep, allow_unused=True
        )
        offset = 0
        for g, n in zip(grads[: len(params)], sizes):
            if g is not None:
                J[i, offset : offset + n] = g.reshape(-1)
            offset += n
        for h, g in enumerate(grads[len(params) :]):
            if g is not None:
                head_grads[h] = g if head_grads[h] is None else head_grads[h] + g
    if rule is None:
        w = np.full(k, 1.0 / k if method == "mean" else 1.0)
        u = combine(J, w)
    else:
        w, u = _aggregate(J, rule)
        w = w.cpu().numpy()
    u = u.to(device)
    offset = 0
    for p, n in zip(params, sizes):
        piece = u[offset : offset + n].view_as(p)
        p.grad = piece.clone() if p.grad is None else p.grad + piece
        offset += n
    for p, g in zip(heads, head_grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    return w
