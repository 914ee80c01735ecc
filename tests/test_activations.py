"""SquarePlus: float64 references, both torch roads, gradcheck, numpy conventions, bad input."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kexue
from kexue.activations import (
    B_DEFAULT,
    B_SOFTPLUS_MINIMAX,
    B_SOFTPLUS_UPPER,
    squareplus,
)


def mp_squareplus(x: float, b: float) -> float:
    """Arbitrary-precision reference: the defining formula, with x < 0 multiplied through by
    its conjugate (at |x| = 1e200 the direct form would need 400+ digits)."""
    with mpmath.workdps(50):
        x, r = mpmath.mpf(x), mpmath.sqrt(mpmath.mpf(x) ** 2 + b)
        return float((x + r) / 2 if x >= 0 else b / (2 * (r - x)))


def mp_slope(x: float, b: float) -> float:
    with mpmath.workdps(50):
        x, r = mpmath.mpf(x), mpmath.sqrt(mpmath.mpf(x) ** 2 + b)
        return float((1 + x / r) / 2 if x >= 0 else b / (2 * r * (r - x)))


finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=32)


# b = 0 or in float32's normal range: with a subnormal b (below 1.2e-38) the outputs for x < 0
# are subnormal themselves, where float32 keeps no relative precision to compare.
float32_b = st.one_of(st.just(0.0), st.floats(float(np.finfo(np.float32).tiny), 100))


@given(hnp.arrays(np.float32, st.integers(0, 50), elements=finite_floats), float32_b)
def test_float32_matches_mpmath_to_a_few_ulp(x: np.ndarray, b: float) -> None:
    b = float(np.float32(b))  # the float32 kernel computes with b rounded to float32
    got = squareplus(x, b)
    assert got.dtype == np.float32 and got.shape == x.shape
    want = np.array([mp_squareplus(float(v), b) for v in x])
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float32).eps, atol=1e-44)


@given(hnp.arrays(np.float64, st.integers(0, 50), elements=st.floats(-1e200, 1e200)))
def test_float64_values_and_slopes_match_mpmath(x: np.ndarray) -> None:
    want = np.array([mp_squareplus(float(v), 4.0) for v in x])
    np.testing.assert_allclose(squareplus(x), want, rtol=1e-14, atol=0)
    slope = kexue._native.squareplus_backward(x, np.ones_like(x), 4.0)
    want_slope = np.array([mp_slope(float(v), 4.0) for v in x])
    np.testing.assert_allclose(slope, want_slope, rtol=1e-13, atol=1e-300)


def test_the_naive_forms_failures_are_fixed() -> None:
    x = np.array([-1e4, -1e20, 1e20], dtype=np.float32)
    np.testing.assert_allclose(squareplus(x), [1e-4, 1e-20, 1e20], rtol=1e-6)


def test_special_values_and_relu_limit() -> None:
    x = np.array([-np.inf, np.inf, np.nan, -2.0, 0.0, 2.0])
    y = squareplus(x, 0.0)
    np.testing.assert_array_equal(y, [0.0, np.inf, np.nan, 0.0, 0.0, 2.0])
    tiny = np.array([-1e-45, 1e-45, 1e-20, -1e-20], dtype=np.float32)  # x² underflows
    np.testing.assert_array_equal(squareplus(tiny, 0.0), np.maximum(tiny, 0))
    slope = kexue._native.squareplus_backward(tiny, np.ones_like(tiny), 0.0)
    np.testing.assert_array_equal(slope, [0.0, 1.0, 1.0, 0.0])


def test_named_constants_match_their_definitions() -> None:
    assert B_DEFAULT == 4.0
    assert squareplus(0.0, B_SOFTPLUS_UPPER) == pytest.approx(np.log(2), rel=1e-15)
    x = np.linspace(-30, 30, 600_001)
    softplus = np.logaddexp(0, x)
    worst = np.abs(squareplus(x, B_SOFTPLUS_MINIMAX) - softplus).max()
    assert worst == pytest.approx(0.0759314, abs=1e-6)
    assert np.all(squareplus(x, B_SOFTPLUS_UPPER) >= softplus - 1e-15)
    # a slightly smaller b dips below softplus near 0
    assert squareplus(0.0, B_SOFTPLUS_UPPER * 0.99) < np.log(2)


def test_numpy_conventions() -> None:
    assert isinstance(squareplus(np.float32(1.0)), np.float32)
    assert isinstance(squareplus(1.0), np.float64)
    assert squareplus(np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert squareplus([1, 2]).dtype == np.float64  # integers become float64, as in numpy
    base = np.arange(24, dtype=np.float32).reshape(4, 6) - 12
    view = base[::2, ::-3]
    np.testing.assert_array_equal(squareplus(view), squareplus(view.copy()))
    assert squareplus(np.asfortranarray(base)).shape == (4, 6)


@pytest.mark.parametrize(
    ("x", "b", "error", "match"),
    [
        (np.ones(3, np.complex64), 4.0, TypeError, "x must be a float32 or float64"),
        (np.ones(3, np.float16), 4.0, TypeError, "x must be a float32 or float64"),
        ("abc", 4.0, TypeError, "x must be"),
        (np.array(["a"]), 4.0, TypeError, "x must be"),
        (np.ones(3), -1.0, ValueError, "b must be finite and >= 0"),
        (np.ones(3), float("nan"), ValueError, "b must be finite"),
        (np.ones(3), "4", TypeError, "b must be a real number"),
    ],
)
def test_bad_input_gives_clear_errors(x: object, b: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        squareplus(x, b)


def test_thread_count_does_not_change_results() -> None:
    x = np.random.default_rng(1).standard_normal(200_000).astype(np.float32)
    kexue.set_num_threads(1)
    try:
        one = squareplus(x)
    finally:
        kexue.set_num_threads(0)
    np.testing.assert_array_equal(one, squareplus(x))


@pytest.mark.torch
class TestTorch:
    def test_gradcheck_rust_road(self) -> None:
        import torch

        x = torch.randn(40, dtype=torch.float64, requires_grad=True) * 3
        x = x.detach().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: squareplus(t, 1.5), (x,))

    def test_gradcheck_torch_road(self) -> None:
        import torch

        x = (torch.randn(40, dtype=torch.float64) * 3).requires_grad_()
        with kexue.torch_fallback():
            assert torch.autograd.gradcheck(lambda t: squareplus(t, 1.5), (x,))

    def test_roads_agree_in_float32(self) -> None:
        import torch

        x = (torch.randn(3, 1000) * 50).requires_grad_()
        g = torch.randn(3, 1000)
        y_rust = squareplus(x)
        (dx_rust,) = torch.autograd.grad(y_rust, x, g)
        with kexue.torch_fallback():
            y_torch = squareplus(x)
            (dx_torch,) = torch.autograd.grad(y_torch, x, g)
        torch.testing.assert_close(y_rust, y_torch, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(dx_rust, dx_torch, rtol=1e-6, atol=1e-6)

    def test_tensor_in_tensor_out_and_noncontiguous(self) -> None:
        import torch

        x = torch.randn(6, 8, dtype=torch.float64).t()
        y = squareplus(x)
        assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == x.dtype
        torch.testing.assert_close(y, torch.from_numpy(squareplus(x.contiguous().numpy())))
        assert squareplus(torch.tensor(0.0)).shape == ()
        assert squareplus(torch.zeros(0, 2)).shape == (0, 2)

    def test_module_and_bad_tensors(self) -> None:
        import torch

        from kexue.nn import SquarePlus

        module = SquarePlus(B_SOFTPLUS_UPPER)
        assert "b=1.92" in repr(module)
        torch.testing.assert_close(module(torch.zeros(2)), torch.full((2,), float(np.log(2))))
        with pytest.raises(TypeError, match="x must be a float32 or float64 tensor"):
            squareplus(torch.ones(2, dtype=torch.int64))
        with pytest.raises(ValueError, match="b must be"):
            SquarePlus(-1.0)


def test_b_that_does_not_fit_float32_is_refused() -> None:
    x = np.array([-1.0, 0.0, 1.0], np.float32)
    with pytest.raises(ValueError, match="b must fit"):
        squareplus(x, 1e39)  # inf in float32
    # float64 holds it: sqrt(b)/2 at x = 0, from the formula
    assert squareplus(np.array([0.0]), 1e39)[0] == pytest.approx(mp_squareplus(0.0, 1e39))


@pytest.mark.torch
def test_torch_road_slope_does_not_overflow_with_a_large_b() -> None:
    import torch

    x = torch.tensor([-1e20, -3e19], requires_grad=True)
    with kexue.torch_fallback():
        squareplus(x, 1e38).sum().backward()
    want = [mp_slope(-1e20, 1e38), mp_slope(-3e19, 1e38)]
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-5)


@pytest.mark.torch
def test_second_derivatives_on_the_torch_road_and_a_clear_error_on_the_rust_road() -> None:
    import torch

    def plain(x: torch.Tensor, b: float) -> torch.Tensor:  # the formula, autograd throughout
        return (x + torch.sqrt(x * x + b)) / 2

    x0 = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64)
    for b in (4.0, 0.5):
        grads = []
        for f in (squareplus, plain):
            x = x0.clone().requires_grad_()
            with kexue.torch_fallback():
                y = f(x, b).sum()
                (g,) = torch.autograd.grad(y, x, create_graph=True)
                (g**2).sum().backward()
            grads.append(x.grad)
        torch.testing.assert_close(grads[0], grads[1])
    x = x0.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="create_graph"):
        torch.autograd.grad(squareplus(x).sum(), x, create_graph=True)
