"""API keys, rate limits, admission and idempotent creates on real PostgreSQL
and Redis (the app in process); across two Serve replicas in test_serve_users."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import httpx
import pytest

from serve_app import auth
from serve_app.config import AppArgs
from serve_app.http import create_app
from serve_app.settings import Settings
from tests.conftest import REDIS_URL, open_client
from tests.integration.test_questions_fake_engine import MODEL, FakeEngine
from tests.integration.test_users_api import assert_envelope

pytestmark = pytest.mark.integration

QUESTIONS = {"llm": {"models": [{"model_id": MODEL, "pools": [{"name": "cpu"}]}]}}


async def _anonymous(app, settings: Settings):
    """A client without a key (the app's own lifespan applies the migrations)."""
    async for c in open_client(app):
        yield c


# -- authentication ----------------------------------------------------------------
async def test_users_need_a_valid_key(settings: Settings) -> None:
    key = await auth.create_api_key(settings.database_url, "t", settings)
    async for c in _anonymous(create_app(AppArgs(), settings), settings):
        r = await c.get("/users")
        body = assert_envelope(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "Bearer" in body["error"]["message"]
        key_id = key.split("_")[1]
        wrong_secret = f"qa_{key_id}_{'A' * 43}"
        unknown_id = f"qa_{'0' * 12}_{key.split('_', 2)[2]}"
        for header in (f"Bearer {wrong_secret}", f"Bearer {unknown_id}", "Bearer nonsense", f"Basic {key}", key):
            assert_envelope(await c.get("/users", headers={"Authorization": header}), 401, "unauthorized")
        assert_envelope(await c.post("/users", json={"name": "x", "email": "x@example.com"}), 401, "unauthorized")
        ok = await c.get("/users", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        # Health, readiness and the root stay open.
        for path in ("/", "/healthz", "/readyz"):
            assert (await c.get(path)).status_code == 200
        metrics = c.resources.metrics
        assert metrics.count("auth_failures", reason="invalid") >= 2
        assert metrics.count("auth_failures", reason="missing") >= 2


async def test_revoked_key_stops_working(settings: Settings) -> None:
    key = await auth.create_api_key(settings.database_url, "t", settings)
    args = AppArgs(auth={"key_cache_ttl_s": 0})
    async for c in _anonymous(create_app(args, settings), settings):
        headers = {"Authorization": f"Bearer {key}"}
        assert (await c.get("/users", headers=headers)).status_code == 200
        assert await auth.revoke(settings.database_url, key, settings)
        assert_envelope(await c.get("/users", headers=headers), 401, "unauthorized")


async def test_question_routes_open_or_keyed(settings: Settings) -> None:
    key = await auth.create_api_key(settings.database_url, "t", settings)
    body = {"question": "open?"}
    async for c in _anonymous(create_app(AppArgs.model_validate(QUESTIONS), settings, FakeEngine), settings):
        assert (await c.post("/question", json=body)).status_code == 200
        # OpenAI clients always send some api_key: a foreign token is anonymous...
        r = await c.post("/question", json=body, headers={"Authorization": "Bearer sk-unused"})
        assert r.status_code == 200
        # ...one of ours must be valid.
        r = await c.post("/question", json=body, headers={"Authorization": f"Bearer {auth.new_key()[1]}"})
        assert_envelope(r, 401, "unauthorized")
    keyed = AppArgs.model_validate({**QUESTIONS, "auth": {"questions": "key"}})
    async for c in _anonymous(create_app(keyed, settings, FakeEngine), settings):
        for path in ("/question", "/question/stream", "/v1/chat/completions"):
            assert_envelope(await c.post(path, json=body), 401, "unauthorized")
        assert_envelope(await c.get("/v1/models"), 401, "unauthorized")
        r = await c.post("/question", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200


async def test_a_down_database_is_not_revealed_before_auth(redis_prefix: str) -> None:
    """No key, or a key never verified: 401 whether or not PostgreSQL is up."""
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:1/none", redis_url=REDIS_URL,
                        redis_key_prefix=redis_prefix)
    _, key, _ = auth.new_key()
    async for c in open_client(create_app(AppArgs(), settings)):
        t0 = time.monotonic()
        assert_envelope(await c.get("/users/1"), 401, "unauthorized")
        r = await c.get("/users/1", headers={"Authorization": f"Bearer {key}"})
        assert_envelope(r, 401, "unauthorized")
        assert "retry-after" not in r.headers
        assert time.monotonic() - t0 < 5
        # Readiness is for the orchestrator, not an authenticated API.
        assert (await c.get("/readyz")).status_code == 503


async def test_api_key_command(settings: Settings) -> None:
    import subprocess
    import sys

    env = {"DATABASE_URL": settings.database_url, "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "serve_app", "api-key", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    created = run("create", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert auth.parse_bearer(f"Bearer {key}") is not None
    listed = run("list")
    key_id = key.split("_")[1]
    assert key_id in listed.stdout and "active" in listed.stdout and key not in listed.stdout
    assert run("revoke", key_id).returncode == 0
    assert "revoked" in run("list").stdout
    assert run("revoke", key_id).returncode == 1
    # Only the hash of the secret is stored.
    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
    finally:
        await conn.close()
    assert bytes(row["secret_hash"]) == auth.hash_secret(key.split("_", 2)[2])
    assert key.split("_", 2)[2].encode() not in b"".join(str(v).encode() for v in row.values())


# -- rate limits ----------------------------------------------------------------------
def _tight(**extra) -> AppArgs:
    return AppArgs.model_validate({
        **extra,
        "rate_limits": {"users": {"rate_per_s": 0.05, "burst": 3}, "questions": {"rate_per_s": 0.05, "burst": 2}},
    })


async def test_over_the_limit_is_429_with_headers(settings: Settings) -> None:
    async for c in open_client(create_app(_tight(**QUESTIONS), settings, FakeEngine), settings):
        statuses = []
        for _ in range(3):
            r = await c.get("/users")
            statuses.append(r.status_code)
            assert r.headers["ratelimit-limit"] == "3"
        assert statuses == [200, 200, 200]
        assert r.headers["ratelimit-remaining"] == "0"
        r = await c.get("/users")
        assert_envelope(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["ratelimit-remaining"] == "0" and int(r.headers["ratelimit-reset"]) > 0
        # Questions have their own bucket; anonymous callers are limited by address.
        anon = httpx.AsyncClient(transport=c._transport, base_url="http://test")
        codes = [(await anon.post("/question", json={"question": f"q{i}"})).status_code for i in range(3)]
        assert codes == [200, 200, 429]
        assert c.resources.metrics.count("rate_limited", group="users") == 1


async def test_limits_are_shared_between_replicas(settings: Settings) -> None:
    """Two app instances (as two ingress replicas) draw from one bucket in Redis."""
    key = await auth.create_api_key(settings.database_url, "t", settings)
    headers = {"Authorization": f"Bearer {key}"}
    codes = []
    async for a in open_client(create_app(_tight(), settings)):
        async for b in open_client(create_app(_tight(), settings)):
            for i in range(6):
                codes.append((await (a if i % 2 else b).get("/users", headers=headers)).status_code)
    assert codes.count(200) == 3 and codes.count(429) == 3, codes


async def test_limiter_falls_back_to_local_buckets_without_redis(database: str, redis_prefix: str) -> None:
    settings = Settings(database_url=database, redis_url="redis://127.0.0.1:1/0", redis_key_prefix=redis_prefix)
    async for c in open_client(create_app(_tight(), settings), settings):
        codes = [(await c.get("/users")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        ready = (await c.get("/readyz")).json()["checks"]
        assert ready["rate_limiter"] == "local" and ready["redis"] == "degraded"
        assert c.resources.metrics.count("limiter_local", group="users") == 4


# -- admission ----------------------------------------------------------------------
class SlowEngine(FakeEngine):
    def __init__(self, _metrics=None) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def chat(self, model, request, deadline_s):
        await self.release.wait()
        return await super().chat(model, request, deadline_s)


async def test_past_max_in_flight_is_fast_503(settings: Settings) -> None:
    engine = SlowEngine()
    args = AppArgs.model_validate({**QUESTIONS, "max_in_flight": 1, "rate_limits": {"enabled": False}})
    async for c in open_client(create_app(args, settings, lambda _m: engine), settings):
        first = asyncio.create_task(c.post("/question", json={"question": "slow"}))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        r = await c.post("/question", json={"question": "second"})
        assert time.monotonic() - t0 < 1
        assert_envelope(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1"
        assert (await c.get("/healthz")).status_code == 200  # not counted
        engine.release.set()
        assert (await first).status_code == 200


# -- idempotent creates ---------------------------------------------------------------
async def test_idempotency_key_returns_the_first_result(client: httpx.AsyncClient, settings: Settings) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    body = {"name": "Idem", "email": email}
    headers = {"Idempotency-Key": "create-1"}
    results = await asyncio.gather(*(client.post("/users", json=body, headers=headers) for _ in range(8)))
    assert {r.status_code for r in results} == {200}
    assert len({r.json()["id"] for r in results}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in results) == 7
    again = await client.post("/users", json=body, headers=headers)
    assert again.json() == results[0].json() and again.headers["idempotent-replayed"] == "true"
    other = await client.post("/users", json={"name": "Other", "email": email}, headers=headers)
    assert_envelope(other, 422, "invalid_input")
    # Without the header a second create of the same email is a conflict.
    assert_envelope(await client.post("/users", json=body), 409, "conflict")
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 1
    finally:
        await conn.close()
    bad = await client.post("/users", json=body, headers={"Idempotency-Key": "x" * 201})
    assert_envelope(bad, 422, "invalid_input")


# -- finding 3: forged keys cannot buy a database lookup each ----------------------------
async def test_forged_keys_are_throttled_per_address_before_the_database(settings: Settings) -> None:
    real = await auth.create_api_key(settings.database_url, "t", settings)
    args = AppArgs(rate_limits={"failed_auth": {"rate_per_s": 0.01, "burst": 10}})
    async for c in _anonymous(create_app(args, settings), settings):
        lookups = c.resources.keys._repo
        before = lookups.queries
        codes = [
            (await c.get("/users", headers={"Authorization": f"Bearer {auth.new_key()[1]}"})).status_code
            for _ in range(400)
        ]
        assert codes.count(401) == 10 and codes.count(429) == 390, codes[:20]
        assert lookups.queries - before == 10  # the burst, then none
        r = await c.get("/users", headers={"Authorization": f"Bearer {auth.new_key()[1]}"})
        assert_envelope(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        # Another address is not held up, and neither is a key this replica
        # already verified (no lookup needed).
        other = httpx.AsyncClient(transport=httpx.ASGITransport(app=c._transport.app, client=("192.0.2.9", 1)),
                                  base_url="http://test")
        assert (await other.get("/users", headers={"Authorization": f"Bearer {real}"})).status_code == 200
        assert (await c.get("/users", headers={"Authorization": f"Bearer {real}"})).status_code == 200
        # The throttle touched Redis only for the failures.
        assert c.resources.metrics.count("limiter_local") == 0


async def test_concurrent_forged_lookups_of_one_id_are_one_query(settings: Settings) -> None:
    async for c in _anonymous(create_app(AppArgs(), settings), settings):
        lookups = c.resources.keys._repo
        before = lookups.queries
        forged = {"Authorization": f"Bearer {auth.new_key()[1]}"}
        codes = await asyncio.gather(*(c.get("/users", headers=forged) for _ in range(8)))
        assert {r.status_code for r in codes} == {401}
        assert lookups.queries - before == 1


# -- finding 4: X-Forwarded-For only from trusted proxies ------------------------------------
async def _questions_from(app, xff: list[str], peer: str = "127.0.0.1") -> list[int]:
    async for c in _anonymous(app, None):
        transport = httpx.ASGITransport(app=c._transport.app, client=(peer, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as anon:
            return [(await anon.post("/question", json={"question": f"q{i}"},
                                     headers={"X-Forwarded-For": forwarded})).status_code
                    for i, forwarded in enumerate(xff)]
    raise AssertionError("unreachable")


async def test_forwarded_addresses_from_an_untrusted_peer_are_ignored(settings: Settings) -> None:
    """The default (and local) config trusts no proxy: 60 questions, each
    with a made-up X-Forwarded-For, share the peer's one bucket (burst 20)."""
    app = create_app(AppArgs.model_validate(QUESTIONS), settings, FakeEngine)
    codes = await _questions_from(app, [f"203.0.113.{i}" for i in range(60)])
    assert codes.count(200) == 20 and codes.count(429) == 40


async def test_forwarded_addresses_from_a_trusted_proxy_are_believed(settings: Settings) -> None:
    args = AppArgs.model_validate({**QUESTIONS, "rate_limits": {
        "questions": {"rate_per_s": 0.01, "burst": 2}, "trusted_proxies": ["10.0.0.0/8", "127.0.0.1/32"]}})
    app = create_app(args, settings, FakeEngine)
    # Behind the load balancer: each client its own bucket, found at the
    # right end of the header (what the balancer appended).
    codes = await _questions_from(app, ["203.0.113.1", "203.0.113.1", "203.0.113.1", "203.0.113.2",
                                        "198.51.100.7, 10.1.2.3"])
    assert codes == [200, 200, 429, 200, 200]
    # What the client wrote left of the balancer's entry is not believed:
    # forged entries do not mint buckets.
    codes = await _questions_from(app, [f"192.0.2.{i}, 203.0.113.1" for i in range(3)])
    assert codes == [429, 429, 429]
    # A peer that is not a trusted proxy is the client, whatever it says.
    codes = await _questions_from(app, ["203.0.113.50"] * 3, peer="192.0.2.200")
    assert codes == [200, 200, 429]


# -- finding 5: routes are protected by what they declare, by default the most ---------------
async def test_a_route_without_a_declaration_is_the_most_protected(settings: Settings) -> None:
    key = await auth.create_api_key(settings.database_url, "t", settings)
    app = create_app(AppArgs(auth={"users": "open"}), settings)

    @app.get("/admin/secret")
    async def secret() -> dict[str, str]:  # added after create_app, with no policy at all
        return {"secret": "yes"}

    async for c in _anonymous(app, settings):
        assert_envelope(await c.get("/admin/secret"), 401, "unauthorized")
        ok = await c.get("/admin/secret", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and ok.headers["ratelimit-limit"]
        # The users group itself is open in this config: not because of the path.
        assert (await c.get("/users")).status_code == 200


async def test_protection_holds_under_a_route_prefix(settings: Settings) -> None:
    """What Serve hands the app under route_prefix /api (ray 2.60 replica.py
    _direct_ingress_asgi: root_path "/api", path with the prefix kept). The
    real Serve deployment is in test_serve_users."""
    async for c in _anonymous(create_app(AppArgs(), settings), settings):
        for path in ("/users", "/users/1"):
            r = await c.get(f"/api{path}", extensions={}, headers={}, params={})
            assert r.status_code == 404  # outside the root path: no route at all
        transport = httpx.ASGITransport(app=c._transport.app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as prefixed:
            for path in ("/api/users", "/api/users/1"):
                assert_envelope(await prefixed.get(path), 401, "unauthorized")


# -- finding 7: the body waits for auth; refusals carry their route; nothing escapes -------
async def test_the_body_is_not_read_before_auth(settings: Settings) -> None:
    pulled = 0

    async def upload():
        nonlocal pulled
        for _ in range(4):
            pulled += 1
            yield b" " * (16 * 1024)

    async for c in _anonymous(create_app(AppArgs(), settings), settings):
        r = await c.post("/users", content=upload(), headers={"content-type": "application/json"})
        assert_envelope(r, 401, "unauthorized")
    assert pulled == 0


async def test_refusals_are_logged_with_their_route(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    async for c in _anonymous(create_app(_tight(), settings), settings):
        metrics = c.resources.metrics
        with caplog.at_level("INFO", logger="serve_app.access"):
            assert (await c.get("/users/5")).status_code == 401
            key = await auth.create_api_key(settings.database_url, "t", settings)
            headers = {"Authorization": f"Bearer {key}"}
            assert (await c.post("/users", content=b"x" * 9000, headers=headers)).status_code == 413
            codes = [(await c.get("/users", headers=headers)).status_code for _ in range(3)]
            assert codes[-1] == 429
    assert metrics.count("requests", route="/users/{user_id}", status="401") == 1
    assert metrics.count("requests", route="/users", method="POST", status="413") == 1
    assert metrics.count("requests", route="/users", method="GET", status="429") == 1
    assert metrics.count("requests", route="unmatched") == 0
    routes = {(r.http_route, r.status) for r in caplog.records if hasattr(r, "http_route")}
    assert {("/users/{user_id}", 401), ("/users", 413), ("/users", 429)} <= routes


async def test_an_error_in_a_pipeline_step_is_an_envelope(settings: Settings) -> None:
    """An unexpected failure in the rate limiter used to surface as
    Starlette's plain-text 500 (the guard sat outside the error middleware)."""
    async for c in open_client(create_app(AppArgs(), settings), settings):

        async def broken(*_a, **_k):
            raise RuntimeError("limiter bug")

        c.resources.limiter.take = broken
        r = await c.get("/users", headers={"X-Request-Id": "rid-limiter"})
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == {"code": "internal_error", "message": "internal error",
                                     "request_id": "rid-limiter"}
        assert "limiter bug" not in r.text


# -- finding 7: idempotency keys are per caller and expire -----------------------------------
async def test_idempotency_keys_are_scoped_per_anonymous_caller(settings: Settings) -> None:
    """With /users open, two callers using the same Idempotency-Key used to
    share one scope: the second got a 422 (or the first one's user)."""
    async for c in _anonymous(create_app(AppArgs(auth={"users": "open"}), settings), settings):
        headers = {"Idempotency-Key": "shared-key"}
        a = httpx.AsyncClient(transport=httpx.ASGITransport(app=c._transport.app, client=("192.0.2.1", 1)),
                              base_url="http://test")
        b = httpx.AsyncClient(transport=httpx.ASGITransport(app=c._transport.app, client=("192.0.2.2", 1)),
                              base_url="http://test")
        first = await a.post("/users", json={"name": "A", "email": "a@example.com"}, headers=headers)
        second = await b.post("/users", json={"name": "B", "email": "b@example.com"}, headers=headers)
        assert first.status_code == 200 and second.status_code == 200, second.text
        assert first.json()["id"] != second.json()["id"] and "idempotent-replayed" not in second.headers
        again = await a.post("/users", json={"name": "A", "email": "a@example.com"}, headers=headers)
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"


async def test_idempotency_keys_expire_and_are_purged(settings: Settings) -> None:
    async for c in open_client(create_app(AppArgs(idempotency_ttl_s=3600), settings), settings):
        headers = {"Idempotency-Key": "old-key"}
        first = await c.post("/users", json={"name": "Old", "email": "old@example.com"}, headers=headers)
        assert first.status_code == 200
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '2 hours'")
            # Expired: the key is free again (a different body is no conflict)...
            r = await c.post("/users", json={"name": "New", "email": "new@example.com"}, headers=headers)
            assert r.status_code == 200 and r.json()["id"] != first.json()["id"], r.text
            await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '2 hours'")
            await conn.execute(
                "INSERT INTO idempotency_keys (scope, key, request_hash, user_id) VALUES ('s', 'fresh', '', $1)",
                first.json()["id"],
            )
            # ...and the purge deletes the expired rows only.
            assert await c.resources.maintenance.run_once() == 1
            assert await conn.fetchval("SELECT array_agg(key) FROM idempotency_keys") == ["fresh"]
        finally:
            await conn.close()


async def test_a_burst_as_large_as_admission_keeps_redis(settings: Settings) -> None:
    """Every admitted request may hold a Redis connection at once (its rate
    limit): the pool must not run out below the admission limit (redis-py's
    default pool is 100), or Redis is "down" for the breaker's cool-down and
    every replica limits on its own."""
    args = AppArgs(max_in_flight=224, ingress={"max_ongoing_requests": 256},
                   rate_limits={"users": {"rate_per_s": 1, "burst": 1000}})
    # 220 connections opened at once: on a loaded test machine some connects
    # take longer than the production 0.25 s, which is not what this is about.
    settings = settings.model_copy(update={"redis_connect_timeout_s": 5.0})
    async for c in open_client(create_app(args, settings), settings):
        responses = await asyncio.gather(*(c.get("/users?limit=1") for _ in range(220)))
        assert {r.status_code for r in responses} == {200}
        assert c.resources.metrics.count("limiter_local") == 0
        assert c.resources.metrics.count("dependency_errors", dependency="redis") == 0
