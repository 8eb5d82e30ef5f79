"""Liveness, readiness, the root and the API docs: open to everyone, touching
as little as they can."""

# No "from __future__ import annotations": FastAPI must see the real types of
# parameters built from args (caps) when the routes are declared.

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from serve_app.config import AppArgs
from serve_app.errors import AppError
from serve_app.http.deps import ResourcesDep
from serve_app.http.policy import Protection
from serve_app.schemas import Health, Readiness
from serve_app.settings import Settings

PUBLIC = Protection("public")


def router(args: AppArgs, settings: Settings) -> APIRouter:
    r = APIRouter(tags=["meta"], route_class=PUBLIC.route_class(), responses=PUBLIC.responses())

    @r.get("/")
    async def root() -> dict[str, str]:
        return {"company": settings.company_name, "status": "running"}

    @r.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok")

    @r.get("/readyz", response_model=Readiness, responses={503: {"description": "not ready"}})
    async def readyz(res: ResourcesDep) -> Any:
        checks: dict[str, Any] = {}
        ready = True
        try:
            await res.repo.ping(settings.db_command_timeout_s)
            checks["postgres"] = "ok"
        except AppError:
            checks["postgres"] = "unavailable"
            ready = False
        checks["migrations"] = res.migrations.state
        ready = ready and res.migrations.done
        if not args.cache.enabled or res.redis is None:
            checks["redis"] = "disabled"
        else:
            checks["redis"] = "ok" if await res.cache.ping() else "degraded"
        if args.rate_limits.enabled:
            # "local": Redis is away and each replica limits on its own.
            checks["rate_limiter"] = res.limiter.mode
        if res.llm is not None:
            checks["llm"] = res.llm.status()
        body = {"status": "ready" if ready else "unavailable", "checks": checks}
        if not ready:
            return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
        return body

    if args.docs_enabled:

        @r.get("/openapi.json", include_in_schema=False)
        async def openapi(request: Request) -> JSONResponse:
            schema = request.app.openapi()
            # Under a Serve route_prefix the document must say where it lives.
            root_path = request.scope.get("root_path", "").rstrip("/")
            if root_path:
                schema = {**schema, "servers": [{"url": root_path}]}
            return JSONResponse(schema)

        @r.get("/docs", include_in_schema=False)
        async def docs(request: Request) -> HTMLResponse:
            root_path = request.scope.get("root_path", "").rstrip("/")
            return get_swagger_ui_html(openapi_url=f"{root_path}/openapi.json", title="Q&A service - Swagger UI")

    return r
