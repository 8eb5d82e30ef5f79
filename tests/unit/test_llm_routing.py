"""Pool routing of the ingress's LLM backend, against fake Serve handles (no Ray)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from ray.serve.exceptions import BackPressureError

from serve_app.errors import DeadlineExceeded, DependencyUnavailable, InvalidInput, NotFound, Overloaded
from serve_app.llm_client import Pool, ServeLLMBackend

MODEL = "m"


class FakeResponse:
    """Stands in for a streaming DeploymentResponseGenerator."""

    def __init__(self, items: list[Any], delay: float = 0.0, error: BaseException | None = None) -> None:
        self._items = list(items)
        self._delay = delay
        self._error = error
        self.cancelled = False

    def __aiter__(self) -> FakeResponse:
        return self

    async def __anext__(self) -> Any:
        if self._error is not None:
            raise self._error
        await asyncio.sleep(self._delay)
        if not self._items:
            raise StopAsyncIteration
        return self._items.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    def __init__(self, make_response) -> None:
        self.make_response = make_response
        self.calls = 0
        self.woken = 0
        self.called = asyncio.Event()
        self.chat_json = self
        self.ready = _Wake(self)

    def options(self, **_: Any) -> FakeHandle:
        return self

    def remote(self, _request: Any) -> FakeResponse:
        self.calls += 1
        self.called.set()
        self.last = self.make_response()
        return self.last


class _Wake:
    def __init__(self, handle: FakeHandle) -> None:
        self.handle = handle

    async def remote(self) -> None:
        self.handle.woken += 1
        await asyncio.sleep(3600)  # queued until a replica exists


def FakeCompletion(text: str) -> list[dict[str, Any]]:  # what PoolServer.chat_json yields
    return [{"completion": {"choices": [{"message": {"content": text}}], "usage": {"completion_tokens": 1}}}]


def ErrorResponse(code: int, message: str) -> list[dict[str, Any]]:  # PoolServer's error item
    return [{"error": {"code": code, "message": message}}]


def ok(text: str, delay: float = 0.0):
    return lambda: FakeResponse([FakeCompletion(text)], delay=delay)


def full():
    return lambda: FakeResponse([], error=BackPressureError(num_queued_requests=1, max_queued_requests=1))


def backend(*pools: tuple[str, FakeHandle, int], scale_from_zero: bool = True) -> ServeLLMBackend:
    counts = {f"{name}-dep": running for name, _, running in pools}
    b = ServeLLMBackend(
        {MODEL: [Pool(name=n, deployment_name=f"{n}-dep", handle=h, can_scale_from_zero=scale_from_zero)
                 for n, h, _ in pools]},
        app_name="app", wake_idle_pools=True, refresh_s=60, running_counts=lambda _: counts,
    )
    return b


REQ = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@asynccontextmanager
async def running(b: ServeLLMBackend) -> AsyncIterator[ServeLLMBackend]:
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


async def test_prefers_the_first_pool() -> None:
    gpu, cpu = FakeHandle(ok("from gpu")), FakeHandle(ok("from cpu"))
    b = backend(("gpu", gpu, 1), ("cpu", cpu, 1))
    async with running(b):
        result = await b.chat(MODEL, REQ, deadline_s=5)
    assert result.pool == "gpu" and result.body["choices"][0]["message"]["content"] == "from gpu"
    assert cpu.calls == 0


async def test_full_pool_spills_to_the_next() -> None:
    gpu, cpu = FakeHandle(full()), FakeHandle(ok("from cpu"))
    b = backend(("gpu", gpu, 1), ("cpu", cpu, 1))
    async with running(b):
        result = await b.chat(MODEL, REQ, deadline_s=5)
    assert result.pool == "cpu" and gpu.calls == 1
    assert b.status()["pools"][MODEL]["gpu"]["spilled"] == 1


async def test_absent_pool_is_skipped_and_woken() -> None:
    gpu, cpu = FakeHandle(ok("gpu")), FakeHandle(ok("cpu"))
    b = backend(("gpu", gpu, 0), ("cpu", cpu, 1))
    async with running(b):
        result = await b.chat(MODEL, REQ, deadline_s=5)
        await asyncio.sleep(0)
        assert gpu.woken == 1
        await b.chat(MODEL, REQ, deadline_s=5)
        await asyncio.sleep(0)
        assert gpu.woken == 1  # one outstanding wake-up call at a time
    assert result.pool == "cpu" and gpu.calls == 0


async def test_no_running_replica_is_503() -> None:
    b = backend(("cpu", FakeHandle(ok("x")), 0))
    async with running(b):
        with pytest.raises(DependencyUnavailable) as e:
            await b.chat(MODEL, REQ, deadline_s=5)
    assert e.value.status_code == 503 and e.value.retry_after_s


async def test_all_pools_full_is_overloaded() -> None:
    b = backend(("gpu", FakeHandle(full()), 1), ("cpu", FakeHandle(full()), 1))
    async with running(b):
        with pytest.raises(Overloaded) as e:
            await b.chat(MODEL, REQ, deadline_s=5)
    assert e.value.status_code == 503 and e.value.retry_after_s


async def test_deadline_cancels_the_generation() -> None:
    slow = FakeHandle(lambda: FakeResponse([FakeCompletion("a"), FakeCompletion("b")], delay=0.3))
    b = backend(("cpu", slow, 1))
    async with running(b):
        with pytest.raises(DeadlineExceeded):
            await b.chat(MODEL, REQ, deadline_s=0.45)
    assert slow.last.cancelled


async def test_stream_closed_early_cancels_the_generation() -> None:
    h = FakeHandle(lambda: FakeResponse([["data: {}\n\n"]] * 10, delay=0.01))
    b = backend(("cpu", h, 1))
    async with running(b):
        stream = await b.chat_stream(MODEL, REQ, deadline_s=5)
        async for _ in stream.chunks:
            break
        await stream.chunks.aclose()
    assert h.last.cancelled


async def test_engine_errors_map_to_our_errors() -> None:
    b = backend(("cpu", FakeHandle(lambda: FakeResponse([ErrorResponse(400, "too long")])), 1))
    async with running(b):
        with pytest.raises(InvalidInput):
            await b.chat(MODEL, REQ, deadline_s=5)
        with pytest.raises(NotFound):
            await b.chat("other-model", REQ, deadline_s=5)


async def test_invalid_request_is_rejected_before_any_pool() -> None:
    h = FakeHandle(ok("x"))
    b = backend(("cpu", h, 1))
    async with running(b):
        with pytest.raises(InvalidInput):
            await b.chat(MODEL, {"messages": "not a list"}, deadline_s=5)
    assert h.calls == 0


class _FakeServeClient:
    """What ``serve_running_counts`` reads: the controller's JSON-able details."""

    def __init__(self, states: list[str]) -> None:
        self.states = states

    def get_serve_details(self) -> dict[str, Any]:
        replicas = [{"replica_id": str(i), "state": s} for i, s in enumerate(self.states)]
        return {"applications": {"app": {"deployments": {"cpu-dep": {"replicas": replicas}}}}}


@pytest.fixture
def serve_client(monkeypatch: pytest.MonkeyPatch) -> _FakeServeClient:
    import ray.serve.context

    client = _FakeServeClient(["RUNNING"])
    monkeypatch.setattr(ray.serve.context, "_get_global_client", lambda **_: client)
    return client


def test_running_counts_are_the_replicas_that_serve(serve_client: _FakeServeClient) -> None:
    from ray.serve._private.common import ReplicaState

    from serve_app.llm_client import _SERVING_STATES, serve_running_counts

    # The names are Ray's own (the installed, pinned Ray), not ours.
    assert _SERVING_STATES <= {s.value for s in ReplicaState}
    serve_client.states = [s.value for s in ReplicaState]
    assert serve_running_counts("app") == {"cpu-dep": 2}  # RUNNING and RECOVERING
    serve_client.states = ["STARTING", "STOPPING", "UPDATING"]
    assert serve_running_counts("app") == {"cpu-dep": 0}
    assert serve_running_counts("another-app") == {}


async def test_a_restarted_controller_recovering_the_replica_does_not_fail_calls(
    serve_client: _FakeServeClient,
) -> None:
    """The head lost and brought back: the new controller reports the engine
    replica, alive all along, as RECOVERING for a moment. A call in flight
    on it and a new call both get their answer (they got 503s while only
    RUNNING counted)."""
    from serve_app.llm_client import serve_running_counts

    cpu = FakeHandle(ok("answer", delay=0.3))
    b = ServeLLMBackend(
        {MODEL: [Pool(name="cpu", deployment_name="cpu-dep", handle=cpu, can_scale_from_zero=False)]},
        app_name="app", wake_idle_pools=False, refresh_s=0.02, running_counts=serve_running_counts,
    )
    async with running(b):
        in_flight = asyncio.ensure_future(b.chat(MODEL, REQ, deadline_s=5))
        await cpu.called.wait()
        serve_client.states = ["RECOVERING"]
        await b._refresh()
        new = await b.chat(MODEL, REQ, deadline_s=5)
        assert (await in_flight).pool == "cpu" and new.pool == "cpu"
        serve_client.states = ["STOPPING"]  # gone for real: no replica counts
        await b._refresh()
        with pytest.raises(DependencyUnavailable):
            await b.chat(MODEL, REQ, deadline_s=5)
