"""Peer for the neural CGMH mode: constrained beam search of transformers 4.x
(``generate(constraints=[DisjunctiveConstraint(...)])``, gone from transformers 5), with the
same model, on CommonGen dev, scored as ``benches/cgmh_commongen.py`` does.

Each concept is one disjunctive constraint over its English forms (:func:`kexue.text.
english_forms`), lower-case, each with a leading space (a capitalised form without its space
would glue onto the previous word); a token sequence that extends another is dropped (the
shorter one already writes the word's stem, which the coverage metric lemmatises). Needs
transformers 4.x up to 4.54 (4.55+ fetch this search from the Hub) beside kexue, e.g.
``pip install --target /tmp/tf4 --no-deps 'transformers==4.53.3' 'huggingface-hub<1'
'tokenizers<0.22'`` and ``PYTHONPATH=/tmp/tf4``.

    PYTHONPATH=/tmp/tf4 python benches/cgmh_beam_tf4.py --model /tmp/cg-gpt2 --sets 200

``neural tokens/set``: token positions run through the model (each beam's new token per step,
with the key/value cache), the count :mod:`kexue.neural`'s rows report. ``--json`` prints the
row as one JSON line last (what ``benches/neural_commongen.py --tf4`` reads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# transformers 4.x imports the `kernels` package (hub kernels) when installed, and a version
# made for transformers 5 fails to import beside huggingface-hub < 1; this bench uses none.
sys.modules.setdefault("kernels", None)

import torch  # noqa: E402
import transformers  # noqa: E402
from cgmh_commongen import score  # noqa: E402
from transformers import AutoModelForCausalLM, DisjunctiveConstraint, PreTrainedTokenizerFast  # noqa: E402

from kexue.text import english_forms  # noqa: E402


def _constraint(tok, concept: str) -> DisjunctiveConstraint:
    seqs = set()
    for form in english_forms(concept):
        if not form[:1].isupper():  # a capitalised form without its space glues onto words
            seqs.add(tuple(tok.encode(" " + form)))
    minimal = [s for s in seqs if not any(o != s and s[: len(o)] == o for o in seqs)]
    return DisjunctiveConstraint([list(s) for s in sorted(minimal)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--sets", type=int, default=200)
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(Path(__file__).parents[2] / "shared/data/commongen"))
    ap.add_argument("--show", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print the row as JSON last")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # the tokenizer file itself: transformers 5 names a tokenizer class that 4.x lacks
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(args.model) / "tokenizer.json"),
                                  eos_token="<|endoftext|>")  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True).eval()
    dev = [json.loads(line) for line in open(Path(args.data) / "commongen.dev.jsonl")]
    dev = dev[: args.sets]
    concepts = [[c.rsplit("_", 1)[0] for c in d["concept_set"].split("#")] for d in dev]
    refs = [d["scene"] for d in dev]
    fed = [0]
    forward = model.forward

    def counted(*a, **kw):  # token positions the model computes
        fed[0] += int(kw["input_ids"].numel())
        return forward(*a, **kw)

    model.forward = counted
    outs = []
    t = time.perf_counter()
    for cs in concepts:
        start = torch.tensor([[tok.eos_token_id]])
        with torch.no_grad():
            ids = model.generate(
                start, attention_mask=torch.ones_like(start), num_beams=args.beams,
                constraints=[_constraint(tok, c) for c in cs], max_new_tokens=args.max_new,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, do_sample=False,
            )  # fmt: skip
        outs.append(tok.decode(ids[0, 1:], skip_special_tokens=True).strip())
    seconds = (time.perf_counter() - t) / len(dev)
    row = {**score(concepts, refs, outs), "neural tokens/set": fed[0] / len(dev), "s/set": seconds}
    print(f"transformers {transformers.__version__}, {args.beams} beams, {len(dev)} sets, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print("| row | " + " | ".join(row) + " |")
    print("| constrained beam search (transformers 4.x) | "
          + " | ".join(f"{v:.2f}" for v in row.values()) + " |")  # fmt: skip
    for i in range(min(args.show, len(dev))):
        print(f"{i}. {' '.join(concepts[i])} → {outs[i]}")
    if args.json:
        print(json.dumps({"transformers": transformers.__version__, "beams": args.beams, **row}))


if __name__ == "__main__":
    main()
