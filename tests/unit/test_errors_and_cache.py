"""The error envelope and the cache's single-flight logic (no network)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from serve_app.cache import Cache
from serve_app.errors import (
    Conflict,
    DeadlineExceeded,
    DependencyUnavailable,
    UnhandledErrorMiddleware,
    install_error_handlers,
)
from serve_app.request_id import RequestIdMiddleware


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)

    @app.get("/conflict")
    async def conflict() -> None:
        raise Conflict("taken")

    @app.get("/down")
    async def down() -> None:
        raise DependencyUnavailable("db down", retry_after_s=3)

    @app.get("/slow")
    async def slow() -> None:
        raise DeadlineExceeded()

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("secret internals")

    @app.get("/items/{n}")
    async def items(n: int) -> dict:
        return {"n": n}

    return app


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/conflict", 409, "conflict"),
        ("/down", 503, "unavailable"),
        ("/slow", 504, "deadline_exceeded"),
        ("/bug", 500, "internal_error"),
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


def test_answer_key_normalizes_text_but_not_parameters() -> None:
    cache = Cache(None, "p")
    a = cache.answer_key("m", "What is  Ray?", {"max_tokens": 8})
    assert a == cache.answer_key("m", "  what is ray? ", {"max_tokens": 8})
    assert a != cache.answer_key("m", "What is Ray?", {"max_tokens": 9})
    assert a != cache.answer_key("other", "What is Ray?", {"max_tokens": 8})
