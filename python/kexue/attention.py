"""Linear attention: FAVOR+ and other feature maps, causal/non-causal forms, streaming state.

Linear attention replaces ``softmax(q·k)`` by ``φ(q)·φ(k)`` and reorders the product, so
causal attention becomes a recurrence over the state ``S = Σ φ(k) vᵀ``, ``z = Σ φ(k)``:
``o_t = φ(q_t)ᵀ S_t / φ(q_t)ᵀ z_t`` (Katharopoulos et al. 2020). FAVOR+
(Choromanski et al. 2021) picks the random features with ``E[φ(q)·φ(k)] = exp(q·k/√D)``, so it
approximates softmax attention; Su (kexue.fm/archives/8338) argues the plain ``exp`` of a
learned projection is the natural choice. See ``docs/linear_attention.md`` of the project.

Layout is ``(batch, heads, seq, dim)``. Arrays go to Rust (GIL released, rayon over batch ×
heads); CPU torch tensors go through Rust forward *and* backward; other devices (or inside
:func:`kexue.torch_fallback`) run the same maths in torch.

Stabilisers and ``eps``: the features are exponentials, so each side is shifted by a
stabiliser that cancels in the ratio. Queries use their own per-token max. Keys of the
``exp``-family maps (FAVOR+, ``exp``) without a ``key_offset`` use, in causal attention, the
*running maximum* ``c_t`` of the key logits seen so far (``ωᵀk' − |k'|²/2`` for FAVOR+): when a
key raises it, the state is rescaled, ``S ← S·e^{c_{t−1}−c_t}``, ``z ← z·e^{c_{t−1}−c_t}``
(the online-softmax trick). Every road does this. Passes that map inside Rust (numpy inputs,
tensors without gradient, :class:`CausalState`) rescale per token in the recurrence and the
float32 decoder, and per chunk in the chunked form, whose chunks end where the maximum jumps
(a chunk ends before a key more than 8 above its stabiliser). The gradient road (CPU tensors
that need a gradient) maps each key under its own largest logit, and the Rust pass then
follows those logits' running maximum with the same chunks, forward and backward (the
stabilisers are constants to the gradient: the outputs do not depend on them). The pure-torch
road weighs key ``s`` in query ``t``'s sum by ``e^{c_s−c_t} ≤ 1`` inside fixed chunks and
brings the carried state to ``c_t``. In each case ``c_t`` depends on keys up to ``t`` only, so
outputs up to ``t`` depend on nothing after ``t``, bitwise. The largest key feature seen is
``1/√m`` (at most ``e^8/√m`` inside a chunk): nothing overflows, whatever the scale of the
inputs, and only keys ``e^{-87}`` (float32) below the largest one seen underflow, where their
share of the sums is below float32's rounding anyway.

The stabiliser is exact: rescaling multiplies numerator and denominator alike, and ``eps`` is
relative: the denominator is ``(1 + eps)·φ(q)ᵀz``, so ``eps`` changes every output by the
factor ``1/(1 + eps)`` whatever ``m``, ``D`` or the scale of the inputs (the absolute ``+ eps``
it replaces swamped the whole estimate: FAVOR+ key features are around ``e^(−D/2)`` under a
fixed bound). A causal state carries its stabiliser (:attr:`CausalState.scale`). A given
``key_offset`` is one constant stabiliser for every key (as are the maps other than FAVOR+ and
``exp``, which need none). Non-causal attention uses the sequence maximum.
The global max of google-research / performer-pytorch instead leaks future keys into past
outputs. Where the denominator is 0 (every feature product 0: padding, ``relu``) the output is
0.

Precision: the Rust kernels keep the state in float64 (the chunked form adds each chunk's
float32 ``Kᵀ V`` into it); float32 decoding steps a float32 copy of it and adds the last 64
tokens' float32 ``Kᵀ V`` into the float64 state (see :class:`CausalState`); the pure-torch
road accumulates in the input dtype.

Speed: a named feature map on a causal pass that needs no gradient (numpy, or tensors under
``torch.no_grad``) runs inside the Rust pass, chunk by chunk, so the feature arrays are never
written out; :meth:`CausalState.update` maps and steps a token in one Rust call, with the set-up
(``scale·Ωᵀ``, feature constants) prepared once per state.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from typing import Any, TypeGuard

import numpy as np

from . import _native
from ._dispatch import Kernel, _force_torch, check_float, check_int, check_scalar, is_tensor

__all__ = [
    "FEATURE_MAPS",
    "CausalState",
    "favor_features",
    "feature_map",
    "linear_attention",
    "orthogonal_random_matrix",
    "softmax_attention",
    "stream",
]

#: Names accepted by ``feature_map=``; a callable applied to both q and k also works.
FEATURE_MAPS = ("favor+", "favor+hyperbolic", "exp", "elu+1", "relu", "identity")
_FAVOR = ("favor+", "favor+hyperbolic")
_METHODS = ("chunked", "scan", "quadratic")
_FLOATS = (np.float32, np.float64)

FeatureMap = str | Callable[[Any], Any]


def orthogonal_random_matrix(
    m: int, d: int, *, seed: int, scaling: str | int = "chi", dtype: Any = np.float64
) -> np.ndarray:
    """An ``(m, d)`` FAVOR+ projection: blocks of ``d`` orthogonal rows (Gram–Schmidt of
    Gaussian blocks), drawn from ``seed`` (same seed, same matrix, whatever the thread count).

    Args:
        m: number of random features (rows), ``>= 1``; ``m > d`` stacks independent blocks.
        d: the query/key dimension.
        seed: non-negative int.
        scaling: ``"chi"`` (or ``0``): row lengths drawn from the χ_d law, so each row is
            marginally ``N(0, I)`` and the softmax-kernel estimate stays unbiased;
            ``"sqrt"`` (or ``1``): every row has length ``√d`` (performer-pytorch's
            ``ortho_scaling``).
        dtype: float32 or float64.

    Example:
        >>> from kexue.attention import orthogonal_random_matrix
        >>> w = orthogonal_random_matrix(4, 4, seed=0, scaling="sqrt")
        >>> bool(np.allclose(w @ w.T, 4 * np.eye(4)))
        True
    """
    m, d = check_int(m, "m", low=1), check_int(d, "d", low=1)
    seed = check_int(seed, "seed", low=0)
    names = {0: "chi", 1: "sqrt", "chi": "chi", "sqrt": "sqrt"}
    if isinstance(scaling, bool) or scaling not in names:
        raise ValueError(f"scaling must be 'chi' (0) or 'sqrt' (1), got {scaling!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    w = _native.attention_orthogonal_random(int(m), int(d), int(seed), names[scaling])
    return w.astype(dtype, copy=False)


# --- feature maps ------------------------------------------------------------------------


def _torch_features(
    x: Any,
    projection: Any,
    *,
    feature_map: str,
    is_query: bool,
    offset: float | None,
    row_max: bool = False,
) -> Any:
    import torch

    favor = feature_map in _FAVOR
    d = x.shape[-1]
    if projection is None:
        u = x
    else:
        u = (x * d**-0.25 if favor else x) @ projection.T
    if favor:
        hyp = feature_map == "favor+hyperbolic"
        top = (u.abs() if hyp else u).amax(-1, keepdim=True)
        if is_query:
            shift = top
        else:
            norm = (x * x).sum(-1, keepdim=True) / (2 * math.sqrt(d))
            if row_max:
                c = top.detach() - norm.detach()
                shift = norm + c
            else:
                shift = norm + _fixed_key_offset(feature_map, projection, offset)
        parts = [u, -u] if hyp else [u]
        phi = torch.exp(torch.cat(parts, -1) - shift)
        phi = phi / math.sqrt(phi.shape[-1])
        return (phi, c[..., 0]) if row_max else phi
    if feature_map == "exp":
        top = u.amax(-1, keepdim=True)
        # a query's shift is part of its features (differentiated, as on the Rust road); a
        # key's row max is a stabiliser the caller takes back out (a constant)
        shift = top if is_query else top.detach() if row_max else (offset or 0.0)
        phi = torch.exp(u - shift)
        return (phi, top[..., 0].detach()) if row_max else phi
    if feature_map == "elu+1":
        return torch.nn.functional.elu(u) + 1
    if feature_map == "relu":
        return torch.relu(u)
    return u


def _fixed_key_offset(fmap: FeatureMap, projection: Any, key_offset: float | None) -> float:
    """The constant key stabiliser: ``key_offset``, else ``max_i |ω_i|²/2`` for FAVOR+, else 0."""
    if key_offset is not None:
        return float(key_offset)
    if fmap not in _FAVOR:
        return 0.0
    if is_tensor(projection):
        projection = projection.detach().cpu().double().numpy()
    return float((np.asarray(projection, dtype=np.float64) ** 2).sum(-1).max()) / 2


def _features_backward(
    inputs: tuple,
    outputs: tuple,
    grads: tuple,
    *,
    feature_map: str,
    is_query: bool,
    offset: Any,
    row_max: bool = False,
) -> tuple:
    x, projection = inputs
    dx = _native.attention_features_backward(
        x, feature_map, projection, is_query, outputs[0], grads[0]
    )
    return dx, None


_features = Kernel(
    lambda x, projection, *, feature_map, is_query, offset, row_max=False: (
        _native.attention_features_forward(x, feature_map, projection, is_query, offset, row_max)
    ),
    _features_backward,
    torch_forward=_torch_features,
)


def _like(projection: Any, x: Any) -> Any:
    """The projection as an array/tensor of ``x``'s kind, dtype and device."""
    if projection is None:
        return None
    if is_tensor(x):
        import torch

        if is_tensor(projection):
            return projection.detach().to(dtype=x.dtype, device=x.device).contiguous()
        return torch.as_tensor(np.asarray(projection), dtype=x.dtype, device=x.device)
    if is_tensor(projection):
        projection = projection.detach().cpu().numpy()
    return np.ascontiguousarray(projection, dtype=x.dtype)


def _check_projection(projection: Any, d: int, feature_map: FeatureMap) -> Any:
    if projection is None:
        if feature_map in _FAVOR:
            raise ValueError(
                f"projection is required by feature_map={feature_map!r}: pass "
                "orthogonal_random_matrix(m, d, seed=...)"
            )
        return None
    projection = check_float(projection, "projection", finite=True, ndim=2)
    if projection.shape[1] != d:
        raise ValueError(
            f"projection must have shape (m, {d}) to match the last dimension of q/k, "
            f"got {tuple(projection.shape)}"
        )
    if projection.shape[0] < 1:
        raise ValueError("projection must have a positive number of features (rows), got 0")
    return projection


def feature_map(
    x: Any,
    name: str,
    projection: Any = None,
    *,
    is_query: bool,
    key_offset: float | None = None,
) -> Any:
    """Applies feature map ``name`` (one of :data:`FEATURE_MAPS`) to the last axis of ``x``.

    ``projection`` (``(m, d)``) is required by the FAVOR+ maps and optional for the others
    (``u = x Ωᵀ`` first). ``key_offset`` is the key stabiliser constant (``exp``: 0 by
    default). FAVOR+ keys without one are stabilised by their largest logit over the sequence
    axis (−2) of each leading index, as Performer's reference code does: each sequence's
    largest feature is ``1/√m``, where the data-independent bound ``max_i |ω_i|²/2`` leaves
    float32 features of D ≥ 128 at 0 (pass it as ``key_offset`` for a constant across calls,
    as streaming needs). Differentiable w.r.t. ``x`` (projection and stabilisers are constants).

    Example:
        >>> from kexue.attention import feature_map
        >>> feature_map(np.array([[-1.0, 0.0, 2.0]]), "elu+1", is_query=True)
        array([[0.36787944, 1.        , 3.        ]])
    """
    if name not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS} or a callable, got {name!r}")
    x = check_float(x, "x")
    if x.ndim < 1:
        raise ValueError("x must have at least 1 dimension, got a 0-d array")
    projection = _like(_check_projection(projection, x.shape[-1], name), x)
    if name == "identity" and projection is None:
        return x
    if key_offset is not None:
        key_offset = check_scalar(key_offset, "key_offset")
    elif not is_query and name in _FAVOR:
        rows = x if x.ndim > 1 else x[None]
        phi = _sequence_max_keys(rows, projection, name, None)
        return phi if x.ndim > 1 else phi[0]
    return _features(x, projection, feature_map=name, is_query=bool(is_query), offset=key_offset)


def favor_features(
    x: Any,
    projection: Any,
    *,
    is_query: bool,
    hyperbolic: bool = False,
    key_offset: float | None = None,
) -> Any:
    """FAVOR+ positive random features: ``φ(x) = exp(Ωx' − |x'|²/2 − c)/√m``, ``x' = x·d^(−1/4)``,
    so that ``E[φ(q)·φ(k)] = exp(q·k/√d)`` for ``Ω`` with ``N(0, I)`` rows.

    ``c`` is the stabiliser: for queries (``is_query=True``) each row's own max (it cancels in
    attention, and the query-side ``|q'|²/2`` is dropped with it); for keys one constant per
    sequence, by default the largest key logit along axis −2 (each sequence's largest feature
    is ``1/√m``; see :func:`feature_map`), or ``key_offset``. For the unbiased kernel estimate
    itself use keys and queries both with ``is_query=False`` and ``key_offset=0``.
    ``hyperbolic=True`` returns the ``2m`` features of ``±Ωx'``.

    Example:
        >>> from kexue.attention import favor_features, orthogonal_random_matrix
        >>> w = orthogonal_random_matrix(16, 4, seed=1)
        >>> phi = favor_features(np.ones((2, 4)), w, is_query=False)
        >>> phi.shape, bool((phi > 0).all() and (phi <= 1).all())
        ((2, 16), True)
    """
    name = "favor+hyperbolic" if hyperbolic else "favor+"
    return feature_map(x, name, projection, is_query=is_query, key_offset=key_offset)


# --- attention kernels ---------------------------------------------------------------------


def _torch_scan(
    q: Any,
    k: Any,
    v: Any,
    state: Any,
    *,
    eps: float,
    chunk_size: int,
    kmax: Any = None,
    scale: Any = None,
) -> tuple:
    """Chunked causal linear attention in torch ops, from and to ``state`` (or zeros): returns
    ``(o, den, state, scale)``.

    With ``kmax`` (each key row stabilised by its own largest logit, ``(B, H, N)``) the keys
    are taken under the running maximum ``r_t`` of ``kmax``, per query: inside a chunk key
    ``s`` enters query ``t``'s sum with the weight ``exp(kmax_s − r_t) ≤ 1`` (zero above the
    diagonal) and the carried state with ``exp(r_before − r_t)``; the state leaves the chunk
    under the chunk's last ``r``. ``r_t`` depends on keys up to ``t`` only, so the form stays
    bitwise causal; ``scale`` (``(B, H)``) is the given state's stabiliser (``−∞``: empty)."""
    import torch

    b, h, n, m = q.shape
    dv = v.shape[-1]
    vp = torch.cat([v, v.new_ones(b, h, n, 1)], -1)
    s = q.new_zeros(b, h, m, dv + 1) if state is None else state.to(q.dtype)
    c = max(1, min(chunk_size, n))
    keep = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    if kmax is not None:
        kmax = kmax.detach().to(q.dtype)
        before = q.new_full((b, h, 1), -math.inf) if scale is None else scale.to(q.dtype)[..., None]
    ys = []
    for c0 in range(0, n, c):
        qc, kc, vc = q[..., c0 : c0 + c, :], k[..., c0 : c0 + c, :], vp[..., c0 : c0 + c, :]
        length = qc.shape[-2]
        a = qc @ kc.transpose(-1, -2)
        inter = qc @ s
        if kmax is not None:
            top = kmax[..., c0 : c0 + length]
            r = torch.maximum(torch.cummax(top, -1).values, before)
            gap = torch.where(keep[:length, :length], top[..., None, :] - r[..., None], -math.inf)
            a = a * torch.exp(gap)
            inter = inter * torch.exp(before - r)[..., None]
            end = r[..., -1:]
            s = (
                s * torch.exp(before - end)[..., None]
                + (kc * torch.exp(top - end)[..., None]).transpose(-1, -2) @ vc
            )
            before = end
        else:
            s = s + kc.transpose(-1, -2) @ vc
        a = torch.where(keep[:length, :length], a, a.new_zeros(()))
        ys.append(a @ vc + inter)
    y = torch.cat(ys, -2) if ys else q.new_zeros(b, h, 0, dv + 1)
    den = y[..., dv] * (1 + eps)
    new_scale = None if kmax is None else before[..., 0]
    return _divide(y[..., :dv], den), den, s, new_scale


def _torch_causal(
    q: Any, k: Any, v: Any, kmax: Any, *, eps: float, method: str, chunk_size: int
) -> tuple:
    o, den, _, _ = _torch_scan(q, k, v, None, eps=eps, chunk_size=chunk_size, kmax=kmax)
    return o, den


def _torch_noncausal(q: Any, k: Any, v: Any, *, eps: float) -> tuple:
    import torch

    vp = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], -1)
    y = q @ (k.transpose(-1, -2) @ vp)
    den = y[..., -1] * (1 + eps)
    return _divide(y[..., :-1], den), den


def _divide(y: Any, den: Any) -> Any:
    """``y / den`` by rows, 0 where ``den`` is 0 (and no NaN in the gradient there)."""
    import torch

    zero = den == 0
    return torch.where(zero[..., None], y.new_zeros(()), y / torch.where(zero, 1, den)[..., None])


# outputs (o, den) and their grads: the pairs every attention kernel returns and receives.
_Pair = tuple[Any, Any]


def _causal_backward(
    inputs: tuple[Any, Any, Any, Any],
    outputs: _Pair,
    grads: _Pair,
    *,
    eps: float,
    method: str,
    chunk_size: int,
) -> tuple:
    q, k, v, kmax = inputs
    grad = _native.attention_causal_backward(
        q, k, v, *outputs, *grads, method, chunk_size, eps, kmax
    )
    return (*grad, None)  # the stabilisers are constants: the outputs do not depend on them


_causal = Kernel(
    lambda q, k, v, kmax, *, eps, method, chunk_size: _native.attention_causal_forward(
        q, k, v, eps, method, chunk_size, None, kmax
    ),
    _causal_backward,
    torch_forward=_torch_causal,
)


def _noncausal_backward(
    inputs: tuple[Any, Any, Any], outputs: _Pair, grads: _Pair, *, eps: float
) -> tuple[Any, Any, Any]:
    return _native.attention_noncausal_backward(*inputs, *outputs, *grads, eps)


_noncausal = Kernel(
    lambda q, k, v, *, eps: _native.attention_noncausal_forward(q, k, v, eps),
    _noncausal_backward,
    torch_forward=_torch_noncausal,
)


def _check_qkv(q: Any, k: Any, v: Any, *, causal: bool) -> tuple:
    # No finiteness pass over the inputs (numpy semantics: NaN propagates); the chunked
    # kernel refuses a non-finite v, the one place where it could leak into earlier outputs.
    q = check_float(q, "q", ndim=4)
    k = check_float(k, "k", ndim=4)
    v = check_float(v, "v", ndim=4)
    kinds = {is_tensor(x) for x in (q, k, v)}
    if len(kinds) != 1:
        raise TypeError("q, k and v must be all numpy arrays or all torch tensors")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if tuple(k.shape[:2]) != tuple(q.shape[:2]) or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"k must have q's batch, heads and dim {tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if tuple(v.shape[:3]) != tuple(k.shape[:3]):
        raise ValueError(
            f"v must have k's batch, heads and seq {tuple(k.shape)}, got {tuple(v.shape)}"
        )
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(
            f"causal attention needs as many keys as queries, got {q.shape[2]} and {k.shape[2]}"
        )
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"q and k must have a sequence length >= 1, got {q.shape} / {k.shape}")
    if v.shape[3] == 0 or q.shape[3] == 0:
        raise ValueError("q, k and v must have a non-empty last dimension")
    return q, k, v


def _check_mask(mask: Any, x: Any, name: str) -> Any:
    """A boolean ``(batch, seq)`` keep-mask of ``x``'s kind, or None."""
    if mask is None:
        return None
    want = (x.shape[0], x.shape[2])
    if is_tensor(x):
        import torch

        mask = torch.as_tensor(mask, device=x.device)
        ok = mask.dtype == torch.bool or not mask.is_floating_point()
        mask = mask.bool() if ok else mask
    else:
        mask = np.asarray(mask)
        ok = mask.dtype.kind in "biu"
        mask = mask.astype(bool) if ok else mask
    if not ok:
        raise TypeError(f"{name} must be a boolean (or 0/1 integer) array, got {mask.dtype}")
    if tuple(mask.shape) != want:
        raise ValueError(f"{name} must have shape (batch, seq) = {want}, got {tuple(mask.shape)}")
    return mask


def _where(mask: Any, x: Any, fill: float = 0.0) -> Any:
    """``x`` with the rows of masked-out positions set to ``fill`` (a select, so no NaN
    leaks)."""
    if mask is None:
        return x
    if is_tensor(x):
        import torch

        return torch.where(mask[:, None, :, None], x, x.new_full((), fill))
    return np.where(mask[:, None, :, None], x, x.dtype.type(fill))


#: The key logit of a padded position: below any real one, and finite (a stabiliser of -inf
#: would make ``exp(-inf - -inf)``).
_PADDED = -1e30


def _apply_map(
    fmap: FeatureMap, x: Any, projection: Any, *, is_query: bool, key_offset: float | None
) -> Any:
    if callable(fmap):
        return check_float(fmap(x), "feature_map(x)", ndim=x.ndim)
    return feature_map(x, fmap, projection, is_query=is_query, key_offset=key_offset)


def _check_method(method: str, chunk_size: int) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    check_int(chunk_size, "chunk_size", low=1, high=_native.ATTENTION_MAX_CHUNK)


def linear_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: bool,
    feature_map: FeatureMap = "favor+",
    projection: Any = None,
    mask: Any = None,
    eps: float = 1e-6,
    method: str = "chunked",
    chunk_size: int = 64,
    key_offset: float | None = None,
) -> Any:
    """Linear attention ``o_t = φ(q_t)ᵀ S_t / ((1 + eps)·φ(q_t)ᵀ z_t)`` on ``(B, H, N, D)``.

    Args:
        q, k: ``(B, H, Nq, D)`` and ``(B, H, Nk, D)`` float32/float64 arrays or tensors
            (``Nq == Nk`` when causal, both ``>= 1``).
        v: ``(B, H, Nk, Dv)``.
        causal: position ``t`` attends to keys ``<= t`` only; outputs up to ``t`` do not depend
            on anything after ``t`` (bitwise, for finite inputs; see the module doc).
        feature_map: one of :data:`FEATURE_MAPS` or a callable applied to q and k
            (already-mapped, non-negative features: pass ``"identity"``).
        projection: ``(m, D)`` random projection, required by FAVOR+ (see
            :func:`orthogonal_random_matrix`), optional for the others; a constant (no
            gradient). Keep it fixed for a sequence: it is part of the decoding state.
        mask: ``(B, N)`` boolean keep-mask (False = padding). Padded keys leave numerator and
            denominator (masked after φ); padded query positions output 0.
        eps: relative, ``>= 0``: the denominator is ``(1 + eps)·φ(q)ᵀz``, so ``eps`` scales
            every output by ``1/(1 + eps)`` whatever the scale of the features (see the module
            doc); outputs are 0 where ``φ(q)ᵀz`` is 0.
        method: causal schedule: ``"chunked"`` (default; blocks of ``chunk_size``),
            ``"scan"`` (token recurrence, f64 state) or ``"quadratic"`` (the masked parallel
            form, O(N²), a reference). All agree to rounding; the state is accumulated in f64.
        key_offset: a constant key stabiliser in place of the running (causal) or sequence
            (non-causal) maximum of the key logits (see the module doc and
            :func:`favor_features`); it cancels exactly, so it only moves the floating-point
            range.

    Returns:
        ``(B, H, Nq, Dv)``, same kind and dtype as ``q``. Differentiable for tensors (the CPU
        backward runs in Rust).

    Example:
        >>> import numpy as np
        >>> from kexue.attention import linear_attention, orthogonal_random_matrix
        >>> rng = np.random.default_rng(0)
        >>> q, k, v = (rng.standard_normal((1, 2, 5, 4)) for _ in range(3))
        >>> w = orthogonal_random_matrix(8, 4, seed=0)
        >>> linear_attention(q, k, v, causal=True, projection=w).shape
        (1, 2, 5, 4)
    """
    q, k, v = _check_qkv(q, k, v, causal=causal)
    eps = check_scalar(eps, "eps", low=0.0)
    _check_method(method, chunk_size)
    if not callable(feature_map) and feature_map not in FEATURE_MAPS:
        raise ValueError(
            f"feature_map must be one of {FEATURE_MAPS} or a callable, got {feature_map!r}"
        )
    mask = _check_mask(mask, k, "mask")
    if mask is not None and not causal and q.shape[2] != k.shape[2]:
        raise ValueError("mask needs as many queries as keys; mask keys and queries separately")
    if causal and mask is None and _fused(feature_map, q, k, v):
        return _mapped_causal(
            q, k, v, feature_map, projection, key_offset, eps, method, int(chunk_size)
        )
    phq = _apply_map(feature_map, q, projection, is_query=True, key_offset=key_offset)
    kmax = None
    if key_offset is not None or feature_map not in (*_FAVOR, "exp"):
        phk = _apply_map(feature_map, k, projection, is_query=False, key_offset=key_offset)
    elif causal:
        # each key under its own largest logit; the pass follows their running maximum, which
        # padded keys do not raise
        phk, kmax = _row_max_keys(k, projection, feature_map)
        if mask is not None:
            kmax = _where(mask, kmax[..., None], _PADDED)[..., 0]
    else:
        phk = _sequence_max_keys(k, projection, feature_map, mask)
    phk = _where(mask, phk)
    if causal:
        o, _ = _causal(phq, phk, v, kmax, eps=eps, method=method, chunk_size=int(chunk_size))
    else:
        o, _ = _noncausal(phq, phk, v, eps=eps)
    return _where(mask, o)


def _row_max_keys(k: Any, projection: Any, fmap: str) -> tuple:
    """``(features, largest logits)`` of keys each stabilised by its own largest logit (so
    each row's largest feature is ``1/√m``)."""
    projection = _like(_check_projection(projection, k.shape[-1], fmap), k)
    return _features(k, projection, feature_map=fmap, is_query=False, offset=None, row_max=True)


def _sequence_max_keys(k: Any, projection: Any, fmap: str, mask: Any) -> Any:
    """Key features under the largest key logit of each sequence (non-causal attention): the
    largest feature of a sequence is ``1/√m`` whatever the scale of its keys."""
    phk, top = _row_max_keys(k, projection, fmap)
    if is_tensor(k):
        import torch

        top = top.detach().to(k.dtype)
        if mask is not None:
            top = torch.where(mask[:, None, :], top, float("-inf"))
        c = top.amax(-1, keepdim=True)
        c = torch.where(torch.isfinite(c), c, 0.0)
        return phk * torch.exp(top - c)[..., None]
    top = top.astype(k.dtype, copy=False)
    if mask is not None:
        top = np.where(mask[:, None, :], top, -np.inf)
    c = top.max(-1, keepdims=True)
    c = np.where(np.isfinite(c), c, 0.0)
    return phk * np.exp(top - c)[..., None]


def _fused(fmap: FeatureMap, *xs: Any) -> TypeGuard[str]:
    """Whether the feature map can run inside the Rust causal pass: a named map (hence the
    TypeGuard), and numpy inputs or CPU tensors that need no gradient (the pass keeps no
    features for backward)."""
    if callable(fmap):
        return False
    if not is_tensor(xs[0]):
        return True
    import torch

    grad = torch.is_grad_enabled() and any(x.requires_grad for x in xs)
    return xs[0].device.type == "cpu" and not _force_torch.get() and not grad


def _mapped_causal(
    q: Any,
    k: Any,
    v: Any,
    fmap: str,
    projection: Any,
    key_offset: float | None,
    eps: float,
    method: str,
    chunk_size: int,
    state: Any = None,
) -> Any:
    """Causal linear attention with ``fmap`` applied inside one Rust pass (no feature arrays)."""
    w = _like(_check_projection(projection, q.shape[-1], fmap), q)
    if key_offset is not None:
        key_offset = check_scalar(key_offset, "key_offset")
    qa, ka, va, wa = (x.detach().contiguous().numpy() if is_tensor(x) else x for x in (q, k, v, w))
    o, _ = _native.attention_causal_mapped_forward(
        qa, ka, va, fmap, wa, key_offset, eps, method, chunk_size, state
    )
    return _to_kind(o, q)


def softmax_attention(
    q: Any, k: Any, v: Any, *, causal: bool, mask: Any = None, scale: float | None = None
) -> Any:
    """Exact ``softmax(q·kᵀ·scale [+ masks]) v`` (``scale`` defaults to ``1/√D``): the reference
    FAVOR+ approximates. numpy inputs are computed in float64 (returned in their dtype); tensors
    with torch ops (differentiable). Padded query positions output 0.

    Example:
        >>> from kexue.attention import softmax_attention
        >>> q = k = v = np.eye(2).reshape(1, 1, 2, 2)
        >>> softmax_attention(q, k, v, causal=True)[0, 0, 0]
        array([1., 0.])
    """
    q, k, v = _check_qkv(q, k, v, causal=causal)
    mask = _check_mask(mask, k, "mask")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else check_scalar(scale, "scale")
    if is_tensor(q):
        return _torch_softmax_attention(q, k, v, causal=causal, mask=mask, scale=scale)
    nq, nk = q.shape[2], k.shape[2]
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    logits = np.einsum("bhid,bhjd->bhij", q64, k64) * scale
    keep = np.ones((nq, nk), dtype=bool)
    keep = np.tril(keep, nk - nq) if causal else keep
    keep = keep if mask is None else keep & mask[:, None, None, :]
    logits = np.where(keep, logits, -np.inf)
    top = logits.max(-1, keepdims=True)
    e = np.where(keep, np.exp(logits - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = e.sum(-1, keepdims=True)
    out = (e / np.where(total > 0, total, 1.0)) @ v64
    out = _where(mask, out) if nq == nk else out
    return out.astype(q.dtype)


def _torch_softmax_attention(
    q: Any, k: Any, v: Any, *, causal: bool, mask: Any, scale: float
) -> Any:
    import torch

    nq, nk = q.shape[2], k.shape[2]
    logits = (q @ k.transpose(-1, -2)) * scale
    keep = torch.ones(nq, nk, dtype=torch.bool, device=q.device)
    keep = keep.tril(nk - nq) if causal else keep
    keep = keep if mask is None else keep & mask[:, None, None, :]
    logits = logits.masked_fill(~keep, float("-inf"))
    w = torch.nan_to_num(torch.softmax(logits, -1), nan=0.0)
    return _where(mask, w @ v) if nq == nk else w @ v


# --- streaming ----------------------------------------------------------------------------


class CausalState:
    """The running state of causal linear attention, for prefill and step-by-step decoding.

    Holds ``S`` and ``z`` as one float64 array ``kv`` of shape ``(B, H, M, Dv + 1)`` (``z`` is
    the last column), their key stabiliser ``scale`` (``(B, H)`` float64: the sums of the
    unstabilised key features are ``exp(scale)·kv``; the running maximum of the key logits
    for FAVOR+ and ``exp``, see the module doc), the number of tokens seen, and the feature
    map with its projection (fixed for the whole sequence). :meth:`update` costs O(M·Dv) per
    token per head, whatever the position. Save/restore with :meth:`copy`, :meth:`save` and
    :meth:`load`.

    Decoding float32 tokens one at a time (a named feature map, M and Dv multiples of 16,
    numpy arrays or CPU tensors) steps a float32 working copy of the state, half the bytes of
    float64, and adds the buffered tokens' float32 ``Kᵀ V`` into the float64 ``kv`` every 64
    tokens, re-rounding the copy from it: the copy is never more than 64 float32 additions
    from the rounded float64 state, however long the sequence.
    Reading ``kv`` brings it up to date (and the next step reads it back, so it may be
    changed in place); float64 tokens step the float64 state itself.

    Example:
        >>> import numpy as np
        >>> from kexue.attention import CausalState, linear_attention
        >>> rng = np.random.default_rng(0)
        >>> q, k, v = (rng.standard_normal((1, 2, 6, 4)) for _ in range(3))
        >>> state = CausalState(feature_map="elu+1")
        >>> head = state.update(q[:, :, :4], k[:, :, :4], v[:, :, :4])  # prefill
        >>> tail = [state.update(q[:, :, t], k[:, :, t], v[:, :, t]) for t in (4, 5)]
        >>> full = linear_attention(q, k, v, causal=True, feature_map="elu+1")
        >>> bool(np.allclose(full[:, :, 5], tail[1]))
        True
    """

    def __init__(
        self,
        *,
        feature_map: FeatureMap = "favor+",
        projection: Any = None,
        eps: float = 1e-6,
        key_offset: float | None = None,
        chunk_size: int = 64,
    ) -> None:
        if not callable(feature_map) and feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"feature_map must be one of {FEATURE_MAPS} or a callable, got {feature_map!r}"
            )
        if feature_map in _FAVOR and projection is None:
            raise ValueError(f"projection is required by feature_map={feature_map!r}")
        _check_method("chunked", chunk_size)
        self.feature_map = feature_map
        self.projection = projection
        self.eps = check_scalar(eps, "eps", low=0.0)
        self.key_offset = None if key_offset is None else check_scalar(key_offset, "key_offset")
        self.chunk_size = int(chunk_size)
        self.kv = None
        self.scale = None
        self.position = 0
        self._projections: dict = {}
        # (state shape, d) the float32 decoder was refused for (feature/value counts)
        self._misfit: tuple | None = None

    @property
    def kv(self) -> Any:
        """The state ``[S | z]``, ``(B, H, M, Dv + 1)``: float64 numpy (a tensor of the inputs'
        dtype on the torch road), None before the first token."""
        if self._decoder is not None:
            self._decoder.flush()
        return self._kv

    @kv.setter
    def kv(self, value: Any) -> None:
        self._kv = value
        self._decoder: Any = None

    @property
    def scale(self) -> Any:
        """The key stabiliser of each head's sums, ``(B, H)`` float64: ``exp(scale)·kv`` are the
        sums of the unstabilised key features (``-inf`` before the first key). None before the
        first token."""
        if self._decoder is not None:
            self._decoder.flush()
        return self._scale

    @scale.setter
    def scale(self, value: Any) -> None:
        self._scale = value
        self._decoder = None

    def update(self, q: Any, k: Any, v: Any) -> Any:
        """Consumes ``T`` tokens, ``(B, H, T, D)`` (or one token ``(B, H, D)``), and returns their
        outputs in the same layout. Not differentiable (decoding); the state changes in place."""
        if self._decoder is not None:
            # Decoding: the decoder takes one float32 token of this state's shape (and says
            # None to anything else, which the general road below checks and handles); CPU
            # tensors as zero-copy arrays.
            if is_tensor(q):
                if q.device.type != "cpu" or _force_torch.get() or not is_tensor(k):
                    o = None
                else:
                    import torch

                    arrays = [(x.detach() if x.requires_grad else x).numpy() for x in (q, k, v)]
                    o = self._decoder.step(*arrays)
                    o = None if o is None else torch.from_numpy(o)
            else:
                o = self._decoder.step(q, k, v)
            if o is not None:
                self.position += 1
                return o
        if (
            type(q) is np.ndarray
            and type(k) is np.ndarray
            and type(v) is np.ndarray
            and q.ndim == 3
            and q.dtype in _FLOATS
            and q.flags.c_contiguous
            and k.flags.c_contiguous
            and v.flags.c_contiguous
            and not callable(self.feature_map)
        ):
            # Decoding one token from float arrays: the Rust call checks shapes and dtypes
            # (the general checks below cost more than the step itself).
            o = self._step(self.feature_map, q[:, :, None], k[:, :, None], v[:, :, None])
            self.position += 1
            return o[:, :, 0]
        single = getattr(q, "ndim", np.ndim(q)) == 3
        if single:
            q, k, v = (x[:, :, None] for x in (q, k, v))
        q, k, v = _check_qkv(q, k, v, causal=True)
        if is_tensor(q):
            q, k, v = q.detach(), k.detach(), v.detach()
        torch_road = is_tensor(q) and (q.device.type != "cpu" or _force_torch.get())
        if callable(self.feature_map) or torch_road:
            o = self._update_mapped_first(q, k, v, torch_road)
        else:
            arrays = [x.contiguous().numpy() if is_tensor(x) else x for x in (q, k, v)]
            o = _to_kind(self._step(self.feature_map, *arrays), q)
        self.position += q.shape[2]
        return o[:, :, 0] if single else o

    def _step(self, fmap: str, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """One Rust call maps q and k and advances the state (decoding calls this per token);
        ``fmap`` is ``self.feature_map``, a named map (the Rust pass takes no callable)."""
        if self._decoder is not None and q.shape[2] == 1:
            # a strided token: the decoder continues (reading kv would fold it early)
            o = self._decoder.step(*(np.ascontiguousarray(x[:, :, 0]) for x in (q, k, v)))
            if o is not None:
                return o[:, :, None]
        w = self._projection(q)
        m = q.shape[-1] if w is None else w.shape[0]
        m = 2 * m if fmap == "favor+hyperbolic" else m
        self._check_continues((q.shape[0], q.shape[1], m, v.shape[-1] + 1))
        if q.shape[2] == 1 and q.dtype == np.float32:
            decoder = self._float32_decoder(fmap, w, q.shape[-1])
            o = None if decoder is None else decoder.step(q[:, :, 0], k[:, :, 0], v[:, :, 0])
            if o is not None:
                return o[:, :, None]
        o, _ = _native.attention_causal_mapped_forward(
            q,
            k,
            v,
            fmap,
            w,
            self.key_offset,
            self.eps,
            "scan" if q.shape[2] <= 16 else "chunked",
            self.chunk_size,
            self._kv,
            self._scale,
        )
        return o

    def _float32_decoder(self, fmap: str, w: Any, d: int) -> Any:
        """The float32 decoder of this state (made on first use), or None where it does not
        apply."""
        if self._decoder is None and self._misfit != (self._kv.shape, d):
            try:
                self._decoder = _native.AttentionDecoder(
                    fmap, w, self.key_offset, self.eps, d, self._kv, self._scale
                )
            except ValueError:
                self._misfit = (self._kv.shape, d)
        return self._decoder

    def _check_shape(self, want: tuple) -> None:
        if self.kv is not None and tuple(self.kv.shape) != want:
            raise ValueError(
                f"q, k, v do not continue this state: it holds (batch, heads, features, dv+1) = "
                f"{tuple(self.kv.shape)}, these give {want}"
            )

    def _check_continues(self, want: tuple) -> None:
        """Makes ``kv`` a float64 numpy state of shape ``want`` (zeros when new) and ``scale``
        its float64 stabilisers."""
        if type(self.kv) is np.ndarray and self.kv.shape == want and self._scale_fits():
            return
        self._check_shape(want)
        if self.kv is None:
            self.kv = np.zeros(want)
            # -inf: no key yet under a running maximum; else the constant stabiliser, so that
            # exp(scale)·kv is the plain sums on every road (the Rust pass leaves it as is)
            start = -np.inf if self._follows_key_max() else self._fixed_offset()
            self.scale = np.full(want[:2], start)
        elif is_tensor(self.kv):
            self.kv = self.kv.cpu().numpy().astype(np.float64)
        if not self._scale_fits():
            # a state from elsewhere (set by hand): its sums are under the constant stabiliser
            self.scale = np.full(self.kv.shape[:2], self._fixed_offset())

    def _follows_key_max(self) -> bool:
        """Whether keys are stabilised by their running maximum (FAVOR+ and exp with no
        ``key_offset``) rather than by a constant."""
        fmap = self.feature_map
        return not callable(fmap) and self.key_offset is None and fmap in (*_FAVOR, "exp")

    def _fixed_offset(self) -> float:
        return _fixed_key_offset(self.feature_map, self.projection, self.key_offset)

    def _scale_fits(self) -> bool:
        scale, kv = self._scale, self._kv
        return (
            type(scale) is np.ndarray
            and scale.dtype == np.float64
            and scale.shape == kv.shape[:2]
            and scale.flags.c_contiguous
        )

    def _update_mapped_first(self, q: Any, k: Any, v: Any, torch_road: bool) -> Any:
        """The update for callable maps and the torch road: features first, then the state."""
        fmap = self.feature_map
        # keys under their running maximum where the map has one
        if torch_road and isinstance(fmap, str) and self._follows_key_max():
            phk, kmax = _row_max_keys(k, self._projection(k), fmap)
        else:
            phk, kmax = self._features(k, False), None
        phq = self._features(q, True)
        want = (q.shape[0], q.shape[1], phq.shape[-1], v.shape[-1] + 1)
        if torch_road:
            import torch

            self._check_shape(want)
            # keys under a constant stabiliser where there is no running maximum to follow
            offset = self._fixed_offset()
            kv = scale = None
            if self.kv is not None:
                kv = torch.as_tensor(self.kv, device=q.device)
                held = np.full(want[:2], offset) if self.scale is None else self.scale
                scale = torch.as_tensor(np.asarray(held, dtype=np.float64), device=q.device)
                if kmax is None:
                    kv = kv * torch.exp(scale - offset).to(kv.dtype)[..., None, None]
            o, _, self.kv, scale = _torch_scan(
                phq, phk, v, kv, eps=self.eps, chunk_size=self.chunk_size, kmax=kmax, scale=scale
            )
            self.scale = np.full(want[:2], offset) if kmax is None else scale.cpu().double().numpy()
            return o
        self._check_continues(want)
        qa, ka, va = (x.contiguous().numpy() if is_tensor(x) else x for x in (phq, phk, v))
        method = "scan" if q.shape[2] <= 16 else "chunked"
        o, _ = _native.attention_causal_forward(
            qa, ka, va, self.eps, method, self.chunk_size, self.kv
        )
        return _to_kind(o, q)

    def _projection(self, x: Any) -> Any:
        """The projection validated and converted to ``x``'s kind and dtype, once per kind."""
        if self.projection is None:
            return None
        key = (x.dtype, getattr(x, "device", None), x.shape[-1])
        if key not in self._projections:
            w = _check_projection(self.projection, x.shape[-1], self.feature_map)
            self._projections[key] = _like(w, x)
        return self._projections[key]

    def _features(self, x: Any, is_query: bool) -> Any:
        """φ(x) for the callable maps and the torch road."""
        if callable(self.feature_map) or self.projection is None:
            return _apply_map(
                self.feature_map, x, self.projection, is_query=is_query, key_offset=self.key_offset
            )
        return _features(
            x,
            self._projection(x),
            feature_map=self.feature_map,
            is_query=is_query,
            offset=self.key_offset,
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickles the state itself: the float32 decoder's buffered tokens are folded into
        ``kv`` first, and the decoder (a native cache) is rebuilt on the next step."""
        state = dict(self.__dict__)
        state["_kv"], state["_scale"], state["_decoder"] = self.kv, self.scale, None
        return state

    def copy(self) -> CausalState:
        """An independent copy (the projection is shared: it is never modified)."""
        new = CausalState.__new__(CausalState)
        new.__dict__.update(self.__dict__)
        kv = self.kv
        new.kv = None if kv is None else kv.copy() if isinstance(kv, np.ndarray) else kv.clone()
        new.scale = None if self.scale is None else np.array(self.scale, dtype=np.float64)
        return new

    def save(self, path: str | os.PathLike) -> None:
        """Writes the state to ``path`` (``.npz``, temp file + rename); not for callable maps."""
        if callable(self.feature_map):
            raise ValueError("a state with a callable feature_map cannot be saved")
        kv = self.kv.cpu().numpy() if is_tensor(self.kv) else self.kv
        proj = self.projection
        proj = proj.detach().cpu().numpy() if is_tensor(proj) else proj
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    kv=np.zeros(0) if kv is None else kv,
                    has_kv=np.array(kv is not None),
                    scale=np.zeros(0) if self.scale is None else np.asarray(self.scale),
                    projection=np.zeros((0, 0)) if proj is None else np.asarray(proj),
                    has_projection=np.array(proj is not None),
                    feature_map=np.array(self.feature_map),
                    eps=np.array(self.eps),
                    key_offset=np.array(np.nan if self.key_offset is None else self.key_offset),
                    chunk_size=np.array(self.chunk_size),
                    position=np.array(self.position),
                )
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> CausalState:
        """Reads a state written by :meth:`save` (as numpy; a torch decode accepts it)."""
        with np.load(os.fspath(path), allow_pickle=False) as f:
            offset = float(f["key_offset"])
            state = cls(
                feature_map=str(f["feature_map"]),
                projection=f["projection"] if bool(f["has_projection"]) else None,
                eps=float(f["eps"]),
                key_offset=None if math.isnan(offset) else offset,
                chunk_size=int(f["chunk_size"]),
            )
            state.kv = np.array(f["kv"]) if bool(f["has_kv"]) else None
            # (files written before the running maximum have no scale: _check_continues
            # then gives their sums the constant stabiliser they were made with)
            scale = np.array(f["scale"], dtype=np.float64) if "scale" in f else None
            state.scale = scale if scale is not None and scale.size else None
            state.position = int(f["position"])
        return state


def _to_kind(a: np.ndarray, like: Any) -> Any:
    if is_tensor(like):
        import torch

        return torch.from_numpy(a)
    return a


def stream(
    q: Any,
    k: Any,
    v: Any,
    state: CausalState | None = None,
    *,
    feature_map: FeatureMap = "favor+",
    projection: Any = None,
    eps: float = 1e-6,
    key_offset: float | None = None,
) -> tuple:
    """Functional streaming: ``(outputs, new_state)`` for ``T`` more tokens after ``state``.

    ``state=None`` starts a sequence with the given feature map and projection; otherwise the
    state's own feature map and projection are used and ``state`` is left unchanged (its copy
    is updated). Use :meth:`CausalState.update` to update in place without the copy.

    Example:
        >>> from kexue.attention import stream
        >>> x = np.ones((1, 1, 3, 2))
        >>> out, state = stream(x, x, x, feature_map="relu")
        >>> out2, state2 = stream(x[:, :, 0], x[:, :, 0], x[:, :, 0], state)
        >>> state.position, state2.position, out2.shape
        (3, 4, (1, 1, 2))
    """
    if state is None:
        state = CausalState(
            feature_map=feature_map, projection=projection, eps=eps, key_offset=key_offset
        )
    elif not isinstance(state, CausalState):
        raise TypeError(f"state must be a CausalState or None, got {type(state).__name__}")
    else:
        state = state.copy()
    return state.update(q, k, v), state
