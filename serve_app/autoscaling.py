"""Scaling a model pool on its engines' queue, beyond Serve's default policy.

Serve's default policy (Ray 2.60 ``ray/serve/autoscaling_policy.py``,
``replica_queue_length_autoscaling_policy``) sizes a deployment to
``ongoing requests / target_ongoing_requests``, the ongoing count averaged over
``look_back_period_s`` (30 s). For a vLLM engine "ongoing" mixes requests it is
generating (up to ``max_num_seqs`` in one batch) with requests it holds
waiting; only the waiting ones mean the pool is short of capacity.

``EngineQueuePolicy`` reads what the engines report (``EngineStatsPoolServer``
below, through Serve's custom autoscaling metrics: ``record_autoscaling_stats``
on the replica, ``AutoscalingContext.raw_metrics`` in the policy, Ray 2.60
``ray/serve/config.py``) plus the requests Serve holds at the handles for want
of a replica slot (``total_queued_requests``):

* a backlog (engine waiting + handle queued) > 0 scales up at once to enough
  replicas for everything, by ``target_ongoing_requests`` per replica, at least
  one more than now (the newest sample, not the 30 s mean);
* with no backlog, one replica fewer when the running requests would fit in the
  others below ``scale_down_fill`` of their target (hysteresis: no flapping);
* nothing running, waiting or queued: zero (bounded below by min_replicas).

Serve applies ``upscale_delay_s``/``downscale_delay_s``, the min/max bounds and
the scale-from-zero fast path around it (``_apply_autoscaling_config``).

The policy itself uses only the standard library and the context it is given.
"""

from __future__ import annotations

import math
from typing import Any

# Light: nothing at pool_server's top level imports vLLM (the Serve controller
# imports this module for the policy).
from serve_app.pool_server import PoolServer

WAITING = "engine_waiting"
RUNNING = "engine_running"
POLICY_PATH = "serve_app.autoscaling:EngineQueuePolicy"


def _latest_sum(series_by_replica: dict[Any, Any] | None) -> float | None:
    """The sum over replicas of each one's newest sample, or None when none reported."""
    if not series_by_replica:
        return None
    total, seen = 0.0, False
    for series in series_by_replica.values():
        if series:
            newest = max(series, key=lambda p: p.timestamp)
            total += float(newest.value)
            seen = True
    return total if seen else None


class EngineQueuePolicy:
    """Serve AutoscalingPolicy class (``policy_function: serve_app.autoscaling:EngineQueuePolicy``)."""

    def __init__(self, scale_down_fill: float = 0.5) -> None:
        self.scale_down_fill = scale_down_fill

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        n = ctx.current_num_replicas
        if n == 0:
            # Serve's cold-start path scales up from zero on any request.
            return ctx.target_num_replicas, {}
        raw = ctx.raw_metrics or {}
        waiting = _latest_sum(raw.get(WAITING))
        running = _latest_sum(raw.get(RUNNING))
        if waiting is None or running is None:
            return ctx.target_num_replicas, {}  # new replicas have not reported yet: hold
        queued = float(ctx.total_queued_requests or 0)
        target = float(ctx.config.get_target_ongoing_requests())
        backlog = waiting + queued
        if backlog > 0:
            desired = max(n + 1, math.ceil((running + backlog) / target))
        elif running == 0:
            desired = 0
        elif running <= target * (n - 1) * self.scale_down_fill:
            desired = n - 1
        else:
            desired = n
        return desired, {"engine_waiting": waiting, "engine_running": running, "handle_queued": queued}


def pool_server_cls(policy: dict[str, Any] | None) -> type:
    """The deployment class a pool needs for its policy: ours reads the
    engines' queue, which ``EngineStatsPoolServer`` reports."""
    if policy is not None and str(policy.get("policy_function", "")).startswith("serve_app.autoscaling:"):
        return EngineStatsPoolServer
    return PoolServer


class EngineStatsPoolServer(PoolServer):
    """A pool replica that reports its vLLM engine's queue to Serve's autoscaler
    (``record_autoscaling_stats``, Serve's custom autoscaling metrics)."""

    async def record_autoscaling_stats(self) -> dict[str, float]:
        tap = self.__dict__.get("_qa_engine_tap")
        if tap is None:
            tap = self._qa_engine_tap = _EngineTap(self._server)
        return tap.snapshot()


class _EngineTap:
    """The last scheduler stats vLLM's engine core sent to this replica's AsyncLLM.

    vLLM 0.32 (``vllm/v1/engine/async_llm.py``) hands every step's
    ``SchedulerStats`` (``num_running_reqs``, ``num_waiting_reqs``) to its
    ``StatLoggerManager.record``; the tap keeps a copy on the way. The engine
    sends nothing while idle, so the front end's count of unfinished requests
    (always current) bounds both numbers.
    """

    def __init__(self, server: Any) -> None:
        self.client = getattr(getattr(server, "engine", None), "_engine_client", None)
        self.running = 0.0
        self.waiting = 0.0
        manager = getattr(self.client, "logger_manager", None)
        if manager is not None:
            record = manager.record

            def tapped(scheduler_stats: Any, *args: Any, **kwargs: Any) -> Any:
                if scheduler_stats is not None:
                    self.running = float(scheduler_stats.num_running_reqs)
                    self.waiting = float(scheduler_stats.num_waiting_reqs)
                return record(scheduler_stats, *args, **kwargs)

            manager.record = tapped

    def snapshot(self) -> dict[str, float]:
        processor = getattr(self.client, "output_processor", None)
        unfinished = float(processor.get_num_unfinished_requests()) if processor is not None else None
        running, waiting = self.running, self.waiting
        if unfinished is not None:
            running = min(running, unfinished)
            waiting = min(waiting, unfinished - running)
            if running + waiting == 0 and unfinished:
                running = unfinished  # stats not in yet: count them as running
        return {RUNNING: running, WAITING: waiting}
