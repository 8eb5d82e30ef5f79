"""Hostile and malformed input against the app in process, on real PostgreSQL and
Redis (the fake engine answers the question routes): every refusal is a 4xx in
the one error envelope, with the request id, never a 500 or a traceback."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from serve_app.config import AppArgs
from serve_app.http import create_app
from serve_app.logs import JsonFormatter
from serve_app.settings import Settings
from tests.conftest import REDIS_URL, create_database, drop_database, drop_prefix, open_client, pg_dsn
from tests.integration.test_questions_fake_engine import MODEL
from tests.integration.test_schemathesis import CheckingEngine, UvicornThread

pytestmark = pytest.mark.integration

CAP = 64 * 1024  # InputLimits.max_body_bytes default: the question routes' cap
USERS_CAP = 8192  # what the users router declares
DEPTH = 32  # InputLimits.max_json_depth default
BODY_ROUTES = ["/users", "/question", "/question/stream", "/v1/chat/completions"]
CAPS = {"/users": USERS_CAP, "/question": CAP, "/question/stream": CAP, "/v1/chat/completions": CAP}
# Rate limits off: some tests send dozens of requests from one client, and the
# limiter has its own tests; auth stays at its default (a key on /users*).
ARGS: dict[str, Any] = {
    "llm": {"models": [{"model_id": MODEL, "pools": [{"name": "cpu"}]}]},
    "rate_limits": {"enabled": False},
}


async def _client(settings: Settings, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(AppArgs.model_validate({**ARGS, **overrides}), settings, lambda _m: CheckingEngine())
    async for c in open_client(app, settings):
        yield c


@pytest.fixture(scope="module")
async def module_settings() -> AsyncIterator[Settings]:
    """One database and one app for the module: these tests only read, or create
    users under emails of their own, and a database per test costs seconds."""
    name = await create_database()
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    yield Settings(database_url=pg_dsn(name), redis_url=REDIS_URL, redis_key_prefix=prefix,
                   database_sslmode="disable")
    await drop_prefix(prefix)
    await drop_database(name)


@pytest.fixture(scope="module")
async def api(module_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(module_settings):
        yield c


def envelope(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "detail"}
    if code is not None:
        assert body["error"]["code"] == code, body
    assert body["error"]["request_id"] == resp.headers["x-request-id"]
    assert body["detail"] == body["error"]["message"]
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    return body


# -- body size ------------------------------------------------------------------------
@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_declared_oversize_body_is_413(api: httpx.AsyncClient, path: str) -> None:
    body = json.dumps({"question": "x" * CAP}).encode()
    r = await api.post(path, content=body, headers={"content-type": "application/json", "x-request-id": "big-1"})
    assert envelope(r, 413, "payload_too_large")["error"]["request_id"] == "big-1"
    # Tells the server to close rather than drain the rest of the upload.
    assert r.headers["connection"] == "close"


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_chunked_oversize_body_is_413_and_not_read_further(api: httpx.AsyncClient, path: str) -> None:
    pulled = 0

    async def upload() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(10):
            pulled += 1
            yield b" " * (16 * 1024)

    r = await api.post(path, content=upload(), headers={"content-type": "application/json"})
    envelope(r, 413, "payload_too_large")
    # Read up to the chunk that passed the route's cap; the rest never read.
    assert pulled == CAPS[path] // (16 * 1024) + 1


@pytest.mark.parametrize("expect_continue", [False, True])
async def test_oversize_upload_over_a_real_socket_is_refused_unread(
    module_settings: Settings, expect_continue: bool
) -> None:
    """Under uvicorn: the 413 comes back before a byte of the body is sent, with
    no "100 Continue" invitation, and the server then closes the connection."""
    server = UvicornThread(create_app(AppArgs.model_validate(ARGS), module_settings, lambda _m: CheckingEngine()))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        head = (
            "POST /question HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * 2**20}\r\n" + ("Expect: 100-continue\r\n" if expect_continue else "") + "\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=10)  # read() returns once the server closes
        writer.close()
    finally:
        server.stop()
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 "), response[:200]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    assert json.loads(body)["error"]["code"] == "payload_too_large"


async def test_body_at_the_cap_is_accepted(api: httpx.AsyncClient) -> None:
    body = json.dumps({"question": "hi"}).encode()
    body += b" " * (CAP - len(body))
    r = await api.post("/question", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == "echo: hi"


# -- JSON depth -------------------------------------------------------------------------
async def test_100000_nested_arrays_are_refused_fast(module_settings: Settings) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    # At the default cap this is simply too large...
    async for c in _client(module_settings):
        envelope(await c.post("/question", content=deep, headers={"content-type": "application/json"}), 413)
    # ...and with room for it, the depth scan refuses it before any parser recurses.
    async for c in _client(module_settings, limits={"max_body_bytes": 1024 * 1024}):
        # (The users routes declare their own cap, far below: 413 there.)
        envelope(await c.post("/users", content=deep, headers={"content-type": "application/json"}), 413)
        for path in BODY_ROUTES[1:]:
            t0 = time.perf_counter()
            r = await c.post(path, content=deep, headers={"content-type": "application/json"})
            elapsed = time.perf_counter() - t0
            body = envelope(r, 422, "invalid_input")
            assert body["error"]["message"] == f"JSON nested deeper than {DEPTH} levels"
            assert elapsed < 1.0, f"{path}: {elapsed:.2f}s"


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_depth_limit_is_exact(api: httpx.AsyncClient, path: str) -> None:
    def nested(levels: int) -> bytes:
        # The outer object is level 1.
        return b'{"question": ' + b"[" * (levels - 1) + b"1" + b"]" * (levels - 1) + b"}"

    r = await api.post(path, content=nested(DEPTH + 1), headers={"content-type": "application/json"})
    assert "nested deeper" in envelope(r, 422, "invalid_input")["error"]["message"]
    # At the limit the body reaches the route, which refuses it for what it is.
    r = await api.post(path, content=nested(DEPTH), headers={"content-type": "application/json"})
    assert "nested deeper" not in envelope(r, 422, "invalid_input")["error"]["message"]


async def test_deep_objects_and_brackets_in_strings(api: httpx.AsyncClient) -> None:
    deep_objects = b'{"a":' * 40 + b"1" + b"}" * 40
    envelope(await api.post("/question", content=deep_objects, headers={"content-type": "application/json"}), 422)
    # Brackets inside a string are text, not nesting.
    r = await api.post("/question", json={"question": "[" * 500 + "{" * 500})
    assert r.status_code == 200, r.text


# -- encodings -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b'{"question": "\xff"}',  # never valid in UTF-8
        b'{"question": "\xc3\x28"}',  # broken two-byte sequence
        b'{"question": "\xc0\xaf"}',  # overlong encoding of "/"
        b'{"question": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8
    ],
)
@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_invalid_utf8_is_a_4xx_envelope(api: httpx.AsyncClient, path: str, raw: bytes) -> None:
    r = await api.post(path, content=raw.replace(b"question", b"name" if path == "/users" else b"question"),
                       headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    envelope(r, r.status_code)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/users", b'{"name": "\\ud800", "email": "s@example.com"}'),
        ("/users", b'{"name": "ok", "email": "\\udc00@example.com"}'),
        ("/question", b'{"question": "lone \\ud800 surrogate"}'),
        ("/question/stream", b'{"question": "\\udfff"}'),
    ],
)
async def test_lone_surrogates_are_422(api: httpx.AsyncClient, path: str, body: bytes) -> None:
    envelope(await api.post(path, content=body, headers={"content-type": "application/json"}), 422, "invalid_input")


async def test_lone_surrogates_on_the_openai_route_are_422(api: httpx.AsyncClient) -> None:
    body = b'{"messages": [{"role": "user", "content": "\\ud800"}]}'
    r = await api.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    envelope(r, 422, "invalid_input")


# -- content types ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/octet-stream",
        "not a media type at all",
    ],
)
@pytest.mark.parametrize("path", ["/users", "/question", "/question/stream"])
async def test_wrong_content_types_are_422_not_500(api: httpx.AsyncClient, path: str, content_type: str | None) -> None:
    body = json.dumps({"name": "Ada", "email": "ada@example.com"} if path == "/users" else {"question": "hi"})
    headers = {"content-type": content_type} if content_type else {}
    r = await api.post(path, content=body.encode(), headers=headers)
    envelope(r, 422, "invalid_input")


async def test_real_form_and_multipart_uploads_are_422(api: httpx.AsyncClient) -> None:
    envelope(await api.post("/users", data={"name": "Ada", "email": "ada@example.com"}), 422, "invalid_input")
    files = {"file": ("q.json", io.BytesIO(b'{"question": "hi"}'), "application/json")}
    envelope(await api.post("/question", files=files), 422, "invalid_input")


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b'"text"', b"42", b"{", b"{}}", b'{"question": "x",}'])
@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_bodies_that_are_not_a_json_object(api: httpx.AsyncClient, path: str, body: bytes) -> None:
    envelope(await api.post(path, content=body, headers={"content-type": "application/json"}), 422, "invalid_input")


# -- paths and query strings -------------------------------------------------------------
@pytest.mark.parametrize(
    "user_id",
    [
        "0",
        "-1",
        "9223372036854775808",  # one past BIGINT
        "99999999999999999999999999999999",
        "1" * 5000,  # past Python's own int-parsing limit
        "abc",
        "1.5",
        "1e3",
        "0x10",
        "NaN",
        "%00",
        "%D9%A1",  # ARABIC-INDIC DIGIT ONE: a digit to Python, not to us
    ],
)
async def test_bad_user_ids_are_422(api: httpx.AsyncClient, user_id: str) -> None:
    envelope(await api.get(f"/users/{user_id}"), 422, "invalid_input")


async def test_largest_user_id_is_a_plain_404(api: httpx.AsyncClient) -> None:
    envelope(await api.get("/users/9223372036854775807"), 404, "not_found")


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=201",
        "limit=100000000000000000000",
        "limit=" + "9" * 5000,
        "limit=ten",
        "limit=",
        "limit=1.5",
        "offset=-1",
        "offset=-100000000000000000000",
        "offset=10000001",
        "offset=100000000000000000000",
        "offset=%00",
    ],
)
async def test_pagination_out_of_bounds_is_422(api: httpx.AsyncClient, query: str) -> None:
    envelope(await api.get(f"/users?{query}"), 422, "invalid_input")


async def test_pagination_bounds_themselves_are_accepted(api: httpx.AsyncClient) -> None:
    r = await api.get("/users?limit=200&offset=10000000")
    assert r.status_code == 200 and r.json() == []


# -- field rules -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        {"question": "x" * 4001},
        {"question": ""},
        {"question": " \n\t "},
        {"question": None},
        {"question": ["x"]},
        {"question": "x", "max_tokens": 0},
        {"question": "x", "max_tokens": 513},
        {"question": "x", "max_tokens": 10**30},
        {"question": "x", "max_tokens": 1.5},
        {"question": "x", "temperature": -0.01},
        {"question": "x", "temperature": 2.01},
        {"question": "x", "temperature": 1e308},
        {"question": "x", "model": "gpt-4"},
        {"question": "x", "extra": True},
    ],
)
@pytest.mark.parametrize("path", ["/question", "/question/stream"])
async def test_invalid_questions_are_422(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    details = envelope(await api.post(path, json=body), 422, "invalid_input")["error"]["details"]
    assert details and all(d["loc"][0] == "body" for d in details)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
async def test_non_finite_temperature_is_422(api: httpx.AsyncClient, literal: bytes) -> None:
    body = b'{"question": "x", "temperature": ' + literal + b"}"
    envelope(await api.post("/question", content=body, headers={"content-type": "application/json"}), 422)


async def test_longest_question_is_accepted(api: httpx.AsyncClient) -> None:
    r = await api.post("/question", json={"question": "q" * 4000})
    assert r.status_code == 200 and len(r.json()["question"]) == 4000


async def test_huge_integer_literal_in_a_body_is_refused(api: httpx.AsyncClient) -> None:
    # Python refuses to parse ints of over 4300 digits: a 4xx, not a 500.
    body = b'{"question": "x", "max_tokens": 1' + b"0" * 5000 + b"}"
    r = await api.post("/question", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)
    envelope(r, r.status_code)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "a\x00b", "email": "nul@example.com"},  # PostgreSQL cannot store NUL
        {"name": "line\nbreak", "email": "nl@example.com"},
        {"name": "esc\x1b[31mred", "email": "esc@example.com"},
        {"name": "\x85", "email": "c1@example.com"},
        {"name": "ok", "email": "nul\x00@example.com"},
        {"name": "ok", "email": "a@b"},
        {"name": "ok", "email": "x" * 64 + "@" + "d" * 190 + ".com"},
        {"name": "ok", "email": ["a@example.com"]},
        {"name": "ok", "email": "a@example.com", "id": 1},
    ],
)
async def test_invalid_user_fields_are_422(api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    r = await api.post("/users", json=body)
    details = envelope(r, 422, "invalid_input")["error"]["details"]
    assert details
    # What was refused is not echoed back (it could be huge, or someone's data).
    assert "nul@example.com" not in r.text and "\\u001b" not in r.text


async def test_sql_looking_input_is_stored_verbatim(api: httpx.AsyncClient, module_settings: Settings) -> None:
    name = "Robert'); DROP TABLE users;-- $1 \\ %s"
    r = await api.post("/users", json={"name": name, "email": "bobby.tables@example.com"})
    assert r.status_code == 200, r.text
    assert (await api.get(f"/users/{r.json()['id']}")).json()["name"] == name
    conn = await asyncpg.connect(module_settings.database_url)
    try:
        assert await conn.fetchval("SELECT name FROM users WHERE email = $1", "bobby.tables@example.com") == name
    finally:
        await conn.close()


# -- logs ------------------------------------------------------------------------------
async def test_emails_and_names_are_never_logged_in_full(api: httpx.AsyncClient) -> None:
    logger = logging.getLogger("serve_app")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    # The production formatter: it writes every extra field too.
    handler.setFormatter(JsonFormatter())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    email = "Zelda.Quartermaine@Example.org"
    name = "Zelda Quartermaine-Vos"
    try:
        created = await api.post("/users", json={"name": name, "email": email})
        assert created.status_code == 200
        await api.get(f"/users/{created.json()['id']}")
        await api.get("/users")
        envelope(await api.post("/users", json={"name": name, "email": email.lower()}), 409, "conflict")
        envelope(await api.post("/users", json={"name": name, "email": email + "\x00"}), 422)
        envelope(await api.post("/users", json={"name": name + "\n", "email": "not an email " + email}), 422)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    logged = stream.getvalue()
    assert logged.count("\n") >= 6, logged  # the access log saw every request
    for secret in (email, email.lower(), name, "Quartermaine"):
        assert secret not in logged, f"{secret!r} was logged:\n{logged}"
