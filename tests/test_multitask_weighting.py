"""Loss-weighting rules of kexue.multitask (Su, part I): values and ∂value/∂L_i against the
closed formulas, the torch helpers' stop-gradients against the numpy weights, and the scale
and translation invariances the post claims."""

from __future__ import annotations

import io
import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue import multitask as mt

positive = st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=6)


@given(
    losses=positive,
    gamma=st.one_of(st.just(0.0), st.floats(-3, -1e-3), st.floats(1e-3, 3)),
)
@settings(max_examples=100, deadline=None)
def test_numpy_values_and_weights_match_formulas(losses, gamma):
    x = np.asarray(losses)
    k = len(x)
    w = mt.equal(x)
    assert math.isclose(w.value, x.mean()) and np.allclose(w.weights, 1 / k)
    r = mt.realtime_normalised(x)
    assert r.value == k and np.allclose(r.weights, 1 / x)
    lg = mt.log_sum(x)
    assert math.isclose(lg.value, np.log(x).sum(), abs_tol=1e-12)
    np.testing.assert_allclose(lg.weights, r.weights)
    gm = mt.generalized_mean(x, gamma)

    def mean(*xs):
        if gamma == 0:
            return mpmath.exp(mpmath.fsum(mpmath.log(v) for v in xs) / k)
        g = mpmath.mpf(gamma)
        return (mpmath.fsum(v**g for v in xs) / k) ** (1 / g)

    with mpmath.workdps(40):
        assert math.isclose(gm.value, float(mean(*losses)), rel_tol=1e-12)
        for i in range(k):
            order = tuple(int(j == i) for j in range(k))
            slope = float(mpmath.diff(mean, losses, order))
            assert math.isclose(gm.weights[i], slope, rel_tol=1e-9, abs_tol=1e-300)


def test_generalized_mean_is_continuous_at_zero():
    x = np.array([0.5, 2.0, 7.0])
    geo = mt.generalized_mean(x, 0.0).value
    for g in (1e-300, -1e-200, 1e-12, -1e-9):
        assert math.isclose(mt.generalized_mean(x, g).value, geo, rel_tol=1e-8)
    big = mt.generalized_mean(np.array([1e3, 1e-3]), 300.0).value  # 1e900 would overflow
    assert math.isclose(big, 1e3 * 0.5 ** (1 / 300), rel_tol=1e-12)


def test_generalized_mean_is_monotone_in_gamma_between_min_and_max():
    x = np.array([0.5, 2.0, 7.0])
    values = [mt.generalized_mean(x, g).value for g in (-50, -2, -0.5, 0, 0.5, 1, 2, 50)]
    assert np.all(np.diff(values) > 0)
    assert x.min() < values[0] and values[-1] < x.max()
    assert math.isclose(mt.generalized_mean(x, 1).value, x.mean())


def test_priors():
    assert math.isclose(mt.prior_cross_entropy([1, 1, 1, 1, 1]), math.log(5))
    assert math.isclose(mt.prior_cross_entropy([0.5, 0.5, 0.0]), math.log(2))
    y = np.random.default_rng(0).standard_normal((1000, 3)) * [1, 2, 3]
    assert math.isclose(mt.prior_mse(y), y.var(axis=0).sum())
    with pytest.raises(ValueError, match="frequencies"):
        mt.prior_cross_entropy([-1.0, 2.0])


def test_numpy_baselines():
    u = mt.uncertainty([2.0, 3.0], log_vars=[0.0, math.log(3.0)])
    assert math.isclose(u.value, 1.0 + 0.5 + math.log(3.0) / 2)
    np.testing.assert_allclose(u.weights, [0.5, 1 / 6])
    d = mt.dwa([1.0, 1.0, 1.0], history=[[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]], temperature=2.0)
    z = np.array([0.5, 1.0, 2.0]) / 2.0
    np.testing.assert_allclose(d.weights, 3 * np.exp(z) / np.exp(z).sum())
    np.testing.assert_array_equal(mt.dwa([1.0, 2.0], history=[[1.0, 1.0]]).weights, [1, 1])
    g = mt.gradnorm_normalised([3.0, 5.0, 1.0], grad_norms=[2.0, 0.5, 0.0])
    np.testing.assert_array_equal(g.weights, [0.5, 2.0, 0.0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mt.realtime_normalised([1.0, 0.0]), "> 0"),
        (lambda: mt.log_sum([-1.0]), "> 0"),
        (lambda: mt.equal([]), "at least one"),
        (lambda: mt.equal([1.0, np.nan]), "finite"),
        (lambda: mt.initial_normalised([1.0, 2.0], initial=[1.0]), "one entry per task"),
        (lambda: mt.initial_normalised([1.0], initial=[0.0]), "> 0"),
        (lambda: mt.gradnorm_normalised([1.0]), "exactly one"),
        (lambda: mt.dwa([1.0], [[1.0], [1.0]], temperature=0), "temperature"),
        (lambda: mt.generalized_mean([1.0], gamma=float("inf")), "gamma"),
        (lambda: mt.gradnorm_loss([1, 1], [-1, 1], [1, 1], [1, 1]), "grad_norms"),
        (lambda: mt.gradnorm_loss([-1, 1], [1, 1], [1, 1], [1, 1]), "weights"),
        (lambda: mt.gradnorm_loss([1, 1], [1, 1], [-1, 1], [1, 1]), "losses"),
        (lambda: mt.gradnorm_loss([1, 1], [1, 1], [0, 0], [1, 1]), "losses"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- torch: stop-gradients and invariances --------------------------------------------------

RULES = {
    "equal": (lambda L: mt.equal(L), {}),
    "initial": (lambda L: mt.initial_normalised(L, initial=[2.0, 0.5, 3.0]), {}),
    "prior": (lambda L: mt.prior_normalised(L, prior=[1.0, 4.0, 0.25]), {}),
    "realtime": (lambda L: mt.realtime_normalised(L), {}),
    "log_sum": (lambda L: mt.log_sum(L), {}),
    "gmean0": (lambda L: mt.generalized_mean(L, 0.0), {}),
    "gmean2": (lambda L: mt.generalized_mean(L, 2.0), {}),
    "gmean-1": (lambda L: mt.generalized_mean(L, -1.0), {}),
    "gradnorm": (lambda L: mt.gradnorm_normalised(L, grad_norms=[1.5, 2.0, 0.1]), {}),
    "uncertainty": (lambda L: mt.uncertainty(L, log_vars=[0.1, -0.5, 0.3]), {}),
    "dwa": (lambda L: mt.dwa(L, history=[[1.0, 2.0, 3.0], [0.5, 2.5, 3.0]]), {}),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(RULES))
def test_torch_gradient_matches_numpy_weights(name):
    import torch

    rule, _ = RULES[name]
    values = [0.7, 1.9, 3.2]
    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    total = rule(leaves)
    total.backward()
    ref = rule(values)
    assert math.isclose(float(total.detach()), ref.value, rel_tol=1e-12)
    np.testing.assert_allclose([float(t.grad) for t in leaves], ref.weights, rtol=1e-12)


def _model_update(rule, scales, shifts=(0.0, 0.0, 0.0)):
    """Gradient in θ of rule([s_i · L_i(θ) + c_i]) for three tasks sharing θ."""
    import torch

    theta = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64, requires_grad=True)
    base = [
        (theta**2).sum() + 0.5,
        ((theta - 1) ** 2).sum(),
        torch.exp(theta[0]) + theta[1] ** 4,
    ]
    losses = [s * L + c for s, L, c in zip(scales, base, shifts)]
    (g,) = torch.autograd.grad(rule(losses), theta)
    return g


@pytest.mark.torch
@pytest.mark.parametrize("name", ["realtime", "log_sum", "gmean0", "gradnorm"])
def test_scale_invariance(name):
    """Multiplying a task loss by c leaves the update direction unchanged (Su part I)."""
    import torch

    if name == "gradnorm":
        g1 = _gradnorm_update((1.0, 1.0, 1.0))
        g2 = _gradnorm_update((1.0, 25.0, 0.01))
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
        return
    rule, _ = RULES[name]
    g1 = _model_update(rule, (1.0, 1.0, 1.0))
    g2 = _model_update(rule, (7.0, 1.0, 0.02))
    if name == "gmean0":  # the geometric mean keeps the direction, not the length
        g1, g2 = g1 / g1.norm(), g2 / g2.norm()
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def _gradnorm_update(scales, shifts=(0.0, 0.0, 0.0)):
    import torch

    theta = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64, requires_grad=True)
    base = [
        (theta**2).sum() + 0.5,
        ((theta - 1) ** 2).sum(),
        torch.exp(theta[0]) + theta[1] ** 4,
    ]
    losses = [s * L + c for s, L, c in zip(scales, base, shifts)]
    total = mt.gradnorm_normalised(losses, shared_params=[theta])
    (g,) = torch.autograd.grad(total, theta)
    return g


@pytest.mark.torch
def test_gradnorm_normalised_is_translation_invariant_and_loss_rules_are_not():
    import torch

    torch.testing.assert_close(
        _gradnorm_update((1.0, 1.0, 1.0)), _gradnorm_update((1.0, 1.0, 1.0), (5.0, 0.0, 100.0))
    )
    rule, _ = RULES["realtime"]
    a = _model_update(rule, (1, 1, 1))
    b = _model_update(rule, (1, 1, 1), (5.0, 0.0, 100.0))
    assert not torch.allclose(a / a.norm(), b / b.norm())


@pytest.mark.torch
def test_equal_weights_are_not_scale_invariant():
    import torch

    rule, _ = RULES["equal"]
    a = _model_update(rule, (1, 1, 1))
    b = _model_update(rule, (7, 1, 1))
    assert not torch.allclose(a / a.norm(), b / b.norm())


@pytest.mark.torch
def test_initial_normalisation_is_scale_invariant_with_measured_initial_losses():
    """Scaling L_i scales its measured initial loss too, so the update does not change."""
    import torch

    def update(scales):
        init = [float(s * v) for s, v in zip(scales, (1.0, 2.0, 4.0))]
        return _model_update(lambda L: mt.initial_normalised(L, initial=init), scales)

    torch.testing.assert_close(update((1, 1, 1)), update((10.0, 0.1, 3.0)))


@pytest.mark.torch
def test_uncertainty_log_vars_receive_gradients():
    import torch

    s = torch.nn.Parameter(torch.tensor([0.0, 1.0], dtype=torch.float64))
    L = [torch.tensor(2.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)]
    mt.uncertainty(L, s).backward()
    # ∂/∂s_i [L_i e^{-s_i}/2 + s_i/2] = -L_i e^{-s_i}/2 + 1/2
    torch.testing.assert_close(s.grad, -torch.tensor([2.0, 3.0]).double() * torch.exp(-s) / 2 + 0.5)


@pytest.mark.torch
def test_gradnorm_class_trains_weights_by_its_formula():
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 3)
    x = torch.randn(8, 3)
    gn = mt.GradNorm(2, alpha=1.5)
    h = layer(x)
    losses = [(h[:, 0] ** 2).mean(), (h[:, 1] - 1).abs().mean() * 5]
    norms = []
    for loss in losses:
        grads = torch.autograd.grad(loss, list(layer.parameters()), retain_graph=True)
        norms.append(float(torch.sqrt(sum((g**2).sum() for g in grads))))
    total = gn(losses, list(layer.parameters()))
    total.backward()
    values = [float(v.detach()) for v in losses]
    ref = mt.gradnorm_loss([1.0, 1.0], norms, values, values, alpha=1.5)
    np.testing.assert_allclose(gn.weights.grad.numpy(), ref.weights, rtol=1e-5)
    # The model gets Σ w_i ∇L_i with w = 1, nothing from the balancing term.
    layer2 = torch.nn.Linear(3, 3)
    layer2.load_state_dict(layer.state_dict())
    h2 = layer2(x)
    ((h2[:, 0] ** 2).mean() + (h2[:, 1] - 1).abs().mean() * 5).backward()
    torch.testing.assert_close(layer.weight.grad, layer2.weight.grad)


@pytest.mark.torch
def test_gradnorm_class_gives_norm_0_where_no_loss_reaches_the_shared_params():
    """As gradnorm_normalised does: the balancing term and the weights' gradient are 0."""
    import torch

    torch.manual_seed(0)
    layer, unused = torch.nn.Linear(3, 2), torch.nn.Linear(3, 3)
    h = layer(torch.randn(8, 3))
    losses = [(h[:, 0] ** 2).mean(), h[:, 1].abs().mean()]
    gn = mt.GradNorm(2)
    total = gn(losses, list(unused.parameters()))
    torch.testing.assert_close(total, losses[0] + losses[1])
    total.backward()
    torch.testing.assert_close(gn.weights.grad, torch.zeros(2))


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradnorm_normalised_gives_a_zero_torch_gradient_weight_0(dtype):
    import torch

    theta = torch.tensor([1.0, 2.0], dtype=getattr(torch, dtype), requires_grad=True)
    losses = [(theta**2).sum(), theta.new_tensor(3.0)]  # the second has a zero gradient
    total = mt.gradnorm_normalised(losses, shared_params=[theta])
    # ‖∇(θ₁² + θ₂²)‖ = ‖(2, 4)‖
    torch.testing.assert_close(total.detach(), theta.new_tensor(5.0 / math.sqrt(20.0)))


@pytest.mark.torch
def test_torch_bad_inputs():
    import torch

    with pytest.raises(ValueError, match="> 0"):
        mt.realtime_normalised([torch.tensor(1.0), torch.tensor(-2.0)])
    with pytest.raises(ValueError, match="shape"):
        mt.uncertainty([torch.tensor(1.0)], torch.zeros(2))
    with pytest.raises(TypeError, match="shared_params"):
        mt.gradnorm_normalised([1.0], shared_params=[torch.zeros(1, requires_grad=True)])
    with pytest.raises(ValueError, match="log_vars"):
        mt.uncertainty([torch.tensor(1.0)], [float("nan")])
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(TypeError, match="losses must be torch tensors"):
        mt.GradNorm(2)([1.0, 2.0], [p])
    with pytest.raises(ValueError, match="L\\(0\\)"):
        mt.GradNorm(2)([(p * 0).sum(), p.sum()], [p])


def test_uncertainty_takes_a_parameter_with_plain_losses():
    import torch

    s = torch.nn.Parameter(torch.tensor([0.0, math.log(2.0)]))
    value, weights = mt.uncertainty([1.0, 2.0], s)
    # Σ L_i / (2 σ_i²) + log σ_i² / 2 with σ² = (1, 2)
    assert math.isclose(value, 1 / 2 + 2 / 4 + math.log(2.0) / 2)
    np.testing.assert_allclose(weights, [0.5, 0.25])


@pytest.mark.torch
@pytest.mark.parametrize("gamma", [1e-46, 1e-40, 1e-12, 1e-7])
def test_float32_generalized_mean_near_gamma_0_is_the_geometric_mean(gamma):
    import torch

    x = torch.tensor([2.0, 4.0, 0.5], requires_grad=True)
    m = mt.generalized_mean(x, gamma)
    m.backward()
    # γ → 0: the geometric mean, ∂M/∂L_i = M / (K L_i)
    geo = math.exp(np.log([2.0, 4.0, 0.5]).mean())
    assert m.dtype == torch.float32 and math.isclose(float(m.detach()), geo, rel_tol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), geo / (3 * np.array([2.0, 4.0, 0.5])), rtol=1e-5)


@pytest.mark.torch
def test_gradnorm_resumes_from_its_state_dict():
    import torch

    def train(gn, steps, torch_seed):
        torch.manual_seed(torch_seed)
        lin = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(gn.parameters(), lr=0.05)
        for step in range(steps):
            x = torch.full((1, 3), 1.0 + step)
            out = lin(x)[0]
            opt.zero_grad()
            gn([out[0] ** 2 + 1, out[1].abs() + 2], list(lin.parameters())).backward()
            opt.step()

    whole = mt.GradNorm(2)
    train(whole, 4, 0)
    first = mt.GradNorm(2)
    train(first, 2, 0)
    resumed = mt.GradNorm(2)
    resumed.load_state_dict(first.state_dict())
    assert resumed.initial is not None
    torch.testing.assert_close(resumed.initial, first.initial)
    torch.testing.assert_close(resumed.weights.detach(), first.weights.detach())
    with pytest.raises(ValueError, match="weights"):
        mt.GradNorm(3).load_state_dict(first.state_dict())
    assert whole.initial is not None and not torch.equal(whole.initial, torch.zeros(2))


@pytest.mark.torch
def test_nn_modules():
    import torch

    from kexue.nn import DynamicWeightAverage, UncertaintyWeighting

    uw = UncertaintyWeighting(2, init=0.0)
    losses = [torch.tensor(2.0), torch.tensor(4.0)]
    total = uw(losses)
    assert math.isclose(float(total.detach()), 1.0 + 2.0)
    total.backward()
    torch.testing.assert_close(uw.log_vars.grad, torch.tensor([-0.5, -1.5]))
    dwa = DynamicWeightAverage(2, temperature=1.0)
    assert float(dwa(losses)) == 6.0  # weights 1 before two epochs
    dwa.end_epoch([2.0, 2.0])
    dwa.end_epoch([1.0, 2.0])
    dwa.end_epoch([1.0, 1.0])  # only the last two epochs count: r = (1, 0.5)
    w = 2 * torch.softmax(torch.tensor([1.0, 0.5]), 0)
    torch.testing.assert_close(dwa(losses), (w * torch.tensor([2.0, 4.0])).sum())
    with pytest.raises(ValueError, match="mean_losses"):
        dwa.end_epoch([1.0])
    with pytest.raises(ValueError, match="losses must have 2"):
        dwa(losses * 2)
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeightAverage(2, temperature=0.0)
    # The history travels in state_dict, through torch.save/load (weights_only).
    buffer = io.BytesIO()
    torch.save(dwa.state_dict(), buffer)
    buffer.seek(0)
    resumed = DynamicWeightAverage(2, temperature=1.0)
    resumed.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(resumed(losses), (w * torch.tensor([2.0, 4.0])).sum())
    with pytest.raises(ValueError, match="num_tasks"):
        UncertaintyWeighting(0)
