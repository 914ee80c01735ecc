"""A tiny Performer-style language model: trains a few steps on a PTB slice, then decodes
with the streaming causal state (O(1) work per generated token, no prefix recomputation).

    python examples/attention_performer_lm.py --steps 60 --data ../shared/data/ptb

Every layer is ``x + LinearAttention(LN(x))`` then ``x + MLP(LN(x))`` with FAVOR+ features and
a projection fixed for the run (``redraw_interval=None``, Su's suggestion). Training runs the
Rust chunked forward/backward through torch autograd; decoding keeps one ``CausalState`` per
layer. At the end the streamed logits are checked against one full causal pass, and each
layer's FAVOR+ attention is compared with exact softmax attention on the same q, k, v.
"""

from __future__ import annotations

import argparse
import collections
import math
import time
from pathlib import Path

import torch
from torch import nn

from kexue.attention import CausalState, linear_attention, softmax_attention
from kexue.nn import LinearAttention


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, features: int, seed: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = LinearAttention(dim, heads, nb_features=features, seed=seed)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def step(self, x: torch.Tensor, state: CausalState | None) -> tuple:
        y, state = self.attn.step(self.ln1(x), state)
        x = x + y
        return x + self.mlp(self.ln2(x)), state


class PerformerLM(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, layers: int, features: int, max_len: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, features, seed=i) for i in range(layers))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))

    @torch.no_grad()
    def step(self, ids: torch.Tensor, position: int, states: list) -> tuple:
        """Logits for ``ids`` (``(B, T)``) at ``position..``, updating one state per layer."""
        x = self.tok(ids) + self.pos(torch.arange(position, position + ids.shape[1]))
        new = []
        for block, state in zip(self.blocks, states):
            x, state = block.step(x, state)
            new.append(state)
        return self.head(self.ln(x)), new


@torch.no_grad()
def favor_errors(model: PerformerLM, ids: torch.Tensor) -> list:
    """Per layer, ``mean |FAVOR+ − softmax| / mean |softmax|`` of its attention on the q, k, v
    it computes for ``ids`` (the causal outputs before ``out_proj``)."""
    x = model.tok(ids) + model.pos(torch.arange(ids.shape[1]))
    errors = []
    for block in model.blocks:
        attn, h = block.attn, block.ln1(x)
        q, k, v = (attn._heads(p(h)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        favor = linear_attention(q, k, v, causal=True, projection=attn.projection)
        exact = softmax_attention(q, k, v, causal=True)
        errors.append(((favor - exact).abs().mean() / exact.abs().mean()).item())
        x = block(x)
    return errors


def load_ptb(data: Path, lines: int, vocab_size: int) -> tuple:
    def words(name: str, n: int) -> list:
        with open(data / name, encoding="utf-8") as f:
            return [w for _, line in zip(range(n), f) for w in line.split() + ["<eos>"]]

    train = words("ptb.train.txt", lines)
    valid = words("ptb.valid.txt", lines // 10)
    counts = collections.Counter(train)
    itos = ["<unk>"] + [w for w, _ in counts.most_common(vocab_size - 1) if w != "<unk>"]
    stoi = {w: i for i, w in enumerate(itos)}

    def encode(ws: list) -> torch.Tensor:
        return torch.tensor([stoi.get(w, 0) for w in ws])

    return encode(train), encode(valid), itos


def find_data(given: str | None) -> Path:
    here = Path(__file__).resolve().parent
    for path in ([Path(given)] if given else []) + [
        here.parent.parent / "shared" / "data" / "ptb",
        Path("/work/shared/data/ptb"),
    ]:
        if (path / "ptb.train.txt").exists():
            return path
    raise SystemExit("PTB not found: pass --data DIR (with ptb.train.txt, ptb.valid.txt)")


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=None, help="directory with ptb.{train,valid}.txt")
    p.add_argument("--lines", type=int, default=3000, help="PTB training lines to use")
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--generate", type=int, default=20)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    train, valid, itos = load_ptb(find_data(args.data), args.lines, args.vocab)
    model = PerformerLM(len(itos), dim=64, heads=4, layers=2, features=32, max_len=512)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()

    def batch(data: torch.Tensor) -> tuple:
        start = torch.randint(0, len(data) - args.seq - 1, (args.batch,))
        x = torch.stack([data[s : s + args.seq + 1] for s in start.tolist()])
        return x[:, :-1], x[:, 1:]

    tic = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = batch(train)
        loss = loss_fn(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % 10 == 0:
            print(f"step {step:4d}  train loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        x, y = batch(valid)
        val = loss_fn(model(x).flatten(0, 1), y.flatten()).item()
    print(f"valid ppl {math.exp(val):.1f}  ({time.perf_counter() - tic:.1f} s training)")
    errors = favor_errors(model, x)
    print("FAVOR+ vs softmax attention, mean |Δ| / mean |softmax| per layer:", end="")
    print("".join(f"  {e:.3f}" for e in errors), f"(m = {model.blocks[0].attn.nb_features})")
    assert all(math.isfinite(e) for e in errors), "FAVOR+ attention is not finite"

    # Decode: prefill the prompt in one chunked pass, then one token at a time.
    prompt = valid[: args.seq // 2][None]
    logits, states = model.step(prompt, 0, [None] * len(model.blocks))
    ids, streamed = prompt, [logits]
    sampler = torch.Generator().manual_seed(0)
    tic = time.perf_counter()
    for _ in range(args.generate):
        last = logits[:, -1].clone()
        last[:, 0] = -math.inf  # never sample <unk>
        nxt = torch.multinomial(torch.softmax(last / 0.8, -1), 1, generator=sampler)
        ids = torch.cat([ids, nxt], 1)
        logits, states = model.step(nxt, ids.shape[1] - 1, states)
        streamed.append(logits)
    per_token = (time.perf_counter() - tic) / args.generate
    with torch.no_grad():
        full = model(ids)
    gap = (torch.cat(streamed, 1) - full).abs().max().item()
    print("prompt:   ", " ".join(itos[i] for i in prompt[0].tolist()))
    print("generated:", " ".join(itos[i] for i in ids[0, prompt.shape[1] :].tolist()))
    print(f"{per_token * 1e3:.2f} ms per token; streamed vs full pass: max |Δlogit| {gap:.2e}")
    assert gap < 1e-3, "streaming decode disagrees with the full pass"
    return gap


if __name__ == "__main__":
    main()
