"""Token buckets shared by every ingress replica through Redis: the request
rate per key or address, the generated-token budget of the question routes,
and the failed-authentication throttle per address.

One Lua script per decision: refill, take and store happen atomically in one
round trip, with Redis's clock, so replicas never race or disagree on time.
When Redis is unavailable the buckets fail open to per-replica buckets with
the same parameters (each replica then allows the full rate on its own) and
count those decisions in ``qa_rate_limiter_local_decisions``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from redis.asyncio import Redis

from serve_app.cache import REDIS_ERRORS, Breaker
from serve_app.config import Bucket
from serve_app.errors import RateLimited
from serve_app.metrics import AppMetrics

# KEYS[1]: the bucket. ARGV: rate per second, burst, cost (negative: give
# tokens back, never past the burst). Returns {allowed, tokens left (x1000),
# ms until `cost` tokens are there}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
if cost <= 0 or tokens >= cost then
  tokens = math.min(burst, tokens - cost)
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
local need = math.max(cost, 1)
if tokens < need then
  wait = math.ceil((need - tokens) / rate * 1000)
end
return {allowed, math.floor(tokens * 1000), wait}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float  # until the next request of this cost could pass
    reset_s: float  # until the bucket is full again
    local: bool  # decided by the fallback bucket

    def headers(self) -> dict[str, str]:
        # draft-ietf-httpapi-ratelimit-headers: limit, what is left, and
        # seconds until the quota is fully restored.
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }


class _LocalBuckets:
    """The same token bucket in process memory, for when Redis is away."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_entries = max_entries

    def take(self, key: str, bucket: Bucket, cost: float = 1) -> tuple[bool, float]:
        now = time.monotonic()
        tokens, ts = self._buckets.get(key, (float(bucket.burst), now))
        tokens = min(bucket.burst, tokens + (now - ts) * bucket.rate_per_s)
        allowed = cost <= 0 or tokens >= cost
        if allowed:
            tokens = min(bucket.burst, tokens - cost)
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_entries:
            self._buckets.popitem(last=False)
        return allowed, tokens


class RateLimiter:
    """Named token buckets (``buckets``: name -> parameters) per client."""

    def __init__(
        self, redis: Redis | None, prefix: str, breaker: Breaker, metrics: AppMetrics, buckets: dict[str, Bucket]
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._breaker = breaker
        self._metrics = metrics
        self._buckets = buckets
        self._local = _LocalBuckets()
        self._script = redis.register_script(_TAKE) if redis is not None else None
        self.last_local = 0.0  # monotonic time of the last fallback decision

    @property
    def mode(self) -> str:
        """``redis`` while decisions are shared, ``local`` when the last one
        (within a few seconds) had to fall back."""
        if self._redis is None or time.monotonic() - self.last_local < 5:
            return "local"
        return "redis"

    async def take(self, name: str, client: str, cost: float = 1) -> Decision:
        bucket = self._buckets[name]
        key = f"{self._prefix}:rl:{name}:{client}"
        if self._script is not None and self._breaker.closed:
            try:
                allowed, milli_tokens, wait_ms = await self._script(
                    keys=[key], args=[bucket.rate_per_s, bucket.burst, cost]
                )
            except REDIS_ERRORS as exc:
                self._breaker.failed("rate limit", exc)
            else:
                return self._decision(bucket, bool(allowed), milli_tokens / 1000, wait_ms / 1000, local=False)
        self.last_local = time.monotonic()
        self._metrics.limiter_local(name)
        allowed, tokens = self._local.take(key, bucket, cost)
        need = max(cost, 1)
        wait = 0.0 if tokens >= need else (need - tokens) / bucket.rate_per_s
        return self._decision(bucket, allowed, tokens, wait, local=True)

    async def give_back(self, name: str, client: str, amount: float) -> None:
        if amount > 0:
            await self.take(name, client, -amount)

    @staticmethod
    def _decision(bucket: Bucket, allowed: bool, tokens: float, wait_s: float, local: bool) -> Decision:
        return Decision(
            allowed=allowed,
            limit=bucket.burst,
            remaining=max(0, math.floor(tokens)),
            retry_after_s=wait_s,
            reset_s=max(0.0, bucket.burst - tokens) / bucket.rate_per_s,
            local=local,
        )


class FailedAuthThrottle:
    """Failed API-key checks per client address, so forged keys cannot buy a
    database lookup each.

    Only a failure touches Redis (one bucket take). Once an address's bucket is
    empty, this replica remembers until when, and ``blocked_for`` answers from
    memory: the request pipeline asks it before any lookup, at no cost to the
    requests of everyone else.
    """

    BUCKET = "failed_auth"

    def __init__(self, limiter: RateLimiter, metrics: AppMetrics, max_entries: int = 50_000) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._blocked: OrderedDict[str, float] = OrderedDict()  # address -> monotonic time it is free again
        self._max_entries = max_entries

    def blocked_for(self, address: str) -> float:
        """Seconds this address stays blocked (0: not blocked)."""
        until = self._blocked.get(address)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[address]
            return 0.0
        return left

    async def failed(self, address: str) -> None:
        decision = await self._limiter.take(self.BUCKET, address)
        # Blocked as soon as the bucket cannot pay for the next failure: at
        # most `burst` lookups, then one per refilled token.
        if decision.retry_after_s > 0:
            self._blocked[address] = time.monotonic() + decision.retry_after_s
            self._blocked.move_to_end(address)
            while len(self._blocked) > self._max_entries:
                self._blocked.popitem(last=False)


@dataclass
class Reservation:
    client: str
    tokens: int
    settled: bool = False


class TokenBudget:
    """Generated tokens per key or address on the question routes, beside the
    request bucket: an answer reserves its ``max_tokens`` before it reaches
    the engine (429 when the budget cannot cover it) and gives back what it
    did not generate. A caller's answers in flight can therefore never
    exceed the budget, whatever their ``max_tokens`` or ``ignore_eos``."""

    BUCKET = "question_tokens"

    def __init__(self, limiter: RateLimiter, metrics: AppMetrics) -> None:
        self._limiter = limiter
        self._metrics = metrics

    async def reserve(self, client: str, tokens: int) -> Reservation:
        decision = await self._limiter.take(self.BUCKET, client, tokens)
        if not decision.allowed:
            self._metrics.rate_limited(self.BUCKET)
            raise RateLimited(
                f"generated-token budget exhausted: {tokens} tokens requested, {decision.remaining} left",
                retry_after_s=max(1, math.ceil(decision.retry_after_s)),
            )
        return Reservation(client, tokens)

    async def settle(self, reservation: Reservation, used: int) -> None:
        """Give back the reserved tokens that were not generated (once)."""
        if reservation.settled:
            return
        reservation.settled = True
        await self._limiter.give_back(self.BUCKET, reservation.client, reservation.tokens - max(0, used))
