"""Shared test set-up.

Tests marked ``torch`` skip when torch is missing, except under ``CI=true``, where a missing
torch fails the run: CI must exercise the torch roads, not skip them.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "torch: needs the optional torch extra")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAVE_TORCH:
        return
    if os.environ.get("CI", "").lower() == "true":
        raise pytest.UsageError("CI=true but torch is not installed: the torch tests must run")
    skip = pytest.mark.skip(reason="torch is not installed")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)
