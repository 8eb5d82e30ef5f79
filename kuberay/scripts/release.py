#!/usr/bin/env python3
"""Build, tag, push the Ray images and write the overlay that is applied.

    python3 kuberay/scripts/release.py --env test            # the real run (docker, aws, terragrunt)
    python3 kuberay/scripts/release.py --env test --dry-run --values v.json --out DIR --sha 0123abcd

1. Reads the k8s-addons unit's `deploy_values` output (`terragrunt output -json
   deploy_values` in infra/live/<env>/k8s-addons; --values FILE instead): the ECR
   repositories (from the ecr unit), the certificate ARN and hostname (certificate
   unit), the VPC CIDR (network unit), region and cluster.
2. Tags every image with <rayVersion>-<git sha> (ECR tags are immutable: one tag per
   commit; a tag already in ECR is not pushed again), builds the CPU image and, where
   the overlay has a GPU worker group (prod), the GPU image, and pushes them.
3. Writes kuberay/deploy/<env>/kustomization.yaml (git-ignored): the committed overlay
   plus those images (`kustomize edit set image` equivalent), the certificate on the
   Gateway's HTTPS listener and its hostname. That directory is what
   `kubectl apply --server-side -k` applies; the committed overlays carry no account
   id, tag or certificate.

--dry-run prints the commands instead of running them (no Docker engine or AWS is
needed) and still writes the overlay, so the dry run (infra/scripts/dry_run.sh) can
render and validate exactly what the real run would apply. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERAY = REPO_ROOT / "kuberay"
ENVS = ("test", "prod")
FLAVOURS = {"cpu": "ray-cpu", "gpu": "ray-gpu"}  # Dockerfile suffix -> image name in the overlays


def ray_version() -> str:
    m = re.search(r'rayVersion:\s*"([^"]+)"', (KUBERAY / "base" / "rayservice.yaml").read_text())
    if not m:
        raise SystemExit("rayVersion not found in kuberay/base/rayservice.yaml")
    return m.group(1)


def flavours(env: str) -> list[str]:
    """The images the env's overlay runs: the GPU image only where a GPU group exists."""
    overlay = KUBERAY / "overlays" / env
    text = "\n".join(p.read_text() for p in overlay.glob("*.yaml"))
    return ["cpu", "gpu"] if "image: ray-gpu:" in text else ["cpu"]


def overlay_cidr(env: str) -> str:
    m = re.search(r"cidr:\s*(\S+)", (KUBERAY / "overlays" / env / "networkpolicy.patch.yaml").read_text())
    return m.group(1) if m else ""


def git_sha(short: int = 12) -> str:
    return subprocess.run(["git", "rev-parse", f"--short={short}", "HEAD"], cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def git_dirty() -> list[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!kuberay/deploy"], cwd=REPO_ROOT,
                         check=True, capture_output=True, text=True).stdout
    return out.splitlines()


def deploy_values(env: str, values_file: Path | None) -> dict:
    if values_file:
        return json.loads(values_file.read_text())
    unit = REPO_ROOT / "infra" / "live" / env / "k8s-addons"
    out = subprocess.run(["terragrunt", "output", "-json", "deploy_values"], cwd=unit, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def check_values(env: str, values: dict) -> list[str]:
    errs = []
    need = {"environment", "region", "cluster_name", "vpc_cidr", "repository_urls", "certificate_arn",
            "domain_name", "route53_zone_id"}
    if missing := need - set(values):
        return [f"deploy_values lacks {sorted(missing)}"]
    if values["environment"] != env:
        errs.append(f"deploy_values are for {values['environment']!r}, not {env!r}")
    if values["vpc_cidr"] != overlay_cidr(env):
        errs.append(f"VPC CIDR {values['vpc_cidr']} != {overlay_cidr(env)} in kuberay/overlays/{env}/"
                    f"networkpolicy.patch.yaml: the ALB could not reach the pods")
    if not re.fullmatch(r"arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}", values["certificate_arn"]):
        errs.append(f"certificate_arn {values['certificate_arn']!r} is not an ACM certificate ARN")
    for f in flavours(env):
        url = values["repository_urls"].get(FLAVOURS[f], "")
        if not re.fullmatch(r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/[a-z0-9._/-]+", url):
            errs.append(f"repository_urls[{FLAVOURS[f]!r}] = {url!r} is not an ECR repository URL")
    return errs


def images(env: str, values: dict, tag: str) -> dict[str, str]:
    return {FLAVOURS[f]: f"{values['repository_urls'][FLAVOURS[f]]}:{tag}" for f in flavours(env)}


def commands(env: str, values: dict, tag: str) -> list[tuple[str, list[str] | str, str | None]]:
    """(why, argv or shell line, image flavour) of the real run, in order."""
    registry = next(iter(images(env, values, tag).values())).split("/", 1)[0]
    region = values["region"]
    cmds: list[tuple[str, list[str] | str]] = [
        ("log in to ECR", f"aws ecr get-login-password --region {region} | "
                          f"docker login --username AWS --password-stdin {registry}", None),
    ]
    for f in flavours(env):
        image = images(env, values, tag)[FLAVOURS[f]]
        repo = image.split("/", 1)[1].rsplit(":", 1)[0]
        cmds += [
            (f"skip {f} if {tag} is already in ECR (immutable tags)",
             ["aws", "ecr", "describe-images", "--region", region, "--repository-name", repo,
              "--image-ids", f"imageTag={tag}"], f),
            (f"build {f}", ["docker", "build", "-f", f"kuberay/images/Dockerfile.{f}", "-t", image, "."], f),
            (f"push {f}", ["docker", "push", image], f),
        ]
    return cmds


def kustomization(env: str, values: dict, tag: str, sha: str, out: Path) -> str:
    base = os.path.relpath(KUBERAY / "overlays" / env, out)
    lines = [
        f"# GENERATED by kuberay/scripts/release.py --env {env} (git {sha}); do not edit, do not commit.",
        "# The overlay that is applied: kuberay/overlays/" + env + " + the pushed images + the certificate.",
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "resources:",
        f"  - {base}",
        "images:",
    ]
    for name, image in images(env, values, tag).items():
        new_name, new_tag = image.rsplit(":", 1)
        lines += [f"  - name: {name}", f"    newName: {new_name}", f"    newTag: {json.dumps(new_tag)}"]
    lines += [
        "patches:",
        "  - target: {group: gateway.k8s.aws, version: v1, kind: LoadBalancerConfiguration, name: qa-alb}",
        "    patch: |-",
        "      - op: test",
        "        path: /spec/listenerConfigurations/0/protocolPort",
        "        value: HTTPS:443",
        "      - op: add",
        "        path: /spec/listenerConfigurations/0/defaultCertificate",
        f"        value: {json.dumps(values['certificate_arn'])}",
        "  - target: {group: gateway.networking.k8s.io, version: v1, kind: Gateway, name: qa}",
        "    patch: |-",
        "      - op: test",
        "        path: /spec/listeners/1/name",
        "        value: https",
        "      - op: add",
        "        path: /spec/listeners/1/hostname",
        f"        value: {json.dumps(values['domain_name'])}",
    ]
    return "\n".join(lines) + "\n"


def run(cmd: list[str] | str) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=REPO_ROOT)
    return subprocess.run(cmd, cwd=REPO_ROOT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", choices=ENVS, required=True)
    ap.add_argument("--dry-run", action="store_true", help="print the commands, write the overlay, run nothing")
    ap.add_argument("--values", type=Path, help="deploy_values JSON instead of `terragrunt output`")
    ap.add_argument("--out", type=Path, help="overlay directory (default kuberay/deploy/<env>)")
    ap.add_argument("--sha", help="git commit to tag with (default: HEAD)")
    ap.add_argument("--allow-dirty", action="store_true", help="tag a tree with uncommitted changes")
    ns = ap.parse_args(argv)

    values = deploy_values(ns.env, ns.values)
    if errs := check_values(ns.env, values):
        print("\n".join(f"ERROR {e}" for e in errs), file=sys.stderr)
        return 1
    if not ns.dry_run and not ns.allow_dirty and (dirty := git_dirty()):
        print(f"ERROR uncommitted changes would be built under the tag of HEAD: {dirty[:5]}", file=sys.stderr)
        return 1
    sha = ns.sha or git_sha()
    tag = f"{ray_version()}-{sha}"
    pushed: set[str] = set()  # flavours whose tag ECR already holds
    for why, cmd, flavour in commands(ns.env, values, tag):
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        print(f"# {why}\n{line}")
        if ns.dry_run:
            continue
        if flavour in pushed:
            print(f"# {tag} is already in ECR: skipped")
            continue
        if cmd[:3] == ["aws", "ecr", "describe-images"]:
            if subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True).returncode == 0:
                pushed.add(flavour)
            continue
        if run(cmd).returncode != 0:
            print(f"ERROR failed: {line}", file=sys.stderr)
            return 1
    out = (ns.out or KUBERAY / "deploy" / ns.env).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "kustomization.yaml").write_text(kustomization(ns.env, values, tag, sha, out))
    print(f"# wrote {out / 'kustomization.yaml'}; apply with: kubectl apply --server-side -k {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
