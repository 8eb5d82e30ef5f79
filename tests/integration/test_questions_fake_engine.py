"""The question routes' own logic (answer cache, SSE framing, OpenAI relay, errors)
on real PostgreSQL/Redis with a fake engine; the real model is tested in tests/llm."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from serve_app.config import AppArgs
from serve_app.errors import Overloaded
from serve_app.ingress import create_app
from serve_app.llm_client import ChatResult, ChatStream
from tests.conftest import open_client

pytestmark = pytest.mark.integration
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


class FakeEngine:
    def __init__(self, _metrics: Any = None) -> None:
        self.calls = 0
        self.fail: Exception | None = None

    def model_ids(self) -> list[str]:
        return [MODEL]

    def status(self) -> dict[str, Any]:
        return {"pools": {MODEL: {"cpu": {"running_replicas": 1}}}}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def chat(self, model: str, request: dict[str, Any], deadline_s: float) -> ChatResult:
        self.calls += 1
        if self.fail:
            raise self.fail
        text = f"echo: {request['messages'][0]['content']}"
        return ChatResult({"choices": [{"message": {"content": text}}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}, "cpu")

    async def chat_stream(self, model: str, request: dict[str, Any], deadline_s: float) -> ChatStream:
        self.calls += 1

        async def chunks():
            for piece in ("Hel", "lo"):
                yield "data: " + json.dumps({"choices": [{"delta": {"content": piece}}]}) + "\n\n"
            yield "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": 2}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return ChatStream(chunks(), "cpu")


@pytest.fixture
async def engine_client(settings):
    engine = FakeEngine()
    args = AppArgs.model_validate({"llm": {"models": [{"model_id": MODEL, "pools": [{"name": "cpu"}]}]}})
    async for c in open_client(create_app(args, settings, lambda _m: engine), settings):
        c.engine = engine
        yield c


async def test_question_then_cached_then_bypassed(engine_client: httpx.AsyncClient) -> None:
    body = {"question": "What is Ray?", "max_tokens": 8}
    first = (await engine_client.post("/question", json=body)).json()
    assert first == {"question": "What is Ray?", "answer": "echo: What is Ray?", "model": MODEL,
                     "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, "cached": False}
    again = (await engine_client.post("/question", json={**body, "question": "what is  ray?"})).json()
    assert again["cached"] is True and again["answer"] == first["answer"] and again["question"] == "what is  ray?"
    assert engine_client.engine.calls == 1
    r = await engine_client.post("/question", json=body, headers={"Cache-Control": "no-cache"})
    assert r.json()["cached"] is False and engine_client.engine.calls == 2
    metrics = engine_client.app_state["metrics"]
    assert metrics.count("cache", cache="answer", result="hit") == 1
    assert metrics.count("cache", cache="answer", result="miss") == 1


async def test_stream_frames_tokens_then_done(engine_client: httpx.AsyncClient) -> None:
    r = await engine_client.post("/question/stream", json={"question": "hi"})
    events = [block.split("\n") for block in r.text.strip().split("\n\n")]
    kinds = [e[0].removeprefix("event: ") for e in events]
    assert kinds == ["token", "token", "done"]
    assert [json.loads(e[1].removeprefix("data: "))["text"] for e in events[:2]] == ["Hel", "lo"]
    done = json.loads(events[2][1].removeprefix("data: "))
    assert done["answer"] == "Hello" and done["cached"] is False and done["usage"]["completion_tokens"] == 2
    # The streamed answer is cached too.
    cached = await engine_client.post("/question/stream", json={"question": "hi"})
    assert '"cached":true' in cached.text and engine_client.engine.calls == 1


async def test_openai_routes(engine_client: httpx.AsyncClient) -> None:
    models = (await engine_client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    r = await engine_client.post("/v1/chat/completions",
                                 json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert r.json()["choices"][0]["message"]["content"] == "echo: x"
    r = await engine_client.post("/v1/chat/completions",
                                 json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert r.text.rstrip().endswith("data: [DONE]") and r.text.count("data: [DONE]") == 1
    assert (await engine_client.post("/v1/chat/completions", json={"model": "nope", "messages": []})).status_code == 404
    assert (await engine_client.post("/v1/chat/completions", content=b"[1]")).status_code == 422


async def test_engine_overload_is_503_envelope(engine_client: httpx.AsyncClient) -> None:
    engine_client.engine.fail = Overloaded("all model replicas are busy; retry shortly", retry_after_s=2)
    r = await engine_client.post("/question", json={"question": "busy?"}, headers={"X-Request-Id": "rid-503"})
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"] == {"code": "overloaded", "message": "all model replicas are busy; retry shortly",
                                 "request_id": "rid-503"}
