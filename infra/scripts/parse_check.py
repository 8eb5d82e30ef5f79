#!/usr/bin/env python3
"""Every .tf and .hcl file under a tree must parse as HCL2."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hcl import HclError, load  # noqa: E402

SKIP_DIRS = {".terraform", ".terragrunt-cache"}


def parse_all(root: Path) -> tuple[int, list[str]]:
    files = [p for p in sorted(root.rglob("*")) if p.suffix in {".tf", ".hcl"} and p.is_file()
             and not SKIP_DIRS.intersection(p.parts) and p.name != ".terraform.lock.hcl"]
    errors = []
    for f in files:
        try:
            load(f)
        except HclError as exc:
            errors.append(str(exc))
    return len(files), errors


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    n, errors = parse_all(root)
    for e in errors:
        print(f"ERROR {e}")
    print(f"parse_check: {n} files, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
