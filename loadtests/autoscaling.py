"""The autoscaling scenario of issue 15, on a local cluster shaped like the prod RayService.

    flock /tmp/qa-vllm.lock .venv/bin/python loadtests/autoscaling.py              # Serve's default policy
    flock /tmp/qa-vllm.lock .venv/bin/python loadtests/autoscaling.py --policy queue
    .venv-load/bin/python loadtests/autoscaling.py --plot loadtests/results/autoscaling.json

idle -> a ramp of questions beyond what the CPU pool serves -> spill-over and
the GPU pool's wake-up -> the autoscaler adds a ``gpu`` worker -> the GPU pool
answers -> the CPU pool grows past its minimum -> load stops -> replicas scale
down -> the GPU worker goes away. Every phase is read from Ray's and Serve's own
state (the GCS's node list, the Serve controller's replicas and targets, through
the dashboard API) and waited for by polling with a bound.

Writes ``loadtests/results/autoscaling[-<policy>].json``: ``samples`` (every
~2 s: nodes per group, running/target replicas per pool, Serve's autoscaling
metrics per pool, questions in flight, tokens/s, p95, 503s), the phases and the
figures (first spilled question -> first GPU-pool answer, load stop -> GPU
replicas 0 -> GPU nodes 0, 503s during scale-up, dropped in flight).
Stops only its own processes (devtools/autoscaling_cluster.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

POLICIES = {"default": None, "queue": "serve_app.autoscaling:EngineQueuePolicy"}
# The policy `make test` runs and README names (see the comparison there).
SHIPPED_POLICY = "default"
NOCACHE = {"Cache-Control": "no-cache"}
# Prometheus names (Ray 2.60 Serve, vLLM 0.32 through Ray's metrics) -> sample keys.
ONGOING_METRICS = {
    "ray_serve_replica_processing_queries": "processing",
    "ray_serve_deployment_queued_queries": "queued_at_handles",
    "ray_vllm_num_requests_running": "engine_running",
    "ray_vllm_num_requests_waiting": "engine_waiting",
}


def say(msg: str) -> None:
    print(f"[autoscaling {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Plan:
    # 96 questions at once: the GPU pool takes 64 in flight + 8 queued
    # (max_ongoing_requests / max_queued_requests of serve_config.yaml), the
    # rest stays on the CPU pool (target 16 per replica) once both answer.
    concurrency: int = 96
    ramp_s: float = 20.0
    max_tokens: int = 24
    hold_s: float = 20.0  # at full size, to see that nothing flaps
    sample_s: float = 2.0
    # Bounds of the waits (seconds); generous: 2 cores start two engines under load.
    deploy_s: float = 600.0
    gpu_node_s: float = 120.0
    gpu_answer_s: float = 420.0
    cpu_grow_s: float = 420.0
    scale_down_s: float = 240.0
    node_gone_s: float = 180.0


# -- load -------------------------------------------------------------------------------------
@dataclass
class Load:
    """Closed-loop questions in a thread of their own; ``target`` workers active."""

    url: str
    plan: Plan
    # The client's timeout: past the run's question deadline (LocalRun.deadline_s),
    # so the service's own answer (a 504) arrives first.
    timeout_s: float
    target: int = 0
    stopped: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    t0: float = field(default_factory=time.monotonic)

    def start(self) -> None:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 200) -> None:
        self.stopped = True
        self.thread.join(timeout_s)

    async def _main(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.plan.concurrency + 8,
                              max_keepalive_connections=self.plan.concurrency + 8)
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, limits=limits) as client:
            await asyncio.gather(*(self._worker(client, i) for i in range(self.plan.concurrency)))

    async def _worker(self, client: Any, i: int) -> None:
        import httpx

        n = 0
        while not self.stopped:
            if i >= self.target:
                await asyncio.sleep(0.2)
                continue
            n += 1
            body = {"question": f"In one short sentence, what is a good name for a cat number {i}-{n}?",
                    "max_tokens": self.plan.max_tokens}
            rec: dict[str, Any] = {"t0": time.monotonic() - self.t0, "worker": i}
            self.in_flight += 1
            try:
                r = await client.post("/question", json=body, headers=NOCACHE)
                rec.update(status=r.status_code, pool=r.headers.get("x-served-by-pool"),
                           retry_after=r.headers.get("retry-after"))
                if r.status_code == 200:
                    rec["tokens"] = (r.json().get("usage") or {}).get("completion_tokens", 0)
                else:
                    rec["error"] = r.text[:200]
            except httpx.HTTPError as exc:
                rec.update(status=None, error=type(exc).__name__)
            finally:
                self.in_flight -= 1
            rec["t1"] = time.monotonic() - self.t0
            self.records.append(rec)
            if rec.get("status") == 503:
                # A client honours Retry-After (bounded, to keep the pressure on).
                with contextlib.suppress(TypeError, ValueError):
                    await asyncio.sleep(min(float(rec["retry_after"]), 2.0))


def window_stats(records: list[dict[str, Any]], t_from: float, t_to: float) -> dict[str, Any]:
    done = [r for r in records if t_from <= r["t1"] < t_to]
    ok = [r for r in done if r.get("status") == 200]
    lat = sorted(r["t1"] - r["t0"] for r in ok)
    span = max(t_to - t_from, 1e-6)
    return {
        "answered": len(ok),
        "answered_by_pool": {p: sum(1 for r in ok if r.get("pool") == p) for p in {r.get("pool") for r in ok}},
        "tokens_per_s": round(sum(r.get("tokens", 0) for r in ok) / span, 2),
        "p95_s": round(lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)], 2) if lat else None,
        "status_503": sum(1 for r in done if r.get("status") == 503),
        "errors": sum(1 for r in done if r.get("status") not in (200, 503)),
    }


# -- the scenario -----------------------------------------------------------------------------
class Scenario:
    def __init__(self, policy: str = "default", plan: Plan | None = None) -> None:
        from devtools.autoscaling_cluster import AutoscalingCluster, LocalRun

        self.policy = policy
        self.plan = plan or Plan()
        self.run = LocalRun(policy=POLICIES[policy])
        self.cluster = AutoscalingCluster(self.run)
        self.samples: list[dict[str, Any]] = []
        self.phases: dict[str, float] = {}
        self.failures: list[str] = []
        self.load: Load | None = None
        self._sampling = False
        self.t0 = time.monotonic()

    # state from Ray and Serve -----------------------------------------------------------------
    def pools(self) -> dict[str, str]:
        """pool name -> deployment name."""
        from serve_app.config import AppArgs
        from serve_app.llm import deployment_name

        args = AppArgs.model_validate(self.config["applications"][0]["args"])
        return {p.name: deployment_name(m, p) for m in args.llm.models for p in m.pools}

    def serve_state(self) -> dict[str, dict[str, Any]]:
        deps = self.cluster.ray.deployments("qa")
        out = {}
        for pool, dep in self.pool_deployments.items():
            d = deps.get(dep) or {}
            replicas = d.get("replicas") or []
            out[pool] = {
                "running": sum(1 for r in replicas if r.get("state") == "RUNNING"),
                "starting": sum(1 for r in replicas if r.get("state") in ("STARTING", "PENDING_MIGRATION")),
                "target": d.get("target_num_replicas"),
            }
        return out

    def ongoing(self) -> dict[str, dict[str, float]]:
        """Per pool, from every node's metrics (the targets Ray lists for Prometheus):
        requests its replicas process (``ray_serve_replica_processing_queries``),
        requests held at the handles (``ray_serve_deployment_queued_queries``) and
        the engines' running/waiting gauges when they carry the deployment."""
        import httpx

        discovery = json.loads((self.cluster.ray.session_dir / "prom_metrics_service_discovery.json").read_text())
        targets = {t for group in discovery for t in group.get("targets", [])}
        sums: dict[str, dict[str, float]] = {p: {} for p in self.pool_deployments}
        by_dep = {d: p for p, d in self.pool_deployments.items()}
        for target in targets:
            try:
                text = httpx.get(f"http://{target}/metrics", timeout=3).text
            except httpx.HTTPError:
                continue  # a node just removed
            for line in text.splitlines():
                name = line.split("{", 1)[0]
                key = ONGOING_METRICS.get(name)
                if key is None or 'deployment="' not in line:
                    continue
                dep = line.split('deployment="', 1)[1].split('"', 1)[0]
                pool = by_dep.get(dep)
                if pool is not None:
                    sums[pool][key] = sums[pool].get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return sums

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sample(self) -> dict[str, Any]:
        t = self.now()
        s: dict[str, Any] = {"t": round(t, 1)}
        try:
            s["nodes"] = self.cluster.nodes_per_group()
        except Exception as exc:  # a sample lost to a slow dashboard is a gap, not a failure
            s["nodes_error"] = str(exc)[:200]
        try:
            state = self.serve_state()
            s["replicas"] = {p: v["running"] for p, v in state.items()}
            s["starting"] = {p: v["starting"] for p, v in state.items()}
            s["target"] = {p: v["target"] for p, v in state.items()}
        except Exception as exc:
            s["replicas_error"] = str(exc)[:200]
        try:
            s["ongoing"] = self.ongoing()
        except Exception as exc:
            s["ongoing_error"] = str(exc)[:200]
        if self.load is not None:
            lt = t - (self.load.t0 - self.t0)
            s["in_flight"] = self.load.in_flight
            s["load_target"] = self.load.target
            s.update(window_stats(self.load.records, lt - 10, lt))  # rolling 10 s
        return s

    def _sampler(self) -> None:
        while self._sampling:
            t = time.monotonic()
            self.samples.append(self.sample())
            time.sleep(max(0.0, self.plan.sample_s - (time.monotonic() - t)))

    def last(self, key: str, pool: str) -> int:
        for s in reversed(self.samples):
            if pool in (s.get(key) or {}):
                return s[key][pool]
        return 0

    def wait(self, name: str, cond: Callable[[], bool], timeout_s: float) -> bool:
        """Poll ``cond`` (every sample) up to ``timeout_s``; record when it held."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                held = cond()
            except (IndexError, KeyError):  # no sample yet
                held = False
            if held:
                self.phases[name] = round(self.now(), 1)
                say(f"{name} at t={self.phases[name]}s")
                return True
            time.sleep(1)
        self.failures.append(f"{name}: not within {timeout_s:.0f}s")
        say(f"FAILED {name}: not within {timeout_s:.0f}s")
        return False

    # the run ----------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        from tests.conftest import REDIS_URL, create_database, drop_database, drop_prefix, pg_dsn

        p = self.plan
        dbname = asyncio.run(create_database())
        prefix = f"scale-{uuid.uuid4().hex[:10]}"
        cpu_min = None
        try:
            say(f"policy {self.policy}: starting the cluster")
            self.cluster.start()
            groups = self.cluster.groups
            self.config = self.cluster.ray.serve_config(
                base=self.run.serve_config(),
                env_vars={"DATABASE_URL": pg_dsn(dbname), "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": prefix,
                          "DATABASE_SSLMODE": "disable"})
            self.pool_deployments = self.pools()
            pools_cfg = {pl["name"]: pl for pl in self.config["applications"][0]["args"]["llm"]["models"][0]["pools"]}
            cpu_min = pools_cfg["cpu"]["deployment"]["autoscaling"]["min_replicas"]
            self.wait("cpu group at its minimum", lambda: self.cluster.nodes_per_group().get("cpu", 0)
                      >= groups["cpu"]["min_workers"], 120)
            took = self.cluster.ray.deploy(self.config, timeout_s=p.deploy_s)
            self.phases["deployed"] = round(self.now(), 1)
            say(f"deployed in {took:.0f}s")
            self._sampling = True
            threading.Thread(target=self._sampler, daemon=True).start()
            self.wait("idle", lambda: self.last("replicas", "gpu") == 0 and self.last("replicas", "cpu") == cpu_min
                      and (self.samples[-1].get("nodes") or {}).get("gpu") == 0, 60)

            # ramp
            self.load = Load(self.cluster.ray.url, p, timeout_s=self.run.deadline_s + 60)
            self.load.start()
            t_load = self.now()
            self.phases["load start"] = round(t_load, 1)
            say(f"ramp to {p.concurrency} questions in flight over {p.ramp_s:.0f}s")
            steps = 5
            for k in range(1, steps + 1):
                self.load.target = math.ceil(p.concurrency * k / steps)
                time.sleep(p.ramp_s / steps)  # the ramp's shape, not a synchronisation
            self.phases["ramp done"] = round(self.now(), 1)
            self.wait("gpu pool scaling up (Serve target >= 1)", lambda: (self.samples[-1].get("target") or {})
                      .get("gpu", 0) >= 1, 60)
            self.wait("gpu node added", lambda: (self.samples[-1].get("nodes") or {}).get("gpu", 0) >= 1,
                      p.gpu_node_s)
            self.wait("gpu pool answers", lambda: any(r.get("pool") == "gpu" for r in self.load.records),
                      p.gpu_answer_s)
            self.wait("cpu pool past its minimum", lambda: any((s.get("replicas") or {}).get("cpu", 0) > cpu_min
                                                               for s in self.samples), p.cpu_grow_s)
            hold_until = time.monotonic() + p.hold_s
            self.wait("held at full load", lambda: time.monotonic() >= hold_until, p.hold_s + 5)

            # load stops: every question in flight must still be answered
            t_stop = self.now()
            self.phases["load stop"] = round(t_stop, 1)
            self.load.target = 0
            in_flight_at_stop = self.load.in_flight
            self.wait("in-flight questions finished", lambda: self.load.in_flight == 0, self.run.deadline_s + 30)
            self.wait("gpu replicas at zero", lambda: self.last("replicas", "gpu") == 0
                      and self.last("starting", "gpu") == 0, p.scale_down_s)
            self.wait("cpu pool back at its minimum", lambda: self.last("replicas", "cpu") == cpu_min,
                      p.scale_down_s)
            self.wait("gpu nodes at zero", lambda: (self.samples[-1].get("nodes") or {}).get("gpu", 1) == 0,
                      p.node_gone_s)
        except Exception as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}"[:2000])
            say(f"FAILED: {exc}")
            in_flight_at_stop = None
            t_stop = None
        finally:
            self._sampling = False
            if self.load is not None:
                self.load.stop()
            say(f"stopping the cluster ({self.cluster.stop()} processes)")
            with contextlib.suppress(Exception):
                asyncio.run(drop_database(dbname))
            with contextlib.suppress(Exception):
                asyncio.run(drop_prefix(prefix))
        return self.result(t_stop, in_flight_at_stop)

    def result(self, t_stop: float | None, in_flight_at_stop: int | None) -> dict[str, Any]:
        recs = self.load.records if self.load else []
        off = (self.load.t0 - self.t0) if self.load else 0.0
        for r in recs:  # one clock for records, samples and phases
            r["t0"] = round(r["t0"] + off, 2)
            r["t1"] = round(r["t1"] + off, 2)
        ph = self.phases
        first_spill = next((r["t0"] for r in sorted(recs, key=lambda r: r["t0"])
                            if r.get("pool") != "gpu"), None)
        first_gpu = min((r["t1"] for r in recs if r.get("pool") == "gpu"), default=None)
        scale_up_end = ph.get("cpu pool past its minimum") or ph.get("gpu pool answers")
        during_up = [r for r in recs if scale_up_end is None or r["t1"] <= scale_up_end]
        # In flight when the load stopped (sent before, answered after) and not answered,
        # or any failure other than a fast 503 after it.
        dropped = [r for r in recs if t_stop is not None and r["t1"] >= t_stop and r.get("status") != 200
                   and (r["t0"] < t_stop or r.get("status") != 503)]
        errors = [r for r in recs if r.get("status") not in (200, 503)]
        slow_503 = [r for r in recs if r.get("status") == 503 and (r["t1"] - r["t0"] > 10 or not r.get("retry_after"))]
        flaps = {pool: self._flaps(pool, ph.get("load start"), t_stop) for pool in ("gpu", "cpu")}
        figures = {
            "first_spill_to_first_gpu_answer_s": round(first_gpu - first_spill, 1)
            if first_gpu is not None and first_spill is not None else None,
            "load_start_to_gpu_node_s": _delta(ph, "load start", "gpu node added"),
            "load_start_to_cpu_past_min_s": _delta(ph, "load start", "cpu pool past its minimum"),
            "load_start_to_full_size_s": self._full_size_at(),
            "load_stop_to_gpu_replicas_zero_s": _delta(ph, "load stop", "gpu replicas at zero"),
            "load_stop_to_gpu_nodes_zero_s": _delta(ph, "load stop", "gpu nodes at zero"),
            "load_stop_to_cpu_at_min_s": _delta(ph, "load stop", "cpu pool back at its minimum"),
            "status_503_during_scale_up": sum(1 for r in during_up if r.get("status") == 503),
            "status_503_total": sum(1 for r in recs if r.get("status") == 503),
            "slow_or_bare_503": len(slow_503),
            "other_errors": len(errors),
            "dropped_in_flight": len(dropped),
            "in_flight_at_stop": in_flight_at_stop,
            "questions": len(recs),
            "answered": sum(1 for r in recs if r.get("status") == 200),
            "answered_by_pool": {p: sum(1 for r in recs if r.get("pool") == p and r.get("status") == 200)
                                 for p in ("gpu", "cpu")},
            "replica_downscales_under_load": flaps,
        }
        result = {
            "policy": self.policy,
            "policy_function": POLICIES[self.policy] or "Serve default (replica_queue_length_autoscaling_policy)",
            "plan": vars(self.plan),
            "local_run": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.run).items()},
            "node_types": self.cluster.config["available_node_types"],
            "phases": self.phases,
            "figures": figures,
            "failures": self.failures,
            "samples": self.samples,
            "errors_sample": errors[:20],
            "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        }
        cpu_min = self.run.min_replicas.get("cpu", 1)
        figures["load_start_to_cpu_target_up_s"] = target_up_after(result, "cpu", cpu_min)
        return result

    def _flaps(self, pool: str, t_from: float | None, t_to: float | None) -> int:
        """Times the running replicas of ``pool`` went down while the load ran."""
        if t_from is None:
            return 0
        seq = [s["replicas"][pool] for s in self.samples
               if "replicas" in s and s["t"] >= t_from and (t_to is None or s["t"] <= t_to)]
        return sum(1 for a, b in itertools.pairwise(seq) if b < a)

    def _full_size_at(self) -> float | None:
        """Load start -> first sample where every pool ran its maximum (the target of the run)."""
        t_load = self.phases.get("load start")
        if t_load is None:
            return None
        caps = self.run.max_replicas
        for s in self.samples:
            reps = s.get("replicas") or {}
            if s["t"] >= t_load and all(reps.get(p, 0) >= n for p, n in caps.items()):
                return round(s["t"] - t_load, 1)
        return None


def target_up_after(result: dict[str, Any], pool: str, above: int) -> float | None:
    """Load start -> the first sample where Serve's target for ``pool`` exceeded ``above``
    (the autoscaling policy's decision, before any replica starts)."""
    t_load = result["phases"].get("load start")
    if t_load is None:
        return None
    return next((round(s["t"] - t_load, 1) for s in result["samples"]
                 if s["t"] >= t_load and (s.get("target") or {}).get(pool, 0) > above), None)


def _delta(phases: dict[str, float], a: str, b: str) -> float | None:
    return round(phases[b] - phases[a], 1) if a in phases and b in phases else None


def write(result: dict[str, Any], out: Path) -> list[Path]:
    """The JSON, and its PNG drawn by .venv-load's matplotlib (a child process)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    written = [out]
    load_py = REPO / ".venv-load" / "bin" / "python"
    if load_py.exists():
        r = subprocess.run([str(load_py), str(Path(__file__)), "--plot", str(out)], capture_output=True, text=True,
                           timeout=120)
        if r.returncode == 0:
            written.append(out.with_suffix(".png"))
        else:
            say(f"plot failed: {r.stderr[-1000:]}")
    return written


def plot(paths: list[Path], png: Path) -> None:
    """One column per run (side by side): nodes per group, replicas per pool, load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in paths]
    fig, axes = plt.subplots(3, len(runs), figsize=(6.5 * len(runs), 8), sharex="col", squeeze=False)
    for col, res in enumerate(runs):
        ss = [s for s in res["samples"] if "replicas" in s and "nodes" in s]
        t = [s["t"] for s in ss]
        a, b, c = axes[0][col], axes[1][col], axes[2][col]
        for g, color in (("cpu", "tab:blue"), ("gpu", "tab:orange")):
            a.step(t, [s["nodes"].get(g, 0) for s in ss], where="post", color=color, label=f"{g} group nodes")
            b.step(t, [s["replicas"].get(g, 0) for s in ss], where="post", color=color, label=f"{g} pool running")
            b.step(t, [(s.get("target") or {}).get(g) or 0 for s in ss], where="post", linestyle=":", color=color,
                   label=f"{g} pool target (Serve)")
        c.plot(t, [s.get("in_flight", 0) for s in ss], color="tab:green", label="questions in flight")
        c.plot(t, [s.get("tokens_per_s", 0) for s in ss], color="tab:purple", label="tokens/s (10 s)")
        for g, color in (("cpu", "tab:blue"), ("gpu", "tab:orange")):
            c.plot(t, [((s.get("ongoing") or {}).get(g) or {}).get("processing", 0) for s in ss], color=color,
                   linestyle=":", label=f"{g} pool: requests in its replicas")
        c.bar(t, [s.get("status_503", 0) for s in ss], width=1.5, color="red", label="503s (10 s)")
        for name, when in res.get("phases", {}).items():
            if name in ("load start", "gpu node added", "gpu pool answers", "load stop", "gpu nodes at zero"):
                for ax in (a, b, c):
                    ax.axvline(when, color="grey", linewidth=0.6)
                a.annotate(name, (when, a.get_ylim()[1] if a.lines else 1), fontsize=6, rotation=90, va="top")
        fig_title = f"policy: {res['policy']}"
        f = res.get("figures", {})
        if f.get("first_spill_to_first_gpu_answer_s") is not None:
            fig_title += f" - spill->GPU answer {f['first_spill_to_first_gpu_answer_s']}s"
        a.set_title(fig_title, fontsize=9)
        a.set_ylabel("worker nodes")
        b.set_ylabel("replicas")
        c.set_ylabel("load")
        c.set_xlabel("seconds since start")
        for ax in (a, b, c):
            ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", choices=sorted(POLICIES), default="default")
    ap.add_argument("--out", type=Path, help="JSON path (default loadtests/results/autoscaling-<policy>.json)")
    ap.add_argument("--plot", type=Path, nargs="+", help="draw the PNG of these JSON files (side by side) and exit")
    ap.add_argument("--png", type=Path)
    ap.add_argument("--combine", type=Path, nargs="+", metavar="RUN_JSON",
                    help="write loadtests/results/autoscaling.{json,png}: the shipped policy's run (--ship) with "
                         "every run's figures side by side")
    ap.add_argument("--ship", choices=sorted(POLICIES), default=SHIPPED_POLICY)
    ns = ap.parse_args(argv)
    if ns.combine:
        runs = {json.loads(p.read_text())["policy"]: (p, json.loads(p.read_text())) for p in ns.combine}
        for _, r in runs.values():  # runs written before the figure existed
            r["figures"].setdefault("load_start_to_cpu_target_up_s",
                                    target_up_after(r, "cpu", r["local_run"]["min_replicas"].get("cpu", 1)))
        shipped = dict(runs[ns.ship][1])
        shipped["comparison"] = {name: {"figures": r["figures"], "phases": r["phases"], "failures": r["failures"],
                                        "file": p.name} for name, (p, r) in runs.items()}
        shipped["shipped_policy"] = ns.ship
        out = RESULTS / "autoscaling.json"
        out.write_text(json.dumps(shipped, indent=1, default=str))
        subprocess.run([str(REPO / ".venv-load" / "bin" / "python"), str(Path(__file__)), "--plot",
                        *(str(p) for p, _ in runs.values()), "--png", str(out.with_suffix(".png"))], check=True,
                       timeout=120)
        say(f"wrote {out} and {out.with_suffix('.png')}")
        return 0
    if ns.plot:
        plot(ns.plot, ns.png or ns.plot[0].with_suffix(".png"))
        return 0
    result = Scenario(ns.policy).execute()
    out = ns.out or RESULTS / f"autoscaling-{ns.policy}.json"
    for path in write(result, out):
        say(f"wrote {path}")
    say(json.dumps(result["figures"], indent=1))
    if result["failures"]:
        say("failures: " + "; ".join(result["failures"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
