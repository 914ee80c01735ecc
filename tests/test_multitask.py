"""Gradient aggregators of kexue.multitask against float64 references (numpy, scipy's SLSQP
and NNLS, a textbook vector-form PCGrad) and their KKT/Pareto properties."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize, nnls

import kexue
from kexue import multitask as mt

# --- references -----------------------------------------------------------------------------


def qp_reference(J: np.ndarray, simplex: np.ndarray) -> np.ndarray:
    """argmin ½‖xᵀJ‖² s.t. x ≥ 0, Σ_simplex x = 1, by scipy's SLSQP in float64."""
    J = J.astype(np.float64)
    G = J @ J.T
    k = len(G)
    x0 = np.where(simplex, 1.0 / simplex.sum(), 0.0)
    res = minimize(
        lambda x: 0.5 * x @ G @ x,
        x0,
        jac=lambda x: G @ x,
        bounds=[(0, None)] * k,
        constraints=[
            {"type": "eq", "fun": lambda x: x[simplex].sum() - 1, "jac": lambda x: 1.0 * simplex}
        ],
        method="SLSQP",
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    return res.x


def pcgrad_reference(J: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Textbook PCGrad on P-vectors in float64 (Yu et al. 2020, Alg. 1), projections
    skipped for a zero g_j (the textbook divides by zero there)."""
    J = J.astype(np.float64)
    out = np.zeros(J.shape[1])
    for i in range(len(J)):
        g = J[i].copy()
        for j in orders[i]:
            if j == i or not J[j].any():
                continue
            d = g @ J[j]
            if d < 0:
                g -= d / (J[j] @ J[j]) * J[j]
        out += g
    return out


def random_J(rng: np.random.Generator, k: int, p: int, dtype=np.float64) -> np.ndarray:
    return rng.standard_normal((k, p)).astype(dtype)


def norm_scale(J: np.ndarray) -> float:
    return float(np.sqrt((J.astype(np.float64) ** 2).sum(axis=1).max()))


# --- Gram and combine -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(k=st.integers(1, 9), p=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_gram_matches_float64_numpy(dtype, k, p, seed):
    J = random_J(np.random.default_rng(seed), k, p, dtype) * 10.0 ** np.random.default_rng(
        seed
    ).integers(-3, 4, size=(k, 1))
    G = mt.gram(J)
    J64 = J.astype(np.float64)
    ref = J64 @ J64.T
    assert G.dtype == np.float64 and G.shape == (k, k)
    scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref))) + 1e-300
    np.testing.assert_array_less(np.abs(G - ref) / scale, 1e-12)
    np.testing.assert_array_equal(G, G.T)


def test_gram_is_bit_identical_across_thread_counts():
    J = random_J(np.random.default_rng(0), 7, 300_001, np.float32)
    try:
        kexue.set_num_threads(1)
        one = mt.gram(J)
        w1, u1 = mt.mgda(J)
        for n in (2, 3, 4):
            kexue.set_num_threads(n)
            np.testing.assert_array_equal(mt.gram(J), one)
            w, u = mt.mgda(J)
            np.testing.assert_array_equal(w, w1)
            np.testing.assert_array_equal(u, u1)
    finally:
        kexue.set_num_threads(0)


def test_gram_and_combine_do_not_copy_J():
    J = random_J(np.random.default_rng(1), 4, 2_000_000, np.float32)  # 32 MB
    tracemalloc.start()
    try:
        mt.gram(J)
        _, peak_gram = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        mt.mgda(J)
        _, peak_mgda = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_gram < 1_000_000, peak_gram
    assert peak_mgda < J.nbytes // 4 + 1_000_000, peak_mgda  # u (P floats) only


def test_combine_is_the_weighted_sum():
    rng = np.random.default_rng(2)
    J = random_J(rng, 5, 1001, np.float32)
    w = rng.standard_normal(5)
    u = mt.combine(J, w)
    assert u.dtype == np.float32
    np.testing.assert_allclose(u, w @ J.astype(np.float64), rtol=1e-6, atol=1e-6)
    u64 = mt.combine(J.astype(np.float64), w)
    np.testing.assert_allclose(u64, w @ J.astype(np.float64), rtol=1e-13, atol=1e-13)


def test_non_contiguous_J_is_accepted():
    J = random_J(np.random.default_rng(3), 6, 40)
    view = J[::2]
    np.testing.assert_allclose(mt.gram(view), view @ view.T, rtol=1e-13)


# --- MGDA -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("seed", range(8))
def test_mgda_matches_scipy_qp(k, seed):
    rng = np.random.default_rng(100 * k + seed)
    p = int(rng.integers(k + 1, 60))
    J = random_J(rng, k, p)
    J[0] *= 5.0  # uneven norms make interior and boundary solutions
    if seed % 2:
        J += rng.standard_normal(p) * 2  # a shared component: some weights hit 0
    w, u = mt.mgda(J)
    ref = qp_reference(J, np.ones(k, bool))
    s = norm_scale(J)
    np.testing.assert_allclose(u, ref @ J, atol=1e-6 * s)
    np.testing.assert_allclose(w, ref, atol=1e-6)  # P > K: G is positive definite, w unique


def check_min_norm_kkt(J, w, u, tol=1e-9):
    J = J.astype(np.float64)
    G = J @ J.T
    s = max(np.diag(G).max(), 1e-300)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
    np.testing.assert_allclose(u, w @ J, atol=1e-6 * np.sqrt(s))
    # (Gw)_i ≥ wᵀGw for every i: ⟨g_i, u⟩ ≥ ‖u‖², the optimality of the min-norm point.
    assert np.all(G @ w >= w @ G @ w - tol * s)


@given(
    k=st.integers(2, 7),
    p=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    dup=st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_mgda_kkt_on_degenerate_problems(k, p, seed, dup):
    """P < K or duplicated rows: the weights are not unique, so check KKT and the optimal
    value against scipy instead."""
    rng = np.random.default_rng(seed)
    J = random_J(rng, k, p)
    if dup:
        J[-1] = J[0]
    w, u = mt.mgda(J)
    check_min_norm_kkt(J, w, u)
    ref = qp_reference(J, np.ones(k, bool))
    assert u @ u <= (ref @ J) @ (ref @ J) + 1e-9 * norm_scale(J) ** 2


def test_primary_auxiliary_permutation_equivariant():
    rng = np.random.default_rng(15)
    J = random_J(rng, 6, 9)
    perm = rng.permutation(6)
    w, u = mt.primary_auxiliary(J, primary=[1, 4])
    where = [int(np.flatnonzero(perm == i)[0]) for i in (1, 4)]
    wp, up = mt.primary_auxiliary(J[perm], primary=where)
    np.testing.assert_allclose(wp, w[perm], atol=1e-10)
    np.testing.assert_allclose(up, u, atol=1e-10)


def test_mgda_permutation_equivariant():
    rng = np.random.default_rng(5)
    J = random_J(rng, 5, 30)
    perm = rng.permutation(5)
    w, u = mt.mgda(J)
    wp, up = mt.mgda(J[perm])
    np.testing.assert_allclose(wp, w[perm], atol=1e-10)
    np.testing.assert_allclose(up, u, atol=1e-10)


def test_mgda_two_tasks_closed_form():
    g1, g2 = np.array([3.0, 1.0]), np.array([-1.0, 2.0])
    gamma = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
    w, u = mt.mgda(np.stack([g1, g2]))
    np.testing.assert_allclose(w, [gamma, 1 - gamma], rtol=1e-15)
    np.testing.assert_allclose(u, gamma * g1 + (1 - gamma) * g2, rtol=1e-15)


@pytest.mark.parametrize(
    "J",
    [
        np.zeros((3, 4)),
        np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]),
        np.array([[1.0, 2.0], [-1.0, -2.0]]),
        np.array([[1.0, 2.0], [-1.0, -2.0], [3.0, 1.0]]),
        np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]]),
        np.array([[1e-30, 0.0], [0.0, 1e30]]),
    ],
)
def test_degenerate_gradients_are_finite(J):
    for fn in (mt.mgda, mt.pcgrad, lambda J: mt.primary_auxiliary(J, 0)):
        w, u = fn(J)
        assert np.all(np.isfinite(w)) and np.all(np.isfinite(u))
    assert np.all(np.isfinite(mt.gradnorm_sum(J)))
    w, u = mt.mgda(J)
    check_min_norm_kkt(J, w, u)


def test_mgda_opposite_or_zero_gradient_is_pareto_stationary():
    _, u = mt.mgda(np.array([[1.0, 2.0], [-2.0, -4.0]]))
    np.testing.assert_allclose(u, 0, atol=1e-15)
    w, u = mt.mgda(np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]]))
    np.testing.assert_array_equal(u, 0)
    assert w[1] == 1


# --- primary / auxiliary --------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 5, 8])
@pytest.mark.parametrize("seed", range(6))
def test_primary_auxiliary_matches_scipy_nnls(k, seed):
    rng = np.random.default_rng(1000 * k + seed)
    p = int(rng.integers(k + 1, 50))
    J = random_J(rng, k, p)
    primary = int(rng.integers(0, k))
    aux = [i for i in range(k) if i != primary]
    lam, _ = nnls(J[aux].T, -J[primary], maxiter=1000)
    ref_u = J[primary] + lam @ J[aux]
    w, u = mt.primary_auxiliary(J, primary=primary)
    assert w[primary] == 1
    np.testing.assert_allclose(u, ref_u, atol=1e-7 * norm_scale(J))
    np.testing.assert_allclose(w[aux], lam, atol=1e-6)


def check_primary_auxiliary(J, primary, w, u):
    J = J.astype(np.float64)
    s = norm_scale(J) ** 2
    aux = [i for i in range(len(J)) if i != primary]
    assert w[primary] == 1 and np.all(w >= 0)
    np.testing.assert_allclose(u, w @ J, atol=1e-9 * np.sqrt(s))
    dots = J @ u
    assert np.all(dots[aux] >= -1e-9 * s), dots  # no auxiliary gets worse
    assert abs(dots[primary] - u @ u) <= 1e-9 * s  # ⟨u, g_p⟩ = ‖u‖² ≥ 0
    assert np.all(np.abs(w[aux] * dots[aux]) <= 1e-9 * s * (1 + w[aux]))  # complementarity


@given(
    k=st.integers(2, 7),
    p=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
    dup=st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_primary_auxiliary_properties(k, p, seed, dup):
    rng = np.random.default_rng(seed)
    J = random_J(rng, k, p)
    if dup:
        J[-1] = J[1] * 2.0
    primary = int(rng.integers(0, k))
    w, u = mt.primary_auxiliary(J, primary=primary)
    check_primary_auxiliary(J, primary, w, u)


@given(k=st.integers(3, 8), p=st.integers(1, 10), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=150, deadline=None)
def test_solvers_with_norms_twelve_orders_apart(k, p, seed):
    """Jacobi scaling in the QP: KKT holds relative to each row's own norm."""
    rng = np.random.default_rng(seed)
    J = random_J(rng, k, p) * 10.0 ** rng.integers(-6, 7, size=(k, 1))
    G = J @ J.T
    n = np.sqrt(np.diag(G))
    w, u = mt.mgda(J)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
    assert np.all(G @ w - w @ G @ w >= -1e-9 * n * n.max())
    primary = int(rng.integers(0, k))
    w, u = mt.primary_auxiliary(J, primary)
    dots = J @ u
    aux = np.arange(k) != primary
    assert w[primary] == 1 and np.all(w >= 0)
    assert np.all(dots[aux] >= -1e-9 * n[aux] * n[primary])
    assert abs(dots[primary] - u @ u) <= 1e-9 * n[primary] ** 2


def test_primary_auxiliary_is_g0_when_nothing_conflicts():
    rng = np.random.default_rng(7)
    J = np.abs(random_J(rng, 5, 20))  # all inner products >= 0
    w, u = mt.primary_auxiliary(J, primary=2)
    np.testing.assert_array_equal(w, np.eye(5)[2])
    np.testing.assert_array_equal(u, J[2])


def test_primary_auxiliary_one_auxiliary_closed_form():
    g0, g1 = np.array([1.0, 0.5, -2.0]), np.array([-1.0, 1.0, 3.0])
    lam = max(-(g0 @ g1), 0) / (g1 @ g1)
    w, u = mt.primary_auxiliary(np.stack([g0, g1]))
    np.testing.assert_allclose(w, [1, lam], rtol=1e-15)
    np.testing.assert_allclose(u @ g1, 0, atol=1e-14)
    w, _ = mt.primary_auxiliary(np.stack([g0, np.zeros(3)]))
    np.testing.assert_array_equal(w, [1, 0])


def test_primary_auxiliary_direction_invariant_to_auxiliary_scale():
    rng = np.random.default_rng(8)
    J = random_J(rng, 4, 10)
    _, u = mt.primary_auxiliary(J)
    J2 = J * np.array([[1.0], [7.0], [0.01], [3.0]])
    _, u2 = mt.primary_auxiliary(J2)
    np.testing.assert_allclose(u2, u, atol=1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_mixed_primaries_match_scipy(seed):
    rng = np.random.default_rng(seed)
    k = 6
    J = random_J(rng, k, 20)
    primary = [0, 3] if seed % 2 else [1, 2, 5]
    simplex = np.isin(np.arange(k), primary)
    w, u = mt.primary_auxiliary(J, primary=primary)
    ref = qp_reference(J, simplex)
    np.testing.assert_allclose(u, ref @ J, atol=1e-6 * norm_scale(J))
    np.testing.assert_allclose(w, ref, atol=1e-6)
    assert abs(w[simplex].sum() - 1) < 1e-12 and np.all(w >= 0)
    dots = J @ u
    assert np.all(dots[simplex] >= u @ u - 1e-9 * norm_scale(J) ** 2)
    assert np.all(dots[~simplex] >= -1e-9 * norm_scale(J) ** 2)


def test_all_primaries_is_mgda():
    J = random_J(np.random.default_rng(9), 5, 12)
    np.testing.assert_allclose(mt.primary_auxiliary(J, range(5))[1], mt.mgda(J)[1], atol=1e-12)


# --- PCGrad and the gradient-norm rule ------------------------------------------------------


@given(k=st.integers(1, 8), p=st.integers(1, 40), seed=st.integers(0, 2**63))
@settings(max_examples=100, deadline=None)
def test_pcgrad_matches_the_vector_form(k, p, seed):
    rng = np.random.default_rng(seed % 2**32)
    J = random_J(rng, k, p)
    if k > 2:
        J[2] = 0.0
    orders = mt.pcgrad_order(k, seed)
    assert all(sorted(row) == list(range(k)) for row in orders)
    _, u = mt.pcgrad(J, seed=seed)
    ref = pcgrad_reference(J, orders)
    np.testing.assert_allclose(u, ref, atol=1e-9 * norm_scale(J) * k)
    _, u_fixed = mt.pcgrad(J, order=orders)
    np.testing.assert_array_equal(u_fixed, u)


def test_pcgrad_order_is_seeded():
    J = random_J(np.random.default_rng(10), 6, 8)
    a = mt.pcgrad(J, seed=3)
    np.testing.assert_array_equal(a[1], mt.pcgrad(J, seed=3)[1])
    assert not np.array_equal(mt.pcgrad_order(6, 3), mt.pcgrad_order(6, 4))
    order = np.arange(6)[::-1]
    np.testing.assert_allclose(
        mt.pcgrad(J, order=order)[1], pcgrad_reference(J, np.tile(order, (6, 1))), atol=1e-12
    )


def test_pcgrad_float32_close_to_float64():
    J = random_J(np.random.default_rng(11), 8, 100_000, np.float32)
    _, u = mt.pcgrad(J, seed=1)
    ref = pcgrad_reference(J, mt.pcgrad_order(8, 1))
    assert np.abs(u - ref).max() <= 1e-5 * np.abs(ref).max()


def test_gradnorm_sum_is_normalised_sum_and_scale_invariant():
    J = random_J(np.random.default_rng(12), 4, 50)
    ref = (J / np.linalg.norm(J, axis=1, keepdims=True)).sum(axis=0)
    np.testing.assert_allclose(mt.gradnorm_sum(J), ref, rtol=1e-12)
    scaled = J * np.array([[3.0], [1e-3], [1.0], [40.0]])
    np.testing.assert_allclose(mt.gradnorm_sum(scaled), ref, rtol=1e-12)
    J[1] = 0
    assert np.all(np.isfinite(mt.gradnorm_sum(J)))


def test_two_task_gradnorm_sum_is_pareto():
    """Su part II: for K = 2, Σ g_i/‖g_i‖ never conflicts with either task."""
    rng = np.random.default_rng(13)
    for _ in range(50):
        J = random_J(rng, 2, 5)
        u = mt.gradnorm_sum(J)
        assert np.all(J @ u >= -1e-12)


def test_gram_weight_functions_accept_a_gram_matrix():
    J = random_J(np.random.default_rng(14), 4, 9)
    G = J @ J.T
    np.testing.assert_allclose(mt.mgda_weights(G), mt.mgda(J)[0], atol=1e-12)
    np.testing.assert_allclose(mt.primary_auxiliary_weights(G, 1), mt.primary_auxiliary(J, 1)[0])
    np.testing.assert_allclose(mt.pcgrad_weights(G, seed=5), mt.pcgrad(J, seed=5)[0])
    np.testing.assert_allclose(mt.gradnorm_sum_weights(G), 1 / np.sqrt(np.diag(G)))


@pytest.mark.torch
def test_gram_weight_functions_accept_a_torch_gram_matrix():
    import torch

    g = torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, 1.0]])  # rows g1 = (1, .5, 0), g2 = (0, 2, 1)
    G = mt.gram(g)  # torch in, torch out: the weight rules take it as it comes
    # MGDA for two tasks, written from the paper: γ = ⟨g2 − g1, g2⟩ / ‖g1 − g2‖², clipped.
    d = (g[0] - g[1]).double()
    gamma = float(((g[1] - g[0]).double() @ g[1].double()) / (d @ d))
    np.testing.assert_allclose(mt.mgda_weights(G), [gamma, 1 - gamma], rtol=1e-6)
    norms = g.double().norm(dim=1).numpy()
    np.testing.assert_allclose(mt.gradnorm_sum_weights(G), 1 / norms, rtol=1e-6)
    # g1·g2 = 1 > 0: nothing conflicts, so PCGrad and the primary's rule leave weights 1, 0.
    np.testing.assert_array_equal(mt.pcgrad_weights(G), [1.0, 1.0])
    np.testing.assert_array_equal(mt.primary_auxiliary_weights(G, 0), [1.0, 0.0])


@pytest.mark.parametrize(
    ("G", "match"),
    [
        ([[1.0, 5.0], [-3.0, 1.0]], "symmetric"),
        ([[-1.0, 0.0], [0.0, 1.0]], "diagonal"),
        ([[1.0, -1.0], [-1.0, -2.0]], "diagonal"),
        ([[1.0, 2.0], [2.0, 1.0]], "Gram matrix"),  # |G_12| > sqrt(G_11 G_22)
    ],
)
def test_a_matrix_that_is_no_gram_matrix_is_refused(G, match):
    for rule in (mt.mgda_weights, mt.pcgrad_weights, mt.gradnorm_sum_weights,
                 mt.primary_auxiliary_weights):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            rule(G)


def test_gram_matrices_of_float32_colinear_gradients_are_accepted():
    rng = np.random.default_rng(3)
    J = rng.standard_normal((4, 1000)).astype(np.float32)
    J[1] = 3 * J[0]
    J[2] = -J[0]
    w = mt.mgda_weights(mt.gram(J))
    # g3 = −g1: a convex combination reaching 0 exists, and MGDA's minimum norm is 0.
    assert np.linalg.norm(w @ J.astype(np.float64)) < 1e-4 * np.linalg.norm(J[0])


@pytest.mark.torch
def test_combine_never_reads_a_row_of_weight_0_on_either_road():
    import torch

    import kexue

    J = np.random.default_rng(5).standard_normal((3, 5)).astype(np.float32)
    J[1, 2] = np.nan
    expected = J[0].astype(np.float64) - 2 * J[2]
    np.testing.assert_allclose(mt.combine(J, [1.0, 0.0, -2.0]), expected, rtol=1e-6)
    with kexue.torch_fallback():
        u = mt.combine(torch.from_numpy(J), [1.0, 0.0, -2.0])
    np.testing.assert_allclose(u.numpy(), expected, rtol=1e-6)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: mt.gram(np.zeros((0, 5))), ValueError, "at least one task"),
        (lambda: mt.mgda(np.zeros((0, 5), np.float32)), ValueError, "at least one task"),
        (lambda: mt.gram(np.zeros(5)), ValueError, "2 dimensions"),
        (lambda: mt.gram([[1.0, 2.0], [3.0]]), TypeError, "J must"),
        (lambda: mt.gram(np.array([[1.0, np.nan], [0.0, 1.0]])), ValueError, "row 0"),
        (lambda: mt.mgda(np.array([[1.0, 2.0], [np.inf, 1.0]])), ValueError, "row 1"),
        (lambda: mt.gram(np.array([["a", "b"]])), TypeError, "float"),
        (lambda: mt.combine(np.ones((2, 3)), [1.0]), ValueError, "one entry per task"),
        (lambda: mt.combine(np.ones((2, 3)), [1.0, np.nan]), ValueError, "finite"),
        (lambda: mt.primary_auxiliary(np.ones((2, 3)), 2), ValueError, "primary"),
        (lambda: mt.primary_auxiliary(np.ones((2, 3)), []), ValueError, "primary"),
        (lambda: mt.primary_auxiliary(np.ones((2, 3)), 1.0), TypeError, "primary"),
        (lambda: mt.primary_auxiliary(np.ones((2, 3)), None), TypeError, "primary"),
        (lambda: mt.pcgrad(np.ones((2, 3)), order=[0, 0]), ValueError, "permutation"),
        (lambda: mt.pcgrad(np.ones((2, 3)), order=[0, 1, 2]), ValueError, "shape"),
        (lambda: mt.pcgrad(np.ones((2, 3)), seed=-1), ValueError, "seed"),
        (lambda: mt.mgda_weights(np.ones((2, 3))), ValueError, "square"),
        (lambda: mt.mgda_weights(np.full((2, 2), np.inf)), ValueError, "finite"),
        (lambda: mt.pcgrad_order(0), ValueError, "k must"),
        (lambda: mt.gram(np.ones((5000, 1))), ValueError, "at most"),
    ],
)
def test_bad_inputs_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_empty_columns_behave_like_numpy():
    J = np.zeros((3, 0), np.float32)
    np.testing.assert_array_equal(mt.gram(J), J @ J.T)
    w, u = mt.mgda(J)
    assert u.shape == (0,) and np.all(np.isfinite(w))


# --- torch ----------------------------------------------------------------------------------


@pytest.mark.torch
def test_torch_tensors_rust_and_torch_roads_agree(monkeypatch):
    import torch

    monkeypatch.setattr(mt, "_TORCH_BLOCK", 37)  # several column blocks on the torch road

    J = torch.randn(4, 500, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    for fn in (mt.mgda, mt.pcgrad, mt.primary_auxiliary):
        w, u = fn(J)
        assert isinstance(u, torch.Tensor) and u.dtype == torch.float32
        with kexue.torch_fallback():
            w2, u2 = fn(J)
        torch.testing.assert_close(w, w2, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(u, u2, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(u.numpy(), fn(J.numpy())[1])
    with kexue.torch_fallback():
        np.testing.assert_allclose(mt.gram(J).numpy(), mt.gram(J.numpy()), rtol=1e-12)
        empty = torch.zeros(3, 0)
        assert mt.gram(empty).shape == (3, 3) and mt.combine(empty, [1, 2, 3]).shape == (0,)
        with pytest.raises(ValueError, match="row 1"):
            mt.gram(torch.tensor([[1.0], [float("nan")]]))


@pytest.mark.torch
@pytest.mark.parametrize("method", mt.METHODS)
def test_backward_writes_the_aggregated_gradient(method):
    import torch

    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 4)
    heads = [torch.nn.Linear(4, 1) for _ in range(3)]
    x = torch.randn(16, 3)
    h = torch.tanh(shared(x))
    losses = [(head(h) ** 2).mean() * (i + 1) for i, head in enumerate(heads)]
    params = list(shared.parameters())
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    J = torch.stack(rows)
    head_params = [p for head in heads for p in head.parameters()]
    w = mt.backward(losses, params, method, task_params=head_params, seed=2, primary=1)
    got = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(got, torch.as_tensor(w, dtype=J.dtype) @ J, atol=1e-6, rtol=1e-5)
    if method == "mgda":
        np.testing.assert_allclose(w, mt.mgda(J.numpy())[0])
    if method == "primary_auxiliary":
        assert w[1] == 1 and np.all((J @ got)[[0, 2]].numpy() >= -1e-6)
    assert all(p.grad is not None for p in head_params)
    assert losses[0].grad_fn is not None


@pytest.mark.torch
@pytest.mark.parametrize("method", ["mgda", "pcgrad", "primary_auxiliary", "gradnorm_sum"])
def test_backward_torch_road_matches_rust_road(method):
    """The road other devices take (pure torch Gram and combine) gives the CPU result."""
    import torch

    grads = []
    for fallback in (False, True):
        torch.manual_seed(1)
        layer = torch.nn.Linear(5, 3)
        x = torch.randn(10, 5)
        out = layer(x)
        losses = [(out[:, t] - t).pow(2).mean() for t in range(3)]
        if fallback:
            with kexue.torch_fallback():
                mt.backward(losses, list(layer.parameters()), method, seed=4)
        else:
            mt.backward(losses, list(layer.parameters()), method, seed=4)
        grads.append([p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
def test_backward_accumulates_and_accepts_a_weighting():
    import torch

    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.ones(2)
    w = mt.backward([p[0] ** 2, p[1] ** 2], [p], method=lambda G: [0.25, 0.5])
    np.testing.assert_array_equal(w, [0.25, 0.5])
    torch.testing.assert_close(p.grad, torch.tensor([1.5, 3.0]))
    with pytest.raises(ValueError, match="method"):
        mt.backward([p[0] ** 2], [p], method="nope")
    with pytest.raises(ValueError, match="losses"):
        mt.backward([], [p])
    with pytest.raises(ValueError, match="shared_params"):
        mt.backward([p[0] ** 2], [])
