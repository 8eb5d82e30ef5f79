"""Structured logging: one JSON object per line, carrying the request id.

Under Ray Serve our loggers write through Serve's own replica handlers, so the
lines land in the replica's log file (and the dashboard) with Serve's request
id, route and replica fields; elsewhere a plain JSON handler writes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import time
from collections.abc import Callable, Iterator
from typing import Any

from serve_app.request_id import current_request_id

# Serve's replica handlers sit on this logger (serve_app's logger shares them).
SERVE_LOGGER = "ray.serve"

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = current_request_id()
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


ACCESS_LOGGER = "serve_app.access"


class ReplicaFileJsonHandler(logging.Handler):
    """Writes records as JSON lines into the Serve replica's own log file,
    the same fields Serve's handler chain writes, at a fraction of its cost.

    Serve's chain (a ``MemoryHandler`` flushing each record to a
    ``RotatingFileHandler``, behind five filters) recomputes per record what
    cannot change in a replica's life (worker, node, actor, deployment,
    replica: a Ray runtime-context lookup each time), then formats the record
    twice (once in ``RotatingFileHandler.shouldRollover``, which also stats
    the file). For the access line, one per request, that was ~15% of the
    ingress's event-loop CPU on a cached read. Here the constant fields are
    taken once, from Serve's own filters run on a probe record, the request's
    (route, request id, application) are read from Serve's request context
    as its filter does, and each line is built and written once, to the same
    file (under the file handler's lock, rolled over by it), flushed at once
    as before: nothing waits in a buffer."""

    # Attributes the record gains from Serve's per-request filter.
    _REQUEST_FIELDS = ("route", "request_id", "application")

    def __init__(self, target: logging.handlers.RotatingFileHandler, static: dict[str, object],
                 request_context: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.target = target
        self.static = static
        self._request_context = request_context or _serve_request_context_getter()

    @classmethod
    def for_serve_replica(cls) -> ReplicaFileJsonHandler | None:
        """Built on the ``ray.serve`` logger's file handler, or None when that
        logger has no file handler behind a ``MemoryHandler`` (not in a
        Serve replica, or a Ray that sets its logging up otherwise) or has
        other handlers too (Serve's default mode also copies every line to
        the worker's stderr, ``RAY_SERVE_LOG_TO_STDERR``; its
        throughput-optimized mode, the run command's, does not): then the
        access line keeps Serve's chain, so no copy goes missing."""
        if _serve_logs_to_stderr():
            return None
        for handler in logging.getLogger(SERVE_LOGGER).handlers:
            target = getattr(handler, "target", None)
            if isinstance(handler, logging.handlers.MemoryHandler) and isinstance(
                target, logging.handlers.RotatingFileHandler
            ):
                probe = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, "", None, None)
                before = set(probe.__dict__)
                for f in handler.filters:
                    if not (f.filter(probe) if isinstance(f, logging.Filter) else f(probe)):  # type: ignore[operator]
                        return None  # a filter that drops our records: keep Serve's chain
                static = {k: v for k, v in probe.__dict__.items()
                          if k not in before and k not in cls._REQUEST_FIELDS and not k.startswith("_")}
                return cls(target, static)
        return None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._line(record)
            t = self.target
            t.acquire()
            try:
                if t.stream is None:  # closed meanwhile (as vLLM's dictConfig does): reopen, as it would
                    t.stream = t._open()
                if t.maxBytes > 0 and t.stream.tell() + len(line) >= t.maxBytes:
                    t.doRollover()
                t.stream.write(line)
                t.stream.flush()
            finally:
                t.release()
        except Exception:
            self.handleError(record)

    def _line(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "asctime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
            + f",{int(record.msecs):03d}",
            "levelname": record.levelname,
            "message": record.getMessage(),
            "filename": record.filename,
            "lineno": record.lineno,
            "process": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):  # Ray's private _ray_* ones are dropped, as Serve does
                out[key] = value
        out.update(self.static)
        ctx = self._request_context()
        if ctx is not None:
            if ctx.route:
                out["route"] = ctx.route
            if ctx.request_id:
                out["request_id"] = ctx.request_id
            if ctx.app_name:
                out["application"] = ctx.app_name
        if "request_id" not in out and (rid := current_request_id()):
            out["request_id"] = rid
        out["timestamp_ns"] = int(record.created * 1e9)
        if record.exc_info:
            out["exc_text"] = logging.Formatter().formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str) + "\n"


def _serve_logs_to_stderr() -> bool:
    """Whether Serve copies its replicas' lines to stderr (its own switch,
    read as its logging setup reads it; unknown: assume it does)."""
    try:
        from ray.serve._private import constants
    except ImportError:
        return True
    return bool(getattr(constants, "RAY_SERVE_LOG_TO_STDERR", True))


def _serve_request_context_getter() -> Callable[[], Any]:
    """Serve's per-request context (what its ``ServeContextFilter`` reads)."""
    try:
        from ray.serve.context import _get_serve_request_context
    except ImportError:
        return lambda: None
    return _get_serve_request_context


def configure_logging(level: str = "INFO", *, under_serve: bool = False) -> None:
    logger = logging.getLogger("serve_app")
    logger.setLevel(level.upper())
    logger.propagate = False
    if under_serve:
        serve_handlers = logging.getLogger(SERVE_LOGGER).handlers
        if serve_handlers:
            logger.handlers = list(serve_handlers)
            # One access line per request: written straight into the
            # replica's log file (ReplicaFileJsonHandler), not through
            # Serve's per-record chain; every other line still goes that way.
            access = logging.getLogger(ACCESS_LOGGER)
            fast = ReplicaFileJsonHandler.for_serve_replica()
            access.handlers = [fast] if fast is not None else []
            access.propagate = fast is None
            return
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)


@contextlib.contextmanager
def serve_log_handlers_kept(logger_names: tuple[str, ...] = (SERVE_LOGGER,)) -> Iterator[None]:
    """Gives the loggers' ``MemoryHandler``s their targets back when the block
    ends, if something closed them meanwhile: vLLM's ``dictConfig`` closes every
    handler of the process (see serve_app/pool_server.py). A ``MemoryHandler``
    without a target keeps its buffer, so nothing logged meanwhile is lost; the
    file handler behind it reopens its file at the next write."""
    saved = [
        (handler, handler.target)
        for name in logger_names
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, logging.handlers.MemoryHandler) and handler.target is not None
    ]
    try:
        yield
    finally:
        for handler, target in saved:
            if handler.target is None:
                handler.setTarget(target)


def redact_email(email: str) -> str:
    """``ada@example.com`` -> ``a***@example.com``: enough to correlate, not to identify."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"
