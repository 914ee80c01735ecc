"""Statistical tests of the vMF sampler, fixed seeds: E[μᵀx] = A_d(κ) within 4 standard
errors, a KS test of the angle to μ against its exact marginal, and a uniform tangent
direction, over d ∈ {2, 3, 5, 64, 512, 4096} × κ ∈ {1e-3, 1, 50, 1e3, 1e5}."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kexue import vmf

DIMS = [2, 3, 5, 64, 512, 4096]
KAPPAS = [1e-3, 1.0, 50.0, 1e3, 1e5]


def angle_cdf(d: int, kappa: float):
    """CDF of θ = arccos(μᵀx), density ∝ exp(κ(cos θ − 1)) sin^{d−2} θ on [0, π] (smooth,
    so a trapezoid rule on a grid refined around the mode is exact to ~1e-9)."""
    c = (-(d - 2) + math.sqrt((d - 2) ** 2 + 4 * kappa**2)) / (2 * kappa)
    mode = math.acos(min(c, 1.0))
    curvature = kappa * c + (d - 2) / max(1 - c * c, 1e-300)
    sigma = 1 / math.sqrt(curvature)
    fine = np.linspace(max(0.0, mode - 40 * sigma), min(math.pi, mode + 40 * sigma), 200_001)
    grid = np.union1d(np.linspace(0, math.pi, 200_001), fine)
    log_f = kappa * (np.cos(grid) - 1)
    if d > 2:
        with np.errstate(divide="ignore"):
            log_f = log_f + (d - 2) * np.log(np.sin(grid))
    f = np.exp(log_f - log_f.max())
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(grid))])
    cdf /= cdf[-1]
    return lambda t: np.interp(t, grid, cdf)


def draw(d: int, kappa: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = {4096: 2000, 512: 5000}.get(d, 20_000)
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(d)
    mu /= np.linalg.norm(mu)
    dtype = np.float32 if d == 4096 else np.float64
    return mu, vmf.sample_vmf(mu.astype(dtype), kappa, n, seed=seed).astype(np.float64)


@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("d", DIMS)
def test_w_marginal_and_tangent(d: int, kappa: float) -> None:
    mu, x = draw(d, kappa, seed=d * 7 + int(math.log10(kappa) + 3))
    n = len(x)
    w = x @ mu
    # Mean resultant length within 4 standard errors.
    a = vmf.mean_resultant_length(d, kappa)
    se = math.sqrt(
        float(vmf._native.vmf_evaluate("mean_resultant_length_derivative", d, np.array(kappa))) / n
    )
    assert abs(w.mean() - a) < 4 * se + 1e-7, (w.mean(), a, se)
    # The angle, from ‖x − μ‖ = 2 sin(θ/2) (no cancellation near θ = 0).
    theta = 2 * np.arcsin(np.clip(np.linalg.norm(x - mu, axis=1) / 2, 0, 1))
    assert stats.kstest(theta, angle_cdf(d, kappa)).pvalue > 1e-3
    # Tangent direction: orthogonal to μ, and uniform: (eᵀv + 1)/2 ~ Beta((d−2)/2, (d−2)/2).
    v = x - w[:, None] * mu
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert np.abs(v @ mu).max() < 1e-5
    e = np.random.default_rng(0).standard_normal(d)
    e -= (e @ mu) * mu
    e /= np.linalg.norm(e)
    proj = v @ e
    if d == 2:
        share = (proj > 0).mean()
        assert abs(share - 0.5) < 4 * math.sqrt(0.25 / n)
    else:
        half = (d - 2) / 2
        assert stats.kstest((proj + 1) / 2, stats.beta(half, half).cdf).pvalue > 1e-3


@pytest.mark.parametrize("mu_kind", ["e1", "-e1", "e1+noise"])
def test_householder_edge_cases_are_not_special(mu_kind: str) -> None:
    d, kappa, n = 16, 20.0, 20_000
    mu = np.eye(d)[0] * (-1.0 if mu_kind == "-e1" else 1.0)
    if mu_kind == "e1+noise":
        mu = mu + 1e-9 * np.random.default_rng(0).standard_normal(d)
    x = vmf.sample_vmf(mu, kappa, n, seed=2)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-14)
    mu = mu / np.linalg.norm(mu)
    se = math.sqrt(1 / n)
    assert abs((x @ mu).mean() - vmf.mean_resultant_length(d, kappa)) < 4 * se


def test_per_row_parameters() -> None:
    """A different μ and κ on every row: each row follows its own vMF."""
    rng = np.random.default_rng(5)
    n, d = 40_000, 8
    mu = rng.standard_normal((n, d))
    kappa = np.where(np.arange(n) % 2 == 0, 2.0, 200.0)
    x = vmf.sample_vmf(mu, kappa, seed=9)
    w = np.einsum("ij,ij->i", x, mu / np.linalg.norm(mu, axis=1, keepdims=True))
    for k, rows in ((2.0, w[::2]), (200.0, w[1::2])):
        se = math.sqrt(np.var(rows) / len(rows))
        assert abs(rows.mean() - vmf.mean_resultant_length(d, k)) < 4 * se
        theta = np.arccos(np.clip(rows, -1, 1))
        assert stats.kstest(theta, angle_cdf(d, k)).pvalue > 1e-3
