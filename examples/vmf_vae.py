"""A tiny vMF-VAE (Su, kexue.fm/archives/8404) on a synthetic spherical dataset.

Data: 2 000 points in R^32, made by pushing points of 8 vMF clusters on S^3 through a fixed
random two-layer map. An MLP encoder's output is l2-normalised into the mean direction μ,
:class:`kexue.nn.VMFLatent` adds vMF noise with a fixed κ, and an MLP decoder reconstructs.
With a uniform prior the KL term is the constant ``layer.kl``, so the loss is reconstruction
only. Run: ``python examples/vmf_vae.py`` (CPU, a few seconds).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kexue.nn import VMFLatent
from kexue.vmf import sample_vmf


def make_data(n: int = 2000, latent: int = 4, dim: int = 32, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, latent))
    z = sample_vmf(centres[rng.integers(0, 8, n)], 30.0, seed=seed)  # a mu per row
    w1, w2 = rng.standard_normal((latent, 64)), rng.standard_normal((64, dim)) / 8
    return torch.from_numpy(np.tanh(z @ w1) @ w2).float()


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a model this small only loses time to thread hand-offs
    x = make_data()
    latent, kappa = 4, 50.0
    encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, latent))
    layer = VMFLatent(latent, kappa)
    decoder = nn.Sequential(nn.Linear(latent, 64), nn.ReLU(), nn.Linear(64, 32))
    params = [*encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    print(f"{layer}: KL to the uniform prior = {layer.kl:.4f} nats for every input")
    for step in range(301):
        batch = x[torch.randint(0, len(x), (128,))]
        recon = decoder(layer(encoder(batch)))
        loss = ((recon - batch) ** 2).sum(-1).mean()  # + layer.kl, a constant
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(
                f"step {step:3d}  reconstruction {loss.item():.4f}  "
                f"ELBO loss {loss.item() + layer.kl:.4f}"
            )
    layer.eval()  # eval: the mean direction, no noise
    with torch.no_grad():
        err = ((decoder(layer(encoder(x))) - x) ** 2).sum(-1).mean().item()
    base = ((x - x.mean(0)) ** 2).sum(-1).mean().item()
    print(f"eval reconstruction {err:.4f} (predicting the mean: {base:.4f})")


if __name__ == "__main__":
    main()
