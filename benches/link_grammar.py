"""Share of sentences that Link Grammar parses as complete English sentences: an automatic
grammaticality check, independent of the LMs that CGMH's outputs are scored by.

A sentence counts when the parser finds a linkage with no null link (every word joined; a
word it cannot attach makes the sentence fail), as AbiWord's grammar checker does. The parser
is strict with some fluent text (88% of CommonGen dev's first human sentences pass) and lets
through some nonsense, so compare rows against the human row, not against 100%.

    python benches/cgmh_commongen.py --save /tmp/outputs.json
    python3 benches/link_grammar.py /tmp/outputs.json

Needs the ``linkgrammar`` Python module of CMU's Link Grammar (LGPL, not on PyPI; Debian and
Ubuntu: ``apt-get install python3-link-grammar link-grammar-dictionaries-en``, then run this
script with that Python).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import linkgrammar


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("outputs", type=Path, help="JSON of row name → sentences")
    ap.add_argument("--seconds", type=int, default=2, help="parse time limit per sentence")
    args = ap.parse_args()
    rows = json.loads(args.outputs.read_text("utf-8"))
    dictionary = linkgrammar.Dictionary("en")
    options = linkgrammar.ParseOptions(min_null_count=0, max_null_count=0, verbosity=0,
                                       max_parse_time=args.seconds)  # fmt: skip

    def parses(text: str) -> bool:
        return len(linkgrammar.Sentence(text, dictionary, options).parse()) > 0

    print(f"Link Grammar {linkgrammar.Clinkgrammar.linkgrammar_get_version()}")
    print("| row | sentences | parsed % |\n|---|---|---|")
    for name, texts in rows.items():
        share = 100 * sum(map(parses, texts)) / len(texts)
        print(f"| {name} | {len(texts)} | {share:.1f} |")


if __name__ == "__main__":
    main()
