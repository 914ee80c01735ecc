"""Linear attention: forms against float64 references, causality, streaming, FAVOR+ maths,
gradients (torch gradcheck), determinism and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kexue
from kexue.attention import (
    CausalState,
    favor_features,
    feature_map,
    linear_attention,
    orthogonal_random_matrix,
    softmax_attention,
    stream,
)

MAPS = ["favor+", "favor+hyperbolic", "exp", "elu+1", "relu"]


def qkv(shape=(2, 3, 37, 5), dv=6, dtype=np.float64, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    b, h, n, d = shape
    q = (rng.standard_normal(shape) * scale).astype(dtype)
    k = (rng.standard_normal(shape) * scale).astype(dtype)
    v = rng.standard_normal((b, h, n, dv)).astype(dtype)
    return q, k, v


def reference(phq, phk, v, *, causal, eps=1e-6, mask=None):
    """Independent float64 masked quadratic form: ((φQ φKᵀ) ⊙ L) V / ((φQ φKᵀ) ⊙ L)·1, with the
    documented relative eps (the denominator times ``1 + eps``; 0 where it is 0)."""
    a = np.einsum("bhim,bhjm->bhij", phq.astype(np.float64), phk.astype(np.float64))
    if causal:
        a = np.tril(a)
    if mask is not None:
        a = a * mask[:, None, None, :]
    den = a.sum(-1, keepdims=True) * (1 + eps)
    o = np.where(den == 0, 0.0, a @ v.astype(np.float64) / np.where(den == 0, 1.0, den))
    return o if mask is None else o * mask[:, None, :, None]


def features_f64(x, name, w, *, is_query):
    """The feature maps written out in numpy float64 (the FAVOR+ stabilisers included)."""
    x = x.astype(np.float64)
    d = x.shape[-1]
    if name.startswith("favor"):
        u = (x * d**-0.25) @ w.T
        hyp = name == "favor+hyperbolic"
        z = np.concatenate([u, -u], -1) if hyp else u
        if is_query:
            shift = z.max(-1, keepdims=True)
        else:  # |x'|²/2, and the largest key logit of each sequence (axis −2)
            logits = z - (x * x).sum(-1, keepdims=True) / (2 * np.sqrt(d))
            shift = logits.max(axis=(-2, -1), keepdims=True) + (z - logits)
        return np.exp(z - shift) / np.sqrt(z.shape[-1])
    u = x if w is None else x @ w.T
    if name == "exp":
        return np.exp(u - (u.max(-1, keepdims=True) if is_query else 0.0))
    if name == "elu+1":
        return np.where(u > 0, u + 1, np.exp(np.minimum(u, 0)))
    return np.maximum(u, 0)


def projection_for(name, d, m=7, seed=3):
    return orthogonal_random_matrix(m, d, seed=seed) if name.startswith("favor") else None


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_float64_reference(name, causal, masked):
    q, k, v = qkv()
    w = projection_for(name, q.shape[-1])
    mask = None
    if masked:
        mask = np.ones((2, 37), dtype=bool)
        mask[0, 30:] = False  # right padding
        mask[1, :4] = False  # left padding
    phq = features_f64(q, name, w, is_query=True)
    phk = features_f64(k, name, w, is_query=False)
    want = reference(phq, phk, v, causal=causal, mask=mask)
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        args = [x.astype(dtype) for x in (q, k, v)]
        methods = ["chunked", "scan", "quadratic"] if causal else ["chunked"]
        for method in methods:
            for chunk in (1, 7, 16, 64):
                got = linear_attention(
                    *args,
                    causal=causal,
                    feature_map=name,
                    projection=w,
                    mask=mask,
                    method=method,
                    chunk_size=chunk,
                )
                assert got.dtype == dtype
                scale = np.abs(want).max()
                assert np.abs(got - want).max() <= tol * scale, (dtype, method, chunk)


@pytest.mark.parametrize("name", MAPS)
def test_vector_path_shapes_match_reference(name):
    """Head sizes that are multiples of 16 take the register-tiled float32 kernel, with the
    feature map applied chunk by chunk inside it; fed precomputed features it runs alone."""
    q, k, v = qkv((2, 2, 53, 16), 32, scale=0.5)
    w = orthogonal_random_matrix(32, 16, seed=5) if name != "elu+1" else None
    phq = features_f64(q, name, w, is_query=True)
    phk = features_f64(k, name, w, is_query=False)
    want = reference(phq, phk, v, causal=True)
    scale = np.abs(want).max()
    args = [x.astype(np.float32) for x in (q, k, v)]
    given = [x.astype(np.float32) for x in (phq, phk)]
    for chunk in (1, 7, 16, 53, 64):
        mapped = linear_attention(
            *args, causal=True, feature_map=name, projection=w, chunk_size=chunk
        )
        assert np.abs(mapped - want).max() <= 1e-5 * scale, chunk
        got = linear_attention(
            *given, args[2], causal=True, feature_map="identity", chunk_size=chunk
        )
        assert np.abs(got - want).max() <= 1e-5 * scale, chunk
        for t in (0, 20, 40):
            edited = [x.copy() for x in args]
            for x in edited:
                x[:, :, t + 1 :] *= 50
            out = linear_attention(
                *edited, causal=True, feature_map=name, projection=w, chunk_size=chunk
            )
            np.testing.assert_array_equal(out[:, :, : t + 1], mapped[:, :, : t + 1])


def test_features_match_float64_formulas():
    x = np.random.default_rng(1).standard_normal((3, 4, 5))
    for name in MAPS:
        w = projection_for(name, 5)
        for is_query in (True, False):
            got = feature_map(x, name, w, is_query=is_query)
            np.testing.assert_allclose(got, features_f64(x, name, w, is_query=is_query), rtol=1e-12)
    w = orthogonal_random_matrix(6, 5, seed=0)
    np.testing.assert_allclose(feature_map(x, "exp", w, is_query=False), np.exp(x @ w.T))


@pytest.mark.parametrize("method", ["chunked", "scan", "quadratic"])
@pytest.mark.parametrize("name", ["favor+", "favor+hyperbolic", "elu+1"])
def test_causality_is_bitwise(method, name):
    q, k, v = qkv((1, 2, 40, 8), 8, np.float32)
    w = projection_for(name, 8, m=16)
    full = linear_attention(q, k, v, causal=True, feature_map=name, projection=w, method=method)
    for t in (0, 13, 31, 39):
        q2, k2, v2 = q.copy(), k.copy(), v.copy()
        # huge future keys/queries: a global-max stabiliser would change every past output
        q2[:, :, t + 1 :] *= 50
        k2[:, :, t + 1 :] *= 50
        v2[:, :, t + 1 :] = 1e3
        edited = linear_attention(
            q2, k2, v2, causal=True, feature_map=name, projection=w, method=method, chunk_size=16
        )
        ref = linear_attention(
            q, k, v, causal=True, feature_map=name, projection=w, method=method, chunk_size=16
        )
        np.testing.assert_array_equal(edited[:, :, : t + 1], ref[:, :, : t + 1])
    assert np.isfinite(full).all()


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("name", ["favor+", "elu+1"])
@pytest.mark.parametrize("d,m,dv", [(8, 12, 5), (16, 32, 16)])  # the second: vector path
def test_chunked_prefill_then_steps_equals_full_pass(dtype, tol, name, d, m, dv):
    q, k, v = qkv((2, 3, 50, d), dv, dtype, scale=0.5)
    w = projection_for(name, d, m=m)
    full = linear_attention(q, k, v, causal=True, feature_map=name, projection=w)
    for t0 in (1, 17, 40):
        state = CausalState(feature_map=name, projection=w, chunk_size=8)
        parts = [state.update(q[:, :, :t0], k[:, :, :t0], v[:, :, :t0])]
        for t in range(t0, 45):
            parts.append(state.update(q[:, :, t], k[:, :, t], v[:, :, t])[:, :, None])
        parts.append(state.update(q[:, :, 45:], k[:, :, 45:], v[:, :, 45:]))
        got = np.concatenate(parts, axis=2)
        assert state.position == 50
        assert np.abs(got - full).max() <= tol * np.abs(full).max()


def test_state_copy_save_load(tmp_path):
    q, k, v = qkv((1, 2, 10, 4), 3)
    w = orthogonal_random_matrix(8, 4, seed=5)
    out, state = stream(q[:, :, :6], k[:, :, :6], v[:, :, :6], projection=w)
    saved = state.copy()
    path = tmp_path / "state.npz"
    state.save(path)
    a = state.update(q[:, :, 6:], k[:, :, 6:], v[:, :, 6:])
    b, after = stream(q[:, :, 6:], k[:, :, 6:], v[:, :, 6:], saved)
    c = CausalState.load(path).update(q[:, :, 6:], k[:, :, 6:], v[:, :, 6:])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert saved.position == 6 and after.position == 10  # stream left its input alone
    full = linear_attention(q, k, v, causal=True, projection=w)
    np.testing.assert_allclose(np.concatenate([out, a], 2), full, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="do not continue"):
        state.update(q[:, :1], k[:, :1], v[:, :1])


def test_noncausal_permutation_invariance_and_cross_lengths():
    q, k, v = qkv((1, 2, 9, 4), 3)
    w = orthogonal_random_matrix(8, 4, seed=0)
    out = linear_attention(q, k, v, causal=False, projection=w)
    perm = np.random.default_rng(0).permutation(9)
    np.testing.assert_allclose(
        linear_attention(q, k[:, :, perm], v[:, :, perm], causal=False, projection=w), out
    )
    np.testing.assert_allclose(
        linear_attention(q[:, :, perm], k, v, causal=False, projection=w), out[:, :, perm]
    )
    short = linear_attention(q[:, :, :4], k, v, causal=False, projection=w)
    np.testing.assert_allclose(short, out[:, :, :4])


def test_padding_left_right_and_fully_padded():
    q, k, v = qkv((1, 2, 12, 4), 3)
    w = orthogonal_random_matrix(8, 4, seed=0)
    core = linear_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], causal=True, projection=w)
    noise = qkv((1, 2, 4, 4), 3, seed=9)
    right = [np.concatenate([x[:, :, :8], y], 2) for x, y in zip((q, k, v), noise)]
    left = [np.concatenate([y, x[:, :, :8]], 2) for x, y in zip((q, k, v), noise)]
    mask_r = np.arange(12)[None] < 8
    mask_l = np.arange(12)[None] >= 4
    out_r = linear_attention(*right, causal=True, projection=w, mask=mask_r)
    out_l = linear_attention(*left, causal=True, projection=w, mask=mask_l)
    np.testing.assert_allclose(out_r[:, :, :8], core, rtol=1e-12)
    np.testing.assert_allclose(out_l[:, :, 4:], core, rtol=1e-12)
    assert (out_r[:, :, 8:] == 0).all() and (out_l[:, :, :4] == 0).all()
    none = linear_attention(q, k, v, causal=False, projection=w, mask=np.zeros((1, 12), bool))
    assert (none == 0).all()


@pytest.mark.parametrize("name", ["favor+", "favor+hyperbolic"])
def test_large_norm_inputs_stay_finite_in_float32(name):
    q, k, v = qkv((1, 2, 64, 16), 8, np.float32, scale=1e3)
    w = orthogonal_random_matrix(32, 16, seed=0)
    for causal in (True, False):
        out = linear_attention(q, k, v, causal=causal, feature_map=name, projection=w)
        assert np.isfinite(out).all()
    phk = favor_features(k, w, is_query=False, hyperbolic=name.endswith("bolic"))
    assert (phk >= 0).all() and (phk <= 1).all()


def test_favor_converges_to_softmax_like_inverse_sqrt_m():
    # fp64, small norms (sigma = 0.5), D = 64, N = 128; mean over 4 draws.
    q, k, v = qkv((1, 1, 128, 64), 64, scale=0.5, seed=3)
    exact = softmax_attention(q, k, v, causal=False)
    errs = {}
    for m in (16, 64, 256, 1024):
        e = []
        for seed in range(4):
            w = orthogonal_random_matrix(m, 64, seed=seed)
            o = linear_attention(q, k, v, causal=False, projection=w, eps=0.0)
            e.append(np.linalg.norm(o - exact) / np.linalg.norm(v))
        errs[m] = np.mean(e)
    ms = np.array(sorted(errs))
    slope = np.polyfit(np.log(ms), np.log([errs[m] for m in ms]), 1)[0]
    assert -0.75 < slope < -0.3, (slope, errs)
    assert errs[1024] < errs[16] / 4
    # causal form against causal softmax too
    w = orthogonal_random_matrix(1024, 64, seed=0)
    oc = linear_attention(q, k, v, causal=True, projection=w, eps=0.0)
    exact_c = softmax_attention(q, k, v, causal=True)
    assert np.linalg.norm(oc - exact_c) / np.linalg.norm(v) < 2 * errs[1024] + 0.02


def test_orthogonal_features_beat_iid():
    q, k, v = qkv((1, 1, 64, 16), 16, scale=0.6, seed=4)
    exact = softmax_attention(q, k, v, causal=False)
    rng = np.random.default_rng(0)
    err = {"ortho": [], "iid": []}
    for seed in range(40):
        for kind in err:
            if kind == "ortho":
                w = orthogonal_random_matrix(16, 16, seed=seed)
            else:
                w = rng.standard_normal((16, 16))
            o = linear_attention(q, k, v, causal=False, projection=w, eps=0.0)
            err[kind].append(np.linalg.norm(o - exact))
    assert np.mean(err["ortho"]) < np.mean(err["iid"])


def test_kernel_estimate_is_unbiased():
    # R independent blocks of M = d orthogonal chi-scaled rows: each block's estimate of
    # exp(q·k/√d) is unbiased; the mean over R blocks is within 4 standard errors.
    d, r = 8, 20000
    rng = np.random.default_rng(7)
    q, k = rng.standard_normal((2, d)) * 0.5
    w = orthogonal_random_matrix(d * r, d, seed=11).reshape(r, d, d)
    est = []
    for block in np.array_split(w, 8):
        pq = np.stack([favor_features(q, b, is_query=False, key_offset=0.0) for b in block])
        pk = np.stack([favor_features(k, b, is_query=False, key_offset=0.0) for b in block])
        est.append((pq * pk).sum(-1))
    est = np.concatenate(est)
    truth = np.exp(q @ k / np.sqrt(d))
    se = est.std() / np.sqrt(r)
    assert abs(est.mean() - truth) < 4 * se, (est.mean(), truth, se)


def test_orthogonal_random_matrix_properties():
    from scipy import stats

    d = 16
    w = orthogonal_random_matrix(4 * d, d, seed=1, scaling="chi")
    for b in range(4):
        block = w[b * d : (b + 1) * d]
        g = block @ block.T
        off = g - np.diag(np.diag(g))
        assert np.abs(off).max() < 1e-10 * np.abs(np.diag(g)).max()
    many = orthogonal_random_matrix(2000, d, seed=2, scaling="chi")
    assert stats.kstest(np.linalg.norm(many, axis=1), stats.chi(d).cdf).pvalue > 1e-3
    sq = orthogonal_random_matrix(20, d, seed=1, scaling="sqrt")
    np.testing.assert_allclose(np.linalg.norm(sq, axis=1), np.sqrt(d))
    np.testing.assert_array_equal(w, orthogonal_random_matrix(4 * d, d, seed=1))
    assert not np.array_equal(w, orthogonal_random_matrix(4 * d, d, seed=2))
    assert orthogonal_random_matrix(3, d, seed=0, dtype=np.float32).dtype == np.float32
    np.testing.assert_array_equal(
        orthogonal_random_matrix(5, 4, seed=9, scaling=1)[:4],
        orthogonal_random_matrix(4, 4, seed=9, scaling="sqrt"),
    )


def test_results_do_not_depend_on_thread_count():
    q, k, v = qkv((3, 4, 100, 8), 8, np.float32)
    w = orthogonal_random_matrix(16, 8, seed=0)
    try:
        kexue.set_num_threads(1)
        one = [linear_attention(q, k, v, causal=c, projection=w) for c in (True, False)]
        w1 = orthogonal_random_matrix(40, 8, seed=5)
        kexue.set_num_threads(3)
        three = [linear_attention(q, k, v, causal=c, projection=w) for c in (True, False)]
        w3 = orthogonal_random_matrix(40, 8, seed=5)
    finally:
        kexue.set_num_threads(0)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(w1, w3)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 3),
    n=st.integers(1, 40),
    d=st.integers(1, 6),
    dv=st.integers(1, 5),
    chunk=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_chunked_equals_reference(b, h, n, d, dv, chunk, seed):
    rng = np.random.default_rng(seed)
    q, k = rng.random((2, b, h, n, d)) + 0.01
    v = rng.standard_normal((b, h, n, dv))
    got = linear_attention(q, k, v, causal=True, feature_map="identity", chunk_size=chunk)
    want = reference(q, k, v, causal=True)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_bad_input_is_a_clear_error():
    q, k, v = qkv((1, 2, 5, 4), 3)
    w = orthogonal_random_matrix(8, 4, seed=0)
    with pytest.raises(ValueError, match="k must have"):
        linear_attention(q, k[:, :, :, :3], v, causal=True, projection=w)
    with pytest.raises(ValueError, match="v must have"):
        linear_attention(q, k, v[:, :, :4], causal=True, projection=w)
    with pytest.raises(ValueError, match="causal"):
        linear_attention(q, k[:, :, :4], v[:, :, :4], causal=True, projection=w)
    with pytest.raises(ValueError, match="sequence length"):
        linear_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], causal=True, projection=w)
    with pytest.raises(ValueError, match="4 dimensions"):
        linear_attention(q[0], k[0], v[0], causal=True, projection=w)
    with pytest.raises(TypeError, match="share one dtype"):
        linear_attention(q.astype(np.float32), k, v, causal=True, projection=w)
    with pytest.raises(TypeError, match="float32 or float64"):
        linear_attention(q.astype(np.complex128), k, v, causal=True, projection=w)
    with pytest.raises(ValueError, match="projection is required"):
        linear_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match=r"shape \(m, 4\)"):
        linear_attention(q, k, v, causal=True, projection=w[:, :3])
    with pytest.raises(ValueError, match="positive number of features"):
        linear_attention(q, k, v, causal=True, projection=w[:0])
    with pytest.raises(ValueError, match="m must be >= 1"):
        orthogonal_random_matrix(0, 4, seed=0)
    with pytest.raises(ValueError, match="m must be >= 1"):
        orthogonal_random_matrix(-3, 4, seed=0)
    with pytest.raises(ValueError, match="m·d"):
        orthogonal_random_matrix(2**40, 4, seed=0)
    with pytest.raises(ValueError, match="feature_map"):
        linear_attention(q, k, v, causal=True, feature_map="softmax")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, k, v, causal=True, projection=w, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):  # C×C per thread: bounded
        linear_attention(q, k, v, causal=True, projection=w, chunk_size=10**6)
    with pytest.raises(ValueError, match="method"):
        linear_attention(q, k, v, causal=True, projection=w, method="fast")
    with pytest.raises(ValueError, match="eps"):
        linear_attention(q, k, v, causal=True, projection=w, eps=-1.0)
    with pytest.raises(ValueError, match="mask must have shape"):
        linear_attention(q, k, v, causal=True, projection=w, mask=np.ones((1, 4), bool))
    with pytest.raises(TypeError, match="mask must be a boolean"):
        linear_attention(q, k, v, causal=True, projection=w, mask=np.ones((1, 5)))
    with pytest.raises(ValueError, match="v must be finite"):
        linear_attention(q, k, v * np.nan, causal=True, projection=w)
    assert np.isnan(linear_attention(q * np.nan, k, v, causal=True, projection=w)).all()
    with pytest.raises(ValueError, match="scaling"):
        orthogonal_random_matrix(4, 4, seed=0, scaling="uniform")
    with pytest.raises(TypeError, match="state must be a CausalState"):
        stream(q, k, v, state="nope", projection=w)


# --- torch ---------------------------------------------------------------------------------


def _torch_qkv(shape, dv, dtype, seed=0):
    import torch

    q, k, v = qkv(shape, dv, seed=seed)
    return [torch.tensor(x, dtype=dtype, requires_grad=True) for x in (q, k, v)]


def _gradcheck(causal, method, name, n, *, fast=True):
    import torch

    w = projection_for(name, 3, m=4)
    q, k, v = _torch_qkv((1, 2, n, 3), 3, torch.float64, seed=n)

    def fn(q, k, v):
        return linear_attention(
            q, k, v, causal=causal, feature_map=name, projection=w, method=method, chunk_size=4
        )

    return torch.autograd.gradcheck(fn, (q, k, v), fast_mode=fast)


@pytest.mark.torch
@pytest.mark.parametrize("causal,method", [(True, "chunked"), (True, "scan"), (False, "chunked")])
@pytest.mark.parametrize("name", ["favor+", "favor+hyperbolic", "exp", "elu+1"])
def test_gradcheck_float64_rust_road(causal, method, name):
    for n in (1, 7, 33):
        assert _gradcheck(causal, method, name, n)
    if name == "favor+":
        assert _gradcheck(causal, method, name, 9, fast=False)


@pytest.mark.torch
@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_float64_torch_road(causal):
    with kexue.torch_fallback():
        assert _gradcheck(causal, "chunked", "favor+", 9, fast=False)
        assert _gradcheck(causal, "chunked", "favor+hyperbolic", 7)


@pytest.mark.torch
@pytest.mark.parametrize("causal", [True, False])
def test_rust_road_matches_torch_road_float32(causal):
    import torch

    w = orthogonal_random_matrix(64, 32, seed=0)
    mask = torch.ones(2, 100, dtype=torch.bool)
    mask[1, 90:] = False
    results = []
    for road in ("rust", "torch"):
        q, k, v = _torch_qkv((2, 4, 100, 32), 16, torch.float32)
        g = torch.randn(2, 4, 100, 16, generator=torch.Generator().manual_seed(0))
        if road == "torch":
            with kexue.torch_fallback():
                out = linear_attention(q, k, v, causal=causal, projection=w, mask=mask)
        else:
            out = linear_attention(q, k, v, causal=causal, projection=w, mask=mask)
        out.backward(g)
        assert out.dtype == torch.float32
        results.append([out.detach(), q.grad, k.grad, v.grad])
    for a, b in zip(*results):
        scale = b.abs().max()
        assert (a - b).abs().max() <= 1e-5 * scale
    assert (results[0][2][1, :, 90:] == 0).all()  # padded keys get no gradient


@pytest.mark.torch
@pytest.mark.parametrize("n", [1, 15, 64, 65, 130])
def test_float32_causal_backward_at_chunk_boundaries(n):
    """Feature widths that are multiples of 16 take the register-tiled f32 backward: its
    gradients against torch autograd of the float64 quadratic form, with N below, at and past
    the chunk (64, and 24: not a multiple of 16), and the same bits on 1 or 3 threads."""
    import torch

    rng = np.random.default_rng(n)
    shape = (2, 3, n)
    phq, phk = (rng.random((*shape, 32)) + 0.05 for _ in range(2))
    v, g = (rng.standard_normal((*shape, 48)) for _ in range(2))
    x64 = [torch.tensor(x, requires_grad=True) for x in (phq, phk, v)]
    a = torch.einsum("bhim,bhjm->bhij", x64[0], x64[1]).tril()
    ((a @ x64[2]) / (a.sum(-1, keepdim=True) + 1e-6)).backward(torch.tensor(g))
    for chunk in (64, 24):
        grads = []
        for threads in (1, 3):
            x32 = [torch.tensor(x, dtype=torch.float32, requires_grad=True) for x in (phq, phk, v)]
            try:
                kexue.set_num_threads(threads)
                out = linear_attention(*x32, causal=True, feature_map="identity", chunk_size=chunk)
                out.backward(torch.tensor(g, dtype=torch.float32))
            finally:
                kexue.set_num_threads(0)
            grads.append([x.grad for x in x32])
        assert all(torch.equal(grads[0][i], grads[1][i]) for i in range(3))
        # one scale for all three: at N = 1, ∂q and ∂k are pure cancellation (o = v exactly)
        scale = max(x.grad.abs().max() for x in x64)
        for i, want in enumerate(x64):
            assert (grads[0][i] - want.grad.float()).abs().max() <= 1e-5 * scale


@pytest.mark.torch
def test_torch_streaming_and_softmax_reference():
    import torch

    q, k, v = (x.detach() for x in _torch_qkv((1, 2, 20, 4), 3, torch.float64))
    w = orthogonal_random_matrix(8, 4, seed=0)
    full = linear_attention(q, k, v, causal=True, projection=w)
    for fallback in (False, True):
        state = CausalState(projection=w)
        with kexue.torch_fallback() if fallback else _nullcontext():
            head = state.update(q[:, :, :10], k[:, :, :10], v[:, :, :10])
            tail = [state.update(q[:, :, t], k[:, :, t], v[:, :, t]) for t in range(10, 20)]
        got = torch.cat([head, torch.stack(tail, 2)], 2)
        torch.testing.assert_close(got, full, rtol=1e-10, atol=1e-12)
    ref = softmax_attention(q, k, v, causal=True)
    np.testing.assert_allclose(
        ref.numpy(), softmax_attention(q.numpy(), k.numpy(), v.numpy(), causal=True), rtol=1e-12
    )
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ref, sdpa)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("feature_map", "key_offset"),
    [("elu+1", None), ("relu", None), ("favor+", 3.0), ("favor+", None), ("exp", 1.0)],
)
def test_a_state_prefilled_in_rust_continues_on_the_torch_road(feature_map, key_offset):
    import torch

    q, k, v = qkv((1, 2, 12, 4), 11)
    kw = {"feature_map": feature_map, "eps": 0.0}
    if key_offset is not None:
        kw["key_offset"] = key_offset
    if feature_map == "favor+":
        kw["projection"] = orthogonal_random_matrix(16, 4, seed=3)
    state = CausalState(**kw)
    state.update(q[:, :, :7], k[:, :, :7], v[:, :, :7])  # numpy: the Rust road
    with kexue.torch_fallback():
        tail = state.update(*(torch.from_numpy(x[:, :, 7:]) for x in (q, k, v)))
    # the causal formula in float64: o_t = Σ_{s≤t} (φ(q_t)·φ(k_s)) v_s / Σ_{s≤t} φ(q_t)·φ(k_s)
    if feature_map == "favor+":
        w = kw["projection"]
        # φ(x) ∝ exp(Ωx' − |x'|²/2), x' = x·d^(−1/4) (Choromanski et al.)
        xs = (x / 4**0.25 for x in (q, k))
        phi_q, phi_k = (np.exp(x @ w.T - (x**2).sum(-1, keepdims=True) / 2) for x in xs)
    else:
        phi = {"elu+1": lambda x: np.where(x > 0, x + 1, np.exp(x)),
               "relu": lambda x: np.maximum(x, 0), "exp": np.exp}[feature_map]  # fmt: skip
        phi_q, phi_k = phi(q), phi(k)
    a = np.tril(phi_q @ np.swapaxes(phi_k, -1, -2))
    want = (a @ v) / a.sum(-1, keepdims=True)
    np.testing.assert_allclose(tail.numpy(), want[:, :, 7:], rtol=1e-9)


@pytest.mark.parametrize("d", [128, 256])
def test_float32_favor_key_features_do_not_underflow_at_large_d(d):
    w = orthogonal_random_matrix(d, d, seed=0)
    k = np.random.default_rng(0).standard_normal((2, 300, d))
    got = favor_features(k.astype(np.float32), w, is_query=False)
    # the paper's φ(x) = exp(ω·x' − |x'|²/2)/√m, x' = x·d^(−1/4), under one constant per
    # sequence (the largest logit: Performer's reference stabiliser), in float64
    xs = k / d**0.25
    logits = xs @ w.T - (xs**2).sum(-1, keepdims=True) / 2
    want = np.exp(logits - logits.max(axis=(-2, -1), keepdims=True)) / np.sqrt(d)
    assert got.dtype == np.float32 and (got.max(axis=(-2, -1)) > 0).all()
    normal = want > 1e-30  # float32 keeps relative digits down to its normal range
    assert normal.mean() > 0.5
    np.testing.assert_allclose(got[normal], want[normal], rtol=1e-4)


@pytest.mark.torch
def test_exp_query_features_are_differentiated_with_their_row_max_on_both_roads():
    import torch

    x0 = torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.0, -2.0]], dtype=torch.float64)
    ref = x0.clone().requires_grad_()
    (ref - ref.amax(-1, keepdim=True)).exp().sum().backward()
    for fallback in (False, True):
        x = x0.clone().requires_grad_()
        with kexue.torch_fallback() if fallback else _nullcontext():
            feature_map(x, "exp", is_query=True).sum().backward()
        torch.testing.assert_close(x.grad, ref.grad)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def test_key_offset_cancels_and_batches_are_independent():
    q, k, v = qkv((2, 2, 30, 6), 4)
    w = orthogonal_random_matrix(12, 6, seed=2)
    base = linear_attention(q, k, v, causal=True, projection=w, eps=0.0)
    for offset in (-3.0, 0.0, 7.5):
        shifted = linear_attention(q, k, v, causal=True, projection=w, eps=0.0, key_offset=offset)
        np.testing.assert_allclose(shifted, base, rtol=1e-10)
    # a huge second batch element leaves the first one bitwise unchanged (no global max)
    k2, q2 = k.copy(), q.copy()
    k2[1] *= 1e3
    q2[1] *= 1e3
    other = linear_attention(q2, k2, v, causal=True, projection=w, eps=0.0)
    np.testing.assert_array_equal(other[0], base[0])


def test_float32_state_stays_accurate_on_long_sequences():
    q, k, v = qkv((1, 1, 16384, 8), 8, np.float32, seed=5)
    w = orthogonal_random_matrix(16, 8, seed=0)
    got = linear_attention(q, k, v, causal=True, projection=w)
    want = linear_attention(*(x.astype(np.float64) for x in (q, k, v)), causal=True, projection=w)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def _decode(state, q, k, v):
    """Steps ``state`` through ``q, k, v`` one token at a time; the outputs ``(B, H, N, Dv)``."""
    return np.stack(
        [state.update(q[:, :, t], k[:, :, t], v[:, :, t]) for t in range(q.shape[2])], 2
    )


def test_float32_decoding_stays_accurate_on_long_sequences():
    # 8192 float32 tokens one by one (M, Dv multiples of 16: the float32 decoder) against the
    # float64 pass; values with a mean, so S grows like N and plain float32 sums drift.
    n, d, m, dv = 8192, 16, 32, 16
    q, k, v = qkv((1, 2, n, d), dv, np.float32, seed=3)
    v += 3
    w = orthogonal_random_matrix(m, d, seed=0)
    want = linear_attention(*(x.astype(np.float64) for x in (q, k, v)), causal=True, projection=w)
    state = CausalState(projection=w)
    got = _decode(state, q, k, v)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 2e-6  # about the float32 chunked pass's own error (float32 features)
    # the float64 state itself matches the float64 sums of the features
    fk = favor_features(
        k.astype(np.float64), w, is_query=False, key_offset=(w * w).sum(1).max() / 2
    )
    vp = np.concatenate([v, np.ones((1, 2, n, 1), np.float32)], -1).astype(np.float64)
    kv = np.einsum("bhnm,bhnj->bhmj", fk, vp)
    assert state.kv.dtype == np.float64
    # (the state is under the running maximum, the features under the constant max |ω|²/2)
    rescaled = state.kv * np.exp(state.scale - (w * w).sum(1).max() / 2)[..., None, None]
    np.testing.assert_allclose(rescaled, kv, rtol=1e-6)
    # plain float32 accumulation of the same features is several times less accurate
    fq = favor_features(q, w.astype(np.float32), is_query=True)
    fk = fk.astype(np.float32)
    s = np.zeros((1, 2, m, dv + 1), np.float32)
    naive = np.empty_like(got)
    for t in range(n):
        s += fk[:, :, t, :, None] * vp[:, :, t, None, :].astype(np.float32)
        y = np.einsum("bhm,bhmj->bhj", fq[:, :, t], s)
        naive[:, :, t] = y[..., :dv] / (y[..., dv:] + np.float32(1e-6))
    assert err * 3 < np.abs(naive - want).max() / np.abs(want).max()


@pytest.mark.parametrize("name", ["favor+", "favor+hyperbolic", "exp", "elu+1"])
def test_float32_decoding_reads_copies_and_saves_its_state(tmp_path, name):
    n, d, dv = 150, 16, 32
    q, k, v = qkv((2, 3, n, d), dv, np.float32, seed=4)
    w = projection_for(name, d, m=16 if name == "favor+hyperbolic" else 32)
    x64 = (x.astype(np.float64) for x in (q, k, v))
    full = linear_attention(*x64, causal=True, feature_map=name, projection=w)
    state = CausalState(feature_map=name, projection=w)
    head = _decode(state, q[:, :, :70], k[:, :, :70], v[:, :, :70])  # a fold at 64
    saved = state.copy()
    path = tmp_path / "state.npz"
    state.save(path)
    loaded = CausalState.load(path)
    tails = [_decode(s, q[:, :, 70:], k[:, :, 70:], v[:, :, 70:]) for s in (state, saved, loaded)]
    np.testing.assert_array_equal(tails[0], tails[1])
    np.testing.assert_array_equal(tails[0], tails[2])
    got = np.concatenate([head, tails[0]], 2)
    assert got.dtype == np.float32
    assert np.abs(got - full).max() <= 1e-5 * np.abs(full).max()
    # reading kv mid-sequence changes nothing; writing it in place is what the next step sees
    again = CausalState(feature_map=name, projection=w)
    parts = []
    for t in range(n):
        parts.append(again.update(q[:, :, t], k[:, :, t], v[:, :, t]))
        if t % 37 == 0:
            assert again.kv.shape[-1] == dv + 1
    assert np.abs(np.stack(parts, 2) - full).max() <= 1e-5 * np.abs(full).max()
    again.kv[...] = 0.0
    again.scale[...] = -np.inf  # (the stabiliser too, for a bitwise fresh start)
    fresh = CausalState(feature_map=name, projection=w)
    np.testing.assert_array_equal(_decode(again, q, k, v), _decode(fresh, q, k, v))
    with pytest.raises(ValueError, match="do not continue"):
        again.update(q[:1, :, 0], k[:1, :, 0], v[:1, :, 0])


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 3),
    n=st.integers(1, 160),
    d=st.sampled_from([8, 16]),
    m=st.sampled_from([16, 32]),
    dv=st.sampled_from([16, 48]),
    name=st.sampled_from(["favor+", "favor+hyperbolic", "exp", "relu"]),
    reads=st.sets(st.integers(0, 159), max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_float32_decoding_equals_the_float64_pass(b, h, n, d, m, dv, name, reads, seed):
    q, k, v = qkv((b, h, n, d), dv, np.float32, seed=seed)
    w = orthogonal_random_matrix(m // 2 if name == "favor+hyperbolic" else m, d, seed=seed)
    x64 = (x.astype(np.float64) for x in (q, k, v))
    want = linear_attention(*x64, causal=True, feature_map=name, projection=w)
    state = CausalState(feature_map=name, projection=w)
    got = []
    for t in range(n):
        got.append(state.update(q[:, :, t], k[:, :, t], v[:, :, t]))
        if t in reads:  # reading kv folds the buffered tokens early
            assert state.kv.shape == (b, h, m, dv + 1)
    assert np.abs(np.stack(got, 2) - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-30)


@pytest.mark.torch
def test_float32_decoding_of_cpu_tensors_matches_numpy():
    import torch

    q, k, v = qkv((1, 2, 70, 16), 16, np.float32, seed=7)
    w = orthogonal_random_matrix(32, 16, seed=1)
    want = _decode(CausalState(projection=w), q, k, v)
    state = CausalState(projection=w)
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    # contiguous tokens (the zero-copy road), then strided views of the sequence
    tokens = [
        [x[:, :, t].contiguous() if t < 40 else x[:, :, t] for x in (tq, tk, tv)] for t in range(70)
    ]
    got = [state.update(*token) for token in tokens]
    assert all(isinstance(o, torch.Tensor) and not o.requires_grad for o in got)
    np.testing.assert_array_equal(torch.stack(got, 2).numpy(), want)


def test_float32_decoding_does_not_depend_on_thread_count():
    q, k, v = qkv((4, 16, 3, 64), 64, np.float32, seed=6)  # 64 heads: spread over threads
    w = orthogonal_random_matrix(64, 64, seed=1)
    outs = []
    try:
        for threads in (1, 3):
            kexue.set_num_threads(threads)
            outs.append(_decode(CausalState(projection=w), q, k, v))
    finally:
        kexue.set_num_threads(0)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_strided_inputs_give_identical_results():
    q, k, v = qkv((2, 5, 3, 4), 6)  # stored (B, N, H, D): a transposed view is strided
    w = orthogonal_random_matrix(8, 4, seed=1)
    views = [x.transpose(0, 2, 1, 3) for x in (q, k, v)]
    contiguous = [np.ascontiguousarray(x) for x in views]
    for causal in (True, False):
        np.testing.assert_array_equal(
            linear_attention(*views, causal=causal, projection=w),
            linear_attention(*contiguous, causal=causal, projection=w),
        )


@pytest.mark.torch
def test_strided_tensors_through_the_rust_road():
    import torch

    q, k, v = (torch.tensor(x).transpose(1, 2) for x in qkv((2, 5, 3, 4), 6))
    w = orthogonal_random_matrix(8, 4, seed=1)
    want = linear_attention(*(x.contiguous().numpy() for x in (q, k, v)), causal=True, projection=w)
    got = linear_attention(q, k, v, causal=True, projection=w)
    np.testing.assert_array_equal(got.numpy(), want)


def test_states_saved_before_the_running_maximum_still_load(tmp_path):
    n, d, m, dv = 40, 16, 32, 16
    q, k, v = qkv((1, 2, n, d), dv, np.float64, seed=2)
    w = orthogonal_random_matrix(m, d, seed=1)
    full = linear_attention(q, k, v, causal=True, projection=w)
    state = CausalState(projection=w)
    state.update(q[:, :, :25], k[:, :, :25], v[:, :, :25])
    path = tmp_path / "state.npz"
    state.save(path)
    # a file of the earlier format: the sums under the constant max |ω|²/2, no scale
    with np.load(path) as f:
        fields = dict(f)
    bound = (w * w).sum(1).max() / 2
    fields["kv"] = state.kv * np.exp(state.scale - bound)[..., None, None]
    del fields["scale"]
    np.savez(path, **fields)
    old = CausalState.load(path)
    tail = old.update(q[:, :, 25:], k[:, :, 25:], v[:, :, 25:])
    assert np.abs(tail - full[:, :, 25:]).max() <= 1e-12 * np.abs(full).max()
    np.testing.assert_array_equal(old.scale, np.full((1, 2), bound))
