"""Application metrics through Ray's metrics API, beside Serve's and vLLM's own.

Exported by each Ray node's metrics agent (``ray_qa_*`` on the metrics export
port). Outside a Ray worker (plain uvicorn, in-process tests) only the local
tally is kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as _Tally
from typing import Any

LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]


# key -> (exported name, kind, description, tag keys, histogram buckets).
# Prometheus sees them as ray_<name>_total (counters) and ray_<name>_bucket/_sum/_count.
SPECS: dict[str, tuple[str, str, str, tuple[str, ...], list[float] | None]] = {
    "requests": ("qa_http_requests", "counter", "HTTP requests by route template, method and status.",
                 ("route", "method", "status"), None),
    "latency": ("qa_http_request_duration_seconds", "histogram", "HTTP request latency by route template.",
                ("route",), LATENCY_BUCKETS_S),
    "ttft": ("qa_llm_time_to_first_token_seconds", "histogram", "Time to the first streamed token.",
             ("model", "pool"), LATENCY_BUCKETS_S),
    "tokens": ("qa_llm_completion_tokens", "histogram", "Generated tokens per answered question.",
               ("model", "pool"), TOKEN_BUCKETS),
    "cache": ("qa_cache_lookups", "counter", "Cache lookups by cache and result (hit/miss).",
              ("cache", "result"), None),
    "spill": ("qa_llm_spillovers", "counter", "Questions a full pool handed to the next pool.",
              ("model", "from_pool"), None),
    "dependency_errors": ("qa_dependency_errors", "counter", "Failed calls to a dependency.", ("dependency",), None),
    "auth_failures": ("qa_auth_failures", "counter", "Requests refused for a missing, malformed or wrong API key.",
                      ("reason",), None),
    "rate_limited": ("qa_rate_limited", "counter", "Requests refused with 429 by the rate limiter.", ("group",), None),
    "limiter_local": ("qa_rate_limiter_local_decisions", "counter",
                      "Rate-limit decisions taken by the per-replica fallback bucket because Redis was unavailable.",
                      ("group",), None),
}


def exported_names() -> set[str]:
    """Every Prometheus series name the application's metrics produce."""
    names = set()
    for name, kind, *_ in SPECS.values():
        if kind == "counter":
            names.add(f"ray_{name}_total")
        else:
            names.update(f"ray_{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


class AppMetrics:
    """Counters are summed in process and handed to Ray once per series and
    ``flush_interval_s`` (``flush``, from the request path when the interval
    has passed, and from ``flush_periodically`` when traffic stops): a Ray
    counter call per request and series cost more of the ingress's CPU than
    the rest of the metrics together. Histograms are observed as they come."""

    def __init__(self, flush_interval_s: float = 1.0) -> None:
        # Every recorded event, by (metric, tags): lets tests and /readyz read
        # what this replica did without scraping.
        self.tally: _Tally[tuple[str, tuple[tuple[str, str], ...]]] = _Tally()
        self._ray = self._make_ray_metrics()
        self.flush_interval_s = flush_interval_s
        # Counter increments not yet handed to Ray, by (metric, tags).
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._last_flush = time.monotonic()

    @staticmethod
    def _make_ray_metrics() -> dict[str, Any]:
        try:
            import ray
            from ray.util import metrics as m
        except ImportError:
            return {}
        if not ray.is_initialized():
            return {}
        made: dict[str, Any] = {}
        for key, (name, kind, description, tags, buckets) in SPECS.items():
            if kind == "counter":
                made[key] = m.Counter(name, description, tag_keys=tags)
            else:
                made[key] = m.Histogram(name, description, boundaries=buckets, tag_keys=tags)
        return made

    def _record(self, name: str, kind: str, value: float, tags: dict[str, str]) -> None:
        key = (name, tuple(sorted(tags.items())))
        self.tally[key] += 1
        metric = self._ray.get(name)
        if metric is None:
            return
        if kind == "inc":
            self._pending[key] = self._pending.get(key, 0) + value
            if time.monotonic() - self._last_flush >= self.flush_interval_s:
                self.flush()
        else:
            metric.observe(value, tags=tags)

    def flush(self) -> None:
        """Hands the counters' pending increments to Ray."""
        self._last_flush = time.monotonic()
        pending, self._pending = self._pending, {}
        for (name, tags), value in pending.items():
            self._ray[name].inc(value, tags=dict(tags))

    async def flush_periodically(self) -> None:
        """Flushes every ``flush_interval_s`` (a task for the app's lifetime):
        what the last requests before a pause counted reaches Ray anyway."""
        if not self._ray:
            return
        try:
            while True:
                await asyncio.sleep(self.flush_interval_s)
                if self._pending:
                    self.flush()
        finally:
            self.flush()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._record("requests", "inc", 1, {"route": route, "method": method, "status": str(status)})
        self._record("latency", "observe", seconds, {"route": route})

    def first_token(self, model: str, pool: str, seconds: float) -> None:
        self._record("ttft", "observe", seconds, {"model": model, "pool": pool})

    def completion_tokens(self, model: str, pool: str, tokens: int) -> None:
        self._record("tokens", "observe", tokens, {"model": model, "pool": pool})

    def cache_lookup(self, cache: str, hit: bool) -> None:
        self._record("cache", "inc", 1, {"cache": cache, "result": "hit" if hit else "miss"})

    def spillover(self, model: str, from_pool: str) -> None:
        self._record("spill", "inc", 1, {"model": model, "from_pool": from_pool})

    def dependency_error(self, dependency: str) -> None:
        self._record("dependency_errors", "inc", 1, {"dependency": dependency})

    def auth_failure(self, reason: str) -> None:
        self._record("auth_failures", "inc", 1, {"reason": reason})

    def rate_limited(self, group: str) -> None:
        self._record("rate_limited", "inc", 1, {"group": group})

    def limiter_local(self, group: str) -> None:
        self._record("limiter_local", "inc", 1, {"group": group})

    def count(self, name: str, **tags: str) -> int:
        """Events recorded under ``name`` whose tags include ``tags``."""
        want = set(tags.items())
        return sum(n for (metric, t), n in self.tally.items() if metric == name and want <= set(t))
