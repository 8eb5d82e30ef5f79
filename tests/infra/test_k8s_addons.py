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


KARPENTER = REPO_ROOT / "kuberay" / "components" / "karpenter"


def eks_nodes(main_tf: Path = INFRA / "modules" / "eks" / "main.tf") -> dict[str, tuple[dict, list[dict]]]:
    """Every kind of node the cluster has: the managed system group (eks main.tf) and the
    nodes Karpenter launches from each NodePool (its template labels + the
    karpenter.sh/nodepool label Karpenter puts on every node it launches, + its taints)."""
    loc = single(load(main_tf), "locals")
    system_taints = [{**t, "effect": EFFECTS[t["effect"]]} for t in loc["system_node_taints"]]
    kubelet = {"kubernetes.io/os": "linux"}  # every Linux node's kubelet sets it
    nodes = {"system": ({**kubelet, **loc["system_node_labels"]}, system_taints)}
    for f in sorted(KARPENTER.glob("nodepool-*.yaml")):
        pool = yaml.safe_load(f.read_text())
        tmpl = pool["spec"]["template"]
        labels = {**kubelet, **(tmpl.get("metadata") or {}).get("labels", {}),
                  "karpenter.sh/nodepool": pool["metadata"]["name"]}
        nodes[pool["metadata"]["name"]] = (labels, tmpl["spec"].get("taints") or [])
    return nodes


def karpenter_gpu_node() -> tuple[dict, list[dict]]:
    return eks_nodes()["ray-gpu"]


def device_plugin_values(ours_text: str | None = None) -> dict:
    upstream = yaml.safe_load(NVIDIA_VALUES.read_text())
    ours = yaml.safe_load(ours_text if ours_text is not None else (ADDONS / "values" / "nvidia-device-plugin.yaml").read_text())
    return helm_merge(upstream, ours or {})


def test_device_plugin_lands_on_gpu_nodes_only():
    values = device_plugin_values()
    nodes = eks_nodes()
    assert schedules_on(values, *karpenter_gpu_node()), "the DaemonSet must run on Karpenter's GPU nodes"
    assert not schedules_on(values, *nodes["ray-cpu"]), "and not on CPU nodes"
    assert not schedules_on(values, *nodes["system"]), "nor on the system group"


def test_planted_old_device_plugin_mismatch():
    """Finding 5: our nodeSelector workload-type + GPU nodes without nvidia.com/gpu.present:
    the upstream affinity (ANDed with the nodeSelector) matches no node."""
    old_values = device_plugin_values("nodeSelector: {workload-type: gpu-inference}\n"
                                      "tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]\n")
    labels, taints = karpenter_gpu_node()
    old_labels = {k: v for k, v in labels.items() if k != "nvidia.com/gpu.present"}
    assert not schedules_on(old_values, old_labels, taints)
    assert not schedules_on(device_plugin_values(), old_labels, taints)  # the label is what makes it fit


def test_planted_gpu_taint_not_tolerated():
    values = device_plugin_values("tolerations: []\n")
    assert not schedules_on(values, *karpenter_gpu_node())


def test_lb_controller_values_keys_are_the_charts():
    # Keys of chart 3.5.0's values.yaml (helm/aws-load-balancer-controller/values.yaml at
    # tag v3.5.0, read when this was written; the chart itself is not available offline).
    text = (ADDONS / "values" / "aws-load-balancer-controller.yaml.tftpl").read_text()
    keys = set(re.findall(r"^([A-Za-z0-9]+):", text, flags=re.M))
    assert keys == {"clusterName", "region", "vpcId", "replicaCount", "serviceAccount", "enableShield",
                    "enableWaf", "enableWafv2", "controllerConfig", "nodeSelector", "tolerations"}


# ----------------------------------------------------------------- order
def test_steps_run_in_the_order_the_controllers_need():
    res = terraform_data()
    deps = {name: body.get("depends_on") or [] for name, body in res.items()}
    assert "${terraform_data.crds}" in deps["release"]
    assert "${terraform_data.release}" in deps["gatewayclass"]
    assert {"${terraform_data.release}", "${terraform_data.app_credentials}"} <= set(deps["secret_provider_class"])
    assert {"${terraform_data.release}", "${terraform_data.gatewayclass}", "${terraform_data.app_credentials}",
            "${terraform_data.secret_provider_class}"} <= set(deps["pre_destroy"])
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
    assert "crd/nodepools.karpenter.sh" in calls[-1] and "crd/ec2nodeclasses.karpenter.k8s.aws" in calls[-1]


def test_helm_oci_chart_has_no_repo(stubs):
    res, calls = stubs("helm", RELEASE="karpenter", CHART="oci://public.ecr.aws/karpenter/karpenter", REPO="",
                       VERSION="1.14.1", NAMESPACE="kube-system", VALUES="settings: {clusterName: qa-test}")
    assert res.returncode == 0, res.stderr
    [helm] = [c for c in calls if c.startswith("helm ")]
    assert helm.startswith("helm upgrade --install karpenter oci://public.ecr.aws/karpenter/karpenter --version 1.14.1 "
                           "--namespace kube-system")
    assert "--repo" not in helm


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
        "DATABASE_URL": "postgresql://qa%20admin@db.x:5432/qa"
                        "?sslmode=verify-full&sslrootcert=/etc/ssl/certs/rds-global-bundle.pem",
        "REDIS_URL": "rediss://:tok%2Ben%2F1@r.x:6379/0",
        "RAY_REDIS_ADDRESS": "rediss://r.x:6379",
        "RAY_REDIS_PASSWORD": "tok+en/1",
    }
    assert not any("p@ss" in c for c in calls), "no secret on a command line"
    assert dsn_password_errors(env["DATABASE_URL"]) == []


def dsn_password_errors(dsn: str) -> list[str]:
    """The rotated Aurora password must not be in DATABASE_URL: the pods read it from
    DATABASE_PASSWORD_FILE (a CSI-mounted file the driver re-syncs)."""
    from urllib.parse import urlsplit

    u = urlsplit(dsn)
    errs = [f"{dsn}: carries a password"] if u.password is not None else []
    return errs + [f"{dsn}: password= in the query"] if "password=" in u.query else errs


def test_planted_password_in_database_url_is_caught(stubs, tmp_path):
    """addons.sh as it was before (password in the DSN): the check must flag it."""
    planted = tmp_path / "addons.sh"
    text = (ADDONS / "addons.sh").read_text()
    old = "    \"DATABASE_URL\": f\"postgresql://{quote(creds['username'], safe='')}\"\n"
    assert old in text
    planted.write_text(text.replace(old, "    \"DATABASE_URL\": f\"postgresql://{quote(creds['username'], safe='')}"
                                         ":{quote(creds['password'], safe='')}\"\n"))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls"), "STATE": str(stubs.state),
           "CLUSTER_NAME": "qa-test", "REGION": "us-east-1", "APP_NAMESPACE": "qa",
           "AURORA_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:aurora", "AURORA_ENDPOINT": "db.x",
           "AURORA_PORT": "5432", "AURORA_DATABASE": "qa", "REDIS_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:redis",
           "REDIS_ENDPOINT": "r.x", "REDIS_PORT": "6379", "REDIS_APP_DB": "0"}
    res = subprocess.run(["bash", str(planted), "app-secret"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    dsn = dict(line.split("=", 1) for line in (stubs.state / "env").read_text().splitlines())["DATABASE_URL"]
    assert any("carries a password" in e for e in dsn_password_errors(dsn))


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
    # then Karpenter's capacity, after the last poll (the ALB is gone) and in this order
    assert order[3:] == ["kubectl delete nodepools.karpenter.sh --all --wait --timeout=10m",
                         "kubectl delete nodeclaims.karpenter.sh --all --wait --timeout=10m",
                         "kubectl delete ec2nodeclasses.karpenter.k8s.aws --all --wait --timeout=10m"]
    assert calls.index(order[3]) > calls.index(polls[-1])


def test_pre_destroy_fails_while_the_alb_remains(stubs):
    (stubs.state / "lb").write_text("100")
    res, calls = stubs("pre-destroy", PRE_DESTROY_POLLS="3")
    assert res.returncode != 0 and "would block deleting the VPC" in res.stderr
    assert not any("karpenter" in c for c in calls if c.startswith("kubectl delete"))


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
        assert body["triggers_replace"] == body["input"] or name in ("crds", "gatewayclass", "secret_provider_class"), name


# ----------------------------------------------------------------- system pods placement
# Upstream defaults of charts/karpenter/values.yaml at aws/karpenter-provider-aws tag v1.14.1
# (facts carried here; test_karpenter_defaults_match_upstream re-reads them when a copy of
# that repository is at hand): the controller never runs on a node Karpenter launched, two
# replicas on different hosts, and it tolerates CriticalAddonsOnly.
KARPENTER_CHART_DEFAULTS = {
    "replicas": 2,
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "karpenter.sh/nodepool", "operator": "DoesNotExist"}]}]}},
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname"}]},
    },
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
}
KARPENTER_MIRROR = Path("/work/.mirror/aws+karpenter-provider-aws/repo")


def render_tftpl(name: str, **extra: object) -> dict:
    """A values template as templatefile() renders it, with the eks unit's system labels."""
    import json

    labels = single(load(INFRA / "modules" / "eks" / "main.tf"), "locals")["system_node_labels"]
    text = (ADDONS / "values" / name).read_text()
    text = re.sub(r"\$\{jsonencode\(node_selector\)\}", json.dumps(labels), text)
    text = re.sub(r"\$\{(\w+)\}", lambda m: str(extra.get(m.group(1), f"<{m.group(1)}>")), text)
    return yaml.safe_load(text)


def test_system_pods_land_on_the_system_group_only():
    nodes = eks_nodes()
    karpenter = helm_merge(KARPENTER_CHART_DEFAULTS, render_tftpl("karpenter.yaml.tftpl"))
    assert schedules_on(karpenter, *nodes["system"]), "Karpenter must run on the system group"
    for pool in ("ray-cpu", "ray-gpu"):
        assert not schedules_on(karpenter, *nodes[pool]), f"Karpenter must not run on its own {pool} nodes"
    for chart in ("kuberay-operator.yaml.tftpl", "aws-load-balancer-controller.yaml.tftpl"):
        values = render_tftpl(chart)
        assert schedules_on(values, *nodes["system"]), chart
        assert not any(schedules_on(values, *nodes[p]) for p in ("ray-cpu", "ray-gpu")), chart


def test_planted_karpenter_on_its_own_nodes_is_caught():
    """Without upstream's DoesNotExist affinity and with a selector every node matches."""
    values = helm_merge(KARPENTER_CHART_DEFAULTS, {"affinity": None, "nodeSelector": None,
                                                   "tolerations": [{"operator": "Exists"}]})
    assert schedules_on(values, *eks_nodes()["ray-cpu"])


def test_planted_system_taint_not_tolerated():
    values = render_tftpl("kuberay-operator.yaml.tftpl")
    values["tolerations"] = []
    assert not schedules_on(values, *eks_nodes()["system"])


@pytest.mark.skipif(not KARPENTER_MIRROR.is_dir(), reason="no copy of aws/karpenter-provider-aws here")
def test_karpenter_defaults_match_upstream():
    text = subprocess.run(["git", "-C", str(KARPENTER_MIRROR), "show", "v1.14.1:charts/karpenter/values.yaml"],
                          capture_output=True, text=True, check=True).stdout
    upstream = yaml.safe_load(text)
    assert {k: upstream[k] for k in KARPENTER_CHART_DEFAULTS} == KARPENTER_CHART_DEFAULTS
    ours = render_tftpl("karpenter.yaml.tftpl")
    assert set(ours["settings"]) <= set(upstream["settings"]) and set(ours["controller"]) <= set(upstream["controller"])
    assert set(ours) <= set(upstream), set(ours) - set(upstream)


# ----------------------------------------------------------------- the DB password file (CSI)
CSI_PROVIDER_MIRROR = Path("/work/.mirror/aws+secrets-store-csi-driver-provider-aws/repo")
CSI_DRIVER_MIRROR = Path("/work/.mirror/kubernetes-sigs+secrets-store-csi-driver/repo")
PROVIDER_TAG = "secrets-store-csi-driver-provider-aws-2.1.1"
DRIVER_TAG = "v1.5.3"  # the provider chart 2.1.1's Chart.lock pins the driver subchart 1.5.3


def secret_provider_class(secret_arn: str = "arn:aws:secretsmanager:us-east-1:1:secret:rds!cluster-x") -> dict:
    text = (ADDONS / "manifests" / "secretproviderclass.yaml.tftpl").read_text()
    for k, v in {"name": "aurora-password", "namespace": "qa", "region": "us-east-1", "secret_arn": secret_arn}.items():
        text = text.replace("${" + k + "}", v)
    return yaml.safe_load(text)


def test_secret_provider_class_mounts_the_password_as_one_file():
    spc = secret_provider_class()
    assert spc["spec"]["provider"] == "aws" and spc["spec"]["parameters"]["usePodIdentity"] == "true"
    [obj] = yaml.safe_load(spc["spec"]["parameters"]["objects"])
    assert obj["objectName"].endswith("rds!cluster-x") and obj["objectType"] == "secretsmanager"
    assert obj["jmesPath"] == [{"path": "password", "objectAlias": "password"}]
    assert "secretObjects" not in spc["spec"], "no copy of the password in a Kubernetes Secret"


def _git_show(repo: Path, tag: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"{tag}:{path}"], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(not (CSI_PROVIDER_MIRROR.is_dir() and CSI_DRIVER_MIRROR.is_dir()),
                    reason="no copy of the CSI driver / AWS provider repositories here")
def test_csi_values_and_secret_provider_class_match_upstream():
    import jsonschema

    chart = "charts/secrets-store-csi-driver-provider-aws"
    lock = yaml.safe_load(_git_show(CSI_PROVIDER_MIRROR, PROVIDER_TAG, f"{chart}/Chart.lock"))
    assert [(d["name"], d["version"]) for d in lock["dependencies"]] == [("secrets-store-csi-driver", "1.5.3")]
    provider = yaml.safe_load(_git_show(CSI_PROVIDER_MIRROR, PROVIDER_TAG, f"{chart}/values.yaml"))
    driver = yaml.safe_load(_git_show(CSI_DRIVER_MIRROR, DRIVER_TAG, "charts/secrets-store-csi-driver/values.yaml"))
    ours = yaml.safe_load((ADDONS / "values" / "secrets-store-csi-driver-provider-aws.yaml").read_text())
    assert set(ours) <= set(provider)
    assert set(ours["secrets-store-csi-driver"]) <= set(driver) | {"install"}
    assert set(ours["secrets-store-csi-driver"]["syncSecret"]) <= set(driver["syncSecret"])
    crd = yaml.safe_load(_git_show(CSI_DRIVER_MIRROR, DRIVER_TAG, "charts/secrets-store-csi-driver/crds/"
                                   "secrets-store.csi.x-k8s.io_secretproviderclasses.yaml"))
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    spc = secret_provider_class()
    assert spc["apiVersion"] == f"{crd['spec']['group']}/v1" and spc["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.validate(spc, v1["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("mirror,tag,path,template", [
    ("ray-project+kuberay", "v1.7.0", "helm-chart/kuberay-operator/values.yaml", "kuberay-operator.yaml.tftpl"),
    ("kubernetes-sigs+aws-load-balancer-controller", "v3.5.0", "helm/aws-load-balancer-controller/values.yaml",
     "aws-load-balancer-controller.yaml.tftpl"),
])
def test_system_placement_keys_are_the_charts(mirror, tag, path, template):
    repo = Path("/work/.mirror") / mirror / "repo"
    if not repo.is_dir():
        pytest.skip(f"no copy of {mirror} here")
    upstream = yaml.safe_load(_git_show(repo, tag, path))
    ours = render_tftpl(template)
    assert set(ours) <= set(upstream), set(ours) - set(upstream)
    assert upstream["nodeSelector"] == {} and upstream["tolerations"] == []  # ours replace nothing upstream sets
