"""A tiny GlobalPointer NER model trained with the sparse multi-label loss and R-Drop.

The task is generated, so the example runs anywhere in about a minute on a CPU:
sentences of random tokens that contain two entity types,

* ``BRACKET``: the tokens strictly between a ``[`` and the next ``]`` (1-4 tokens);
* ``NAME``: a maximal run (1-3 tokens) of "capitalised" tokens that follows ``Mr``.

Capitalised tokens also appear outside names and bracket contents may be capitalised, so
the model has to read context, not single tokens. Labels are ``(type, start, end)`` spans,
fed to :func:`kexue.losses.sparse_multilabel_categorical_crossentropy` as ``start·L + end``
indices (no dense ``(B, types, L, L)`` label tensor), with position 0 a ``[CLS]`` token so
that index 0 is free as padding (``mask_zero=True``, GPLinker's convention). R-Drop adds
:func:`kexue.losses.global_pointer_kl` between two dropout passes.

Run: ``python examples/losses_globalpointer_ner.py`` (``--efficient`` for Efficient
GlobalPointer). Measured with the defaults (seed 0, 1500 training and 500 test sentences,
4 epochs, R-Drop weight 1): span-level test F1 = 1.0000 for GlobalPointer and 0.9979 for
Efficient GlobalPointer (a few minutes on 2 busy CPU cores).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from kexue.losses import (
    global_pointer_decode,
    global_pointer_kl,
    sparse_multilabel_categorical_crossentropy,
)
from kexue.nn import GlobalPointer

CLS, PAD, OPEN, CLOSE, MR = 0, 1, 2, 3, 4
CAPS = range(5, 15)  # "capitalised" tokens
VOCAB = 40
TYPES = ("BRACKET", "NAME")


def sentence(rng: np.random.Generator, max_len: int) -> tuple[list[int], set[tuple]]:
    """One ``[CLS] ...`` token list and its ``(type, start, end)`` spans (inclusive)."""
    tokens, spans = [CLS], set()
    while len(tokens) < max_len - 6:
        roll = rng.random()
        if roll < 0.12:
            body = rng.integers(5, VOCAB, rng.integers(1, 5)).tolist()
            start = len(tokens) + 1
            tokens += [OPEN, *body, CLOSE]
            spans.add((0, start, start + len(body) - 1))
        elif roll < 0.22:
            name = rng.choice(list(CAPS), rng.integers(1, 4)).tolist()
            start = len(tokens) + 1
            tokens += [MR, *name]
            spans.add((1, start, start + len(name) - 1))
            tokens.append(int(rng.integers(15, VOCAB)))  # a lower-case token ends the name
        else:
            tokens.append(int(rng.integers(5, VOCAB)))
    return tokens, spans


def dataset(n: int, max_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[set]]:
    rng = np.random.default_rng(seed)
    x = torch.full((n, max_len), PAD, dtype=torch.int64)
    gold = []
    for i in range(n):
        tokens, spans = sentence(rng, max_len)
        x[i, : len(tokens)] = torch.tensor(tokens)
        gold.append(spans)
    return x, x != PAD, gold


def sparse_labels(gold: list[set], length: int) -> torch.Tensor:
    """``(B, types, K)`` flat indices ``start·L + end``, padded with 0 (the [CLS] pair)."""
    k = max(1, max(sum(1 for t, _, _ in g if t == h) for g in gold for h in range(len(TYPES))))
    labels = torch.zeros((len(gold), len(TYPES), k), dtype=torch.int64)
    for b, spans in enumerate(gold):
        fill = [0] * len(TYPES)
        for t, s, e in sorted(spans):
            labels[b, t, fill[t]] = s * length + e
            fill[t] += 1
    return labels


class Tagger(nn.Module):
    def __init__(self, hidden: int, efficient: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.encoder = nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(0.2)
        self.pointer = GlobalPointer(hidden, len(TYPES), 16, efficient=efficient)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, _ = self.encoder(self.dropout(self.embed(x)))
        return self.pointer(self.dropout(h), mask)


def f1(model: Tagger, x: torch.Tensor, mask: torch.Tensor, gold: list[set]) -> float:
    model.eval()
    with torch.no_grad():
        spans = global_pointer_decode(model(x, mask)).tolist()
    predicted: list[set] = [set() for _ in gold]
    for b, t, s, e in spans:
        predicted[b].add((t, s, e))
    hit = sum(len(p & g) for p, g in zip(predicted, gold))
    n_pred, n_gold = sum(map(len, predicted)), sum(map(len, gold))
    return 2 * hit / max(n_pred + n_gold, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--efficient", action="store_true")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rdrop", type=float, default=1.0, help="weight of the KL term")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    length = 32
    x, mask, gold = dataset(1500, length, args.seed)
    x_test, mask_test, gold_test = dataset(500, length, args.seed + 1)
    labels = sparse_labels(gold, length)
    model = Tagger(64, args.efficient)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), 32):
            idx = order[i : i + 32]
            s1, s2 = model(x[idx], mask[idx]), model(x[idx], mask[idx])
            loss = sum(
                sparse_multilabel_categorical_crossentropy(
                    labels[idx], s.flatten(2), mask_zero=True
                )
                for s in (s1, s2)
            ) / 2 + args.rdrop * global_pointer_kl(s1, s2) / len(TYPES)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        score = f1(model, x_test, mask_test, gold_test)
        print(f"epoch {epoch + 1}: loss {total / len(x):.4f}  test F1 {score:.4f}")
    variant = "Efficient GlobalPointer" if args.efficient else "GlobalPointer"
    print(f"{variant}, sparse loss + R-Drop: span-level test F1 = {score:.4f}")


if __name__ == "__main__":
    main()
