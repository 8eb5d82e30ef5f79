"""serve_config.yaml args validation and the LLM deployment configs built from them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.config import AppArgs, PoolArgs, app_args_from_serve_config
from serve_app.llm import deployment_name, engine_bundle, llm_config, resolve_model_source


def test_repo_serve_config_is_valid() -> None:
    args = app_args_from_serve_config()
    assert args.llm is not None
    pools = {p.name: p for p in args.llm.models[0].pools}
    assert set(pools) == {"gpu", "cpu"}
    assert args.llm.pool_preference == ["gpu", "cpu"]
    # Serve's default of 5 in flight would cap questions reaching the engine.
    assert args.ingress.max_ongoing_requests >= 64
    assert args.ingress.serve_options()["max_queued_requests"] > 0


def test_our_limits_fire_before_serves() -> None:
    """Serve's 503/408 are plain text: our admission limit, question deadline
    and drain time must sit inside Serve's limits."""
    import yaml

    from serve_app.config import SERVE_CONFIG_PATH

    args = app_args_from_serve_config()
    assert args.llm is not None
    assert args.in_flight_limit < args.ingress.max_ongoing_requests
    request_timeout_s = yaml.safe_load(SERVE_CONFIG_PATH.read_text())["http_options"]["request_timeout_s"]
    assert args.llm.request_deadline_s < request_timeout_s
    for pool in args.llm.models[0].pools:
        assert pool.deployment.graceful_shutdown_timeout_s >= args.llm.request_deadline_s
    llm = {"models": [{"model_id": "m", "pools": [{"name": "cpu"}]}], "default_model": "m"}
    with pytest.raises(ValidationError, match="graceful_shutdown_timeout_s"):
        AppArgs.model_validate({"llm": {**llm, "request_deadline_s": 300}})
    with pytest.raises(ValidationError, match="max_in_flight"):
        AppArgs.model_validate({"max_in_flight": 65, "ingress": {"max_ongoing_requests": 64}})
    assert AppArgs.model_validate({"ingress": {"max_ongoing_requests": 64}}).in_flight_limit == 56


@pytest.mark.parametrize(
    "args",
    [
        {"cach": {}},  # typo
        {"cache": {"user_ttl_s": -1}},
        {"ingress": {"num_replicas": 2, "autoscaling": {"min_replicas": 1, "max_replicas": 2}}},
        {"ingress": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}},
        {"llm": {"default_model": "x", "models": [{"model_id": "y", "pools": [{"name": "cpu"}]}]}},
        {"llm": {"models": [{"pools": [{"name": "cpu"}, {"name": "cpu"}]}]}},
        {"llm": {"models": [{"pools": [{"name": "Bad Name"}]}]}},
    ],
)
def test_invalid_args_are_rejected(args: dict) -> None:
    with pytest.raises(ValidationError):
        AppArgs.model_validate(args)


def test_gpu_pool_deployed_only_with_gpus_when_auto() -> None:
    gpu = PoolArgs(name="gpu", accelerator="gpu", enabled="auto")
    assert not gpu.is_enabled(cluster_gpus=0)
    assert gpu.is_enabled(cluster_gpus=4)
    assert PoolArgs(name="gpu", accelerator="gpu", enabled=True).is_enabled(0)
    assert not PoolArgs(name="cpu", enabled=False).is_enabled(4)
    assert PoolArgs(name="cpu", enabled="auto").is_enabled(0)


def test_gpu_pool_llm_config() -> None:
    args = app_args_from_serve_config()
    model = args.llm.models[0]
    gpu = next(p for p in model.pools if p.name == "gpu")
    cfg = llm_config(model, gpu)
    assert cfg["placement_group_config"] == {"bundles": [{"CPU": 1.0, "GPU": 1.0}]}
    assert cfg["engine_kwargs"]["dtype"] == "bfloat16"
    assert cfg["engine_kwargs"]["gpu_memory_utilization"] == 0.85
    dep = cfg["deployment_config"]
    assert dep["autoscaling_config"]["min_replicas"] == 0  # scales from zero
    assert dep["max_queued_requests"] == gpu.deployment.max_queued_requests
    # The replica actor must not reserve a second GPU beside the engine's bundle.
    assert dep["ray_actor_options"] == {"num_cpus": 0, "num_gpus": 0}
    assert deployment_name(model, gpu) == "gpu-pool:HuggingFaceTB--SmolLM2-135M-Instruct"
    assert cfg["experimental_configs"]["stream_batching_interval_ms"] == 0


def test_cpu_pool_llm_config() -> None:
    args = app_args_from_serve_config()
    model = args.llm.models[0]
    cpu = next(p for p in model.pools if p.name == "cpu")
    cfg = llm_config(model, cpu)
    assert engine_bundle(cpu) == {"CPU": 1.0}
    assert cfg["engine_kwargs"] == {
        "dtype": "float32", "enforce_eager": True, "max_model_len": 2048, "max_num_seqs": 32}
    assert cfg["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_model_sources() -> None:
    assert resolve_model_source("s3://bucket/smollm2/") == "s3://bucket/smollm2/"
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_source("/abs/path").startswith("/abs/path")
    assert resolve_model_source("models/SmolLM2-135M-Instruct").endswith("/models/SmolLM2-135M-Instruct")


def test_token_caps_are_consistent() -> None:
    llm = {"models": [{"model_id": "m", "pools": [{"name": "cpu"}]}], "default_model": "m"}
    with pytest.raises(ValidationError, match="default_max_tokens"):
        AppArgs.model_validate({"llm": {**llm, "max_tokens_cap": 64, "default_max_tokens": 128}})
    # A budget smaller than one answer at the cap would refuse such answers for ever.
    with pytest.raises(ValidationError, match=r"question_tokens\.burst"):
        AppArgs.model_validate({"llm": llm, "rate_limits": {"question_tokens": {"rate_per_s": 10, "burst": 100}}})
    AppArgs.model_validate({"llm": llm, "rate_limits": {"question_tokens": None}})


def test_the_old_forwarded_for_switch_is_gone() -> None:
    """trust_forwarded_for trusted anyone's X-Forwarded-For (finding 4): a
    config still carrying it must fail the deploy, not be ignored."""
    with pytest.raises(ValidationError, match="trust_forwarded_for"):
        AppArgs.model_validate({"rate_limits": {"trust_forwarded_for": True}})
    assert app_args_from_serve_config().rate_limits.trusted_proxies == []


@pytest.mark.parametrize("overlay", ["test", "prod"])
def test_eks_overlays_trust_exactly_their_vpc_and_loopback(overlay: str) -> None:
    """The proxies in front of the replicas on EKS: the ALB (in the VPC of
    infra/live/<env>/env.hcl) and Serve's HAProxy (loopback on the same node,
    the pod's VPC address otherwise)."""
    import re
    from ipaddress import ip_network

    from devtools.kuberay_gen import extract_serve_config
    from serve_app.config import REPO_ROOT

    env = (REPO_ROOT / "infra" / "live" / overlay / "env.hcl").read_text()
    vpc = re.search(r'vpc_cidr\s*=\s*"([^"]+)"', env).group(1)  # type: ignore[union-attr]
    args = AppArgs.model_validate(extract_serve_config(overlay)["applications"][0]["args"])
    assert set(args.rate_limits.trusted_proxies) == {ip_network(vpc), ip_network("127.0.0.0/8"),
                                                     ip_network("::1/128")}


def test_the_service_imports_no_tooling() -> None:
    """serve_app/ is what the images run: it never imports the tools around it."""
    import ast
    from pathlib import Path

    import serve_app

    root = Path(serve_app.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names
                          if n.split(".")[0] in ("devtools", "tests", "loadtests")]
    assert not offenders, offenders
