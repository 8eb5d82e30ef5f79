"""A local Ray cluster (head, optional worker processes) and `serve deploy` onto it.

Used by the run command, the tests and the benchmark. Ray's default GCS port
is 6379, Redis's: the head always gets an explicit port.

Shaped like the RayService when asked: the head's GCS can keep its state in an
external Redis (GCS fault tolerance, as KubeRay's ``gcsFaultToleranceOptions``
sets it up), every node carries its own marker so one node (the head, a worker)
can be killed alone, each worker node has its own Serve HTTP entry port, and
``restart_head()`` starts a new head against the same Redis (what KubeRay does
when the head pod dies).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from serve_app.config import REPO_ROOT, SERVE_CONFIG_PATH
from serve_app.settings import child_env

BIN = Path(sys.executable).parent


# Ray's worker ports by default (``ray start --min-worker-port/--max-worker-port``).
_RAY_WORKER_PORTS = range(10002, 20000)


def _ephemeral_ports() -> range:
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999  # Linux's default
    return range(lo, hi + 1)


def free_port() -> int:
    """A TCP port free on every address now, outside the kernel's ephemeral
    range and Ray's worker ports.

    A port the kernel hands out (bind to port 0) and that is then released
    can be handed out again, to any process's outgoing connection or Ray's
    own listeners, before whoever it was picked for binds it: HAProxy's stats
    port, bound once the cluster had started, was taken that way in the
    bench of 2026-12-01 ("cannot bind socket (Address already in use)")."""
    ephemeral = _ephemeral_ports()
    candidates = [p for p in range(20000, 65536) if p not in ephemeral and p not in _RAY_WORKER_PORTS]
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port outside the ephemeral range")


# Serve's throughput-optimized mode: the ingress replicas serve HTTP
# themselves, behind one HAProxy per node instead of Serve's Python proxy.
# Measured here (loadtests/results/report.md): cached GET /users/{id} at 0.60
# of plain uvicorn's throughput, against 0.07 with the default proxy. The
# RayService sets the same variables (kuberay/base/rayservice.yaml).
THROUGHPUT_MODE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # That mode buffers 1000 log records per replica before writing any: at
    # low traffic a request's lines would reach the log files (and the
    # dashboard) minutes later, or never before a crash.
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
}

# The Serve controller's loop period (Ray 2.60.0 default 0.1 s,
# ray/serve/_private/constants.py CONTROL_LOOP_INTERVAL_S). Each pass queries the
# GCS for node resources and reconciles every deployment: 4.3 % of a core on an
# idle cluster here, 1.7 % at 0.5 s (2026-11-30, per-process CPU over 20-30 s).
# That CPU comes out of the engine on a 2-core node, and every preemption of one
# of its OpenMP threads stalls the other at the next barrier. Autoscaling
# delays are wall-clock (ray/serve/autoscaling_policy.py), so they keep their
# meaning; deploys and scaling react up to 0.4 s later. The RayService's head
# sets the same (kuberay/base/rayservice.yaml).
CONTROLLER_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"}

# Ray starts its worker processes at nice 15 (RAY_worker_niceness, default 15 in
# Ray's ray_config_def.h: "so that the OS prioritizes CPU for other processes over
# worker"; GCS, raylet and the dashboard run at 0). In a Serve cluster the workers
# are the request path: the ingress replicas, the proxies and HAProxy (the
# HAProxyManager actor's child). The heavy work, a CPU engine, runs at idle
# priority whatever this is (QA_ENGINE_PRIORITY: SCHED_IDLE, which ignores
# niceness). At 15 the request path got about 3 % of a contested core against
# Ray's own daemons (scheduler weights 36 against 1024). Measured 2026-12-01 on
# an Intel Xeon with 2 cores (`make run`, alternating 15/0/15/0, cached
# GET /users/{id} with an API key at 32 connections, wrk, two 6 s runs each):
# 967/1074 and 872/842 req/s at 15, 1158/1285 and 1326/1538 at 0; /question at
# 32 concurrent 132-143 tok/s at 15, 132-160 at 0. The RayService sets the same on every Ray container. The pool
# replicas lower themselves back to 15 as they start (serve_app/pool_server.py
# REPLICA_NICENESS): a starting one must not take the cores from running engines.
WORKER_PRIORITY_ENV = {"RAY_worker_niceness": "0"}


# Every process of a LocalRay cluster carries this variable (set on `ray start`,
# inherited by the raylets, the workers and what they spawn: vLLM engines,
# HAProxy), so stopping one cluster never touches another Ray on the machine,
# e.g. another checkout's or another test run's.
CLUSTER_MARKER = "QA_LOCAL_RAY_CLUSTER"
# And this one names the node ("<cluster id>/head", "<cluster id>/worker-1"):
# each node's processes (raylet, GCS, dashboard, Serve controller, replicas,
# engines, HAProxy) inherit it from that node's `ray start`, so a test can kill
# one node's processes as a lost pod would lose them, and nothing else.
NODE_MARKER = "QA_LOCAL_RAY_NODE"

# Ray reads these on the head (ray/_private/node.py, Ray 2.60; RayConfig for the
# namespace); KubeRay v1.7.0 sets exactly these on the head container when
# gcsFaultToleranceOptions is set (ray-operator/controllers/ray/common/pod.go,
# configureRedisFT): RAY_REDIS_ADDRESS and RAY_external_storage_namespace
# (default: the RayCluster's UID).
GCS_REDIS_ENV = "RAY_REDIS_ADDRESS"
GCS_NAMESPACE_ENV = "RAY_external_storage_namespace"
# How long a worker node's raylet (and its worker processes) keep retrying a
# lost GCS before exiting: Ray's default is 60 s; KubeRay v1.7.0 sets 600 s on
# worker pods when GCS FT is on (utils.DefaultWorkerRayGcsReconnectTimeoutS).
GCS_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"


def run_command_cluster_id() -> str:
    """The id of the run command's cluster: one per checkout."""
    return "run-" + hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]


def cluster_processes(cluster_id: str) -> list[psutil.Process]:
    """The processes marked with ``cluster_id``, and their descendants."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.environ().get(CLUSTER_MARKER) == cluster_id:
                found[p.pid] = p
    for p in list(found.values()):
        with contextlib.suppress(psutil.Error):
            found.update((c.pid, c) for c in p.children(recursive=True))
    return list(found.values())


def is_engine_process(proc: psutil.Process) -> bool:
    """A vLLM engine process (engine core or worker): they rename themselves
    ``VLLM::EngineCore``, ``VLLM::Worker`` (setproctitle), so the title is the
    only mark they carry (their parent is a replica, or vLLM's own server)."""
    try:
        argv = proc.cmdline()
    except psutil.Error:  # gone, or not ours to read
        return False
    return bool(argv) and argv[0].startswith("VLLM::")


def node_processes(node_id: str) -> list[psutil.Process]:
    """The processes of one node (``NODE_MARKER`` value), and their descendants."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.environ().get(NODE_MARKER) == node_id:
                found[p.pid] = p
    for p in list(found.values()):
        with contextlib.suppress(psutil.Error):
            found.update((c.pid, c) for c in p.children(recursive=True))
    return list(found.values())


@dataclass
class RayNode:
    """One node process group of a LocalRay cluster."""

    name: str  # "head", "worker-1", ...
    marker: str  # NODE_MARKER value of its processes
    metrics_port: int
    # This node's Serve HTTP entry (its HAProxy or proxy; Serve's
    # proxy_location EveryNode). On EKS the serve Service selects worker pods.
    http_port: int
    # Its dashboard agent: KubeRay's probes ask it (/api/healthz,
    # /api/local_raylet_healthz).
    agent_port: int = 0
    env: dict[str, str] = field(repr=False, default_factory=dict)
    args: list[str] = field(repr=False, default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def stop_cluster(cluster_id: str, grace_s: float = 10) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``, every process of this cluster
    only: `ray stop` would stop every Ray on the machine. vLLM's engine
    processes are not Ray workers (each holds GBs of KV cache) and Serve's
    HAProxy outlives its node: both are in the tree and carry the marker.
    Returns how many processes were signalled."""
    procs = cluster_processes(cluster_id)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


# `ray start --head` refuses a port when the machine's last started cluster
# (/tmp/ray/ray_current_cluster) has that address and any local raylet still
# points at it (ray/scripts/scripts.py, "Fail early when starting a new cluster
# when one is already running", Ray 2.60). Here those raylets are this
# cluster's surviving workers, waiting for exactly this new head; on KubeRay
# the new head runs in a new pod where no raylet runs. The guard's process scan
# (services.find_gcs_addresses, used otherwise only to guess an address when
# none is given) is emptied for this one `ray start`; nothing else changes.
_RAY_CLI_WITHOUT_RUNNING_GUARD = (
    "import sys; import ray._private.services as s; s.find_gcs_addresses = lambda: frozenset(); "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)


class LocalRay:
    def __init__(
        self,
        *,
        head_cpus: int = 8,
        gcs_port: int | None = None,
        dashboard_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        extra_env: dict[str, str] | None = None,
        throughput_mode: bool = True,
        cluster_id: str | None = None,
        gcs_redis_address: str | None = None,
        gcs_storage_namespace: str | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        """``gcs_redis_address`` (``host:port``): GCS fault tolerance, the head's
        GCS keeps the cluster's state in that Redis under
        ``gcs_storage_namespace`` (default: the cluster id, as KubeRay's default
        is the RayCluster UID: one namespace per cluster). ``worker_env`` goes
        to worker nodes only (e.g. ``GCS_RECONNECT_ENV``, which KubeRay sets on
        worker pods only)."""
        self.cluster_id = cluster_id or f"local-{uuid.uuid4().hex[:12]}"
        self.gcs_port = gcs_port or free_port()
        self.dashboard_port = dashboard_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.head_cpus = head_cpus
        mode = {
            **THROUGHPUT_MODE_ENV,
            # HAProxy's own defaults are 0.0.0.0:9101 and :8404.
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        } if throughput_mode else {}
        self.env = child_env(
            {
                "HF_HUB_OFFLINE": "1",
                # Token auth on the dashboard/jobs API (they run code), as on
                # EKS; the token is generated into ~/.ray/auth_token.
                "RAY_AUTH_MODE": "token",
                CLUSTER_MARKER: self.cluster_id,
                **CONTROLLER_ENV,
                **WORKER_PRIORITY_ENV,
                **mode,
                **(extra_env or {}),
            }
        )
        self.gcs_redis_address = gcs_redis_address
        self.gcs_storage_namespace = (gcs_storage_namespace or self.cluster_id) if gcs_redis_address else None
        self.worker_env = dict(worker_env or {})
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.worker_metrics_ports: list[int] = []
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []
        # Extra `ray start --head` arguments (e.g. --autoscaling-config).
        self.head_args: list[str] = []

    def _ray(self, *args: str, env: dict[str, str] | None = None, command: list[str] | None = None) -> None:
        out = subprocess.run([*(command or [str(BIN / "ray")]), *args], env=env or self.env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"ray {args[0]} failed: {out.stdout[-2000:]}\n{out.stderr[-3000:]}")

    def _node_marker(self, name: str) -> str:
        return f"{self.cluster_id}/{name}"

    def start(self) -> None:
        # `ray start --head` does not create the token: on a machine without
        # ~/.ray/auth_token it refuses to start under RAY_AUTH_MODE=token.
        # Idempotent: an existing token is kept.
        self._ray("get-auth-token", "--generate")
        env = {**self.env, NODE_MARKER: self._node_marker("head")}
        if self.gcs_redis_address:
            env[GCS_REDIS_ENV] = self.gcs_redis_address
            env[GCS_NAMESPACE_ENV] = str(self.gcs_storage_namespace)
        agent_port = free_port()
        args = [
            "start", "--head",
            f"--port={self.gcs_port}",
            f"--dashboard-port={self.dashboard_port}",
            "--dashboard-host=127.0.0.1",
            f"--metrics-export-port={self.metrics_port}",
            # On 2 cores, Ray would offer 2 logical CPUs and the ingress plus
            # an engine's placement group would not all schedule.
            f"--num-cpus={self.head_cpus}",
            # Defaults 10001 and 52365: a second cluster on the machine would clash.
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={agent_port}",
            "--disable-usage-stats",
            *self.head_args,
        ]
        self.head = RayNode("head", self._node_marker("head"), self.metrics_port, self.http_port, agent_port, env,
                            args)
        self._ray(*args, env=env)
        # This cluster's session (not session_latest, which another cluster
        # started meanwhile would take): its logs/ holds every replica's log.
        self.session_dir = self._session_dir()

    def kill_node(self, node: RayNode) -> list[int]:
        """SIGKILLs every process of one node (a lost pod); returns their pids."""
        procs = node_processes(node.marker)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
        return [p.pid for p in procs]

    def kill_head(self) -> list[int]:
        """The head's processes all at once: GCS, raylet, dashboard and its
        agents, the autoscaler monitor, the Serve controller and the head's
        proxy. The worker nodes are left running."""
        assert self.head is not None, "not started"
        return self.kill_node(self.head)

    def restart_head(self) -> float:
        """A new head on the same ports, against the same GCS Redis and
        namespace (what KubeRay does when the head pod is lost): the GCS
        reloads the cluster's state, the workers' raylets reconnect. Returns
        the seconds `ray start` took."""
        assert self.head is not None, "not started"
        if not self.gcs_redis_address:
            raise RuntimeError("restart_head needs gcs_redis_address: without GCS FT the cluster's state is gone")
        left = node_processes(self.head.marker)
        if left:
            raise RuntimeError(f"the head still has processes: {[p.pid for p in left]}")
        t0 = time.monotonic()
        self._ray(*self.head.args, env=self.head.env, command=[sys.executable, "-c", _RAY_CLI_WITHOUT_RUNNING_GUARD])
        return time.monotonic() - t0

    def _session_dir(self) -> Path:
        for p in cluster_processes(self.cluster_id):
            with contextlib.suppress(psutil.Error):
                for arg in p.cmdline():
                    if arg.startswith("--log_dir=") and "/session_" in arg:
                        return Path(arg.removeprefix("--log_dir=")).parent
        raise RuntimeError(f"no GCS process of cluster {self.cluster_id} found")

    def add_worker(self, num_cpus: int, memory_bytes: int | None = None) -> RayNode:
        """A worker node process, shaped like a KubeRay worker group."""
        # Each node's metrics agent exports only its own node's processes.
        port, agent_port = free_port(), free_port()
        name = f"worker-{len(self.workers) + 1}"
        args = ["start", f"--address={self.address}", f"--num-cpus={num_cpus}", f"--metrics-export-port={port}",
                f"--dashboard-agent-listen-port={agent_port}", "--disable-usage-stats"]
        if memory_bytes:
            args.append(f"--memory={memory_bytes}")
        # Each node runs its own Serve entry (proxy_location EveryNode): on one
        # machine a worker's would find the head's port taken (with HAProxy it
        # crash-loops: a new HAProxyManager actor every ~5 s, eating the CPU).
        # Serve binds a worker's proxy to RAY_SERVE_WORKER_PROXY_HTTP_PORT
        # (ray/serve/_private/proxy.py apply_per_node_port_overrides, Ray 2.60;
        # the head keeps http_options.port), so each node has its own entry.
        http_port = free_port()
        env = {**self.env, **self.worker_env, NODE_MARKER: self._node_marker(name),
               "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(http_port)}
        if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
            env.update({k: str(free_port()) for k in (
                "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")})
        node = RayNode(name, self._node_marker(name), port, http_port, agent_port, env, args)
        self._ray(*args, env=env)
        self.worker_metrics_ports.append(port)
        self.workers.append(node)
        return node

    def stop(self) -> int:
        return stop_cluster(self.cluster_id)

    def serve_config(self, args: dict[str, Any] | None = None, env_vars: dict[str, str] | None = None,
                     base: dict[str, Any] | None = None) -> dict[str, Any]:
        """serve_config.yaml (or ``base``) with this cluster's HTTP port, and optionally other args/env."""
        config = base if base is not None else yaml.safe_load(SERVE_CONFIG_PATH.read_text())
        config.setdefault("http_options", {})["port"] = self.http_port
        app = config["applications"][0]
        if args is not None:
            app["args"] = args
        if env_vars:
            app.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env_vars)
        return config

    def deploy(self, config: dict[str, Any], timeout_s: float = 600, progress: bool = False) -> float:
        """Deploys the config (what `serve deploy` does: PUT /api/serve/applications/
        on the dashboard, Ray 2.60.0 ray/dashboard/modules/serve/sdk.py); returns
        seconds until the app is RUNNING. Done here rather than by the `serve`
        CLI, whose own start (a Python process importing Ray) took several
        seconds of the cold start on 2 busy cores (issue 16)."""
        t0 = time.monotonic()
        self.submit(config)
        return self.wait_running(config["applications"][0]["name"], timeout_s, t0, progress)

    def submit(self, config: dict[str, Any]) -> None:
        """The deploy request alone (``deploy`` without waiting): the new
        config is accepted, its deployments start in the background."""
        r = httpx.put(f"{self.dashboard}/api/serve/applications/", json=config, headers=self.auth_headers(),
                      timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"serve deploy failed: HTTP {r.status_code}: {r.text[-4000:]}")

    def wait_running(self, name: str, timeout_s: float, t0: float | None = None, progress: bool = False) -> float:
        t0 = time.monotonic() if t0 is None else t0
        last = None
        while time.monotonic() - t0 < timeout_s:
            status = self.app_status(name).get("status")
            if progress and status != last:
                print(f"[serve_app] application {name}: {status} ({time.monotonic() - t0:.0f}s)", flush=True)
                last = status
            if status == "RUNNING":
                return time.monotonic() - t0
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"deploy failed: {json.dumps(self.app_status(name))[:3000]}")
            time.sleep(1)
        raise TimeoutError(f"not RUNNING after {timeout_s}s: {json.dumps(self.app_status(name))[:3000]}")

    def auth_headers(self) -> dict[str, str]:
        token = Path.home() / ".ray" / "auth_token"
        return {"Authorization": f"Bearer {token.read_text().strip()}"} if token.exists() else {}

    def app_status(self, name: str) -> dict[str, Any]:
        r = httpx.get(f"{self.dashboard}/api/serve/applications/", headers=self.auth_headers(), timeout=10)
        r.raise_for_status()
        return r.json().get("applications", {}).get(name, {})

    def deployments(self, name: str) -> dict[str, Any]:
        return self.app_status(name).get("deployments", {})

    def log_files(self, pattern: str = "logs/serve/*.log") -> list[Path]:
        return sorted(self.session_dir.glob(pattern))

    def metrics(self) -> str:
        """Prometheus text of every node of the cluster."""
        ports = [self.metrics_port, *self.worker_metrics_ports]
        return "\n".join(httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text for p in ports)
