"""kuberay/scripts/release.py: the applied overlay carries infra's values and the pushed
images (finding 6: no placeholder account, no tag the build never pushes, the
certificate from infra), and findings 2 (GatewayClass) checked on what is applied."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kuberay_testlib import REPO_ROOT, rendered

import kuberay_checks as kc

RELEASE = REPO_ROOT / "kuberay" / "scripts" / "release.py"
SHA = "0123456789ab"


def values(env: str) -> dict:
    acct, region = "123456789012", "us-east-1"
    return {
        "environment": env, "region": region, "cluster_name": f"qa-{env}",
        "vpc_cidr": kc.env_vpc_cidr(env),
        "repository_urls": {f: f"{acct}.dkr.ecr.{region}.amazonaws.com/qa-{env}/{f}" for f in ("ray-cpu", "ray-gpu")},
        "certificate_arn": f"arn:aws:acm:{region}:{acct}:certificate/11111111-2222-3333-4444-555555555555",
        "domain_name": f"qa-{env}.example.org", "route53_zone_id": "Z0123456789ABCDEFGHIJ",
    }


def release(tmp_path, env: str, vals: dict) -> subprocess.CompletedProcess:
    (tmp_path / "values.json").write_text(json.dumps(vals))
    return subprocess.run([sys.executable, str(RELEASE), "--env", env, "--dry-run", "--values",
                           str(tmp_path / "values.json"), "--out", str(tmp_path / "deploy"), "--sha", SHA],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("env", ["test", "prod"])
def test_applied_overlay_is_valid_and_carries_infra_values(tmp_path, env):
    res = release(tmp_path, env, values(env))
    assert res.returncode == 0, res.stderr
    tag = f"2.60.0-{SHA}"
    assert f"docker build -f kuberay/images/Dockerfile.cpu -t {values(env)['repository_urls']['ray-cpu']}:{tag} ." in res.stdout
    assert ("Dockerfile.gpu" in res.stdout) == (env == "prod")
    docs = kc.kustomize_build(tmp_path / "deploy")
    assert kc.validate_docs(docs + kc.extract_pods(docs)) == []
    assert kc.applied_errors(docs, env, values(env), tag) == []


def test_planted_applied_overlay_mistakes(tmp_path):
    assert release(tmp_path, "prod", values("prod")).returncode == 0
    docs = kc.kustomize_build(tmp_path / "deploy")
    other = values("prod") | {"certificate_arn": "arn:aws:acm:us-east-1:123456789012:certificate/"
                                                 "99999999-2222-3333-4444-555555555555", "domain_name": "x.example.org"}
    errs = kc.applied_errors(docs, "prod", other, f"2.60.0-{SHA}")
    assert any("defaultCertificate" in e for e in errs) and any("hostname" in e for e in errs), errs
    errs = kc.applied_errors(docs, "prod", values("prod"), "2.60.0")  # the tag the old overlay pinned
    assert any("is not" in e and "the pushed tag" in e for e in errs), errs


@pytest.mark.parametrize("key,bad,message", [
    ("certificate_arn", "arn:aws:acm:REGION:ACCOUNT:certificate/SET-IN-OVERLAY", "not an ACM certificate ARN"),
    ("vpc_cidr", "10.0.0.0/16", "could not reach the pods"),
    ("environment", "test", "not 'prod'"),
])
def test_release_refuses_bad_infra_values(tmp_path, key, bad, message):
    res = release(tmp_path, "prod", values("prod") | {key: bad})
    assert res.returncode == 1 and message in res.stderr, res.stderr
    assert not (tmp_path / "deploy").exists()


def test_release_refuses_placeholder_repository(tmp_path):
    vals = values("prod")
    vals["repository_urls"]["ray-gpu"] = "ray-gpu"
    res = release(tmp_path, "prod", vals)
    assert res.returncode == 1 and "not an ECR repository URL" in res.stderr


def test_gatewayclass_the_gateway_names_is_applied_by_infra():
    [gc] = kc.render("infra-manifests")
    assert gc["kind"] == "GatewayClass" and gc["spec"]["controllerName"] == "gateway.k8s.aws/alb"
    assert kc.find(rendered("prod"), "Gateway")[0]["spec"]["gatewayClassName"] == gc["metadata"]["name"]
    assert kc.validate_doc(gc) == []


def test_planted_no_gatewayclass(monkeypatch, tmp_path):
    """Finding 2: nothing created the aws-alb GatewayClass, so no ALB was ever built."""
    monkeypatch.setattr(kc, "INFRA_MANIFESTS", tmp_path)
    errs = kc.gateway_errors(rendered("test"))
    assert any("is created by nothing we apply" in e for e in errs), errs
