"""The torch road of kexue.vmf: gradients (gradcheck, the exact μ-gradient, the Naesseth
κ-correction against the analytic dA/dκ), the Rust-vs-pure-torch samplers, the distribution
object and kexue.nn.VMFLatent."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

import kexue
from kexue import vmf

pytestmark = pytest.mark.torch
ROADS = ["rust", "torch"]


def road(name: str):
    return kexue.torch_fallback() if name == "torch" else contextlib.nullcontext()


@pytest.mark.parametrize("name", ROADS)
def test_gradcheck_densities(name: str) -> None:
    import torch

    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=-1)
    x.requires_grad_()
    mu = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    kappa = torch.tensor([0.5, 3.0, 40.0, 2e3], dtype=torch.float64, requires_grad=True)
    with road(name):
        assert torch.autograd.gradcheck(vmf.log_prob, (x, mu, kappa))
        for fn in (vmf.log_normalizer, vmf.mean_resultant_length, vmf.kl_to_uniform, vmf.entropy):
            for d in (2, 3, 64, 1000):
                assert torch.autograd.gradcheck(lambda k, fn=fn, d=d: fn(d, k), (kappa,))


@pytest.mark.parametrize("name", ROADS)
def test_kappa_gradient_with_naesseth_correction(name: str) -> None:
    """d/dκ E[μᵀx] = A'_d(κ): the corrected estimator is unbiased; pathwise alone is not."""
    import torch

    d, k0, n = 5, 2.0, 200_000
    mu = torch.eye(d, dtype=torch.float64)[0]
    analytic = float(vmf._native.vmf_evaluate("mean_resultant_length_derivative", d, np.array(k0)))
    with road(name):
        kappa = torch.full((n,), k0, dtype=torch.float64, requires_grad=True)
        x, weight = vmf._rsample_torch(mu.expand(n, d), kappa, None, 7, corrected=True)
        f = x @ mu
        assert torch.allclose(weight, torch.ones_like(weight))
        (f * weight).sum().backward(retain_graph=True)
        g = kappa.grad
        assert abs(g.mean().item() - analytic) < 4 * g.std().item() / math.sqrt(n)
        kappa.grad = None
        (x @ mu).sum().backward()  # pathwise only: biased (0.1277 vs 0.1474)
        g = kappa.grad
        assert abs(g.mean().item() - analytic) > 20 * g.std().item() / math.sqrt(n)


@pytest.mark.parametrize("name", ROADS)
def test_mu_gradient_is_exact(name: str) -> None:
    """Common random numbers: the same seed gives the same w and Gaussian, so autograd must
    equal finite differences of the sample itself."""
    import torch

    d = 7
    m0 = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    c = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def f(m):
        return (vmf.sample_vmf(m, 3.0, 64, seed=5) @ c).sum()

    with road(name):
        m = m0.clone().requires_grad_()
        f(m).backward()
        h = 1e-6
        fd = torch.stack(
            [(f(m0 + h * e) - f(m0 - h * e)) / (2 * h) for e in torch.eye(d, dtype=torch.float64)]
        )
        torch.testing.assert_close(m.grad, fd, rtol=1e-6, atol=1e-8)


def test_rust_and_torch_samplers_agree_in_distribution() -> None:
    import torch

    for d, k in [(2, 1.0), (3, 50.0), (64, 10.0), (512, 1e4)]:
        n = 20_000 if d < 512 else 4000
        mu = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
        mu_hat = mu / mu.norm()
        a = vmf.mean_resultant_length(d, k)
        se = math.sqrt(
            float(vmf._native.vmf_evaluate("mean_resultant_length_derivative", d, np.array(k))) / n
        )
        for name in ROADS:
            with road(name):
                x = vmf.sample_vmf(mu, torch.tensor(k, dtype=torch.float64), n, seed=3)
            assert torch.allclose(x.norm(dim=1), torch.ones(n, dtype=torch.float64))
            assert abs((x @ mu_hat).mean().item() - a) < 4 * se, (d, k, name)
        with road("torch"):
            again = vmf.sample_vmf(mu, k, n, seed=3)
            assert torch.equal(again, vmf.sample_vmf(mu, k, n, seed=3))


def test_float32_and_batch_shapes() -> None:
    import torch

    mu = torch.randn(3, 1, 10)
    q = vmf.VonMisesFisher(mu, torch.tensor([1.0, 10.0, 100.0, 1e3]))
    assert q.batch_shape == (3, 4) and q.event_shape == (10,)
    x = q.rsample((5,), seed=0)
    assert x.shape == (5, 3, 4, 10) and x.dtype == torch.float32
    assert q.log_prob(x).shape == (5, 3, 4)
    assert q.entropy().shape == (3, 4) and q.kl_uniform().shape == (3, 4)
    assert q.mean.shape == (3, 4, 10)
    torch.testing.assert_close(q.sample((2,), seed=1), q.rsample((2,), seed=1))
    assert q.rsample((0,)).shape == (0, 3, 4, 10)
    xc, w = q.rsample_corrected((2,), seed=4)
    assert xc.shape == (2, 3, 4, 10) and w.shape == (2, 3, 4)
    # The numpy and torch objects agree on log_prob and entropy.
    p = vmf.VonMisesFisher(mu[0, 0].double().numpy(), 10.0)
    t = vmf.VonMisesFisher(mu[0, 0].double(), torch.tensor(10.0, dtype=torch.float64))
    pts = t.sample((4,), seed=2)
    np.testing.assert_allclose(t.log_prob(pts).numpy(), p.log_prob(pts.numpy()), rtol=1e-12)
    assert math.isclose(t.entropy().item(), p.entropy(), rel_tol=1e-12)


def test_bad_tensor_input() -> None:
    import torch

    with pytest.raises(ValueError, match="kappa"):
        vmf.sample_vmf(torch.ones(3), torch.tensor(-1.0), seed=0)
    with pytest.raises(ValueError, match="norm"):
        vmf.VonMisesFisher(torch.zeros(3), torch.tensor(1.0))
    with pytest.raises(ValueError, match="rows"):
        vmf.sample_vmf(torch.ones(2, 3), torch.ones(3), seed=0)
    with pytest.raises(TypeError, match="mu"):
        vmf.sample_vmf(torch.ones(3, dtype=torch.int64), 1.0, seed=0)
    with pytest.raises(MemoryError, match="sample_shape"):  # refused before any copy
        vmf.VonMisesFisher(torch.ones(3), torch.tensor(1.0)).rsample((10**13,))


def test_vmf_latent() -> None:
    import torch

    from kexue.nn import VMFLatent

    layer = VMFLatent(16, 32.0)
    assert math.isclose(layer.kl, vmf.kl_to_uniform(16, 32.0))
    h = torch.randn(8, 16, requires_grad=True)
    torch.manual_seed(0)
    z = layer(h)
    torch.manual_seed(0)
    torch.testing.assert_close(layer(h), z)  # torch.manual_seed makes it reproducible
    assert torch.allclose(z.norm(dim=-1), torch.ones(8))
    z.sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()
    layer.eval()
    torch.testing.assert_close(layer(h), torch.nn.functional.normalize(h, dim=-1))
    with pytest.raises(ValueError, match="dimension"):
        layer(torch.randn(8, 15))
    with pytest.raises(ValueError, match="kappa"):
        VMFLatent(16, -1.0)


def test_torch_road_is_thread_count_independent() -> None:
    import torch

    mu = torch.randn(5000, 16, dtype=torch.float64)
    kappa = torch.linspace(0, 1e4, 5000, dtype=torch.float64)
    a = vmf.sample_vmf(mu, kappa, seed=8)
    kexue.set_num_threads(1)
    try:
        b = vmf.sample_vmf(mu, kappa, seed=8)
    finally:
        kexue.set_num_threads(0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ROADS)
@pytest.mark.parametrize("d", [2, 3])
def test_float32_samples_stay_on_the_sphere_in_low_dimensions(name: str, d: int) -> None:
    import torch

    mu = torch.tensor([0.6, 0.8, 0.0][:d])
    with road(name):
        x = vmf.sample_vmf(mu, torch.tensor(100.0), 100_000, seed=12)
    assert x.dtype == torch.float32
    assert float((x.norm(dim=1) - 1).abs().max()) <= 4e-7


def test_log_prob_of_a_tensor_mean_direction_of_huge_norm() -> None:
    import torch

    x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    got = vmf.log_prob(x, torch.tensor([1e200, 0.0, 0.0], dtype=torch.float64), torch.tensor(10.0))
    # log C_3(κ) + κ from the closed form C_3 = κ / (4π sinh κ)
    assert float(got) == pytest.approx(math.log(10.0 / (4 * math.pi * math.sinh(10.0))) + 10.0)
