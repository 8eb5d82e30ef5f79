"""Cold start of the app on a fresh local cluster (issue 16), broken down:

    deploy request -> application built (deployments listed)        "import/build"
    built -> the pool replica's constructor runs (its first mark)   "replica process start"
    constructor -> Ray Serve LLM / vLLM engine started              "engine start" (imports, model load, warm-up)
    engine started -> Serve counts the replica RUNNING              "health period"
    RUNNING -> the first answered POST /question                    "first answer"

and "engine start" split by the replica's own log (``engine_phases``):

    constructor -> Serve LLM imported, the engine's build begins    "replica imports" (our engine_start mark)
    -> vLLM's config built, executor chosen                         "engine config in the replica"
    -> the engine core process logs its first line                  "engine core process (spawn + import)"
    -> the worker process starts loading the model                  "worker process (spawn + import)"
    -> the engine core reports profile, KV cache and warm-up done   "model load, KV cache, warm-up"
    -> the replica's engine_ready mark                              "frontend"

The replica, the engine core and the worker each import vLLM, one after the
other: Serve LLM runs the engine core in a process of its own (the ``mp``
executor, ray/llm/_internal/serve/engines/vllm/vllm_models.py, Ray 2.60.0), and
vLLM's CPU platform asks for spawned workers (vllm/platforms/cpu.py) whose
OpenMP thread count and binding it sets in the environment of the process it
is about to start (vllm/utils/ompmultiprocessing.py ``configure_omp_envs``,
vLLM 0.32.0). A forked worker or the ``uni`` executor started sooner and ran
slower (loadtests/results/report.md, "Cold start").

then the time for a second replica of the running pool to become RUNNING
(its replica count raised by a redeploy that leaves the running replica
alone: what an autoscaling step waits for; see ``second_replica``).

    PYTHONPATH=$PWD flock /tmp/qa-vllm.lock .venv/bin/python loadtests/coldstart.py [--no-second]

The replica marks are ``[pool-coldstart] <what> <epoch>`` lines that
serve_app/pool_server.py prints to stderr (logs/worker-*.err). Stops only the
cluster it started.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.serve_harness import LocalRay  # noqa: E402

# serve_app/pool_server.py's marks (spelled out: the script also times
# checkouts without that module, for the "before" figures).
COLDSTART_MARK = "[pool-coldstart]"

NOCACHE = {"Cache-Control": "no-cache"}


def replica_marks(cluster: LocalRay) -> list[dict[str, Any]]:
    """Every ``[pool-coldstart]`` mark in the cluster's worker logs, by time."""
    out = []
    for f in cluster.log_files("logs/worker-*.err"):
        with contextlib.suppress(OSError):
            for line in f.read_text(errors="replace").splitlines():
                i = line.find(COLDSTART_MARK)
                if i < 0:
                    continue
                parts = line[i + len(COLDSTART_MARK):].split()
                with contextlib.suppress(ValueError, IndexError):
                    out.append({"what": parts[0], "t": float(parts[1]), "pid": parts[2].removeprefix("pid=")})
    return sorted(out, key=lambda m: m["t"])


# What the pool replica's log says as the engine starts (Ray Serve LLM 2.60.0's
# VLLMEngine._start_async_llm_engine, vLLM 0.32.0's engine core and CPU model
# runner), in order: the mark each line sets.
ENGINE_LINES = (
    ("config_built", "Using executor class"),
    ("engine_core_up", "Initializing a V1 LLM engine"),
    ("worker_up", "Starting to load model"),
    ("engine_core_ready", "init engine (profile, create kv cache, warmup model) took"),
)
# Ray's log format carries the date and milliseconds; vLLM's only month-day and
# seconds (local time, as both are written).
_RAY_TS = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d),(\d{3})")
_VLLM_TS = re.compile(r"\b(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\b")


def _line_time(line: str, year: int) -> float | None:
    if m := _RAY_TS.search(line):
        y, mo, d, h, mi, sec, ms = map(int, m.groups())
        return time.mktime((y, mo, d, h, mi, sec, 0, 0, -1)) + ms / 1000
    if m := _VLLM_TS.search(line):
        mo, d, h, mi, sec = map(int, m.groups())
        return time.mktime((year, mo, d, h, mi, sec, 0, 0, -1))
    return None


def engine_marks(lines: list[str], year: int) -> dict[str, float]:
    """Epoch time of the first line of each ``ENGINE_LINES`` phase in one
    replica's log (its worker .out and .err lines)."""
    out: dict[str, float] = {}
    for line in lines:
        for what, text in ENGINE_LINES:
            if what not in out and text in line and (t := _line_time(line, year)) is not None:
                out[what] = t
    return out


def engine_phases(marks: dict[str, float]) -> dict[str, float | None]:
    """"engine start" (the replica's replica_init -> engine_ready marks) in
    phases, from ``marks``: the replica's own marks plus ``engine_marks``."""
    order = [("replica imports", "replica_init", "engine_start"),
             ("engine config in the replica", "engine_start", "config_built"),
             ("engine core process (spawn + import)", "config_built", "engine_core_up"),
             ("worker process (spawn + import)", "engine_core_up", "worker_up"),
             ("model load, KV cache, warm-up", "worker_up", "engine_core_ready"),
             ("frontend", "engine_core_ready", "engine_ready")]
    return {name: (marks[b] - marks[a] if a in marks and b in marks else None) for name, a, b in order}


def replica_engine_phases(cluster: LocalRay, pid: str, replica: dict[str, float]) -> dict[str, float | None]:
    """``engine_phases`` of the replica ``pid`` whose ``[pool-coldstart]``
    marks (epoch) are ``replica``."""
    lines: list[str] = []
    for f in cluster.log_files(f"logs/worker-*-{pid}.out") + cluster.log_files(f"logs/worker-*-{pid}.err"):
        with contextlib.suppress(OSError):
            lines += f.read_text(errors="replace").splitlines()
    year = time.localtime(replica.get("replica_init", time.time())).tm_year
    return engine_phases({**replica, **engine_marks(lines, year)})


def _by_pid(marks: list[dict[str, Any]], pid: str) -> dict[str, float]:
    return {m["what"]: m["t"] for m in marks if m["pid"] == pid}


def pool_deployment(cluster: LocalRay, app: str) -> str | None:
    for name in cluster.deployments(app):
        if "-pool:" in name:
            return name
    return None


def replicas(cluster: LocalRay, app: str, deployment: str) -> list[dict[str, Any]]:
    """The deployment's replicas, any state (the dashboard's DeploymentDetails.replicas)."""
    return (cluster.deployments(app).get(deployment) or {}).get("replicas") or []


def _running_ids(listed: list[dict[str, Any]]) -> set[str]:
    return {r["replica_id"] for r in listed if r.get("state") == "RUNNING"}


def running_replicas(cluster: LocalRay, app: str, deployment: str) -> int:
    """RUNNING replicas of the deployment."""
    return len(_running_ids(replicas(cluster, app, deployment)))


def cold_start(cluster: LocalRay, config: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    """Deploys ``config`` (LLM app first) on the started, empty cluster and
    times it; returns seconds from the deploy request."""
    app = config["applications"][0]["name"]
    t0_wall, t0 = time.time(), time.monotonic()
    cluster.submit(config)
    built = pool_running = first = None
    pool = None
    while time.monotonic() - t0 < timeout_s:
        now = time.monotonic() - t0
        with contextlib.suppress(httpx.HTTPError):
            if built is None and cluster.deployments(app):
                built = now
                pool = pool_deployment(cluster, app)
            if pool and pool_running is None and running_replicas(cluster, app, pool) > 0:
                pool_running = now
            if pool_running is not None:
                r = httpx.post(f"{cluster.url}/question", json={"question": "Hi", "max_tokens": 4},
                               headers=NOCACHE, timeout=60)
                if r.status_code == 200:
                    first = time.monotonic() - t0
                    break
        status = (cluster.app_status(app) or {}).get("status")
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"deploy failed: {json.dumps(cluster.app_status(app))[:3000]}")
        time.sleep(0.25)
    if first is None:
        raise TimeoutError(f"no answer after {timeout_s}s: {json.dumps(cluster.app_status(app))[:3000]}")
    all_marks = replica_marks(cluster)
    marks = {m["what"]: m["t"] - t0_wall for m in all_marks}
    init, engine_ready = marks.get("replica_init"), marks.get("engine_ready")
    pid = next((m["pid"] for m in all_marks if m["what"] == "replica_init"), None)
    out: dict[str, Any] = {
        "first_answer_s": first,
        "built_s": built,
        "pool_running_s": pool_running,
        "replica_init_s": init,
        "engine_ready_s": engine_ready,
        "pool_deployment": pool,
    }

    def gap(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    out["breakdown"] = {
        "import/build": built,
        "replica process start": gap(built, init),
        "engine start": gap(init, engine_ready),
        "health period": gap(engine_ready, pool_running),
        "first answer": gap(pool_running, first),
    }
    if pid is not None:
        out["engine_phases"] = replica_engine_phases(cluster, pid, _by_pid(all_marks, pid))
    return out


def with_pool_override(config: dict[str, Any], pool_name: str = "cpu", replicas: int | None = None
                       ) -> dict[str, Any]:
    """``config`` with a ``deployments:`` override of the pool's
    ``autoscaling_config``: the one the app builds from its ``args``
    (``serve_app.llm.deployment_options``), or with min = max = ``replicas``.

    Serve's code version of an app hashes its ``args`` and the autoscaling
    policies of its ``deployments:`` overrides (Ray 2.60.0,
    ray/serve/_private/deploy_utils.py ``get_app_code_version``): a new code
    version redeploys every deployment. So a replica count changed in
    ``args``, or an override added where there was none, restarts every
    running engine (seen 2026-12-01: the running replica stopped as
    "outdated" once the new one ran). Once the override is there, changing its
    bounds is a lightweight update: replicas are added or removed."""
    from serve_app.config import AppArgs
    from serve_app.llm import deployment_name, deployment_options

    cfg = copy.deepcopy(config)
    app = cfg["applications"][0]
    llm = AppArgs.model_validate(app["args"]).llm
    for model in llm.models if llm else []:
        for pool in model.pools:
            if pool.name != pool_name:
                continue
            name = deployment_name(model, pool)
            auto = dict(deployment_options(model, pool, name)["autoscaling_config"])
            if replicas is not None:
                auto.update(min_replicas=replicas, max_replicas=replicas)
            app["deployments"] = [d for d in app.get("deployments") or [] if d.get("name") != name]
            app["deployments"].append({"name": name, "autoscaling_config": auto})
    return cfg


def second_replica(cluster: LocalRay, config: dict[str, Any], deployment: str,
                   timeout_s: float = 600) -> dict[str, Any]:
    """Raises the CPU pool's replica count to 2 by a lightweight update (the
    running ``config`` carries ``with_pool_override``'s override; its bounds
    raised) and times the new replica until RUNNING: what an
    autoscaling step waits for. ``first_replica_kept`` says whether the running
    replica survived. Then puts ``config``'s bounds back and waits until the
    extra replica is gone."""
    cfg = with_pool_override(config, replicas=2)
    app = cfg["applications"][0]
    before = {m["pid"] for m in replica_marks(cluster) if m["what"] == "replica_init"}
    running_before = _running_ids(replicas(cluster, app["name"], deployment))
    t0_wall, t0 = time.time(), time.monotonic()
    cluster.submit(cfg)
    while time.monotonic() - t0 < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            if len(running_after := _running_ids(replicas(cluster, app["name"], deployment))) >= 2:
                break
        time.sleep(0.25)
    else:
        raise TimeoutError(f"no second replica after {timeout_s}s")
    ready = time.monotonic() - t0
    new = [m for m in replica_marks(cluster) if m["pid"] not in before]
    marks = {m["what"]: m["t"] - t0_wall for m in new}
    out: dict[str, Any] = {"ready_s": ready, "replica_init_s": marks.get("replica_init"),
                           "engine_ready_s": marks.get("engine_ready"),
                           "first_replica_kept": bool(running_before) and running_before <= running_after}
    if new:
        out["engine_phases"] = replica_engine_phases(cluster, new[0]["pid"], _by_pid(new, new[0]["pid"]))
    # Back to the running config's bounds, and wait until the extra replica
    # is gone (any state): a draining engine would share the cores with what
    # the caller measures next.
    cluster.submit(config)
    t1 = time.monotonic()
    while time.monotonic() - t1 < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            listed = replicas(cluster, app["name"], deployment)
            if len(listed) <= len(running_before) and _running_ids(listed):
                break
        time.sleep(0.5)
    else:
        raise TimeoutError(f"the extra replica still listed after {timeout_s}s")
    out["scale_back_s"] = time.monotonic() - t1
    return out


def fmt_breakdown(b: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {'n/a' if v is None else f'{v:.1f} s'}" for k, v in b.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-second", action="store_true", help="skip the second-replica measurement")
    ap.add_argument("--out", help="write the result as JSON here")
    ns = ap.parse_args()
    import asyncio

    from loadtests.bench import args_from_serve_config
    from tests.conftest import REDIS_URL, create_database, drop_database, pg_dsn

    cluster = LocalRay(extra_env={"PYTHONPATH": str(REPO)})
    res: dict[str, Any] = {}
    dbname = asyncio.run(create_database())
    try:
        cluster.start()
        env = {"DATABASE_URL": pg_dsn(dbname), "REDIS_URL": REDIS_URL, "DATABASE_SSLMODE": "disable"}
        # The pool's bounds also as an override, so that second_replica can
        # change them without restarting the running replica.
        config = with_pool_override(cluster.serve_config(args_from_serve_config(), env))
        res["cold_start"] = cold_start(cluster, config)
        print(f"first answer after {res['cold_start']['first_answer_s']:.1f} s: "
              f"{fmt_breakdown(res['cold_start']['breakdown'])}", flush=True)
        print(f"engine start: {fmt_breakdown(res['cold_start'].get('engine_phases') or {})}", flush=True)
        if not ns.no_second:
            res["second_replica"] = second_replica(cluster, config, res["cold_start"]["pool_deployment"])
            print(f"second replica RUNNING after {res['second_replica']['ready_s']:.1f} s", flush=True)
    finally:
        cluster.stop()
        asyncio.run(drop_database(dbname))
    if ns.out:
        Path(ns.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
