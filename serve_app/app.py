"""The deployment graph: the only place that knows which deployments exist.

``serve_config.yaml`` points at ``build_app``; its ``args`` are validated by
``AppArgs``. One ingress deployment is bound to one LLM deployment per
enabled (model, pool) pair.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from serve_app.config import AppArgs
from serve_app.deployment import Ingress

log = logging.getLogger(__name__)


def _cluster_gpus() -> float:
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0))


def build_app(args: dict[str, Any]) -> Application:
    app_args = AppArgs.model_validate(args or {})
    llm_pools: dict[str, list[dict[str, Any]]] = {}
    if app_args.llm is not None:
        from ray import serve

        from serve_app.autoscaling import pool_server_cls
        from serve_app.llm import deployment_name, deployment_options, replica_llm_config

        gpus = _cluster_gpus()
        for model in app_args.llm.models:
            pools = []
            for pool in model.pools:
                if not pool.is_enabled(gpus):
                    log.info("pool %s of %s not deployed (enabled=%s, cluster GPUs=%s)",
                             pool.name, model.model_id, pool.enabled, gpus)
                    continue
                name = deployment_name(model, pool)
                # Built from our config alone: Ray Serve LLM (and vLLM) are
                # imported in the pool's replica, not here (issue 16).
                autoscaling = pool.deployment.autoscaling
                server_cls = pool_server_cls(autoscaling.policy if autoscaling is not None else None)
                deployment = serve.deployment(server_cls, **deployment_options(model, pool, name)).bind(
                    replica_llm_config(model, pool))
                pools.append(
                    {
                        "name": pool.name,
                        "deployment": name,
                        "handle": deployment,
                        "scale_from_zero": autoscaling is not None and autoscaling.min_replicas == 0,
                    }
                )
            if not pools:
                raise ValueError(f"model {model.model_id} has no enabled pool")
            llm_pools[model.model_id] = pools
    return Ingress.options(**app_args.ingress.serve_options()).bind(app_args.model_dump(mode="json"), llm_pools)
