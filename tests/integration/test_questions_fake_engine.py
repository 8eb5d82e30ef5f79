"""The question routes' own logic (answer cache, SSE framing, OpenAI relay, errors)
on real PostgreSQL/Redis with a fake engine; the real model is tested in tests/llm."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import httpx
import pytest

from serve_app.config import AppArgs
from serve_app.errors import Overloaded
from serve_app.http import create_app
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
        return ChatResult({"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}, "cpu")

    async def chat_stream(self, model: str, request: dict[str, Any], deadline_s: float) -> ChatStream:
        self.calls += 1

        async def chunks():
            # Unframed JSON chunks, as ServeLLMBackend hands them on.
            yield json.dumps({"choices": [{"delta": {"content": "Hel"}}]})
            yield json.dumps({"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]})
            yield json.dumps({"choices": [], "usage": {"completion_tokens": 2}})

        return ChatStream(chunks(), "cpu")


def llm_args(**extra: Any) -> AppArgs:
    return AppArgs.model_validate({"llm": {"models": [{"model_id": MODEL, "pools": [{"name": "cpu"}]}]}, **extra})


@pytest.fixture
async def engine_client(settings):
    engine = FakeEngine()
    async for c in open_client(create_app(llm_args(), settings, lambda _m: engine), settings):
        c.engine = engine
        yield c


async def test_question_then_cached_then_bypassed(engine_client: httpx.AsyncClient) -> None:
    body = {"question": "What is Ray?"}  # the deployment's default parameters: shared
    first = (await engine_client.post("/question", json=body)).json()
    assert first == {"question": "What is Ray?", "answer": "echo: What is Ray?", "model": MODEL,
                     "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, "cached": False}
    again = (await engine_client.post("/question", json={**body, "question": "what is  ray?"})).json()
    assert again["cached"] is True and again["answer"] == first["answer"] and again["question"] == "what is  ray?"
    assert engine_client.engine.calls == 1
    r = await engine_client.post("/question", json=body, headers={"Cache-Control": "no-cache"})
    assert r.json()["cached"] is False and engine_client.engine.calls == 2
    metrics = engine_client.resources.metrics
    assert metrics.count("cache", cache="answer", result="hit") == 1
    assert metrics.count("cache", cache="answer", result="miss") == 1


# -- finding 1: who may write the shared answer cache ------------------------------------
async def test_a_no_cache_request_does_not_write_the_shared_cache(engine_client: httpx.AsyncClient) -> None:
    body = {"question": "Who writes the cache?"}
    for path in ("/question", "/question/stream"):
        r = await engine_client.post(path, json=body, headers={"Cache-Control": "no-cache"})
        assert r.status_code == 200 and '"cached":true' not in r.text.replace(" ", "")
    # The next caller at the same (default) parameters gets an answer of its
    # own, not one a no-cache request generated.
    assert (await engine_client.post("/question", json=body)).json()["cached"] is False
    assert engine_client.engine.calls == 3
    assert (await engine_client.post("/question", json=body)).json()["cached"] is True
    assert engine_client.engine.calls == 3


@pytest.mark.parametrize("params", [{"temperature": 1.9}, {"max_tokens": 500}, {"temperature": 0.5, "max_tokens": 64}])
async def test_samples_at_a_callers_own_parameters_are_not_shared(
    engine_client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    body = {"question": "A popular question", **params}
    for path in ("/question", "/question/stream", "/question", "/question/stream"):
        r = await engine_client.post(path, json=body)
        assert r.status_code == 200 and '"cached":true' not in r.text.replace(" ", "")
    assert engine_client.engine.calls == 4
    assert engine_client.resources.metrics.count("cache", cache="answer") == 0  # not even read


async def test_greedy_answers_are_shared_at_any_length(engine_client: httpx.AsyncClient) -> None:
    body = {"question": "Deterministic?", "temperature": 0, "max_tokens": 7}
    assert (await engine_client.post("/question", json=body)).json()["cached"] is False
    assert (await engine_client.post("/question/stream", json=body)).text.count('"cached":true') == 1
    assert engine_client.engine.calls == 1


async def test_an_unfinished_answer_is_not_cached(settings) -> None:
    class Aborted(FakeEngine):
        async def chat(self, model, request, deadline_s):
            result = await super().chat(model, request, deadline_s)
            result.body["choices"][0]["finish_reason"] = "abort"
            return result

    engine = Aborted()
    async for c in open_client(create_app(llm_args(), settings, lambda _m: engine), settings):
        for _ in range(2):
            assert (await c.post("/question", json={"question": "cut short"})).json()["cached"] is False
    assert engine.calls == 2


# -- identical concurrent cold questions: one generation --------------------------------
class GatedEngine(FakeEngine):
    """Holds every generation until ``release`` is set; counts aborted ones."""

    def __init__(self, _metrics: Any = None) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = 0

    async def chat(self, model: str, request: dict[str, Any], deadline_s: float) -> ChatResult:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await super().chat(model, request, deadline_s)


async def _until(predicate, what: str, timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.01)


def _waiters(client: httpx.AsyncClient) -> int:
    flights = client.resources.answers._flights._flights
    return sum(f.waiters for f in flights.values())


async def test_identical_cold_questions_share_one_generation_that_survives_its_leader(settings) -> None:
    engine = GatedEngine()
    async for c in open_client(create_app(llm_args(), settings, lambda _m: engine), settings):
        body = {"question": "Everyone asks this at once"}
        leader = asyncio.create_task(c.post("/question", json=body))
        await asyncio.wait_for(engine.started.wait(), 10)
        followers = [asyncio.create_task(c.post("/question", json=body)) for _ in range(5)]
        await _until(lambda c=c: _waiters(c) == 6, "six callers waiting on one generation")
        # The client that started the generation goes away...
        leader.cancel()
        await asyncio.gather(leader, return_exceptions=True)
        engine.release.set()
        # ...and everyone else still gets the one answer.
        answers = await asyncio.gather(*followers)
    assert [r.status_code for r in answers] == [200] * 5, [r.text for r in answers]
    assert {r.json()["answer"] for r in answers} == {"echo: Everyone asks this at once"}
    assert engine.calls == 1 and engine.cancelled == 0


async def test_a_generation_nobody_waits_for_is_cancelled(settings) -> None:
    engine = GatedEngine()
    async for c in open_client(create_app(llm_args(), settings, lambda _m: engine), settings):
        only = asyncio.create_task(c.post("/question", json={"question": "asked and abandoned"}))
        await asyncio.wait_for(engine.started.wait(), 10)
        only.cancel()
        await asyncio.gather(only, return_exceptions=True)
        await _until(lambda: engine.cancelled == 1, "the abandoned generation cancelled on the engine")


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
    assert [json.loads(line[6:])["choices"][0]["delta"]["content"]
            for line in r.text.split("\n\n")[:2]] == ["Hel", "lo"]
    nope = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
    assert (await engine_client.post("/v1/chat/completions", json=nope)).status_code == 404
    assert (await engine_client.post("/v1/chat/completions", content=b"[1]")).status_code == 422


# -- finding 2: what /v1/chat/completions accepts -----------------------------------------
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 8},
        {"n": 4, "use_beam_search": True},
        {"best_of": 4},
        {"min_tokens": 400},
        {"prompt_logprobs": 20},
        {"logprobs": True, "top_logprobs": 20},
        {"max_tokens": 513},
        {"max_completion_tokens": 100_000},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]},
        {"messages": [{"role": "user", "content": "x"}] * 65},
        {"temperature": 3},
        {"response_format": {"type": "json_object"}},
        {"tools": []},
        {"structured_outputs": {"json": {"type": "object"}}},
        {"priority": -100},
        {"kv_transfer_params": {}},
    ],
)
async def test_engine_fields_outside_the_allow_list_are_422(engine_client: httpx.AsyncClient,
                                                              extra: dict[str, Any]) -> None:
    r = await engine_client.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, **extra})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_input"
    assert engine_client.engine.calls == 0


class RecordingEngine(FakeEngine):
    def __init__(self, _metrics: Any = None) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []

    async def chat(self, model: str, request: dict[str, Any], deadline_s: float) -> ChatResult:
        self.requests.append(request)
        return await super().chat(model, request, deadline_s)

    async def chat_stream(self, model: str, request: dict[str, Any], deadline_s: float) -> ChatStream:
        self.requests.append(request)
        return await super().chat_stream(model, request, deadline_s)


async def test_what_the_clients_send_passes_with_a_bounded_cost(settings) -> None:
    """The bodies of the official openai client and of vLLM's benchmark client
    (vllm 0.32 ``benchmarks/lib/endpoint_request_func.py``
    ``async_request_openai_chat_completions``: text parts,
    max_completion_tokens, stream_options.include_usage, ignore_eos; and the
    sampling options of ``benchmarks/serve.py``) reach the engine, always
    with max_tokens set and within the cap."""
    engine = RecordingEngine()
    async for c in open_client(create_app(llm_args(), settings, lambda _m: engine), settings):
        bench = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "a prompt"}]}],
                 "max_completion_tokens": 128, "stream": True, "stream_options": {"include_usage": True},
                 "ignore_eos": True, "temperature": 0.0, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
                 "frequency_penalty": 0.1, "presence_penalty": 0.1, "repetition_penalty": 1.1}
        openai = {"model": MODEL, "messages": [{"role": "system", "content": "be brief"},
                                               {"role": "user", "content": "hi", "name": "ada"}],
                  "max_tokens": 16, "temperature": 0.7, "n": 1, "stop": ["\n"], "seed": 7, "user": "u-1"}
        bare = {"messages": [{"role": "user", "content": "no max_tokens at all"}]}
        for body in (bench, openai, bare):
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
    sent_bench, sent_openai, sent_bare = engine.requests
    assert sent_bench["max_tokens"] == 128 and sent_bench["ignore_eos"] is True
    assert sent_bench["messages"][0]["content"] == [{"type": "text", "text": "a prompt"}]
    assert sent_openai["max_tokens"] == 16 and sent_openai["stop"] == ["\n"] and sent_openai["seed"] == 7
    # vLLM's own default would be the whole context (2048 tokens here).
    assert sent_bare["max_tokens"] == 128
    for sent in engine.requests:
        assert not {"model", "stream", "stream_options", "user", "n", "max_completion_tokens"} & set(sent)


# -- finding 2: a generated-token budget per caller ---------------------------------------
async def test_generated_tokens_are_budgeted_per_caller(settings) -> None:
    engine = RecordingEngine()
    # Practically no refill: what is left is what the answers did not use.
    args = llm_args(rate_limits={"question_tokens": {"rate_per_s": 0.001, "burst": 600}})
    # Anonymous: the budget is per address (127.0.0.1 for this transport).
    async for c in open_client(create_app(args, settings, lambda _m: engine)):
        answers = c.resources.answers
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 512}
        # Each reserves 512 of the 600 up front; the fake generates 2 tokens
        # and the other 510 come back: 596 left.
        for stream in (False, True):
            assert (await c.post("/v1/chat/completions", json={**body, "stream": stream})).status_code == 200
            await answers.drain()
        # With 512 held by an answer in flight, another 512 cannot start...
        held = await answers._reserve("ip:127.0.0.1", 512)
        r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
        assert "token budget" in r.json()["error"]["message"]
        r = await c.post("/question", json={"question": "budgeted too", "max_tokens": 200})
        assert r.status_code == 429
        # ...while another caller has a budget of its own...
        other = httpx.AsyncClient(transport=httpx.ASGITransport(app=c._transport.app, client=("10.9.9.9", 1)),
                                  base_url="http://test")
        assert (await other.post("/v1/chat/completions", json=body)).status_code == 200
        # ...and once it is settled, the caller's next answer fits again.
        answers._settle(held, 2)
        await answers.drain()
        assert (await c.post("/question", json={"question": "budgeted too", "max_tokens": 200})).status_code == 200
    assert len(engine.requests) == 4


async def test_engine_overload_is_503_envelope(engine_client: httpx.AsyncClient) -> None:
    engine_client.engine.fail = Overloaded("all model replicas are busy; retry shortly", retry_after_s=2)
    r = await engine_client.post("/question", json={"question": "busy?"}, headers={"X-Request-Id": "rid-503"})
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"] == {"code": "overloaded", "message": "all model replicas are busy; retry shortly",
                                 "request_id": "rid-503"}


async def test_vllms_benchmark_client_gets_through(settings) -> None:
    """vLLM's own benchmark request function (``vllm bench serve --backend
    openai-chat``, random dataset: ignore_eos on) against the live app over
    HTTP; tests/llm repeats it on the real engine."""
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_chat_completions

    from tests.integration.test_schemathesis import UvicornThread

    engine = RecordingEngine()
    server = UvicornThread(create_app(llm_args(), settings, lambda _m: engine))
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            out = await async_request_openai_chat_completions(
                RequestFuncInput(prompt="Tell me a story.", api_url=f"http://127.0.0.1:{server.port}/v1/chat/completions",
                                 prompt_len=5, output_len=100, model=MODEL, ignore_eos=True,
                                 extra_body={"temperature": 0.0, "top_p": 0.95}, request_id="bench-0"),
                session,
            )
    finally:
        server.stop()
    assert out.success, out.error
    assert out.generated_text == "Hello" and out.output_tokens == 2
    assert engine.requests[0]["max_tokens"] == 100 and engine.requests[0]["ignore_eos"] is True
