"""The ``kexue`` command."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from . import __version__, benchmarks, simd_road

if TYPE_CHECKING:  # imported where used, so that `kexue --help` stays quick
    from .lm import NgramLM
    from .scorers import HFCausalLM, NgramScorer


def _bench(args: argparse.Namespace) -> int:
    import contextlib
    import json

    kwargs = {"repeat": args.repeat}
    if args.size is not None:
        kwargs["size"] = args.size
    run = importlib.import_module(f"kexue.benchmarks.{args.name}").run
    if not args.json:
        run(**kwargs)
        return 0
    # the human-readable lines go to stderr, so stdout is one JSON document
    with contextlib.redirect_stdout(sys.stderr), benchmarks.recording() as cases:
        run(**kwargs)
    from . import get_num_threads

    report = {"bench": args.name, "version": __version__, "threads": get_num_threads(),
              "simd_road": simd_road(), "cases": cases}  # fmt: skip
    print(json.dumps(report, indent=1))
    return 0


def _load_lm(args: argparse.Namespace) -> NgramScorer | None:
    from .lm import NgramLM
    from .scorers import NgramScorer

    if args.lm:
        lm = _lm_load(args.lm)
        lm.tokenizer = args.tokenizer
        return NgramScorer(lm)
    if args.corpus:
        lm = NgramLM.build(
            args.corpus, args.order, tokenizer=args.tokenizer, discount_fallback=True
        )
        return NgramScorer(lm)
    return None  # a built-in LM, chosen by --lang or the keywords' script


def _load_hf(args: argparse.Namespace, candidates: Any) -> HFCausalLM:
    """The --hf model (offline) over the n-gram proposer; load failures as one-line errors."""
    from .scorers import HFCausalLM

    try:
        return HFCausalLM.from_pretrained(args.hf, candidates, device=args.device, dtype=args.dtype)
    except (OSError, ValueError) as e:
        raise SystemExit(f"kexue {args.command}: --hf: {e}") from e
    except ImportError as e:
        raise SystemExit(f"kexue {args.command}: --hf needs torch and transformers ({e})") from e


def _rewrite(args: argparse.Namespace) -> int:
    """kexue paraphrase / correct: each input sentence rewritten by kexue.cgmh's function."""
    import json

    from tqdm import tqdm

    from . import cgmh

    if args.input:
        lines = [line.strip() for line in _text_lines(args.input) if line.strip()]
        if not lines:
            raise ValueError(f"{args.input}: has no sentences (every line is blank)")
    else:
        lines = [" ".join(args.sentence)]
    lm: NgramScorer | HFCausalLM | None = _load_lm(args)
    if args.hf:  # every candidate of an edit scored by the neural LM (see kexue.cgmh)
        from .scorers import default_lm

        lm = _load_hf(args, lm if lm is not None else default_lm())
    options = {"n": args.n, "top_k": args.top_k, "anneal": None if args.sample else True,
               **_steps(args)}  # fmt: skip
    if args.weight is not None:
        options["weight"] = args.weight
    if args.command == "paraphrase":
        run, options["keywords"] = cgmh.paraphrase, args.keep
    else:
        run = cgmh.correct
    for i, line in enumerate(tqdm(lines, unit="sentence", disable=len(lines) < 2,
                                  file=sys.stderr)):  # fmt: skip
        try:
            out = run(line, lm, seed=args.seed + i, **options)
        except ValueError as e:  # bad sentence or settings: the message, not a traceback
            if args.debug:  # the traceback, as --debug promises
                raise
            raise SystemExit(f"kexue {args.command}: {e}") from e
        for s in out:
            if args.json:
                row = {"input": line, "text": s.text, "tokens": s.tokens, "logprob": s.logprob,
                       "acceptance": s.acceptance_rate}  # fmt: skip
                print(json.dumps(row, ensure_ascii=False))
            else:
                print(s.text)
    return 0


def _generate(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from .cgmh import Sentence, generate_many, plot_trace

    if args.input:
        from .lm import split_words

        sets = [split_words(line) for line in _text_lines(args.input) if line.strip()]
        if not sets:
            raise ValueError(f"{args.input}: has no keyword sets (every line is blank)")
    else:
        sets = [args.words]
    lm: NgramScorer | HFCausalLM | None = _load_lm(args)
    # cgmh's or neural's: their keywords differ and **options below is built at run time
    run: Callable[..., list[list[Sentence]]] = generate_many
    if args.hf:  # neural target, n-gram proposals: one neural sentence score per step
        from .neural import generate_many as run

        if args.plot:
            raise SystemExit("kexue generate: --plot is not available with --hf")
        if lm is None:  # the built-in LM of --lang or of the keywords' script proposes
            from .cgmh import _language
            from .scorers import resolve

            try:
                lm = resolve(None, _language(sets, None, args.lang))
            except ValueError as e:
                if args.debug:  # the traceback, as --debug promises
                    raise
                raise SystemExit(f"kexue generate: {e}") from e
        lm = _load_hf(args, lm)
    options = {
        "n": args.n,
        **_steps(args),
        "anneal": True if args.anneal else None,
        "order": "fixed" if args.fixed_order else "free",
        "top_k": args.top_k,
        "gamma": args.gamma,
        "min_len": args.min_len,
        "max_len": args.max_len,
        "forms": args.forms,
        "length": None if args.length == 0 else "auto" if args.length is None else args.length,
        "block": None if args.no_block else "auto",
        "return_trace": bool(args.plot),
        "lang": args.lang,
    }
    if args.hf:  # the language chose the proposing LM above
        del options["return_trace"], options["lang"]
    if args.pool is not None:
        options["pool"] = args.pool
    if args.no_backoff and not args.hf:  # (a neural target has no back-off to penalise)
        options["backoff"] = None
    batch = max(1, 64 // args.n)
    traced = []
    with tqdm(total=len(sets), unit="input", disable=len(sets) < 2, file=sys.stderr) as bar:
        for lo in range(0, len(sets), batch):
            # batches of ~64 chains, each seeded by its first input's line number
            try:
                results = run(sets[lo : lo + batch], lm, seed=args.seed + lo, **options)
            except ValueError as e:  # bad keywords or settings: the message, not a traceback
                if args.debug:  # the traceback, as --debug promises
                    raise
                raise SystemExit(f"kexue generate: {e}") from e
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


def _steps(args: argparse.Namespace) -> dict[str, int]:
    """``steps`` when given, so that each function's own default applies otherwise."""
    return {} if args.steps is None else {"steps": args.steps}


def _lm_load(path: str) -> NgramLM:  # binary by its magic, else ARPA
    from .lm import NgramLM, _regular_file

    _regular_file(path)  # a FIFO would block the read below
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
    from .lm import split_words

    lm = _lm_load(args.model)
    lines = [line.rstrip("\r\n") for line in _text_lines(args.text)]
    if not lines:
        raise ValueError(f"{args.text}: is empty (no sentences to score)")
    ids = [split_words(s) for s in lines]
    vocab = _vocab_set(lm)
    oov = sum(1 for words in ids for w in words if w not in vocab)
    tokens = sum(len(words) + 1 for words in ids)
    scores = lm.logprob(lines)
    print(f"sentences {len(lines)}  tokens {tokens} (with </s>)  OOVs {oov}")
    print(f"perplexity {float(np.exp(-np.sum(scores) / tokens)):.4f}  (OOVs included, as kenlm)")
    return 0


def _vocab_set(lm: NgramLM) -> frozenset[str]:
    return frozenset(lm.vocab) - {"<unk>"}


def _lm_score(args: argparse.Namespace) -> int:
    lm = _lm_load(args.model)
    for line in _text_lines(getattr(sys.stdin, "buffer", sys.stdin), "stdin"):
        print(f"{lm.score(line.rstrip(chr(10))):.6f}")
    return 0


def _text_lines(source: str | Iterable[bytes | str], name: str | None = None) -> Iterator[str]:
    """Lines of UTF-8 text from a path or a binary stream; bad bytes are a ValueError naming
    the source and the line (a leading BOM is dropped)."""
    if isinstance(source, str):
        from .lm import _regular_file

        _regular_file(source)
        with open(source, "rb") as f:
            yield from _text_lines(f, source)
        return
    for i, raw in enumerate(source, 1):
        if isinstance(raw, str):  # a text stream (stdin replaced in tests)
            yield raw
            continue
        try:
            yield raw.decode("utf-8-sig" if i == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}: line {i}: invalid UTF-8 at byte {e.start}") from None


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # On every (sub)command, so that it may come anywhere; SUPPRESS keeps a subcommand's
        # default from overwriting a --debug given before it.
        default = False if self.prog == "kexue" else argparse.SUPPRESS
        self.add_argument("--debug", action="store_true", default=default,
                          help="show the full traceback of an error")  # fmt: skip


def _model_options(p: argparse.ArgumentParser, hf_role: str) -> None:
    """The LM options of generate, paraphrase and correct."""
    p.add_argument("--lm", help="n-gram model: kexue binary file or .arpa")
    p.add_argument("--corpus", help="train a Kneser-Ney LM on this text file (one sentence a line)")
    p.add_argument("--order", type=int, default=4, help="n-gram order for --corpus (default 4)")
    p.add_argument("--tokenizer", choices=["words", "whitespace", "chars", "jieba"],
                   default="words", help="how --corpus text is split and output joined "
                   "(default: words)")  # fmt: skip
    p.add_argument(
        "--hf", metavar="PATH_OR_ID", help=(
            "Hugging Face causal LM (local directory, or hub id in the local cache; never "
            f"downloads) {hf_role}"
        ),
    )  # fmt: skip
    p.add_argument("--device", help="--hf device, e.g. cpu, cuda (default: cuda when present)")
    p.add_argument("--dtype", help="--hf dtype, e.g. float32, bfloat16 (default: the model's)")


def _chain_options(p: argparse.ArgumentParser, n: int) -> None:
    """The chain options of generate, paraphrase and correct (`n`: the default --n)."""
    p.add_argument("--n", type=int, default=n, help=f"sentences per input (default {n})")
    p.add_argument(
        "--steps", type=int, default=None,
        help="MH steps per chain (default 200; 64 for each chain of a consensus pool)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=50, help="candidates per edit (default 50)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kexue", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"kexue {__version__} (SIMD road: {simd_road()})"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("bench", help="time a kernel beside its peers")
    p.add_argument("name", choices=benchmarks.available())
    p.add_argument("--size", type=int, default=None, help="problem size (default per bench)")
    p.add_argument("--repeat", type=int, default=7, help="timed runs; the median is shown")
    p.add_argument(
        "--json", action="store_true", help="print the cases (shape, seconds, ratios) as JSON"
    )
    p.set_defaults(run=_bench)

    p = commands.add_parser(
        "generate", help="sentences containing given keywords (CGMH)", description=(
            "Keyword-to-sentence generation by Metropolis-Hastings (CGMH). Without --lm or "
            "--corpus uses a built-in LM (offline): English (order 5, from CommonGen's "
            "training sentences) or, for keywords in Chinese characters or --lang zh, Chinese "
            "(order 4, People's Daily 1998; the zh extra)."
        ),
    )  # fmt: skip
    p.add_argument("words", nargs="*", metavar="WORD", help="keywords every sentence contains")
    p.add_argument("--input", help="file with one keyword set per line (whitespace-separated)")
    _model_options(p, "as the target; the n-gram LM proposes the words")
    _chain_options(p, n=3)
    p.add_argument(
        "--anneal", action="store_true",
        help="search (simulated annealing): the sentence a pool of chains agrees with most, "
        "weighed with its score",
    )  # fmt: skip
    p.add_argument(
        "--pool", type=int, default=None,
        help="chains per keyword set for --anneal's consensus (default: 24, 1 with --hf)",
    )  # fmt: skip
    p.add_argument("--fixed-order", action="store_true", help="keep keywords in the given order")
    p.add_argument("--gamma", type=float, default=1.0, help="exponent on p(x) (default 1)")
    p.add_argument("--min-len", type=int, default=1, help="shortest sentence (default 1)")
    p.add_argument("--max-len", type=int, default=40, help="longest sentence (default 40)")
    p.add_argument(
        "--forms", choices=["auto", "exact"], default="auto",
        help="auto: any English inflection of a keyword counts (default); exact: as given",
    )  # fmt: skip
    p.add_argument(
        "--length", type=int, default=None, metavar="N",
        help="length prior target in tokens (default: estimated from the LM; 0: none)",
    )  # fmt: skip
    p.add_argument("--no-block", action="store_true", help="lift the offensive-word filter")
    p.add_argument(
        "--no-backoff", action="store_true",
        help="no penalty for words the n-gram LM scores by backing off",
    )  # fmt: skip
    p.add_argument(
        "--lang", choices=["en", "zh"], default=None,
        help="built-in LM (default: zh for keywords in Chinese characters, else en)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object per sentence")
    p.add_argument("--plot", metavar="PNG", help="draw log-prob and acceptance traces")
    p.set_defaults(run=_generate)

    for name, what, weight in [
        ("paraphrase", "p(x)·exp(weight·cosine of bags of words(x, sentence))", 8.0),
        ("correct", "p(x)·exp(−weight·word edit distance(x, sentence))", 3.0),
    ]:
        p = commands.add_parser(
            name, help=f"{name} sentences (MH over word edits)",
            description=f"Searches (or with --sample, samples) {what} by Metropolis-Hastings "
            "over word edits, from the built-in English LM unless --lm, --corpus or --hf.",
        )  # fmt: skip
        p.add_argument("sentence", nargs="*", metavar="WORD", help="the sentence")
        p.add_argument("--input", help="file with one sentence per line")
        _model_options(p, "scoring every candidate word of an edit; the n-gram LM proposes them")
        _chain_options(p, n=1)
        p.add_argument("--weight", type=float, default=None,
                       help=f"weight of the closeness term (default {weight:g})")  # fmt: skip
        if name == "paraphrase":
            p.add_argument("--keep", nargs="+", default=[], metavar="WORD",
                           help="words every paraphrase keeps")  # fmt: skip
        p.add_argument("--sample", action="store_true", help="sample instead of annealing")
        p.add_argument("--json", action="store_true", help="one JSON object per sentence")
        p.set_defaults(run=_rewrite)

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


def _check_args(args: argparse.Namespace) -> None:
    """Usage errors found before any work starts (exit 2), reported by the subcommand."""
    words = ["kexue", args.command, getattr(args, "lm_command", None)]
    parser = _Parser(prog=" ".join(w for w in words if w), add_help=False)
    at_least = {"n": 1, "steps": 1, "pool": 1, "top_k": 1, "min_len": 1, "max_len": 1, "repeat": 1,
                "size": 1, "min_count": 1, "length": 0}  # fmt: skip
    for name, low in at_least.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if getattr(args, "seed", None) is not None and not 0 <= args.seed < 2**64:
        parser.error(f"--seed must be between 0 and 2**64 - 1, got {args.seed}")
    for name, strict in (("gamma", True), ("weight", False)):
        value = getattr(args, name, None)
        if value is not None and not (
            math.isfinite(value) and (value > 0 or not strict and value == 0)
        ):
            parser.error(
                f"--{name} must be a finite number {'>' if strict else '>='} 0, got {value}"
            )
    if getattr(args, "min_len", None) is not None and args.min_len > args.max_len:
        parser.error(f"--min-len ({args.min_len}) must be <= --max-len ({args.max_len})")
    order = getattr(args, "order", None)
    if order is not None and not 1 <= order <= 7:
        parser.error(f"--order must be between 1 and 7, got {order}")
    if args.command in ("generate", "paraphrase", "correct"):
        if args.lm and args.corpus:
            parser.error("give --lm or --corpus, not both")
        if getattr(args, "lang", None) and (args.lm or args.corpus):
            parser.error("--lang picks a built-in LM; not with --lm or --corpus")
        given = args.words if args.command == "generate" else args.sentence
        what = "keywords" if args.command == "generate" else "a sentence"
        if not args.input and not given:
            parser.error(f"give {what} or --input FILE")
        if args.input and given:
            parser.error(f"give {what} or --input FILE, not both")
    for name in ("plot", "output"):
        path = getattr(args, name, None)
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder is not None and not os.path.isdir(folder):
            parser.error(f"--{name} {path}: the folder {folder} does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command: an error is one line on stderr and exit status 1 (2 for usage
    errors, 130 for Ctrl-C); ``--debug`` shows the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _check_args(args)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("kexue: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Python flushes stdout at exit,
        # which would fail again, so it is pointed at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE
    except Exception as e:
        if args.debug:
            raise
        print(f"kexue: error: {e} ({type(e).__name__}; --debug shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
