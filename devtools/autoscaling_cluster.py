"""A local Ray cluster that autoscales like the RayService of ``kuberay/overlays/prod``.

Ray's in-tree autoscaler (the one KubeRay runs beside the head) drives fake
worker nodes on this machine: each node is a raylet started by the autoscaler
itself (provider ``fake_multinode``, through a small subclass below), with the
node types derived from the rendered RayCluster spec by KubeRay's own
translation (``ray.autoscaler._private.kuberay.autoscaling_config`` of Ray
2.60: ``minReplicas``/``maxReplicas`` -> min/max workers, CPU from
``rayStartParams``/container limits, GPU from ``nvidia.com/gpu``, memory from
limits). No number is copied by hand: the groups, their sizes and the Serve
config all come from ``kuberay/base/rayservice.yaml`` + the overlay's patches
and its generated ``serveConfigV2``.

What differs from prod, each on purpose and listed in ``LocalRun``:

* the autoscaler's idle timeout and the pools' downscale delays are shortened
  (a run lasts minutes, not hours);
* the pools' replica counts are capped to what 2 cores can start in a test's
  time (one vLLM CPU engine is ~1 core and ~3 GB here);
* the GPU pool runs the real model with CPU engine settings on the fake GPU
  node (``engine_device: cpu``); its resource request is unchanged
  (``num_gpus: 1``, placement bundle ``{CPU: 1, GPU: 1}``), so the autoscaler
  still has to add a ``gpu`` worker for it;
* the model is the provisioned local folder, not the image's path.

Facts that cost time (Ray 2.60): the wheel lacks the ``example.yaml`` that
``ray.cluster_utils.AutoscalingCluster`` reads, so the config is written here
in full; the fake provider starts its nodes against GCS port 6379 (this
machine's Redis) unless ``provider.gcs_address`` is set; ``RAY_AUTH_MODE=token``
must be in the environment of every Ray process (LocalRay sets it before
``ray start``, the autoscaler's nodes inherit it).

Stops only its own processes: every process carries LocalRay's
``QA_LOCAL_RAY_CLUSTER`` marker (the fake nodes inherit it from the autoscaler).

    python -m devtools.autoscaling_cluster --show     # print the derived autoscaling config
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from devtools.kuberay_gen import KUBERAY_DIR, extract_serve_config, overlay_dir
from devtools.local_ray import CLUSTER_MARKER, NODE_MARKER, LocalRay, free_port
from serve_app.config import REPO_ROOT

GROUP_LABEL = "ray.io/node-group"
HEAD_TYPE = "ray.head.default"  # the fake provider tags its head node so
PROVIDER = "devtools.autoscaling_cluster.LocalNodeProvider"
MODEL_DIR = REPO_ROOT / "models" / "SmolLM2-135M-Instruct"


# -- the RayCluster spec of an overlay --------------------------------------------------------
def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/replace/remove: what the overlays' RayService patches use."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        target = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        kind = op["op"]
        if isinstance(target, list):
            if kind == "add":
                target.insert(len(target) if last == "-" else int(last), copy.deepcopy(op["value"]))
            elif kind == "replace":
                target[int(last)] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del target[int(last)]
            else:
                raise ValueError(f"unsupported JSON patch op {kind!r}")
        elif kind in ("add", "replace"):
            if kind == "replace" and last not in target:
                raise KeyError(f"replace of a missing path {op['path']}")
            target[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del target[last]
        else:
            raise ValueError(f"unsupported JSON patch op {kind!r}")
    return doc


def rendered_rayservice(overlay: str = "prod") -> dict[str, Any]:
    """kuberay/base/rayservice.yaml with the overlay's RayService JSON patches applied
    (the same files kustomize applies; the serveConfigV2 patch is read separately)."""
    odir = overlay_dir(overlay)
    kustomization = yaml.safe_load((odir / "kustomization.yaml").read_text())
    doc = yaml.safe_load((KUBERAY_DIR / "base" / "rayservice.yaml").read_text())
    for patch in kustomization.get("patches", []):
        target = patch.get("target") or {}
        if target.get("kind") != "RayService":
            continue
        ops = yaml.safe_load(patch["patch"]) if "patch" in patch else yaml.safe_load((odir / patch["path"]).read_text())
        if isinstance(ops, list):  # JSON6902; strategic-merge patches here only set serveConfigV2
            doc = apply_json_patch(doc, ops)
    doc.setdefault("metadata", {})["namespace"] = kustomization.get("namespace", "default")
    return doc


def autoscaling_config(overlay: str = "prod", *, idle_timeout_s: float, gcs_address: str) -> dict[str, Any]:
    """The autoscaler config KubeRay's autoscaler would derive from the overlay's
    RayCluster, with the provider swapped for fake nodes on this machine."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    svc = rendered_rayservice(overlay)
    ray_cr = {"metadata": {"name": svc["metadata"]["name"], "namespace": svc["metadata"]["namespace"]},
              "spec": svc["spec"]["rayClusterConfig"]}
    config = _derive_autoscaling_config_from_ray_cr(ray_cr)
    types = config["available_node_types"]
    types[HEAD_TYPE] = types.pop(config["head_node_type"])
    config["head_node_type"] = HEAD_TYPE
    for name, node_type in types.items():
        if name != HEAD_TYPE:
            # As KubeRay labels its worker pods' Ray nodes: which group a node is.
            node_type["labels"] = {**node_type.get("labels", {}), GROUP_LABEL: name}
    config["idle_timeout_minutes"] = idle_timeout_s / 60
    config["provider"] = {
        "type": "external",
        "module": PROVIDER,
        # Without it the fake provider's nodes dial 6379: this machine's Redis.
        "gcs_address": gcs_address,
        # Every fake node has this machine's IP: without it the autoscaler's load
        # metrics (keyed by IP) match no node, which then stays "uninitialized"
        # for ever and is never found idle (so never removed). Ray's own fake
        # cluster example config sets it too.
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
        "foreground_node_launch": True,
        "worker_liveness_check": False,
    }
    return config


# -- the fake node provider -------------------------------------------------------------------
def _provider_cls() -> Any:
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

    class _LocalNodeProvider(FakeMultiNodeProvider):
        """Ray's fake multi-node provider, each node with its own Serve ports.

        Every node of the throughput-optimized mode runs an HAProxy; on one
        machine a worker's would find the head's ports taken and crash-loop
        (see LocalRay.add_worker). The raylet, and every worker it starts,
        inherits the environment of this (the autoscaler's) process at spawn.
        """

        def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
            # KubeRay's node types carry the pod's memory limit; Ray refuses
            # `memory` among custom resources and the fake provider has no other
            # way to pass it: a fake node reports the machine's memory instead.
            resources = {k: v for k, v in resources.items() if k != "memory"}
            ports = {k: str(free_port()) for k in (
                "RAY_SERVE_WORKER_PROXY_HTTP_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")}
            # LocalRay's per-node marker: this node's processes, not the head's
            # (whose marker the autoscaler, on the head, carries).
            cluster = os.environ.get(CLUSTER_MARKER, "")
            ports[NODE_MARKER] = f"{cluster}/{tags.get('ray-user-node-type', 'worker')}-{self._next_node_id + 1}"
            saved = {k: os.environ.get(k) for k in ports}
            os.environ.update(ports)
            try:
                return super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    return _LocalNodeProvider


def __getattr__(name: str) -> Any:
    # The autoscaler loads the provider by import path; Ray is imported only then.
    if name == "LocalNodeProvider":
        return _provider_cls()
    raise AttributeError(name)


# -- the local run ----------------------------------------------------------------------------
@dataclass
class LocalRun:
    """What the local run changes from the overlay (nothing else is changed)."""

    overlay: str = "prod"
    idle_timeout_s: float = 15.0  # autoscalerOptions.idleTimeoutSeconds (prod: 600)
    downscale_delay_s: float = 15.0  # every pool's autoscaling.downscale_delay_s (prod: 600 / 300)
    # Replica caps per pool (min(overlay, cap)); 2 cores start ~3 engines in a test's time.
    max_replicas: dict[str, int] = field(default_factory=lambda: {"gpu": 1, "cpu": 2})
    min_replicas: dict[str, int] = field(default_factory=lambda: {"cpu": 1})
    ingress_replicas: int = 1
    # A custom autoscaling policy for every pool (serve_app/autoscaling.py), or None: Serve's default.
    policy: str | None = None
    # The question deadline (llm.request_deadline_s; serve_config.yaml: 120 s), with the
    # timeouts that must cover it. On one machine the GPU node's replica and the CPU
    # pool's second one start beside the serving engine (3 engines on 2 cores), and the
    # serving engine, at idle priority, made almost no progress for about 60 s meanwhile:
    # the last questions queued at the handles passed 120 s in 3 of 9 runs of this tier
    # (3-6 504s each, 2026-12-01 on an AMD EPYC, with and without the workers at nice
    # 0; 27 on an Intel Xeon). On EKS that replica starts on its own GPU node.
    deadline_s: float = 240.0
    model_dir: Path = MODEL_DIR

    def serve_config(self) -> dict[str, Any]:
        config = extract_serve_config(self.overlay)
        app = config["applications"][0]
        args = app["args"]
        args["ingress"]["num_replicas"] = min(args["ingress"].get("num_replicas") or 1, self.ingress_replicas)
        # One load generator is one client address: the limiter would measure itself.
        args["rate_limits"] = {"enabled": False}
        args["llm"]["request_deadline_s"] = self.deadline_s
        # A replica stopped meanwhile, and the HTTP proxy's timeout, cover the deadline
        # (as serve_config.yaml's 130 s and 150 s cover its 120 s).
        args["ingress"]["graceful_shutdown_timeout_s"] = self.deadline_s + 10
        config.setdefault("http_options", {})["request_timeout_s"] = self.deadline_s + 30
        models = args["llm"]["models"]
        for model in models:
            model["source"] = str(self.model_dir)
            pools = {p["name"]: p for p in model["pools"]}
            cpu = pools.get("cpu")
            for name, pool in pools.items():
                scaling = pool["deployment"].get("autoscaling")
                if scaling is None:
                    continue
                if name in self.max_replicas:
                    scaling["max_replicas"] = min(scaling["max_replicas"], self.max_replicas[name])
                if name in self.min_replicas:
                    scaling["min_replicas"] = min(scaling.get("min_replicas", 1), self.min_replicas[name])
                scaling["downscale_delay_s"] = self.downscale_delay_s
                pool["deployment"]["graceful_shutdown_timeout_s"] = self.deadline_s + 10
                if self.policy:
                    scaling["policy"] = {"policy_function": self.policy}
                if pool.get("accelerator") == "gpu" and cpu is not None:
                    # The real model on the fake GPU node: the CPU pool's engine
                    # settings, the GPU pool's resource request.
                    pool["engine_device"] = "cpu"
                    pool["engine_kwargs"] = copy.deepcopy(cpu["engine_kwargs"])
                    pool["env"] = {**pool.get("env", {}), **cpu.get("env", {})}
        return config


class AutoscalingCluster:
    """A LocalRay head (num-cpus 0, as the RayService's) started with the autoscaler."""

    def __init__(self, run: LocalRun | None = None, *, extra_env: dict[str, str] | None = None) -> None:
        self.run = run or LocalRun()
        gcs_port = free_port()
        self.config = autoscaling_config(self.run.overlay, idle_timeout_s=self.run.idle_timeout_s,
                                         gcs_address=f"127.0.0.1:{gcs_port}")
        head = self.config["available_node_types"][HEAD_TYPE]["resources"]
        self.ray = LocalRay(
            head_cpus=int(head.get("CPU", 0)),
            gcs_port=gcs_port,
            extra_env={
                "RAY_FAKE_CLUSTER": "1",
                # Decisions every second (default 5 s), like Ray's own fake-cluster tests.
                "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                # Gauges (Serve's ongoing requests, vLLM's queue) every 2 s, not 10 s: the run samples them.
                "RAY_metrics_report_interval_ms": "2000",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                **(extra_env or {}),
            },
        )
        self.groups = {name: t for name, t in self.config["available_node_types"].items() if name != HEAD_TYPE}

    def start(self) -> None:
        with tempfile.NamedTemporaryFile("w", prefix=f"autoscaling-{self.ray.cluster_id}-", suffix=".yaml",
                                         delete=False) as f:
            yaml.safe_dump(self.config, f)
        path = self.config_path = Path(f.name)
        self.ray.head_args = [f"--autoscaling-config={path}"]
        self.ray.start()

    def stop(self) -> int:
        with contextlib.suppress(OSError):
            self.config_path.unlink()
        return self.ray.stop()

    def __enter__(self) -> AutoscalingCluster:
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    # -- state, as Ray reports it ---------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes from the GCS (state API through the dashboard)."""
        r = httpx.get(f"{self.ray.dashboard}/api/v0/nodes", params={"limit": 1000, "detail": "1"},
                      headers=self.ray.auth_headers(), timeout=10)
        r.raise_for_status()
        return [n for n in r.json()["data"]["result"]["result"] if n.get("state") == "ALIVE"]

    def nodes_per_group(self) -> dict[str, int]:
        counts = dict.fromkeys(self.groups, 0)
        for n in self.nodes():
            group = node_group(n)
            if group in counts:
                counts[group] += 1
        return counts


def node_group(node: dict[str, Any]) -> str | None:
    """The worker group of a node (its label, set from the node type)."""
    labels = node.get("labels") or {}
    if node.get("is_head_node"):
        return HEAD_TYPE
    return labels.get(GROUP_LABEL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--overlay", default="prod")
    ap.add_argument("--show", action="store_true", help="print the autoscaling config and the serve config")
    ap.add_argument("--start", action="store_true", help="start the cluster, print node counts, stop on Ctrl-C")
    ns = ap.parse_args(argv)
    run = LocalRun(overlay=ns.overlay)
    if ns.show:
        print(json.dumps(autoscaling_config(ns.overlay, idle_timeout_s=run.idle_timeout_s,
                                            gcs_address="127.0.0.1:<port>"), indent=1))
        print(yaml.safe_dump(run.serve_config()["applications"][0]["args"]["llm"], sort_keys=False))
    if ns.start:
        with AutoscalingCluster(run) as c:
            try:
                while True:
                    print(time.strftime("%H:%M:%S"), c.nodes_per_group(), flush=True)
                    time.sleep(2)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
