#!/usr/bin/env python3
"""Offline dry run of docs/deploy-eks.md (run by infra/scripts/dry_run.sh, in .venv-infra).

1. The walkthrough's commands: every line of every ```bash block must match one of
   KNOWN below (so the document cannot drift from what this script checks), each
   block must parse (`bash -n`), and the values the doc pins (cluster name, region,
   vpc-cni version, overlay path, object names) must be the code's.
2. Terragrunt, as `run-all plan` on an empty account does it, for every unit of
   every environment: the unit's includes merged (tg_check), `local.env` from its
   env.hcl (get_env defaults), every `dependency.X.outputs.Y` replaced by X's
   mock_outputs, then `terraform test` plans the module with exactly those inputs
   against its own mocked AWS provider (variable types and validations apply).
   No terragrunt binary exists offline; the expression subset evaluated here is the
   one the units use, anything else is an error, never skipped.
3. Writes <out>/<env>/deploy_values.json: the k8s-addons unit's resolved
   deploy_values, i.e. what `terragrunt output deploy_values` hands release.py.

CLI: dry_run.py --out DIR [--env test --env prod] [--skip-plan]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tg_check  # noqa: E402
from _hcl import REPO_ROOT, blocks, load, single  # noqa: E402

LIVE = REPO_ROOT / "infra" / "live"
DOC = REPO_ROOT / "docs" / "deploy-eks.md"

# Every command the walkthrough may run: (pattern, what the dry run does with it).
KNOWN: list[tuple[str, str]] = [
    (r"export ENV=(?P<env>test|prod) AWS_REGION=(?P<region>[a-z0-9-]+)", "values checked against env.hcl"),
    (r"export QA_DOMAIN=\S+ QA_ROUTE53_ZONE_ID=\S+", "read by env.hcl (get_env); defaults used offline"),
    (r"export QA_ADMIN_ROLE_ARNS=\S+", "read by env.hcl (get_env); defaults used offline"),
    (r"aws sts get-caller-identity", "AWS only"),
    (r"aws eks describe-addon-versions --addon-name vpc-cni --kubernetes-version (?P<k8s>[0-9.]+) --region \$AWS_REGION "
     r"--query \"addons\[\]\.addonVersions\[\?addonVersion=='(?P<cni>[^']+)'\]\.addonVersion\" --output text",
     "AWS only; the version must be the eks module's pin"),
    (r"cd infra/live/\$ENV", "the units of $ENV"),
    (r"cd \.\./\.\./\.\.", "back to the repo root"),
    (r"terragrunt run-all plan", "every unit planned with mock dependency outputs (step 2)"),
    (r"terragrunt run-all apply", "AWS only; the same inputs were planned"),
    (r"terragrunt run-all destroy", "AWS only; pre-destroy tested with stand-ins (tests/infra)"),
    (r"aws eks update-kubeconfig --name (?P<cluster>\S+) --region \$AWS_REGION", "AWS only; name checked"),
    (r"kubectl get gatewayclass (?P<gatewayclass>\S+)", "cluster only; name checked against k8s-addons"),
    (r"kubectl -n kube-system rollout status deployment/aws-load-balancer-controller --timeout=\S+", "cluster only"),
    (r"kubectl -n kube-system get configmap amazon-vpc-cni -o jsonpath='\{\.data\.enable-network-policy-controller\}'",
     "cluster only"),
    (r"kubectl -n qa get secret app-credentials", "cluster only"),
    (r"kubectl -n kube-system rollout status deployment/karpenter --timeout=\S+", "cluster only"),
    (r"kubectl -n qa get secretproviderclass (?P<spc>\S+)", "cluster only; name checked against k8s-addons"),
    (r"kubectl get nodepools,ec2nodeclasses", "cluster only; the overlay's NodePools/EC2NodeClasses: step 4"),
    (r"kubectl get nodeclaims -o wide", "cluster only"),
    (r"python3 kuberay/scripts/release\.py --env \$ENV", "run with --dry-run and the resolved deploy_values"),
    (r"kubectl apply --server-side -k (?P<overlay>kuberay/deploy/\$ENV)", "that overlay rendered and validated"),
    (r"kubectl -n qa wait --for=condition=Ready rayservice/qa --timeout=\S+", "cluster only; names checked"),
    (r"kubectl -n qa wait --for=condition=Programmed gateway/qa --timeout=\S+", "cluster only; names checked"),
    (r"ALB=\$\(kubectl -n qa get gateway qa -o jsonpath='\{\.status\.addresses\[0\]\.value\}'\)", "cluster only"),
    (r"ALB_ZONE=\$\(aws elbv2 describe-load-balancers .*\)", "AWS only"),
    (r"aws route53 change-resource-record-sets --hosted-zone-id \$QA_ROUTE53_ZONE_ID --change-batch .*", "AWS only"),
    (r"curl .*https://\$QA_DOMAIN/\S*.*", "through the ALB only; routes tested locally (tests/integration)"),
    (r"HEAD=\$\(kubectl -n qa get pod -l ray\.io/node-type=head -o name \| head -1\)", "cluster only"),
    (r"KEY=\$\(kubectl -n qa exec \$HEAD -c (?P<container>\S+) -- python -m serve_app api-key create --name \S+\)",
     "the command is tested locally (tests/integration/test_auth_limits.py::test_api_key_command)"),
    (r"kubectl delete -k kuberay/deploy/\$ENV --wait --timeout=\S+", "cluster only"),
    (r"aws resourcegroupstaggingapi get-resources .*", "AWS only"),
]


# --------------------------------------------------------------------------- the document
def doc_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def doc_commands(block: str) -> list[str]:
    out, buf = [], ""
    for line in block.splitlines():
        if buf:
            line = buf + " " + line.strip()
        if line.rstrip().endswith("\\"):
            buf = line.rstrip()[:-1].rstrip()
            continue
        buf = ""
        if line.strip() and not line.strip().startswith("#"):
            out.append(line.strip())
    return out


def check_doc(doc: Path = DOC) -> tuple[list[str], list[tuple[str, str]], dict[str, str]]:
    """(errors, [(command, what the dry run does)], named values the doc uses)."""
    errors, seen, named = [], [], {}
    text = doc.read_text()
    blocks_ = doc_blocks(text)
    if not blocks_:
        errors.append(f"{doc}: no ```bash blocks")
    for i, block in enumerate(blocks_, 1):
        syntax = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        if syntax.returncode != 0:
            errors.append(f"block {i}: bash -n: {syntax.stderr.strip()}")
        for cmd in doc_commands(block):
            for pattern, what in KNOWN:
                m = re.fullmatch(pattern, cmd)
                if m:
                    named.update({k: v for k, v in m.groupdict().items() if v})
                    seen.append((cmd, what))
                    break
            else:
                errors.append(f"block {i}: command not known to infra/scripts/dry_run.py: {cmd}")
    return errors, seen, named


def check_doc_values(named: dict[str, str]) -> list[str]:
    errors = []
    env = named.get("env", "test")
    env_locals = single(load(LIVE / env / "env.hcl"), "locals")
    if named.get("region") and named["region"] != env_locals["region"]:
        errors.append(f"doc AWS_REGION {named['region']} != region {env_locals['region']} of {env}/env.hcl")
    if named.get("cluster", "").replace("$ENV", env) != env_locals["name"]:
        errors.append(f"doc cluster {named.get('cluster')} != name {env_locals['name']} of {env}/env.hcl")
    eks_vars = blocks(load(REPO_ROOT / "infra/modules/eks/variables.tf"), "variable")
    if named.get("cni") != eks_vars["vpc_cni_addon_version"]["default"]:
        errors.append(f"doc vpc-cni {named.get('cni')} != the eks module's pin {eks_vars['vpc_cni_addon_version']['default']}")
    if named.get("k8s") != eks_vars["kubernetes_version"]["default"]:
        errors.append(f"doc Kubernetes {named.get('k8s')} != the eks module's {eks_vars['kubernetes_version']['default']}")
    gc = (REPO_ROOT / "infra/modules/k8s-addons/manifests/gatewayclass.yaml").read_text()
    if f"name: {named.get('gatewayclass')}\n" not in gc:
        errors.append(f"doc GatewayClass {named.get('gatewayclass')} is not the one k8s-addons applies")
    addons_vars = blocks(load(REPO_ROOT / "infra/modules/k8s-addons/variables.tf"), "variable")
    spc = addons_vars["db_password_provider_class"]["default"]
    if named.get("spc") and named["spc"] != spc:
        errors.append(f"doc SecretProviderClass {named['spc']} is not the one k8s-addons applies ({spc})")
    if named.get("overlay") != "kuberay/deploy/$ENV":
        errors.append("doc applies something else than release.py's overlay kuberay/deploy/$ENV")
    if named.get("container") and f"- name: {named['container']}\n" not in (REPO_ROOT / "kuberay/base/rayservice.yaml").read_text():
        errors.append(f"doc execs into container {named['container']}, which the head pod does not have")
    return errors


# --------------------------------------------------------------------------- HCL subset
class EvalError(Exception):
    pass


TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)|(?P<id>[A-Za-z_][\w.-]*)|(?P<op>[(),!]))')


def _tokens(expr: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise EvalError(f"cannot evaluate offline: {expr!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def evaluate(expr: str, scope: dict) -> object:
    """Evaluate the HCL subset the units use: references (a.b.c), "strings", numbers,
    true/false, `!x`, and get_env/split/compact calls."""
    toks = _tokens(expr)
    pos = 0

    def parse():
        nonlocal pos
        kind, val = toks[pos]
        pos += 1
        if kind == "op" and val == "!":
            v = parse()
            if not isinstance(v, bool):
                raise EvalError(f"! on {v!r} in {expr!r}")
            return not v
        if kind == "str":
            return json.loads(val)
        if kind == "num":
            return float(val) if "." in val else int(val)
        if kind == "id":
            if val in ("true", "false"):
                return val == "true"
            if pos < len(toks) and toks[pos] == ("op", "("):
                pos += 1
                args = []
                while toks[pos] != ("op", ")"):
                    args.append(parse())
                    if toks[pos] == ("op", ","):
                        pos += 1
                pos += 1
                return call(val, args)
            return lookup(val, scope, expr)
        raise EvalError(f"cannot evaluate offline: {expr!r}")

    result = parse()
    if pos != len(toks):
        raise EvalError(f"cannot evaluate offline: {expr!r}")
    return result


def call(name: str, args: list) -> object:
    if name == "get_env":
        return os.environ.get(args[0], args[1] if len(args) > 1 else "")
    if name == "split":
        return args[1].split(args[0])
    if name == "compact":
        return [a for a in args[0] if a != ""]
    raise EvalError(f"function {name}() is not evaluated offline")


def lookup(ref: str, scope: dict, expr: str) -> object:
    value: object = scope
    for part in ref.split("."):
        if not isinstance(value, dict) or part not in value:
            raise EvalError(f"{ref} is not defined (in {expr!r})")
        value = value[part]
    return value


def resolve(value: object, scope: dict) -> object:
    if isinstance(value, dict):
        return {k: resolve(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, scope) for v in value]
    if isinstance(value, str) and "${" in value:
        whole = re.fullmatch(r"\$\{(.*)\}", value, flags=re.S)
        if whole and "${" not in whole.group(1):
            return resolve(evaluate(whole.group(1), scope), scope)
        return re.sub(r"\$\{([^{}]*)\}", lambda m: str(evaluate(m.group(1), scope)), value)
    return value


def unit_inputs(checker: tg_check.Checker, unit_dir: Path) -> dict:
    unit = checker.units[unit_dir]
    env_file = tg_check.find_up(unit_dir, "env.hcl", checker.live)
    env_locals = resolve(single(load(env_file), "locals"), {})
    local = {"local": {"env": env_locals}}
    deps = {name: {"outputs": resolve(body.get("mock_outputs") or {}, local)}
            for name, body in unit["config"]["dependency"].items()}
    return resolve(unit["config"]["inputs"], {**local, "dependency": deps})


# --------------------------------------------------------------------------- terraform plan
def mock_provider_block(module: Path) -> str:
    """The module's own `mock_provider "aws" {...}` block (its tests' mocked defaults)."""
    for test in sorted((module / "tests").glob("*.tftest.hcl")):
        text = test.read_text()
        start = text.find('mock_provider "aws"')
        if start < 0:
            continue
        depth, i = 0, text.index("{", start)
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[start:j + 1]
    return 'mock_provider "aws" {}'


def plan_unit(module: Path, inputs: dict, env: dict) -> subprocess.CompletedProcess:
    tf = env["INFRA_TERRAFORM"]
    env = {**env, "TF_DATA_DIR": str(Path(env["INFRA_CACHE"]) / "tfdata" / module.name)}
    init = subprocess.run([tf, f"-chdir={module}", "init", "-backend=false", "-input=false", "-no-color"],
                          capture_output=True, text=True, env=env)
    if init.returncode != 0:
        return init
    # terraform test only reads test files from a directory inside the module.
    with tempfile.TemporaryDirectory(dir=module, prefix=".dryrun-") as tmp:
        Path(tmp, "unit.tftest.hcl").write_text(mock_provider_block(module) + '\n\nrun "unit_inputs" {\n  command = plan\n}\n')
        Path(tmp, "inputs.tfvars.json").write_text(json.dumps(inputs))
        return subprocess.run([tf, f"-chdir={module}", "test", "-no-color", f"-test-directory={Path(tmp).name}",
                               f"-var-file={Path(tmp) / 'inputs.tfvars.json'}"], capture_output=True, text=True, env=env)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--env", action="append", choices=["test", "prod"])
    ap.add_argument("--skip-plan", action="store_true")
    ns = ap.parse_args(argv)
    envs = ns.env or ["test", "prod"]
    failures: list[str] = []

    errors, seen, named = check_doc()
    errors += check_doc_values(named)
    print(f"[doc] {DOC.relative_to(REPO_ROOT)}: {len(seen)} commands, {len(errors)} error(s)")
    for cmd, what in seen:
        print(f"  {what}: {cmd[:110]}")
    failures += [f"doc: {e}" for e in errors]

    checker = tg_check.Checker(LIVE)
    failures += [f"terragrunt: {e}" for e in checker.run()]
    for unit_dir in sorted(checker.units):
        env_name = unit_dir.parent.name
        if env_name not in envs:
            continue
        where = f"{env_name}/{unit_dir.name}"
        try:
            inputs = unit_inputs(checker, unit_dir)
        except EvalError as exc:
            failures.append(f"{where}: {exc}")
            continue
        if unit_dir.name == "k8s-addons":
            out = ns.out / env_name
            out.mkdir(parents=True, exist_ok=True)
            (out / "deploy_values.json").write_text(json.dumps(inputs["deploy_values"], indent=2))
        if ns.skip_plan:
            print(f"[{where}] inputs resolved ({len(inputs)})")
            continue
        module = checker.module_of(unit_dir)
        res = plan_unit(module, inputs, dict(os.environ))
        ok = res.returncode == 0
        print(f"[{where}] {len(inputs)} inputs resolved against mock outputs; terraform plan: {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(f"{where}: plan with resolved inputs failed:\n{(res.stdout + res.stderr)[-3000:]}")

    if failures:
        print("\nFAILED:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
