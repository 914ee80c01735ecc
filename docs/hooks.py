"""MkDocs hook: the pages' TeX (``$...$``, ``$$...$$``, kept verbatim by
``pymdownx.arithmatex``) becomes MathML at build time, which browsers render natively: the
site needs no MathJax/KaTeX script and no network to show its formulas."""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert

_MATH = re.compile(r'<(span|div) class="arithmatex">\s*\\([(\[])(.*?)\\[)\]]\s*</\1>', re.DOTALL)


def on_page_content(content: str, **kwargs: Any) -> str:
    def mathml(m: re.Match[str]) -> str:
        display = "block" if m.group(2) == "[" else "inline"
        return convert(html.unescape(m.group(3)).strip(), display=display)

    return _MATH.sub(mathml, content)
