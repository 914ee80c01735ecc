"""The von Mises–Fisher distribution on the sphere ``S^{d-1} ⊂ R^d``: exact sampling, stable
densities, fitting, and a reparameterised torch road (Su, kexue.fm/archives/8404).

``p(x) = C_d(κ) exp(κ μᵀx)`` with respect to surface measure, ``‖μ‖ = 1``, ``κ ≥ 0``.
Everything is computed in log space in float64 (Debye / series / Hankel expansions of
``log I_ν``, Gauss' continued fraction for ``A_d = I_{d/2}/I_{d/2-1}``), so large ``d`` with
small ``κ`` — where ``scipy.stats.vonmises_fisher`` returns inf/NaN — is fine, for every
``d ≥ 2`` and ``0 ≤ κ ≤ 1e7`` (to ~1e-12 relative).

``mu`` arguments that are not unit vectors are normalised (a zero ``mu`` is an error).
``kappa`` must be finite and ``>= 0``; ``κ = 0`` is the uniform distribution.

>>> import numpy as np
>>> from kexue.vmf import sample_vmf, mean_resultant_length
>>> x = sample_vmf(np.eye(3)[0], 50.0, 100_000, seed=0)
>>> x.shape
(100000, 3)
>>> bool(abs(x[:, 0].mean() - mean_resultant_length(3, 50.0)) < 1e-3)
True
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _native
from ._dispatch import Kernel, _force_torch, check_float, check_int, check_request, is_tensor

__all__ = [
    "VonMisesFisher",
    "entropy",
    "fit",
    "kl_to_uniform",
    "log_bessel_i",
    "log_normalizer",
    "log_prob",
    "mean_resultant_length",
    "sample_vmf",
]


def _check_d(d: Any) -> int:
    return check_int(d, "d", low=2)


def _check_seed(seed: Any) -> int:
    return check_int(seed, "seed", low=0, high=2**64 - 1)


def _check_n(n: Any) -> int:
    return check_int(n, "n", low=1)


def _check_kappa(kappa: Any) -> Any:
    """kappa as a float array/tensor, all finite and >= 0."""
    kappa = check_float(kappa, "kappa", finite=True)
    if bool((kappa < 0).any()):
        raise ValueError("kappa must be >= 0")
    return kappa


# --- functions of (d, κ) ----------------------------------------------------------------


def _rust(name: str) -> Any:
    """``name(d, κ)`` of a numpy array, in Rust."""
    return lambda kappa, *, d: _native.vmf_evaluate(name, d, kappa)


def _cpu_roundtrip(name: str) -> Any:
    """``name(d, κ)`` of a tensor on any device, in Rust on the CPU (κ arrays are small)."""

    def run(kappa: Any, *, d: int) -> Any:
        import torch

        k = kappa.detach().cpu().contiguous().numpy()
        return torch.from_numpy(np.asarray(_native.vmf_evaluate(name, d, k))).to(kappa.device)

    return run


def _quantity(name: str, slope: str, sign: float, times_kappa: bool) -> Kernel:
    """Kernel of ``name(d, κ)`` whose derivative is ``sign · [κ ·] slope(d, κ)``."""

    def vjp(evaluate: Any) -> Any:
        def backward(inputs: tuple, outputs: tuple, grads: tuple, *, d: int) -> tuple:
            kappa = inputs[0]
            s = evaluate(kappa, d=d) * sign
            return (grads[0] * (s * kappa if times_kappa else s),)

        return backward

    return Kernel(
        _rust(name),
        vjp(_rust(slope)),
        torch_forward=_cpu_roundtrip(name),
        torch_backward=vjp(_cpu_roundtrip(slope)),
    )


_LOG_NORMALIZER = _quantity("log_normalizer", "mean_resultant_length", -1.0, False)
_MRL = _quantity("mean_resultant_length", "mean_resultant_length_derivative", 1.0, False)
_KL = _quantity("kl_to_uniform", "mean_resultant_length_derivative", 1.0, True)
_ENTROPY = _quantity("entropy", "mean_resultant_length_derivative", -1.0, True)


def log_normalizer(d: int, kappa: Any) -> Any:
    """``log C_d(κ) = ν log κ − (d/2) log 2π − log I_ν(κ)``, ``ν = d/2 − 1``: the log of the
    density's normaliser with respect to surface measure. Differentiable in κ
    (``d/dκ = −A_d(κ)``) for torch tensors.

    Args:
        d: ambient dimension, an int ``>= 2``.
        kappa: concentration(s), a float, array or tensor of any shape, finite and ``>= 0``.

    Returns:
        An array or tensor shaped and typed like ``kappa`` (a numpy scalar for a scalar).

    Example:
        >>> from kexue.vmf import log_normalizer
        >>> float(log_normalizer(1000, 1.0))  # scipy's vonmises_fisher gives inf here
        2032.05...
    """
    return _LOG_NORMALIZER(_check_kappa(kappa), d=_check_d(d))


def mean_resultant_length(d: int, kappa: Any) -> Any:
    """``A_d(κ) = I_{d/2}(κ)/I_{d/2−1}(κ) = E[μᵀx]``, so ``E[x] = A_d(κ) μ``.
    Differentiable in κ (``A' = 1 − A² − (d−1)A/κ``).

    Example:
        >>> from kexue.vmf import mean_resultant_length
        >>> float(mean_resultant_length(3, 1e7))  # 1 − 1/κ
        0.9999999
    """
    return _MRL(_check_kappa(kappa), d=_check_d(d))


def kl_to_uniform(d: int, kappa: Any) -> Any:
    """``KL(vMF(μ, κ) ‖ Uniform(S^{d−1})) = log C_d(κ) + κ A_d(κ) + log |S^{d−1}|``: the
    constant KL term of a vMF-VAE with a uniform prior. Depends on (d, κ) only;
    differentiable in κ.

    Example:
        >>> from kexue.vmf import kl_to_uniform
        >>> round(float(kl_to_uniform(64, 1e-3)) * 2 * 64 / 1e-3**2, 6)  # ≈ κ²/(2d)
        1.0
    """
    return _KL(_check_kappa(kappa), d=_check_d(d))


def entropy(d: int, kappa: Any) -> Any:
    """Differential entropy ``−log C_d(κ) − κ A_d(κ)`` (surface measure); differentiable in κ.

    Example:
        >>> import math
        >>> from kexue.vmf import entropy
        >>> math.isclose(entropy(3, 0.0), math.log(4 * math.pi))  # uniform on S²
        True
    """
    return _ENTROPY(_check_kappa(kappa), d=_check_d(d))


def log_bessel_i(nu: float, x: Any) -> Any:
    """``log I_ν(x)``, the log of the modified Bessel function of the first kind, for
    ``ν >= 0`` and ``x >= 0``, without overflow or underflow (``scipy.special.ive`` is 0 for
    ``ν ≫ x``). numpy only.

    Example:
        >>> from kexue.vmf import log_bessel_i
        >>> float(log_bessel_i(499.0, 1.0))
        -2950.99...
    """
    if isinstance(nu, bool) or not isinstance(nu, numbers.Real):
        raise TypeError(f"nu must be a real number, got {type(nu).__name__}")
    x = check_float(x, "x")
    if is_tensor(x):
        raise TypeError("log_bessel_i takes numpy arrays")
    out = _native.vmf_log_bessel_i(float(nu), x)
    return out[()] if out.ndim == 0 else out


# --- densities --------------------------------------------------------------------------


def _normalise(mu: Any, name: str = "mu") -> Any:
    """``mu / ‖mu‖`` along the last axis; a zero row is an error. Rows are first divided by
    their largest |entry| (a constant for autograd: the result does not depend on it), so
    the norm neither overflows (‖(1e200, 0)‖) nor underflows (‖(1e-200, 0)‖)."""
    if is_tensor(mu):
        scale = mu.detach().abs().amax(dim=-1, keepdim=True)
        if bool((scale == 0).any()):
            raise ValueError(f"{name} must not have rows of zero norm")
        scaled = mu / scale
        return scaled / scaled.norm(dim=-1, keepdim=True)
    scale = np.abs(mu).max(axis=-1, keepdims=True)
    if (scale == 0).any():
        raise ValueError(f"{name} must not have rows of zero norm")
    scaled = mu / scale
    return scaled / np.linalg.norm(scaled, axis=-1, keepdims=True)


def log_prob(x: Any, mu: Any, kappa: Any) -> Any:
    """``log C_d(κ) + κ μᵀx``: the log density of points ``x`` on the sphere.

    Args:
        x: points, shape ``(..., d)`` (assumed unit norm; not renormalised).
        mu: mean direction(s), broadcastable to ``x``; normalised here.
        kappa: concentration(s), broadcastable to ``x.shape[:-1]``.

    Returns:
        Shape ``broadcast(x, mu).shape[:-1]``. Differentiable in all three for tensors
        (``torch.autograd.gradcheck``-tested).

    Example:
        >>> import numpy as np
        >>> from kexue.vmf import log_prob, log_normalizer
        >>> mu = np.array([0.0, 0.0, 2.0])
        >>> bool(np.isclose(log_prob(np.array([0, 0, 1.0]), mu, 3.0), log_normalizer(3, 3.0) + 3))
        True
    """
    x = check_float(x, "x", finite=True)
    mu = _normalise(check_float(mu, "mu", finite=True))
    kappa = _check_kappa(kappa)
    if x.ndim == 0 or mu.ndim == 0 or x.shape[-1] != mu.shape[-1]:
        raise ValueError(
            f"x and mu must end in the same dimension d, got {tuple(x.shape)}, {tuple(mu.shape)}"
        )
    d = _check_d(x.shape[-1])
    if is_tensor(x) or is_tensor(mu) or is_tensor(kappa):
        import torch

        ref = next(t for t in (x, mu, kappa) if is_tensor(t))
        x, mu, kappa = (
            torch.as_tensor(t, dtype=ref.dtype, device=ref.device) for t in (x, mu, kappa)
        )
        return log_normalizer(d, kappa) + kappa * (x * mu).sum(-1)
    return log_normalizer(d, kappa) + kappa * np.einsum("...i,...i->...", x, mu)


# --- sampling ---------------------------------------------------------------------------


def _rows(mu: Any, kappa: Any, n: Any) -> tuple[int | None, int | None]:
    """Number of rows implied by mu (d,)/(N, d), kappa ()/(N,) and n; None when single."""
    if mu.ndim not in (1, 2):
        raise ValueError(f"mu must have shape (d,) or (N, d), got {tuple(mu.shape)}")
    if kappa.ndim not in (0, 1):
        raise ValueError(f"kappa must be a scalar or have shape (N,), got {tuple(kappa.shape)}")
    sizes = {int(mu.shape[0])} if mu.ndim == 2 else set()
    sizes |= {int(kappa.shape[0])} if kappa.ndim == 1 else set()
    if len(sizes) > 1:
        raise ValueError(
            f"mu and kappa must have the same number of rows, got {tuple(mu.shape)} and "
            f"{tuple(kappa.shape)}"
        )
    rows = sizes.pop() if sizes else None
    if n is not None:
        n = _check_n(n)
        if rows is not None and n != rows:
            raise ValueError(f"n must be None or {rows} (the rows of mu/kappa), got {n}")
    return rows, n


def sample_vmf(mu: Any, kappa: Any, n: int | None = None, *, seed: int) -> Any:
    """Exact samples of vMF(μ, κ), one per row, with a different μ and κ on every row if
    wanted (Wood's sampler; closed form at d = 3; a Gamma envelope when κ ≫ d²; the tangent
    direction by projecting a Gaussian orthogonal to μ, O(d)). Rows run in parallel, row
    ``i`` drawing from its own stream: the same seed gives the same samples on any number of
    threads.

    Args:
        mu: ``(d,)`` or ``(N, d)`` float32/float64 (normalised here; zero rows are an error).
        kappa: a scalar or ``(N,)``, finite and ``>= 0``.
        n: number of samples when mu and kappa are single (``(n, d)`` is returned); with
            per-row parameters it must be None or N. None with single parameters returns
            one sample of shape ``(d,)``.
        seed: an int in ``[0, 2**64)``.

    Returns:
        numpy array of mu's dtype; for torch tensors a differentiable tensor (see
        :meth:`TorchVonMisesFisher.rsample`): CPU tensors sample in Rust, other devices (or
        inside :func:`kexue.torch_fallback`) with a pure-torch Wood sampler.

    Example:
        >>> import numpy as np
        >>> from kexue.vmf import sample_vmf
        >>> mu = np.random.default_rng(0).standard_normal((4, 64))
        >>> sample_vmf(mu, np.array([1.0, 10.0, 100.0, 1e4]), seed=1).shape
        (4, 64)
    """
    seed = _check_seed(seed)
    if is_tensor(mu) or is_tensor(kappa):
        return _rsample_torch(mu, kappa, n, seed, corrected=False)
    mu = check_float(mu, "mu", finite=True)
    kappa = np.asarray(_check_kappa(kappa), dtype=np.float64)
    rows, n = _rows(mu, kappa, n)
    d = _check_d(mu.shape[-1])
    count = rows if rows is not None else (n if n is not None else 1)
    if count == 0:
        return np.empty((0, d), mu.dtype)
    out = _native.vmf_sample(
        mu.reshape(-1, d), np.ascontiguousarray(kappa.reshape(-1)), count, seed
    )
    return out if rows is not None or n is not None else out[0]


def _torch_wood(d: int, kappa: Any, n: int, seed: int, dtype: Any, device: Any) -> tuple:
    """``(w, eps, g)`` like ``_native.vmf_sample_wood``, in torch on ``device`` (seeded
    through a forked torch generator)."""
    import torch

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        k = kappa.to(device=device, dtype=torch.float64).expand(n).contiguous()
        m = float(d - 1)
        b = m / (2 * k + torch.sqrt(4 * k * k + m * m))
        offset = k * 2 * b / (1 + b) + m * (torch.log1p(b) - math.log(2))
        eps = torch.empty(n, dtype=torch.float64, device=device)
        w = torch.empty_like(eps)
        todo = torch.arange(n, device=device)
        gamma = torch.distributions.Gamma(
            torch.tensor(m / 2, dtype=torch.float64, device=device), 1.0
        )
        while todo.numel():
            x, y = gamma.sample((2, todo.numel()))
            bt, kt = b[todo], k[todo]
            total, den = x + y, y + bt * x
            omw = 2 * bt * x / den
            u = torch.rand(todo.numel(), dtype=torch.float64, device=device)
            ok = offset[todo] - kt * omw - m * torch.log(den / total) >= torch.log(u)
            eps[todo[ok]] = (x / total)[ok]
            w[todo[ok]] = torch.where(omw < 1, 1 - omw, 2 * y / den - 1)[ok]
            todo = todo[~ok]
        g = torch.randn(n, d, dtype=dtype, device=device)
    return w, eps, g


def _as_tensors(mu: Any, kappa: Any) -> tuple:
    """mu and kappa as checked float tensors of one dtype and device (the tensor's)."""
    import torch

    for value, name in ((mu, "mu"), (kappa, "kappa")):
        if is_tensor(value):
            check_float(value, name)
    ref = mu if is_tensor(mu) else kappa
    mu = torch.as_tensor(mu, dtype=ref.dtype, device=ref.device)
    kappa = torch.as_tensor(kappa, dtype=ref.dtype, device=ref.device)
    check_float(mu, "mu", finite=True)
    _check_kappa(kappa)
    return mu, kappa


def _rsample_torch(mu: Any, kappa: Any, n: Any, seed: int, corrected: bool) -> Any:
    """The differentiable road: ``x(μ, κ)`` from Wood's accepted ``ε`` and a Gaussian."""
    import torch

    mu, kappa = _as_tensors(mu, kappa)
    rows, n = _rows(mu, kappa, n)
    d, dtype = _check_d(mu.shape[-1]), mu.dtype
    count = rows if rows is not None else (n if n is not None else 1)
    # The samples and the few (count, d) intermediates of the reparameterisation below.
    check_request(6 * count * d * mu.element_size(), "n")
    k_rows = kappa.reshape(-1).detach().to(torch.float64)
    if mu.device.type == "cpu" and not _force_torch.get():
        k_np = k_rows.contiguous().numpy()
        w, eps, g = (
            torch.from_numpy(a)
            for a in _native.vmf_sample_wood(d, k_np, count, seed, dtype == torch.float64)
        )
    else:
        w, eps, g = _torch_wood(d, k_rows, count, seed, dtype, mu.device)
    mu_hat = _normalise(mu).reshape(-1, d).expand(count, d)
    # w(ε, κ) = 1 − 2bε/den, den = 1 − (1−b)ε: its value is the sampler's, its κ-gradient
    # the pathwise one; the Naesseth et al. (2017) score term is the weight below.
    k = kappa.reshape(-1).to(torch.float64).expand(count)
    m = float(d - 1)
    b = m / (2 * k + torch.sqrt(4 * k * k + m * m))
    den = 1 - (1 - b) * eps
    omw, opw = 2 * b * eps / den, 2 * (1 - eps) / den
    w_kappa = w + ((1 - omw) - (1 - omw).detach())
    v = g - (g * mu_hat).sum(-1, keepdim=True) * mu_hat
    # Projected twice, as the Rust road does: where g lies close to μ, one float32 pass
    # leaves a part along μ (samples off the sphere by 2e-2 at d = 2).
    v = v - (v * mu_hat).sum(-1, keepdim=True) * mu_hat
    v = v / v.norm(dim=-1, keepdim=True)
    x = w_kappa.to(dtype)[:, None] * mu_hat + torch.sqrt(omw * opw).to(dtype)[:, None] * v
    if rows is None and n is None:
        x = x[0]
    if not corrected:
        return x
    score = (
        log_normalizer(d, k)
        + k * w_kappa
        + 0.5 * (d - 3) * torch.log(omw * opw)
        + torch.log(2 * b)
        - 2 * torch.log(den)
    )
    weight = torch.exp(score - score.detach()).to(dtype)
    return x, (weight if rows is not None or n is not None else weight[0])


# --- fitting ----------------------------------------------------------------------------


def fit(x: Any, weights: Any = None) -> tuple[Any, float]:
    """Maximum-likelihood ``(μ, κ)`` of points on the sphere.

    ``μ̂ = Σwᵢxᵢ/‖Σwᵢxᵢ‖`` and κ̂ solves ``A_d(κ) = ‖Σwᵢxᵢ‖/Σwᵢ`` (Banerjee et al.'s start,
    then safeguarded Newton steps, to ~1e-15 relative), for every ``d`` — scipy's fit
    silently returns ``κ = 1e-8`` for ``d >= 65``. Rows are normalised first. With few
    points in high dimension the MLE of κ is biased upward (``r̄ ≳ sqrt(d/n)`` even for
    uniform data). All points equal gives ``κ = inf``.

    Args:
        x: ``(n, d)`` points, n ≥ 1 (numpy, or a tensor: computed in numpy, returned as a
            tensor like ``x``).
        weights: optional ``(n,)`` nonnegative weights with a positive sum.

    Example:
        >>> import numpy as np
        >>> from kexue.vmf import fit, sample_vmf
        >>> mu, kappa = fit(sample_vmf(np.eye(200)[0], 1000.0, 100_000, seed=0))
        >>> bool(abs(kappa / 1000 - 1) < 0.01)
        True
    """
    tensor = x if is_tensor(x) else None
    if tensor is not None:
        x = x.detach().cpu().numpy()
    x = check_float(x, "x", finite=True, ndim=2)
    dtype = np.float64 if tensor is not None else x.dtype
    n, d = x.shape
    _check_d(d)
    if n == 0:
        raise ValueError("x must have at least one row")
    x = _normalise(x.astype(np.float64, copy=False), "x")
    if weights is None:
        total, resultant = float(n), x.sum(axis=0)
    else:
        if is_tensor(weights):
            weights = weights.detach().cpu().numpy()
        weights = check_float(weights, "weights", finite=True, ndim=1).astype(np.float64)
        if weights.shape[0] != n or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {n} nonnegative values with a positive sum")
        total, resultant = float(weights.sum()), weights @ x
    length = float(np.linalg.norm(resultant))
    if length == 0:
        raise ValueError("x has a zero resultant: its mean direction is undefined")
    kappa = _native.vmf_kappa_mle(d, min(length / total, 1.0))
    mu = (resultant / length).astype(dtype)
    if tensor is not None:
        import torch

        return torch.from_numpy(mu).to(dtype=tensor.dtype, device=tensor.device), kappa
    return mu, kappa


# --- distribution objects ---------------------------------------------------------------


class VonMisesFisher:
    """vMF(μ, κ), shaped like scipy's frozen distributions (numpy inputs) or, when ``mu`` or
    ``kappa`` is a torch tensor, a ``torch.distributions.Distribution`` with ``rsample``
    (see :func:`torch_distribution`).

    A batch is ``mu`` of shape ``(N, d)`` and/or ``kappa`` of shape ``(N,)``: ``sample()``
    then draws one point per row. ``mu`` is normalised.

    Args:
        mu: ``(d,)`` or ``(N, d)`` mean direction(s).
        kappa: scalar or ``(N,)`` concentration(s), finite and ``>= 0``.
        seed: seeds the stream of seeds that ``sample``/``rvs`` use when not given one.

    Example:
        >>> import numpy as np
        >>> from kexue.vmf import VonMisesFisher
        >>> vmf = VonMisesFisher(np.array([0.0, 0.0, 1.0]), 10.0, seed=0)
        >>> vmf.rvs(5).shape, round(float(vmf.entropy()), 6)
        ((5, 3), 0.535292)
    """

    def __new__(cls, mu: Any, kappa: Any, seed: int | None = None) -> Any:
        if is_tensor(mu) or is_tensor(kappa):
            return torch_distribution()(mu, kappa)
        return super().__new__(cls)

    def __init__(self, mu: Any, kappa: Any, seed: int | None = None) -> None:
        mu = _normalise(check_float(mu, "mu", finite=True))
        kappa = np.asarray(_check_kappa(kappa), dtype=np.float64)
        _rows(mu, kappa, None)
        self.mu, self.kappa, self.dim = mu, kappa[()], _check_d(mu.shape[-1])
        self._seeds = np.random.default_rng(seed)

    def __getnewargs__(self) -> tuple[Any, Any]:  # pickle: __new__ needs mu and kappa
        return self.mu, self.kappa

    def _seed(self, seed: Any) -> int:
        if seed is None:
            return int(self._seeds.integers(2**63))
        if isinstance(seed, np.random.Generator):
            return int(seed.integers(2**63))
        return _check_seed(seed)

    def sample(self, n: int | None = None, *, seed: Any = None) -> np.ndarray:
        """``n`` samples ``(n, d)`` (batched parameters: one per row, ``n`` None or N)."""
        return sample_vmf(self.mu, self.kappa, n, seed=self._seed(seed))

    def rvs(self, size: int | None = None, random_state: Any = None) -> np.ndarray:
        """scipy's spelling of :meth:`sample` (``random_state``: int seed or Generator)."""
        return self.sample(size, seed=random_state)

    def log_prob(self, x: Any) -> Any:
        return log_prob(x, self.mu, self.kappa)

    logpdf = log_prob

    def pdf(self, x: Any) -> Any:
        return np.exp(self.log_prob(x))

    def entropy(self) -> Any:
        return entropy(self.dim, self.kappa)

    def mean(self) -> np.ndarray:
        """``E[x] = A_d(κ) μ`` (not a unit vector)."""
        a = np.asarray(mean_resultant_length(self.dim, self.kappa))
        return a[..., None] * self.mu

    def kl_uniform(self) -> Any:
        return kl_to_uniform(self.dim, self.kappa)

    def __repr__(self) -> str:
        return f"VonMisesFisher(d={self.dim}, mu shape={self.mu.shape}, kappa={self.kappa})"


_TORCH_CLASS: list = []


def _torch_vmf(mu: Any, kappa: Any) -> Any:
    return torch_distribution()(mu, kappa)


def torch_distribution() -> type:
    """The torch class behind ``VonMisesFisher(tensor, ...)``, a
    ``torch.distributions.Distribution`` (created on first use so kexue imports without torch).

    ``rsample(sample_shape, seed=None)`` is differentiable: exactly in ``mu`` (the sample is
    ``wμ + sqrt(1−w²)·v`` with ``v`` a Gaussian projected orthogonally to μ), and pathwise in
    ``kappa`` — which alone is *biased* for Wood's rejection sampler. ``rsample_corrected``
    also returns the weight ``exp(s − s.detach())`` (value 1) whose gradient is Naesseth et
    al.'s (2017) correction ``s = ∂κ log(q/r)``; ``(f(x) * weight).mean()`` has an unbiased
    κ-gradient of ``E[f(x)]``. ``seed=None`` draws a seed from torch's global generator, so
    ``torch.manual_seed`` makes runs reproducible. This road draws ``w`` with Wood's
    sampler for every d (the d = 3 and large-κ shortcuts of the numpy road have no ε to
    correct with), so its samples differ from numpy's for the same seed; both are exact.

    Example:
        >>> import torch
        >>> from kexue.vmf import VonMisesFisher
        >>> mu = torch.tensor([[1.0, 2.0, 2.0]], requires_grad=True)
        >>> q = VonMisesFisher(mu, torch.tensor([5.0]))
        >>> q.rsample((10,), seed=0).shape
        torch.Size([10, 1, 3])
    """
    if _TORCH_CLASS:
        return _TORCH_CLASS[0]
    import torch
    from torch.distributions import Distribution, constraints

    class TorchVonMisesFisher(Distribution):
        arg_constraints = {"loc": constraints.real_vector, "concentration": constraints.nonnegative}
        support = constraints.real_vector
        has_rsample = True

        def __init__(self, mu: Any, kappa: Any, validate_args: bool | None = None) -> None:
            mu, kappa = _as_tensors(mu, kappa)
            if mu.ndim == 0:
                raise ValueError("mu must have at least one dimension (d)")
            self.dim = _check_d(mu.shape[-1])
            batch = torch.broadcast_shapes(mu.shape[:-1], kappa.shape)
            self.loc = _normalise(mu).expand(*batch, self.dim)
            self.concentration = kappa.expand(batch)
            super().__init__(batch, torch.Size([self.dim]), validate_args=validate_args)

        mu = property(lambda self: self.loc)
        kappa = property(lambda self: self.concentration)

        @property
        def mean(self) -> Any:
            return mean_resultant_length(self.dim, self.concentration)[..., None] * self.loc

        def _draw(self, sample_shape: Any, seed: Any, corrected: bool) -> Any:
            shape = torch.Size(sample_shape) + self.batch_shape
            rows = shape.numel()
            if seed is None:
                seed = int(torch.randint(0, 2**62, ()).item())
            # before reshape copies the expanded rows: a clear MemoryError, not an OOM kill
            check_request(6 * rows * self.dim * self.loc.element_size(), "sample_shape")
            mu = self.loc.expand(*shape, self.dim).reshape(rows, self.dim)
            kappa = self.concentration.expand(shape).reshape(rows)
            if rows == 0:
                empty = mu.new_empty(*shape, self.dim)
                return (empty, mu.new_empty(shape)) if corrected else empty
            out = _rsample_torch(mu, kappa, None, _check_seed(seed), corrected)
            if corrected:
                return out[0].reshape(*shape, self.dim), out[1].reshape(shape)
            return out.reshape(*shape, self.dim)

        def rsample(self, sample_shape: Any = (), seed: int | None = None) -> Any:
            return self._draw(sample_shape, seed, False)

        def rsample_corrected(self, sample_shape: Any = (), seed: Any = None) -> tuple:
            """``(x, weight)``: see :func:`torch_distribution`."""
            return self._draw(sample_shape, seed, True)

        def sample(self, sample_shape: Any = (), seed: int | None = None) -> Any:
            with torch.no_grad():
                return self.rsample(sample_shape, seed)

        def log_prob(self, value: Any) -> Any:
            return log_prob(value, self.loc, self.concentration)

        def entropy(self) -> Any:
            return entropy(self.dim, self.concentration)

        def kl_uniform(self) -> Any:
            return kl_to_uniform(self.dim, self.concentration)

        def __reduce__(self) -> tuple:  # the class is local: pickle rebuilds it by function
            return _torch_vmf, (self.loc, self.concentration)

    _TORCH_CLASS.append(TorchVonMisesFisher)
    return TorchVonMisesFisher
