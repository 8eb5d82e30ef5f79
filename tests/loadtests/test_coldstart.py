"""The cold start's "engine start" split from a pool replica's log
(loadtests/coldstart.py). The lines are the replica's own, copied from a run on
2026-12-01 (Ray 2.60.0, vLLM 0.32.0; the vLLM config line shortened)."""

from __future__ import annotations

import time

from loadtests.coldstart import engine_marks, engine_phases

LOG = [
    "[pool-coldstart] engine_start 1796093978.861 pid=7164",
    "INFO 2026-12-01 02:59:56,125 qa_cpu-pool:HuggingFaceTB--SmolLM2-135M-Instruct hbnrcyn5 -- "
    "Using executor class: <class 'vllm.v1.executor.multiproc_executor.MultiprocExecutor'>",
    "(EngineCore pid=7280) INFO 12-01 03:00:09 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: "
    "model='/work/main/models/SmolLM2-135M-Instruct'",
    "(Worker pid=7303) INFO 12-01 03:00:20 [cpu_model_runner.py:68] Starting to load model "
    "/work/main/models/SmolLM2-135M-Instruct...",
    "(Worker pid=7303) INFO 12-01 03:00:21 [default_loader.py:501] Loading weights took 0.43 seconds",
    "(EngineCore pid=7280) INFO 12-01 03:00:23 [core.py:402] init engine (profile, create kv cache, warmup model) "
    "took 0.98 s",
    # a later engine core line with the same text must not move the mark
    "(EngineCore pid=7280) INFO 12-01 03:09:00 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config:",
]


def _local(y: int, mo: int, d: int, h: int, mi: int, s: float) -> float:
    return time.mktime((y, mo, d, h, mi, int(s), 0, 0, -1)) + s % 1


def test_engine_marks_read_ray_and_vllm_timestamps() -> None:
    marks = engine_marks(LOG, 2026)
    assert marks == {
        "config_built": _local(2026, 12, 1, 2, 59, 56.125),
        "engine_core_up": _local(2026, 12, 1, 3, 0, 9),
        "worker_up": _local(2026, 12, 1, 3, 0, 20),
        "engine_core_ready": _local(2026, 12, 1, 3, 0, 23),
    }


def test_engine_phases_add_up_to_the_replica_marks() -> None:
    init = _local(2026, 12, 1, 2, 59, 27.0)
    replica = {"replica_init": init, "engine_start": init + 12.0, "engine_ready": _local(2026, 12, 1, 3, 0, 25.5)}
    phases = engine_phases({**replica, **engine_marks(LOG, 2026)})
    assert list(phases) == ["replica imports", "engine config in the replica",
                            "engine core process (spawn + import)", "worker process (spawn + import)",
                            "model load, KV cache, warm-up", "frontend"]
    assert phases["replica imports"] == 12.0
    assert abs(phases["engine config in the replica"] - 17.125) < 1e-6
    assert abs(phases["engine core process (spawn + import)"] - 12.875) < 1e-6
    assert phases["worker process (spawn + import)"] == 11.0
    assert phases["model load, KV cache, warm-up"] == 3.0
    assert phases["frontend"] == 2.5
    total = sum(v for v in phases.values() if v is not None)
    assert abs(total - (replica["engine_ready"] - replica["replica_init"])) < 1e-6


def test_a_missing_line_leaves_its_phases_unknown() -> None:
    lines = [line for line in LOG if "Starting to load model" not in line]
    phases = engine_phases({"replica_init": 0.0, **engine_marks(lines, 2026)})
    assert phases["worker process (spawn + import)"] is None
    assert phases["model load, KV cache, warm-up"] is None
    assert phases["replica imports"] is None  # no engine_start mark given
    assert phases["engine core process (spawn + import)"] is not None


def test_the_report_shows_the_engine_phases_of_both_replicas() -> None:
    from loadtests.report import write_report
    from tests.loadtests.test_report_math import _results

    res = _results()
    assert 'Inside "engine start"' not in write_report(res, [])
    p = {"replica imports": 10.0, "engine config in the replica": 0.3, "engine core process (spawn + import)": 13.0,
         "worker process (spawn + import)": 11.0, "model load, KV cache, warm-up": 3.0, "frontend": None}
    res["cold_start"]["engine_phases"] = p
    res["second_replica"] = {"ready_s": 90.0, "engine_phases": {**p, "frontend": 2.0}}
    md = write_report(res, [])
    assert 'Inside "engine start"' in md
    assert "| cold start | 10.0 s | 0.3 s | 13.0 s | 11.0 s | 3.0 s | n/a |" in md
    assert "| second replica | 10.0 s | 0.3 s | 13.0 s | 11.0 s | 3.0 s | 2.0 s |" in md


def test_the_pool_override_repeats_the_bounds_from_args_and_can_raise_them() -> None:
    import copy

    import yaml

    from loadtests.coldstart import with_pool_override
    from serve_app.config import SERVE_CONFIG_PATH

    config = yaml.safe_load(SERVE_CONFIG_PATH.read_text())
    before = copy.deepcopy(config)
    same = with_pool_override(config)
    assert config == before  # not changed in place
    (override,) = same["applications"][0]["deployments"]
    assert override["name"] == "cpu-pool:HuggingFaceTB--SmolLM2-135M-Instruct"
    pool = next(p for p in config["applications"][0]["args"]["llm"]["models"][0]["pools"] if p["name"] == "cpu")
    auto = pool["deployment"]["autoscaling"]
    assert override["autoscaling_config"]["min_replicas"] == auto["min_replicas"]
    assert override["autoscaling_config"]["max_replicas"] == auto["max_replicas"]
    # No policy key: Serve hashes the overrides' policies into the app's code
    # version (Ray 2.60.0 deploy_utils.get_app_code_version); raising the
    # bounds must leave that version alone.
    assert "policy" not in override["autoscaling_config"]
    two = with_pool_override(same, replicas=2)
    (raised,) = two["applications"][0]["deployments"]
    assert raised["autoscaling_config"] == {**override["autoscaling_config"], "min_replicas": 2, "max_replicas": 2}
    assert two["applications"][0]["args"] == config["applications"][0]["args"]


def test_serve_keeps_the_code_version_when_only_the_override_bounds_change() -> None:
    """Against Serve's own code-version function (Ray 2.60.0,
    ray/serve/_private/deploy_utils.py): a new code version redeploys every
    deployment of the app, a kept one is a lightweight update."""
    import copy

    import yaml
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve.schema import ServeApplicationSchema

    from loadtests.coldstart import with_pool_override
    from serve_app.config import SERVE_CONFIG_PATH

    def version(config: dict) -> str:
        return get_app_code_version(ServeApplicationSchema.parse_obj(config["applications"][0]))

    config = yaml.safe_load(SERVE_CONFIG_PATH.read_text())
    same = with_pool_override(config)
    assert version(with_pool_override(same, replicas=2)) == version(same)
    # what the bench's second replica did before: the bounds changed in args
    in_args = copy.deepcopy(config)
    for pool in in_args["applications"][0]["args"]["llm"]["models"][0]["pools"]:
        if pool["name"] == "cpu":
            pool["deployment"]["autoscaling"]["min_replicas"] = pool["deployment"]["autoscaling"]["max_replicas"] = 2
    assert version(in_args) != version(config)
    # adding the override where there was none is a new version too
    assert version(same) != version(config)
