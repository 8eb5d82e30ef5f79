"""k8s-addons: versions match the upstream artifacts in ../shared, the NVIDIA device
plugin lands on our GPU nodes (upstream's chart values evaluated, not ours), the
steps run in the order the controllers need, and addons.sh does what main.tf asks
(run against recording stand-ins of aws/kubectl/helm: no cluster exists here)."""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from _hcl import blocks, load, single
from infra_helpers import INFRA, REPO_ROOT

SHARED = REPO_ROOT.parent / "shared"
ADDONS = INFRA / "modules" / "k8s-addons"
NVIDIA_VALUES = SHARED / "charts-values" / "nvidia-device-plugin-v0.20.0" / "values.yaml"


def terraform_data(path: Path = ADDONS / "main.tf") -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in load(path).get("resource", []):
        out.update(item.get("terraform_data") or {})
    return out


def variable_default(name: str) -> object:
    return blocks(load(ADDONS / "variables.tf"), "variable")[name]["default"]


# ----------------------------------------------------------------- versions vs ../shared
def test_versions_match_the_upstream_artifacts_checked_in_ci():
    assert (SHARED / "crds" / f"gateway-api-{variable_default('gateway_api_version')}").is_dir()
    assert (SHARED / "crds" / f"aws-load-balancer-controller-v{variable_default('lb_controller_version')}").is_dir()
    assert (SHARED / "charts-values" / f"nvidia-device-plugin-v{variable_default('nvidia_device_plugin_chart_version')}").is_dir()
    assert (SHARED / "crds" / f"kuberay-v{variable_default('kuberay_operator_chart_version')}").is_dir()


# ----------------------------------------------------------------- device plugin placement
def helm_merge(base, override):
    """Helm's values merge: maps merge recursively, a null deletes, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = helm_merge(base.get(k), v) if k in base else v
        return out
    return override


def _expr_ok(e: dict, labels: dict) -> bool:
    key, op, values = e["key"], e["operator"], [str(v) for v in e.get("values") or []]
    has = key in labels
    checks = {
        "In": lambda: has and labels[key] in values,
        "NotIn": lambda: not has or labels[key] not in values,
        "Exists": lambda: has,
        "DoesNotExist": lambda: not has,
        "Gt": lambda: has and int(labels[key]) > int(values[0]),
        "Lt": lambda: has and int(labels[key]) < int(values[0]),
    }
    return checks[op]()


def tolerated(taint: dict, tolerations: list[dict]) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, "", taint["effect"]):
            continue
        if t.get("operator", "Equal") == "Exists" and t.get("key") in (None, "", taint["key"]):
            return True
        if t.get("key") == taint["key"] and str(t.get("value", "")) == str(taint.get("value", "")):
            return True
    return False


def schedules_on(values: dict, labels: dict, taints: list[dict]) -> bool:
    """Would the chart's DaemonSet pod be placed on a node with these labels/taints?
    (nodeSelector AND required node affinity: OR over terms, AND within a term; every
    NoSchedule/NoExecute taint tolerated)."""
    if any(labels.get(k) != str(v) for k, v in (values.get("nodeSelector") or {}).items()):
        return False
    required = (((values.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms")
    if terms and not any(all(_expr_ok(e, labels) for e in t.get("matchExpressions") or []) for t in terms):
        return False
    return all(tolerated(t, values.get("tolerations") or []) for t in taints
               if t["effect"] in ("NoSchedule", "NoExecute"))


EFFECTS = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}


def eks_nodes(main_tf: Path = INFRA / "modules" / "eks" / "main.tf") -> dict[str, tuple[dict, list[dict]]]:
    loc = single(load(main_tf), "locals")
    gpu_taints = [{**t, "effect": EFFECTS[t["effect"]]} for t in loc["gpu_node_taints"]]
    return {"cpu": (loc["cpu_node_labels"], []), "gpu": (loc["gpu_node_labels"], gpu_taints)}


def karpenter_gpu_node() -> tuple[dict, list[dict]]:
    pool = yaml.safe_load((REPO_ROOT / "kuberay" / "components" / "karpenter" / "nodepool-gpu.yaml").read_text())
    tmpl = pool["spec"]["template"]
    return tmpl["metadata"]["labels"], tmpl["spec"].get("taints") or []


def device_plugin_values(ours_text: str | None = None) -> dict:
    upstream = yaml.safe_load(NVIDIA_VALUES.read_text())
    ours = yaml.safe_load(ours_text if ours_text is not None else (ADDONS / "values" / "nvidia-device-plugin.yaml").read_text())
    return helm_merge(upstream, ours or {})


def test_device_plugin_lands_on_gpu_nodes_only():
    values = device_plugin_values()
    nodes = eks_nodes()
    assert schedules_on(values, *nodes["gpu"]), "the DaemonSet must run on the GPU node group"
    assert schedules_on(values, *karpenter_gpu_node()), "and on Karpenter's GPU nodes"
    assert not schedules_on(values, *nodes["cpu"]), "and not on CPU nodes"


def test_planted_old_device_plugin_mismatch():
    """Finding 5: our nodeSelector workload-type + GPU nodes without nvidia.com/gpu.present:
    the upstream affinity (ANDed with the nodeSelector) matches no node."""
    old_values = device_plugin_values("nodeSelector: {workload-type: gpu-inference}\n"
                                      "tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]\n")
    labels, taints = eks_nodes()["gpu"]
    old_labels = {k: v for k, v in labels.items() if k != "nvidia.com/gpu.present"}
    assert not schedules_on(old_values, old_labels, taints)
    assert not schedules_on(device_plugin_values(), old_labels, taints)  # the label is what makes it fit


def test_planted_gpu_taint_not_tolerated():
    values = device_plugin_values("tolerations: []\n")
    assert not schedules_on(values, *eks_nodes()["gpu"])


def test_lb_controller_values_keys_are_the_charts():
    # Keys of chart 3.5.0's values.yaml (helm/aws-load-balancer-controller/values.yaml at
    # tag v3.5.0, read when this was written; the chart itself is not available offline).
    text = (ADDONS / "values" / "aws-load-balancer-controller.yaml.tftpl").read_text()
    keys = set(re.findall(r"^([A-Za-z0-9]+):", text, flags=re.M))
    assert keys == {"clusterName", "region", "vpcId", "replicaCount", "serviceAccount", "enableShield",
                    "enableWaf", "enableWafv2", "controllerConfig"}


# ----------------------------------------------------------------- order
def test_steps_run_in_the_order_the_controllers_need():
    res = terraform_data()
    deps = {name: body.get("depends_on") or [] for name, body in res.items()}
    assert "${terraform_data.crds}" in deps["release"]
    assert "${terraform_data.release}" in deps["gatewayclass"]
    assert {"${terraform_data.release}", "${terraform_data.gatewayclass}", "${terraform_data.app_credentials}"} \
        <= set(deps["pre_destroy"])
    [prov] = res["pre_destroy"]["provisioner"]
    assert prov["local-exec"]["when"] == "${destroy}" and "pre-destroy" in prov["local-exec"]["command"]


# ----------------------------------------------------------------- addons.sh on stand-ins
STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CALLS"
name="$(basename "$0")"
case "$name $*" in
  "aws secretsmanager get-secret-value"*"aurora"*) echo '{"username":"qa admin","password":"p@ss/w:rd"}' ;;
  "aws secretsmanager get-secret-value"*) echo 'tok+en/1' ;;
  "aws resourcegroupstaggingapi get-resources"*)
    n=$(cat "$STATE/lb" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then echo "arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/k8s-qa/abc"; echo $((n-1)) > "$STATE/lb"; fi ;;
  "aws eks describe-cluster"*) [ -f "$STATE/no-cluster" ] && exit 254 ;;
  "kubectl "*"create secret"*) cat "$(echo "$*" | sed -n 's/.*--from-env-file=\\([^ ]*\\).*/\\1/p')" > "$STATE/env"; echo "kind: Stub" ;;
  "kubectl create"*) echo "kind: Stub" ;;
  "kubectl apply"*) cat > /dev/null ;;
esac
exit 0
"""


@pytest.fixture
def stubs(tmp_path):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name in ("aws", "kubectl", "helm"):
        p = bin_dir / name
        p.write_text(STUB)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls"), "STATE": str(state),
           "CLUSTER_NAME": "qa-test", "REGION": "us-east-1", "PRE_DESTROY_INTERVAL_S": "0"}

    def run(sub: str, **extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        calls = tmp_path / "calls"
        calls.unlink(missing_ok=True)
        res = subprocess.run(["bash", str(ADDONS / "addons.sh"), sub], env={**env, **extra},
                             capture_output=True, text=True, timeout=60)
        return res, calls.read_text().splitlines() if calls.exists() else []

    run.state = state
    return run


def test_crds_then_wait_established(stubs):
    res, calls = stubs("crds", CRD_URLS="https://a/standard-install.yaml https://b/gateway-crds.yaml")
    assert res.returncode == 0, res.stderr
    applies = [c for c in calls if c.startswith("kubectl apply")]
    assert applies == ["kubectl apply --server-side --force-conflicts -f https://a/standard-install.yaml",
                       "kubectl apply --server-side --force-conflicts -f https://b/gateway-crds.yaml"]
    assert calls[-1].startswith("kubectl wait --for condition=Established")
    assert "crd/loadbalancerconfigurations.gateway.k8s.aws" in calls[-1]


def test_helm_release_pins_chart_version(stubs):
    res, calls = stubs("helm", RELEASE="aws-load-balancer-controller", CHART="aws-load-balancer-controller",
                       REPO="https://aws.github.io/eks-charts", VERSION="3.5.0", NAMESPACE="kube-system",
                       VALUES="clusterName: qa-test")
    assert res.returncode == 0, res.stderr
    [helm] = [c for c in calls if c.startswith("helm ")]
    assert helm.startswith("helm upgrade --install aws-load-balancer-controller aws-load-balancer-controller "
                           "--repo https://aws.github.io/eks-charts --version 3.5.0 --namespace kube-system")
    assert "--wait" in helm


def test_app_secret_reads_secrets_manager_at_apply_time(stubs):
    res, calls = stubs("app-secret", APP_NAMESPACE="qa",
                       AURORA_SECRET_ARN="arn:aws:secretsmanager:us-east-1:1:secret:aurora", AURORA_ENDPOINT="db.x",
                       AURORA_PORT="5432", AURORA_DATABASE="qa",
                       REDIS_SECRET_ARN="arn:aws:secretsmanager:us-east-1:1:secret:redis", REDIS_ENDPOINT="r.x",
                       REDIS_PORT="6379", REDIS_APP_DB="0")
    assert res.returncode == 0, res.stderr
    env = dict(line.split("=", 1) for line in (stubs.state / "env").read_text().splitlines())
    assert env == {
        "DATABASE_URL": "postgresql://qa%20admin:p%40ss%2Fw%3Ard@db.x:5432/qa"
                        "?sslmode=verify-full&sslrootcert=/etc/ssl/certs/rds-global-bundle.pem",
        "REDIS_URL": "rediss://:tok%2Ben%2F1@r.x:6379/0",
        "RAY_REDIS_ADDRESS": "rediss://r.x:6379",
        "RAY_REDIS_PASSWORD": "tok+en/1",
    }
    assert not any("p@ss" in c for c in calls), "no secret on a command line"


def test_pre_destroy_deletes_workloads_then_waits_for_the_alb(stubs):
    (stubs.state / "lb").write_text("3")  # the ALB is listed three more times, then gone
    res, calls = stubs("pre-destroy")
    assert res.returncode == 0, res.stderr
    order = [c for c in calls if c.startswith(("kubectl delete", "aws elbv2"))]
    assert order[0].startswith("kubectl delete rayservices.ray.io --all --all-namespaces --wait")
    assert order[1].startswith("aws elbv2 modify-load-balancer-attributes")
    assert "deletion_protection.enabled,Value=false" in order[1]
    assert order[2].startswith("kubectl delete gateways.gateway.networking.k8s.io --all --all-namespaces --wait")
    polls = [c for c in calls if "resourcegroupstaggingapi" in c]
    assert len(polls) == 4 and "Key=elbv2.k8s.aws/cluster,Values=qa-test" in polls[0]


def test_pre_destroy_fails_while_the_alb_remains(stubs):
    (stubs.state / "lb").write_text("100")
    res, _ = stubs("pre-destroy", PRE_DESTROY_POLLS="3")
    assert res.returncode != 0 and "would block deleting the VPC" in res.stderr


def test_pre_destroy_without_cluster_is_a_no_op(stubs):
    (stubs.state / "no-cluster").write_text("")
    res, calls = stubs("pre-destroy")
    assert res.returncode == 0 and not any(c.startswith("kubectl") for c in calls)


def test_addons_sh_is_executable_and_parses():
    assert os.access(ADDONS / "addons.sh", os.X_OK)
    assert subprocess.run(["bash", "-n", str(ADDONS / "addons.sh")]).returncode == 0


def test_app_secret_values_never_enter_terraform():
    text = (ADDONS / "main.tf").read_text()
    assert "aws_secretsmanager_secret_version" not in text and "data \"" not in text


def test_every_step_reruns_when_what_it_applies_changes():
    """terraform_data runs a create-time provisioner on (re)creation only; a changed `input`
    updates in place. Every step must repeat what it applies in triggers_replace."""
    for name, body in terraform_data().items():
        [prov] = body["provisioner"]
        if prov["local-exec"].get("when") == "${destroy}":
            continue
        assert "triggers_replace" in body, name
        assert body["triggers_replace"] == body["input"] or name in ("crds", "gatewayclass"), name
