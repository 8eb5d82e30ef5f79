"""The engine-queue policy and the autoscaling cluster's derivation, without a cluster
(no lock needed): Ray's own AutoscalingContext/AutoscalingConfig types, the overlay's files."""

from __future__ import annotations

import time

import pytest
import yaml
from ray.serve._private.common import TimeStampedValue
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from devtools.autoscaling_cluster import HEAD_TYPE, LocalRun, autoscaling_config, rendered_rayservice
from serve_app.autoscaling import RUNNING, WAITING, EngineQueuePolicy, pool_server_cls
from serve_app.config import REPO_ROOT, AppArgs
from serve_app.llm import llm_config


def ctx(replicas: int, running: list[float] | None, waiting: list[float] | None, *, queued: float = 0,
        target: float = 16, total: float = 0) -> AutoscalingContext:
    now = time.time()
    raw = {}

    def series(values: list[float], older: float) -> dict:
        # An older sample first: the policy must read the newest one.
        return {f"r{i}": [TimeStampedValue(now - 5, older), TimeStampedValue(now, v)] for i, v in enumerate(values)}

    if running is not None:
        raw[RUNNING] = series(running, 0.0)
    if waiting is not None:
        raw[WAITING] = series(waiting, 99.0)
    return AutoscalingContext(
        deployment_id=None, deployment_name="cpu-pool:m", app_name="qa", current_num_replicas=replicas,
        target_num_replicas=replicas, running_replicas=[], total_num_requests=total, total_queued_requests=queued,
        aggregated_metrics=None, raw_metrics=raw, capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=4,
        policy_state={}, last_scale_up_time=None, last_scale_down_time=None, current_time=now,
        config=AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=target),
    )


@pytest.mark.parametrize(("replicas", "running", "waiting", "queued", "want"), [
    (1, [32], [16], 0, 3),        # backlog: enough replicas for all of it at 16 each
    (1, [4], [0], 3, 2),          # requests held at the handles count as backlog (at least one more)
    (2, [20, 20], [0, 0], 0, 2),  # busy, nothing waiting: hold
    (2, [5, 2], [0, 0], 0, 1),    # fits in one replica at half its target: one fewer
    (3, [0, 0, 0], [0, 0, 0], 0, 0),  # idle: zero (Serve bounds it by min_replicas)
])
def test_the_policy_follows_the_engines_queue(replicas, running, waiting, queued, want) -> None:
    desired, state = EngineQueuePolicy()(ctx(replicas, running, waiting, queued=queued))
    assert desired == want
    assert state["engine_waiting"] == sum(waiting)  # the newest sample, not the window


def test_the_policy_holds_until_new_replicas_report() -> None:
    assert EngineQueuePolicy()(ctx(2, None, None, total=50))[0] == 2


def test_the_rayservice_groups_become_the_autoscaler_node_types() -> None:
    svc = rendered_rayservice("prod")
    groups = {g["groupName"]: g for g in svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    config = autoscaling_config("prod", idle_timeout_s=15, gcs_address="127.0.0.1:1")
    types = config["available_node_types"]
    assert set(types) == {HEAD_TYPE, *groups}
    for name, g in groups.items():
        assert (types[name]["min_workers"], types[name]["max_workers"]) == (g["minReplicas"], g["maxReplicas"])
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert types[name]["resources"]["CPU"] == int(limits["cpu"])
        assert types[name]["resources"].get("GPU", 0) == int(limits.get("nvidia.com/gpu", 0))
    assert types[HEAD_TYPE]["resources"]["CPU"] == 0  # rayStartParams num-cpus "0"
    # The prod patches are applied (base: cpu 1..2, no gpu group).
    base = yaml.safe_load((REPO_ROOT / "kuberay/base/rayservice.yaml").read_text())
    assert base["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] != groups["cpu"]["maxReplicas"]
    assert config["provider"]["gcs_address"] == "127.0.0.1:1"
    assert config["provider"]["use_node_id_as_ip"] is True
    assert config["idle_timeout_minutes"] == 0.25


def test_the_gpu_pool_runs_a_cpu_engine_with_its_gpu_request() -> None:
    args = AppArgs.model_validate(LocalRun(policy="serve_app.autoscaling:EngineQueuePolicy")
                                  .serve_config()["applications"][0]["args"])
    model = args.llm.models[0]
    gpu = next(p for p in model.pools if p.name == "gpu")
    cfg = llm_config(model, gpu)
    assert cfg["placement_group_config"]["bundles"] == [{"CPU": 1.0, "GPU": 1.0}]
    assert cfg["accelerator_config"] == {"kind": "cpu"}
    policy = cfg["deployment_config"]["autoscaling_config"]["policy"]
    assert policy["policy_function"].endswith("EngineQueuePolicy")
    server_cls = pool_server_cls(policy)
    assert server_cls.__name__ == "EngineStatsPoolServer"
    assert hasattr(server_cls, "record_autoscaling_stats")
    # What the replica validates it with (Ray Serve LLM's own model).
    from ray.serve.llm import LLMConfig

    assert LLMConfig.model_validate(cfg).accelerator_config.kind == "cpu"


def test_the_local_runs_deadline_is_covered_by_every_timeout() -> None:
    """The local run's longer question deadline (3 engines share 2 cores
    here) with what must outlast it: the proxy's request timeout (else a 408
    before our 504) and a stopping replica's grace."""
    run = LocalRun()
    config = run.serve_config()
    args = AppArgs.model_validate(config["applications"][0]["args"])
    assert args.llm.request_deadline_s == run.deadline_s > 120
    assert config["http_options"]["request_timeout_s"] > run.deadline_s
    assert args.ingress.graceful_shutdown_timeout_s >= run.deadline_s
    pools = args.llm.models[0].pools
    assert {p.name for p in pools} == {"gpu", "cpu"}
    assert all(p.deployment.graceful_shutdown_timeout_s >= run.deadline_s for p in pools)
