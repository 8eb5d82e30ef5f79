"""The HTTP surface: a FastAPI app (also runnable under plain uvicorn) and the
Ray Serve ingress deployment that hosts it.

Resources are opened in the lifespan and reached through dependencies; the
deployment graph itself is built in ``serve_app.app``.
"""

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app import db
from serve_app.access import AccessLogMiddleware
from serve_app.auth import KeyVerifier
from serve_app.cache import Breaker, Cache, create_redis
from serve_app.config import AppArgs
from serve_app.errors import (
    AppError,
    DependencyUnavailable,
    InvalidInput,
    NotFound,
    UnhandledErrorMiddleware,
    install_error_handlers,
)
from serve_app.guard import AdmissionMiddleware, GuardMiddleware, route_group
from serve_app.limits import ErrorEnvelope, InputLimitsMiddleware, document_error_responses
from serve_app.llm_client import LLMBackend
from serve_app.metrics import AppMetrics
from serve_app.ratelimit import RateLimiter
from serve_app.request_id import RequestIdMiddleware
from serve_app.schemas import Health, QuestionRequest, QuestionResponse, Readiness, User, UserCreate
from serve_app.settings import Settings, get_settings
from serve_app.users_repo import ApiKeysRepository, UsersRepository

log = logging.getLogger(__name__)

LLMFactory = Callable[[AppMetrics], LLMBackend]


class Migrations:
    """Applies migrations at startup; retries in the background while the
    database is unreachable so the replica starts anyway and heals itself."""

    def __init__(self, settings: Settings, dsn: str) -> None:
        self._settings = settings
        self._dsn = dsn
        # Read now: a replica whose image lacks the files fails to start with
        # MigrationsMissing instead of answering 503 for ever.
        self._migrations = db.load_migrations()
        self.done = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not await self._attempt():
            self._task = asyncio.create_task(self._retry())

    async def _attempt(self) -> bool:
        try:
            await db.migrate(self._settings, self._dsn, self._migrations)
        except db.UNAVAILABLE_ERRORS as exc:
            log.warning("migrations not applied yet: database unavailable (%s)", type(exc).__name__)
            return False
        self.done = True
        return True

    async def _retry(self) -> None:
        while True:
            await asyncio.sleep(2)
            if await self._attempt():
                return

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()


def create_app(
    args: AppArgs, settings: Settings, llm_factory: LLMFactory | None = None, *, behind_serve_proxy: bool = False
) -> FastAPI:
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (the run command sets it when it starts a local PostgreSQL)")

    metrics = AppMetrics()
    # Filled by the lifespan. Ray Serve runs the lifespan but, unlike uvicorn,
    # does not copy its state into each request; _LifespanState does.
    resources: dict[str, Any] = {"metrics": metrics}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        pool = await db.create_pool(settings, settings.database_url)
        redis = create_redis(settings, settings.redis_url) if settings.redis_url else None
        breaker = Breaker(settings.redis_breaker_cooldown_s, metrics)
        cache = Cache(redis if args.cache.enabled else None, settings.redis_key_prefix, breaker, metrics)
        limits = args.rate_limits
        limiter = RateLimiter(redis, settings.redis_key_prefix, breaker, metrics,
                              {"users": limits.users, "questions": limits.questions})
        migrations = Migrations(settings, settings.database_url)
        await migrations.start()
        llm = llm_factory(metrics) if llm_factory else None
        if llm is not None:
            await llm.start()
        resources.update(
            repo=UsersRepository(pool, settings.db_acquire_timeout_s, metrics),
            auth=KeyVerifier(ApiKeysRepository(pool, settings.db_acquire_timeout_s, metrics),
                             args.auth.key_cache_ttl_s, metrics),
            cache=cache,
            limiter=limiter,
            migrations=migrations,
            llm=llm,
        )
        try:
            yield resources
        finally:
            if llm is not None:
                await llm.stop()
            await migrations.stop()
            if redis is not None:
                await redis.aclose()
            await pool.close()

    app = FastAPI(
        title="Q&A service",
        version="1.0.0",
        lifespan=lifespan,
        docs_url="/docs" if args.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if args.docs_enabled else None,
    )
    # Added first = innermost: unexpected errors become the envelope while the
    # request id is still known.
    app.add_middleware(UnhandledErrorMiddleware)
    # Outer to inner: who (auth, rate limit), then how many at once.
    app.add_middleware(AdmissionMiddleware, limit=args.in_flight_limit)
    app.add_middleware(GuardMiddleware, args=args)
    app.add_middleware(_LifespanState, resources=resources)
    app.add_middleware(InputLimitsMiddleware, limits=args.limits)
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware, behind_serve_proxy=behind_serve_proxy)
    install_error_handlers(app)
    _add_routes(app, args, settings)
    document_error_responses(app, guarded=lambda path: route_group(path) is not None)
    return app


class _LifespanState:
    def __init__(self, app: ASGIApp, resources: dict[str, Any]) -> None:
        self.app = app
        self.resources = resources

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["state"] = {**self.resources, **scope.get("state", {})}
        await self.app(scope, receive, send)


# -- dependencies ---------------------------------------------------------------
async def get_cache(request: Request) -> Cache:
    return request.state.cache


async def get_repo(request: Request) -> UsersRepository:
    if not request.state.migrations.done:
        raise DependencyUnavailable("database schema is not ready yet")
    return request.state.repo


async def get_llm(request: Request) -> LLMBackend:
    llm = request.state.llm
    if llm is None:
        raise NotFound("this deployment serves no model")
    return llm


CacheDep = Annotated[Cache, Depends(get_cache)]
RepoDep = Annotated[UsersRepository, Depends(get_repo)]
LLMDep = Annotated[LLMBackend, Depends(get_llm)]


def _no_cache(request: Request) -> bool:
    return "no-cache" in request.headers.get("cache-control", "").lower()


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _add_routes(app: FastAPI, args: AppArgs, settings: Settings) -> None:
    ttl = args.cache

    @app.get("/", tags=["meta"])
    async def root() -> dict[str, str]:
        return {"company": settings.company_name, "status": "running"}

    @app.get("/healthz", response_model=Health, tags=["meta"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, tags=["meta"], responses={503: {"description": "not ready"}})
    async def readyz(request: Request) -> Any:
        state = request.state
        checks: dict[str, Any] = {}
        ready = True
        try:
            await state.repo.ping(settings.db_command_timeout_s)
            checks["postgres"] = "ok"
        except AppError:
            checks["postgres"] = "unavailable"
            ready = False
        checks["migrations"] = "applied" if state.migrations.done else "pending"
        ready = ready and state.migrations.done
        if state.cache is None or not args.cache.enabled or settings.redis_url is None:
            checks["redis"] = "disabled"
        else:
            checks["redis"] = "ok" if await state.cache.ping() else "degraded"
        if args.rate_limits.enabled:
            # "local": Redis is away and each replica limits on its own.
            checks["rate_limiter"] = state.limiter.mode
        if state.llm is not None:
            pools = state.llm.status()
            checks["llm"] = pools
        body = {"status": "ready" if ready else "unavailable", "checks": checks}
        if not ready:
            return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
        return body

    # -- users ----------------------------------------------------------------
    @app.post("/users", response_model=User, tags=["users"], responses={409: {"description": "email taken"}})
    async def create_user(
        body: UserCreate,
        request: Request,
        repo: RepoDep,
        cache: CacheDep,
        idempotency_key: Annotated[
            str | None,
            Header(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                   description="Retrying with the same key returns the first result instead of a duplicate."),
        ] = None,
    ) -> Any:
        if idempotency_key is None:
            user = await repo.create(body.name, str(body.email))
        else:
            digest = hashlib.sha256(body.model_dump_json().encode()).digest()
            principal = request.state.principal
            # Keys scope retries per caller; an address is no identity to scope by.
            scope = principal if principal.startswith("key:") else "anonymous"
            user, replayed = await repo.create_idempotent(
                body.name, str(body.email), scope=scope, key=idempotency_key, request_hash=digest
            )
            if replayed:
                return JSONResponse(user, headers={"Idempotent-Replayed": "true"})
        await cache.invalidate_after_create(user["id"])
        return user

    @app.get("/users", response_model=list[User], tags=["users"])
    async def list_users(
        repo: RepoDep,
        cache: CacheDep,
        limit: Annotated[int, Query(ge=1, le=args.users_max_limit)] = args.users_default_limit,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> Any:
        key = await cache.users_list_key(limit, offset)
        return await cache.get_or_load(key, lambda: repo.list(limit, offset), ttl.users_list_ttl_s, name="users_list")

    @app.get("/users/{user_id}", response_model=User, tags=["users"], responses={404: {"description": "no such user"}})
    async def get_user(user_id: Annotated[int, _user_id_path()], repo: RepoDep, cache: CacheDep) -> Any:
        user = await cache.get_or_load(
            cache.user_key(user_id), lambda: repo.get(user_id), ttl.user_ttl_s, cache_none=True, name="user"
        )
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user

    if args.llm is None:
        return
    llm_args = args.llm

    # -- questions --------------------------------------------------------------
    def _params(body: QuestionRequest) -> dict[str, Any]:
        return {
            "max_tokens": body.max_tokens or llm_args.default_max_tokens,
            "temperature": llm_args.default_temperature if body.temperature is None else body.temperature,
        }

    async def _prepare(body: QuestionRequest, request: Request, cache: Cache) -> tuple[dict[str, Any], str, Any]:
        """The engine request, its answer-cache key and the cached answer, if any."""
        if llm_args.log_question_text:
            log.info("question: %s", body.question[:200])
        params = _params(body)
        key = cache.answer_key(llm_args.default_model, body.question, params)
        hit = None
        if not _no_cache(request):
            hit = await cache.get_json(key)
            request.state.metrics.cache_lookup("answer", hit=hit is not None)
        return {"messages": [{"role": "user", "content": body.question}], **params}, key, hit

    @app.post("/question", response_model=QuestionResponse, tags=["questions"])
    async def question(body: QuestionRequest, request: Request, llm: LLMDep, cache: CacheDep) -> Any:
        model = llm_args.default_model
        chat, key, hit = await _prepare(body, request, cache)
        if hit is not None:
            return {**hit, "question": body.question, "cached": True}
        result = await llm.chat(model, chat, llm_args.request_deadline_s)
        choice = result.body["choices"][0]
        answer = {
            "question": body.question,
            "answer": choice["message"]["content"] or "",
            "model": model,
            "usage": result.body.get("usage"),
        }
        request.state.metrics.completion_tokens(model, result.pool, (answer["usage"] or {}).get("completion_tokens", 0))
        await cache.set_json(key, answer, ttl.answer_ttl_s)
        return JSONResponse({**answer, "cached": False}, headers={"X-Served-By-Pool": result.pool})

    @app.post(
        "/question/stream",
        tags=["questions"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "token events, then done"}},
    )
    async def question_stream(body: QuestionRequest, request: Request, llm: LLMDep, cache: CacheDep) -> Any:
        model = llm_args.default_model
        chat, key, hit = await _prepare(body, request, cache)
        if hit is not None:

            async def replay() -> AsyncIterator[str]:
                yield _sse("token", {"text": hit["answer"]})
                yield _sse("done", {**hit, "question": body.question, "cached": True})

            return StreamingResponse(replay(), media_type="text/event-stream")

        started = time.perf_counter()
        stream = await llm.chat_stream(model, chat, llm_args.request_deadline_s)
        metrics = request.state.metrics

        async def events() -> AsyncIterator[str]:
            parts: list[str] = []
            usage = None
            try:
                async for line in stream.chunks:
                    payload = line.removeprefix("data: ").strip()
                    if not payload or payload == "[DONE]":
                        continue
                    chunk = json.loads(payload)
                    if "error" in chunk and "choices" not in chunk:
                        yield _sse("error", {"error": chunk["error"]})
                        return
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            if not parts:
                                metrics.first_token(model, stream.pool, time.perf_counter() - started)
                            parts.append(text)
                            yield _sse("token", {"text": text})
            except AppError as exc:
                yield _sse("error", {"error": {"code": exc.code, "message": exc.message}})
                return
            answer = {"question": body.question, "answer": "".join(parts), "model": model, "usage": usage}
            metrics.completion_tokens(model, stream.pool, (usage or {}).get("completion_tokens", 0))
            await cache.set_json(key, answer, ttl.answer_ttl_s)
            yield _sse("done", {**answer, "cached": False})

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Served-By-Pool": stream.pool, "X-Accel-Buffering": "no"},
        )

    # -- OpenAI-compatible ----------------------------------------------------
    @app.get("/v1/models", tags=["openai"])
    async def models(llm: LLMDep) -> dict[str, Any]:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "qa-service"} for m in llm.model_ids()
            ],
        }

    @app.post(
        "/v1/chat/completions",
        tags=["openai"],
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _CHAT_SCHEMA}}}},
        responses={
            200: {"content": {"application/json": {}, "text/event-stream": {}},
                  "description": "an OpenAI chat completion, or its chunks as SSE when stream is true"},
            404: {"description": "unknown model"},
            503: {"model": ErrorEnvelope, "description": "no pool can serve now"},
            504: {"model": ErrorEnvelope, "description": "past the deadline"},
        },
    )
    async def chat_completions(request: Request, llm: LLMDep) -> Any:
        body = await _json_object(request)
        model = body.get("model") or llm_args.default_model
        if not isinstance(model, str):
            raise InvalidInput("model must be a string")
        if model not in llm.model_ids():
            raise NotFound(f"unknown model {model!r}; see GET /v1/models")
        if body.get("stream"):
            stream = await llm.chat_stream(model, _chat_fields(body), llm_args.request_deadline_s)

            async def relay() -> AsyncIterator[str]:
                done = False
                try:
                    async for line in stream.chunks:
                        done = done or line.strip() == "data: [DONE]"
                        yield line
                except AppError as exc:
                    yield "data: " + json.dumps({"error": {"code": exc.code, "message": exc.message}}) + "\n\n"
                if not done:
                    yield "data: [DONE]\n\n"

            return StreamingResponse(
                relay(), media_type="text/event-stream", headers={"X-Served-By-Pool": stream.pool}
            )
        result = await llm.chat(model, _chat_fields(body), llm_args.request_deadline_s)
        return JSONResponse(result.body, headers={"X-Served-By-Pool": result.pool})


# What the OpenAPI promises of the OpenAI route's body (the route itself reads
# it as raw JSON and passes vLLM's own validation on).
_CHAT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                    "content": {"type": "string"},
                },
            },
        },
        "model": {"type": "string"},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    },
}


def _user_id_path() -> Any:
    from fastapi import Path as PathParam

    # BIGSERIAL range: larger numbers cannot exist, and would overflow asyncpg.
    return PathParam(ge=1, le=9_223_372_036_854_775_807)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
        # Lone surrogates ("\ud800") parse, then fail wherever text is encoded.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except ValueError as exc:  # UnicodeError is a ValueError
        raise InvalidInput("body must be a JSON object of valid Unicode text") from exc
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    return body


def _chat_fields(body: dict[str, Any]) -> dict[str, Any]:
    # The model and stream flags are set by the backend per pool.
    return {k: v for k, v in body.items() if k not in ("model", "stream", "stream_options", "request_id")}


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """Serve ingress; the app is built after __init__ so it can close over the
    validated args and the LLM pool handles bound in ``serve_app.app``."""

    def __init__(self, args: dict[str, Any], llm_pools: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self._args = AppArgs.model_validate(args)
        self._llm_pools = llm_pools or {}

    def __serve_build_asgi_app__(self) -> FastAPI:
        from serve_app.llm_client import Pool, ServeLLMBackend
        from serve_app.logs import configure_logging

        settings = get_settings()
        configure_logging(settings.log_level, under_serve=True)
        factory: LLMFactory | None = None
        if self._args.llm is not None and self._llm_pools:
            llm_args = self._args.llm
            app_name = serve.get_replica_context().app_name

            def factory(metrics: AppMetrics) -> LLMBackend:
                pools = {
                    model: [
                        Pool(
                            name=p["name"],
                            deployment_name=p["deployment"],
                            handle=p["handle"],
                            can_scale_from_zero=p["scale_from_zero"],
                        )
                        for p in sorted(pools, key=lambda p: _preference(llm_args.pool_preference, p["name"]))
                    ]
                    for model, pools in self._llm_pools.items()
                }
                return ServeLLMBackend(
                    pools,
                    app_name=app_name,
                    wake_idle_pools=llm_args.wake_idle_pools,
                    refresh_s=llm_args.pool_status_refresh_s,
                    metrics=metrics,
                )

        return create_app(self._args, settings, factory, behind_serve_proxy=True)


def _preference(order: list[str], name: str) -> int:
    return order.index(name) if name in order else len(order)
