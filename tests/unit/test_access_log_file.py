"""The access line's own handler under Serve (serve_app.logs.ReplicaFileJsonHandler):
the same file and fields as Serve's handler chain, written at once."""

from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path

import pytest

from serve_app import request_id
from serve_app.logs import ACCESS_LOGGER, SERVE_LOGGER, ReplicaFileJsonHandler, configure_logging


class _Static(logging.Filter):
    """Stands for Serve's core-context and component filters: fields constant over the replica's life."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.calls += 1
        record.worker_id = "w1"
        record.deployment = "qa_Ingress"
        record.replica = "r1"
        record.component_name = "replica"
        return True


def _drop_serve_access(record: logging.LogRecord) -> bool:  # Serve's filter with enable_access_log false
    return not getattr(record, "serve_access_log", False)


@pytest.fixture
def serve_like(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A ``ray.serve`` logger set up as Serve 2.60 sets a replica's (MemoryHandler
    of capacity 1 before a RotatingFileHandler), restored afterwards with ours."""
    # As in the run command's mode (throughput-optimized): no copy of each line to
    # stderr. First: importing ray.serve sets its logger's default handlers up.
    monkeypatch.setattr("ray.serve._private.constants.RAY_SERVE_LOG_TO_STDERR", False)
    names = (SERVE_LOGGER, "serve_app", ACCESS_LOGGER)
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate, logging.getLogger(n).level)
             for n in names}
    path = tmp_path / "replica_qa_Ingress_r1.log"
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=4000, backupCount=1)
    memory = logging.handlers.MemoryHandler(capacity=1, target=file_handler, flushLevel=logging.ERROR)
    static = _Static()
    memory.addFilter(static)
    memory.addFilter(_drop_serve_access)
    file_handler.setFormatter(logging.Formatter("chain %(message)s %(deployment)s"))
    serve = logging.getLogger(SERVE_LOGGER)
    serve.handlers = [memory]
    try:
        yield path, static
    finally:
        file_handler.close()
        for n, (handlers, propagate, level) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_access_lines_go_straight_to_the_replica_file_with_serves_fields(serve_like) -> None:
    path, static = serve_like
    configure_logging("INFO", under_serve=True)
    access = logging.getLogger(ACCESS_LOGGER)
    assert [type(h) for h in access.handlers] == [ReplicaFileJsonHandler] and not access.propagate
    probed = static.calls  # the constant fields were taken once, at configure time
    token = request_id.set_request_id("rid-1")
    try:
        for _ in range(3):
            access.info("%s %s %s", "GET", "/users/{user_id}", 200,
                        extra={"http_route": "/users/{user_id}", "status": 200, "latency_ms": 1.5})
    finally:
        request_id.reset_request_id(token)
    # Each line is in the file as soon as it is logged (no buffer), without Serve's per-record filters.
    lines = [json.loads(x) for x in _lines(path)]
    assert len(lines) == 3 and static.calls == probed
    line = lines[0]
    assert line["message"] == "GET /users/{user_id} 200" and line["levelname"] == "INFO"
    assert (line["http_route"], line["status"], line["latency_ms"]) == ("/users/{user_id}", 200, 1.5)
    assert (line["worker_id"], line["deployment"], line["replica"], line["component_name"]) == (
        "w1", "qa_Ingress", "r1", "replica")
    assert line["request_id"] == "rid-1" and isinstance(line["timestamp_ns"], int)
    # Every other serve_app line still goes through Serve's chain, to the same file.
    logging.getLogger("serve_app.http").warning("something else")
    assert _lines(path)[-1] == "chain something else qa_Ingress"


def test_the_file_rolls_over_as_serves_handler_would(serve_like) -> None:
    path, _ = serve_like
    configure_logging("INFO", under_serve=True)
    access = logging.getLogger(ACCESS_LOGGER)
    for i in range(40):  # ~200 bytes a line against maxBytes 4000
        access.info("GET /users/{user_id} 200 %d", i, extra={"http_route": "/users/{user_id}"})
    rolled = path.with_name(path.name + ".1")
    assert rolled.exists()
    assert all(path.stat().st_size <= 4000 for path in (path, rolled))
    numbers = [int(json.loads(x)["message"].split()[-1]) for x in _lines(rolled) + _lines(path)]
    assert numbers == list(range(numbers[0], 40))  # nothing lost or reordered in what the two files hold


def test_with_serves_stderr_copy_access_lines_keep_the_serve_handlers(serve_like, monkeypatch) -> None:
    """Serve's default mode (RAY_SERVE_LOG_TO_STDERR=1) adds a stream handler: every
    line is also copied to the worker's stderr, and the access line must stay so."""
    serve_like  # noqa: B018 (the fixture sets the Serve-like logger up)
    monkeypatch.setattr("ray.serve._private.constants.RAY_SERVE_LOG_TO_STDERR", True)
    stream = logging.StreamHandler()
    serve = logging.getLogger(SERVE_LOGGER)
    serve.handlers = [stream, *serve.handlers]
    configure_logging("INFO", under_serve=True)
    access = logging.getLogger(ACCESS_LOGGER)
    assert access.handlers == [] and access.propagate
    assert logging.getLogger("serve_app").handlers == serve.handlers


def test_without_serves_file_handler_access_lines_keep_the_serve_handlers(tmp_path: Path) -> None:
    names = (SERVE_LOGGER, "serve_app", ACCESS_LOGGER)
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    stream = logging.StreamHandler()
    logging.getLogger(SERVE_LOGGER).handlers = [stream]
    try:
        configure_logging("INFO", under_serve=True)
        assert logging.getLogger(ACCESS_LOGGER).handlers == [] and logging.getLogger(ACCESS_LOGGER).propagate
        assert logging.getLogger("serve_app").handlers == [stream]
    finally:
        for n, (handlers, propagate) in saved.items():
            logging.getLogger(n).handlers, logging.getLogger(n).propagate = handlers, propagate
