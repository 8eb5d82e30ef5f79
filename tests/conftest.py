"""Shared fixtures: each test gets its own PostgreSQL database and Redis key prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager

from serve_app.auth import create_api_key
from serve_app.config import AppArgs
from serve_app.http import create_app
from serve_app.settings import Settings

# The machine's shared services (trust auth). Tests never stop them; fault
# tests start throwaway servers of their own.
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def pg_dsn(dbname: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{dbname}"


async def create_database() -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def drop_prefix(prefix: str) -> None:
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


@pytest.fixture
async def database() -> AsyncIterator[str]:
    name = await create_database()
    yield pg_dsn(name)
    await drop_database(name)


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    yield prefix
    await drop_prefix(prefix)


@pytest.fixture
def settings(database: str, redis_prefix: str) -> Settings:
    return Settings(
        database_url=database, redis_url=REDIS_URL, redis_key_prefix=redis_prefix, database_sslmode="disable"
    )


@pytest.fixture
def app_args() -> AppArgs:
    return AppArgs()


async def open_client(app, settings: Settings | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app in process; with ``settings``, it sends a fresh API
    key from that database on every request."""
    headers = {}
    if settings is not None:
        headers["Authorization"] = f"Bearer {await create_api_key(settings.database_url, 'tests', settings)}"
    async with LifespanManager(app, startup_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as client:
            # The app's resources (repository, cache, metrics), for tests that count queries.
            client.resources = app.state.resources  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def client(app_args: AppArgs, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in open_client(create_app(app_args, settings), settings):
        yield c


@pytest.fixture(scope="session")
def ray_cluster():
    """One real Ray cluster for the session (started lazily by the tiers that need it),
    shaped like the RayService: a head that takes no work (num-cpus 0) and a
    separate worker node process like the test overlay's CPU worker group."""
    from tests.serve_harness import make_test_cluster

    cluster = make_test_cluster(head_cpus=0)
    cluster.start()
    try:
        cluster.add_worker(num_cpus=4, memory_bytes=8 * 2**30)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
async def session_database() -> AsyncIterator[str]:
    name = await create_database()
    yield pg_dsn(name)
    await drop_database(name)


@pytest.fixture(scope="session")
async def session_api_key(session_database: str) -> str:
    """A key in the session database, for apps deployed on the Ray cluster."""
    return await create_api_key(session_database, "tests", Settings(database_sslmode="disable"))
