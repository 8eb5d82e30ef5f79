"""Questions to the default model: one JSON answer, or Server-Sent Events."""

# No "from __future__ import annotations": FastAPI must see the real types of
# parameters built from args (caps) when the routes are declared.

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.answers import question_model
from serve_app.config import AppArgs
from serve_app.http import sse
from serve_app.http.deps import AnswersDep, PrincipalDep
from serve_app.http.errors import documented
from serve_app.http.policy import Protection
from serve_app.schemas import QuestionResponse

CacheControl = Annotated[
    str | None,
    Header(max_length=256, description="`no-cache`: answer afresh; such an answer is not shared with others."),
]


def _no_cache(cache_control: str | None) -> bool:
    value = (cache_control or "").lower()
    return "no-cache" in value or "no-store" in value


def router(args: AppArgs) -> APIRouter:
    assert args.llm is not None
    protection = Protection("questions", body_bytes=args.limits.max_body_bytes)
    QuestionRequest = question_model(args.llm.max_tokens_cap)
    r = APIRouter(
        tags=["questions"],
        route_class=protection.route_class(),
        responses={**protection.responses(), **protection.body_responses(),
                   **documented({504: "no answer within the deadline (generation cancelled)"})},
    )

    @r.post("/question", response_model=QuestionResponse)
    async def question(body: QuestionRequest, answers: AnswersDep, principal: PrincipalDep,  # type: ignore[valid-type]
                       cache_control: CacheControl = None) -> Any:
        answer = await answers.ask(body.question, body.max_tokens, body.temperature, principal.id,  # type: ignore[attr-defined]
                                   no_cache=_no_cache(cache_control))
        return JSONResponse(answer.body(), headers={"X-Served-By-Pool": answer.pool} if answer.pool else None)

    @r.post(
        "/question/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {sse.MEDIA_TYPE: {}}, "description": "token events, then done"}},
    )
    async def question_stream(body: QuestionRequest, answers: AnswersDep, principal: PrincipalDep,  # type: ignore[valid-type]
                              cache_control: CacheControl = None) -> Any:
        stream = await answers.ask_stream(body.question, body.max_tokens, body.temperature,  # type: ignore[attr-defined]
                                          principal.id, no_cache=_no_cache(cache_control))

        async def frames() -> AsyncIterator[bytes]:
            async for event, data in stream.events:
                yield sse.frame(data, event)

        return sse.response(frames(), {"X-Served-By-Pool": stream.pool} if stream.pool else None)

    return r
