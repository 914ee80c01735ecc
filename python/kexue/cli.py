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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kexue", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kexue {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("bench", help="time a kernel beside its peers")
    p.add_argument("name", choices=benchmarks.available())
    p.add_argument("--size", type=int, default=None, help="problem size (default per bench)")
    p.add_argument("--repeat", type=int, default=7, help="timed runs; the median is shown")
    p.set_defaults(run=_bench)
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
