"""The real model on vLLM through Ray Serve: one deployment for the whole tier.

Pools, as a GPU+CPU cluster would have them but all CPU-backed here:
- ``primary`` stands in for the GPU pool, with a tight queue (spill-over);
- ``fallback`` is the CPU pool;
- a second model whose only pool needs a GPU, which this machine lacks, so
  it never gets a replica (the "pool absent" path: a fast 503).
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import pytest

from devtools.provision import is_provisioned, provision_model
from serve_app.config import DEFAULT_MODEL_ID
from tests.conftest import REDIS_URL
from tests.loadtests.conftest import locust_bin  # noqa: F401  (the locustfile's LLM journeys run here)
from tests.serve_harness import REPO, args_from_serve_config

MODEL_DIR = REPO / "models" / "SmolLM2-135M-Instruct"
GPU_ONLY_MODEL = "smollm2-gpu-only"
DEADLINE_S = 20


def llm_test_args() -> dict:
    args = args_from_serve_config()
    cpu_pool = next(p for p in args["llm"]["models"][0]["pools"] if p["name"] == "cpu")
    primary = copy.deepcopy(cpu_pool)
    primary.update(name="primary")
    # One in flight and one waiting: the third concurrent question spills.
    primary["deployment"].update(max_ongoing_requests=1, max_queued_requests=1)
    primary["engine_kwargs"]["max_num_seqs"] = 4
    fallback = copy.deepcopy(cpu_pool)
    fallback.update(name="fallback")
    gpu_pool = next(p for p in args["llm"]["models"][0]["pools"] if p["name"] == "gpu")
    gpu_pool = copy.deepcopy(gpu_pool)
    gpu_pool["enabled"] = True
    # These tests ask many questions from one address: the limiter is tested
    # in tests/integration (test_auth_limits, test_serve_users).
    args["rate_limits"] = {"enabled": False}
    args["llm"].update(
        pool_preference=["primary", "fallback", "gpu"],
        request_deadline_s=DEADLINE_S,
        # The deadline test needs an answer longer than DEADLINE_S takes here
        # (512 tokens, the default cap, can finish within it).
        max_tokens_cap=2048,
        default_max_tokens=32,
        models=[
            {"model_id": DEFAULT_MODEL_ID, "source": str(MODEL_DIR), "pools": [primary, fallback]},
            {"model_id": GPU_ONLY_MODEL, "source": str(MODEL_DIR), "pools": [gpu_pool]},
        ],
    )
    return args


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not is_provisioned(MODEL_DIR):
        provision_model("local-gguf", MODEL_DIR, progress=False)
    return MODEL_DIR


@pytest.fixture(scope="module")
def llm_app(ray_cluster, session_database, model_dir):
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    config = ray_cluster.serve_config(
        llm_test_args(),
        {"DATABASE_URL": session_database, "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": prefix},
    )
    took = ray_cluster.deploy(config, timeout_s=900)
    print(f"\nLLM app (2 CPU engines) deployed and RUNNING in {took:.1f}s")
    ray_cluster.cold_start_s = took
    return ray_cluster
