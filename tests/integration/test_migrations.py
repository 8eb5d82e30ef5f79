"""Migrations on a real PostgreSQL: ordered, idempotent, safe when replicas start together."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from serve_app import db
from serve_app.settings import Settings
from tests.conftest import create_database, drop_database, pg_dsn

pytestmark = pytest.mark.integration

# The readable current schema (not shipped in the images; the migrations are).
SCHEMA_SQL = Path(__file__).resolve().parents[2] / "sql" / "schema.sql"

CATALOG = """
SELECT table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns WHERE table_schema = 'public'
ORDER BY table_name, column_name
"""
INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
CHECKS = """
SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2
"""


async def _catalog(dsn: str) -> tuple:
    conn = await asyncpg.connect(dsn)
    try:
        return tuple([[tuple(r) for r in await conn.fetch(q)] for q in (CATALOG, INDEXES, CHECKS)])
    finally:
        await conn.close()


async def test_migrations_match_schema_sql(database: str) -> None:
    applied = await db.migrate(Settings(), database)
    assert applied == [m.version for m in db.load_migrations()]
    other = await create_database()
    try:
        conn = await asyncpg.connect(pg_dsn(other))
        try:
            await conn.execute(SCHEMA_SQL.read_text())
        finally:
            await conn.close()
        assert await _catalog(database) == await _catalog(pg_dsn(other))
    finally:
        await drop_database(other)


async def test_migrations_are_idempotent(database: str) -> None:
    assert await db.migrate(Settings(), database)
    assert await db.migrate(Settings(), database) == []


async def test_concurrent_startup_applies_each_migration_once(database: str) -> None:
    results = await asyncio.gather(*(db.migrate(Settings(), database) for _ in range(8)))
    applied = [v for r in results for v in r]
    assert sorted(applied) == [m.version for m in db.load_migrations()]
    conn = await asyncpg.connect(database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(db.load_migrations())
    finally:
        await conn.close()


def test_migrate_command(database: str) -> None:
    env = {"DATABASE_URL": database, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "serve_app", "migrate"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"migrations applied: {[m.version for m in db.load_migrations()]}" in out.stderr
    again = subprocess.run([sys.executable, "-m", "serve_app", "migrate"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert "none pending" in again.stderr


# -- the startup runner ---------------------------------------------------------------------
async def test_the_retry_loop_survives_unexpected_errors() -> None:
    """Finding 7: an error other than "database unavailable" used to end the
    retry task silently, and /users answered 503 for ever."""
    from serve_app.http.resources import Migrations

    calls = 0

    async def migrate() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database unreachable")
        if calls == 2:
            raise RuntimeError("a migration failed half way")

    applied = asyncio.Event()

    async def on_done() -> None:
        applied.set()

    runner = Migrations(migrate, first_delay_s=0.01, max_delay_s=0.02, on_done=on_done)
    await runner.start()
    assert not runner.done and runner.state == "pending: database unavailable (OSError)"
    await asyncio.wait_for(applied.wait(), 10)
    await runner.stop()
    assert runner.done and runner.state == "applied" and calls == 3


# -- connection settings on a real server -------------------------------------------------
async def test_sslmode_in_the_dsn_is_honoured(database: str) -> None:
    """Finding 6: this server has TLS off (SHOW ssl); a DSN asking for
    sslmode=require must fail rather than silently connect in plain text."""
    probe = await asyncpg.connect(database)
    try:
        assert await probe.fetchval("SHOW ssl") == "off"
    finally:
        await probe.close()
    with pytest.raises(ConnectionError):
        await db.connect(Settings(), database + "?sslmode=require")
    # DATABASE_SSLMODE, when set, decides instead.
    conn = await db.connect(Settings(database_sslmode="disable"), database + "?sslmode=require")
    await conn.close()


@pytest.mark.parametrize(("timeout_s", "expected"), [(2.0, "2s"), (0.5, "500ms")])
async def test_statement_timeout_follows_the_client_timeout(database: str, timeout_s: float, expected: str) -> None:
    """The server stops a statement when the client stops waiting for it
    (it was a fixed 5 s against a 2 s client timeout)."""
    pool = await db.create_pool(Settings(db_command_timeout_s=timeout_s), database)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == expected
    finally:
        await pool.close()
