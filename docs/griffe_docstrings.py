"""Griffe extension: reads kexue's docstrings (reStructuredText habits) as Markdown.

- Sphinx roles (``:func:`generate```, ``:meth:`save```) become mkdocstrings
  cross-references. A target is looked up the way Sphinx does: as written, then in the
  enclosing class and module. Public kexue targets become links (a kexue name that does not
  exist is an error); others (private ones, ``numpy.random.SeedSequence``) stay code.
- Doctest blocks (``>>>`` paragraphs) outside an ``Example:`` section become ``pycon`` code
  fences; Markdown would otherwise read them as nested block quotes.
- Constants of the compiled ``kexue._native`` are inspected at run time, where an ``int``
  reports ``int``'s own docstring: those are dropped.

Written by hand because no Griffe extension reads Sphinx roles or bare doctest paragraphs.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|meth|class|mod|attr|data|exc|obj):`~?([\w.]+)`")
BUILTIN_DOCS = {inspect.cleandoc(t.__doc__ or "") for t in (int, float, str, bool, tuple)}
SECTION = re.compile(r"^\s*(Examples?|Args|Arguments|Returns|Raises|Yields|Note|Notes):\s*$")


def _lookup(scope: Any, name: str) -> str | None:
    """The path of ``name`` seen from ``scope``; "" for a private object (not rendered)."""
    try:
        found = scope[name]
        return found.path if found.is_public else ""
    except (KeyError, ValueError, griffe.AliasResolutionError):
        return None


def _resolve(obj: Any, name: str) -> str | None:
    scope = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        found = _lookup(scope, name)
        if found is not None:
            return found
        scope = scope.parent
    head, _, rest = name.partition(".")
    if head == obj.package.name:
        return _lookup(obj.package, rest) if rest else obj.package.path
    return None


def _fence_doctests(text: str) -> str:
    """Wraps ``>>>`` paragraphs in ```` ```pycon ```` fences, except inside a Google-style
    section, whose parser already renders them."""
    out: list[str] = []
    lines = text.split("\n")
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if SECTION.match(line):
            section_indent = indent
        elif line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None
        if line.lstrip().startswith(">>>") and section_indent is None:
            j = i
            while j < len(lines) and lines[j].strip():
                j += 1
            pad = " " * indent
            out += [f"{pad}```pycon", *lines[i:j], f"{pad}```"]
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class KexueDocstrings(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: Any, seen: set[str]) -> None:
        if obj.path in seen or obj.is_alias:
            return
        seen.add(obj.path)
        if obj.docstring is not None and obj.docstring.value.strip() in BUILTIN_DOCS:
            obj.docstring = None
        if obj.docstring is not None:

            def link(m: re.Match[str]) -> str:
                name = m.group(1)
                target = _resolve(obj, name)
                if target:
                    return f"[`{name}`][{target}]"
                if target is None and name.startswith(obj.package.name + "."):
                    raise ValueError(f"{obj.path}: docstring names a missing object {name!r}")
                return f"`{name}`"

            obj.docstring.value = ROLE.sub(link, _fence_doctests(obj.docstring.value))
        for member in obj.members.values():
            self._walk(member, seen)
