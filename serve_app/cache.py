"""All cache logic: Redis access that fails open, single-flight loads, key layout.

Redis is a cache here, never the source of truth: any Redis error or timeout
is logged and treated as a miss, and after a failure Redis is skipped for a
short cool-down so a dead or hung Redis costs one timeout, not one per request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from serve_app.metrics import AppMetrics
from serve_app.settings import Settings
from serve_app.singleflight import MISS, SingleFlight

log = logging.getLogger(__name__)

# Stored for a looked-up id that does not exist, so a flood of requests for a
# missing user does not reach PostgreSQL either.
_MISSING = {"__missing__": True}

# KEYS[1]: where to store ARGV[1] for ARGV[2] seconds, only if KEYS[2] still
# holds ARGV[3] ("" = absent), the value read before the load started. A
# writer bumps KEYS[2] after its commit, so a load that raced it stores nothing.
_SET_IF_UNCHANGED = """
local cur = redis.call('GET', KEYS[2])
if (cur == false and ARGV[3] == '') or cur == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


def create_redis(settings: Settings, url: str, max_connections: int | None = None) -> Redis:
    """``max_connections``: redis-py 8's pool refuses past 100 by default
    (``MaxConnectionsError``, which the breaker takes for an outage); the
    ingress sizes it to what it admits at once."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        # redis-py retries by default; a retry against a hung server only
        # multiplies the wait.
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
        "decode_responses": False,
    }
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    if url.startswith("rediss://") and settings.redis_ssl_ca_certs:
        kwargs["ssl_ca_certs"] = str(settings.redis_ssl_ca_certs)
    return Redis.from_url(url, **kwargs)


# What a dead, hung or refusing Redis raises through redis-py.
REDIS_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, RedisError, OSError)


class Breaker:
    """After a Redis failure, skip Redis for a cool-down. Shared by everything
    using one Redis client (cache, rate limiter), so an outage costs one
    timeout per cool-down, not one per request and user."""

    def __init__(self, cooldown_s: float = 2.0, metrics: AppMetrics | None = None) -> None:
        self._cooldown = cooldown_s
        self._metrics = metrics or AppMetrics()
        self._skip_until = 0.0

    @property
    def closed(self) -> bool:
        return time.monotonic() >= self._skip_until

    def failed(self, op: str, exc: BaseException) -> None:
        self._metrics.dependency_error("redis")
        if self.closed:
            log.warning("redis %s failed (%s: %s); skipping Redis for %.1fs",
                        op, type(exc).__name__, exc, self._cooldown)
        self._skip_until = time.monotonic() + self._cooldown

    def succeeded(self) -> None:
        self._skip_until = 0.0


class Cache:
    def __init__(
        self, redis: Redis | None, prefix: str, breaker: Breaker | None = None, metrics: AppMetrics | None = None
    ) -> None:
        self._redis = redis
        self._metrics = metrics or AppMetrics()
        self._prefix = prefix
        self._breaker = breaker or Breaker(metrics=self._metrics)
        self._flights: SingleFlight[Any] = SingleFlight()
        self._set_if_unchanged = redis.register_script(_SET_IF_UNCHANGED) if redis is not None else None

    # -- state -------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self._redis is not None and self._breaker.closed

    def _failed(self, op: str, exc: BaseException) -> None:
        self._breaker.failed(op, exc)

    async def ping(self) -> bool:
        """Always asks Redis (readiness must notice recovery), and closes the breaker on success."""
        if self._redis is None:
            return False
        try:
            await self._redis.ping()
        except REDIS_ERRORS as exc:
            self._failed("ping", exc)
            return False
        self._breaker.succeeded()
        return True

    def key(self, *parts: object) -> str:
        return ":".join([self._prefix, *(str(p) for p in parts)])

    # -- primitives (fail open) --------------------------------------------
    async def get_json(self, key: str) -> Any | None:
        if not self.available:
            return None
        try:
            raw = await self._redis.get(key)  # type: ignore[union-attr]
        except REDIS_ERRORS as exc:
            self._failed("get", exc)
            return None
        return None if raw is None else json.loads(raw)

    async def set_json(self, key: str, value: Any, ttl_s: int, *, only_if_absent: bool = False) -> None:
        """``only_if_absent``: never replace a live entry (first writer wins)."""
        if not self.available or ttl_s <= 0:
            return
        try:
            await self._redis.set(  # type: ignore[union-attr]
                key, json.dumps(value, separators=(",", ":")), ex=ttl_s, nx=only_if_absent
            )
        except REDIS_ERRORS as exc:
            self._failed("set", exc)

    async def _get_two(self, key: str, other: str) -> tuple[Any | None, bytes | None]:
        """``key``'s value (JSON) and ``other``'s raw bytes, in one round trip."""
        if not self.available:
            return None, None
        try:
            raw, guard = await self._redis.mget(key, other)  # type: ignore[union-attr]
        except REDIS_ERRORS as exc:
            self._failed("get", exc)
            return None, None
        return (None if raw is None else json.loads(raw)), guard

    async def delete(self, *keys: str) -> None:
        if not self.available:
            return
        try:
            await self._redis.delete(*keys)  # type: ignore[union-attr]
        except REDIS_ERRORS as exc:
            self._failed("delete", exc)

    async def incr(self, key: str) -> None:
        if not self.available:
            return
        try:
            await self._redis.incr(key)  # type: ignore[union-attr]
        except REDIS_ERRORS as exc:
            self._failed("incr", exc)

    async def get_int(self, key: str) -> int:
        value = await self.get_json(key)
        return int(value) if value is not None else 0

    # -- read-through with single flight ---------------------------------------
    async def get_or_load(
        self, key: str, loader: Callable[[], Awaitable[Any]], ttl_s: int, *, cache_none: bool = False,
        name: str = "default", negative_guard: str | None = None,
    ) -> Any:
        """Return the cached value or load it once for all concurrent callers.

        Concurrent misses of one key in this process share one loader call, so a
        burst on a cold key costs one database query per replica; a caller that
        goes away does not fail the others (``SingleFlight``).

        ``cache_none`` stores "missing" too. With ``negative_guard`` (a key a
        writer bumps after committing), "missing" is stored only if the guard
        did not change during the load: a read that raced a create would
        otherwise hide the new row for the whole TTL.
        """
        if ttl_s <= 0:
            return await loader()
        guard: bytes | None = None

        async def probe() -> Any:
            nonlocal guard
            if cache_none and negative_guard is not None:
                # Read before the load: a create that commits after this
                # point bumps it, and then "missing" is not stored.
                cached, guard = await self._get_two(key, negative_guard)
            else:
                cached = await self.get_json(key)
            self._metrics.cache_lookup(name, hit=cached is not None)
            return MISS if cached is None else cached

        value, shared = await self._flights.probe_then_load(
            key, probe, lambda: self._load(key, loader, ttl_s, cache_none, negative_guard, guard)
        )
        if shared:
            self._metrics.cache_lookup(name, hit=True)
        return None if value == _MISSING else value

    async def _load(
        self, key: str, loader: Callable[[], Awaitable[Any]], ttl_s: int, cache_none: bool,
        negative_guard: str | None, guard: bytes | None,
    ) -> Any:
        value = await loader()
        if value is not None:
            await self.set_json(key, value, ttl_s)
        elif cache_none:
            if negative_guard is None:
                await self.set_json(key, _MISSING, ttl_s)
            else:
                await self._store_missing(key, ttl_s, negative_guard, guard)
            value = _MISSING
        return value

    async def _store_missing(self, key: str, ttl_s: int, guard_key: str, guard: bytes | None) -> None:
        if not self.available or self._set_if_unchanged is None:
            return
        try:
            await self._set_if_unchanged(
                keys=[key, guard_key], args=[json.dumps(_MISSING), ttl_s, b"" if guard is None else guard]
            )
        except REDIS_ERRORS as exc:
            self._failed("set", exc)

    # -- users key layout --------------------------------------------------
    def user_key(self, user_id: int) -> str:
        return self.key("user", user_id)

    def users_generation_key(self) -> str:
        return self.key("users", "gen")

    async def users_list_key(self, limit: int, offset: int) -> str:
        # Creating a user bumps the generation: every older list key becomes
        # unreachable at once (O(1)) and expires by its TTL.
        gen = await self.get_int(self.users_generation_key())
        return self.key("users", "list", gen, limit, offset)

    async def invalidate_after_create(self, user_id: int) -> None:
        await self.incr(self.users_generation_key())
        # A "missing" marker may be cached for the id that now exists.
        await self.delete(self.user_key(user_id))

    # -- answers key layout ------------------------------------------------
    def answer_key(self, model: str, question: str, params: dict[str, Any]) -> str:
        normalized = " ".join(question.split()).casefold()
        material = json.dumps({"m": model, "q": normalized, "p": params}, sort_keys=True)
        return self.key("answer", hashlib.sha256(material.encode()).hexdigest())

    # -- answers write policy ----------------------------------------------
    @staticmethod
    def answer_is_shareable(params: dict[str, Any], defaults: dict[str, Any], *, no_cache: bool) -> bool:
        """Whether an answer generated with ``params`` may be read from and
        written to the cache every caller shares.

        Never for a request that asked not to use the cache (it reads nothing,
        so it must not write either: that was a way to replace a popular
        answer at will). Otherwise only for answers any caller asking the same
        would accept: greedy ones (temperature 0: the model's one answer) and
        those at the deployment's own defaults (a sample from the
        distribution the operator chose). A sample at a caller's own
        temperature goes to that caller only. Writes are first-writer-wins
        (``only_if_absent``), so a shared answer cannot be re-rolled either.
        """
        if no_cache:
            return False
        return params.get("temperature") == 0 or params == defaults
