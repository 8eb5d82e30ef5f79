"""Shared HCL loading for the offline infra checks.

python-hcl2 is installed with --target into .venv-infra/pyhcl2 (see
.ci/infra-setup.sh) so it does not clobber checkov's bundled `hcl2` fork.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
_PYHCL2 = Path(os.environ.get("INFRA_VENV", REPO_ROOT / ".venv-infra")) / "pyhcl2"
if _PYHCL2.is_dir() and str(_PYHCL2) not in sys.path:
    sys.path.insert(0, str(_PYHCL2))

import hcl2  # noqa: E402


class HclError(Exception):
    pass


def load(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return hcl2.load(fh)
    except Exception as exc:  # lark raises many unrelated types
        raise HclError(f"{path}: does not parse: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def blocks(doc: dict, kind: str) -> dict:
    """Merge `kind "label" {}` blocks into {label: body}."""
    out: dict = {}
    for item in doc.get(kind, []):
        out.update(item)
    return out


def single(doc: dict, kind: str) -> dict:
    """Merge unlabelled blocks such as `locals {}` or `terraform {}`."""
    out: dict = {}
    for item in doc.get(kind, []):
        out.update(item)
    return out
