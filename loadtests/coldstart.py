"""Cold start of the app on a fresh local cluster (issue 16), broken down:

    deploy request -> application built (deployments listed)        "import/build"
    built -> the pool replica's constructor runs (its first mark)   "replica process start"
    constructor -> Ray Serve LLM / vLLM engine started              "engine start" (imports, model load, warm-up)
    engine started -> Serve counts the replica RUNNING              "health period"
    RUNNING -> the first answered POST /question                    "first answer"

then the time for a second replica of the running pool to become RUNNING
(min_replicas raised by a redeploy: what an autoscaling step waits for).

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


def pool_deployment(cluster: LocalRay, app: str) -> str | None:
    for name in cluster.deployments(app):
        if "-pool:" in name:
            return name
    return None


def running_replicas(cluster: LocalRay, app: str, deployment: str) -> int:
    """RUNNING replicas of the deployment (the dashboard's DeploymentDetails.replicas)."""
    d = cluster.deployments(app).get(deployment) or {}
    return sum(1 for r in d.get("replicas") or [] if r.get("state") == "RUNNING")


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
    marks = {m["what"]: m["t"] - t0_wall for m in replica_marks(cluster)}
    init, engine_ready = marks.get("replica_init"), marks.get("engine_ready")
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
    return out


def second_replica(cluster: LocalRay, config: dict[str, Any], deployment: str,
                   timeout_s: float = 600) -> dict[str, Any]:
    """Raises the CPU pool's min_replicas to 2 (a config-only update: the
    running replica stays) and times the new replica until RUNNING."""
    cfg = copy.deepcopy(config)
    app = cfg["applications"][0]
    for m in app["args"]["llm"]["models"]:
        for p in m["pools"]:
            if p["name"] == "cpu":
                auto = p["deployment"].setdefault("autoscaling", {})
                auto["min_replicas"] = auto["max_replicas"] = 2
    before = {m["pid"] for m in replica_marks(cluster) if m["what"] == "replica_init"}
    t0_wall, t0 = time.time(), time.monotonic()
    cluster.submit(cfg)
    while time.monotonic() - t0 < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            if running_replicas(cluster, app["name"], deployment) >= 2:
                break
        time.sleep(0.25)
    else:
        raise TimeoutError(f"no second replica after {timeout_s}s")
    ready = time.monotonic() - t0
    new = [m for m in replica_marks(cluster) if m["pid"] not in before]
    marks = {m["what"]: m["t"] - t0_wall for m in new}
    return {"ready_s": ready, "replica_init_s": marks.get("replica_init"),
            "engine_ready_s": marks.get("engine_ready")}


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
        config = cluster.serve_config(args_from_serve_config(), env)
        res["cold_start"] = cold_start(cluster, config)
        print(f"first answer after {res['cold_start']['first_answer_s']:.1f} s: "
              f"{fmt_breakdown(res['cold_start']['breakdown'])}", flush=True)
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
