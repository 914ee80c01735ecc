"""The PerformerLM example trains a few steps on PTB and its streamed decode equals a full pass."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "attention_performer_lm.py"
PTB = Path(os.environ.get("KEXUE_DATA", "/work/shared/data")) / "ptb"


@pytest.mark.torch
def test_performer_lm_example_runs_and_streams_exactly(tmp_path):
    data = PTB if (PTB / "ptb.train.txt").exists() else tmp_path
    if data == tmp_path:  # a stand-in corpus, so the test does not depend on the data mount
        text = "the cat sat on the mat\nthe dog sat on the log\n" * 200
        for name in ("ptb.train.txt", "ptb.valid.txt"):
            (tmp_path / name).write_text(text)
    spec = importlib.util.spec_from_file_location("attention_performer_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--data", str(data), "--steps", "3", "--lines", "300", "--seq", "32", "--batch", "4"]
    gap = module.main([*args, "--generate", "5"])
    assert gap < 1e-3
