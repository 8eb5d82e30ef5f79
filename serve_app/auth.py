"""API keys: ``qa_<id>_<secret>``, sent as ``Authorization: Bearer <key>``.

The id is public and indexes the key; only a SHA-256 of the secret is stored.
The secret is 256 random bits, so a slow password hash would add nothing but
latency. Comparison is constant-time. Keys are created, listed and revoked
with ``python -m serve_app api-key``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from typing import Any

from serve_app import db
from serve_app.errors import DependencyUnavailable, Unauthorized
from serve_app.metrics import AppMetrics
from serve_app.settings import Settings
from serve_app.singleflight import SingleFlight
from serve_app.users_repo import ApiKeysRepository, insert_api_key, list_api_keys, revoke_api_key

_KEY = re.compile(r"^qa_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# Compared against when the id is unknown, so a miss costs the same as a hit.
_NO_HASH = bytes(32)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_key() -> tuple[str, str, bytes]:
    """A fresh key: (public id, the whole key to hand out once, hash to store)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, f"qa_{key_id}_{secret}", hash_secret(secret)


def parse_bearer(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    m = _KEY.match(token.strip()) if scheme.lower() == "bearer" else None
    return (m.group(1), m.group(2)) if m else None


class KeyUnverifiable(Unauthorized):
    """A key never verified here while the database is unreachable: a 401 like
    any other (no caller learns of the outage), but not the caller's failure."""


class KeyVerifier:
    """Verifies keys against PostgreSQL, remembering each lookup for ``ttl_s``
    per replica so auth is not a database query per request.

    - Valid keys and unknown (or revoked) ids are remembered apart, each
      bounded: a flood of made-up ids evicts only other made-up ids, never
      a real key.
    - Concurrent lookups of one id share one query (single flight), which
      also fills the caches whoever is still waiting for it.
    - While the database is unreachable, a key verified before stays valid;
      one never seen is refused with 401, never 503, so no unauthenticated
      caller learns that a dependency is down.
    - Re-verifying a known key waits at most ``refresh_wait_s`` (a healthy
      database answers in milliseconds, so a revocation still applies to the
      next request). Past that the database is hung or overloaded: the key is
      treated as during an outage and the lookup finishes in the background.
      Without this bound a request whose key entry just expired paid for two
      database timeouts (its key, then its own query): 6 s in a fault run
      while PostgreSQL was SIGSTOPped, against 3 s for one.
    """

    def __init__(
        self, repo: ApiKeysRepository, ttl_s: float, metrics: AppMetrics, max_entries: int = 10_000,
        max_unknown: int = 10_000, refresh_wait_s: float = 0.25,
    ) -> None:
        self._repo = repo
        self._ttl_s = ttl_s
        self._refresh_wait_s = refresh_wait_s
        self._metrics = metrics
        self._max_entries = max_entries
        self._max_unknown = max_unknown
        # key id -> (looked up at, secret hash)
        self._valid: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        # key id -> looked up at; absent or revoked
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lookups: SingleFlight[bytes | None] = SingleFlight()

    def needs_lookup(self, key_id: str) -> bool:
        """Whether verifying ``key_id`` now would query the database."""
        now = time.monotonic()
        valid = self._valid.get(key_id)
        if valid is not None and now - valid[0] < self._ttl_s:
            return False
        unknown = self._unknown.get(key_id)
        return unknown is None or now - unknown >= self._ttl_s

    async def verify(self, key: tuple[str, str]) -> str:
        """The key id of a valid key (``parse_bearer``'s result), else raises ``Unauthorized``."""
        key_id, secret = key
        stored = await self._stored_hash(key_id)
        if not hmac.compare_digest(stored or _NO_HASH, hash_secret(secret)) or stored is None:
            self._metrics.auth_failure("invalid")
            raise Unauthorized("invalid or revoked API key")
        return key_id

    async def _stored_hash(self, key_id: str) -> bytes | None:
        if not self.needs_lookup(key_id):
            valid = self._valid.get(key_id)
            return valid[1] if valid is not None else None
        flight, _ = self._lookups.start_or_join(key_id, lambda: self._lookup(key_id))
        known = self._valid.get(key_id)
        try:
            if known is None:
                return await self._lookups.wait(flight)
            return await asyncio.wait_for(self._lookups.wait(flight), self._refresh_wait_s)
        except (DependencyUnavailable, TimeoutError):
            if known is not None:
                return known[1]
            self._metrics.auth_failure("unverifiable")
            raise KeyUnverifiable("API key could not be verified, retry later") from None

    async def _lookup(self, key_id: str) -> bytes | None:
        """One database lookup; it updates the caches itself, so a lookup every
        caller stopped waiting for still refreshes the key."""
        row = await self._repo.find(key_id)
        now = time.monotonic()
        if row and row["revoked_at"] is None:
            stored = bytes(row["secret_hash"])
            self._unknown.pop(key_id, None)
            _remember(self._valid, key_id, (now, stored), self._max_entries)
            return stored
        self._valid.pop(key_id, None)
        _remember(self._unknown, key_id, now, self._max_unknown)
        return None


def _remember(cache: OrderedDict[str, Any], key: str, value: Any, max_entries: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > max_entries:
        cache.popitem(last=False)


# -- management (the CLI) -------------------------------------------------------
async def create_api_key(dsn: str, name: str, settings: Settings | None = None) -> str:
    """Create a key named ``name`` in the database at ``dsn``; returns the key,
    which is not stored anywhere and cannot be shown again."""
    settings = settings or Settings()
    await db.migrate(settings, dsn)
    key_id, key, digest = new_key()
    conn = await db.connect(settings, dsn)
    try:
        await insert_api_key(conn, key_id, name, digest)
    finally:
        await conn.close()
    return key


async def revoke(dsn: str, key_or_id: str, settings: Settings | None = None) -> bool:
    settings = settings or Settings()
    parsed = parse_bearer(f"Bearer {key_or_id}")
    key_id = parsed[0] if parsed else key_or_id
    conn = await db.connect(settings, dsn)
    try:
        return await revoke_api_key(conn, key_id)
    finally:
        await conn.close()


async def list_keys(dsn: str, settings: Settings | None = None) -> list[dict[str, Any]]:
    settings = settings or Settings()
    conn = await db.connect(settings, dsn)
    try:
        return await list_api_keys(conn)
    finally:
        await conn.close()
