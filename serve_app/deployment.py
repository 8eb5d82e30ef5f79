"""The Ray Serve ingress deployment: hosts the FastAPI app of
``serve_app.http`` with the LLM pool handles bound in ``serve_app.app``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from serve_app.config import AppArgs
from serve_app.http import create_app
from serve_app.http.resources import LLMFactory
from serve_app.llm_client import LLMBackend
from serve_app.metrics import AppMetrics
from serve_app.settings import get_settings


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """Serve ingress; the app is built after __init__ so it can close over the
    validated args and the LLM pool handles bound in ``serve_app.app``."""

    def __init__(self, args: dict[str, Any], llm_pools: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self._args = AppArgs.model_validate(args)
        self._llm_pools = llm_pools or {}

    def __serve_build_asgi_app__(self) -> FastAPI:
        from serve_app.llm_client import Pool, ServeLLMBackend
        from serve_app.logs import configure_logging

        settings = get_settings()
        configure_logging(settings.log_level, under_serve=True)
        factory: LLMFactory | None = None
        if self._args.llm is not None and self._llm_pools:
            llm_args = self._args.llm
            app_name = serve.get_replica_context().app_name

            def factory(metrics: AppMetrics) -> LLMBackend:
                pools = {
                    model: [
                        Pool(
                            name=p["name"],
                            deployment_name=p["deployment"],
                            handle=p["handle"],
                            can_scale_from_zero=p["scale_from_zero"],
                        )
                        for p in sorted(pools, key=lambda p: _preference(llm_args.pool_preference, p["name"]))
                    ]
                    for model, pools in self._llm_pools.items()
                }
                return ServeLLMBackend(
                    pools,
                    app_name=app_name,
                    wake_idle_pools=llm_args.wake_idle_pools,
                    refresh_s=llm_args.pool_status_refresh_s,
                    metrics=metrics,
                )

        return create_app(self._args, settings, factory, behind_serve_proxy=True)


def _preference(order: list[str], name: str) -> int:
    return order.index(name) if name in order else len(order)
