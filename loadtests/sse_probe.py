"""A tiny Serve app that streams Server-Sent Events at a known pace.

The benchmark deploys it beside the users app under each proxy mode to tell
whether a proxy (Serve's HTTP proxy, or HAProxy with RAY_SERVE_ENABLE_HA_PROXY)
relays a stream as it is produced or buffers it: the first of 5 events
200 ms apart must arrive long before the last.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve

api = FastAPI()


@api.get("/sse")
async def sse(events: int = 5, gap_ms: int = 200) -> StreamingResponse:
    async def gen() -> AsyncIterator[str]:
        for i in range(events):
            yield f"event: token\ndata: {i}\n\n"
            await asyncio.sleep(gap_ms / 1000)
        yield "event: done\ndata: {}\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


@serve.deployment(name="SSEProbe", ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class SSEProbe:
    pass


app = SSEProbe.bind()
