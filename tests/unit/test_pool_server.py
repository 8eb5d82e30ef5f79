"""The LLM pools' build and replica-side setup (issue 16): the app build does
not import vLLM, the pool config is one Ray Serve LLM accepts, and the engine's
OpenMP binding is derived from the node's usable CPUs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app.config import REPO_ROOT, AppArgs
from serve_app.llm import deployment_name, deployment_options, llm_config, replica_llm_config
from serve_app.pool_server import _cgroup_cpu_limit, _ranges, node_cpu_env, usable_cpus
from tests.serve_harness import args_from_serve_config


def _cpu_pool():
    args = AppArgs.model_validate(args_from_serve_config())
    model = args.llm.models[0]
    return model, next(p for p in model.pools if p.name == "cpu")


def test_app_build_imports_neither_vllm_nor_serve_llm() -> None:
    code = (
        "import json, sys\n"
        "from tests.serve_harness import args_from_serve_config\n"
        "from serve_app.app import build_app\n"
        "app = build_app(args_from_serve_config())\n"
        "print(json.dumps({'vllm': 'vllm' in sys.modules, 'serve_llm': 'ray.serve.llm' in sys.modules,\n"
        "                  'torch': 'torch' in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"vllm": False, "serve_llm": False, "torch": False}


def test_pool_config_is_what_serve_llm_builds() -> None:
    """Our plain-dict config validates as Ray Serve LLM's LLMConfig, and our
    placement group is the one LLMServer.get_deployment_options would merge."""
    from ray.llm._internal.serve.core.server.llm_server import _merge_replica_actor_and_child_actor_bundles
    from ray.serve.llm import LLMConfig

    model, pool = _cpu_pool()
    cfg = LLMConfig.model_validate(replica_llm_config(model, pool))
    name = deployment_name(model, pool)
    opts = deployment_options(model, pool, name)
    engine = cfg.get_engine_config()
    assert opts["placement_group_bundles"] == _merge_replica_actor_and_child_actor_bundles(
        engine.placement_bundles, {"CPU": 0, "GPU": 0})
    assert opts["placement_group_strategy"] == engine.placement_strategy
    assert opts["ray_actor_options"]["num_cpus"] == 0
    assert opts["ray_actor_options"]["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert opts["max_queued_requests"] == pool.deployment.max_queued_requests
    assert engine.actual_hf_model_id == str(REPO_ROOT / "models" / "SmolLM2-135M-Instruct")


def test_node_binding_uses_every_usable_cpu_minus_reserved() -> None:
    env = {"VLLM_CPU_OMP_THREADS_BIND": "node", "VLLM_CPU_KVCACHE_SPACE": "2"}
    assert node_cpu_env(env, cpus=[0, 1])["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert node_cpu_env(env, cpus=[0, 1, 2, 3, 6])["VLLM_CPU_OMP_THREADS_BIND"] == "0-3,6"
    reserved = {**env, "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}
    assert node_cpu_env(reserved, cpus=[0, 1, 2, 3])["VLLM_CPU_OMP_THREADS_BIND"] == "0-2"
    # never fewer than one thread
    assert node_cpu_env({**env, "VLLM_CPU_NUM_OF_RESERVED_CPU": "4"}, cpus=[5])["VLLM_CPU_OMP_THREADS_BIND"] == "5"
    # vLLM's own values pass through
    for v in ("auto", "nobind", "0-1"):
        assert node_cpu_env({"VLLM_CPU_OMP_THREADS_BIND": v}, cpus=[0, 1]) == {"VLLM_CPU_OMP_THREADS_BIND": v}
    assert _ranges([3]) == "3" and _ranges([0, 2, 3, 4, 7]) == "0,2-4,7"
    this_node = usable_cpus()
    assert this_node and set(this_node) <= os.sched_getaffinity(0)


def test_cgroup_limit(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_limit(tmp_path) is None
    assert _cgroup_cpu_limit(tmp_path / "absent") is None


def test_shipped_cpu_pool_derives_its_binding_on_the_node() -> None:
    _, pool = _cpu_pool()
    assert pool.env.get("VLLM_CPU_OMP_THREADS_BIND") == "node"


def test_replica_count_is_not_a_constructor_argument() -> None:
    """The replica bounds are deployment options, not constructor arguments
    (which are part of a deployment's version): a change of bounds through the
    config's ``deployments:`` override or by the autoscaler adds or removes
    replicas. A change in the app's ``args`` restarts them all anyway (Serve
    hashes ``args`` into the code version: kuberay/README.md; the bench's
    second replica checks the running one is kept)."""
    model, pool = _cpu_pool()
    more = pool.model_copy(deep=True)
    more.deployment.autoscaling.min_replicas = more.deployment.autoscaling.max_replicas = 2
    assert replica_llm_config(model, pool) == replica_llm_config(model, more)
    assert llm_config(model, pool) != llm_config(model, more)
    assert deployment_options(model, more, "x")["autoscaling_config"]["min_replicas"] == 2


# -- the stream between the engine and the ingress -------------------------------------
class _Engine:
    """Stands in for Serve LLM's chat stream: yields what ``script`` says,
    each step after the previous one, and records whether it was closed."""

    def __init__(self, script: list[list[str] | Exception]) -> None:
        self.script = script
        self.step = asyncio.Event()
        self.closed = asyncio.Event()

    async def gen(self):
        try:
            for entry in self.script:
                await self.step.wait()  # a real suspension, as waiting on the engine is
                self.step.clear()
                if isinstance(entry, Exception):
                    raise entry
                for item in entry:
                    yield [item]  # Serve LLM with batching off: one item per yield
        finally:
            self.closed.set()


async def test_items_ready_together_travel_as_one_message() -> None:
    from serve_app.pool_server import _coalesced

    engine = _Engine([["role", "token 1"], ["token 2"]])
    out = _coalesced(engine.gen())
    engine.step.set()
    # vLLM emits the role chunk and the first token in one step: one message.
    assert await out.__anext__() == ["role", "token 1"]
    engine.step.set()
    assert await out.__anext__() == ["token 2"]
    engine.step.set()
    with pytest.raises(StopAsyncIteration):
        await out.__anext__()
    assert engine.closed.is_set()


async def test_an_engine_error_follows_what_came_before_it() -> None:
    from serve_app.pool_server import _coalesced

    engine = _Engine([["role"], RuntimeError("engine died")])
    out = _coalesced(engine.gen())
    engine.step.set()
    assert await out.__anext__() == ["role"]
    engine.step.set()
    with pytest.raises(RuntimeError, match="engine died"):
        await out.__anext__()


async def test_a_caller_that_goes_away_closes_the_engine_stream() -> None:
    """A client disconnect closes the pool's generator: the engine's stream must
    be closed too (that is what aborts the request in vLLM)."""
    from serve_app.pool_server import _coalesced

    engine = _Engine([["role", "token 1"], ["token 2"], ["token 3"]])
    out = _coalesced(engine.gen())
    engine.step.set()
    assert await out.__anext__() == ["role", "token 1"]
    await out.aclose()
    # The reader task is cancelled; its cancellation closes the engine stream.
    await asyncio.wait_for(engine.closed.wait(), 5)


@pytest.fixture
def replica_with_engine():
    """A parent standing in for the pool replica, with one child standing in
    for the engine; the parent says "ready" once the child exists."""
    import psutil

    # The engine stand-in has a second thread, as the engine has OpenMP threads.
    engine = ("import threading, time; threading.Thread(target=time.sleep, args=(60,), daemon=True).start(); "
              "print('ready', flush=True); time.sleep(60)")
    script = ("import subprocess, sys, time; "
              f"e = subprocess.Popen([sys.executable, '-c', {engine!r}], stdout=subprocess.PIPE, text=True); "
              "e.stdout.readline(); print('ready', flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        proc = psutil.Process(parent.pid)
        kids = proc.children(recursive=True)
        assert len(kids) == 1, kids
        yield proc, kids[0]
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()


def test_a_niceness_lowers_every_forked_process_only(replica_with_engine) -> None:
    import psutil

    from serve_app.pool_server import lower_engine_priority

    replica, engine = replica_with_engine
    assert lower_engine_priority("7", root=replica) == {engine.pid: "nice 7"}
    assert engine.nice() == 7
    assert replica.nice() == psutil.Process().nice()  # the replica itself keeps its priority
    # Never raised back (that would need privilege and undo an operator's choice).
    assert lower_engine_priority("3", root=replica) == {engine.pid: "nice 7"}
    assert lower_engine_priority("normal", root=replica) == {}
    with pytest.raises(ValueError):
        lower_engine_priority("0", root=replica)


def test_idle_priority_puts_the_engine_in_sched_idle(replica_with_engine) -> None:
    from serve_app.pool_server import lower_engine_priority

    replica, engine = replica_with_engine
    assert lower_engine_priority("idle", root=replica) == {engine.pid: "idle"}
    threads = [t.id for t in engine.threads()]
    assert len(threads) == 2
    assert all(os.sched_getscheduler(tid) == os.SCHED_IDLE for tid in threads)
    assert os.sched_getscheduler(replica.pid) == os.SCHED_OTHER


def test_the_pool_replica_lowers_every_thread_of_its_own_process() -> None:
    """A starting pool replica must not take the cores from running engines
    at the request path's nice 0 (``REPLICA_NICENESS``): every thread of its
    process is lowered, the ones started before the call too, and threads
    started after inherit it. Run in a child: it would renice pytest itself."""
    from serve_app.pool_server import REPLICA_NICENESS

    code = (
        "import json, os, threading, time\n"
        "from serve_app.pool_server import lower_replica_priority\n"
        "stop = threading.Event()\n"
        "before = threading.Thread(target=stop.wait); before.start()\n"
        "main = lower_replica_priority()\n"
        "after = threading.Thread(target=stop.wait); after.start()\n"
        "tids = [int(t) for t in os.listdir('/proc/self/task')]\n"
        "print(json.dumps({'main': main, 'threads': [os.getpriority(os.PRIO_PROCESS, t) for t in tids]}))\n"
        "stop.set()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["main"] == REPLICA_NICENESS == 15
    assert len(got["threads"]) == 3 and set(got["threads"]) == {REPLICA_NICENESS}, got
    assert os.getpriority(os.PRIO_PROCESS, 0) < REPLICA_NICENESS  # this process untouched


def test_engine_priority_lowers_an_engine_forked_while_it_starts() -> None:
    """The engine is forked after the replica enters ``EnginePriority``; it
    runs at idle priority before the replica's start finishes."""
    import psutil

    from serve_app.pool_server import EnginePriority

    with pytest.raises(ValueError):
        EnginePriority("0")
    with EnginePriority("idle", every_s=0.01):
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while os.sched_getscheduler(child.pid) != os.SCHED_IDLE:
                assert time.monotonic() < deadline, "the starting engine was never lowered"
                time.sleep(0.01)
            assert os.sched_getscheduler(psutil.Process().pid) == os.SCHED_OTHER
        finally:
            child.kill()
            child.wait()
