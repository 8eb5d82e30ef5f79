#!/usr/bin/env python3
"""Terragrunt consistency check (no terragrunt binary exists offline).

For every unit (terragrunt.hcl) under a live dir:
  * it includes root.hcl, whose remote_state uses S3 with use_lockfile = true;
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


def resolve_source(unit_dir: Path, source: str) -> Path:
    return (unit_dir / source.replace("//", "/")).resolve()


class Checker:
    def __init__(self, live: Path):
        self.live = live.resolve()
        self.errors: list[str] = []
        self.units: dict[Path, dict] = {}

    def err(self, where: Path, msg: str) -> None:
        try:
            where = where.relative_to(REPO_ROOT)
        except ValueError:
            pass
        self.errors.append(f"{where}: {msg}")

    def run(self) -> list[str]:
        unit_files = sorted(self.live.rglob("terragrunt.hcl"))
        if not unit_files:
            self.err(self.live, "no terragrunt.hcl units found")
        for f in unit_files:
            if ".terragrunt-cache" in f.parts:
                continue
            try:
                self.units[f.parent] = {"doc": load(f), "text": f.read_text(encoding="utf-8")}
            except HclError as exc:
                self.errors.append(str(exc))
        self.check_root()
        for unit_dir in self.units:
            self.check_unit(unit_dir)
        self.check_acyclic()
        return self.errors

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
        tf = single(self.units[unit_dir]["doc"], "terraform")
        source = tf.get("source")
        if not isinstance(source, str) or "${" in source:
            return None
        return resolve_source(unit_dir, source)

    def dep_paths(self, unit_dir: Path) -> dict[str, Path]:
        deps = blocks(self.units[unit_dir]["doc"], "dependency")
        return {
            name: (unit_dir / body.get("config_path", "")).resolve()
            for name, body in deps.items()
            if isinstance(body.get("config_path"), str)
        }

    def check_unit(self, unit_dir: Path) -> None:
        unit = self.units[unit_dir]
        doc, text = unit["doc"], unit["text"]
        where = unit_dir / "terragrunt.hcl"

        includes = blocks(doc, "include")
        if not any("root.hcl" in str(b.get("path", "")) for b in includes.values()):
            self.err(where, "does not include root.hcl")

        env_file = find_up(unit_dir, "env.hcl", self.live)
        env_locals = single(load(env_file), "locals") if env_file else {}
        for key in sorted(set(ENV_REF.findall(text))):
            if key not in env_locals:
                self.err(where, f"local.env.{key} is not defined in {env_file or 'any env.hcl'}")

        # source
        tf = single(doc, "terraform")
        source = tf.get("source")
        module = None
        if not isinstance(source, str):
            self.err(where, "terraform.source is missing")
        elif "${" in source:
            self.err(where, f"terraform.source must be a plain relative path, got {source!r}")
        else:
            module = resolve_source(unit_dir, source)
            if not module.is_dir() or not list(module.glob("*.tf")):
                self.err(where, f"terraform.source {source!r} -> {module} is not a module dir")
                module = None

        # dependencies and mocks
        deps = blocks(doc, "dependency")
        for name, body in deps.items():
            cp = body.get("config_path")
            if not isinstance(cp, str):
                self.err(where, f"dependency {name!r} has no literal config_path")
                continue
            target = (unit_dir / cp).resolve()
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
            target = (unit_dir / str(deps[dep].get("config_path", ""))).resolve()
            if target in self.units:
                dep_module = self.module_of(target)
                if dep_module and dep_module.is_dir():
                    _, outputs = module_interface(dep_module)
                    if out not in outputs:
                        self.err(where, f"dependency.{dep}.outputs.{out}: module {dep_module.name} has no output {out!r}")

        # inputs vs variables
        if module is not None:
            variables, _ = module_interface(module)
            inputs = single(doc, "inputs") if isinstance(doc.get("inputs"), list) else doc.get("inputs", {})
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
