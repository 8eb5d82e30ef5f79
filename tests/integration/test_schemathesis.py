"""Contract test: schemathesis against the live OpenAPI document, over real HTTP.

The app (real PostgreSQL and Redis, a fake engine for the question routes,
auth at its default with a real API key) runs under uvicorn in a background
thread; every operation the document lists gets up to a few hundred generated
requests, schema-conforming and schema-violating, and every response must be a
non-5xx that the document declares, of the declared media type, with a body
matching the declared schema.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve_app.auth import create_api_key
from serve_app.config import AppArgs
from serve_app.errors import InvalidInput
from serve_app.http import create_app
from serve_app.llm_client import ChatResult
from serve_app.settings import Settings
from tests.integration.test_questions_fake_engine import MODEL, FakeEngine

pytestmark = pytest.mark.integration

# ~10 operations x this many examples stays well under a minute here.
EXAMPLES_PER_OPERATION = 300
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Rate limits off: a few hundred requests a second per operation is the point
# here, and the limiter has its own tests (test_auth_limits). Auth stays at its
# default (API key on /users*); the generated requests carry a real key.
ARGS = {"llm": {"models": [{"model_id": MODEL, "pools": [{"name": "cpu"}]}]}, "rate_limits": {"enabled": False}}


class CheckingEngine(FakeEngine):
    """Refuses a malformed chat request the way the real backend does (vLLM's
    request model fails in the pool, which answers 400 -> InvalidInput), so the
    OpenAI route's refusals are tested rather than the fake's KeyErrors."""

    async def chat(self, model: str, request: dict[str, Any], deadline_s: float) -> ChatResult:
        messages = request.get("messages")
        if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )):
            raise InvalidInput("invalid chat completion request")
        return await super().chat(model, request, deadline_s)


@dataclass
class LiveServer:
    base_url: str
    headers: dict[str, str]


class UvicornThread:
    """uvicorn in a thread of its own, on a socket bound before it starts (no
    port race); the app's lifespan and requests run on that thread's loop."""

    def __init__(self, app: object) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", loop="asyncio", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    async def start(self, timeout_s: float = 30) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@pytest.fixture
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    app = create_app(AppArgs.model_validate(ARGS), settings, lambda _m: CheckingEngine())
    key = await create_api_key(settings.database_url, "schemathesis", settings)
    server = UvicornThread(app)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base) as c:
            assert (await c.get("/readyz")).status_code == 200
        yield LiveServer(base, {"Authorization": f"Bearer {key}"})
    finally:
        server.stop()


def _exercise(operation: schemathesis.APIOperation, server: LiveServer, seen: collections.Counter[int]) -> None:
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        # No example database and a fixed seed: a run does not depend on what
        # earlier runs on this machine found (schemathesis still varies a little).
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.base_url, headers=server.headers, timeout=10)
        seen[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=server.headers)

    run()


def test_every_operation_conforms_to_the_live_openapi(live_server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{live_server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]

    statuses: dict[str, collections.Counter[int]] = {}
    failures: dict[str, str] = {}
    t0 = time.monotonic()
    for operation in operations:
        seen = statuses[operation.label] = collections.Counter()
        try:
            _exercise(operation, live_server, seen)
        except Exception as exc:  # every operation runs; all failures are reported together
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:4000]
    elapsed = time.monotonic() - t0

    total = sum(sum(c.values()) for c in statuses.values())
    lines = [f"{label:28} {sum(c.values()):5} requests  {dict(sorted(c.items()))}" for label, c in statuses.items()]
    print(f"\nschemathesis: {len(operations)} operations, {total} requests in {elapsed:.1f}s\n" + "\n".join(lines))
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert all(status < 500 for c in statuses.values() for status in c)
