"""The repositories: the only module that speaks SQL (users, API keys).

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
from serve_app.errors import Conflict, DependencyUnavailable, InvalidInput
from serve_app.metrics import AppMetrics

User = dict[str, Any]

_COLUMNS = "id, name, email"


class _Repository:
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
                try:
                    yield conn
                except UNAVAILABLE_ERRORS:
                    # Dropped here rather than released: asyncpg's release would
                    # first wait (up to the acquire timeout, on this request) for
                    # the cancel of a timed-out query, which a hung server never
                    # confirms. The pool opens a fresh connection when needed.
                    conn.terminate()
                    raise
        except UNAVAILABLE_ERRORS as exc:
            self._metrics.dependency_error("postgres")
            raise DependencyUnavailable("database unavailable") from exc


class UsersRepository(_Repository):
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

    async def create_idempotent(
        self, name: str, email: str, *, scope: str, key: str, request_hash: bytes, ttl_s: int
    ) -> tuple[User, bool]:
        """Create once per (scope, key) within ``ttl_s``; a retry returns the first result.

        Returns the user and whether it is a replay. The user and the key are
        committed together, and concurrent retries serialize on the key. An
        expired key is reused as if new.
        """
        try:
            async with self._conn() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))", scope, key)
                seen = await conn.fetchrow(
                    "SELECT i.request_hash, u.id, u.name, u.email FROM idempotency_keys i "
                    "JOIN users u ON u.id = i.user_id WHERE i.scope = $1 AND i.key = $2 "
                    "AND i.created_at > now() - make_interval(secs => $3)",
                    scope, key, ttl_s,
                )
                if seen is not None:
                    if bytes(seen["request_hash"]) != request_hash:
                        raise InvalidInput("this Idempotency-Key was used with a different request body")
                    return {k: seen[k] for k in ("id", "name", "email")}, True
                row = await conn.fetchrow(
                    f"INSERT INTO users (name, email) VALUES ($1, $2) RETURNING {_COLUMNS}", name, email
                )
                # The advisory lock is held and no live row exists: a
                # conflicting row can only be an expired one.
                await conn.execute(
                    "INSERT INTO idempotency_keys (scope, key, request_hash, user_id) VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT (scope, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, "
                    "user_id = EXCLUDED.user_id, created_at = now()",
                    scope, key, request_hash, row["id"],
                )
        except asyncpg.UniqueViolationError as exc:
            raise Conflict("a user with this email already exists") from exc
        return dict(row), False

    async def purge_idempotency_keys(self, ttl_s: int, batch: int = 1000) -> int:
        """Delete up to ``batch`` keys older than ``ttl_s``; returns how many."""
        async with self._conn() as conn:
            status = await conn.execute(
                "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY("
                "SELECT ctid FROM idempotency_keys WHERE created_at <= now() - make_interval(secs => $1) "
                "LIMIT $2))",
                ttl_s, batch,
            )
        return int(status.rsplit(" ", 1)[-1])

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


class ApiKeysRepository(_Repository):
    """API keys by their public id; the secret is only ever stored hashed."""

    async def find(self, key_id: str) -> dict[str, Any] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT id, name, secret_hash, revoked_at FROM api_keys WHERE id = $1", key_id
            )
        return dict(row) if row else None


async def insert_api_key(conn: asyncpg.Connection, key_id: str, name: str, secret_hash: bytes) -> None:
    await conn.execute("INSERT INTO api_keys (id, name, secret_hash) VALUES ($1, $2, $3)", key_id, name, secret_hash)


async def revoke_api_key(conn: asyncpg.Connection, key_id: str) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return status.endswith(" 1")


async def list_api_keys(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at")
    return [dict(r) for r in rows]
