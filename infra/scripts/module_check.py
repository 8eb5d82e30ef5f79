#!/usr/bin/env python3
"""Config-level load check of Terraform modules, without providers.

For every module: all .tf files parse, every variable has a description and a
type, every output has a description, every provider a resource/data source
uses is declared in required_providers, and every var.X reference is declared.
This is the only check possible for modules whose providers (helm, kubernetes)
cannot be installed offline; it runs on all modules for uniformity.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hcl import REPO_ROOT, HclError, blocks, load, single  # noqa: E402

BUILTIN_PROVIDERS = {"terraform"}
VAR_REF = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")
COMMENT = re.compile(r"(?m)(#|//).*$")


def check_module(mod: Path) -> list[str]:
    errors: list[str] = []
    tf_files = sorted(mod.glob("*.tf"))
    if not tf_files:
        return [f"{mod}: no .tf files"]
    variables: dict = {}
    outputs: dict = {}
    required: dict = {}
    used_providers: set[str] = set()
    configured: set[str] = set()
    text = ""
    for f in tf_files:
        try:
            doc = load(f)
        except HclError as exc:
            errors.append(str(exc))
            continue
        text += COMMENT.sub("", f.read_text(encoding="utf-8")) + "\n"
        variables.update(blocks(doc, "variable"))
        outputs.update(blocks(doc, "output"))
        for tf in doc.get("terraform", []):
            for rp in tf.get("required_providers", []):
                required.update(rp)
        for kind in ("resource", "data", "ephemeral"):
            for rtype in blocks(doc, kind):
                used_providers.add(rtype.split("_", 1)[0])
        configured.update(blocks(doc, "provider"))
    rel = mod.relative_to(REPO_ROOT) if mod.is_relative_to(REPO_ROOT) else mod
    for name, body in variables.items():
        if not body.get("description"):
            errors.append(f"{rel}: variable {name!r} has no description")
        if "type" not in body:
            errors.append(f"{rel}: variable {name!r} has no type")
    for name, body in outputs.items():
        if not body.get("description"):
            errors.append(f"{rel}: output {name!r} has no description")
    for p in sorted((used_providers | configured) - BUILTIN_PROVIDERS - set(required)):
        errors.append(f"{rel}: provider {p!r} is used but not declared in required_providers")
    for name, spec in required.items():
        if not isinstance(spec, dict) or "source" not in spec or "version" not in spec:
            errors.append(f"{rel}: required_providers.{name} needs source and version")
    for ref in sorted(set(VAR_REF.findall(text)) - set(variables)):
        errors.append(f"{rel}: var.{ref} is referenced but not declared")
    return errors


def main(argv: list[str]) -> int:
    mods = [Path(a).resolve() for a in argv] or sorted(
        p for p in (REPO_ROOT / "infra" / "modules").iterdir() if p.is_dir()
    )
    errors = [e for m in mods for e in check_module(m)]
    for e in errors:
        print(f"ERROR {e}")
    print(f"module_check: {len(mods)} modules, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
