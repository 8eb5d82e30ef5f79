#!/usr/bin/env python3
"""Terragrunt consistency check (no terragrunt binary exists offline).

A unit is a terragrunt.hcl under a live dir (not under a `_`-prefixed dir such
as `_envcommon/`, which holds shared configuration, not units). Each unit's
include blocks other than root.hcl (e.g. `_envcommon/<unit>.hcl`) are resolved
the way terragrunt does it - in the context of the including unit, so
get_terragrunt_dir() and find_in_parent_folders() start from the unit's
directory and relative config_path/source are relative to the unit - and merged
into the unit (merge_strategy "deep", or shallow by default). Every check below
runs on that merged unit, so a mistake in a shared file is reported for every
unit (and environment) that includes it:
  * it includes root.hcl, whose remote_state uses S3 with use_lockfile = true;
  * every include resolves to an existing file, with no nested includes, and
    every `_envcommon` file is included by some unit;
  * terraform.source resolves to an existing module dir;
  * every local.env.X it uses is defined in the environment's env.hcl;
  * every dependency config_path is an existing unit, and the graph is acyclic;
  * every dependency has mock_outputs, allowed for init/validate/plan only;
  * every dependency.D.outputs.O used is declared as a dependency, covered by
    mock_outputs, and exists as an output of D's module;
  * inputs name only module variables and set every required variable.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hcl import REPO_ROOT, HclError, blocks, load, single  # noqa: E402

INTERP = re.compile(r"\$\{([^{}]*)\}")
FIND_PARENT = re.compile(r'^find_in_parent_folders\("([^"]+)"\)$')
DIRNAME_FIND_PARENT = re.compile(r'^dirname\(find_in_parent_folders\("([^"]+)"\)\)$')
DEP_REF = re.compile(r"\bdependency\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)")
ENV_REF = re.compile(r"\blocal\.env\.([A-Za-z0-9_-]+)")
MOCK_COMMANDS = {"init", "validate", "plan"}


def module_interface(mod: Path) -> tuple[dict, set]:
    """Return ({variable: required?}, {outputs}) of a module."""
    variables: dict[str, bool] = {}
    outputs: set[str] = set()
    for f in sorted(mod.glob("*.tf")):
        doc = load(f)
        for name, body in blocks(doc, "variable").items():
            variables[name] = "default" not in body
        outputs.update(blocks(doc, "output"))
    return variables, outputs


def find_up(start: Path, name: str, stop: Path) -> Path | None:
    for d in [start, *start.parents]:
        if (d / name).is_file():
            return d / name
        if d == stop:
            break
    return None


def find_in_parent_folders(unit_dir: Path, name: str) -> Path | None:
    """terragrunt's find_in_parent_folders(name): search from the unit's parent upwards."""
    for d in unit_dir.parents:
        if (d / name).is_file():
            return d / name
    return None


def resolve_path(unit_dir: Path, value: object) -> Path | None:
    """Resolve a path expression as terragrunt would for the unit in unit_dir.

    Supports literal paths (relative to the unit), ${get_terragrunt_dir()},
    ${find_in_parent_folders("X")} and ${dirname(find_in_parent_folders("X"))};
    returns None for anything else (it cannot be checked statically)."""
    if not isinstance(value, str):
        return None
    unresolved = False

    def sub(m: re.Match) -> str:
        nonlocal unresolved
        expr = m.group(1).strip()
        if expr == "get_terragrunt_dir()":
            return str(unit_dir)
        for pattern, parent in ((FIND_PARENT, False), (DIRNAME_FIND_PARENT, True)):
            fm = pattern.match(expr)
            if fm:
                found = find_in_parent_folders(unit_dir, fm.group(1))
                if found is None:
                    break
                return str(found.parent if parent else found)
        unresolved = True
        return ""

    text = INTERP.sub(sub, value)
    if unresolved or not text:
        return None
    return (unit_dir / text.replace("//", "/")).resolve()


def deep_merge(parent: object, child: object) -> object:
    """terragrunt's deep merge: maps merge recursively, lists concatenate, child wins otherwise."""
    if isinstance(parent, dict) and isinstance(child, dict):
        out = dict(parent)
        for k, v in child.items():
            out[k] = deep_merge(parent[k], v) if k in parent else v
        return out
    if isinstance(parent, list) and isinstance(child, list):
        return [*parent, *child]
    return child


def normalize(doc: dict) -> dict:
    """The parts of a terragrunt config the checks use, with blocks merged by label."""
    inputs = doc.get("inputs", {})
    if isinstance(inputs, list):
        inputs = single(doc, "inputs")
    return {
        "terraform": single(doc, "terraform"),
        "locals": single(doc, "locals"),
        "dependency": blocks(doc, "dependency"),
        "inputs": inputs if isinstance(inputs, dict) else {},
    }


def merge_config(parent: dict, child: dict, strategy: str) -> dict:
    """Merge an included (parent) config into the including (child) one."""
    if strategy == "deep":
        return {k: deep_merge(parent[k], child[k]) for k in child}
    # shallow: child attributes replace parent ones; blocks with the same label are replaced
    return {k: {**parent[k], **child[k]} for k in child}


class Checker:
    def __init__(self, live: Path):
        self.live = live.resolve()
        self.errors: list[str] = []
        self.units: dict[Path, dict] = {}
        self.included: set[Path] = set()
        self.interfaces: dict[Path, tuple[dict, set]] = {}

    def interface(self, module: Path) -> tuple[dict, set]:
        if module not in self.interfaces:
            self.interfaces[module] = module_interface(module)
        return self.interfaces[module]

    def rel(self, path: Path) -> str:
        for base in (REPO_ROOT, self.live.parent):
            try:
                return str(path.relative_to(base))
            except ValueError:
                pass
        return str(path)

    def err(self, where: Path, msg: str) -> None:
        unit = self.units.get(where.parent) if where.name == "terragrunt.hcl" else None
        via = ""
        if unit and unit["included"]:
            via = " (with " + ", ".join(self.rel(p) for p in unit["included"]) + ")"
        self.errors.append(f"{self.rel(where)}{via}: {msg}")

    def is_unit_file(self, f: Path) -> bool:
        rel_parts = f.relative_to(self.live).parts[:-1]
        return ".terragrunt-cache" not in f.parts and not any(p.startswith("_") for p in rel_parts)

    def run(self) -> list[str]:
        unit_files = [f for f in sorted(self.live.rglob("terragrunt.hcl")) if self.is_unit_file(f)]
        if not unit_files:
            self.err(self.live, "no terragrunt.hcl units found")
        for f in unit_files:
            try:
                doc = load(f)
            except HclError as exc:
                self.errors.append(str(exc))
                continue
            self.units[f.parent] = {"doc": doc, "text": f.read_text(encoding="utf-8"),
                                    "includes_root": False, "included": [], "config": normalize(doc)}
        for unit_dir in self.units:
            self.resolve_includes(unit_dir)
        self.check_root()
        for unit_dir in self.units:
            self.check_unit(unit_dir)
        self.check_acyclic()
        self.check_envcommon_used()
        return self.errors

    def resolve_includes(self, unit_dir: Path) -> None:
        """Merge the unit's non-root includes into unit["config"] and unit["text"]."""
        unit = self.units[unit_dir]
        where = unit_dir / "terragrunt.hcl"
        config = unit["config"]
        for name, body in blocks(unit["doc"], "include").items():
            path = resolve_path(unit_dir, body.get("path"))
            if path is None:
                self.err(where, f"include {name!r}: cannot resolve path {body.get('path')!r}")
                continue
            if not path.is_file():
                self.err(where, f"include {name!r}: {self.rel(path)} does not exist")
                continue
            if path.name == "root.hcl":
                unit["includes_root"] = True
                continue
            try:
                doc = load(path)
            except HclError as exc:
                self.errors.append(str(exc))
                continue
            self.included.add(path)
            unit["included"].append(path)
            if doc.get("include"):
                self.err(where, f"include {name!r}: {self.rel(path)} has include blocks (terragrunt does not nest includes)")
            strategy = body.get("merge_strategy", "shallow")
            if strategy not in {"deep", "shallow"}:
                self.err(where, f"include {name!r}: merge_strategy {strategy!r} is not checked; use \"deep\"")
            config = merge_config(normalize(doc), config, strategy)
            unit["text"] += "\n" + path.read_text(encoding="utf-8")
        unit["config"] = config

    def check_envcommon_used(self) -> None:
        common = self.live / "_envcommon"
        for f in sorted(common.glob("*.hcl")) if common.is_dir() else []:
            if f.resolve() not in self.included:
                self.err(f, "is not included by any unit")

    def check_root(self) -> None:
        root = self.live / "root.hcl"
        if not root.is_file():
            self.err(root, "missing")
            return
        try:
            doc = load(root)
        except HclError as exc:
            self.errors.append(str(exc))
            return
        rs = single(doc, "remote_state")
        cfg = rs.get("config", {})
        if rs.get("backend") != "s3":
            self.err(root, "remote_state backend must be s3")
        if cfg.get("use_lockfile") is not True:
            self.err(root, "remote_state config must set use_lockfile = true")
        if cfg.get("encrypt") is not True:
            self.err(root, "remote_state config must set encrypt = true")
        if "provider" not in blocks(doc, "generate"):
            self.err(root, "must generate the provider configuration")

    def module_of(self, unit_dir: Path) -> Path | None:
        return resolve_path(unit_dir, self.units[unit_dir]["config"]["terraform"].get("source"))

    def dep_paths(self, unit_dir: Path) -> dict[str, Path]:
        deps = self.units[unit_dir]["config"]["dependency"]
        paths = {name: resolve_path(unit_dir, body.get("config_path")) for name, body in deps.items()}
        return {name: p for name, p in paths.items() if p is not None}

    def check_unit(self, unit_dir: Path) -> None:
        unit = self.units[unit_dir]
        config, text = unit["config"], unit["text"]
        where = unit_dir / "terragrunt.hcl"

        if not unit["includes_root"]:
            self.err(where, "does not include root.hcl")

        env_file = find_up(unit_dir, "env.hcl", self.live)
        env_locals = single(load(env_file), "locals") if env_file else {}
        for key in sorted(set(ENV_REF.findall(text))):
            if key not in env_locals:
                self.err(where, f"local.env.{key} is not defined in {env_file or 'any env.hcl'}")

        # source
        source = config["terraform"].get("source")
        module = None
        if not isinstance(source, str):
            self.err(where, "terraform.source is missing")
        elif (module := resolve_path(unit_dir, source)) is None:
            self.err(where, f"terraform.source must be a local path (relative, get_terragrunt_dir() or "
                            f"dirname(find_in_parent_folders(...))), got {source!r}")
        else:
            if not module.is_dir() or not list(module.glob("*.tf")):
                self.err(where, f"terraform.source {source!r} -> {module} is not a module dir")
                module = None

        # dependencies and mocks
        deps = config["dependency"]
        for name, body in deps.items():
            cp = body.get("config_path")
            target = resolve_path(unit_dir, cp)
            if target is None:
                self.err(where, f"dependency {name!r} has no resolvable config_path ({cp!r})")
                continue
            if target not in self.units:
                self.err(where, f"dependency {name!r} config_path {cp!r} is not a unit")
            if not isinstance(body.get("mock_outputs"), dict) or not body["mock_outputs"]:
                self.err(where, f"dependency {name!r} has no mock_outputs")
            allowed = body.get("mock_outputs_allowed_terraform_commands")
            if not isinstance(allowed, list) or set(allowed) != MOCK_COMMANDS:
                self.err(where, f"dependency {name!r} must set mock_outputs_allowed_terraform_commands = [\"init\", \"validate\", \"plan\"]")

        for dep, out in sorted(set(DEP_REF.findall(text))):
            if dep not in deps:
                self.err(where, f"dependency.{dep}.outputs.{out}: no dependency {dep!r} declared")
                continue
            mocks = deps[dep].get("mock_outputs") or {}
            if out not in mocks:
                self.err(where, f"dependency.{dep}.outputs.{out} is not covered by mock_outputs")
            target = resolve_path(unit_dir, deps[dep].get("config_path"))
            if target in self.units:
                dep_module = self.module_of(target)
                if dep_module and dep_module.is_dir():
                    _, outputs = self.interface(dep_module)
                    if out not in outputs:
                        self.err(where, f"dependency.{dep}.outputs.{out}: module {dep_module.name} has no output {out!r}")

        # inputs vs variables
        if module is not None:
            variables, _ = self.interface(module)
            inputs = config["inputs"]
            for key in sorted(set(inputs) - set(variables)):
                self.err(where, f"input {key!r} is not a variable of module {module.name}")
            for key in sorted(k for k, req in variables.items() if req and k not in inputs):
                self.err(where, f"required variable {key!r} of module {module.name} is not set in inputs")

    def check_acyclic(self) -> None:
        state: dict[Path, int] = {}  # 1 visiting, 2 done

        def visit(node: Path, stack: list[Path]) -> None:
            state[node] = 1
            for dep in self.dep_paths(node).values():
                if dep not in self.units:
                    continue
                if state.get(dep) == 1:
                    cycle = " -> ".join(p.name for p in [*stack, node, dep][stack.index(dep) if dep in stack else 0:])
                    self.err(node / "terragrunt.hcl", f"dependency cycle: {cycle}")
                elif dep not in state:
                    visit(dep, [*stack, node])
            state[node] = 2

        for unit in self.units:
            if unit not in state:
                visit(unit, [])


def main(argv: list[str]) -> int:
    live = Path(argv[0]) if argv else REPO_ROOT / "infra" / "live"
    checker = Checker(live)
    errors = checker.run()
    for e in errors:
        print(f"ERROR {e}")
    print(f"tg_check: {len(checker.units)} units, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
