"""The ``kexue`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__, benchmarks


def _bench(args: argparse.Namespace) -> int:
    kwargs = {"repeat": args.repeat}
    if args.size is not None:
        kwargs["size"] = args.size
    importlib.import_module(f"kexue.benchmarks.{args.name}").run(**kwargs)
    return 0


def _load_lm(args: argparse.Namespace):
    from . import _native
    from .scorers import NgramScorer, default_lm

    if args.lm and args.corpus:
        raise SystemExit("kexue generate: give --lm or --corpus, not both")
    if args.lm:
        if args.lm.endswith(".arpa"):
            return NgramScorer(_native.lm_read_arpa(args.lm))
        return NgramScorer(*_native.lm_load(args.lm))
    if args.corpus:
        corpus = _native.NgramCorpus()
        with open(args.corpus, "rb") as f:
            corpus.add_text(f.read(), args.corpus, 1)
        forward, backward = corpus.build(args.order, backward=True, discount_fallback=True)
        return NgramScorer(forward, backward)
    return default_lm()


def _generate(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from .cgmh import generate_many, plot_trace

    if args.input:
        with open(args.input, encoding="utf-8") as f:
            sets = [line.split() for line in f if line.strip()]
    else:
        sets = [args.words]
    if not sets or not sets[0]:
        raise SystemExit("kexue generate: give keywords or --input FILE")
    lm = _load_lm(args)
    options = {
        "n": args.n,
        "steps": args.steps,
        "anneal": True if args.anneal else None,
        "order": "fixed" if args.fixed_order else "free",
        "top_k": args.top_k,
        "gamma": args.gamma,
        "max_len": args.max_len,
        "return_trace": bool(args.plot),
    }
    batch = max(1, 64 // args.n)
    traced = []
    with tqdm(total=len(sets), unit="input", disable=len(sets) < 2, file=sys.stderr) as bar:
        for lo in range(0, len(sets), batch):
            # one seed per batch position keeps outputs independent of the batch size
            results = generate_many(sets[lo : lo + batch], lm, seed=args.seed + lo, **options)
            for keywords, sentences in zip(sets[lo : lo + batch], results):
                traced.extend(sentences)
                for s in sentences:
                    if args.json:
                        row = {"keywords": keywords, "text": s.text, "tokens": s.tokens,
                               "logprob": s.logprob, "nll_per_token": s.nll_per_token,
                               "acceptance": s.acceptance_rate}  # fmt: skip
                        print(json.dumps(row, ensure_ascii=False))
                    else:
                        print(s.text)
            bar.update(len(results))
    if args.plot:
        plot_trace(traced[:8], args.plot)
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

    p = commands.add_parser(
        "generate", help="sentences containing given keywords (CGMH)", description=(
            "Keyword-to-sentence generation by Metropolis-Hastings (CGMH). Without --lm or "
            "--corpus uses the built-in English bigram LM (offline)."
        ),
    )  # fmt: skip
    p.add_argument("words", nargs="*", metavar="WORD", help="keywords every sentence contains")
    p.add_argument("--input", help="file with one keyword set per line (whitespace-separated)")
    p.add_argument("--lm", help="n-gram model: kexue binary file or .arpa")
    p.add_argument("--corpus", help="train a Kneser-Ney LM on this text file (one sentence a line)")
    p.add_argument("--order", type=int, default=4, help="n-gram order for --corpus (default 4)")
    p.add_argument("--n", type=int, default=3, help="sentences per keyword set (default 3)")
    p.add_argument("--steps", type=int, default=200, help="MH steps per chain (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--anneal", action="store_true", help="simulated annealing: best sentence")
    p.add_argument("--fixed-order", action="store_true", help="keep keywords in the given order")
    p.add_argument("--top-k", type=int, default=50, help="candidates per edit (default 50)")
    p.add_argument("--gamma", type=float, default=1.0, help="exponent on p(x) (default 1)")
    p.add_argument("--max-len", type=int, default=40, help="longest sentence (default 40)")
    p.add_argument("--json", action="store_true", help="one JSON object per sentence")
    p.add_argument("--plot", metavar="PNG", help="draw log-prob and acceptance traces")
    p.set_defaults(run=_generate)
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
