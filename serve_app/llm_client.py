"""How the ingress talks to the model pools (Ray Serve LLM deployments).

Each model has pools (e.g. ``gpu`` then ``cpu``) tried in preference order. A
pool is skipped when it has no running replica (absent or still scaling up)
and handed over when it is full: its deployment's ``max_queued_requests``
makes Serve reject at once (``BackPressureError``) instead of queueing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from serve_app.errors import DeadlineExceeded, DependencyUnavailable, InvalidInput, NotFound, Overloaded
from serve_app.metrics import AppMetrics

log = logging.getLogger(__name__)


@dataclass
class ChatResult:
    body: dict[str, Any]  # an OpenAI chat.completion object
    pool: str


@dataclass
class ChatStream:
    # OpenAI chat.completion.chunk objects as JSON text, without SSE framing
    # (serve_app.http.sse frames them); an engine error mid-stream is raised
    # as an AppError.
    chunks: AsyncIterator[str]
    pool: str


class LLMBackend(Protocol):
    """What the ingress needs from the model side; a fake implements it in unit tests."""

    def model_ids(self) -> list[str]: ...

    def status(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def chat(self, model_id: str, request: dict[str, Any], deadline_s: float) -> ChatResult: ...

    async def chat_stream(self, model_id: str, request: dict[str, Any], deadline_s: float) -> ChatStream: ...


@dataclass
class Pool:
    name: str
    deployment_name: str
    handle: Any  # DeploymentHandle of the pool's PoolServer deployment (serve_app.pool_server)
    can_scale_from_zero: bool
    running: int = 0
    wake: Any = None  # the outstanding wake-up call, if any
    spilled: int = 0
    stream: Any = field(init=False, repr=False)
    # The controller's last RUNNING count, and replicas seen dying under a call
    # that it still counts (it notices at its next health check, up to
    # health_check_period_s later; Serve queues calls for them meanwhile).
    reported: int = 0
    dead_actors: set[str] = field(default_factory=set)
    death_seen_at: float = 0.0

    def __post_init__(self) -> None:
        # PoolServer.chat_json is an async generator: it must be called streaming.
        self.stream = self.handle.options(stream=True)


def _engine_request(model_id: str, request: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The chat request the pool's ``PoolServer.chat_json`` takes: plain JSON
    (the pool builds vLLM's request model; the ingress does not import vLLM)."""
    from serve_app.request_id import current_request_id

    # The HTTP routes validate every field; this only keeps a malformed call
    # from another caller off the pools (vLLM's model checks the rest there).
    messages = request.get("messages")
    if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
        raise InvalidInput("invalid chat completion request", details="messages must be a non-empty list of objects")
    body = {**request, "model": model_id, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    # vLLM needs unique ids; the prefix keeps the client's request id in the
    # engine's logs.
    rid = current_request_id() or uuid.uuid4().hex
    body["request_id"] = f"{rid}-{uuid.uuid4().hex[:8]}"
    return body


def _raise_engine_error(err: Any) -> None:
    """Map an ``{"error": {"code", "message"}}`` item from the pool to our hierarchy."""
    e = err.get("error", {}) if isinstance(err, dict) else {}
    code = int(e.get("code") or 500)
    message = str(e.get("message") or "model error")[:500]
    if code in (400, 422):
        raise InvalidInput(message)
    if code == 404:
        raise NotFound(message)
    raise DependencyUnavailable(f"model error: {message}")


class ServeLLMBackend:
    """Routes chat requests across pools of Ray Serve LLM deployments."""

    def __init__(
        self,
        pools_by_model: dict[str, list[Pool]],
        *,
        app_name: str | None,
        wake_idle_pools: bool,
        refresh_s: float,
        running_counts: Callable[[str | None], dict[str, int]] | None = None,
        metrics: AppMetrics | None = None,
    ) -> None:
        self._pools = pools_by_model
        self._metrics = metrics or AppMetrics()
        self._app_name = app_name
        self._running_counts = running_counts or serve_running_counts
        self._wake_idle_pools = wake_idle_pools
        self._refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None
        self._last_refresh = 0.0

    def model_ids(self) -> list[str]:
        return list(self._pools)

    # -- pool state -----------------------------------------------------------
    async def start(self) -> None:
        await self._refresh()
        self._task = asyncio.create_task(self._refresh_loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for pools in self._pools.values():
            for p in pools:
                if p.wake is not None:
                    p.wake.cancel()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self._refresh()
            except Exception:  # keep the loop alive; stale counts are still usable
                log.exception("refreshing LLM pool status failed")

    async def _refresh(self) -> None:
        counts = await asyncio.to_thread(self._running_counts, self._app_name)
        now = time.monotonic()
        for pools in self._pools.values():
            for p in pools:
                count = counts.get(p.deployment_name, 0)
                if p.dead_actors and (count < p.reported or now - p.death_seen_at > _DEATH_CONFIRM_S):
                    p.dead_actors.clear()  # the controller has caught up (or never will)
                p.reported = count
                p.running = max(0, count - len(p.dead_actors))
        self._last_refresh = now

    def status(self) -> dict[str, Any]:
        return {
            "pools": {
                model: {p.name: {"running_replicas": p.running, "spilled": p.spilled} for p in pools}
                for model, pools in self._pools.items()
            },
            "status_age_s": round(time.monotonic() - self._last_refresh, 1),
        }

    def _pools_for(self, model_id: str) -> list[Pool]:
        pools = self._pools.get(model_id)
        if pools is None:
            raise NotFound(f"unknown model {model_id!r}; see GET /v1/models")
        return pools

    def _wake(self, pool: Pool) -> None:
        """Queue one cheap call on an idle pool: Serve's autoscaler counts queued
        requests, so this scales it up from zero while others answer."""
        if not self._wake_idle_pools or not pool.can_scale_from_zero:
            return
        if pool.wake is not None and not pool.wake.done():
            return
        try:
            pool.wake = asyncio.ensure_future(self._await_wake(pool))
        except Exception:
            log.exception("waking pool %s failed", pool.name)

    async def _await_wake(self, pool: Pool) -> None:
        from ray.serve.exceptions import BackPressureError

        try:
            await pool.handle.ready.remote()
        except (BackPressureError, asyncio.CancelledError):
            pass
        except Exception as exc:
            log.info("wake call to pool %s ended: %s", pool.name, exc)

    # -- calls ----------------------------------------------------------------
    async def _first(self, model_id: str, engine_request: Any) -> tuple[Any, Any, Pool]:
        """Send to the first pool that accepts; return (response_gen, first_item, pool)."""
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        pools = self._pools_for(model_id)
        if not any(p.running for p in pools) and time.monotonic() - self._last_refresh > 0.2:
            # Replicas may have come up since the last periodic refresh (e.g.
            # just after a deploy): look again before answering 503.
            await self._refresh()
        for pool in pools:
            if pool.running == 0:
                self._wake(pool)
        ready = [p for p in pools if p.running > 0]
        if not ready:
            raise DependencyUnavailable("the model is starting up; retry shortly", retry_after_s=10)
        lost = False
        for pool in ready:
            gen = pool.stream.chat_json.remote(engine_request)
            try:
                first = await self._first_item(gen, pool)
            except _PoolLost:
                gen.cancel()
                lost = True
                log.warning("pool %s lost its last running replica; trying the next pool", pool.name)
                continue
            except BackPressureError:
                pool.spilled += 1
                self._metrics.spillover(model_id, pool.name)
                log.info("pool %s is full; trying the next pool", pool.name)
                continue
            except DeploymentUnavailableError as exc:
                log.warning("pool %s unavailable: %s", pool.name, exc)
                continue
            except StopAsyncIteration as exc:
                raise DependencyUnavailable("the model returned nothing") from exc
            except BaseException as exc:
                # Deadline (a non-streamed answer arrives as one item, so the
                # whole generation happens inside this await) or any failure:
                # abort it on the engine rather than let it run to max_tokens.
                self._note_replica_death(pool, exc)
                gen.cancel()
                raise
            return gen, first, pool
        if lost:
            raise DependencyUnavailable("the model replica failed; retry shortly", retry_after_s=10)
        raise Overloaded("all model replicas are busy; retry shortly", retry_after_s=2)

    def _note_replica_death(self, pool: Pool, exc: BaseException) -> None:
        """Counts a replica that died under a call out of ``pool`` at once,
        so the calls queued for it (see ``_first_item``) and new ones get a
        503 now rather than after the controller's next health check."""
        from ray.exceptions import RayActorError

        if isinstance(exc, Exception):
            log.info("call to pool %s failed: %s", pool.name, type(exc).__name__)
        # A killed replica surfaces as ActorUnavailableError to the calls in
        # flight, then as ActorDiedError: both count.
        if not isinstance(exc, RayActorError) or pool.reported == 0:
            return
        actor = exc.actor_id or "unknown"
        if actor in pool.dead_actors:
            return
        pool.dead_actors.add(actor)
        pool.death_seen_at = time.monotonic()
        pool.running = max(0, pool.reported - len(pool.dead_actors))
        log.warning("a replica of pool %s died; %d running replica(s) left", pool.name, pool.running)

    async def _first_item(self, gen: Any, pool: Pool) -> Any:
        """The first item of ``gen``; raises ``_PoolLost`` if ``pool`` has no
        running replica left before it comes.

        Serve holds a call without bound while a deployment has no live
        replica: calls routed between a replica's death and the controller
        noticing it (its health check) would otherwise wait for the replacement
        engine, minutes on CPU, instead of failing over or getting a 503.
        """
        first = asyncio.ensure_future(gen.__anext__())
        try:
            while True:
                done, _ = await asyncio.wait({first}, timeout=self._refresh_s)
                if done:
                    return first.result()
                if pool.running == 0:
                    raise _PoolLost(pool.name)
        finally:
            if not first.done():
                first.cancel()

    async def chat(self, model_id: str, request: dict[str, Any], deadline_s: float) -> ChatResult:
        from ray.exceptions import RayError

        engine_request = _engine_request(model_id, request, stream=False)
        gen = None
        try:
            async with asyncio.timeout(deadline_s):
                gen, first, pool = await self._first(model_id, engine_request)
                item = first[0] if isinstance(first, list) else first
                if _is_error(item):
                    _raise_engine_error(item)
                # Drain so the replica's generator finishes cleanly.
                async for _ in gen:
                    pass
        except TimeoutError as exc:
            if gen is not None:
                gen.cancel()
            raise DeadlineExceeded(f"no answer within {deadline_s:g}s; the generation was cancelled") from exc
        except RayError as exc:
            self._metrics.dependency_error("llm")
            raise DependencyUnavailable("model replica failed; retry shortly") from exc
        if not isinstance(item, dict) or "completion" not in item:
            raise DependencyUnavailable("the model returned no completion")
        return ChatResult(body=item["completion"], pool=pool.name)

    async def chat_stream(self, model_id: str, request: dict[str, Any], deadline_s: float) -> ChatStream:
        from ray.exceptions import RayError

        engine_request = _engine_request(model_id, request, stream=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        try:
            async with asyncio.timeout(deadline_s):
                gen, first, pool = await self._first(model_id, engine_request)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"no answer within {deadline_s:g}s") from exc
        except RayError as exc:
            self._metrics.dependency_error("llm")
            raise DependencyUnavailable("model replica failed; retry shortly") from exc
        items = first if isinstance(first, list) else [first]
        if items and _is_error(items[0]):
            gen.cancel()
            _raise_engine_error(items[0])

        async def chunks() -> AsyncIterator[str]:
            finished = False
            try:
                for it in items:
                    for payload in _payloads(it):
                        yield payload
                async with asyncio.timeout_at(deadline):
                    async for batch in gen:
                        for it in batch if isinstance(batch, list) else [batch]:
                            for payload in _payloads(it):
                                yield payload
                finished = True
            except TimeoutError as exc:
                raise DeadlineExceeded(f"no answer within {deadline_s:g}s; the generation was cancelled") from exc
            finally:
                # Client gone, deadline hit or any error: abort the generation
                # on the engine instead of letting it run to max_tokens.
                if not finished:
                    gen.cancel()

        return ChatStream(chunks=chunks(), pool=pool.name)


class _PoolLost(Exception):
    pass


# A replica death the controller's count does not reflect after this long is
# forgotten: past one health check period (10 s by default) the replica was
# only unreachable for a moment, and the pool must not stay counted out.
_DEATH_CONFIRM_S = 15.0


# Replica states that serve calls. A controller that restarts (the head lost
# and brought back, GCS on Redis) re-adopts the replica actors still alive as
# RECOVERING and holds back its routing broadcast while any is RECOVERING, so
# the handles keep routing to them (Ray 2.60.0, ray/serve/_private/
# deployment_state.py ``recover_current_state_from_replica_actor_names`` and
# ``broadcast_running_replicas_if_changed``). Counting only RUNNING read that
# second as "no replica": calls in flight on a healthy engine got 503s, some
# after 10 s (CI, test_head_killed_under_load).
_SERVING_STATES = frozenset({"RUNNING", "RECOVERING"})


def serve_running_counts(app_name: str | None) -> dict[str, int]:
    """Serving replicas (RUNNING, or alive and being re-adopted by a restarted
    controller) per deployment of the app, from the Serve controller (the
    handle does not expose it). Called once per refresh interval.

    Reads the controller's JSON-able details (what ``serve.status()`` fetches)
    without rebuilding them as pydantic models: that rebuild cloudpickles each
    deployment's request router class (Ray 2.60.0, ray/serve/api.py ``status``
    -> ``ServeInstanceDetails(**...)`` -> ray/serve/config.py
    ``RequestRouterConfig.__init__``) and was most of an idle ingress's CPU,
    taken every second from the engine sharing the node (py-spy, 2026-11-30)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None or not app_name:
        return {}
    app = (client.get_serve_details().get("applications") or {}).get(app_name)
    if app is None:
        return {}
    return {name: sum(1 for r in d.get("replicas") or [] if r.get("state") in _SERVING_STATES)
            for name, d in (app.get("deployments") or {}).items()}


def _is_error(item: Any) -> bool:
    return isinstance(item, dict) and "error" in item


def _payloads(item: Any) -> list[str]:
    """The JSON chunks in one streamed item: SSE text ("data: {...}\n\n",
    possibly several events) or an error."""
    if isinstance(item, str):
        out = []
        for event in item.split("\n\n"):
            data = event.strip().removeprefix("data:").strip()
            if data and data != "[DONE]":
                out.append(data)
        return out
    if _is_error(item):
        _raise_engine_error(item)
    raise DependencyUnavailable("the model returned an unexpected stream item")
