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
from collections.abc import Iterator

from serve_app.request_id import current_request_id

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


def configure_logging(level: str = "INFO", *, under_serve: bool = False) -> None:
    logger = logging.getLogger("serve_app")
    logger.setLevel(level.upper())
    logger.propagate = False
    if under_serve:
        serve_handlers = logging.getLogger("ray.serve").handlers
        if serve_handlers:
            logger.handlers = list(serve_handlers)
            return
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)


# Serve's replica handlers sit on this logger (serve_app's logger shares them).
SERVE_LOGGER = "ray.serve"


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
