"""Finding this test cluster's processes (raylets, Serve replicas, vLLM engines).

Only processes under the raylets of the cluster the tests started are ever
looked at, so other Ray clusters on the machine are never touched.
"""

from __future__ import annotations

import signal
import time

import psutil

from devtools.local_ray import is_engine_process


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def raylets(gcs_port: int) -> dict[int, psutil.Process]:
    """pid -> raylet of every node of the cluster whose GCS listens on ``gcs_port``."""
    found = {}
    for p in psutil.process_iter():
        try:
            args = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if args and args[0].endswith("/raylet") and any(
            a.startswith("--gcs-address=") and a.endswith(f":{gcs_port}") for a in args
        ):
            found[p.pid] = p
    return found


def node_raylets(marker: str) -> list[int]:
    """Pids of the raylets carrying one LocalRay node marker."""
    from devtools.local_ray import node_processes

    out = []
    for p in node_processes(marker):
        try:
            if p.cmdline() and p.cmdline()[0].endswith("/raylet"):
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


def descendants(root: psutil.Process) -> list[psutil.Process]:
    try:
        return root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def serve_replicas(node_raylets: dict[int, psutil.Process], needle: str) -> list[tuple[psutil.Process, int]]:
    """(replica process, its raylet pid) for Serve replicas whose title contains ``needle``."""
    out = []
    for raylet_pid, raylet in node_raylets.items():
        for p in descendants(raylet):
            cmd = _cmdline(p)
            if "ServeReplica:" in cmd and needle in cmd:
                out.append((p, raylet_pid))
    return out


def replica_processes(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if "ServeReplica:" in _cmdline(p)]


def engine_processes(root: psutil.Process) -> list[psutil.Process]:
    """vLLM engine processes under ``root``."""
    return [p for p in descendants(root) if is_engine_process(p)]


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def reap_survivors(procs: list[psutil.Process], grace_s: float) -> list[str]:
    """Waits up to ``grace_s`` for ``procs`` to exit, SIGKILLs the rest; returns
    what had to be killed. vLLM engines outlive their dead replica (they are not
    Ray workers) and each holds GBs of memory."""
    deadline = time.monotonic() + grace_s
    left = list(procs)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        if left:
            time.sleep(0.5)
    killed = []
    for p in left:
        try:
            killed.append(f"{p.pid}:{_cmdline(p)[:60]}")
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return killed
