"""Everything a request may use, opened in the lifespan as one typed object.

The app reaches it as ``app.state.resources`` (Serve runs the lifespan but
does not copy lifespan state into each request, so the state dict of the
ASGI spec is not used); dependencies (``serve_app.http.deps``) and the
pipeline read it from there. No module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from serve_app import db
from serve_app.answers import Answers
from serve_app.auth import KeyVerifier
from serve_app.cache import Breaker, Cache, create_redis
from serve_app.config import AppArgs
from serve_app.http.policy import Admission
from serve_app.llm_client import LLMBackend
from serve_app.metrics import AppMetrics
from serve_app.ratelimit import FailedAuthThrottle, RateLimiter, TokenBudget
from serve_app.settings import Settings
from serve_app.users_repo import ApiKeysRepository, UsersRepository

log = logging.getLogger(__name__)

LLMFactory = Callable[[AppMetrics], LLMBackend]


class Migrations:
    """Applies migrations at startup and, while that fails, keeps retrying in
    the background (backing off to ``max_delay_s``), so a replica that
    starts while the database is down starts anyway and heals itself.

    Any failure is retried, not only "database unavailable": an unexpected
    one is logged with its traceback and shown in /readyz, never left to kill
    the retry loop silently (the replica would then answer 503 for ever)."""

    def __init__(self, migrate: Callable[[], Awaitable[object]], *, first_delay_s: float = 2.0,
                 max_delay_s: float = 30.0, on_done: Callable[[], Awaitable[None]] | None = None) -> None:
        self._migrate = migrate
        self._first_delay_s = first_delay_s
        self._max_delay_s = max_delay_s
        self._on_done = on_done
        self.done = False
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not await self._attempt():
            self._task = asyncio.create_task(self._retry())

    async def _attempt(self) -> bool:
        try:
            await self._migrate()
        except db.UNAVAILABLE_ERRORS as exc:
            self.last_error = f"database unavailable ({type(exc).__name__})"
            log.warning("migrations not applied yet: %s", self.last_error)
            return False
        except Exception as exc:
            self.last_error = type(exc).__name__
            log.exception("applying migrations failed; retrying")
            return False
        self.done = True
        self.last_error = None
        if self._on_done is not None:
            await self._on_done()
        return True

    async def _retry(self) -> None:
        delay = self._first_delay_s
        while True:
            await asyncio.sleep(delay)
            if await self._attempt():
                return
            delay = min(delay * 2, self._max_delay_s)

    @property
    def state(self) -> str:
        if self.done:
            return "applied"
        return f"pending: {self.last_error}" if self.last_error else "pending"

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()


class Maintenance:
    """Periodic upkeep of each replica: expired idempotency keys are deleted
    in bounded batches (every replica may run it; the deletes do not conflict)."""

    def __init__(self, repo: UsersRepository, ttl_s: int, interval_s: float = 600.0) -> None:
        self._repo = repo
        self._ttl_s = ttl_s
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def run_once(self) -> int:
        purged = 0
        while (n := await self._repo.purge_idempotency_keys(self._ttl_s)) > 0:
            purged += n
        return purged

    async def _loop(self) -> None:
        while True:
            # First round after one interval: a starting replica has better
            # uses for its connections.
            await asyncio.sleep(self._interval_s)
            try:
                if purged := await self.run_once():
                    log.info("purged %d expired idempotency keys", purged)
            except Exception:  # a failed round is retried at the next interval
                log.warning("purging expired idempotency keys failed", exc_info=True)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()


@dataclass(eq=False)
class Resources:
    args: AppArgs
    settings: Settings
    metrics: AppMetrics
    pool: asyncpg.Pool
    redis: Redis | None
    repo: UsersRepository
    keys: KeyVerifier
    cache: Cache
    limiter: RateLimiter
    throttle: FailedAuthThrottle
    migrations: Migrations
    maintenance: Maintenance
    admission: Admission
    llm: LLMBackend | None
    answers: Answers | None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, args: AppArgs, settings: Settings, metrics: AppMetrics,
                   llm_factory: LLMFactory | None) -> AsyncIterator[Resources]:
        dsn = settings.database_url
        if not dsn:
            raise RuntimeError("DATABASE_URL is not set (the run command sets it when it starts a local PostgreSQL)")
        # Read first: a replica whose image lacks the files fails to start with
        # MigrationsMissing instead of retrying as if the database were down.
        migration_files = db.load_migrations()
        pool = await db.create_pool(settings, dsn)
        # Each admitted request holds at most one connection at a time (its
        # rate limit, then its cache reads), plus background work.
        redis = (create_redis(settings, settings.redis_url, max_connections=args.in_flight_limit + 64)
                 if settings.redis_url else None)
        breaker = Breaker(settings.redis_breaker_cooldown_s, metrics)
        cache = Cache(redis if args.cache.enabled else None, settings.redis_key_prefix, breaker, metrics)
        limits = args.rate_limits
        buckets = {"users": limits.users, "questions": limits.questions, FailedAuthThrottle.BUCKET: limits.failed_auth}
        if limits.question_tokens is not None:
            buckets[TokenBudget.BUCKET] = limits.question_tokens
        limiter = RateLimiter(redis, settings.redis_key_prefix, breaker, metrics, buckets)
        repo = UsersRepository(pool, settings.db_acquire_timeout_s, metrics)
        maintenance = Maintenance(repo, args.idempotency_ttl_s)

        async def migrated() -> None:
            maintenance.start()

        migrations = Migrations(lambda: db.migrate(settings, dsn, migration_files), on_done=migrated)
        llm = llm_factory(metrics) if llm_factory else None
        answers = None
        if llm is not None and args.llm is not None:
            budget = TokenBudget(limiter, metrics) if limits.enabled and limits.question_tokens else None
            answers = Answers(llm, cache, budget, args.llm, args.cache.answer_ttl_s, metrics)
        resources = cls(
            args=args,
            settings=settings,
            metrics=metrics,
            pool=pool,
            redis=redis,
            repo=repo,
            keys=KeyVerifier(ApiKeysRepository(pool, settings.db_acquire_timeout_s, metrics),
                             args.auth.key_cache_ttl_s, metrics),
            cache=cache,
            limiter=limiter,
            throttle=FailedAuthThrottle(limiter, metrics),
            migrations=migrations,
            maintenance=maintenance,
            admission=Admission(args.in_flight_limit),
            llm=llm,
            answers=answers,
        )
        try:
            await migrations.start()
            if llm is not None:
                await llm.start()
            yield resources
        finally:
            if answers is not None:
                await answers.drain()
            if llm is not None:
                await llm.stop()
            await maintenance.stop()
            await migrations.stop()
            if redis is not None:
                await redis.aclose()
            await pool.close()
