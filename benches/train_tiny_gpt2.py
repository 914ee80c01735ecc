"""A small GPT-2-style causal LM trained here, from scratch, on CommonGen's train sentences
(MIT): the neural model that ``kexue generate --hf`` is tested and measured with, so nothing
is downloaded.

The tokenizer is a byte-level BPE trained locally with ``tokenizers``; the model is a
``transformers`` GPT-2 (default 4 layers, width 256, 4 heads, 4,096 tokens, context 64; the
model measured in ``benches/neural_commongen.py`` is ``--layers 2 --dim 128 --heads 2 --vocab
2048``, what a shared 2-core machine trains in ten minutes).
Each sentence is trained as ``<|endoftext|> sentence <|endoftext|>``, the framing
:class:`kexue.scorers.HFCausalLM` scores with. The output directory loads offline with
``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)``.

    python benches/train_tiny_gpt2.py -o /tmp/cg-gpt2 [--minutes 6] [--threads 2]

:func:`build` with ``seconds=0`` writes an untrained model in seconds (the test suite's).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

EOS = "<|endoftext|>"


def build(
    sentences: Sequence[str],
    out: str | os.PathLike[str],
    *,
    vocab: int = 4096,
    layers: int = 4,
    dim: int = 256,
    heads: int = 4,
    context: int = 64,
    seconds: float = 360.0,
    batch: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    log: bool = False,
) -> dict:
    """Trains tokenizer and model on ``sentences`` for about ``seconds`` (0: random weights)
    and writes both to ``out`` (through a temp directory and a rename). Returns a summary
    (steps, tokens seen, last loss, held-out loss per token)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sentences, vocab_size=vocab, min_frequency=2, special_tokens=[EOS],
                            show_progress=False)  # fmt: skip
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS,
        pad_token=EOS, model_max_length=context,
    )  # fmt: skip
    config = GPT2Config(
        vocab_size=len(tok), n_positions=context, n_embd=dim, n_layer=layers, n_head=heads,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # about an epoch: no dropout needed
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    eos = tok.eos_token_id
    seqs = [[eos, *ids[: context - 2], eos] for ids in tok(list(sentences))["input_ids"]]
    held, seqs = seqs[: max(1, len(seqs) // 50)], seqs[max(1, len(seqs) // 50) :]
    summary = {"steps": 0, "tokens": 0, "loss": float("nan")}
    if seconds > 0:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
        gen = torch.Generator().manual_seed(seed)
        # batches of similar lengths (little padding), drawn in random order
        by_len = sorted(range(len(seqs)), key=lambda r: len(seqs[r]))
        batches = [by_len[lo : lo + batch] for lo in range(0, len(by_len), batch)]
        start = time.perf_counter()
        model.train()
        while (elapsed := time.perf_counter() - start) < seconds:
            for group in opt.param_groups:  # warm-up, then cosine decay over the time budget
                group["lr"] = (
                    lr
                    * min(1.0, (summary["steps"] + 1) / 30)
                    * (0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / seconds))))
                )
            rows = batches[int(torch.randint(len(batches), (1,), generator=gen))]
            ids, mask = _pad([seqs[r] for r in rows], eos)
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            summary["steps"] += 1
            summary["tokens"] += int(mask.sum())
            summary["loss"] = loss.item()
            if log and summary["steps"] % 100 == 0:
                print(
                    f"step {summary['steps']}  {elapsed:.0f} s  loss {loss.item():.3f}", flush=True
                )
    model.eval()
    with torch.no_grad():
        nll = n = 0.0
        for lo in range(0, len(held), 256):
            ids, mask = _pad(held[lo : lo + 256], eos)
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1], -1)
            tok_lp = logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
            nll -= float(tok_lp.sum())
            n += float(mask[:, 1:].sum())
    summary["held-out nll/token"] = nll / n
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def _pad(seqs: list[list[int]], pad: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids, mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--data", default=str(Path(__file__).parents[2] / "shared/data/commongen"))
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    path = Path(args.data) / "commongen.train.tgt.txt"
    sentences = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    t = time.perf_counter()
    summary = build(sentences, args.output, vocab=args.vocab, layers=args.layers, dim=args.dim,
                    heads=args.heads, seconds=60 * args.minutes, log=True)  # fmt: skip
    print(f"{len(sentences)} sentences, {time.perf_counter() - t:.0f} s: {summary}")
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
