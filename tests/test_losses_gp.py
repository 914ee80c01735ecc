"""GlobalPointer scores (RoPE, Efficient variant, masking), decoding, the R-Drop divergence
and the nn modules: float64 references, gradcheck on both roads, properties, bad input."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kexue
from kexue.losses import (
    global_pointer_decode,
    global_pointer_kl,
    global_pointer_scores,
    sparse_multilabel_categorical_crossentropy,
)

NINF = -np.inf


def ref_scores(q, k, mask=None, bias=None, rope=True, tril=True) -> np.ndarray:
    """float64 scores with RoPE as explicit 2×2 rotation matrices (RoFormer's definition)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    b, length, hq, d = q.shape
    if rope:
        rot = np.zeros((length, d, d))
        for pos in range(length):
            for p in range(d // 2):
                a = pos * 10000.0 ** (-2 * p / d)
                rot[pos, 2 * p : 2 * p + 2, 2 * p : 2 * p + 2] = [
                    [np.cos(a), -np.sin(a)],
                    [np.sin(a), np.cos(a)],
                ]
        q = np.einsum("lij,blhj->blhi", rot, q)
        k = np.einsum("lij,blhj->blhi", rot, k)
    s = np.einsum("bmhd,bnhd->bhmn", q, k) / np.sqrt(d)
    if bias is not None:
        rb, cb = (np.asarray(x, np.float64) for x in bias)
        s = s + rb[..., :, None] + cb[..., None, :]
    keep = np.ones((length, length), bool)
    if tril:
        keep = np.triu(keep)
    keep = np.broadcast_to(keep, s.shape)
    if mask is not None:
        m = np.asarray(mask, bool)
        keep = keep & m[:, None, :, None] & m[:, None, None, :]
    return np.where(keep, s, NINF)


def inputs(seed: int, b=2, length=7, h=3, d=8, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, length, h, d)).astype(dtype)
    k = rng.standard_normal((b, length, h, d)).astype(dtype)
    mask = np.arange(length)[None, :] < rng.integers(1, length + 1, (b, 1))
    return q, k, mask


@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("tril", [True, False])
def test_scores_match_reference(rope: bool, tril: bool) -> None:
    q, k, mask = inputs(0)
    got = global_pointer_scores(q, k, mask=mask, rope=rope, tril=tril)
    np.testing.assert_allclose(got, ref_scores(q, k, mask, rope=rope, tril=tril), rtol=1e-12)
    q32, k32 = q.astype(np.float32), k.astype(np.float32)
    got32 = global_pointer_scores(q32, k32, mask=mask, rope=rope, tril=tril)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, ref_scores(q32, k32, mask, rope=rope, tril=tril), atol=1e-5)


def test_efficient_scores_share_qk_and_add_biases() -> None:
    q, k, mask = inputs(1, h=1)
    rng = np.random.default_rng(2)
    rb, cb = rng.standard_normal((2, 2, 4, 7))
    got = global_pointer_scores(q, k, mask=mask, bias=(rb, cb))
    assert got.shape == (2, 4, 7, 7)
    want = ref_scores(np.repeat(q, 4, 2), np.repeat(k, 4, 2), mask, bias=(rb, cb))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_rope_scores_depend_on_relative_position_only() -> None:
    rng = np.random.default_rng(3)
    v, w = rng.standard_normal((2, 8))
    q = np.zeros((1, 12, 1, 8))
    q[0, :, 0] = v
    k = np.zeros((1, 12, 1, 8))
    k[0, :, 0] = w
    s = global_pointer_scores(q, k, tril=False)[0, 0]
    for offset in (-3, 0, 4):
        diag = np.diagonal(s, offset)
        np.testing.assert_allclose(diag, diag[0], rtol=1e-12)


def test_decode() -> None:
    s = np.full((2, 2, 4, 4), -1.0)
    s[0, 1, 1, 3] = 2.0
    s[1, 0, 2, 2] = 0.5
    s[1, 0, 3, 1] = 9.0  # start > end: never a span
    assert global_pointer_decode(s).tolist() == [[0, 1, 1, 3], [1, 0, 2, 2]]
    assert global_pointer_decode(s, threshold=1.0).tolist() == [[0, 1, 1, 3]]
    assert global_pointer_decode(s[0, 1]).tolist() == [[1, 3]]
    assert global_pointer_decode(np.zeros((0, 3, 5, 5))).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(\.\.\., L, L\)"):
        global_pointer_decode(np.zeros((2, 3)))


# --- KL -------------------------------------------------------------------------------


def ref_kl(s, t, mask=None):
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    both = (s == NINF) & (t == NINF)
    if mask is not None:
        both |= ~np.broadcast_to(mask, s.shape)
    with np.errstate(invalid="ignore"):
        d = np.where(both, 0.0, (sig(s) - sig(t)) * (s - t))
    return d.reshape(len(d), -1).sum(-1)


scores = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 3), st.integers(1, 6)),
    elements=st.floats(-30, 30),
)


@settings(max_examples=80, deadline=None)
@given(scores, st.data())
def test_kl_is_nonnegative_symmetric_and_zero_iff_equal(s: np.ndarray, data) -> None:
    t = data.draw(hnp.arrays(np.float64, s.shape, elements=st.floats(-30, 30)))
    d_st = global_pointer_kl(s, t, reduction="none")
    np.testing.assert_array_equal(d_st, global_pointer_kl(t, s, reduction="none"))
    assert np.all(d_st >= 0)
    np.testing.assert_allclose(d_st, ref_kl(s, t), rtol=1e-12, atol=1e-14)
    assert np.all(global_pointer_kl(s, s, reduction="none") == 0)
    # below this, σ(s) - σ(t) rounds to 0 in float64 at |s| <= 30
    differs = np.any(np.abs(s - t) > 1e-2, axis=1)
    assert np.all(d_st[differs] > 0)


def test_kl_entries_minus_inf_in_both_add_zero_and_no_nan() -> None:
    s = np.array([[0.5, NINF, 2.0], [NINF, NINF, NINF]])
    t = np.array([[-1.0, NINF, 2.5], [NINF, NINF, NINF]])
    got = global_pointer_kl(s, t, reduction="none")
    np.testing.assert_allclose(got, [ref_kl(s[:1, [0, 2]], t[:1, [0, 2]])[0], 0.0], rtol=1e-15)
    assert global_pointer_kl(s, t, mask=[True, False, False], reduction="sum") == pytest.approx(
        ref_kl(s[:1, :1], t[:1, :1])[0], rel=1e-15
    )
    with np.errstate(invalid="ignore"):
        naive = ((1 / (1 + np.exp(-s)) - 1 / (1 + np.exp(-t))) * (s - t)).sum(-1)
    assert np.isnan(naive).all()  # what the formula gives without the rule
    # one side -inf only: an infinite divergence, honestly
    assert global_pointer_kl([[NINF]], [[0.0]]) == np.inf


@pytest.mark.parametrize(
    ("other", "dtype"), [(-1e12, np.float64), (-800.0, np.float64), (-200.0, np.float32)]
)
def test_kl_one_side_minus_inf_is_inf_even_where_the_sigmoid_underflows(other, dtype) -> None:
    import torch

    # σ(other) rounds to 0, so (σ(s) − σ(t))(s − t) would be 0·inf = NaN; the limit is +inf.
    s = np.array([[NINF, 1.0]], dtype)
    t = np.array([[other, 1.0]], dtype)
    assert global_pointer_kl(s, t) == np.inf and global_pointer_kl(t, s) == np.inf
    for fallback in (False, True):
        st_ = torch.tensor(s, requires_grad=True)
        tt = torch.tensor(t, requires_grad=True)
        with kexue.torch_fallback() if fallback else contextlib.nullcontext():
            d = global_pointer_kl(st_, tt)
        d.backward()
        assert float(d.detach()) == np.inf
        # no finite slope exists there: gradient 0, never NaN
        np.testing.assert_array_equal(st_.grad.numpy(), np.zeros_like(s))
        np.testing.assert_array_equal(tt.grad.numpy(), np.zeros_like(t))


def test_kl_float32_and_threads() -> None:
    rng = np.random.default_rng(4)
    s = rng.standard_normal((4, 3, 64, 64)).astype(np.float32) * 4
    t = s + rng.standard_normal(s.shape).astype(np.float32)
    np.testing.assert_allclose(global_pointer_kl(s, t, reduction="none"), ref_kl(s, t), rtol=1e-6)
    q, k, mask = inputs(5, b=6, length=33, h=2, d=8, dtype=np.float32)
    kexue.set_num_threads(1)
    try:
        one = global_pointer_kl(s, t, reduction="none")
        scores = global_pointer_scores(q, k, mask=mask)
    finally:
        kexue.set_num_threads(0)
    np.testing.assert_array_equal(one, global_pointer_kl(s, t, reduction="none"))
    np.testing.assert_array_equal(scores, global_pointer_scores(q, k, mask=mask))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: global_pointer_kl(np.zeros((2, 3)), np.zeros((2, 4))), ValueError, "t must have"),
        (lambda: global_pointer_kl([[np.nan]], [[0.0]]), ValueError, "s must be finite or -inf"),
        (lambda: global_pointer_kl(0.0, 0.0), ValueError, "at least 1 dimension"),
        (lambda: global_pointer_kl(np.zeros((0, 2)), np.zeros((0, 2))), ValueError, "empty"),
        (
            lambda: global_pointer_kl(np.zeros(2), np.zeros(2, np.float32)),
            TypeError,
            "same kind and dtype",
        ),
        (lambda: global_pointer_scores(np.zeros((2, 3, 4)), np.zeros((2, 3, 4))), ValueError, "4"),
        (
            lambda: global_pointer_scores(np.zeros((1, 3, 2, 5)), np.zeros((1, 3, 2, 5))),
            ValueError,
            "even for RoPE",
        ),
        (
            lambda: global_pointer_scores(np.zeros((1, 3, 2, 0)), np.zeros((1, 3, 2, 0))),
            ValueError,
            "at least 1",
        ),
        (
            lambda: global_pointer_scores(np.zeros((1, 3, 2, 4)), np.zeros((1, 2, 2, 4))),
            ValueError,
            "k must have the shape of q",
        ),
        (
            lambda: global_pointer_scores(np.full((1, 2, 1, 2), np.nan), np.zeros((1, 2, 1, 2))),
            ValueError,
            "q must be finite",
        ),
        (
            lambda: global_pointer_scores(
                np.zeros((1, 2, 1, 2)),
                np.zeros((1, 2, 1, 2)),
                bias=(np.array([[[np.nan, 0.0]]]), np.zeros((1, 1, 2))),
            ),
            ValueError,
            r"bias\[0\] must be finite",
        ),
        (
            lambda: global_pointer_scores(
                np.zeros((1, 2, 1, 2)),
                np.zeros((1, 2, 1, 2)),
                bias=(np.zeros((1, 1, 2)), np.array([[[0.0, np.inf]]])),
                mask=[[1, 0]],
            ),
            ValueError,
            r"bias\[1\] must be finite",
        ),
        (
            lambda: global_pointer_scores(
                np.zeros((1, 2, 1, 2)), np.zeros((1, 2, 1, 2)), bias=(np.zeros((1, 3, 5)),) * 2
            ),
            ValueError,
            "bias must have shape",
        ),
        (
            lambda: global_pointer_scores(
                np.zeros((1, 2, 1, 2)), np.zeros((1, 2, 1, 2)), mask=[1, 1, 1]
            ),
            ValueError,
            "mask must broadcast",
        ),
    ],
)
def test_bad_input_gives_clear_errors(call, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_empty_and_zero_length_inputs() -> None:
    assert global_pointer_scores(np.zeros((0, 4, 2, 2)), np.zeros((0, 4, 2, 2))).shape == (
        0,
        2,
        4,
        4,
    )
    assert global_pointer_scores(np.zeros((2, 0, 2, 2)), np.zeros((2, 0, 2, 2))).shape == (
        2,
        2,
        0,
        0,
    )
    assert (
        global_pointer_kl(np.zeros((3, 0)), np.zeros((3, 0)), reduction="none").tolist() == [0] * 3
    )


# --- torch ----------------------------------------------------------------------------


@pytest.mark.torch
class TestTorch:
    def test_gradcheck_scores_and_kl_on_both_roads(self) -> None:
        import torch

        q, k, mask = (torch.tensor(x) for x in inputs(5, b=2, length=5, h=2, d=4))
        q.requires_grad_()
        k.requires_grad_()
        q1, k1 = (x[:, :, :1].detach().clone().requires_grad_() for x in (q, k))
        rb = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
        cb = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
        w = torch.randn(2, 3, 5, 5, dtype=torch.float64)

        def weighted(s: torch.Tensor) -> torch.Tensor:
            return torch.where(s.isinf(), 0.0, s * w[:, : s.shape[1]]).sum()

        t = torch.randn(2, 3, 4, dtype=torch.float64)
        t[:, 0] = float("-inf")
        s = t + torch.randn(2, 3, 4, dtype=torch.float64)
        s = s.detach().requires_grad_()
        t2 = t.clone().requires_grad_()
        keep = torch.tensor([True, False, True, True])
        checks = [
            (lambda q, k: weighted(global_pointer_scores(q, k, mask=mask)), (q, k)),
            (lambda q, k: weighted(global_pointer_scores(q, k, rope=False, tril=False)), (q, k)),
            (
                lambda q, k, rb, cb: weighted(
                    global_pointer_scores(q, k, mask=mask, bias=(rb, cb))
                ),
                (q1, k1, rb, cb),
            ),
            (lambda s, t: global_pointer_kl(s, t), (s, t2)),
            (lambda s, t: global_pointer_kl(s, t, mask=keep), (s, t2)),
        ]
        for fn, args in checks:
            assert torch.autograd.gradcheck(fn, args)
            with kexue.torch_fallback():
                assert torch.autograd.gradcheck(fn, args)
        # both -inf: zero gradient, not NaN
        global_pointer_kl(s, t2).backward()
        assert torch.all(t2.grad[:, 0] == 0) and torch.isfinite(s.grad).all()

    def test_roads_agree_and_match_reference_in_float32(self) -> None:
        import torch

        q, k, mask = (
            torch.tensor(x) for x in inputs(6, b=3, length=16, h=4, d=8, dtype=np.float32)
        )
        q.requires_grad_()
        g = torch.randn(3, 4, 16, 16)
        out = []
        for fallback in (False, True):
            ctx = kexue.torch_fallback() if fallback else _nullcontext()
            with ctx:
                s = global_pointer_scores(q, k, mask=mask)
                (dq,) = torch.autograd.grad(torch.where(s.isinf(), 0.0, s * g).sum(), q)
            out.append((s.detach(), dq))
        torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-5, atol=1e-5)
        want = ref_scores(q.detach().numpy(), k.numpy(), mask.numpy())
        np.testing.assert_allclose(out[0][0].numpy(), want, atol=2e-5)

    def test_global_pointer_module(self) -> None:
        import torch

        from kexue.nn import GlobalPointer, GlobalPointerKL

        torch.manual_seed(0)
        x = torch.randn(2, 6, 10)
        mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
        for efficient in (False, True):
            gp = GlobalPointer(10, heads=3, head_size=4, efficient=efficient)
            s = gp(x, mask)
            assert s.shape == (2, 3, 6, 6)
            assert torch.isinf(s[1, :, 4:]).all() and torch.isinf(s[1, :, :, 4:]).all()
            assert torch.isinf(s[0, :, 3, 1]).all() and torch.isfinite(s[0, :, 1, 3]).all()
            with kexue.torch_fallback():
                torch.testing.assert_close(s, gp(x, mask), rtol=1e-5, atol=1e-5)
            assert f"efficient={efficient}" in repr(gp)
            labels = torch.tensor([[[0 * 6 + 2]] * 3] * 2)  # span (0, 2) for every type
            loss = sparse_multilabel_categorical_crossentropy(labels, s.flatten(2))
            loss = loss + GlobalPointerKL()(s, gp(x, mask))
            loss.backward()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gp.parameters())
        # Efficient GP: 4·head_size (+ biases) per extra type, not 2·hidden·head_size
        size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        e3, e4 = GlobalPointer(10, 3, 4, efficient=True), GlobalPointer(10, 4, 4, efficient=True)
        assert size(e4) - size(e3) == 2 * (2 * 4) + 2
        g3, g4 = GlobalPointer(10, 3, 4), GlobalPointer(10, 4, 4)
        assert size(g4) - size(g3) == 10 * 2 * 4 + 2 * 4
        with pytest.raises(ValueError, match="even for RoPE"):
            GlobalPointer(10, 3, 5)
        with pytest.raises(ValueError, match="heads must be an int"):
            GlobalPointer(10, 0, 4)
        with pytest.raises(ValueError, match="x must have shape"):
            GlobalPointer(10, 3, 4)(torch.zeros(2, 6, 9))

    def test_decode_tensor(self) -> None:
        import torch

        s = torch.full((1, 1, 3, 3), -1.0)
        s[0, 0, 0, 1] = 1.0
        assert global_pointer_decode(s).tolist() == [[0, 0, 0, 1]]


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


@pytest.mark.torch
def test_fallback_road_refuses_nonfinite_vectors() -> None:
    import torch

    q = torch.zeros(1, 2, 1, 2)
    with kexue.torch_fallback(), pytest.raises(ValueError, match="k must be finite"):
        global_pointer_scores(q, q * float("nan"))
    with pytest.raises(ValueError, match="k must be finite"):
        global_pointer_scores(q, q * float("nan"))
