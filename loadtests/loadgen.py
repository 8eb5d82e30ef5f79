"""Closed-loop HTTP GET load for the users path, in a process of its own.

``wrk`` (C, one thread) when installed (``apt-get install wrk``): it needs a
fraction of the CPU that a Python client needs for the same rate, which
matters on a 2-core machine where client and server share the cores. Else an
aiohttp closed loop (``python loadtests/loadgen.py URL PATH... --concurrency
N --duration S``, JSON on stdout).

Both report their own CPU time, so the benchmark can tell whether the number
is the server's capacity or the generator's.

API keys (``keys``): the app's users routes need one, and its rate limiter
counts per key, so the generator carries several: the aiohttp loop gives
client connection ``i`` (its worker ``i``) key ``i mod len(keys)``; wrk, one
thread without per-connection state in its script, takes them round-robin
per request. They reach the child process in ``LOADGEN_API_KEYS`` (comma
separated), not on its command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loadtests.bench_report import percentile  # noqa: E402

WRK_LUA = r"""
local paths = {}
local keys = {}
local i = 0
init = function(args)
  for _, p in ipairs(args) do table.insert(paths, p) end
  for k in string.gmatch(os.getenv("LOADGEN_API_KEYS") or "", "[^,]+") do table.insert(keys, k) end
end
request = function()
  i = i + 1
  if #keys > 0 then
    return wrk.format("GET", paths[(i % #paths) + 1], {Authorization = "Bearer " .. keys[(i % #keys) + 1]})
  end
  return wrk.format("GET", paths[(i % #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"mean_us":%f,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency.mean, latency.max))
end
"""


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


KEYS_ENV = "LOADGEN_API_KEYS"


def _env_with_keys(keys: list[str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(KEYS_ENV, None)
    if keys:
        env[KEYS_ENV] = ",".join(keys)
    return env


def run_wrk(base_url: str, paths: list[str], concurrency: int, duration_s: float, threads: int = 1,
            keys: list[str] | None = None) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{max(concurrency, threads)}", f"-d{int(duration_s)}s", "--timeout", "10s",
         "-s", f.name, base_url, "--", *paths],
        capture_output=True, text=True, timeout=duration_s + 60, env=_env_with_keys(keys),
    )
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    Path(f.name).unlink(missing_ok=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    r = json.loads(line.removeprefix("WRKJSON "))
    errors = r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    dur = r["duration_us"] / 1e6
    return {
        "tool": f"wrk -t{threads} -c{concurrency}",
        "concurrency": concurrency,
        "count": r["requests"],
        "errors": errors,
        "error_rate": errors / r["requests"] if r["requests"] else 0.0,
        "rps": (r["requests"] - errors) / dur if dur else None,
        "p50_ms": r["p50_us"] / 1000,
        "p95_ms": r["p95_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "mean_ms": r["mean_us"] / 1000,
        "wall_s": wall,
        "loadgen_cpu_s": cpu,
        "loadgen_cores": threads,
    }


async def _aiohttp_loop(base_url: str, paths: list[str], concurrency: int, duration_s: float,
                        keys: list[str] | None = None) -> dict[str, Any]:
    import aiohttp

    lat: list[float] = []
    errors = 0
    statuses: dict[str, int] = {}
    stop_at = time.perf_counter() + duration_s
    counter = iter(range(10**12))
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(base_url, connector=conn) as session:

        async def worker(n: int) -> None:
            nonlocal errors
            headers = {"Authorization": f"Bearer {keys[n % len(keys)]}"} if keys else None
            while time.perf_counter() < stop_at:
                path = paths[next(counter) % len(paths)]
                t0 = time.perf_counter()
                try:
                    async with session.get(path, headers=headers) as r:
                        await r.read()
                        ok = r.status < 400
                        if not ok:
                            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    lat.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"lat": lat, "errors": errors, "wall": wall, "error_statuses": statuses}


def run_aiohttp(base_url: str, paths: list[str], concurrency: int, duration_s: float,
                keys: list[str] | None = None) -> dict[str, Any]:
    """The aiohttp loop in a child process (so its CPU is measurable)."""
    cpu0 = _children_cpu()
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), base_url, *paths, "--concurrency", str(concurrency),
         "--duration", str(duration_s)],
        capture_output=True, text=True, timeout=duration_s + 60, env=_env_with_keys(keys),
    )
    cpu = _children_cpu() - cpu0
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    r = json.loads(out.stdout)
    lat, errors, wall = r["lat"], r["errors"], r["wall"]
    n = len(lat)
    return {
        "tool": f"aiohttp -c{concurrency}",
        "concurrency": concurrency,
        "count": n + errors,
        "errors": errors,
        "error_rate": errors / (n + errors) if n + errors else 0.0,
        "error_statuses": r.get("error_statuses") or {},
        "rps": n / wall if wall else None,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "mean_ms": sum(lat) / n if n else None,
        "wall_s": wall,
        "loadgen_cpu_s": cpu,
        "loadgen_cores": 1,
    }


def run_load(
    base_url: str, paths: list[str], concurrency: int, duration_s: float, tool: str = "auto",
    keys: list[str] | None = None,
) -> dict[str, Any]:
    """``keys``: API keys sent as ``Authorization: Bearer`` (see the module docstring)."""
    # A base URL with a path (an app under a route prefix): wrk and aiohttp
    # want the origin, and the prefix on every path.
    parts = urlsplit(base_url)
    if parts.path.strip("/"):
        paths = [parts.path.rstrip("/") + p for p in paths]
        base_url = f"{parts.scheme}://{parts.netloc}"
    if tool == "wrk" or (tool == "auto" and have_wrk()):
        r = run_wrk(base_url, paths, concurrency, duration_s, keys=keys)
    else:
        r = run_aiohttp(base_url, paths, concurrency, duration_s, keys=keys)
    # The machine's load average (1, 5, 15 min) as the run ended: it is shared.
    r["loadavg"] = os.getloadavg()
    return r


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("base_url")
    p.add_argument("paths", nargs="+")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10)
    ns = p.parse_args()
    keys = [k for k in os.environ.get(KEYS_ENV, "").split(",") if k]
    res = asyncio.run(_aiohttp_loop(ns.base_url, ns.paths, ns.concurrency, ns.duration, keys))
    json.dump(res, sys.stdout)
