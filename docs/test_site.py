"""Checks of the built site, run by .ci/run after `mkdocs build --strict` and the Chromium
screenshots: `KEXUE_SITE=site KEXUE_SHOTS=DIR pytest docs/test_site.py`.

- no broken internal link: every relative href/src of every page names a file of the site,
  and every #fragment an id of its target page;
- the API reference holds every public name of every kexue module (its ``__all__``);
- every formula became MathML and every figure is a non-empty SVG;
- the screenshots are not blank: a page with text, figures and formulas has many colours and
  no single colour covering almost all of it.
"""

from __future__ import annotations

import importlib
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

SITE = Path(os.environ.get("KEXUE_SITE", "site"))
SHOTS = os.environ.get("KEXUE_SHOTS")
MODULES = [
    "kexue", "kexue.activations", "kexue.attention", "kexue.benchmarks", "kexue.cgmh",
    "kexue.lm", "kexue.losses", "kexue.multitask", "kexue.nn", "kexue.pipelines",
    "kexue.scorers", "kexue.text", "kexue.vmf",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not (SITE / "index.html").exists(), reason=f"no built site at {SITE}: run mkdocs build"
)


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)
            elif name == "id" and value:
                self.ids.add(value)


def _pages() -> dict[Path, Page]:
    pages = {}
    for path in sorted(SITE.resolve().rglob("*.html")):
        page = Page()
        page.feed(path.read_text(encoding="utf-8"))
        pages[path] = page
    return pages


@pytest.fixture(scope="module")
def pages() -> dict[Path, Page]:
    return _pages()


def test_no_broken_internal_links(pages):
    broken = []
    checked = 0
    for path, page in pages.items():
        if path.name == "404.html":  # served from any depth, so its links are site-absolute
            continue
        for link in page.links:
            url = urlsplit(link)
            if url.scheme or url.netloc or link.startswith(("mailto:", "data:")):
                continue
            target = (path.parent / unquote(url.path)).resolve() if url.path else path
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            where = f"{path.relative_to(SITE.resolve())}: {link}"
            if not target.is_file():
                broken.append(where)
            elif (
                url.fragment and target in pages and unquote(url.fragment) not in pages[target].ids
            ):
                broken.append(f"{where} (no such id)")
    assert checked > 500, f"only {checked} internal links found: is the site complete?"
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_reference_lists_every_public_name(pages):
    ids = set().union(*(page.ids for page in pages.values()))
    missing = [
        f"{name}.{member}"
        for name in MODULES
        for member in importlib.import_module(name).__all__
        if f"{name}.{member}" not in ids and member != "__version__"
    ]
    assert not missing, f"public names missing from the API reference: {missing}"


def test_formulas_and_figures_rendered(pages):
    for name in ("cgmh", "attention", "lm", "vmf", "losses", "multitask"):
        page = pages[(SITE / name / "index.html").resolve()]
        assert page.tags.get("math", 0) >= 3, f"{name}: formulas not rendered as MathML"
        html = (SITE / name / "index.html").read_text(encoding="utf-8")
        assert "$$" not in html and "arithmatex" not in html, f"{name}: raw TeX left"
    figures = sorted((SITE / "figures").glob("*.svg"))
    benches = {f"bench_{p.stem}" for p in Path(__file__).parent.glob("benchmarks/*.json")}
    assert {f.stem for f in figures} == {"favor_error", "vmf_sphere", "cgmh_trace", *benches}
    for f in figures:
        assert f.stat().st_size > 10_000 and b"<svg" in f.read_bytes()[:2000], f


@pytest.mark.skipif(not SHOTS, reason="KEXUE_SHOTS (the screenshots folder) not given")
def test_screenshots_are_not_blank():
    from matplotlib.image import imread

    shots = sorted(Path(SHOTS).glob("*.png"))
    assert len(shots) >= 3, f"expected the index and two part pages in {SHOTS}"
    for shot in shots:
        rgb = (imread(shot)[..., :3] * 255).astype(np.uint32).reshape(-1, 3)
        packed = rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]
        colours, counts = np.unique(packed, return_counts=True)
        assert packed.size > 500_000, f"{shot.name}: only {packed.size} pixels"
        assert len(colours) > 500, f"{shot.name}: {len(colours)} colours, looks blank"
        assert counts.max() / packed.size < 0.9, f"{shot.name}: one colour covers ≥ 90%"
