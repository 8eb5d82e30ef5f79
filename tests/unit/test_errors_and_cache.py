"""The error envelope through the service's own middlewares, and single flight
(no network)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from serve_app.cache import Cache
from serve_app.config import AppArgs
from serve_app.errors import Conflict, DeadlineExceeded, DependencyUnavailable
from serve_app.http import middleware as mw
from serve_app.http import policy
from serve_app.http.errors import install_handlers
from serve_app.http.factory import middleware
from serve_app.metrics import AppMetrics
from serve_app.singleflight import MISS, SingleFlight


def _app() -> FastAPI:
    app = FastAPI(middleware=middleware(AppMetrics()))
    install_handlers(app)
    router = APIRouter(route_class=policy.Protection("public").route_class())

    @router.get("/conflict")
    async def conflict() -> None:
        raise Conflict("taken")

    @router.get("/down")
    async def down() -> None:
        raise DependencyUnavailable("db down", retry_after_s=3)

    @router.get("/slow")
    async def slow() -> None:
        raise DeadlineExceeded()

    @router.get("/bug")
    async def bug() -> None:
        raise RuntimeError("secret internals")

    @router.get("/cancelled-elsewhere")
    async def cancelled_elsewhere() -> None:
        # What awaiting someone else's cancelled work raises.
        raise asyncio.CancelledError()

    @router.get("/items/{n}")
    async def items(n: int) -> dict:
        return {"n": n}

    app.include_router(router)
    policy.apply(app, AppArgs())
    return app


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/conflict", 409, "conflict"),
        ("/down", 503, "unavailable"),
        ("/slow", 504, "deadline_exceeded"),
        ("/bug", 500, "internal_error"),
        ("/cancelled-elsewhere", 500, "internal_error"),
        ("/items/x", 422, "invalid_input"),
        ("/nowhere", 404, "not_found"),
    ],
)
async def test_every_error_uses_the_envelope(path: str, status: int, code: str) -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get(path, headers={"X-Request-Id": "rid-1"})
    assert r.status_code == status
    body = r.json()
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == "rid-1"
    assert r.headers["x-request-id"] == "rid-1"
    assert "secret internals" not in r.text and "Traceback" not in r.text
    if status == 503:
        assert r.headers["retry-after"] == "3"


async def test_an_error_in_an_outer_middleware_is_an_envelope_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The access log sits outside the catch-all; what it raises reaches
    Starlette's outermost ServerErrorMiddleware, whose handler is ours: JSON
    with the request id, not Starlette's plain-text 500."""

    def broken() -> dict[str, str]:
        raise RuntimeError("access log broke")

    monkeypatch.setattr(mw, "track_errors", broken)
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/items/1", headers={"X-Request-Id": "rid-outer"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == {"code": "internal_error", "message": "internal error", "request_id": "rid-outer"}


async def test_a_request_that_is_itself_cancelled_stays_cancelled() -> None:
    """Serve cancels the handler when its client leaves: that cancellation
    must propagate (not be turned into a response)."""
    app = _app()
    started = asyncio.Event()

    async def hang(scope, receive, send):  # the route never answers
        started.set()
        await asyncio.Event().wait()

    catch_all = mw.ErrorEnvelopeMiddleware(hang)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b"", "app": app}
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    task = asyncio.create_task(catch_all(scope, receive, send))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent == []


# -- single flight ------------------------------------------------------------------------
async def test_single_flight_without_redis() -> None:
    cache = Cache(None, "p")
    calls = 0

    async def load() -> dict:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"v": 1}

    results = await asyncio.gather(*(cache.get_or_load("k", load, ttl_s=60) for _ in range(100)))
    assert calls == 1 and all(r == {"v": 1} for r in results)


async def test_single_flight_propagates_errors_then_retries() -> None:
    cache = Cache(None, "p")
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise DependencyUnavailable()

    results = await asyncio.gather(*(cache.get_or_load("k", failing, ttl_s=60) for _ in range(10)),
                                   return_exceptions=True)
    assert calls == 1 and all(isinstance(r, DependencyUnavailable) for r in results)
    with pytest.raises(DependencyUnavailable):
        await cache.get_or_load("k", failing, ttl_s=60)
    assert calls == 2


async def test_a_cancelled_leader_does_not_cancel_its_followers() -> None:
    """Finding 7: the caller that started a load goes away (its client
    disconnected); everyone else waiting on the same load still gets it."""
    cache = Cache(None, "p")
    release = asyncio.Event()
    calls = 0

    async def load() -> dict:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"v": 1}

    leader = asyncio.create_task(cache.get_or_load("k", load, ttl_s=60))
    await asyncio.sleep(0)
    followers = [asyncio.create_task(cache.get_or_load("k", load, ttl_s=60)) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.gather(leader, return_exceptions=True)
    release.set()
    assert await asyncio.gather(*followers) == [{"v": 1}] * 3
    assert calls == 1 and leader.cancelled()


async def test_abandoned_work_is_cancelled_only_when_asked_and_a_new_caller_starts_afresh() -> None:
    started = 0
    cancelled = 0

    async def work() -> int:
        nonlocal started, cancelled
        started += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return 1

    flights: SingleFlight[int] = SingleFlight(cancel_abandoned=True)
    only = asyncio.create_task(flights.do("k", work))
    await asyncio.sleep(0.01)
    only.cancel()
    await asyncio.gather(only, return_exceptions=True)
    await asyncio.sleep(0.01)
    assert cancelled == 1 and len(flights) == 0

    async def quick() -> int:
        return 2

    assert await flights.do("k", quick) == 2


def test_answer_key_normalizes_text_but_not_parameters() -> None:
    cache = Cache(None, "p")
    a = cache.answer_key("m", "What is  Ray?", {"max_tokens": 8})
    assert a == cache.answer_key("m", "  what is ray? ", {"max_tokens": 8})
    assert a != cache.answer_key("m", "What is Ray?", {"max_tokens": 9})
    assert a != cache.answer_key("other", "What is Ray?", {"max_tokens": 8})


@pytest.mark.parametrize(
    ("params", "no_cache", "shareable"),
    [
        ({"max_tokens": 128, "temperature": 0.7}, False, True),  # the defaults
        ({"max_tokens": 128, "temperature": 0.7}, True, False),  # asked not to use the cache
        ({"max_tokens": 16, "temperature": 0}, False, True),  # greedy: one answer
        ({"max_tokens": 128, "temperature": 1.9}, False, False),  # a caller's own sample
        ({"max_tokens": 64, "temperature": 0.7}, False, False),
    ],
)
def test_who_may_share_an_answer(params: dict, no_cache: bool, shareable: bool) -> None:
    defaults = {"max_tokens": 128, "temperature": 0.7}
    assert Cache.answer_is_shareable(params, defaults, no_cache=no_cache) is shareable


async def test_a_prober_that_leaves_hands_over_to_the_others() -> None:
    """The caller reading the cache for everyone goes away mid-read: the
    others try again themselves rather than fail."""
    flights: SingleFlight[str] = SingleFlight()
    first_probe = asyncio.Event()
    loads = 0

    async def slow_probe() -> object:
        first_probe.set()
        await asyncio.sleep(3600)
        return MISS

    async def probe() -> object:
        return MISS

    async def load() -> str:
        nonlocal loads
        loads += 1
        return "loaded"

    leader = asyncio.create_task(flights.probe_then_load("k", slow_probe, load))
    await first_probe.wait()
    followers = [asyncio.create_task(flights.probe_then_load("k", probe, load)) for _ in range(3)]
    await asyncio.sleep(0.01)
    leader.cancel()
    results = await asyncio.gather(*followers)
    assert [value for value, _ in results] == ["loaded"] * 3 and loads == 1
    assert leader.cancelled()
