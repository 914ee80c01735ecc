"""The vMF-VAE latent layer (Su, kexue.fm/archives/8404)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._dispatch import check_scalar
from ..vmf import _check_d, kl_to_uniform, sample_vmf


class VMFLatent(nn.Module):
    """Su's vMF-VAE latent layer: ``μ = h/‖h‖``, ``z ~ vMF(μ, κ)`` with a *fixed* κ.

    With a uniform prior on the sphere the KL term, :attr:`kl`, is a constant of (d, κ)
    (a floor that prevents KL vanishing), so a vMF-VAE trains on the reconstruction loss
    alone: an autoencoder with a special noise layer.

    * training mode: returns a sample ``z``, differentiable in ``h`` (exactly, through μ; κ is
      not learned). Seeds are drawn from torch's global generator, so ``torch.manual_seed``
      makes training reproducible. CPU tensors sample in Rust, other devices in torch.
    * eval mode: returns the mean direction ``μ`` (deterministic encoding).

    Args:
        d: latent dimension (the last dimension of the input), ``>= 2``.
        kappa: concentration, finite and ``>= 0``; larger means less noise (Su uses 20–32).

    Example:
        >>> import torch
        >>> from kexue.nn import VMFLatent
        >>> layer = VMFLatent(16, kappa=32.0)
        >>> z = layer(torch.randn(8, 16, requires_grad=True))
        >>> z.shape, round(layer.kl, 4)
        (torch.Size([8, 16]), 7.5821)
    """

    def __init__(self, d: int, kappa: float) -> None:
        super().__init__()
        self.d = _check_d(d)
        self.kappa = check_scalar(kappa, "kappa", low=0.0)
        #: ``KL(vMF(μ, κ) ‖ Uniform(S^{d−1}))``, the same for every input.
        self.kl = float(kl_to_uniform(self.d, self.kappa))

    def forward(self, h: Tensor) -> Tensor:
        if h.ndim == 0 or h.shape[-1] != self.d:
            raise ValueError(f"h must end in dimension d = {self.d}, got {tuple(h.shape)}")
        mu = nn.functional.normalize(h, dim=-1)
        if not self.training:
            return mu
        seed = int(torch.randint(0, 2**62, ()).item())
        rows = mu.reshape(-1, self.d)
        z = sample_vmf(
            rows,
            torch.full((rows.shape[0],), self.kappa, dtype=h.dtype, device=h.device),
            seed=seed,
        )
        return z.reshape(h.shape)

    def extra_repr(self) -> str:
        return f"d={self.d}, kappa={self.kappa}"
