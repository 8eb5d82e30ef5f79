"""PNG plots of loadtests/results/results.json (matplotlib, from the load-test venv).

    .venv-load/bin/python loadtests/plots.py loadtests/results/results.json loadtests/results
Prints the names of the files written, one a line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _levels(series: dict[str, Any] | None, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for c, s in sorted((series or {}).items(), key=lambda kv: int(kv[0])):
        if s and s.get(key) is not None:
            xs.append(int(c))
            ys.append(s[key])
    return xs, ys


def _save(fig: Any, out: Path, name: str, written: list[str]) -> None:
    fig.tight_layout()
    fig.savefig(out / name, dpi=80)
    plt.close(fig)
    written.append(name)


def main(results: Path, out: Path) -> list[str]:
    res = json.loads(results.read_text())
    written: list[str] = []
    serve, direct = res.get("llm_serve"), (res.get("direct") or {}).get("throughput")
    if serve or direct:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
        for label, s in (("Ray Serve /question", serve), ("vLLM direct", direct)):
            a.plot(*_levels(s, "tokens_per_s"), marker="o", label=label)
            b.plot(*_levels(s, "p50_ms"), marker="o", label=f"{label} p50")
            b.plot(*_levels(s, "p95_ms"), marker="x", linestyle="--", label=f"{label} p95")
        a.set(title="LLM output tokens/s", xlabel="concurrent questions", ylabel="tokens/s", xscale="log")
        b.set(title="LLM request latency", xlabel="concurrent questions", ylabel="ms", xscale="log")
        a.legend(fontsize=8)
        b.legend(fontsize=7)
        _save(fig, out, "llm.png", written)
    uv, sv = res.get("users_uvicorn"), res.get("users_serve")
    if uv or sv:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
        series = [("uvicorn (1 worker)", uv), ("Ray Serve (default proxy)", sv)]
        for name, mode in (res.get("proxy_modes") or {}).items():
            series.append((f"Ray Serve {name}", mode.get("users")))
        for label, s in series:
            a.plot(*_levels(s, "rps"), marker="o", label=label)
            b.plot(*_levels(s, "p50_ms"), marker="o", label=f"{label} p50")
            b.plot(*_levels(s, "p99_ms"), marker="x", linestyle="--", label=f"{label} p99")
        a.set(title="cached GET /users/{id}: requests/s", xlabel="concurrent clients", ylabel="req/s", xscale="log")
        b.set(title="cached GET /users/{id}: latency", xlabel="concurrent clients", ylabel="ms", xscale="log",
              yscale="log")
        a.legend(fontsize=7)
        b.legend(fontsize=6)
        _save(fig, out, "users.png", written)
    ts, td = res.get("ttft_serve"), (res.get("direct") or {}).get("ttft")
    if ts or td:
        fig, a = plt.subplots(figsize=(5, 3.4))
        for label, s in (("SSE /question/stream", ts), ("vLLM direct", td)):
            a.plot(*_levels(s, "ttft_p50_ms"), marker="o", label=f"{label} p50")
            a.plot(*_levels(s, "ttft_p95_ms"), marker="x", linestyle="--", label=f"{label} p95")
        a.set(title="time to first token", xlabel="concurrent streams", ylabel="ms")
        a.legend(fontsize=7)
        _save(fig, out, "ttft.png", written)
    return written


if __name__ == "__main__":
    for name in main(Path(sys.argv[1]), Path(sys.argv[2])):
        print(name)
