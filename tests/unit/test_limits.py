"""Input limits (body size, JSON depth) and the documented error envelope, on
bare ASGI apps and the real app's OpenAPI: no network, no database."""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.types import Message, Receive, Scope, Send

import serve_app
from serve_app.config import AppArgs
from serve_app.errors import AppError, NotFound
from serve_app.http import create_app, policy
from serve_app.http.body import exceeds_json_depth, read_capped
from serve_app.http.errors import install_handlers
from serve_app.http.factory import middleware
from serve_app.metrics import AppMetrics
from serve_app.settings import Settings

CAP = 1024
DEPTH = 4


# -- the depth scan -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "deeper_than_4"),
    [
        (b"", False),
        (b'{"a": 1}', False),
        (b"[[[[1]]]]", False),  # exactly the limit
        (b"[[[[[1]]]]]", True),
        (b'{"a": {"b": [{"c": 1}]}}', False),
        (b'{"a": {"b": [{"c": [1]}]}}', True),
        (b"[1], [2], [3], [4], [5], [6]", False),  # many brackets, never deep
        (b'["[[[[[[", "{{{{{{{"]', False),  # brackets in strings do not nest
        (b'["\\"[[[[[[", 1]', False),  # an escaped quote does not end the string
        (b'["\\\\", [[[[1]]]]]', True),  # an escaped backslash does not escape the quote
        (b'"\\u005b\\u005b\\u005b\\u005b\\u005b"', False),
        (b'[[[[ "unterminated [[[[[[', False),
        (b'[[[[ "ends in a backslash \\', False),
        (b"]]]]]] [[[[[", True),  # stray closers do not buy depth for what follows
        (b"\xff\xfe[[[[[\x00", True),  # not UTF-8: still scanned as bytes
    ],
)
def test_json_depth_scan(body: bytes, deeper_than_4: bool) -> None:
    assert exceeds_json_depth(body, 4) is deeper_than_4


def test_json_depth_scan_stops_early_and_stays_cheap_on_wide_bodies() -> None:
    deep = b"[" * 1_000_000 + b"]" * 1_000_000
    wide = json.dumps([[i, {"k": [str(i)]}] for i in range(20_000)]).encode()
    t0 = time.perf_counter()
    assert exceeds_json_depth(deep, 32)
    assert not exceeds_json_depth(wide, 32)
    elapsed = time.perf_counter() - t0
    print(f"\ndepth scan: 2 MB deep + {len(wide) // 1024} KiB wide body in {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0


# -- the body step on a recording app --------------------------------------------------
class Recorder:
    """An inner app that reads the whole body like FastAPI does and echoes its size."""

    def __init__(self) -> None:
        self.calls = 0
        self.receive: Receive | None = None
        self.messages: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        self.receive = receive
        body = b""
        while True:
            message = await receive()
            self.messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await JSONResponse({"bytes": len(body)})(scope, receive, send)


def _scope(method: str = "POST", headers: dict[str, str] | None = None) -> Scope:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "method": method, "path": "/", "headers": raw, "query_string": b""}


class Server:
    """Plays the server's side: hands out request messages and records what is sent."""

    def __init__(self, messages: list[Message]) -> None:
        self.pending = list(messages)
        self.received = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.received += 1
        if self.pending:
            return self.pending.pop(0)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    @property
    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


def _chunks(*parts: bytes) -> list[Message]:
    return [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]


async def _run(scope: Scope, messages: list[Message]) -> tuple[Recorder, Server, AppError | None]:
    """The body step, then the recording app with what the step replays."""
    inner = Recorder()
    server = Server(messages)
    try:
        replay = await read_capped(scope, server.receive, CAP, DEPTH)
    except AppError as exc:
        return inner, server, exc
    await inner(scope, replay, server.send)
    return inner, server, None


async def test_declared_oversize_is_413_before_reading() -> None:
    inner, server, exc = await _run(_scope(headers={"content-length": "1025"}), _chunks(b"x" * 1025))
    assert exc is not None and exc.status_code == 413 and server.received == 0 and inner.calls == 0
    assert exc.headers["Connection"] == "close"
    assert exc.code == "payload_too_large" and "1024" in exc.message


async def test_absurd_content_length_is_413() -> None:
    _, server, exc = await _run(_scope(headers={"content-length": "9" * 5000}), [])
    assert exc is not None and exc.status_code == 413 and server.received == 0


async def test_streamed_body_is_cut_off_when_it_passes_the_cap() -> None:
    parts = [b"x" * 400] * 10  # 4000 bytes in chunks, no Content-Length
    inner, server, exc = await _run(_scope(headers={"transfer-encoding": "chunked"}), _chunks(*parts))
    assert exc is not None and exc.status_code == 413 and inner.calls == 0
    assert server.received == 3  # stopped at the chunk that passed 1024, the rest never read
    assert exc.headers["Connection"] == "close"


async def test_body_at_the_cap_is_replayed_whole() -> None:
    inner, server, exc = await _run(_scope(headers={"content-length": "1024"}), _chunks(b"a" * 600, b"b" * 424))
    assert exc is None and server.status == 200 and server.json == {"bytes": 1024}
    assert inner.messages == [{"type": "http.request", "body": b"a" * 600 + b"b" * 424, "more_body": False}]


async def test_after_the_replay_receive_reaches_the_server() -> None:
    inner, _, _ = await _run(_scope(), _chunks(b"{}"))
    assert inner.receive is not None
    # What a streaming response listens for once the body has been read.
    assert await inner.receive() == {"type": "http.disconnect"}


async def test_client_leaving_mid_upload_is_seen_by_the_app() -> None:
    inner, _, _ = await _run(_scope(), [*_chunks(b"abc", b"def")[:1], {"type": "http.disconnect"}])
    assert inner.messages == [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.disconnect"},
    ]


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain", "application/vnd.x+json"])
async def test_deep_json_is_422_before_the_app(content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    inner, _, exc = await _run(_scope(headers=headers), _chunks(b"[[[[[1]]]]]"))
    assert exc is not None and exc.status_code == 422 and inner.calls == 0
    assert exc.code == "invalid_input" and "deeper than 4" in exc.message
    assert "Connection" not in exc.headers  # the body was read whole: the connection stays usable


async def test_form_bodies_are_not_depth_checked() -> None:
    inner, server, exc = await _run(_scope(headers={"content-type": "application/x-www-form-urlencoded"}),
                                    _chunks(b"a=" + b"[" * 50))
    assert exc is None and server.status == 200 and inner.calls == 1


# -- through the whole pipeline, over httpx --------------------------------------------
def _app() -> FastAPI:
    """The service's middlewares and error handlers around one public route
    with a body cap (public: no auth step, so no database needed)."""
    app = FastAPI(middleware=middleware(AppMetrics()))
    install_handlers(app)
    router = APIRouter(route_class=policy.Protection("public", body_bytes=CAP).route_class())

    @router.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    app.include_router(router)
    policy.apply(app, AppArgs(limits={"max_json_depth": DEPTH, "max_body_bytes": 1024}))
    return app


@pytest.fixture
async def client() -> Any:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as c:
        yield c


def _envelope(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"]["code"] == code and body["detail"] == body["error"]["message"]
    assert body["error"]["request_id"] == resp.headers["x-request-id"]
    return body


async def test_errors_carry_the_request_id(client: httpx.AsyncClient) -> None:
    r = await client.post("/echo", content=b"x" * 2000, headers={"x-request-id": "rid-413"})
    assert _envelope(r, 413, "payload_too_large")["error"]["request_id"] == "rid-413"
    assert r.headers["connection"] == "close"
    _envelope(await client.post("/echo", json={"a": [[[[1]]]]}), 422, "invalid_input")


async def test_chunked_upload_over_httpx(client: httpx.AsyncClient) -> None:
    async def stream(n: int, size: int = 300) -> Any:
        for _ in range(n):
            yield b" " * size

    _envelope(await client.post("/echo", content=stream(5)), 413, "payload_too_large")
    ok = await client.post("/echo", content=stream(3), headers={"content-type": "application/json"})
    # 900 spaces is no JSON, but it reached FastAPI: its own 422, not ours.
    assert _envelope(ok, 422, "invalid_input")["error"]["message"] == "request validation failed"


async def test_valid_json_reaches_the_route(client: httpx.AsyncClient) -> None:
    r = await client.post("/echo", json={"a": [[[1]]], "s": "[[[[[[[["})
    assert r.status_code == 200 and r.json() == {"a": [[[1]]], "s": "[[[[[[[["}


# -- the OpenAPI declaration of the real app -------------------------------------------
LLM = {"llm": {"models": [{"model_id": "m", "pools": [{"name": "cpu"}]}], "default_model": "m"}}


def _spec() -> dict[str, Any]:
    app = create_app(AppArgs.model_validate(LLM), Settings(database_url="postgresql://unused/x"))
    return app.openapi()


def test_openapi_declares_the_envelope_for_errors() -> None:
    spec = _spec()
    envelope = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
    paths = spec["paths"]

    def errors(path: str, method: str) -> dict[str, Any]:
        return {s: r.get("content") for s, r in paths[path][method]["responses"].items() if s != "200"}

    # Body routes: the body step's errors, the pipeline's, their own.
    assert errors("/users", "post") == dict.fromkeys(["400", "401", "409", "413", "422", "429", "503"], envelope)
    assert errors("/question", "post") == dict.fromkeys(["400", "401", "413", "422", "429", "503", "504"], envelope)
    assert {"404", "413", "422", "504"} <= set(errors("/v1/chat/completions", "post"))
    # No body, no body limit; the pipeline's errors and the route's own.
    assert errors("/users/{user_id}", "get") == dict.fromkeys(["401", "404", "422", "429", "503"], envelope)
    assert errors("/healthz", "get") == {}
    assert "content" not in paths["/readyz"]["get"]["responses"]["503"]  # readiness has its own body
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas


def test_openapi_documents_the_caps() -> None:
    schemas = _spec()["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]
    assert chat["additionalProperties"] is False
    assert chat["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 512
    assert chat["properties"]["max_completion_tokens"]["anyOf"][0]["maximum"] == 512
    assert chat["properties"]["messages"]["maxItems"] == 64
    assert "n" in chat["properties"] and "best_of" not in chat["properties"]
    assert schemas["QuestionRequest"]["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 512


class Item(BaseModel):
    name: str


async def test_actual_error_bodies_conform_to_the_declared_schema() -> None:
    spec = _spec()
    registry = Registry().with_resource("urn:spec", Resource.from_contents(spec, default_specification=DRAFT202012))
    validator = jsonschema.Draft202012Validator(
        {"$ref": "urn:spec#/components/schemas/ErrorEnvelope"}, registry=registry
    )
    app = _app()
    router = APIRouter(route_class=policy.Protection("public").route_class())

    @router.get("/items/{n}")
    async def get(n: int) -> Item:
        raise NotFound(f"item {n} not found")

    app.include_router(router)
    policy.apply(app, AppArgs())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        responses = [
            await c.get("/items/7"),
            await c.get("/items/x"),
            await c.post("/echo", json=[1]),
            await c.post("/echo", content=b'{"name": "\xff"}', headers={"content-type": "application/json"}),
            await c.post("/echo", content=b"x" * 5000),
            await c.get("/nowhere"),
        ]
    assert [r.status_code for r in responses] == [404, 422, 422, 400, 413, 404]
    for r in responses:
        validator.validate(r.json())


# -- SQL sees input only as parameters -------------------------------------------------
_SQL_CALLS = {"execute", "executemany", "fetch", "fetchrow", "fetchval"}
_CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$")
# Statements that come from files in the repository, never from a request.
_TRUSTED = {("db.py", "m.sql")}


def _unsafe_sql(source: str, filename: str) -> tuple[int, list[str]]:
    """(query calls seen, those whose SQL text is not a literal or an f-string of
    module constants such as column lists)."""
    offenders = []
    checked = 0
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in _SQL_CALLS and node.args):
            continue
        query = node.args[0]
        checked += 1
        if isinstance(query, ast.Constant) and isinstance(query.value, str):
            continue
        if isinstance(query, ast.JoinedStr) and all(
            isinstance(part, ast.Constant)
            or (isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name)
                and _CONSTANT.match(part.value.id))
            for part in query.values
        ):
            continue
        if (filename, ast.get_source_segment(source, query)) in _TRUSTED:
            continue
        offenders.append(f"{filename}:{node.lineno}: {ast.get_source_segment(source, query)}")
    return checked, offenders


def test_sql_text_is_built_from_constants_only() -> None:
    """Request data reaches PostgreSQL only as $n parameters: catches a future
    f"... WHERE name = '{name}'" before it ships."""
    checked, offenders = 0, []
    for path in sorted(Path(serve_app.__file__).parent.rglob("*.py")):
        n, bad = _unsafe_sql(path.read_text(), path.name)
        checked += n
        offenders += bad
    assert checked >= 8  # the users repository, API keys, migrations
    assert not offenders, offenders


def test_the_sql_check_catches_interpolated_input() -> None:
    source = """
async def f(conn, name, COLS):
    await conn.fetch(f"SELECT {_COLUMNS} FROM users WHERE id = $1", 1)
    await conn.fetch(f"SELECT * FROM users WHERE name = '{name}'")
    await conn.execute("DELETE FROM users WHERE id = %s" % name)
    await conn.fetchrow("SELECT " + name)
    await conn.fetchval("SELECT {}".format(name))
"""
    checked, offenders = _unsafe_sql(source, "x.py")
    assert checked == 5 and len(offenders) == 4
