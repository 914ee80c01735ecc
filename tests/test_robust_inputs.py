"""Inputs and messages: keywords, integer arguments, and the command line (one line on
stderr, exit 2 for usage, 1 for data, 130 for Ctrl-C, quiet broken pipes, --debug)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from kexue import _native, cli, pipelines
from kexue.cgmh import generate, generate_many
from kexue.lm import NgramLM
from kexue.vmf import sample_vmf

LINES = ["the cat sat on the mat", "a dog saw the cat"] * 5


@pytest.fixture(scope="module")
def lm() -> NgramLM:
    return NgramLM.build(LINES, order=2, progress=False, discount_fallback=True)


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        (["\ud800"], "lone surrogate"),
        (["cat", "<s>"], "reserved symbol '<s>'"),
        (["</s>"], "reserved symbol '</s>'"),
        (["<unk>"], "reserved symbol '<unk>'"),
        ([""], "must not hold empty strings"),
        (["  "], "must not hold empty strings"),
        ([], "at least one keyword"),
    ],
)
def test_bad_keywords_are_value_errors(lm, keywords, message) -> None:
    with pytest.raises(ValueError, match=message):
        generate(keywords, lm, steps=2)
    with pytest.raises(ValueError, match=r"keyword_lists\[1\]"):
        generate_many([["cat"], keywords], lm, steps=2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lm: generate(["cat"], lm, seed=2**64), "seed must be between 0 and"),
        (lambda lm: generate(["cat"], lm, seed=-1), "seed must be between 0 and"),
        (lambda lm: generate(["cat"], lm, max_len=-1), "max_len must be between 1 and"),
        (lambda lm: generate(["cat"], lm, min_len=-1), "min_len must be between 1 and"),
        (lambda lm: generate(["cat"], lm, n=0), "n must be >= 1"),
        (lambda lm: sample_vmf(np.ones(3), 1.0, 2, seed=2**64), "seed must be between"),
        (lambda lm: sample_vmf(np.ones(3), 1.0, -1, seed=0), "n must be >= 1"),
        (lambda lm: pipelines.row_seeds(2**64, [0]), "seed must be between"),
        (lambda lm: NgramLM.build(LINES, order=0, progress=False), "order must be between"),
        (lambda lm: sample_vmf(np.ones(3), 1.0, 2**64, seed=0), "n must be at most 2\\*\\*64"),
        (lambda lm: NgramLM.from_counts({"a": 1}, {}, eos_count=2**64), "eos_count must be at"),
        (lambda lm: NgramLM.from_counts({"a": 2**64}, {}), "count must be at most"),
        (lambda lm: NgramLM.build(LINES, min_count=2**70, progress=False), "min_count must be"),
    ],
)
def test_integer_arguments_out_of_range_name_the_argument(lm, call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call(lm)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: _native.vmf_sample(np.ones((1, 3)), np.ones(1), 2, 2**64),
            r"^seed must be between 0 and 2\*\*64 - 1, got 18446744073709551616$",
        ),
        (lambda: _native.NgramCorpus().build(-1), r"^order must be between 0 and 2\*\*64 - 1"),
        (
            lambda: _native.lm_from_counts([("the", -1)], [], 1),
            r"^unigram_counts\['the'\] must be between 0 and 2\*\*64 - 1, got -1$",
        ),
        (
            lambda: _native.lm_from_counts([("a", 1)], [("a", "b", 2**70)], 1),
            r"^bigram_counts\[\('a', 'b'\)\] must be between 0 and 2\*\*64 - 1",
        ),
        (lambda: _native.multitask_pcgrad_orders(3, -5), r"^seed must be between 0 and"),
        (
            lambda: _native.multitask_primary_auxiliary_weights(np.eye(2), [0, -1]),
            r"^primary\[1\] must be between 0 and",
        ),
        (lambda: _native.set_num_threads(True), r"^n must be an int, got bool$"),
        (lambda: _native.set_num_threads(1.5), r"^n must be an int, got float$"),
    ],
)
def test_native_integer_arguments_get_kexues_message(call, message) -> None:
    """Direct calls of the bindings: one rule for every integer argument (the conversion
    layer), never pyo3's "int too big to convert" or "can't convert negative int"."""
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_file(tmp_path, lm) -> str:
    path = str(tmp_path / "m.kxlm")
    lm.save(path)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--n", "0", "cat"], "--n must be >= 1, got 0"),
        (["generate", "--steps", "-3", "cat"], "--steps must be >= 1"),
        (["generate", "--pool", "0", "cat"], "--pool must be >= 1, got 0"),
        (["generate", "--seed", str(2**64), "cat"], "--seed must be between 0 and 2**64 - 1"),
        (["generate", "--plot", "/missing/dir/x.png", "cat"], "the folder /missing/dir"),
        (["generate"], "give keywords or --input FILE"),
        (["generate", "--lm", "a", "--corpus", "b", "cat"], "give --lm or --corpus, not both"),
        (["generate", "--n", "zero", "cat"], "invalid int value: 'zero'"),
        (["bench", "vmf", "--repeat", "0"], "--repeat must be >= 1, got 0"),
        (["generate", "--gamma", "-1", "cat"], "--gamma must be a finite number > 0"),
        (["generate", "--gamma", "nan", "cat"], "--gamma must be a finite number > 0"),
        (["generate", "--length", "-3", "cat"], "--length must be >= 0, got -3"),
        (["generate", "--min-len", "5", "--max-len", "3", "cat"], "--min-len (5) must be <="),
        (["paraphrase", "--weight", "nan", "the", "cat"], "--weight must be a finite number >= 0"),
        (["lm", "build", "c.txt", "-o", "m", "--order", "9"], "--order must be between 1 and 7"),
        (["lm", "build", "c.txt", "-o", "/missing/dir/m"], "the folder /missing/dir"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, argv, message) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err and "(see kexue" in err, err


def test_data_errors_are_one_line_exit_1(capsys, tmp_path, model_file, monkeypatch) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"cat\n\xff dog\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    cases = [
        (["generate", "--input", str(bad), "--lm", model_file], "line 2: invalid UTF-8"),
        (["lm", "ppl", model_file, str(empty)], "is empty"),
        (["lm", "ppl", model_file, str(bad)], "line 2: invalid UTF-8"),
        (["lm", "ppl", str(tmp_path / "missing"), str(bad)], "No such file"),
        (["lm", "ppl", fifo, str(bad)], "FIFO, not a regular file"),
        (["generate", "--lm", str(bad), "cat"], "bad.txt"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(argv, capsys)
        assert code == 1, (argv, err)
        assert err.count("\n") == 1 and err.startswith("kexue: error:") and message in err, err
    stdin = io.TextIOWrapper(io.BytesIO(b"the cat\n\xfe\n"))
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = run_cli(["lm", "score", model_file], capsys)
    assert code == 1 and "stdin: line 2: invalid UTF-8" in err and out.count("\n") == 1


def test_debug_shows_the_traceback(capsys, tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "lm", "ppl", str(tmp_path / "missing"), "x"])
    with pytest.raises(FileNotFoundError):
        cli.main(["lm", "ppl", "--debug", str(tmp_path / "missing"), "x"])
    # more keywords than max_len: one line without --debug, the ValueError itself with it
    argv = ["generate", "cat", "dog", "bird", "--max-len", "2", "--steps", "2"]
    with pytest.raises(SystemExit, match="kexue generate: .* more than max_len"):
        cli.main(argv)
    with pytest.raises(ValueError, match="more than max_len"):
        cli.main([*argv, "--debug"])


def test_broken_pipe_ends_quietly(model_file) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kexue.cli", "lm", "score", model_file],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # as `| head -0`: the reader is gone before anything is written
    _, err = proc.communicate(b"the cat sat\n" * 100_000, timeout=120)
    assert proc.returncode == 141 and err == b"", err
