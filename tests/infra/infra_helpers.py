"""Helpers for the infra check tests: copy modules/units to a temp dir, plant a
mistake, run terraform there."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
SCRIPTS = INFRA / "scripts"
sys.path.insert(0, str(SCRIPTS))

IGNORE = shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", ".terragrunt-cache")


def copy_module(name: str, dst_root: Path) -> Path:
    dst = dst_root / name
    shutil.copytree(INFRA / "modules" / name, dst, ignore=IGNORE)
    return dst


def copy_infra(dst_root: Path) -> Path:
    """Copy infra/live and infra/modules keeping their relative layout."""
    dst = dst_root / "infra"
    for sub in ("live", "modules"):
        shutil.copytree(INFRA / sub, dst / sub, ignore=IGNORE)
    return dst


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) >= 1, f"planting failed: {old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def run_terraform_test(module_dir: Path, env: dict) -> subprocess.CompletedProcess:
    tf = env["INFRA_TERRAFORM"]
    env = {**env, "TF_DATA_DIR": str(module_dir / ".terraform")}
    init = subprocess.run([tf, f"-chdir={module_dir}", "init", "-backend=false", "-input=false", "-no-color"],
                          capture_output=True, text=True, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    return subprocess.run([tf, f"-chdir={module_dir}", "test", "-no-color"], capture_output=True, text=True, env=env)
