"""``kexue.nn.LinearAttention``: multi-head linear (Performer/FAVOR+) self-attention."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._dispatch import check_int, check_scalar
from ..attention import (
    FEATURE_MAPS,
    CausalState,
    _check_method,
    linear_attention,
    orthogonal_random_matrix,
)

__all__ = ["LinearAttention"]


class LinearAttention(nn.Module):
    """Multi-head linear self-attention on ``(batch, seq, embed_dim)`` (batch first).

    Args:
        embed_dim: model width, divisible by ``num_heads``.
        num_heads: number of heads.
        causal: autoregressive (position ``t`` sees ``<= t``) or bidirectional.
        feature_map: one of :data:`kexue.attention.FEATURE_MAPS`.
        nb_features: random features ``m`` per head for FAVOR+ (default ``head_dim``); for the
            other maps, a learned-free projection is not used and ``m = head_dim``.
        redraw_interval: ``None`` keeps the projection fixed (Su's suggestion: the learned
            ``W_q``/``W_k`` absorb it); an int redraws it every that many training forward
            calls (performer-pytorch uses 1000). Never redrawn in eval mode or while decoding.
        seed: seed of the first projection; redraw ``r`` uses ``seed + r``.
        scaling: row lengths of the projection, ``"chi"`` or ``"sqrt"``.
        eps, chunk_size: passed to :func:`kexue.attention.linear_attention`.
        bias: bias of the four linear layers.

    Example:
        >>> import torch
        >>> from kexue.nn import LinearAttention
        >>> attn = LinearAttention(16, 2, nb_features=8)
        >>> x = torch.randn(3, 5, 16)
        >>> attn(x).shape
        torch.Size([3, 5, 16])
        >>> y, state = attn.step(x[:, 0])  # decoding, one token at a time
        >>> torch.allclose(y, attn(x[:, :1])[:, 0], atol=1e-5)
        True
    """

    projection: torch.Tensor | None  # a buffer, registered in __init__

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        causal: bool = True,
        feature_map: str = "favor+",
        nb_features: int | None = None,
        redraw_interval: int | None = None,
        seed: int = 0,
        scaling: str = "chi",
        eps: float = 1e-6,
        chunk_size: int = 64,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}) >= 1"
            )
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        if redraw_interval is not None and redraw_interval < 1:
            raise ValueError(f"redraw_interval must be None or >= 1, got {redraw_interval}")
        if nb_features is not None:
            check_int(nb_features, "nb_features", low=1)
        # checked here, not at the first forward call
        eps = check_scalar(eps, "eps", low=0.0)
        _check_method("chunked", chunk_size)
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.causal, self.feature_map = causal, feature_map
        self.nb_features = self.head_dim if nb_features is None else int(nb_features)
        self.redraw_interval, self.seed, self.scaling = redraw_interval, seed, scaling
        self.eps, self.chunk_size = eps, chunk_size
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.redraws = 0
        self._calls = 0
        favor = feature_map.startswith("favor")
        self.register_buffer("projection", self._draw(0) if favor else None, persistent=favor)

    def _draw(self, r: int) -> torch.Tensor:
        w = orthogonal_random_matrix(
            self.nb_features, self.head_dim, seed=self.seed + r, scaling=self.scaling
        )
        return torch.from_numpy(w).float()

    def redraw_projection(self) -> None:
        """Draws the next projection (seed ``seed + redraws``)."""
        if self.projection is not None:
            self.redraws += 1
            new = self._draw(self.redraws)
            self.projection = new.to(self.projection.device, self.projection.dtype)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """``x``: ``(B, N, embed_dim)``; ``mask``: optional ``(B, N)`` keep-mask (False = pad)."""
        if self.training and self.redraw_interval is not None:
            if self._calls and self._calls % self.redraw_interval == 0:
                self.redraw_projection()
            self._calls += 1
        q, k, v = (self._heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        o = linear_attention(
            q,
            k,
            v,
            causal=self.causal,
            feature_map=self.feature_map,
            projection=self.projection,
            mask=mask,
            eps=self.eps,
            chunk_size=self.chunk_size,
        )
        b, _, n, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(b, n, self.embed_dim))

    def new_state(self) -> CausalState:
        """An empty decoding state carrying this module's current projection."""
        if not self.causal:
            raise ValueError("step-by-step decoding needs causal=True")
        proj = None if self.projection is None else self.projection.detach().cpu().double().numpy()
        return CausalState(
            feature_map=self.feature_map, projection=proj, eps=self.eps, chunk_size=self.chunk_size
        )

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: CausalState | None = None) -> tuple:
        """Decodes ``x``: one token ``(B, embed_dim)`` or a chunk ``(B, T, embed_dim)``.

        Returns ``(output, state)``; ``state`` is updated in place (a new one when None).
        O(1) per token."""
        state = self.new_state() if state is None else state
        single = x.dim() == 2
        xs = x[:, None] if single else x
        q, k, v = (self._heads(p(xs)) for p in (self.q_proj, self.k_proj, self.v_proj))
        o = state.update(q, k, v)
        b, _, n, _ = o.shape
        y = self.out_proj(o.to(x.dtype).transpose(1, 2).reshape(b, n, self.embed_dim))
        return (y[:, 0] if single else y), state
