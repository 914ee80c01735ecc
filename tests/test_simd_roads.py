"""Every SIMD road this CPU runs gives the portable road's results: each road computes the
same kernels in its own process (``KEXUE_SIMD`` is read once, at import), and the results are
compared bitwise where the kernels promise it (no fused multiply-add or lane-width dependent
sum) and to a tolerance where FMA or the lane width changes the rounding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kexue

ROADS = ("avx512", "avx2", "neon", "portable")

# Runs in a child with KEXUE_SIMD set; writes every result into the .npz named by argv[1].
_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import kexue
    from kexue.activations import squareplus
    from kexue.attention import linear_attention, orthogonal_random_matrix, stream
    from kexue.losses import multilabel_categorical_crossentropy
    from kexue.multitask import combine, gram

    out = {"road": np.array(kexue.simd_road())}
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 1, 2, 77, 32), dtype=np.float32) * np.float32(0.5)
    v = rng.standard_normal((1, 2, 77, 48), dtype=np.float32)
    w = orthogonal_random_matrix(64, 32, seed=1).astype(np.float32)
    for fmap in ("favor+", "exp", "elu+1"):
        proj = None if fmap == "elu+1" else w
        for method in ("chunked", "scan"):
            o = linear_attention(q, k, v, causal=True, feature_map=fmap, projection=proj,
                                 method=method, chunk_size=16)
            out[f"attn_{fmap}_{method}"] = np.asarray(o)
    state, steps = None, []
    for t in range(40):
        o, state = stream(q[:, :, t], k[:, :, t], v[:, :, t], state, projection=w)
        steps.append(np.asarray(o))
    out["decode"] = np.stack(steps)
    try:
        import torch
    except ImportError:
        pass
    else:
        tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
        o = linear_attention(tq, tk, tv, causal=True, feature_map="exp",
                             projection=torch.tensor(w), chunk_size=16)
        (o * torch.linspace(-1, 1, o.shape[-1])).sum().backward()
        for name, x in (("dq", tq), ("dk", tk), ("dv", tv)):
            out[f"attn_backward_{name}"] = x.grad.numpy()
    J = rng.standard_normal((5, 10_003), dtype=np.float32)
    out["gram"] = np.asarray(gram(J))
    out["combine"] = np.asarray(combine(J, np.array([0.5, -1.0, 0.0, 2.0, 0.25])))
    x = (rng.standard_normal(50_001) * 30).astype(np.float32)
    out["squareplus"] = np.asarray(squareplus(x))
    y = (rng.random((64, 301)) < 0.1).astype(np.float32)
    s = rng.standard_normal((64, 301), dtype=np.float32) * 5
    out["mlce"] = np.asarray(multilabel_categorical_crossentropy(y, s, reduction="none"))
    np.savez(sys.argv[1], **out)
    """
)

# Bitwise on every road: copies, sums in a fixed order without FMA, and the f32 exp (its
# polynomial is written without mul_add). The rest round differently with FMA or wider lanes.
BITWISE = {"squareplus", "combine", "mlce", "attn_elu+1_scan"}
RTOL = {"gram": 1e-12}


def _run(road: str, tmp_path) -> dict[str, np.ndarray] | str:
    path = tmp_path / f"{road}.npz"
    env = {**os.environ, "KEXUE_SIMD": road}
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        return r.stderr
    with np.load(path) as z:
        return dict(z)


def test_unset_is_the_widest_road_and_bad_values_name_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KEXUE_SIMD"}
    code = "import kexue; print(kexue.simd_road())"
    widest = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert widest in ROADS
    for bad in ("sse9", "neon" if widest != "neon" and widest != "portable" else "avx512"):
        r = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, "KEXUE_SIMD": bad},
            capture_output=True,
            text=True,
        )
        assert r.returncode != 0
        assert "ValueError" in r.stderr and "KEXUE_SIMD" in r.stderr, r.stderr
        assert "portable" in r.stderr and bad in r.stderr, r.stderr
    assert kexue.simd_road() in ROADS


def test_every_road_matches_the_portable_road(tmp_path):
    base = _run("portable", tmp_path)
    assert isinstance(base, dict), base
    assert str(base["road"]) == "portable"
    compared = 0
    for road in ROADS[:-1]:
        got = _run(road, tmp_path)
        if isinstance(got, str):
            assert "lacks" in got or "must be one of" in got, got  # a road this CPU lacks
            continue
        compared += 1
        assert str(got["road"]) == road
        for name, want in base.items():
            if name == "road":
                continue
            if name in BITWISE:
                np.testing.assert_array_equal(got[name], want, err_msg=f"{road} {name}")
            else:
                rtol = RTOL.get(name, 2e-5)
                scale = np.abs(want).max()
                np.testing.assert_allclose(
                    got[name], want, rtol=rtol, atol=rtol * scale, err_msg=f"{road} {name}"
                )
    if os.environ.get("CI") and compared == 0:
        pytest.fail("CI runs on a CPU with a SIMD road: nothing was compared")
