"""``create_app``: the FastAPI app of the service (under Serve, uvicorn or a
test client alike). The whole request pipeline, in order:

    RequestIdMiddleware        the id every log line, error body and engine call carries
    AccessLogMiddleware        one access line and metrics per request, by route template
    ErrorEnvelopeMiddleware    the catch-all: anything raised below becomes the 500 envelope
      (Starlette's exception middleware: AppError and validation errors -> their envelope)
      (the router picks the route)
    PolicyGate (per route)     pre-auth throttle -> auth -> rate limit -> admission -> body limits
    the route                  FastAPI parses the body, solves the dependencies, runs the handler

Starlette's ServerErrorMiddleware stays outermost, with the envelope as its
handler, for errors of the first two middlewares themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware import Middleware

from serve_app.config import AppArgs
from serve_app.http import policy
from serve_app.http.errors import install_handlers
from serve_app.http.middleware import AccessLogMiddleware, ErrorEnvelopeMiddleware, RequestIdMiddleware
from serve_app.http.resources import LLMFactory, Resources
from serve_app.http.routes import health, openai, questions, users
from serve_app.metrics import AppMetrics
from serve_app.settings import Settings


def middleware(metrics: AppMetrics, *, behind_serve_proxy: bool = False) -> list[Middleware]:
    """The pipeline's middlewares, outermost first (see the module docstring)."""
    return [
        Middleware(RequestIdMiddleware, behind_serve_proxy=behind_serve_proxy),
        Middleware(AccessLogMiddleware, metrics=metrics),
        Middleware(ErrorEnvelopeMiddleware),
    ]


def create_app(
    args: AppArgs, settings: Settings, llm_factory: LLMFactory | None = None, *, behind_serve_proxy: bool = False
) -> FastAPI:
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (the run command sets it when it starts a local PostgreSQL)")
    metrics = AppMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        flusher = asyncio.create_task(metrics.flush_periodically())
        try:
            async with Resources.open(args, settings, metrics, llm_factory) as resources:
                app.state.resources = resources
                # Again, for routes added after create_app: none escapes its gate.
                policy.apply(app, args)
                yield
        finally:
            flusher.cancel()  # its last flush hands over what is pending
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    app = FastAPI(
        title="Q&A service",
        version="1.0.0",
        lifespan=lifespan,
        # Served by the health router, with a declared (public) policy.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        middleware=middleware(metrics, behind_serve_proxy=behind_serve_proxy),
    )
    install_handlers(app)
    app.include_router(health.router(args, settings))
    app.include_router(users.router(args))
    if args.llm is not None:
        app.include_router(questions.router(args))
        app.include_router(openai.router(args))
    policy.apply(app, args)
    return app
