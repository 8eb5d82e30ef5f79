"""infra/scripts/dry_run.py: the walkthrough cannot drift from what the dry run checks,
and the unit inputs are resolved as Terragrunt would (or the dry run fails)."""
from __future__ import annotations

import pytest

import dry_run
import tg_check
from infra_helpers import INFRA, REPO_ROOT, copy_infra, replace_once

DOC = REPO_ROOT / "docs" / "deploy-eks.md"


def test_walkthrough_is_fully_known_and_consistent():
    errors, seen, named = dry_run.check_doc(DOC)
    assert errors == [] and len(seen) > 25
    assert dry_run.check_doc_values(named) == []


@pytest.mark.parametrize("old,new,message", [
    pytest.param("kubectl -n qa get secret app-credentials\n", "kubectl -n qa get secret app-credentials\nkubectl get nodes\n",
                 "command not known", id="unknown-command"),
    pytest.param("addonVersion=='v1.21.1-eksbuild.1'", "addonVersion=='v1.19.0-eksbuild.1'",
                 "the eks module's pin", id="wrong-vpc-cni-version"),
    pytest.param("kubectl get gatewayclass aws-alb", "kubectl get gatewayclass alb", "GatewayClass alb", id="wrong-class"),
    pytest.param("-c ray-head --", "-c ray-worker-x --", "does not have", id="wrong-container"),
    pytest.param("cd ../../..\n```", "cd ../../..\nif then\n```", "bash -n", id="syntax-error"),
])
def test_planted_doc_drift(tmp_path, old, new, message):
    doc = tmp_path / "deploy-eks.md"
    doc.write_text(DOC.read_text())
    replace_once(doc, old, new)
    errors, _, named = dry_run.check_doc(doc)
    errors += dry_run.check_doc_values(named)
    assert any(message in e for e in errors), errors


def test_inputs_resolve_like_terragrunt(monkeypatch):
    monkeypatch.setenv("QA_ADMIN_ROLE_ARNS", "arn:aws:iam::123456789012:role/a,arn:aws:iam::123456789012:role/b")
    monkeypatch.setenv("QA_DOMAIN", "qa.example.org")
    checker = tg_check.Checker(INFRA / "live")
    assert checker.run() == []
    live = (INFRA / "live").resolve()
    eks = dry_run.unit_inputs(checker, live / "prod" / "eks")
    assert eks["cluster_admin_role_arns"] == ["arn:aws:iam::123456789012:role/a", "arn:aws:iam::123456789012:role/b"]
    aurora = dry_run.unit_inputs(checker, live / "test" / "aurora")
    assert aurora["skip_final_snapshot"] is True and aurora["deletion_protection"] is False
    addons = dry_run.unit_inputs(checker, live / "test" / "k8s-addons")
    dv = addons["deploy_values"]
    assert dv["vpc_cidr"] == "10.20.0.0/16" and dv["domain_name"] == "qa.example.org"
    assert dv["repository_urls"]["ray-cpu"].endswith(".dkr.ecr.us-east-1.amazonaws.com/qa-test/ray-cpu")


def test_unknown_expression_fails_instead_of_passing(tmp_path):
    infra = copy_infra(tmp_path)
    replace_once(infra / "live" / "_envcommon" / "ecr.hcl", "name         = local.env.name",
                 'name         = lower(local.env.name)')
    checker = tg_check.Checker(infra / "live")
    checker.run()
    with pytest.raises(dry_run.EvalError, match="lower"):
        dry_run.unit_inputs(checker, (infra / "live" / "test" / "ecr").resolve())


def test_evaluator_subset():
    scope = {"local": {"env": {"flag": True, "n": "x"}}}
    assert dry_run.evaluate("!local.env.flag", scope) is False
    assert dry_run.resolve("a-${local.env.n}-b", scope) == "a-x-b"
    assert dry_run.evaluate('compact(split(",", ""))', scope) == []
    with pytest.raises(dry_run.EvalError):
        dry_run.evaluate("local.env.missing", scope)
