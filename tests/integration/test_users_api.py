"""The users API on real PostgreSQL and Redis (the app in process, over ASGI)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest

from serve_app.config import AppArgs
from serve_app.http import create_app
from serve_app.settings import Settings
from tests.conftest import REDIS_URL, open_client

pytestmark = pytest.mark.integration

OPEN = AppArgs(auth={"users": "open"})


def assert_envelope(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == resp.headers["x-request-id"]
    assert "Traceback" not in resp.text
    return body


async def test_root_health_and_readiness(client: httpx.AsyncClient, settings: Settings) -> None:
    r = await client.get("/")
    assert r.json() == {"company": settings.company_name, "status": "running"}
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"
    assert r.json()["checks"] == {"postgres": "ok", "migrations": "applied", "redis": "ok", "rate_limiter": "redis"}


async def test_docs_can_be_turned_off(settings: Settings) -> None:
    async for c in open_client(create_app(AppArgs(docs_enabled=False), settings), settings):
        assert (await c.get("/docs")).status_code == 404
        assert (await c.get("/openapi.json")).status_code == 404
    async for c in open_client(create_app(AppArgs(docs_enabled=True), settings), settings):
        assert (await c.get("/docs")).status_code == 200
        assert "/users/{user_id}" in (await c.get("/openapi.json")).json()["paths"]


async def test_create_and_get_user(client: httpx.AsyncClient) -> None:
    r = await client.post("/users", json={"name": "Ada", "email": "ada@example.com"})
    assert r.status_code == 200, r.text
    user = r.json()
    assert set(user) == {"id", "name", "email"}
    assert user["name"] == "Ada" and user["email"] == "ada@example.com"
    assert (await client.get(f"/users/{user['id']}")).json() == user


async def test_duplicate_email_is_409_case_insensitively(client: httpx.AsyncClient) -> None:
    assert (await client.post("/users", json={"name": "A", "email": "Dup@Example.com"})).status_code == 200
    r = await client.post("/users", json={"name": "B", "email": "dup@example.COM"})
    assert_envelope(r, 409, "conflict")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "email": "a@example.com"},
        {"name": "x" * 201, "email": "a@example.com"},
        {"name": "ok", "email": "not-an-email"},
        {"name": "ok", "email": ("a" * 250) + "@example.com"},
        {"name": "ok"},
        {"name": "ok", "email": "a@example.com", "admin": True},
        {"name": 5, "email": "a@example.com"},
    ],
)
async def test_invalid_user_input_is_422(client: httpx.AsyncClient, body: dict) -> None:
    r = await client.post("/users", json=body)
    body = assert_envelope(r, 422, "invalid_input")
    assert body["error"]["details"]


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/users", content=b"{not json", headers={"content-type": "application/json"})
    assert_envelope(r, 422, "invalid_input")


async def test_unknown_user_and_bad_ids(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get("/users/987654"), 404, "not_found")
    assert_envelope(await client.get("/users/0"), 422, "invalid_input")
    assert_envelope(await client.get("/users/abc"), 422, "invalid_input")
    assert_envelope(await client.get("/users/99999999999999999999999"), 422, "invalid_input")
    assert_envelope(await client.get("/no-such-route"), 404, "not_found")


async def test_list_is_ordered_paginated_and_bounded(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        r = await client.post("/users", json={"name": f"u{i}", "email": f"u{i}@example.com"})
        ids.append(r.json()["id"])
    assert [u["id"] for u in (await client.get("/users")).json()] == ids
    assert [u["id"] for u in (await client.get("/users?limit=2&offset=1")).json()] == ids[1:3]
    assert_envelope(await client.get("/users?limit=201"), 422, "invalid_input")
    assert_envelope(await client.get("/users?limit=0"), 422, "invalid_input")
    assert_envelope(await client.get("/users?offset=-1"), 422, "invalid_input")


async def test_default_list_limit_is_50(client: httpx.AsyncClient, database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.executemany(
            "INSERT INTO users (name, email) VALUES ($1, $2)", [(f"n{i}", f"n{i}@example.com") for i in range(60)]
        )
    finally:
        await conn.close()
    assert len((await client.get("/users")).json()) == 50
    assert len((await client.get("/users?limit=200")).json()) == 60


async def test_user_is_served_from_cache(client: httpx.AsyncClient, database: str) -> None:
    user = (await client.post("/users", json={"name": "Old", "email": "cache@example.com"})).json()
    assert (await client.get(f"/users/{user['id']}")).json()["name"] == "Old"
    # Change the row behind the service's back: a cached read must not see it.
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("UPDATE users SET name = 'New' WHERE id = $1", user["id"])
    finally:
        await conn.close()
    repo = client.resources.repo
    before = repo.queries
    assert (await client.get(f"/users/{user['id']}")).json()["name"] == "Old"
    assert repo.queries == before


async def test_missing_user_is_cached_and_invalidated_on_create(client: httpx.AsyncClient) -> None:
    repo = client.resources.repo
    first = (await client.post("/users", json={"name": "a", "email": "first@example.com"})).json()
    next_id = first["id"] + 1
    assert (await client.get(f"/users/{next_id}")).status_code == 404
    before = repo.queries
    assert (await client.get(f"/users/{next_id}")).status_code == 404
    assert repo.queries == before  # the 404 came from the cache
    created = (await client.post("/users", json={"name": "b", "email": "second@example.com"})).json()
    assert created["id"] == next_id
    assert (await client.get(f"/users/{next_id}")).json() == created


async def test_create_invalidates_cached_lists(client: httpx.AsyncClient) -> None:
    await client.post("/users", json={"name": "a", "email": "l1@example.com"})
    assert len((await client.get("/users")).json()) == 1
    repo = client.resources.repo
    before = repo.queries
    assert len((await client.get("/users")).json()) == 1
    assert repo.queries == before  # cached
    await client.post("/users", json={"name": "b", "email": "l2@example.com"})
    assert len((await client.get("/users")).json()) == 2


async def test_cache_ttl_is_configurable(settings: Settings) -> None:
    args = AppArgs.model_validate({"cache": {"user_ttl_s": 1}})
    async for c in open_client(create_app(args, settings), settings):
        user = (await c.post("/users", json={"name": "t", "email": "ttl@example.com"})).json()
        await c.get(f"/users/{user['id']}")
        key = c.resources.cache.user_key(user["id"])
        redis = c.resources.cache._redis
        ttl = await redis.ttl(key)
        assert 0 < ttl <= 1


async def test_stampede_costs_one_query(settings: Settings) -> None:
    # 200 reads at once from one key exceed its burst and the default
    # admission limit: neither is what this test is about.
    args = AppArgs(rate_limits={"enabled": False}, ingress={"max_ongoing_requests": 256})
    async for client in open_client(create_app(args, settings), settings):
        user = (await client.post("/users", json={"name": "hot", "email": "hot@example.com"})).json()
        repo = client.resources.repo
        before = repo.queries
        responses = await asyncio.gather(*(client.get(f"/users/{user['id']}") for _ in range(200)))
        assert all(r.status_code == 200 and r.json() == user for r in responses)
        queries = repo.queries - before
        print(f"\nstampede: 200 concurrent cold reads -> {queries} PostgreSQL query(ies)")
        assert queries == 1


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    r = await client.get("/users/424242", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["error"]["request_id"] == "abc-123"
    r = await client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 32


# -- dependency failures ------------------------------------------------------------
async def test_redis_down_serves_from_postgres(database: str, redis_prefix: str) -> None:
    settings = Settings(database_url=database, redis_url="redis://127.0.0.1:1/0", redis_key_prefix=redis_prefix)
    async for c in open_client(create_app(AppArgs(), settings), settings):
        user = (await c.post("/users", json={"name": "r", "email": "r@example.com"})).json()
        t0 = time.monotonic()
        for _ in range(5):
            assert (await c.get(f"/users/{user['id']}")).json() == user
        assert time.monotonic() - t0 < 2
        r = await c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["checks"]["redis"] == "degraded"


async def _silent_server() -> tuple[asyncio.base_events.Server, int]:
    """Accepts connections and never answers: a hung dependency."""
    held = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_hung_redis_costs_bounded_time(database: str, redis_prefix: str) -> None:
    server, port = await _silent_server()
    settings = Settings(database_url=database, redis_url=f"redis://127.0.0.1:{port}/0", redis_key_prefix=redis_prefix)
    try:
        async for c in open_client(create_app(AppArgs(), settings), settings):
            user = (await c.post("/users", json={"name": "h", "email": "h@example.com"})).json()
            t0 = time.monotonic()
            for _ in range(10):
                assert (await c.get(f"/users/{user['id']}")).status_code == 200
            elapsed = time.monotonic() - t0
            print(f"\n10 reads with a hung Redis: {elapsed:.2f}s")
            assert elapsed < 2.0  # one socket timeout (0.25 s), then the breaker skips Redis
    finally:
        server.close()


async def test_postgres_down_is_fast_503(redis_prefix: str) -> None:
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:1/none", redis_url=REDIS_URL,
                        redis_key_prefix=redis_prefix)
    # No key can be created in a database that is down, and an unverifiable
    # key is a 401 (test_auth): the open mode shows the outage itself.
    async for c in open_client(create_app(OPEN, settings)):
        t0 = time.monotonic()
        r = await c.get("/users/1")
        assert time.monotonic() - t0 < 3
        assert_envelope(r, 503, "unavailable")
        assert int(r.headers["retry-after"]) > 0
        assert_envelope(await c.post("/users", json={"name": "a", "email": "a@example.com"}), 503, "unavailable")
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["checks"]["postgres"] == "unavailable"
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/")).status_code == 200


async def test_hung_postgres_is_bounded_503(database: str, redis_prefix: str) -> None:
    # Migrate on the real database first, then point the app at a server that
    # accepts and never answers.
    server, port = await _silent_server()
    settings = Settings(database_url=f"postgresql://postgres@127.0.0.1:{port}/x", redis_url=REDIS_URL,
                        redis_key_prefix=redis_prefix, db_connect_timeout_s=1.0)
    try:
        async for c in open_client(create_app(OPEN, settings)):
            t0 = time.monotonic()
            r = await c.get("/users/1")
            elapsed = time.monotonic() - t0
            assert_envelope(r, 503, "unavailable")
            assert elapsed < 4, elapsed
    finally:
        server.close()


async def test_a_read_racing_a_create_does_not_cache_missing(client: httpx.AsyncClient) -> None:
    """Finding 7: a GET that finds no row, then loses the race to a POST
    creating that very id, used to cache "missing" for the whole TTL."""
    first = (await client.post("/users", json={"name": "a", "email": "race1@example.com"})).json()
    next_id = first["id"] + 1
    repo = client.resources.repo
    real_get = repo.get
    looked_up = asyncio.Event()
    release = asyncio.Event()

    async def slow_get(user_id: int):
        row = await real_get(user_id)  # the SELECT runs before the create commits...
        looked_up.set()
        await release.wait()  # ...and the result is stored only after it
        return row

    repo.get = slow_get
    try:
        reader = asyncio.create_task(client.get(f"/users/{next_id}"))
        await asyncio.wait_for(looked_up.wait(), 10)
        created = (await client.post("/users", json={"name": "b", "email": "race2@example.com"})).json()
        assert created["id"] == next_id
        release.set()
        assert (await reader).status_code == 404  # what it saw, fairly
    finally:
        repo.get = real_get
    assert (await client.get(f"/users/{next_id}")).json() == created
