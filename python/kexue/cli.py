"""The ``kexue`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import numpy as np

from . import __version__, benchmarks


def _bench(args: argparse.Namespace) -> int:
    kwargs = {"repeat": args.repeat}
    if args.size is not None:
        kwargs["size"] = args.size
    importlib.import_module(f"kexue.benchmarks.{args.name}").run(**kwargs)
    return 0


def _lm_load(path: str):  # binary by its magic, else ARPA
    from .lm import NgramLM

    with open(path, "rb") as f:
        magic = f.read(8)
    return NgramLM.load(path) if magic == b"KEXUELM\0" else NgramLM.load_arpa(path)


def _lm_build(args: argparse.Namespace) -> int:
    from .lm import NgramLM

    lm = NgramLM.build(
        args.corpus,
        order=args.order,
        backward=not (args.arpa or args.no_backward),
        min_count=args.min_count,
        skip_symbols=args.skip_symbols,
        discount_fallback=args.discount_fallback,
    )
    (lm.save_arpa if args.arpa else lm.save)(args.output)
    print(f"{lm!r} -> {args.output}", file=sys.stderr)
    return 0


def _lm_ppl(args: argparse.Namespace) -> int:
    lm = _lm_load(args.model)
    with open(args.text, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    ids = [s.split() for s in lines]
    oov = sum(1 for words in ids for w in words if w not in _vocab_set(lm))
    tokens = sum(len(words) + 1 for words in ids)
    scores = lm.logprob(lines)
    print(f"sentences {len(lines)}  tokens {tokens} (with </s>)  OOVs {oov}")
    print(f"perplexity {float(np.exp(-scores.sum() / tokens)):.4f}  (OOVs included, as kenlm)")
    return 0


def _vocab_set(lm) -> frozenset:
    return frozenset(lm.vocab) - {"<unk>"}


def _lm_score(args: argparse.Namespace) -> int:
    lm = _lm_load(args.model)
    for line in sys.stdin:
        print(f"{lm.score(line.rstrip(chr(10))):.6f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kexue", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kexue {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("bench", help="time a kernel beside its peers")
    p.add_argument("name", choices=benchmarks.available())
    p.add_argument("--size", type=int, default=None, help="problem size (default per bench)")
    p.add_argument("--repeat", type=int, default=7, help="timed runs; the median is shown")
    p.set_defaults(run=_bench)

    lm = commands.add_parser("lm", help="n-gram language model: build, perplexity, scores")
    lm_commands = lm.add_subparsers(dest="lm_command", metavar="COMMAND", required=True)
    p = lm_commands.add_parser("build", help="estimate a modified Kneser-Ney model")
    p.add_argument("corpus", help="UTF-8 text, one sentence per line")
    p.add_argument("-o", "--output", required=True, help="model file to write")
    p.add_argument("--order", type=int, default=5, help="n-gram order, 1 to 7 (default 5)")
    p.add_argument("--arpa", action="store_true", help="write ARPA text (forward model only)")
    p.add_argument("--no-backward", action="store_true", help="skip the backward model")
    p.add_argument("--min-count", type=int, default=1, help="rarer words become <unk>")
    p.add_argument("--skip-symbols", action="store_true", help="drop <unk> from the text (lmplz)")
    p.add_argument(
        "--discount-fallback", action="store_true", help="D = 0.5, 1, 1.5 on degenerate counts"
    )
    p.set_defaults(run=_lm_build)
    p = lm_commands.add_parser("ppl", help="perplexity of a text file")
    p.add_argument("model", help="binary model or ARPA file")
    p.add_argument("text", help="UTF-8 text, one sentence per line")
    p.set_defaults(run=_lm_ppl)
    p = lm_commands.add_parser("score", help="log10 score of each stdin line")
    p.add_argument("model", help="binary model or ARPA file")
    p.set_defaults(run=_lm_score)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
