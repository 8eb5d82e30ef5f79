"""OpenAI-compatible chat completions and model list: the official ``openai``
client and vLLM's benchmark client work unchanged against ``/v1``."""

# No "from __future__ import annotations": FastAPI must see the real types of
# parameters built from args (caps) when the routes are declared.

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.answers import chat_model
from serve_app.config import AppArgs
from serve_app.errors import AppError, NotFound
from serve_app.http import sse
from serve_app.http.deps import AnswersDep, PrincipalDep
from serve_app.http.errors import documented
from serve_app.http.policy import Protection


def router(args: AppArgs) -> APIRouter:
    assert args.llm is not None
    # Same group as /question: one rate limit and one token budget per caller.
    protection = Protection("questions", body_bytes=args.limits.max_body_bytes)
    ChatCompletionRequest = chat_model(args.llm.max_tokens_cap)
    r = APIRouter(prefix="/v1", tags=["openai"], route_class=protection.route_class(),
                  responses=protection.responses())

    @r.get("/models")
    async def models(answers: AnswersDep) -> dict[str, Any]:
        created = int(time.time())
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": created, "owned_by": "qa-service"}
                     for m in answers.llm.model_ids()],
        }

    @r.post(
        "/chat/completions",
        responses={
            200: {"content": {"application/json": {}, sse.MEDIA_TYPE: {}},
                  "description": "an OpenAI chat completion, or its chunks as SSE when stream is true"},
            **protection.body_responses(),
            **documented({404: "unknown model", 422: "invalid input, or a field that is not accepted",
                          504: "past the deadline"}),
        },
    )
    async def chat_completions(body: ChatCompletionRequest, answers: AnswersDep,  # type: ignore[valid-type]
                               principal: PrincipalDep) -> Any:
        model, fields = answers.engine_request(body)
        if model not in answers.llm.model_ids():
            raise NotFound(f"unknown model {model!r}; see GET /v1/models")
        if body.stream:  # type: ignore[attr-defined]
            stream = await answers.chat_stream(model, fields, principal.id)

            async def frames() -> AsyncIterator[bytes]:
                try:
                    async for payload in stream.chunks:
                        yield sse.frame(payload)
                except AppError as exc:
                    yield sse.frame({"error": {"code": exc.code, "message": exc.message}})
                yield sse.frame(sse.DONE)

            return sse.response(frames(), {"X-Served-By-Pool": stream.pool})
        result = await answers.chat(model, fields, principal.id)
        return JSONResponse(result.body, headers={"X-Served-By-Pool": result.pool})

    return r
