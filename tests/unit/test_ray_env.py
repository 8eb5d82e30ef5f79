"""The RayService's Ray containers start Ray as the run command does
(devtools/local_ray.py): the same Serve HTTP mode and the same worker
niceness on every node, the controller's period on the head."""

from __future__ import annotations

from pathlib import Path

import yaml

from devtools.local_ray import CONTROLLER_ENV, THROUGHPUT_MODE_ENV, WORKER_PRIORITY_ENV, LocalRay

KUBERAY = Path(__file__).resolve().parents[2] / "kuberay"


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or [] if "value" in e}


def ray_containers() -> dict[str, list[dict]]:
    """Group name ("head", "cpu", "gpu") -> its Ray containers, from the base
    RayService and the prod overlay's GPU group patch."""
    rs = yaml.safe_load((KUBERAY / "base" / "rayservice.yaml").read_text())
    cluster = rs["spec"]["rayClusterConfig"]
    groups = {"head": _containers(cluster["headGroupSpec"]["template"])}
    for g in cluster["workerGroupSpecs"]:
        groups[g["groupName"]] = _containers(g["template"])
    for doc in yaml.safe_load_all((KUBERAY / "overlays" / "prod" / "gpu-worker-group.patch.yaml").read_text()):
        for op in doc if isinstance(doc, list) else [doc]:
            value = op.get("value", op) if isinstance(op, dict) else {}
            if isinstance(value, dict) and value.get("groupName") == "gpu":
                groups["gpu"] = _containers(value["template"])
    return groups


def test_every_ray_container_starts_ray_as_the_run_command() -> None:
    groups = ray_containers()
    assert {"head", "cpu", "gpu"} <= set(groups), sorted(groups)
    local = LocalRay().env
    for name, containers in groups.items():
        for c in containers:
            env = _env(c)
            for k, v in {**THROUGHPUT_MODE_ENV, **WORKER_PRIORITY_ENV}.items():
                assert env.get(k) == v == local[k], (name, c["name"], k, env.get(k))
    head_env = _env(groups["head"][0])
    assert all(head_env.get(k) == v == local[k] for k, v in CONTROLLER_ENV.items()), head_env

