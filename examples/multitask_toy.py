"""Three regression tasks on one shared trunk, trained with each kexue.multitask rule.

The tasks' losses differ by about four orders of magnitude (targets of scale 1, 100 and 0.01),
the situation Su's part I is about: equal weights spend the whole update on the largest loss,
the scale-invariant rules (Σ log L_i, Σ g_i/‖g_i‖) and the gradient aggregators (MGDA,
PCGrad, primary/auxiliary with task 0 primary) do not. Writes a plot of each task's loss over
the steps, one panel per task, one line per rule.

Run: ``python examples/multitask_toy.py [--steps 300] [--out multitask_losses.png]``
(needs torch and matplotlib).
"""

from __future__ import annotations

import argparse

import torch

from kexue import multitask as mt

SCALES = (1.0, 100.0, 0.01)


def data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    a, b, c = (torch.randn(8, generator=g) for _ in range(3))
    ys = [
        SCALES[0] * torch.sin(x @ a),
        SCALES[1] * torch.tanh(x @ b),
        SCALES[2] * (torch.sin(x @ a) * torch.cos(x @ c)),
    ]
    return x, [y.unsqueeze(1) for y in ys]


def train(rule: str, steps: int, seed: int = 0) -> list[list[float]]:
    torch.manual_seed(seed)
    x, ys = data()
    trunk = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh())
    heads = torch.nn.ModuleList(torch.nn.Linear(32, 1) for _ in ys)
    shared, task = list(trunk.parameters()), list(heads.parameters())
    opt = torch.optim.Adam(shared + task, lr=1e-2)
    history = []
    for step in range(steps):
        opt.zero_grad()
        h = trunk(x)
        losses = [((head(h) - y) ** 2).mean() for head, y in zip(heads, ys)]
        if rule == "equal":
            mt.equal(losses).backward()
        elif rule == "log_sum":
            mt.log_sum(losses).backward()
        else:  # gradient aggregators on the trunk; each head gets its own loss's gradient
            mt.backward(losses, shared, rule, task_params=task, seed=step, primary=0)
        opt.step()
        history.append([float(v.detach()) for v in losses])
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="multitask_losses.png")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = ["equal", "log_sum", "gradnorm_sum", "mgda", "pcgrad", "primary_auxiliary"]
    runs = {rule: train(rule, args.steps) for rule in rules}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for t, ax in enumerate(axes):
        for rule, hist in runs.items():
            ax.plot([h[t] / SCALES[t] ** 2 for h in hist], label=rule)
        ax.set_yscale("log")
        ax.set_title(f"task {t} (target scale {SCALES[t]:g}): loss / scale²")
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    for rule, hist in runs.items():
        final = ", ".join(f"{h / s**2:.3g}" for h, s in zip(hist[-1], SCALES))
        print(f"{rule:>18}: final relative losses {final}")


if __name__ == "__main__":
    main()
