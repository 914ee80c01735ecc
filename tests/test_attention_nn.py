"""kexue.nn.LinearAttention: shapes, decoding == full pass, redraw policy, training."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.torch


def test_step_by_step_decoding_matches_full_pass():
    import torch

    from kexue.nn import LinearAttention

    torch.manual_seed(0)
    for feature_map in ("favor+", "elu+1", "exp"):
        attn = LinearAttention(16, 4, feature_map=feature_map, nb_features=12).double().eval()
        x = torch.randn(2, 30, 16, dtype=torch.float64)
        full = attn(x)
        y0, state = attn.step(x[:, :11])  # chunked prefill
        ys = [y0] + [attn.step(x[:, t], state)[0][:, None] for t in range(11, 30)]
        torch.testing.assert_close(torch.cat(ys, 1), full, rtol=1e-9, atol=1e-10)
        assert state.position == 30


def test_redraw_policy():
    import torch

    from kexue.nn import LinearAttention

    x = torch.randn(1, 5, 8)
    fixed = LinearAttention(8, 2, nb_features=4)
    first = fixed.projection.clone()
    for _ in range(5):
        fixed(x)
    assert torch.equal(fixed.projection, first)

    every2 = LinearAttention(8, 2, nb_features=4, redraw_interval=2, seed=3)
    seen = []
    for _ in range(5):
        every2(x)
        seen.append(every2.projection.clone())
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    assert torch.equal(seen[2], seen[3]) and every2.redraws == 2
    every2.eval()
    every2(x)
    every2(x)
    assert every2.redraws == 2  # never in eval
    again = LinearAttention(8, 2, nb_features=4, redraw_interval=2, seed=3)
    for _ in range(5):
        again(x)
    assert torch.equal(again.projection, seen[-1])  # redraws are seeded
    assert "projection" in every2.state_dict()


def test_training_reduces_loss_and_runs_through_rust_backward():
    import torch

    from kexue.nn import LinearAttention

    torch.manual_seed(0)
    attn = LinearAttention(16, 2, nb_features=16)
    x = torch.randn(4, 24, 16)
    target = torch.roll(x, 1, dims=1)  # copy the previous token: needs attention
    opt = torch.optim.Adam(attn.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(attn(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is not None for p in attn.parameters())


def test_padding_mask_and_bad_arguments():
    import torch

    from kexue.nn import LinearAttention

    attn = LinearAttention(8, 2, causal=False, nb_features=6)
    x = torch.randn(2, 7, 8)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 5:] = False
    y = attn(x, mask)
    torch.testing.assert_close(y[0, :5], attn(x[:1, :5])[0])
    with pytest.raises(ValueError, match="divisible"):
        LinearAttention(10, 3)
    with pytest.raises(ValueError, match="feature_map"):
        LinearAttention(8, 2, feature_map="softmax")
    for bad, name in (({"nb_features": 0}, "nb_features"), ({"eps": -1.0}, "eps"),
                      ({"chunk_size": 0}, "chunk_size")):  # fmt: skip
        with pytest.raises(ValueError, match=name):  # at construction, not at the first call
            LinearAttention(8, 2, **bad)
    with pytest.raises(ValueError, match="causal"):
        attn.step(x[:, 0])
