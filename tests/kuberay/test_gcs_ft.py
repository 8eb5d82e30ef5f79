"""GCS fault tolerance and in-place vs new-cluster updates, checked against
what KubeRay v1.7.0's code does with the rendered RayService (issue 17; the
reasons are in kuberay/README.md, "Head loss and GCS fault tolerance").

Read at tag v1.7.0 of ray-project/kuberay:
  ray-operator/controllers/ray/common/pod.go          configureGCSFaultTolerance, configureRedisFT
  ray-operator/controllers/ray/utils/validation.go     ValidateRayClusterSpec (GCS FT rules)
  ray-operator/controllers/ray/utils/util.go           GenerateHashWithoutReplicasAndWorkersToDelete
  ray-operator/controllers/ray/utils/constant.go       DefaultWorkerRayGcsReconnectTimeoutS = "600"
  ray-operator/controllers/ray/rayservice_controller.go shouldPrepareNewCluster, shouldUpdateCluster,
      isClusterSpecHashEqual, constructRayClusterForRayService, checkIfNeedSubmitServeApplications
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from kuberay_testlib import REPO_ROOT, rendered

import kuberay_checks as kc
from devtools import kuberay_gen

# KubeRay v1.7.0 utils/constant.go
RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
DEFAULT_WORKER_RECONNECT_S = 600
NAMESPACE_ANNOTATION = "ray.io/external-storage-namespace"
FT_ANNOTATION = "ray.io/ft-enabled"
# What KubeRay sets itself on the head container when gcsFaultToleranceOptions is
# set (pod.go configureRedisFT) or forbids next to it (validation.go).
KUBERAY_OWNED_HEAD_ENV = {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME", "RAY_external_storage_namespace"}


def rayservice(docs: list[dict]) -> dict:
    found = kc.find(docs, "RayService")
    assert len(found) == 1
    return found[0]


def env_names(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def cluster_hash_input(cluster_spec: dict) -> dict:
    """The part of rayClusterConfig KubeRay v1.7.0 hashes to decide on a new
    cluster: utils.GenerateHashWithoutReplicasAndWorkersToDelete mutes the
    head's tolerations and scheduling gates, each worker group's replicas,
    minReplicas, maxReplicas, scaleStrategy.workersToDelete, tolerations and
    scheduling gates, and upgradeStrategy; rayClusterSpecForHashing mutes
    suspend. Equal inputs = equal hashes."""
    spec = copy.deepcopy(cluster_spec)
    spec.pop("suspend", None)
    spec.pop("upgradeStrategy", None)
    head = spec["headGroupSpec"]["template"]["spec"]
    head.pop("tolerations", None)
    head.pop("schedulingGates", None)
    for group in spec.get("workerGroupSpecs", []):
        for key in ("replicas", "minReplicas", "maxReplicas"):
            group.pop(key, None)
        group.get("scaleStrategy", {}).pop("workersToDelete", None)
        group["template"]["spec"].pop("tolerations", None)
        group["template"]["spec"].pop("schedulingGates", None)
    return spec


def update_kind(old: dict, new: dict) -> str:
    """What KubeRay v1.7.0 does with a running RayService when its spec goes
    from ``old`` to ``new`` (upgradeStrategy NewCluster):
    rayservice_controller.go shouldPrepareNewCluster / shouldUpdateCluster /
    isClusterSpecHashEqual, checkIfNeedSubmitServeApplications."""
    old_rc, new_rc = old["spec"]["rayClusterConfig"], new["spec"]["rayClusterConfig"]
    if cluster_hash_input(old_rc) != cluster_hash_input(new_rc):
        # partial: only the first len(old groups) worker groups compared, so
        # groups appended at the end update the running RayCluster in place.
        n = len(old_rc.get("workerGroupSpecs", []))
        trimmed = copy.deepcopy(new_rc)
        trimmed["workerGroupSpecs"] = trimmed.get("workerGroupSpecs", [])[:n]
        if len(new_rc.get("workerGroupSpecs", [])) >= n and cluster_hash_input(old_rc) == cluster_hash_input(trimmed):
            return "RayCluster updated in place"
        return "new RayCluster"
    if old["spec"].get("serveConfigV2") != new["spec"].get("serveConfigV2"):
        return "serve applications updated in place"
    # Equal hashes (e.g. only replicas/min/maxReplicas changed): the running
    # RayCluster is left as it is (shouldUpdateCluster false).
    return "nothing"


# ------------------------------------------------------------- GCS fault tolerance
def ft_problems(rs: dict) -> list[str]:
    """Why KubeRay v1.7.0 would not run this RayService's GCS fault tolerance
    the way kuberay/README.md says (empty: it would)."""
    problems = []
    rc = rs["spec"]["rayClusterConfig"]
    ft = rc.get("gcsFaultToleranceOptions") or {}
    if ft.get("backend", "redis") != "redis" or "storage" in ft:
        problems.append("not the Redis backend")
    if ft.get("redisAddress") != "$(RAY_GCS_REDIS_ADDRESS)":
        problems.append(f"redisAddress {ft.get('redisAddress')!r}")
    if (ft.get("redisPassword") or {}).get("valueFrom", {}).get("secretKeyRef") != {
            "name": "app-credentials", "key": "RAY_REDIS_PASSWORD"}:
        problems.append("redisPassword not from app-credentials")
    # The default namespace is the RayCluster's UID (pod.go configureRedisFT): the old and
    # the new cluster of a NewCluster upgrade each get their own. A fixed one (the field, or
    # the annotation, which constructRayClusterForRayService copies from the RayService onto
    # every RayCluster) would make both GCSes load one state (the old cluster's actors, nodes,
    # Serve checkpoint).
    if "externalStorageNamespace" in ft:
        problems.append("externalStorageNamespace set: both clusters of an upgrade would share it")
    annotations = rs["metadata"].get("annotations") or {}
    for key in (NAMESPACE_ANNOTATION, FT_ANNOTATION):
        if key in annotations:
            problems.append(f"annotation {key} (validation.go rejects it beside gcsFaultToleranceOptions)")
    if rs["spec"].get("upgradeStrategy", {}).get("type") != "NewCluster":
        problems.append("upgradeStrategy is not NewCluster")
    head = rc["headGroupSpec"]
    container = head["template"]["spec"]["containers"][0]
    env = env_names(container)
    # KubeRay appends RAY_REDIS_ADDRESS=$(RAY_GCS_REDIS_ADDRESS) after our env: defined first, it expands.
    if "RAY_GCS_REDIS_ADDRESS" not in env:
        problems.append("head env RAY_GCS_REDIS_ADDRESS missing")
    if KUBERAY_OWNED_HEAD_ENV & set(env):
        problems.append(f"head env {sorted(KUBERAY_OWNED_HEAD_ENV & set(env))} is KubeRay's (or rejected)")
    if {"redis-password", "redis-username"} & set(head.get("rayStartParams") or {}):
        problems.append("redis credentials in rayStartParams (validation.go rejects them)")
    # Workers wait this long for a new head before their raylet exits (then every replica on
    # them goes, and clients are refused: tests/faults/test_head_lost.py). KubeRay injects 600 s
    # when unset (pod.go); a head pod rescheduled on a new node (node start, image pull) needs
    # minutes, so no group may lower it.
    for group in rc["workerGroupSpecs"]:
        genv = env_names(group["template"]["spec"]["containers"][0])
        value = float(genv[RECONNECT_ENV]["value"]) if RECONNECT_ENV in genv else DEFAULT_WORKER_RECONNECT_S
        if value < DEFAULT_WORKER_RECONNECT_S:
            problems.append(f"group {group['groupName']}: {RECONNECT_ENV}={value:g} < {DEFAULT_WORKER_RECONNECT_S}")
    # No restartPolicy and no probes on the head: with the in-tree autoscaler v1 (no
    # autoscalerOptions.version) the head pod keeps restartPolicy Always, so a dead
    # `ray start --block` restarts in the same pod, and a lost pod is recreated by the
    # RayCluster controller (raycluster_controller.go reconcilePods); KubeRay injects its
    # liveness (5 s period, 120 failures) and readiness probes (pod.go initLivenessAndReadinessProbe).
    if "restartPolicy" in head["template"]["spec"] or "version" in (rc.get("autoscalerOptions") or {}):
        problems.append("head restart policy / autoscaler version set: KubeRay's head recreation changes")
    if {"livenessProbe", "readinessProbe"} & set(container):
        problems.append("head probes set: KubeRay injects its own")
    return problems


@pytest.mark.parametrize("overlay", ["test", "prod"])
def test_gcs_fault_tolerance_as_kuberay_v1_7_runs_it(overlay):
    assert ft_problems(rayservice(rendered(overlay))) == []


def _group_env(rs: dict) -> list:
    return rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]


@pytest.mark.parametrize(("plant", "needle"), [
    (lambda rs: rs["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"].update(externalStorageNamespace="qa"),
     "share"),
    (lambda rs: rs["metadata"].setdefault("annotations", {}).update({NAMESPACE_ANNOTATION: "qa"}),
     NAMESPACE_ANNOTATION),
    (lambda rs: _group_env(rs).append({"name": RECONNECT_ENV, "value": "60"}), RECONNECT_ENV),
    (lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "RAY_REDIS_ADDRESS", "value": "redis:6379"}), "KubeRay's"),
    (lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"].update(restartPolicy="Never"),
     "restart policy"),
])
def test_planted_gcs_ft_mistakes(plant, needle):
    rs = rayservice(rendered("test"))
    plant(rs)
    problems = ft_problems(rs)
    assert any(needle in p for p in problems), problems


# ------------------------------------------------------------- in place or new cluster
def _with_serve_change(tmp_path: Path, change) -> dict:
    """The test overlay's RayService as it would render with serve_config.yaml changed."""
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    change(config["applications"][0]["args"])
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    patch = yaml.safe_load(kuberay_gen.render_patch("test", path))
    assert set(patch["spec"]) == {"serveConfigV2"}  # the generated patch touches nothing else
    rs = rayservice(rendered("test"))
    rs["spec"]["serveConfigV2"] = patch["spec"]["serveConfigV2"]
    return rs


def _cpu_pool(args: dict) -> dict:
    return next(p for p in args["llm"]["models"][0]["pools"] if p["name"] == "cpu")


@pytest.mark.parametrize("change", [
    pytest.param(lambda a: a.update(max_in_flight=192), id="ingress-setting"),
    pytest.param(lambda a: _cpu_pool(a)["engine_kwargs"].update(max_num_seqs=24), id="cpu-engine-kwargs"),
    pytest.param(lambda a: _cpu_pool(a)["env"].update(VLLM_CPU_KVCACHE_SPACE="3"), id="cpu-engine-env"),
])
def test_serve_config_changes_are_applied_in_place(tmp_path, change):
    """The redeploys of tests/faults/test_control_plane.py, as a RayService
    update: only serveConfigV2 changes, which KubeRay v1.7.0 PUTs to the running
    cluster's dashboard (checkIfNeedSubmitServeApplications -> updateServeDeployment,
    what `serve deploy` does); the pool's engine env is Serve runtime_env, not pod env."""
    old = rayservice(rendered("test"))
    new = _with_serve_change(tmp_path, change)
    assert new["spec"]["serveConfigV2"] != old["spec"]["serveConfigV2"]
    assert update_kind(old, new) == "serve applications updated in place"


@pytest.mark.parametrize(("change", "expected"), [
    pytest.param(lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplicas=5),
                 "nothing", id="maxReplicas"),
    pytest.param(lambda rs: _group_env(rs).append({"name": "X", "value": "1"}), "new RayCluster",
                 id="worker-env"),
    pytest.param(lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
                 .update(image="ray-cpu:other"), "new RayCluster", id="head-image"),
    pytest.param(lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"].append(
        {**copy.deepcopy(rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]), "groupName": "extra"}),
        "RayCluster updated in place", id="group-appended"),
])
def test_cluster_config_changes(change, expected):
    """What README's table says KubeRay v1.7.0 does with rayClusterConfig changes."""
    old = rayservice(rendered("test"))
    new = copy.deepcopy(old)
    change(new)
    assert update_kind(old, new) == expected
