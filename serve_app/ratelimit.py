"""Token-bucket rate limits shared by every ingress replica through Redis.

One Lua script per decision: refill, take and store happen atomically in one
round trip, with Redis's clock, so replicas never race or disagree on time.
When Redis is unavailable the limiter fails open to a per-replica bucket with
the same parameters (each replica then allows the full rate on its own) and
counts those decisions in ``qa_rate_limiter_local_decisions``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from redis.asyncio import Redis

from serve_app.cache import REDIS_ERRORS, Breaker
from serve_app.config import Bucket
from serve_app.metrics import AppMetrics

# KEYS[1]: the bucket. ARGV: rate per second, burst. Returns {allowed,
# tokens left (x1000), ms until one token is back}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
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
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) / rate * 1000)
end
return {allowed, math.floor(tokens * 1000), wait}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float  # until the next token
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

    def take(self, key: str, bucket: Bucket) -> tuple[bool, float]:
        now = time.monotonic()
        tokens, ts = self._buckets.get(key, (float(bucket.burst), now))
        tokens = min(bucket.burst, tokens + (now - ts) * bucket.rate_per_s)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_entries:
            self._buckets.popitem(last=False)
        return allowed, tokens


class RateLimiter:
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

    async def take(self, group: str, client: str) -> Decision:
        bucket = self._buckets[group]
        key = f"{self._prefix}:rl:{group}:{client}"
        if self._script is not None and self._breaker.closed:
            try:
                allowed, milli_tokens, wait_ms = await self._script(keys=[key], args=[bucket.rate_per_s, bucket.burst])
            except REDIS_ERRORS as exc:
                self._breaker.failed("rate limit", exc)
            else:
                return self._decision(bucket, bool(allowed), milli_tokens / 1000, wait_ms / 1000, local=False)
        self.last_local = time.monotonic()
        self._metrics.limiter_local(group)
        allowed, tokens = self._local.take(key, bucket)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / bucket.rate_per_s
        return self._decision(bucket, allowed, tokens, wait, local=True)

    @staticmethod
    def _decision(bucket: Bucket, allowed: bool, tokens: float, wait_s: float, local: bool) -> Decision:
        return Decision(
            allowed=allowed,
            limit=bucket.burst,
            remaining=max(0, math.floor(tokens)),
            retry_after_s=wait_s,
            reset_s=(bucket.burst - tokens) / bucket.rate_per_s,
            local=local,
        )
