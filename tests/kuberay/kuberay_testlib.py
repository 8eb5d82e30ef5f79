"""Shared helpers for tests/kuberay (imported by conftest and the tests)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
for p in (REPO_ROOT, REPO_ROOT / "kuberay" / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import kuberay_checks  # noqa: E402

_CACHE: dict[str, list[dict]] = {}


def rendered(variant: str) -> list[dict]:
    """kustomize build of a variant (cached per session; returns a fresh copy)."""
    if variant not in _CACHE:
        _CACHE[variant] = kuberay_checks.render(variant)
    return copy.deepcopy(_CACHE[variant])
