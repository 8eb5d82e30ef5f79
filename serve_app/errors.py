"""The error hierarchy and its single mapping to HTTP.

Every error leaves the service as the same JSON envelope carrying the request
id; nothing else in the code base builds an error response.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.request_id import current_request_id

log = logging.getLogger(__name__)

# Set per request by the access log, so the error code chosen deep in the
# stack reaches its log line and metrics.
_error_info: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("error_info", default=None)


def track_errors() -> dict[str, str]:
    holder: dict[str, str] = {}
    _error_info.set(holder)
    return holder


class AppError(Exception):
    status_code = 500
    code = "internal_error"
    message = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})


class InvalidInput(AppError):
    status_code = 422
    code = "invalid_input"
    message = "invalid input"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"
    message = "a valid API key is required (Authorization: Bearer <key>)"

    def __init__(self, message: str | None = None, **kw: Any) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="qa"'}, **kw)


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
    message = "rate limit exceeded, retry later"


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    message = "not found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    message = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    message = "request body too large"


class DependencyUnavailable(AppError):
    """A dependency (database, model) cannot serve now; the client should retry."""

    status_code = 503
    code = "unavailable"
    message = "service temporarily unavailable"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 2, **kw: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **kw)


class Overloaded(DependencyUnavailable):
    code = "overloaded"
    message = "too many requests in flight, retry shortly"


class DeadlineExceeded(AppError):
    status_code = 504
    code = "deadline_exceeded"
    message = "the answer took too long and was cancelled"


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
}


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    details: Any = None,
    retry_after_s: int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    rid = current_request_id()
    holder = _error_info.get()
    if holder is not None:
        holder["code"] = code
    body: dict[str, Any] = {
        "error": {"code": code, "message": message, "request_id": rid},
        # FastAPI clients of the replaced service read "detail".
        "detail": message,
    }
    if details is not None:
        body["error"]["details"] = details
    out_headers = dict(headers or {})
    if retry_after_s is not None:
        out_headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(body, status_code=status_code, headers=out_headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Echoing the offending input back could leak it into client logs and can
    # be huge; location and reason are enough to fix the request.
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("request failed: %s (%s)", exc.code, exc.message)
        return error_response(
            exc.status_code,
            exc.code,
            exc.message,
            details=exc.details,
            retry_after_s=exc.retry_after_s,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_input", "request validation failed", details=_validation_details(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))



class UnhandledErrorMiddleware:
    """Turns an unexpected exception into the 500 envelope (with the request id,
    which Starlette's outermost error middleware no longer knows)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error")
            if started:  # mid-stream: nothing sane left to send
                raise
            await error_response(500, "internal_error", "internal error")(scope, receive, send)
