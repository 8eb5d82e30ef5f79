"""Stopping one local Ray cluster leaves every other Ray on the machine alone
(finding 7: the stop helper used to kill every vLLM and HAProxy process); a
head killed alone is replaced by a new one against the same GCS Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest

from devtools.local_ray import CLUSTER_MARKER, GCS_RECONNECT_ENV, LocalRay, cluster_processes, node_processes
from tests.faults.stack import ThrowawayRedis

pytestmark = pytest.mark.integration


def _engine_like(cluster: LocalRay) -> subprocess.Popen:
    """A long-running child carrying the cluster's marker, as a vLLM engine
    process or Serve's HAProxy does (they inherit it from the raylet)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            env={**os.environ, CLUSTER_MARKER: cluster.cluster_id})


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_stopping_one_cluster_leaves_another_running(ray_cluster: LocalRay) -> None:
    """The session's cluster (head, worker node, and what runs on them) is the
    other cluster: a tiny second head is started and stopped beside it."""
    other = ray_cluster
    other_child = _engine_like(other)
    mine = LocalRay(head_cpus=1, throughput_mode=False)
    try:
        mine.start()
        my_child = _engine_like(mine)
        other_pids = {p.pid for p in cluster_processes(other.cluster_id)}
        assert other_child.pid in other_pids and len(other_pids) > 4  # GCS, raylets, dashboard, the child...
        assert mine.stop() > 3
        assert not cluster_processes(mine.cluster_id) and my_child.wait(timeout=10) is not None
        assert _alive(other_pids) == other_pids
        assert other_child.poll() is None
        status = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "status",
                                 f"--address={other.address}"], env=other.env, capture_output=True, text=True,
                                timeout=120)
        assert status.returncode == 0, status.stderr[-2000:]
    finally:
        mine.stop()
        other_child.kill()
        other_child.wait(timeout=10)


_DRIVER = """
import json, os, sys, time
import ray
ray.init(address=sys.argv[1], namespace="local-ray-test", logging_level="ERROR")
if sys.argv[2] == "create":
    @ray.remote(num_cpus=1)
    class Keeper:
        def pid(self):
            return os.getpid()
    k = Keeper.options(name="keeper", lifetime="detached").remote()
    pid = ray.get(k.pid.remote())
else:
    pid = ray.get(ray.get_actor("keeper").pid.remote(), timeout=60)
nodes = {n["NodeID"]: {"alive": n["Alive"], "head": "node:__internal_head__" in n["Resources"]} for n in ray.nodes()}
print(json.dumps({"pid": pid, "nodes": nodes}))
"""


def _driver(cluster: LocalRay, what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _DRIVER, cluster.address, what], env=cluster.env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_new_head_takes_over_from_the_gcs_redis() -> None:
    """GCS fault tolerance as the RayService has it: the head's GCS keeps the
    cluster's state in Redis (its own namespace); the head's processes are
    killed alone, the worker node keeps running; a new head against the same
    Redis reloads the state and the worker reconnects, keeping its node id and
    its detached actor."""
    redis = ThrowawayRedis()
    redis.start()
    cluster = LocalRay(head_cpus=0, throughput_mode=False, gcs_redis_address=f"127.0.0.1:{redis.port}",
                       worker_env={GCS_RECONNECT_ENV: "60"})
    try:
        cluster.start()
        worker = cluster.add_worker(num_cpus=1)
        before = _driver(cluster, "create")
        assert sorted(n["head"] for n in before["nodes"].values()) == [False, True]
        keys = subprocess.run(["redis-cli", "-p", str(redis.port), "--scan"], capture_output=True, text=True,
                              timeout=30, check=True).stdout.split()
        assert keys and all(cluster.gcs_storage_namespace in k for k in keys), keys[:10]

        worker_pids = {p.pid for p in node_processes(worker.marker)}
        assert before["pid"] in worker_pids
        killed = cluster.kill_head()
        assert len(killed) >= 3 and not set(killed) & worker_pids  # GCS, raylet, dashboard...
        assert not node_processes(cluster.head.marker)
        assert _alive(worker_pids) == worker_pids

        cluster.restart_head()
        after = _driver(cluster, "get")
        assert after["pid"] == before["pid"], "the detached actor was not the same process"
        worker_id = next(i for i, n in before["nodes"].items() if not n["head"])
        assert after["nodes"][worker_id]["alive"], after
        new_heads = [i for i, n in after["nodes"].items() if n["head"] and n["alive"]]
        assert len(new_heads) == 1 and new_heads[0] not in before["nodes"]
    finally:
        cluster.stop()
        redis.destroy()
