"""The answer path as a service of its own (no HTTP types): what a caller may
ask for and with which caps, who may write the shared answer cache, one
generation for identical concurrent cold questions, and the generated-token
budget every answer is charged against.

Routes (``serve_app.http.routes.questions`` and ``.openai``) parse bodies into
the models built here and turn results into JSON or Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from serve_app.cache import Cache
from serve_app.config import LLMArgs
from serve_app.errors import AppError
from serve_app.llm_client import ChatResult, ChatStream, LLMBackend
from serve_app.metrics import AppMetrics
from serve_app.ratelimit import Reservation, TokenBudget
from serve_app.singleflight import SingleFlight

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 4000
# Finish reasons of an answer that ran to its end (vLLM: "stop" or "length");
# anything else (aborted, error) is never cached.
_COMPLETE = frozenset({"stop", "length"})


# -- what callers may send ------------------------------------------------------------
class _Strict(BaseModel):
    # Anything not listed is refused (422): an engine field passed through is
    # a cost nobody bounded (n, best_of, beam search, min_tokens, logprobs...).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def question_model(max_tokens_cap: int) -> type[BaseModel]:
    class QuestionRequest(_Strict):
        question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
        max_tokens: int | None = Field(default=None, ge=1, le=max_tokens_cap)
        temperature: float | None = Field(default=None, ge=0, le=2)

        @field_validator("question")
        @classmethod
        def _not_blank(cls, value: str) -> str:
            if not value.strip():
                raise ValueError("question must not be blank")
            return value

    return QuestionRequest


Text = Annotated[str, StringConstraints(max_length=65_536)]
Stop = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    # A string, or text parts as vLLM's benchmark client sends them.
    content: Text | Annotated[list[TextPart], Field(min_length=1, max_length=16)]
    name: Annotated[str, StringConstraints(max_length=64)] | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


def chat_model(max_tokens_cap: int) -> type[BaseModel]:
    """The fields of ``/v1/chat/completions`` we accept: what the official
    ``openai`` client and vLLM's benchmark client (``vllm bench serve
    --backend openai-chat``: model, messages as text parts,
    max_completion_tokens, stream, stream_options.include_usage, ignore_eos and
    the sampling options top_p/top_k/min_p/temperature/penalties) send in
    normal use, each capped so that one request's cost is bounded by
    ``max_tokens_cap`` generated tokens for one choice."""

    class ChatCompletionRequest(_Strict):
        model: Annotated[str, StringConstraints(max_length=256)] | None = None
        messages: list[ChatMessage] = Field(min_length=1, max_length=64)
        max_tokens: int | None = Field(default=None, ge=1, le=max_tokens_cap)
        max_completion_tokens: int | None = Field(default=None, ge=1, le=max_tokens_cap)
        n: Literal[1] | None = None
        stream: bool = False
        stream_options: StreamOptions | None = None
        temperature: float | None = Field(default=None, ge=0, le=2)
        top_p: float | None = Field(default=None, gt=0, le=1)
        top_k: int | None = Field(default=None, ge=-1, le=1000)
        min_p: float | None = Field(default=None, ge=0, le=1)
        presence_penalty: float | None = Field(default=None, ge=-2, le=2)
        frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
        repetition_penalty: float | None = Field(default=None, gt=0, le=2)
        stop: Stop | Annotated[list[Stop], Field(max_length=4)] | None = None
        seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
        # Runs to max_tokens whatever the model says: bounded by the cap and
        # charged in full to the token budget (the benchmark client sends it).
        ignore_eos: bool | None = None
        user: Annotated[str, StringConstraints(max_length=256)] | None = None

    return ChatCompletionRequest


# -- results ----------------------------------------------------------------------------
@dataclass
class Answer:
    question: str
    answer: str
    model: str
    usage: dict[str, Any] | None
    cached: bool
    pool: str | None = None  # None when it came from the cache

    def body(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "model": self.model, "usage": self.usage,
                "cached": self.cached}


@dataclass
class AnswerEvents:
    """A streamed answer: ``("token", {"text"})`` events, then ``("done", answer)``
    or ``("error", {"error"})``. The upstream is open (or the answer cached)
    when this exists, so failures before the first token are plain errors."""

    events: AsyncIterator[tuple[str, dict[str, Any]]]
    pool: str | None


@dataclass
class _Generated:
    answer: str
    usage: dict[str, Any] | None
    finish_reason: str | None
    pool: str
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = int((self.usage or {}).get("completion_tokens") or 0)


class Answers:
    def __init__(
        self, llm: LLMBackend, cache: Cache, budget: TokenBudget | None, args: LLMArgs, answer_ttl_s: int,
        metrics: AppMetrics,
    ) -> None:
        self.llm = llm
        self._cache = cache
        self._budget = budget
        self._args = args
        self._ttl_s = answer_ttl_s
        self._metrics = metrics
        self._defaults = {"max_tokens": args.default_max_tokens, "temperature": args.default_temperature}
        # Identical concurrent cold questions share one generation; it is
        # cancelled on the engine only when nobody waits for it any more.
        self._flights: SingleFlight[_Generated] = SingleFlight(cancel_abandoned=True)
        self._settling: set[asyncio.Task[None]] = set()

    @property
    def model(self) -> str:
        return self._args.default_model

    # -- /question ------------------------------------------------------------------
    async def ask(self, question: str, max_tokens: int | None, temperature: float | None, client: str, *,
                  no_cache: bool) -> Answer:
        params = self._params(max_tokens, temperature)
        self._log_question(question)
        if not Cache.answer_is_shareable(params, self._defaults, no_cache=no_cache):
            reservation = await self._reserve(client, params["max_tokens"])
            generated = await self._settled(reservation, self._generate(question, params))
            return self._answer(question, generated)
        key = self._cache.answer_key(self.model, question, params)
        hit = await self._cache.get_json(key)
        self._metrics.cache_lookup("answer", hit=hit is not None)
        if hit is not None:
            return Answer(question, hit["answer"], hit["model"], hit.get("usage"), cached=True)
        flight = self._flights.get(key)
        if flight is None:
            # Only the caller that starts the generation is charged for it.
            reservation = await self._reserve(client, params["max_tokens"])
            flight, started = self._flights.start_or_join(
                key, lambda: self._generate_and_share(key, question, params)
            )
            if started:
                flight.task.add_done_callback(lambda t: self._settle_from(reservation, t))
            else:
                self._settle(reservation, 0)
        return self._answer(question, await self._flights.wait(flight))

    async def _generate(self, question: str, params: dict[str, Any]) -> _Generated:
        chat = {"messages": [{"role": "user", "content": question}], **params}
        result: ChatResult = await self.llm.chat(self.model, chat, self._args.request_deadline_s)
        choice = result.body["choices"][0]
        generated = _Generated(choice["message"]["content"] or "", result.body.get("usage"),
                               choice.get("finish_reason"), result.pool)
        self._metrics.completion_tokens(self.model, result.pool, generated.tokens)
        return generated

    async def _generate_and_share(self, key: str, question: str, params: dict[str, Any]) -> _Generated:
        generated = await self._generate(question, params)
        if generated.finish_reason in _COMPLETE:
            await self._cache.set_json(key, {"answer": generated.answer, "model": self.model,
                                             "usage": generated.usage}, self._ttl_s, only_if_absent=True)
        return generated

    def _answer(self, question: str, generated: _Generated) -> Answer:
        return Answer(question, generated.answer, self.model, generated.usage, cached=False, pool=generated.pool)

    # -- /question/stream -------------------------------------------------------------
    async def ask_stream(self, question: str, max_tokens: int | None, temperature: float | None, client: str, *,
                         no_cache: bool) -> AnswerEvents:
        params = self._params(max_tokens, temperature)
        self._log_question(question)
        shareable = Cache.answer_is_shareable(params, self._defaults, no_cache=no_cache)
        key = self._cache.answer_key(self.model, question, params)
        if shareable:
            hit = await self._cache.get_json(key)
            self._metrics.cache_lookup("answer", hit=hit is not None)
            if hit is not None:
                cached = Answer(question, hit["answer"], hit["model"], hit.get("usage"), cached=True)
                return AnswerEvents(_replay(cached), pool=None)
        reservation = await self._reserve(client, params["max_tokens"])
        started = time.perf_counter()
        chat = {"messages": [{"role": "user", "content": question}], **params}
        try:
            stream = await self.llm.chat_stream(self.model, chat, self._args.request_deadline_s)
        except BaseException:
            self._settle(reservation, 0)
            raise
        return AnswerEvents(self._events(stream, question, key if shareable else None, reservation, started),
                            pool=stream.pool)

    async def _events(self, stream: ChatStream, question: str, key: str | None, reservation: Reservation | None,
                      started: float) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        parts: list[str] = []
        usage: dict[str, Any] | None = None
        finish: str | None = None
        try:
            async for payload in stream.chunks:
                chunk = json.loads(payload)
                if "error" in chunk and "choices" not in chunk:
                    yield "error", {"error": chunk["error"]}
                    return
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        if not parts:
                            self._metrics.first_token(self.model, stream.pool, time.perf_counter() - started)
                        parts.append(text)
                        yield "token", {"text": text}
            generated = _Generated("".join(parts), usage, finish, stream.pool)
            self._metrics.completion_tokens(self.model, stream.pool, generated.tokens)
            if key is not None and finish in _COMPLETE:
                await self._cache.set_json(key, {"answer": generated.answer, "model": self.model, "usage": usage},
                                           self._ttl_s, only_if_absent=True)
            yield "done", Answer(question, generated.answer, self.model, usage, cached=False).body()
        except AppError as exc:
            yield "error", {"error": {"code": exc.code, "message": exc.message}}
        finally:
            # Cut short (client gone, deadline): each streamed piece is about
            # one token.
            self._settle(reservation, int((usage or {}).get("completion_tokens") or len(parts)))

    # -- /v1/chat/completions ---------------------------------------------------------
    def engine_request(self, request: BaseModel) -> tuple[str, dict[str, Any]]:
        """The model id and what reaches the engine: the allowed fields, with
        ``max_tokens`` always set (vLLM's own default is the whole context)."""
        fields = request.model_dump(
            exclude_none=True,
            exclude={"model", "stream", "stream_options", "user", "n", "max_tokens", "max_completion_tokens"},
        )
        body: Any = request
        fields["max_tokens"] = body.max_completion_tokens or body.max_tokens or self._args.default_max_tokens
        return body.model or self.model, fields

    async def chat(self, model: str, fields: dict[str, Any], client: str) -> ChatResult:
        reservation = await self._reserve(client, fields["max_tokens"])
        result = await self._settled(reservation, self.llm.chat(model, fields, self._args.request_deadline_s))
        return result

    async def chat_stream(self, model: str, fields: dict[str, Any], client: str) -> ChatStream:
        reservation = await self._reserve(client, fields["max_tokens"])
        try:
            stream = await self.llm.chat_stream(model, fields, self._args.request_deadline_s)
        except BaseException:
            self._settle(reservation, 0)
            raise
        return ChatStream(self._counted(stream.chunks, reservation), stream.pool)

    async def _counted(self, chunks: AsyncIterator[str], reservation: Reservation | None) -> AsyncIterator[str]:
        used = 0
        pieces = 0
        try:
            async for payload in chunks:
                if '"usage"' in payload:
                    usage = json.loads(payload).get("usage") or {}
                    used = int(usage.get("completion_tokens") or used)
                elif '"content"' in payload:
                    pieces += 1
                yield payload
        finally:
            self._settle(reservation, used or pieces)

    # -- the budget -------------------------------------------------------------------
    async def _reserve(self, client: str, tokens: int) -> Reservation | None:
        return None if self._budget is None else await self._budget.reserve(client, tokens)

    async def _settled(self, reservation: Reservation | None, work: Any) -> Any:
        used: int | None = None  # not known (cancelled, or failed midway): charged in full
        try:
            result = await work
            used = _tokens_of(result)
            return result
        except AppError:
            used = 0  # refused or failed before generating (busy pools, bad input)
            raise
        finally:
            self._settle(reservation, used)

    def _settle_from(self, reservation: Reservation | None, task: asyncio.Task[_Generated]) -> None:
        if task.cancelled():
            self._settle(reservation, None)
        elif task.exception() is not None:
            self._settle(reservation, 0 if isinstance(task.exception(), AppError) else None)
        else:
            self._settle(reservation, task.result().tokens)

    def _settle(self, reservation: Reservation | None, used: int | None) -> None:
        """Gives back unused tokens in the background (``used`` None: none):
        settling must not wait on Redis, nor be lost when the request that
        reserved is cancelled."""
        if reservation is None or self._budget is None or reservation.settled:
            return
        tokens = reservation.tokens if used is None else used
        task = asyncio.ensure_future(self._budget.settle(reservation, tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def drain(self) -> None:
        """Waits for the budget settlements still in the background (shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    # -- helpers ----------------------------------------------------------------------
    def _params(self, max_tokens: int | None, temperature: float | None) -> dict[str, Any]:
        return {
            "max_tokens": max_tokens or self._args.default_max_tokens,
            "temperature": self._args.default_temperature if temperature is None else temperature,
        }

    def _log_question(self, question: str) -> None:
        if self._args.log_question_text:
            log.info("question: %s", question[:200])


def _tokens_of(result: Any) -> int:
    if isinstance(result, _Generated):
        return result.tokens
    if isinstance(result, ChatResult):
        return int((result.body.get("usage") or {}).get("completion_tokens") or 0)
    return 0


async def _replay(answer: Answer) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    yield "token", {"text": answer.answer}
    yield "done", answer.body()
