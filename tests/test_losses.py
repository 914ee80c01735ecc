"""Multi-label CE (dense, soft, sparse) and the n×m loss: float64 references, bert4keras'
formulas, mpmath at the extremes, torch autograd/gradcheck on both roads, properties, and
every pitfall of the spec."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import kexue
from kexue.losses import (
    multilabel_categorical_crossentropy as mlce,
)
from kexue.losses import (
    nxm_crossentropy,
)
from kexue.losses import (
    sparse_multilabel_categorical_crossentropy as sparse_mlce,
)

NINF = -np.inf


# --- float64 references ---------------------------------------------------------------


def ref_terms(t: np.ndarray, s: np.ndarray, mask=None, eps: float = 1e-7) -> tuple:
    """The definition's two sums' exponents in float64, with the explicit zero column:
    masked/-inf entries dropped, labels within eps of 0/1 snapped; ``a = s + log(1-t)`` over
    the kept non-positives, ``c = -s + log t`` over the kept non-negatives."""
    s = np.asarray(s, np.float64)
    t = np.broadcast_to(np.asarray(t, np.float64), s.shape)
    keep = np.isfinite(s) if mask is None else np.isfinite(s) & np.broadcast_to(mask, s.shape)
    t = np.where(t <= eps, 0.0, np.where(t >= 1 - eps, 1.0, t))
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(keep & (t < 1), s + np.log1p(-t), NINF)
        c = np.where(keep & (t > 0), -s + np.log(t), NINF)
    zero = np.zeros((*s.shape[:-1], 1))
    return a, c, zero


def ref_mlce(t: np.ndarray, s: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-7):
    """Per-row loss from the definition: log(1 + Σ e^a) + log(1 + Σ e^c) via scipy's
    logsumexp (:func:`ref_terms`)."""
    a, c, zero = ref_terms(t, s, mask, eps)
    return logsumexp(np.concatenate([a, zero], -1), -1) + logsumexp(
        np.concatenate([c, zero], -1), -1
    )


def ref_mlce_grad(t: np.ndarray, s: np.ndarray, mask=None, eps=1e-7) -> np.ndarray:
    """float64 gradient of the summed loss from the formula (:func:`ref_terms`):
    ``∂L/∂s_i = e^{a_i} / (1 + Σ e^a) - e^{c_i} / (1 + Σ e^c)``."""
    a, c, zero = ref_terms(t, s, mask, eps)
    la = logsumexp(np.concatenate([a, zero], -1), -1, keepdims=True)
    lc = logsumexp(np.concatenate([c, zero], -1), -1, keepdims=True)
    return np.exp(a - la) - np.exp(c - lc)


def bert4keras_2023(y_true, y_pred, epsilon=1e-7, infinity=1e12):
    """bert4keras 0.11.5 multilabel_categorical_crossentropy, ported line by line to numpy."""
    y_mask = y_pred > -infinity / 10
    n_mask = (y_true < 1 - epsilon) & y_mask
    p_mask = (y_true > epsilon) & y_mask
    y_true = np.clip(y_true, epsilon, 1 - epsilon)
    infs = np.zeros_like(y_pred) + infinity
    y_neg = np.where(n_mask, y_pred, -infs) + np.log(1 - y_true)
    y_pos = np.where(p_mask, -y_pred, -infs) + np.log(y_true)
    zeros = np.zeros_like(y_pred[..., :1])
    y_neg = np.concatenate([y_neg, zeros], axis=-1)
    y_pos = np.concatenate([y_pos, zeros], axis=-1)
    return logsumexp(y_neg, -1) + logsumexp(y_pos, -1)


def bert4keras_sparse(y_true, y_pred, mask_zero=False, epsilon=1e-7, infinity=1e12):
    """bert4keras sparse_multilabel_categorical_crossentropy (the cancelling form)."""
    zeros = np.zeros_like(y_pred[..., :1])
    y_pred = np.concatenate([y_pred, zeros], axis=-1)
    if mask_zero:
        infs = zeros + infinity
        y_pred = np.concatenate([infs, y_pred[..., 1:]], axis=-1)
    y_pos_2 = np.take_along_axis(y_pred, y_true, axis=-1)
    y_pos_1 = np.concatenate([y_pos_2, zeros], axis=-1)
    if mask_zero:
        y_pred = np.concatenate([-infs, y_pred[..., 1:]], axis=-1)
        y_pos_2 = np.take_along_axis(y_pred, y_true, axis=-1)
    pos_loss = logsumexp(-y_pos_1, axis=-1)
    all_loss = logsumexp(y_pred, axis=-1)
    aux_loss = logsumexp(y_pos_2, axis=-1) - all_loss
    aux_loss = np.clip(1 - np.exp(aux_loss), epsilon, 1)
    neg_loss = all_loss + np.log(aux_loss)
    return pos_loss + neg_loss


def legacy_1e12(y_true, y_pred):
    """The 2021 form most ports still copy: (1-2y)s, the other branch masked with 1e12."""
    y_pred = (1 - 2 * y_true) * y_pred
    y_pred_neg = y_pred - y_true * 1e12
    y_pred_pos = y_pred - (1 - y_true) * 1e12
    zeros = np.zeros_like(y_pred[..., :1])
    return logsumexp(np.concatenate([y_pred_neg, zeros], -1), -1) + logsumexp(
        np.concatenate([y_pred_pos, zeros], -1), -1
    )


def batch(seed: int, rows: int = 16, cols: int = 40, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    t = (rng.random((rows, cols)) < 0.2).astype(np.float32)
    return s, t


F32 = dict(rtol=1e-6, atol=1e-6)


# --- values against the references ----------------------------------------------------


def edge_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    s, t = batch(0, 8, 30)
    big = np.array([[1e4, -1e4, 1e4, -1e4, 3.0]], np.float32)
    soft = np.random.default_rng(1).random((6, 20)).astype(np.float32)
    masked = s.copy()
    masked[:, ::3] = NINF
    return [
        ("random hard", s, t),
        ("no positive labels", s, np.zeros_like(s)),
        ("all positive labels", s, np.ones_like(s)),
        ("logits ±1e4", big, np.array([[1, 0, 0, 1, 1]], np.float32)),
        ("masked entries", masked, t),
        ("soft labels in (0,1)", s[:6, :20], soft),
        ("every entry masked", np.full((2, 3), NINF, np.float32), np.ones((2, 3), np.float32)),
    ]


@pytest.mark.parametrize(("case", "s", "t"), edge_cases(), ids=[c[0] for c in edge_cases()])
def test_values_and_gradients_match_float64(case: str, s: np.ndarray, t: np.ndarray) -> None:
    want = ref_mlce(t, s)
    got = mlce(t, s, reduction="none")
    assert got.dtype == np.float32 and got.shape == s.shape[:-1]
    np.testing.assert_allclose(got, want, **F32)
    np.testing.assert_allclose(mlce(t, s.astype(np.float64), reduction="none"), want, rtol=1e-13)
    pytest.importorskip("torch")
    import torch

    x = torch.tensor(s, requires_grad=True)
    mlce(torch.tensor(t), x, reduction="sum").backward()
    np.testing.assert_allclose(x.grad.numpy(), ref_mlce_grad(t, s), **F32)


def test_agrees_with_bert4keras_where_its_formula_is_sound() -> None:
    s, t = batch(2)
    soft = np.random.default_rng(3).random(s.shape)
    for labels in (t, soft):
        np.testing.assert_allclose(
            mlce(labels, s.astype(np.float64), reduction="none"),
            bert4keras_2023(labels, s.astype(np.float64)),
            rtol=1e-6,
        )
    np.testing.assert_allclose(mlce(t, s, reduction="none"), legacy_1e12(t, s), **F32)


@pytest.mark.torch
def test_float32_labels_clipped_to_eps_are_hard_on_both_roads() -> None:
    import torch

    # bert4keras-style clipping in float32: f32(1e-7) and f32(1 - 1e-7) are just inside
    # (ε, 1 - ε) in float64, but they are the clipped 0 and 1, and count as hard.
    s = np.array([[-20.0, 20.0, -15.0, 12.0]], np.float32)
    t = np.clip(
        np.array([[0.0, 1.0, 0.0, 1.0]], np.float32), np.float32(1e-7), np.float32(1 - 1e-7)
    )
    hard = float(ref_mlce(np.array([[0.0, 1.0, 0.0, 1.0]]), s)[0])
    assert float(mlce(t, s)) == pytest.approx(hard, rel=1e-6)
    with kexue.torch_fallback():
        fallback = mlce(torch.from_numpy(t), torch.from_numpy(s))
    assert float(fallback) == pytest.approx(hard, rel=1e-6)


def test_masked_logit_is_dropped_whatever_its_label() -> None:
    s = np.array([[1.0, NINF, -2.0, NINF]])
    t = np.array([[1.0, 1.0, 0.0, 0.0]])
    want = mlce(t[:, [0, 2]], s[:, [0, 2]])
    assert mlce(t, s) == want
    # the same via mask=, with a finite logit under the mask
    s2 = np.array([[1.0, 50.0, -2.0, 7.0]])
    assert mlce(t, s2, mask=[True, False, True, False]) == want
    # the legacy 1e12 port gives +inf for a positive label on a masked logit
    assert np.isinf(legacy_1e12(t, s)[0])


def test_soft_label_near_zero_on_a_large_negative_logit_stays_finite() -> None:
    # Su's pitfall: clipping t = 1e-9 up to ε puts -s + log ε = 1e7 - 16 in the positive sum.
    s = np.array([[-1e7, 2.0, -1.0]])
    t = np.array([[1e-9, 1.0, 0.0]])
    got = mlce(t, s)
    assert got == pytest.approx(ref_mlce([[0.0, 1.0, 0.0]], s)[0], rel=1e-14)
    with np.errstate(all="ignore"):
        clipped = np.clip(t, 1e-7, 1 - 1e-7)
        naive = logsumexp(np.append(-s + np.log(clipped), 0))
    assert naive > 1e6  # what a plain clip gives


def test_soft_label_optimum_is_sigmoid_2s() -> None:
    pytest.importorskip("torch")
    import torch

    t = np.array([[0.1, 0.5, 0.73, 0.9, 0.02]])
    s = 0.5 * np.log(t / (1 - t))  # s = ½ logit(t), i.e. t = σ(2s)
    x = torch.tensor(s, requires_grad=True)
    loss = mlce(torch.tensor(t), x)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 0.0, atol=1e-15)
    # at the optimum both log terms equal log(1 + Σ sqrt(t(1-t)))
    assert loss.item() == pytest.approx(2 * np.log1p(np.sqrt(t * (1 - t)).sum()), rel=1e-14)
    np.testing.assert_allclose(1 / (1 + np.exp(-2 * s)), t, rtol=1e-14)


def test_mpmath_at_extreme_logits() -> None:
    s = np.array([[-1e4, 1e4, 80.0, -80.0, 0.0]])
    t = np.array([[0.0, 1.0, 1.0, 0.0, 0.3]])
    with mpmath.workdps(60):
        ms = [mpmath.mpf(v) for v in s[0]]
        neg = 1 + sum((1 - mpmath.mpf(ti)) * mpmath.e**si for si, ti in zip(ms, t[0]))
        pos = 1 + sum(mpmath.mpf(ti) * mpmath.e ** (-si) for si, ti in zip(ms, t[0]))
        want = float(mpmath.log(neg) + mpmath.log(pos))
    assert mlce(t, s) == pytest.approx(want, rel=1e-14)
    assert mlce(t.astype(np.float32), s.astype(np.float32)) == pytest.approx(want, rel=1e-6)


# --- sparse ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 6),
    st.integers(1, 30),
    st.integers(1, 5),
    st.booleans(),
)
def test_sparse_and_dense_agree(seed: int, rows: int, cols: int, k: int, mask_zero: bool) -> None:
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal((rows, cols)) * 5).astype(np.float32)
    s[rng.random(s.shape) < 0.1] = NINF
    idx = rng.integers(0, cols, (rows, k))  # duplicates included: they count once
    dense = np.zeros_like(s)
    np.put_along_axis(dense, idx, 1.0, axis=-1)
    keep = np.ones_like(s, dtype=bool)
    if mask_zero:
        dense[:, 0] = 0.0
        keep[:, 0] = False
    np.testing.assert_allclose(
        sparse_mlce(idx, s, mask_zero=mask_zero, reduction="none"),
        mlce(dense, s, mask=keep, reduction="none"),
        rtol=1e-6,
        atol=1e-7,
    )


def test_sparse_never_cancels_where_bert4keras_does() -> None:
    # positives dominate: the exact loss is ~4e-9, bert4keras gives its clip floor
    s = np.full((1, 8), -20.0)
    s[0, [1, 4]] = 20.0
    idx = np.array([[1, 4]])
    with mpmath.workdps(50):
        neg = mpmath.log(1 + 6 * mpmath.e ** mpmath.mpf(-20))
        pos = mpmath.log(1 + 2 * mpmath.e ** mpmath.mpf(-20))
        want = float(neg + pos)
    assert sparse_mlce(idx, s) == pytest.approx(want, rel=1e-12)
    assert sparse_mlce(idx, s.astype(np.float32)) == pytest.approx(want, rel=1e-6)
    b4k = bert4keras_sparse(idx, s)[0]
    assert abs(b4k - want) > 1.0  # the a + log(1e-7) floor
    # a row whose negatives cancel exactly gives bert4keras a negative loss, never us
    s2 = np.array([[30.0, 29.0, -5.0]])
    assert sparse_mlce([[0, 1]], s2) > 0
    pytest.importorskip("torch")
    import torch

    x = torch.tensor(s, requires_grad=True)
    sparse_mlce(torch.tensor(idx), x).backward()
    np.testing.assert_allclose(x.grad.numpy(), ref_mlce_grad(np.isin(np.arange(8), [1, 4]), s))


def test_sparse_agrees_with_bert4keras_in_its_safe_range() -> None:
    rng = np.random.default_rng(5)
    s = rng.standard_normal((10, 12))
    # unique indices: bert4keras counts a duplicate twice, kexue once
    idx = np.array([np.sort(rng.choice(np.arange(1, 12), 3, replace=False)) for _ in range(10)])
    idx[:, 0] = 0  # padding
    np.testing.assert_allclose(
        sparse_mlce(idx, s, mask_zero=True, reduction="none"),
        bert4keras_sparse(idx, s, mask_zero=True),
        rtol=1e-6,
    )


def test_mask_zero_ignores_class_zero() -> None:
    s = np.array([[9.0, 1.0, -1.0]])
    want = ref_mlce([[0, 1, 0]], np.array([[NINF, 1.0, -1.0]]))[0]
    assert sparse_mlce([[0, 1]], s, mask_zero=True) == pytest.approx(want, rel=1e-15)


# --- n×m ------------------------------------------------------------------------------


def ref_nxm(t: np.ndarray, s: np.ndarray, form: str) -> np.ndarray:
    """Direct float64 formula: Σ_j log(1 + Σ_i t_ij exp(offset_ij))."""
    m = s.shape[-1]
    if form == "centered":
        offset = s.mean(-1, keepdims=True) - s
    else:
        others = np.where(np.eye(m, dtype=bool), NINF, s[..., None, :])
        offset = logsumexp(others, -1) - s
    with np.errstate(divide="ignore"):
        a = np.where(t > 0, np.log(t) + offset, NINF)
    zero = np.zeros((*a.shape[:-2], 1, m))
    return logsumexp(np.concatenate([a, zero], -2), -2).sum(-1)


@pytest.mark.parametrize("form", ["analogy", "centered"])
def test_nxm_matches_reference(form: str) -> None:
    rng = np.random.default_rng(7)
    s = rng.standard_normal((5, 4, 6)) * 3
    hard = np.eye(6)[rng.integers(0, 6, (5, 4))]
    soft = rng.dirichlet(np.ones(6), (5, 4))
    for t in (hard, soft):
        np.testing.assert_allclose(
            nxm_crossentropy(t, s, form=form, reduction="none"), ref_nxm(t, s, form), rtol=1e-13
        )
        np.testing.assert_allclose(
            nxm_crossentropy(
                t.astype(np.float32), s.astype(np.float32), form=form, reduction="none"
            ),
            ref_nxm(t, s, form),
            **F32,
        )


def test_nxm_analogy_does_not_cancel_when_the_true_class_dominates() -> None:
    s = np.array([[[60.0, 0.0, 0.0]]])
    t = np.array([[[1.0, 0.0, 0.0]]])
    want = np.log1p(2 * np.exp(-60.0))
    assert nxm_crossentropy(t, s) == pytest.approx(want, rel=1e-14)
    assert nxm_crossentropy(t, s.astype(np.float32)) == pytest.approx(want, rel=1e-6)


def test_nxm_m2_reduces_to_zlpr() -> None:
    rng = np.random.default_rng(8)
    s = rng.standard_normal((7, 2)) * 2
    y = rng.integers(0, 2, 7)
    t = np.eye(2)[y]
    d = s[:, 0] - s[:, 1]
    # the n problems are one sample; binary ZLPR over them with labels y == 0 on score d
    zlpr = ref_mlce((y == 0)[None].astype(float), d[None])[0]
    assert nxm_crossentropy(t[None], s[None]) == pytest.approx(zlpr, rel=1e-13)
    zlpr_half = ref_mlce((y == 0)[None].astype(float), d[None] / 2)[0]
    assert nxm_crossentropy(t[None], s[None], form="centered") == pytest.approx(
        zlpr_half, rel=1e-13
    )


def test_nxm_centered_optimum_is_softmax() -> None:
    pytest.importorskip("torch")
    import torch

    s = np.random.default_rng(9).standard_normal((3, 4, 5))
    t = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    x = torch.tensor(s, requires_grad=True)
    nxm_crossentropy(torch.tensor(t), x, form="centered").backward()
    np.testing.assert_allclose(x.grad.numpy(), 0.0, atol=1e-15)


# --- numpy conventions, reductions, threads -------------------------------------------


def test_reductions_and_shapes() -> None:
    s, t = batch(10, 6, 9)
    s3, t3 = s.reshape(2, 3, 9), t.reshape(2, 3, 9)
    rows = mlce(t3, s3, reduction="none")
    assert rows.shape == (2, 3)
    assert mlce(t3, s3) == pytest.approx(rows.mean(), rel=1e-6)
    assert mlce(t3, s3, reduction="sum") == pytest.approx(rows.sum(), rel=1e-6)
    assert isinstance(mlce(t[0], s[0], reduction="none"), np.float32)  # 1-d input → scalar
    assert mlce(t[:0], s[:0], reduction="sum") == 0
    assert mlce(t[:0], s[:0], reduction="none").shape == (0,)
    assert mlce(np.zeros((3, 0)), np.zeros((3, 0)), reduction="none").tolist() == [0, 0, 0]
    view = np.asfortranarray(s)[:, ::2]
    assert mlce(t[:, ::2].astype(int), view) == mlce(t[:, ::2], view.copy())
    assert sparse_mlce(np.zeros((6, 0), int), s, reduction="none").shape == (6,)


def test_thread_count_does_not_change_results() -> None:
    s, t = batch(11, 3000, 50)
    kexue.set_num_threads(1)
    try:
        one = mlce(t, s, reduction="none"), sparse_mlce(np.argsort(t)[:, -3:], s, reduction="none")
    finally:
        kexue.set_num_threads(0)
    np.testing.assert_array_equal(one[0], mlce(t, s, reduction="none"))
    np.testing.assert_array_equal(one[1], sparse_mlce(np.argsort(t)[:, -3:], s, reduction="none"))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: mlce(np.zeros((2, 3)), np.zeros((2, 4))),
            ValueError,
            "y_true must have the shape",
        ),
        (lambda: mlce([[0, 1]], [[np.nan, 1.0]]), ValueError, "y_pred must be finite or -inf"),
        (lambda: mlce([[0, 1]], [[np.inf, 1.0]]), ValueError, "y_pred must be finite or -inf"),
        (lambda: mlce([[0, 2]], [[0.0, 1.0]]), ValueError, r"y_true must be in \[0, 1\]"),
        (lambda: mlce([[0, np.nan]], [[0.0, 1.0]]), ValueError, "y_true must be in"),
        (lambda: mlce(np.zeros((0, 3)), np.zeros((0, 3))), ValueError, "batch is empty"),
        (lambda: mlce(0.0, 0.0), ValueError, "at least 1 dimension"),
        (lambda: mlce([[0]], [[0.0]], reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: mlce([[0]], [[0.0]], eps=0.7), ValueError, "eps must be"),
        (lambda: mlce([["a"]], [[0.0]]), TypeError, "y_true must be a real array"),
        (lambda: mlce([[0]], [[0.0]], mask=np.ones(3)), ValueError, "mask must broadcast"),
        (lambda: sparse_mlce([[3]], [[0.0, 1.0]]), ValueError, r"must be in \[0, 2\), got 3"),
        (lambda: sparse_mlce([[-1]], [[0.0, 1.0]]), ValueError, r"must be in \[0, 2\), got -1"),
        (lambda: sparse_mlce([[0.5]], [[0.0, 1.0]]), TypeError, "must be an integer array"),
        (lambda: sparse_mlce([0], [[0.0, 1.0]]), ValueError, "y_true_indices must have shape"),
        (lambda: sparse_mlce([[0]], [[0.0, np.nan]]), ValueError, "y_pred must be finite"),
        (lambda: sparse_mlce([[0]], [[0.0]], mask_zero=1), TypeError, "mask_zero must be a bool"),
        (
            lambda: sparse_mlce(np.array([[True, False]]), [[0.0, 1.0]]),
            TypeError,
            "integer class indices, got a bool array",
        ),
        (lambda: nxm_crossentropy(np.ones((2, 3)), np.ones(3)), ValueError, r"\(\.\.\., n, m\)"),
        (lambda: nxm_crossentropy(np.ones((1, 3)), [[np.nan] * 3]), ValueError, "finite"),
        (lambda: nxm_crossentropy(np.ones((1, 3)) * 2, np.ones((1, 3))), ValueError, r"\[0, 1\]"),
        (lambda: nxm_crossentropy(np.ones((1, 3)), np.ones((1, 3)), form="x"), ValueError, "form"),
    ],
)
def test_bad_input_gives_clear_errors(call, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_mask_zero_takes_a_numpy_bool() -> None:
    s = np.array([[2.0, -3.0, 0.5]])
    # class 0 dropped: log(1 + e^{-3}) + log(1 + e^{-0.5}) from the definition
    want = np.log1p(np.exp(-3.0)) + np.log1p(np.exp(-0.5))
    assert float(sparse_mlce([[0, 2]], s, mask_zero=np.bool_(True))) == pytest.approx(want)


# --- torch roads ----------------------------------------------------------------------


@pytest.mark.torch
class TestTorch:
    def test_gradcheck_rust_and_torch_roads(self) -> None:
        import torch

        rng = np.random.default_rng(12)
        s = torch.tensor(rng.standard_normal((4, 7)) * 2, requires_grad=True)
        hard = torch.tensor((rng.random((4, 7)) < 0.3).astype(float))
        soft = torch.tensor(rng.random((4, 7)))
        mask = torch.tensor(rng.random((4, 7)) < 0.8)
        idx = torch.tensor(rng.integers(0, 7, (4, 3)))
        nm = torch.tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
        tn = torch.tensor(rng.dirichlet(np.ones(4), (2, 3)))
        checks = [
            (lambda x: mlce(hard, x), s),
            (lambda x: mlce(soft, x, mask=mask, reduction="sum"), s),
            (lambda x: sparse_mlce(idx, x, mask_zero=True), s),
            (lambda x: nxm_crossentropy(tn, x), nm),
            (lambda x: nxm_crossentropy(tn, x, form="centered"), nm),
        ]
        for fn, x in checks:
            assert torch.autograd.gradcheck(fn, (x,))
            with kexue.torch_fallback():
                assert torch.autograd.gradcheck(fn, (x,))

    def test_roads_agree_in_float32(self) -> None:
        import torch

        s, t = batch(13, 64, 300)
        s[:, ::7] = NINF
        x = torch.tensor(s, requires_grad=True)
        idx = torch.tensor(np.argsort(-t, axis=-1)[:, :5].copy())
        soft = torch.softmax(torch.tensor(t[:, :30]), -1)
        calls = [
            lambda x: mlce(torch.tensor(t), x, reduction="none"),
            lambda x: mlce(torch.tensor(t) * 0.6, x, mask=torch.ones(300)),
            lambda x: sparse_mlce(idx, x, reduction="none"),
            lambda x: nxm_crossentropy(soft, x.masked_fill(x.isinf(), 0.0)[:, 30:60]),
        ]
        for fn in calls:
            g = torch.randn(fn(x).shape)
            y1 = fn(x)
            (d1,) = torch.autograd.grad(y1, x, g)
            with kexue.torch_fallback():
                y2 = fn(x)
                (d2,) = torch.autograd.grad(y2, x, g)
            torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(d1, d2, rtol=1e-5, atol=1e-6)

    def test_tensors_in_tensors_out_and_bad_tensors(self) -> None:
        import torch

        from kexue.nn import (
            MultilabelCategoricalCrossentropy,
            NxMCrossentropy,
            SparseMultilabelCategoricalCrossentropy,
        )

        s = torch.randn(3, 5, dtype=torch.float64).t()  # non-contiguous
        t = (torch.rand(5, 3) < 0.5).to(torch.int64)
        out = mlce(t, s, reduction="none")
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (5,)
        np.testing.assert_allclose(out.numpy(), ref_mlce(t.numpy(), s.numpy()), rtol=1e-13)
        module = MultilabelCategoricalCrossentropy(reduction="sum")
        assert "reduction='sum'" in repr(module)
        assert float(module(s, t)) == pytest.approx(float(out.sum()))
        sp = SparseMultilabelCategoricalCrossentropy(mask_zero=True)
        assert sp(s, torch.zeros(5, 1, dtype=torch.int64)).shape == ()
        assert NxMCrossentropy(form="centered")(s[None], torch.ones(1, 5, 3) / 3).shape == ()
        with pytest.raises(TypeError, match="y_pred must be a float32 or float64 tensor"):
            mlce(t, t)
        with pytest.raises(TypeError, match="integer"):
            sparse_mlce(torch.zeros(5, 1), s)
        with pytest.raises(ValueError, match="y_pred must be finite or -inf"):
            with kexue.torch_fallback():
                mlce(t, s * float("nan"))
        with pytest.raises(ValueError, match="batch is empty"):
            mlce(t[:0], s[:0])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 5),
    st.integers(1, 25),
    st.sampled_from(["hard", "soft", "mixed"]),
)
def test_dense_matches_reference_on_random_rows(seed: int, rows: int, cols: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((rows, cols)) * rng.choice([0.1, 3.0, 50.0])
    s[rng.random(s.shape) < 0.15] = NINF
    t = (rng.random(s.shape) < 0.3).astype(float)
    if kind != "hard":
        soft = rng.random(s.shape)
        t = soft if kind == "soft" else np.where(rng.random(s.shape) < 0.5, soft, t)
    mask = rng.random(s.shape) < 0.9
    got = mlce(t, s, mask=mask, reduction="none")
    np.testing.assert_allclose(got, ref_mlce(t, s, mask), rtol=1e-12, atol=1e-300)
    got32 = mlce(t.astype(np.float32), s.astype(np.float32), mask=mask, reduction="none")
    want32 = ref_mlce(t.astype(np.float32), s.astype(np.float32), mask)
    np.testing.assert_allclose(got32, want32, rtol=1e-6, atol=1e-6)
    assert np.all(got >= 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 6), st.integers(2, 6))
def test_nxm_matches_reference_on_random_blocks(seed: int, b: int, n: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((b, n, m)) * rng.choice([0.5, 5.0, 40.0])
    t = rng.dirichlet(np.ones(m), (b, n)) * (rng.random((b, n, 1)) < 0.8)
    for form in ("analogy", "centered"):
        np.testing.assert_allclose(
            nxm_crossentropy(t, s, form=form, reduction="none"), ref_nxm(t, s, form), rtol=1e-12
        )
