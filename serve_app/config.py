"""Deploy-time knobs: the ``args:`` of ``serve_config.yaml``, validated.

Everything here is safe to commit (no secrets); secrets and per-machine values
come from the environment through ``serve_app.settings``.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, model_validator

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
REPO_ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG_PATH = REPO_ROOT / "serve_config.yaml"


class _Strict(BaseModel):
    # A typo in serve_config.yaml must fail the deploy, not be ignored.
    model_config = ConfigDict(extra="forbid")


class Autoscaling(_Strict):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=10.0, ge=0)
    downscale_delay_s: float = Field(default=300.0, ge=0)
    # Serve's AutoscalingPolicy ({"policy_function": "module:callable", "policy_kwargs": {...}});
    # None: Serve's default (ongoing requests per replica). serve_app/autoscaling.py has ours.
    policy: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        return self


class DeploymentOptions(_Strict):
    """The Serve deployment options we let operators set."""

    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling: Autoscaling | None = None
    max_ongoing_requests: int = Field(default=64, ge=1)
    # Serve queues without limit by default; a bound turns overload into a
    # fast 503 instead of an ever-growing wait.
    max_queued_requests: int = Field(default=256, ge=1)
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory_bytes: int | None = Field(default=None, ge=0)
    # Covers the default question deadline (llm.request_deadline_s, 120 s):
    # a draining replica finishes what it holds.
    graceful_shutdown_timeout_s: float = Field(default=130.0, ge=0)
    graceful_shutdown_wait_loop_s: float = Field(default=2.0, ge=0)
    health_check_period_s: float = Field(default=10.0, gt=0)
    health_check_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_of(self) -> DeploymentOptions:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set num_replicas or autoscaling, not both")
        return self

    def serve_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "graceful_shutdown_wait_loop_s": self.graceful_shutdown_wait_loop_s,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
        }
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.model_dump(exclude_none=True)
        else:
            opts["num_replicas"] = self.num_replicas or 1
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        if self.memory_bytes:
            actor["memory"] = self.memory_bytes
        opts["ray_actor_options"] = actor
        return opts


class CacheArgs(_Strict):
    enabled: bool = True
    user_ttl_s: int = Field(default=60, ge=0)
    users_list_ttl_s: int = Field(default=60, ge=0)
    answer_ttl_s: int = Field(default=3600, ge=0)


class PoolArgs(_Strict):
    """One replica pool of a model: CPU or GPU workers, each its own deployment."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    accelerator: Literal["cpu", "gpu"] = "cpu"
    # auto: deploy a GPU pool only when the cluster reports GPUs.
    enabled: Literal["auto", "true", "false"] | bool = "auto"
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    # Environment for the engine's worker processes (e.g. VLLM_CPU_KVCACHE_SPACE).
    env: dict[str, str] = Field(default_factory=dict)
    # Ray Serve LLM batches streamed chunks every 50 ms by default; that
    # interval adds straight to time to first token.
    stream_batching_interval_ms: float = Field(default=0.0, ge=0)
    # Where the engine runs, whatever the resource request says: "cpu" runs a
    # GPU pool's engine on CPU (vLLM CPU) on a node that advertises a GPU (the
    # local autoscaling cluster's fake GPU node); the placement bundle keeps
    # its GPU, so scheduling and autoscaling are those of the real pool.
    engine_device: Literal["auto", "cpu"] = "auto"

    def is_enabled(self, cluster_gpus: float) -> bool:
        value = str(self.enabled).lower()
        if value == "auto":
            return self.accelerator == "cpu" or cluster_gpus > 0
        return value == "true"


class ModelArgs(_Strict):
    model_id: str = DEFAULT_MODEL_ID
    # A local folder, a hub id or an s3:// URI; relative paths are resolved
    # against the settings' model_dir parent (the repo root locally).
    source: str = "models/SmolLM2-135M-Instruct"
    pools: list[PoolArgs]

    @model_validator(mode="after")
    def _unique_pools(self) -> ModelArgs:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names) or not names:
            raise ValueError("a model needs at least one pool, with unique names")
        return self


class LLMArgs(_Strict):
    default_model: str = DEFAULT_MODEL_ID
    models: list[ModelArgs]
    # Pools are tried in this order; a pool that is absent, scaling up or full
    # hands the request to the next one.
    pool_preference: list[str] = Field(default_factory=lambda: ["gpu", "cpu"])
    # When a preferred pool has no running replica, poke it so it scales up
    # from zero while the question is served by the next pool.
    wake_idle_pools: bool = True
    request_deadline_s: float = Field(default=120.0, gt=0)
    # The most tokens one answer may generate, on every route (/question,
    # /question/stream, /v1/chat/completions): with the request rate and the
    # token budget, it bounds what one request can cost the engine.
    max_tokens_cap: int = Field(default=512, ge=1, le=32768)
    default_max_tokens: int = Field(default=128, ge=1)
    default_temperature: float = Field(default=0.7, ge=0, le=2)
    # Question text is user content: kept out of the logs unless turned on.
    log_question_text: bool = False
    # How often each ingress replica refreshes which pools have running replicas.
    pool_status_refresh_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _default_known(self) -> LLMArgs:
        ids = [m.model_id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("model ids must be unique")
        if self.default_model not in ids:
            raise ValueError(f"default_model {self.default_model!r} is not among models {ids}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("default_max_tokens must not exceed max_tokens_cap")
        return self


class AuthArgs(_Strict):
    """Which routes need ``Authorization: Bearer <api key>``; health stays open."""

    users: Literal["key", "open"] = "key"
    # /question, /question/stream and /v1/*.
    questions: Literal["key", "open"] = "open"
    # A verified key is remembered this long per replica, so auth costs no
    # database round trip per request; a revoked key stops working within it.
    key_cache_ttl_s: float = Field(default=10.0, ge=0, le=300)


class Bucket(_Strict):
    """A token bucket: ``rate_per_s`` sustained, bursts up to ``burst``."""

    rate_per_s: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitArgs(_Strict):
    """Per API key (or client IP when anonymous), shared through Redis."""

    enabled: bool = True
    questions: Bucket = Field(default_factory=lambda: Bucket(rate_per_s=2, burst=20))
    users: Bucket = Field(default_factory=lambda: Bucket(rate_per_s=50, burst=200))
    # Generated tokens per key/address on the question routes: each answer
    # reserves its max_tokens up front and gives back what it did not use.
    # null: count requests only.
    question_tokens: Bucket | None = Field(default_factory=lambda: Bucket(rate_per_s=64, burst=4096))
    # Failed API-key checks per client address. Past it, a key that would need
    # a database lookup is refused with 429 before the lookup.
    failed_auth: Bucket = Field(default_factory=lambda: Bucket(rate_per_s=0.5, burst=10))
    # Proxies whose X-Forwarded-For entries are believed (CIDRs). A request
    # whose peer is in one of them is attributed to the rightmost entry that
    # is not; from anyone else the header is ignored (the client wrote it).
    # None locally; on EKS the VPC (the ALB's subnets and the pods', where
    # Serve's per-node HAProxy hands requests on without adding an entry).
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)

    @property
    def proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return tuple(self.trusted_proxies)  # type: ignore[arg-type]


class InputLimits(_Strict):
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 2**20)
    # Deeper JSON is refused before it is parsed (Python's parser recurses).
    max_json_depth: int = Field(default=32, ge=2, le=512)


class AppArgs(_Strict):
    docs_enabled: bool = True
    auth: AuthArgs = Field(default_factory=AuthArgs)
    rate_limits: RateLimitArgs = Field(default_factory=RateLimitArgs)
    limits: InputLimits = Field(default_factory=InputLimits)
    # Guarded requests in flight per ingress replica before a fast 503;
    # default: 7/8 of the ingress's max_ongoing_requests.
    max_in_flight: int | None = Field(default=None, ge=1)
    ingress: DeploymentOptions = Field(default_factory=DeploymentOptions)
    cache: CacheArgs = Field(default_factory=CacheArgs)
    users_default_limit: int = Field(default=50, ge=1, le=200)
    users_max_limit: int = Field(default=200, ge=1, le=1000)
    # How long an Idempotency-Key is remembered; expired ones are purged.
    idempotency_ttl_s: int = Field(default=86_400, ge=60, le=30 * 86_400)
    # None: the app serves users only (unit tests, users benchmark).
    llm: LLMArgs | None = None

    @property
    def in_flight_limit(self) -> int:
        ongoing = self.ingress.max_ongoing_requests
        return self.max_in_flight or max(1, ongoing - ongoing // 8)

    @model_validator(mode="after")
    def _serve_backstops(self) -> AppArgs:
        # Our own limits must fire before Serve's, whose answers are plain
        # text outside our envelope.
        if self.in_flight_limit > self.ingress.max_ongoing_requests:
            raise ValueError("max_in_flight must not exceed ingress.max_ongoing_requests")
        if self.llm is not None and self.ingress.graceful_shutdown_timeout_s < self.llm.request_deadline_s:
            raise ValueError(
                "ingress.graceful_shutdown_timeout_s must cover llm.request_deadline_s, "
                "or a draining replica cuts off questions in flight"
            )
        tokens = self.rate_limits.question_tokens
        if self.llm is not None and tokens is not None and tokens.burst < self.llm.max_tokens_cap:
            raise ValueError("rate_limits.question_tokens.burst must be at least llm.max_tokens_cap, "
                             "or an answer of max_tokens_cap could never be admitted")
        return self


def load_serve_config(path: Path = SERVE_CONFIG_PATH) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def app_args_from_serve_config(path: Path = SERVE_CONFIG_PATH, app_name: str | None = None) -> AppArgs:
    config = load_serve_config(path)
    apps = config["applications"]
    app = next(a for a in apps if app_name is None or a["name"] == app_name)
    return AppArgs.model_validate(app.get("args") or {})
