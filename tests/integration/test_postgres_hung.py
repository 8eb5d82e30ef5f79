"""A hung PostgreSQL costs a users request one database timeout, never two.

Real parts: a throwaway PostgreSQL of our own (SIGSTOPped here; the shared one
serves every other test), the app in process with keys on, real Redis.

Traced from a fault-tier failure (2026-11-30, CI): a POST /users answered 503
after 6.02 s while PostgreSQL was stopped. Its key's cache entry had just
expired, so the request first re-verified the key (a pooled connection: the
2 s command timeout, then up to the 1 s acquire timeout for asyncpg's release
waiting on a cancel the hung server never confirms), then ran its own insert.
Before the fix this test measured 6.02 s here too; after it, 2.26 s (the key's
0.25 s refresh wait and one 2 s command timeout).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from serve_app import auth
from serve_app.config import AppArgs
from serve_app.http import create_app
from serve_app.settings import Settings
from tests.conftest import REDIS_URL, drop_prefix, open_client
from tests.faults.stack import ThrowawayPostgres
from tests.integration.test_users_api import assert_envelope

pytestmark = pytest.mark.integration


@pytest.fixture
async def hangable_pg() -> AsyncIterator[ThrowawayPostgres]:
    with ThrowawayPostgres.running() as pg:
        yield pg


async def test_users_request_under_hung_postgres_costs_one_database_timeout(hangable_pg: ThrowawayPostgres) -> None:
    pg = hangable_pg
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    settings = Settings(database_url=pg.dsn, redis_url=REDIS_URL, redis_key_prefix=prefix, database_sslmode="disable")
    key = await auth.create_api_key(pg.dsn, "t", settings)
    # A key entry that is always expired: every request re-verifies its key,
    # the case the fault run hit once.
    args = AppArgs(auth={"key_cache_ttl_s": 0})
    # One database operation: acquire (which bounds a connect), then the query.
    one_operation_s = settings.db_acquire_timeout_s + settings.db_command_timeout_s
    try:
        async for c in open_client(create_app(args, settings)):
            headers = {"Authorization": f"Bearer {key}"}
            body = {"name": "H", "email": f"h-{uuid.uuid4().hex[:8]}@example.com"}
            assert (await c.post("/users", json=body, headers=headers)).status_code == 200
            # Several idle pooled connections, so the requests below also meet
            # the worst case: a connection at hand whose query then hangs.
            pool = c.resources.pool
            held = [await pool.acquire() for _ in range(6)]
            for conn in held:
                await pool.release(conn)
            assert pool.get_idle_size() >= 6
            metrics = c.resources.metrics
            pg.hang()
            try:
                took = []
                # The last two are idempotent creates: a transaction, whose
                # rollback must not wait on the hung server either.
                for i in range(4):
                    extra = {"Idempotency-Key": f"k-{i}-{uuid.uuid4().hex}"} if i >= 2 else {}
                    t0 = time.monotonic()
                    r = await c.post("/users", json={**body, "email": f"h{i}-{body['email']}"},
                                     headers={**headers, **extra})
                    took.append(time.monotonic() - t0)
                    assert_envelope(r, 503, "unavailable")
                    assert r.headers["retry-after"].isdigit()
            finally:
                pg.resume()
            print(f"[pg-hung] POST /users 503 after {', '.join(f'{t:.2f}' for t in took)} s "
                  f"(one operation at most {one_operation_s:.1f} s)")
            # 0.5 s: the key's bounded refresh wait (0.25 s) and the request's own path.
            assert max(took) < one_operation_s + 0.5, took
            # The key was still accepted (verified before the outage): no 401.
            assert metrics.count("auth_failures", reason="unverifiable") == 0
            # And the service recovers by itself once PostgreSQL answers again.
            t0 = time.monotonic()
            while (r := await c.post("/users", json={**body, "email": f"back-{body['email']}"},
                                     headers=headers)).status_code != 200:
                assert r.status_code == 503 and time.monotonic() - t0 < 30, r.text
    finally:
        await drop_prefix(prefix)
