"""Stopping one local Ray cluster leaves every other Ray on the machine alone
(finding 7: the stop helper used to kill every vLLM and HAProxy process)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from devtools.local_ray import CLUSTER_MARKER, LocalRay, cluster_processes

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
