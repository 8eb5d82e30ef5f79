"""The LB controller's IAM policy in infra/, compared action by action with upstream's
docs/install/iam_policy.json of the controller version we install (v3.5.0, from
../shared/crds/aws-load-balancer-controller-v3.5.0/iam_policy.json)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _hcl import blocks, load
from infra_helpers import INFRA, REPO_ROOT

UPSTREAM = REPO_ROOT.parent / "shared" / "crds" / "aws-load-balancer-controller-v3.5.0" / "iam_policy.json"
POLICY_TF = INFRA / "modules" / "eks" / "lb_controller_irsa.tf"

# Upstream actions we leave out, each with why. Any other difference fails.
LEFT_OUT = {
    "shield:CreateProtection": "Shield Advanced is off in the chart values (enableShield: false)",
    "shield:DeleteProtection": "Shield Advanced is off (enableShield: false)",
    "shield:DescribeProtection": "Shield Advanced is off (enableShield: false)",
    "shield:GetSubscriptionState": "Shield Advanced is off (enableShield: false)",
    "waf-regional:AssociateWebACL": "WAF Classic is off (enableWaf: false)",
    "waf-regional:DisassociateWebACL": "WAF Classic is off (enableWaf: false)",
    "waf-regional:GetWebACL": "WAF Classic is off (enableWaf: false)",
    "waf-regional:GetWebACLForResource": "WAF Classic is off (enableWaf: false)",
    "wafv2:AssociateWebACL": "WAFv2 is off (enableWafv2: false); no LoadBalancerConfiguration sets wafV2",
    "wafv2:DisassociateWebACL": "WAFv2 is off (enableWafv2: false)",
    "wafv2:GetWebACL": "WAFv2 is off (enableWafv2: false)",
    "wafv2:GetWebACLForResource": "WAFv2 is off (enableWafv2: false)",
    "elasticloadbalancing:SetWebAcl": "WAF association, off as above",
    "cognito-idp:DescribeUserPoolClient": "no listener rule authenticates with Cognito",
    "ec2:DescribeCoipPools": "customer-owned IP pools exist on AWS Outposts only",
    "ec2:GetCoipPoolUsage": "customer-owned IP pools exist on AWS Outposts only",
    "ec2:DescribeIpamPools": "no LoadBalancerConfiguration uses an IPAM pool (ipv4IPAMPoolId unset)",
}


def upstream_actions() -> set[str]:
    policy = json.loads(UPSTREAM.read_text())
    out: set[str] = set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        actions = st["Action"]
        out |= {actions} if isinstance(actions, str) else set(actions)
    return out


def our_statements(path: Path = POLICY_TF) -> list[dict]:
    return blocks(load(path), "data")["aws_iam_policy_document"]["lb_controller"]["statement"]


def our_actions(path: Path = POLICY_TF) -> set[str]:
    return {a for st in our_statements(path) for a in st["actions"]}


def compare(ours: set[str]) -> list[str]:
    up = upstream_actions()
    errors = [f"{a}: not in upstream's iam_policy.json v3.5.0" for a in sorted(ours - up)]
    errors += [f"{a}: in upstream's policy, missing here and not listed in LEFT_OUT"
               for a in sorted(up - ours - set(LEFT_OUT))]
    errors += [f"{a}: listed in LEFT_OUT but granted" for a in sorted(ours & set(LEFT_OUT))]
    errors += [f"{a}: listed in LEFT_OUT but not in upstream's policy" for a in sorted(set(LEFT_OUT) - up)]
    return errors


def test_policy_matches_upstream_action_by_action():
    assert UPSTREAM.is_file(), f"{UPSTREAM} (shared/ beside the repo) is missing"
    assert compare(our_actions()) == []
    assert len(our_actions()) == len(upstream_actions()) - len(LEFT_OUT)


def test_waf_and_shield_left_out_because_the_chart_turns_them_off():
    values = (INFRA / "modules" / "k8s-addons" / "values" / "aws-load-balancer-controller.yaml.tftpl").read_text()
    for key in ("enableShield: false", "enableWaf: false", "enableWafv2: false"):
        assert key in values


def test_describe_calls_are_the_only_wildcard_resources():
    for st in our_statements():
        if st["resources"] == ["*"]:
            assert all(a.split(":")[1].startswith(("Describe", "List")) for a in st["actions"]), st["sid"]


@pytest.mark.parametrize("action", ["elasticloadbalancing:ModifyListenerAttributes", "ec2:DescribeRouteTables"])
def test_planted_missing_action_is_caught(action):
    assert any(action in e for e in compare(our_actions() - {action}))


def test_planted_extra_action_is_caught():
    assert any("iam:PassRole" in e for e in compare(our_actions() | {"iam:PassRole"}))
