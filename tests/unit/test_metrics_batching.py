"""AppMetrics hands counters to Ray in sums, once per series and interval;
histograms as they come; nothing pending is lost when the app stops."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from serve_app.metrics import AppMetrics


class _Fake:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("inc", value, tags))

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("observe", value, tags))


def _metrics(interval_s: float) -> tuple[AppMetrics, dict[str, Any]]:
    m = AppMetrics(flush_interval_s=interval_s)
    fakes: dict[str, Any] = {k: _Fake() for k in ("requests", "latency", "cache")}
    m._ray = fakes
    return m, fakes


def test_counters_are_summed_per_series_until_the_flush() -> None:
    m, fakes = _metrics(interval_s=3600)
    for _ in range(5):
        m.request("/users/{user_id}", "GET", 200, 0.002)
    m.request("/users/{user_id}", "GET", 404, 0.003)
    m.cache_lookup("user", hit=True)
    # The tally (what tests and /readyz read) counts every event at once.
    assert m.count("requests", status="200") == 5 and m.count("requests", status="404") == 1
    # Histograms are observed one by one; counters wait for the flush.
    assert [c[0] for c in fakes["latency"].calls] == ["observe"] * 6
    assert fakes["requests"].calls == [] and fakes["cache"].calls == []
    m.flush()
    assert sorted(fakes["requests"].calls, key=lambda c: c[2]["status"]) == [
        ("inc", 5, {"method": "GET", "route": "/users/{user_id}", "status": "200"}),
        ("inc", 1, {"method": "GET", "route": "/users/{user_id}", "status": "404"}),
    ]
    assert fakes["cache"].calls == [("inc", 1, {"cache": "user", "result": "hit"})]
    m.flush()  # nothing pending: nothing sent twice
    assert len(fakes["requests"].calls) == 2


def test_a_record_past_the_interval_flushes() -> None:
    m, fakes = _metrics(interval_s=0)
    m.cache_lookup("user", hit=False)
    m.cache_lookup("user", hit=False)
    assert fakes["cache"].calls == [("inc", 1, {"cache": "user", "result": "miss"})] * 2


async def test_the_periodic_flusher_hands_over_what_is_pending_when_stopped() -> None:
    m, fakes = _metrics(interval_s=3600)
    task = asyncio.create_task(m.flush_periodically())
    await asyncio.sleep(0)  # the task is in its wait
    m.request("/healthz", "POST", 405, 0.001)
    assert fakes["requests"].calls == []
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert fakes["requests"].calls == [("inc", 1, {"method": "POST", "route": "/healthz", "status": "405"})]


async def test_without_ray_nothing_is_kept_pending() -> None:
    m = AppMetrics()
    assert not m._ray  # not in a Ray worker
    m.request("/", "GET", 200, 0.001)
    assert m._pending == {} and m.count("requests") == 1
    await m.flush_periodically()  # returns at once: nothing to flush
