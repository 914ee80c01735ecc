"""What the docs site is built from: a runnable example on every public function and class of
kexue (run by `pytest --doctest-modules python/kexue`), and `kexue bench NAME --json` (the
benchmark chart)."""

from __future__ import annotations

import importlib
import json

import pytest

from kexue.cli import main

MODULES = [
    "kexue", "kexue.activations", "kexue.attention", "kexue.benchmarks", "kexue.cgmh",
    "kexue.lm", "kexue.losses", "kexue.multitask", "kexue.nn", "kexue.pipelines",
    "kexue.scorers", "kexue.text", "kexue.vmf",
]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_every_public_callable_has_an_example(name):
    if name in ("kexue.nn", "kexue.pipelines"):
        pytest.importorskip("torch" if name == "kexue.nn" else "pandas")
    module = importlib.import_module(name)
    missing = [
        member
        for member in module.__all__
        if callable(obj := getattr(module, member)) and ">>>" not in (obj.__doc__ or "")
    ]
    assert not missing, f"{name}: public callables without a >>> example: {missing}"


def test_bench_json(capsys):
    pytest.importorskip("torch")
    assert main(["bench", "squareplus", "--size", "1000", "--repeat", "1", "--json"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)  # stdout is the JSON document alone
    assert report["bench"] == "squareplus" and report["threads"] >= 1
    cases = report["cases"]
    assert [c["case"] for c in cases] == ["squareplus numpy road", "squareplus torch CPU road"]
    for c in cases:
        assert "1e+03 float32" in c["shape"]
        assert set(c["seconds"]) == {"kexue", *c["ratios"]} and len(c["ratios"]) == 3
        for peer, ratio in c["ratios"].items():
            assert ratio == pytest.approx(c["seconds"]["kexue"] / c["seconds"][peer])
    assert "ours/peer" in out.err  # the human-readable lines went to stderr
