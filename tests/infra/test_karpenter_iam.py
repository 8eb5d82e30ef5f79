"""Karpenter's AWS side in infra/modules/eks/karpenter.tf, compared statement by statement
and action by action with upstream's getting-started CloudFormation template of the version
we install: aws/karpenter-provider-aws, tag v1.14.1,
website/content/en/docs/getting-started/getting-started-with-karpenter/cloudformation.yaml
(identical at that tag to .../preview/..., the file step02-create-cluster.sh downloads).

The upstream facts are carried below (no upstream file is committed);
test_upstream_facts_are_transcribed_faithfully re-reads them from a copy of that repository
when one is at hand (here: the `fetch` mirror), so a transcription mistake cannot hide."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from _hcl import load
from infra_helpers import INFRA

KARPENTER_TF = INFRA / "modules" / "eks" / "karpenter.tf"
MIRROR = Path("/work/.mirror/aws+karpenter-provider-aws/repo")
CFN = "website/content/en/docs/getting-started/getting-started-with-karpenter/cloudformation.yaml"
TAG = "v1.14.1"

# Sid -> actions of every Allow statement of the controller's six managed policies
# (NodeLifecycle, IAMIntegration, EKSIntegration, Interruption, ZonalShift, ResourceDiscovery).
UPSTREAM_STATEMENTS: dict[str, set[str]] = {
    "AllowScopedEC2InstanceAccessActions": {"ec2:RunInstances", "ec2:CreateFleet"},
    "AllowScopedEC2LaunchTemplateAccessActions": {"ec2:RunInstances", "ec2:CreateFleet"},
    "AllowScopedEC2InstanceActionsWithTags": {"ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"},
    "AllowScopedResourceCreationTagging": {"ec2:CreateTags"},
    "AllowScopedResourceTagging": {"ec2:CreateTags"},
    "AllowScopedDeletion": {"ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"},
    "AllowPassingInstanceRole": {"iam:PassRole"},
    "AllowScopedInstanceProfileCreationActions": {"iam:CreateInstanceProfile"},
    "AllowScopedInstanceProfileTagActions": {"iam:TagInstanceProfile"},
    "AllowScopedInstanceProfileActions": {"iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile",
                                          "iam:DeleteInstanceProfile"},
    "AllowAPIServerEndpointDiscovery": {"eks:DescribeCluster"},
    "AllowInterruptionQueueActions": {"sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"},
    "AllowZonalShiftStatusReadOnly": {"arc-zonal-shift:GetManagedResource"},
    "AllowRegionalReadActions": {
        "ec2:DescribeCapacityReservations", "ec2:DescribeImages", "ec2:DescribeInstances",
        "ec2:DescribeInstanceStatus", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes",
        "ec2:DescribeLaunchTemplates", "ec2:DescribePlacementGroups", "ec2:DescribeSecurityGroups",
        "ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets"},
    "AllowSSMReadActions": {"ssm:GetParameter"},
    "AllowPricingReadActions": {"pricing:GetProducts"},
    "AllowUnscopedInstanceProfileListAction": {"iam:ListInstanceProfiles"},
    "AllowInstanceProfileReadActions": {"iam:GetInstanceProfile"},
}
# Condition keys upstream puts on each scoped statement (the tag scoping that keeps the
# controller to its own cluster's instances, launch templates and instance profiles).
UPSTREAM_CONDITION_KEYS: dict[str, set[str]] = {
    "AllowScopedEC2LaunchTemplateAccessActions": {"aws:ResourceTag/kubernetes.io/cluster/${ClusterName}",
                                                  "aws:ResourceTag/karpenter.sh/nodepool"},
    "AllowScopedEC2InstanceActionsWithTags": {"aws:RequestTag/kubernetes.io/cluster/${ClusterName}",
                                              "aws:RequestTag/eks:eks-cluster-name", "aws:RequestTag/karpenter.sh/nodepool"},
    "AllowScopedResourceCreationTagging": {"aws:RequestTag/kubernetes.io/cluster/${ClusterName}",
                                           "aws:RequestTag/eks:eks-cluster-name", "ec2:CreateAction",
                                           "aws:RequestTag/karpenter.sh/nodepool"},
    "AllowScopedResourceTagging": {"aws:ResourceTag/kubernetes.io/cluster/${ClusterName}",
                                   "aws:ResourceTag/karpenter.sh/nodepool", "aws:RequestTag/eks:eks-cluster-name",
                                   "aws:TagKeys"},
    "AllowScopedDeletion": {"aws:ResourceTag/kubernetes.io/cluster/${ClusterName}", "aws:ResourceTag/karpenter.sh/nodepool"},
    "AllowPassingInstanceRole": {"iam:PassedToService"},
    "AllowScopedInstanceProfileCreationActions": {"aws:RequestTag/kubernetes.io/cluster/${ClusterName}",
                                                  "aws:RequestTag/eks:eks-cluster-name",
                                                  "aws:RequestTag/topology.kubernetes.io/region",
                                                  "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass"},
    "AllowScopedInstanceProfileTagActions": {"aws:ResourceTag/kubernetes.io/cluster/${ClusterName}",
                                             "aws:ResourceTag/topology.kubernetes.io/region",
                                             "aws:RequestTag/kubernetes.io/cluster/${ClusterName}",
                                             "aws:RequestTag/eks:eks-cluster-name",
                                             "aws:RequestTag/topology.kubernetes.io/region",
                                             "aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass",
                                             "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass"},
    "AllowScopedInstanceProfileActions": {"aws:ResourceTag/kubernetes.io/cluster/${ClusterName}",
                                          "aws:ResourceTag/topology.kubernetes.io/region",
                                          "aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass"},
    "AllowZonalShiftStatusReadOnly": {"arc-zonal-shift:ResourceIdentifier"},
    "AllowRegionalReadActions": {"aws:RequestedRegion"},
}
UPSTREAM_NODE_POLICIES = {"AmazonEKS_CNI_Policy", "AmazonEKSWorkerNodePolicy", "AmazonEC2ContainerRegistryPullOnly",
                          "AmazonSSMManagedInstanceCore"}
UPSTREAM_QUEUE = {"MessageRetentionPeriod": 300, "SqsManagedSseEnabled": True}
UPSTREAM_RULES = {  # (source, detail-type) of each EventBridge rule targeting the queue
    ("aws.health", "AWS Health Event"),
    ("aws.ec2", "EC2 Spot Instance Interruption Warning"),
    ("aws.ec2", "EC2 Instance Rebalance Recommendation"),
    ("aws.ec2", "EC2 Instance State-change Notification"),
    ("aws.ec2", "EC2 Capacity Reservation Instance Interruption Warning"),
}
UPSTREAM_QUEUE_POLICY_PRINCIPALS = {"events.amazonaws.com", "sqs.amazonaws.com"}

# Upstream statements we leave out, each with why. Any other difference fails.
LEFT_OUT = {
    "AllowZonalShiftStatusReadOnly": "zonal shift stays off (settings.enableZonalShift false, the chart's "
                                     "default; the cluster has no zonal shift config)",
}


# ----------------------------------------------------------------- ours, parsed from HCL
def tf() -> dict:
    return load(KARPENTER_TF)


def policy_documents(path: Path = KARPENTER_TF) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in load(path).get("data", []):
        out.update(item.get("aws_iam_policy_document") or {})
    return out


def our_statements(path: Path = KARPENTER_TF) -> dict[str, dict]:
    return {st["sid"]: st for st in policy_documents(path)["karpenter_controller"]["statement"]}


def _cond_keys(st: dict) -> set[str]:
    return {c["variable"].replace("${var.name}", "${ClusterName}") for c in st.get("condition") or []}


def compare(ours: dict[str, dict]) -> list[str]:
    errs = []
    for sid, actions in UPSTREAM_STATEMENTS.items():
        if sid in LEFT_OUT:
            if sid in ours:
                errs.append(f"{sid}: listed in LEFT_OUT but granted")
            continue
        if sid not in ours:
            errs.append(f"{sid}: in upstream's template {TAG}, missing here and not in LEFT_OUT")
            continue
        got = set(ours[sid]["actions"])
        errs += [f"{sid}: {a} missing (upstream grants it)" for a in sorted(actions - got)]
        errs += [f"{sid}: {a} not in upstream's statement" for a in sorted(got - actions)]
        if ours[sid].get("effect", "Allow") != "Allow":
            errs.append(f"{sid}: not an Allow")
        want = UPSTREAM_CONDITION_KEYS.get(sid, set())
        if _cond_keys(ours[sid]) != want:
            errs.append(f"{sid}: condition keys {sorted(_cond_keys(ours[sid]))} != upstream's {sorted(want)}")
    errs += [f"{sid}: not an upstream statement" for sid in sorted(set(ours) - set(UPSTREAM_STATEMENTS))]
    return errs


def test_controller_policy_matches_upstream_statement_by_statement():
    assert compare(our_statements()) == []


def test_only_unscopable_actions_have_wildcard_resources():
    for sid, st in our_statements().items():
        if st["resources"] == ["*"]:
            assert all(a.split(":")[1].startswith(("Describe", "List", "Get")) for a in st["actions"]), sid


@pytest.mark.parametrize("sid,action", [("AllowScopedDeletion", "ec2:TerminateInstances"),
                                        ("AllowInterruptionQueueActions", "sqs:ReceiveMessage")])
def test_planted_missing_action_is_caught(sid, action):
    ours = our_statements()
    ours[sid] = {**ours[sid], "actions": [a for a in ours[sid]["actions"] if a != action]}
    assert any(action in e for e in compare(ours))


def test_planted_extra_action_is_caught():
    ours = our_statements()
    ours["AllowPassingInstanceRole"] = {**ours["AllowPassingInstanceRole"], "actions": ["iam:PassRole", "iam:CreateRole"]}
    assert any("iam:CreateRole" in e for e in compare(ours))


def test_planted_dropped_tag_scope_is_caught():
    ours = our_statements()
    st = ours["AllowScopedDeletion"]
    ours["AllowScopedDeletion"] = {**st, "condition": [c for c in st["condition"]
                                                       if "karpenter.sh/nodepool" not in c["variable"]]}
    assert any("AllowScopedDeletion: condition keys" in e for e in compare(ours))


def test_node_role_queue_and_rules_match_upstream():
    res: dict[str, dict] = {}
    for item in tf().get("resource", []):
        for k, v in item.items():
            res.setdefault(k, {}).update(v)
    attach = res["aws_iam_role_policy_attachment"]["karpenter_node"]
    assert set(attach["for_each"].strip("${}").replace("toset(", "").replace(")", "").replace('"', "")
               .replace("[", "").replace("]", "").replace(" ", "").replace("\n", "").split(",")) - {""} \
        == UPSTREAM_NODE_POLICIES
    queue = res["aws_sqs_queue"]["karpenter_interruption"]
    assert queue["message_retention_seconds"] == UPSTREAM_QUEUE["MessageRetentionPeriod"]
    assert queue["sqs_managed_sse_enabled"] is UPSTREAM_QUEUE["SqsManagedSseEnabled"]
    rules = {(r["source"][0], r["detail-type"][0]) for r in single_locals()["karpenter_event_rules"].values()}
    assert rules == UPSTREAM_RULES
    qp = policy_documents()["karpenter_interruption_queue"]["statement"]
    allow = [s for s in qp if s.get("effect", "Allow") == "Allow"]
    assert [set(s["principals"][0]["identifiers"]) for s in allow] == [UPSTREAM_QUEUE_POLICY_PRINCIPALS]
    assert any(s.get("effect") == "Deny" and s["condition"][0]["variable"] == "aws:SecureTransport" for s in qp)
    entry = res["aws_eks_access_entry"]["karpenter_node"]
    assert entry["type"] == "EC2_LINUX"


def single_locals() -> dict:
    out: dict = {}
    for loc in tf().get("locals", []):
        out.update(loc)
    return out


# ----------------------------------------------------------------- the facts, re-read
def _upstream_template() -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    for tag in ("!Sub", "!Ref", "!GetAtt"):
        Loader.add_constructor(tag, lambda loader, node: loader.construct_scalar(node)
                               if isinstance(node, yaml.ScalarNode) else loader.construct_sequence(node))
    text = subprocess.run(["git", "-C", str(MIRROR), "show", f"{TAG}:{CFN}"], capture_output=True, text=True,
                          check=True).stdout
    return yaml.load(text, Loader=Loader)


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no copy of aws/karpenter-provider-aws here (CI): facts as carried")
def test_upstream_facts_are_transcribed_faithfully():
    res = _upstream_template()["Resources"]
    statements: dict[str, set[str]] = {}
    conditions: dict[str, set[str]] = {}
    for r in res.values():
        if r["Type"] != "AWS::IAM::ManagedPolicy":
            continue
        doc = json.loads(re.sub(r"\$\{(?!ClusterName\})[^}]+\}", "X", r["Properties"]["PolicyDocument"]))
        for st in doc["Statement"]:
            assert st["Effect"] == "Allow"
            acts = st["Action"]
            statements[st["Sid"]] = {acts} if isinstance(acts, str) else set(acts)
            keys = {k for cond in (st.get("Condition") or {}).values() for k in cond}
            if keys:
                conditions[st["Sid"]] = keys
    assert statements == UPSTREAM_STATEMENTS
    assert conditions == UPSTREAM_CONDITION_KEYS
    node = res["KarpenterNodeRole"]["Properties"]["ManagedPolicyArns"]
    assert {a.rsplit("/", 1)[-1] for a in node} == UPSTREAM_NODE_POLICIES
    q = res["KarpenterInterruptionQueue"]["Properties"]
    assert {k: q[k] for k in UPSTREAM_QUEUE} == UPSTREAM_QUEUE
    rules = {(r["Properties"]["EventPattern"]["source"][0], r["Properties"]["EventPattern"]["detail-type"][0])
             for r in res.values() if r["Type"] == "AWS::Events::Rule"}
    assert rules == UPSTREAM_RULES
    qp = res["KarpenterInterruptionQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert set(qp[0]["Principal"]["Service"]) == UPSTREAM_QUEUE_POLICY_PRINCIPALS
