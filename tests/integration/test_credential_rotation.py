"""Credentials that survive rotation (issue 14): the app's database password changes
while the service runs under load, and new connections pick up the new password
without a restart.

Real parts: a throwaway PostgreSQL of our own with scram-sha-256 on TCP (the
machine's shared server trusts every local connection, so a password change there
would prove nothing), the app under plain uvicorn (loadtests/uvicorn_app.py, no Redis
cache so every request reaches PostgreSQL), real HTTP clients. The rotation is the
one AWS performs: the database gets the new password first, the secret (here the
file DATABASE_PASSWORD_FILE points at, on EKS a re-synced Secret volume) follows
after the operator's sync interval; every pooled connection is cut in between, so the
pool must open new ones inside that window.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from devtools.local_ray import free_port
from tests.faults.stack import ThrowawayPostgres

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 8
WINDOW_S = 3.0  # the secret operator's sync delay we simulate
RECOVERY_S = 3.0  # after the sync: the pool reopens its connections (scram handshakes on a busy machine)
FAST_503_S = 2.5  # db_connect_timeout_s (2 s) + slack: a 503 must never hang


@pytest.fixture
def scram_postgres():
    pg = ThrowawayPostgres(host_auth="scram-sha-256")
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


async def _admin(pg: ThrowawayPostgres, *sql: str) -> None:
    conn = await asyncpg.connect(pg.admin_dsn)
    try:
        for stmt in sql:
            await conn.execute(stmt)
    finally:
        await conn.close()


async def _load(url: str, stop: asyncio.Event, log: list[tuple[float, int, float, str | None]]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = await client.get("/users?limit=5")
                note = r.headers.get("retry-after") if r.status_code != 500 else r.text[:300]
                log.append((t0, r.status_code, time.monotonic() - t0, note))
            except httpx.HTTPError as exc:
                log.append((t0, -1, time.monotonic() - t0, type(exc).__name__))


@pytest.fixture
def app_url(scram_postgres, tmp_path):
    """The app under uvicorn against the scram PostgreSQL, as role qa_app whose password
    comes from a file only (none in the DSN). Yields (url, password file, server)."""
    pg = scram_postgres
    asyncio.run(_admin(pg, "CREATE ROLE qa_app LOGIN PASSWORD 'first-password'",
                       "CREATE DATABASE qa_app OWNER qa_app"))
    password_file = tmp_path / "db-password"
    password_file.write_text("first-password\n")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))},
        "DATABASE_URL": f"postgresql://qa_app@127.0.0.1:{pg.port}/qa_app",  # no password in the DSN
        "DATABASE_PASSWORD_FILE": str(password_file),
        "DATABASE_SSLMODE": "disable",
        "DB_POOL_MAX_SIZE": "4",
        "LOADTEST_CACHE_ENABLED": "0",
    }
    log = tmp_path / "server.log"
    print(f"\nserver log: {log}")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "loadtests.uvicorn_app:create", "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log", "--log-level", "warning"], cwd=REPO_ROOT, env=env,
        stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"the app never became ready:\n{log.read_text()[-2000:]}")
        yield url, password_file, server
    finally:
        server.terminate()
        server.wait(timeout=30)


async def test_password_rotation_under_load(scram_postgres, app_url):
    pg = scram_postgres
    url, password_file, server = app_url
    log: list[tuple[float, int, float, str | None]] = []
    stop = asyncio.Event()
    clients = [asyncio.create_task(_load(url, stop, log)) for _ in range(CLIENTS)]
    await asyncio.sleep(2)
    # 1. AWS rotates: the database has the new password, the secret does not yet.
    await _admin(pg, "ALTER ROLE qa_app PASSWORD 'second-password'")
    t_rotated = time.monotonic()
    await _admin(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'qa_app'")
    await asyncio.sleep(WINDOW_S)
    # 2. The operator re-syncs the secret: the file changes in place, as a Secret volume does.
    password_file.write_text("second-password\n")
    t_synced = time.monotonic()
    await asyncio.sleep(RECOVERY_S + 4)
    stop.set()
    await asyncio.gather(*clients)

    assert server.poll() is None, "the app must not restart"
    before = [e for e in log if e[0] < t_rotated]
    window = [e for e in log if t_rotated <= e[0] < t_synced + RECOVERY_S]
    after = [e for e in log if e[0] >= t_synced + RECOVERY_S]
    first_ok = min((e[0] for e in log if e[0] >= t_synced and e[1] == 200), default=float("nan"))
    print(f"\nrequests: {len(before)} before, {len(window)} from the rotation to sync + {RECOVERY_S} s "
          f"({sum(1 for e in window if e[1] == 503)} x 503), {len(after)} after; first success "
          f"{first_ok - t_synced:.2f} s after the sync")
    assert before and all(e[1] == 200 for e in before)
    # In the window: answers or fast 503s with Retry-After, never a 500 or a hang.
    assert all(e[1] in (200, 503) for e in window), [e for e in window if e[1] not in (200, 503)]
    assert all(e[2] < FAST_503_S and e[3] for e in window if e[1] == 503)
    # Then every request succeeds on new connections, with no restart: the 503s are bounded
    # to the rotation window plus the pool's reconnection.
    assert after and all(e[1] == 200 for e in after), sorted({e[1] for e in after})
    conn = await asyncpg.connect(pg.admin_dsn)
    try:
        fresh = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'qa_app' AND backend_start > now() - "
            "make_interval(secs => $1)", time.monotonic() - t_synced + 0.5)
    finally:
        await conn.close()
    assert fresh >= 1, "the app must hold connections opened with the new password"


async def test_password_file_is_read_for_every_new_connection(tmp_path):
    """Unit-level: the pool's password is a callable reading the file each time."""
    from serve_app import db
    from serve_app.settings import Settings

    f = tmp_path / "pw"
    f.write_text("a\n")
    provider = db.password_argument(Settings(database_password_file=f))
    assert provider is not None and provider() == "a"
    f.write_text("b")
    assert provider() == "b"
    assert db.password_argument(Settings()) is None
    assert issubclass(asyncpg.exceptions.InvalidPasswordError, db.UNAVAILABLE_ERRORS)
