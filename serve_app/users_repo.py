"""The users repository: the only module that speaks SQL about users.

Every call is bounded (pool acquire timeout, asyncpg command timeout) and a
database that cannot serve surfaces as ``DependencyUnavailable`` (503).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from serve_app.db import UNAVAILABLE_ERRORS
from serve_app.errors import Conflict, DependencyUnavailable
from serve_app.metrics import AppMetrics

User = dict[str, Any]

_COLUMNS = "id, name, email"


class UsersRepository:
    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float, metrics: AppMetrics | None = None) -> None:
        self._pool = pool
        self._metrics = metrics or AppMetrics()
        self._acquire_timeout_s = acquire_timeout_s
        # Lets tests and the benchmark count the queries the cache saves.
        self.queries = 0

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout_s) as conn:
                self.queries += 1
                yield conn
        except UNAVAILABLE_ERRORS as exc:
            self._metrics.dependency_error("postgres")
            raise DependencyUnavailable("database unavailable") from exc

    async def create(self, name: str, email: str) -> User:
        try:
            async with self._conn() as conn:
                # Single statement in autocommit: when this returns, the row is
                # committed, so an acknowledged create is never lost.
                row = await conn.fetchrow(
                    f"INSERT INTO users (name, email) VALUES ($1, $2) RETURNING {_COLUMNS}", name, email
                )
        except asyncpg.UniqueViolationError as exc:
            raise Conflict("a user with this email already exists") from exc
        return dict(row)

    async def get(self, user_id: int) -> User | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)
        return dict(row) if row else None

    async def list(self, limit: int, offset: int) -> list[User]:
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM users ORDER BY id LIMIT $1 OFFSET $2", limit, offset)
        return [dict(r) for r in rows]

    async def ping(self, timeout_s: float) -> None:
        async with self._conn() as conn:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout_s)
