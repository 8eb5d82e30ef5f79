"""The FastAPI app under plain uvicorn, without Ray and without a model: the
baseline of the users path and the target of the locust smoke test.

    DATABASE_URL=... REDIS_URL=... REDIS_KEY_PREFIX=... \
    .venv/bin/python -m uvicorn --factory loadtests.uvicorn_app:create --port 8001

``LOADTEST_APP_ARGS``: the app's args as JSON (what the benchmark deploys on
Ray Serve, API keys and rate limits included), so both sides run the same
app; ``llm`` is dropped (no model here). Without it: serve_config.yaml's args
with API keys and rate limits off (the smoke and rotation tests' stack), and
``LOADTEST_CACHE_ENABLED=0`` turns the Redis cache off (args cache.enabled=false).
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI

from serve_app.config import AppArgs, load_serve_config
from serve_app.http import create_app
from serve_app.settings import Settings


def create() -> FastAPI:
    given = os.environ.get("LOADTEST_APP_ARGS")
    if given:
        args = {**json.loads(given), "llm": None}
        return create_app(AppArgs.model_validate(args), Settings())
    enabled = os.environ.get("LOADTEST_CACHE_ENABLED", "1") not in ("0", "false", "no")
    # serve_config.yaml's args (ingress limits included), as the Serve side runs them.
    args = load_serve_config()["applications"][0]["args"]
    args.update(llm=None, cache={**args["cache"], "enabled": enabled}, auth={"users": "open"},
                rate_limits={"enabled": False})
    return create_app(AppArgs.model_validate(args), Settings())
