"""Fixtures for the kuberay/ manifest tests (run with the .venv-k8s interpreter;
kuberay/scripts/check.sh passes --confcutdir so tests/conftest.py, which needs the
app's dependencies, is not loaded)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kuberay_testlib import rendered  # noqa: E402


@pytest.fixture
def test_docs() -> list[dict]:
    return rendered("test")


@pytest.fixture
def prod_docs() -> list[dict]:
    return rendered("prod")
