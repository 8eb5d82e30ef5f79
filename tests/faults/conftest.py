"""The fault tier's stack: throwaway PostgreSQL and Redis, a Ray cluster of a
head (no work) and two 4-CPU worker node processes, and the repo's
serve_config.yaml deployed on it with the real CPU pool and model.

Shaped like the RayService: the head's GCS keeps the cluster's state in its
own throwaway Redis (GCS fault tolerance, RAY_REDIS_ADDRESS and a per-cluster
namespace, as KubeRay sets them), every node runs its own Serve HTTP entry
(proxy_location EveryNode) and the workers get a GCS reconnect timeout
(RAY_gcs_rpc_server_reconnect_timeout_s, KubeRay's 600 s scaled down to
``WORKER_GCS_RECONNECT_S`` so the tier can outlast it).

Everything here is started by the tier and torn down by it; the machine's
shared PostgreSQL and Redis are never used, stopped or paused.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from devtools.local_ray import GCS_RECONNECT_ENV, LocalRay, RayNode
from devtools.provision import is_provisioned, provision_model
from serve_app.auth import create_api_key
from serve_app.settings import Settings
from tests.faults import procs, report
from tests.faults.stack import ThrowawayPostgres, ThrowawayRedis
from tests.serve_harness import REPO, args_from_serve_config, make_test_cluster

APP = "qa"
MODEL_DIR = REPO / "models" / "SmolLM2-135M-Instruct"
LLM_NEEDLE = "cpu-pool"
# How long a worker node keeps retrying a lost GCS before its raylet (and
# every replica on it) exits. KubeRay v1.7.0 sets 600 s on worker pods
# (ray-operator/controllers/ray/common/pod.go, configureGCSFaultTolerance);
# scaled down here so a head outage past it fits in the tier. The head-kill
# scenario's outage (kill, down, `ray start`, GCS reload) stays well below it.
WORKER_GCS_RECONNECT_S = 40
# The ingress's autoscaling target (questions and user calls in flight per
# replica): the scenarios' own load keeps at most 8 in flight in all.
INGRESS_TARGET_ONGOING = 16
# The scenarios run in this order (the stack is shared): control-plane
# scenarios on the full cluster first, then test_faults.py (its worker-node kill
# leaves one worker), then the head lost for good (it takes the workers down).
MODULE_ORDER = ("test_control_plane.py", "test_faults.py", "test_head_lost.py")


@dataclass
class FaultStack:
    cluster: LocalRay
    pg: ThrowawayPostgres
    redis: ThrowawayRedis
    # The GCS's own Redis (on EKS the same ElastiCache holds both, apart by
    # key prefix; here apart, so the app's Redis scenarios do not also stop
    # the GCS: kuberay/README.md).
    gcs_redis: ThrowawayRedis
    prefix: str
    api_key: str
    head_raylet: int
    # Every POST /users answered 200 across all scenarios: id -> email.
    acked: dict[int, str] = field(default_factory=dict)
    # Processes a scenario left behind (killed node's engines), reaped at teardown.
    leftovers: list[psutil.Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def raylets(self) -> dict[int, psutil.Process]:
        return procs.raylets(self.cluster.gcs_port)

    def llm_replicas(self) -> list[tuple[psutil.Process, int]]:
        return procs.serve_replicas(self.raylets(), LLM_NEEDLE)

    def live_workers(self) -> list[RayNode]:
        """Worker nodes whose raylet still runs."""
        alive = set(self.raylets())
        return [w for w in self.cluster.workers if any(p in alive for p in procs.node_raylets(w.marker))]


def fault_args() -> dict[str, Any]:
    args = args_from_serve_config(auth={"users": "key", "questions": "open"})
    # The limiter on (it is part of what must come back after a Redis
    # outage), with buckets far above the load so it never answers 429.
    generous = {"rate_per_s": 10_000, "burst": 100_000}
    args["rate_limits"] = {**args.get("rate_limits", {}), "enabled": True, "questions": generous, "users": generous}
    # Two ingress replicas, as the prod overlay runs them: Serve spreads them
    # over the two workers, so losing a node leaves one serving (with one, a
    # node loss is a full outage by construction, not a fault to survive).
    #
    # Autoscaled between 2 and 3, so the head-loss scenario can show the
    # recovered Serve controller scaling a deployment it adopted from Redis
    # (test_control_plane.py). The target is far above what the scenarios'
    # load keeps in flight per replica (8 clients, a third of them asking),
    # so only that scenario's burst of questions scales it.
    args["ingress"].pop("num_replicas", None)
    args["ingress"]["autoscaling"] = {
        "min_replicas": 2, "max_replicas": 3, "target_ongoing_requests": INGRESS_TARGET_ONGOING,
        "upscale_delay_s": 1, "downscale_delay_s": 5,
    }
    model = args["llm"]["models"][0]
    model["source"] = str(MODEL_DIR)
    for pool in model["pools"]:
        if pool["name"] == "gpu":
            pool["enabled"] = False
    return args


def _start_cluster(cluster: LocalRay) -> int:
    """Starts the head and two workers; returns the head's raylet pid."""
    cluster.start()
    head = list(procs.raylets(cluster.gcs_port))
    assert len(head) == 1, f"expected one head raylet, found {head}"
    # Two workers, so a lost node's replicas have somewhere to go. One after
    # the other: two `ray start` on one machine at once fail to find their node.
    cluster.add_worker(num_cpus=4, memory_bytes=8 * 2**30)
    cluster.add_worker(num_cpus=4, memory_bytes=8 * 2**30)
    assert len(procs.raylets(cluster.gcs_port)) == 3
    return head[0]


@pytest.fixture(scope="session")
async def fault_stack() -> AsyncIterator[FaultStack]:
    if not is_provisioned(MODEL_DIR):
        await asyncio.to_thread(provision_model, "local-gguf", MODEL_DIR, progress=False)
    t0 = time.monotonic()
    pg, redis, gcs_redis = ThrowawayPostgres(), ThrowawayRedis(), ThrowawayRedis()
    cluster = make_test_cluster(head_cpus=0, gcs_redis_address=f"127.0.0.1:{gcs_redis.port}",
                                worker_env={GCS_RECONNECT_ENV: str(WORKER_GCS_RECONNECT_S)})
    ray_started = False
    stack: FaultStack | None = None
    try:
        await asyncio.to_thread(pg.init)
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(redis.start)
        await asyncio.to_thread(gcs_redis.start)
        api_key = await create_api_key(pg.dsn, "fault-tests", Settings(database_sslmode="disable"))
        # Set before starting: a half-started cluster must be stopped too.
        ray_started = True
        head_raylet = await asyncio.to_thread(_start_cluster, cluster)
        t_cluster = time.monotonic() - t0
        prefix = f"faults-{uuid.uuid4().hex[:10]}"
        config = cluster.serve_config(
            fault_args(), {"DATABASE_URL": pg.dsn, "REDIS_URL": redis.url, "REDIS_KEY_PREFIX": prefix}
        )
        took = await asyncio.to_thread(cluster.deploy, config, 900)
        print(f"\n[faults] servers and Ray (head + 2 workers) up in {t_cluster:.1f}s, app deployed in {took:.1f}s "
              f"(PostgreSQL :{pg.port}, Redis :{redis.port}, GCS Redis :{gcs_redis.port})", flush=True)
        stack = FaultStack(cluster, pg, redis, gcs_redis, prefix, api_key, head_raylet)
        yield stack
    finally:
        if ray_started:
            await asyncio.to_thread(cluster.stop)
        if stack is not None:
            # A killed node's processes are under no raylet any more.
            procs.kill(stack.leftovers)
        pg.resume()
        redis.resume()
        pg.destroy()
        redis.destroy()
        gcs_redis.destroy()


def pytest_collection_modifyitems(items: list[Any]) -> None:
    """Runs the modules in MODULE_ORDER (stable within a module)."""
    def rank(item: Any) -> int:
        name = item.path.name
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)

    items.sort(key=rank)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    path = report.write_if_any()
    if path is None:
        return
    terminalreporter.write_sep("=", "fault tests: per-scenario figures")
    terminalreporter.write_line(report.markdown())
    terminalreporter.write_line(f"(also in {path})")
