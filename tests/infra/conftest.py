"""Fixtures for the infra check tests. Self-contained: no app package, no app config.

Run from the repo root (--confcutdir keeps the app's tests/conftest.py out):
    .venv-infra/bin/python -m pytest tests/infra -p no:cacheprovider -c /dev/null --rootdir . --confcutdir tests/infra
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from infra_helpers import REPO_ROOT

@pytest.fixture(scope="session")
def tf_env() -> dict:
    """Environment for terraform/checkov subprocesses (offline provider mirror)."""
    env = dict(os.environ)
    if not (env.get("TF_CLI_CONFIG_FILE") and env.get("INFRA_TERRAFORM")):
        out = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "infra-setup.sh"), "--print-env"],
                             check=True, capture_output=True, text=True).stdout
        env.update(re.findall(r"^export (\w+)='([^']*)'$", out, flags=re.M))
    env["CHECKPOINT_DISABLE"] = "1"
    env.pop("TF_DATA_DIR", None)
    return env
