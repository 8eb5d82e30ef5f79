"""The LLM pool replica: Ray Serve LLM's ``LLMServer`` (vLLM underneath),
created inside the replica.

Cold start (issue 16): importing ``ray.serve.llm`` imports vLLM (~7 s and
~5,700 modules here), so nothing at this module's top level imports it. The
app build (``serve_app.app``) and the ingress only need this class's name and
plain-dict configuration; the heavy imports happen in the pool replica, which
needs them anyway.

The ingress calls ``chat_json`` with a JSON-able dict and gets JSON-able
items back, so neither side pickles vLLM's pydantic objects (and the ingress
never has to import vLLM's protocol module to build or read them).

What the replica skips compared with ``build_llm_deployment``'s default
(Ray 2.60.0, ``ray/llm/_internal/serve/engines/vllm/vllm_engine.py``
``VLLMEngine.start`` and ``core/server/llm_server.py`` ``_start_engine``):

* the "download model files on worker nodes" Ray tasks, when the model is a
  local folder present on this node (``CallbackCtx.run_init_node = False``);
  ``hf_model_id`` is already that folder, set from ``model_source``;
* the usage-telemetry report, which creates a detached actor on the head
  node after the engine started (one more worker process to start before the
  replica reports ready; the RayService turns usage stats off anyway).

What it adds: the replica keeps Serve's log handlers across the engine's start.

vLLM applies its logging configuration with ``logging.config.dictConfig``
when its engine starts (``AsyncLLM.__init__`` -> ``configure_logging_if_needed``
in vllm/v1/engine/async_llm.py). A non-incremental ``dictConfig`` closes every
handler of the process (``logging.config._clearExistingHandlers``), Serve's
replica handlers included, and a closed ``MemoryHandler`` drops its target
(``MemoryHandler.close`` sets it to None). Two effects in an LLM replica:

* its Serve log file (``logs/serve/replica_qa_cpu-pool_*.log``) got nothing
  after the engine started (hence ``RAY_SERVE_LOG_TO_STDERR`` in llm.py);
* a Serve controller that recovers the replica (after the head, and with it
  the controller, was lost: GCS fault tolerance) calls the replica's
  ``is_allocated()``, which reads that target's file name
  (``ray/serve/_private/logging_utils.py get_component_logger_file_path``,
  Ray 2.60) and raised ``AttributeError: 'NoneType' object has no attribute
  'baseFilename'``: the controller stopped the healthy replica and started a
  new one, a vLLM cold start (about a minute of 503s for every question)
  instead of adopting it (tests/faults/test_control_plane.py).

The fix gives each closed ``MemoryHandler`` its target back once the engine
has started. Records logged meanwhile are not lost: a ``MemoryHandler``
without a target keeps its buffer and flushes it at the next record; the
target (a ``RotatingFileHandler``) reopens its file on the next write.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The pool's env value asking for the OpenMP thread binding to be derived on
# the node that runs the engine (see ``node_cpu_env``).
NODE_BINDING = "node"
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
RESERVED_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
# CPU priority of the engine's processes (the engine core and its workers,
# which this replica forks), from the pool's env: see ``lower_engine_priority``.
PRIORITY_ENV = "QA_ENGINE_PRIORITY"


# -- CPU thread binding ---------------------------------------------------------------------
def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole cores the container may use (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``), rounded up; None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0:
            return max(1, math.ceil(quota_us / period_us))
    except (OSError, ValueError):
        pass
    return None


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on: its affinity mask, cut to the
    container's CPU limit (binding more OpenMP threads than the quota allows
    only makes them wait for each other at every barrier)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    limit = _cgroup_cpu_limit()
    if limit is not None and limit < len(cpus):
        cpus = cpus[:limit]
    return cpus


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (vLLM's VLLM_CPU_OMP_THREADS_BIND syntax)."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def node_cpu_env(env: dict[str, str], cpus: list[int] | None = None) -> dict[str, str]:
    """Resolves ``VLLM_CPU_OMP_THREADS_BIND: node`` into the CPU ids of the
    node this runs on: every usable CPU minus ``VLLM_CPU_NUM_OF_RESERVED_CPU``
    (default 0) kept free at the end of the list for the scheduler/API
    process. vLLM's own ``auto`` (vllm 0.32 ``utils/ompmultiprocessing.py``)
    always reserves one core per rank on x86: half of a 2-core machine.
    Any other value (``auto``, ``nobind``, an explicit list) is left alone."""
    if env.get(BIND_ENV) != NODE_BINDING:
        return dict(env)
    cpus = usable_cpus() if cpus is None else cpus
    reserved = int(env.get(RESERVED_ENV, "0") or 0)
    keep = cpus[: max(1, len(cpus) - reserved)]
    return {**env, BIND_ENV: _ranges(keep)}


def apply_node_cpu_env() -> None:
    """``node_cpu_env`` on this process's environment (the engine core process
    vLLM forks inherits it)."""
    resolved = node_cpu_env(dict(os.environ))
    if resolved.get(BIND_ENV) != os.environ.get(BIND_ENV):
        log.info("engine OpenMP threads bound to CPUs %s (derived on this node)", resolved[BIND_ENV])
        os.environ[BIND_ENV] = resolved[BIND_ENV]


def _niceness(priority: str) -> int | None:
    """A lowered priority's niceness; None for ``idle``."""
    if priority == "idle":
        return None
    if not priority.isdigit() or not 1 <= int(priority) <= 19:
        raise ValueError(f"{PRIORITY_ENV} must be normal, idle or a niceness 1-19, not {priority!r}")
    return int(priority)


def lower_engine_priority(priority: str, root: Any = None) -> dict[int, str]:
    """Lowers the CPU priority of the engine's processes (every process this
    replica forked: the engine core and its workers), every thread of each, to
    ``priority``: ``idle`` (Linux SCHED_IDLE: they run on the cycles nothing
    else wants) or a niceness 1-19; ``normal`` leaves them alone. Returns
    pid -> what was set.

    The engine is batch work that takes every cycle it gets; the request
    path (the ingress, HAProxy, this replica's own frontend) is latency
    work. On a node they share, the kernel then hands a core to a request
    the moment it is runnable and the engine keeps whatever is left; the
    benchmark measures the users path's p99 with the engine saturated
    (loadtests/results/report.md). Lowering priority needs no privilege; a
    thread already nicer is left alone.

    Per thread, because Linux schedules threads: a policy or niceness set
    on a process's pid applies to its main thread only, and its OpenMP
    threads (created by then) would keep running at normal priority."""
    import psutil

    if priority == "normal":
        return {}
    nice = _niceness(priority)
    root = psutil.Process() if root is None else root
    done: dict[int, str] = {}
    for child in root.children(recursive=True):
        try:
            _lower_threads(child, nice)
            done[child.pid] = "idle" if nice is None else f"nice {os.getpriority(os.PRIO_PROCESS, child.pid)}"
        except (psutil.NoSuchProcess, psutil.AccessDenied, PermissionError, ProcessLookupError) as exc:
            log.warning("could not lower the priority of engine process %s: %s", child.pid, exc)
    return done


def _lower_threads(proc: Any, nice: int | None) -> None:
    """Every thread of ``proc`` to SCHED_IDLE (``nice`` None) or to ``nice``,
    never raised: Linux schedules threads, and a niceness set on a pid applies
    to that one thread (the ones it creates later inherit it)."""
    for thread in proc.threads():
        if nice is None:
            if os.sched_getscheduler(thread.id) != os.SCHED_IDLE:
                os.sched_setscheduler(thread.id, os.SCHED_IDLE, os.sched_param(0))
        elif os.getpriority(os.PRIO_PROCESS, thread.id) < nice:
            os.setpriority(os.PRIO_PROCESS, thread.id, nice)


# The pool replica's own niceness (every thread of its process), set first
# thing in its constructor. The run command and the RayService start Ray's
# workers at nice 0 (devtools/local_ray.py WORKER_PRIORITY_ENV) for the request
# path (ingress replicas, HAProxy); a pool replica is a worker too, and a
# starting one spends 10-30 s of CPU importing vLLM and building the engine's
# frontend while the running engines on its node, at idle priority, get only
# what it leaves: about 0.3 % of a contested core at nice 0 (scheduler weights
# 1024 against SCHED_IDLE's 3), about 8 % at 15 (36 against 3). 15 is Ray's own
# worker default, so the LLM path runs as the benchmark measured it before the
# workers went to 0. The autoscaling tier (3 engines on 2 cores) could not tell
# the settings apart: questions passed their 120 s deadline while replicas
# started at every one (all workers at 0: 2 of 4 runs; this: 1 of 3; Ray's
# default: 1 of 3; 2026-12-01), so this rests on the weights. Never raised
# back: that needs privilege.
REPLICA_NICENESS = 15


def lower_replica_priority(nice: int = REPLICA_NICENESS) -> int:
    """Every thread of this process to at least ``nice``; returns the main thread's niceness."""
    import psutil

    _lower_threads(psutil.Process(), nice)
    return os.getpriority(os.PRIO_PROCESS, os.getpid())


class EnginePriority:
    """Holds the engine at ``priority`` from the moment its processes appear.

    Lowering it only once the engine is ready left a starting engine at
    normal priority for its whole start (60-100 s on 2 cores); where several
    engines share cores (Ray's fake nodes on one machine, two pools on one
    node), that starting engine took the cores from the running idle-priority
    ones and their questions passed the deadline (47 504s in the autoscaling
    tier, 2026-11-30). So a thread lowers whatever this replica has forked
    every ``every_s`` while the engine starts; processes and threads forked
    later by lowered ones inherit the priority."""

    def __init__(self, priority: str, every_s: float = 0.1) -> None:
        import threading

        if priority != "normal":
            _niceness(priority)  # a bad value fails the replica before the engine starts
        self.priority = priority
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-priority", daemon=True)

    def __enter__(self) -> EnginePriority:
        if self.priority != "normal":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.priority != "normal":
            self._stop.set()
            self._thread.join()
            log.info("engine processes at %s priority: %s", self.priority, lower_engine_priority(self.priority))

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            lower_engine_priority(self.priority)


# -- the replica ----------------------------------------------------------------------------------
def _local_model(llm_config: Any) -> bool:
    src = getattr(llm_config.model_loading_config, "model_source", None)
    return isinstance(src, str) and Path(src).is_dir()


def _server_class() -> type:
    from ray.llm._internal.common.callbacks.base import CallbackBase
    from ray.serve.llm.deployment import LLMServer

    class _NoDownloadForLocalFolder(CallbackBase):
        async def on_before_node_init(self) -> None:
            if _local_model(self.llm_config):
                self.ctx.run_init_node = False

    class _Server(LLMServer):
        async def _start_engine(self) -> None:
            if self.engine is None:
                raise ValueError("Engine is not set")
            await self.engine.start()

    return _Server, _NoDownloadForLocalFolder


class PoolServer:
    """One replica of a (model, pool) deployment; see the module docstring."""

    async def __init__(self, llm_config: dict[str, Any]) -> None:
        # Wall-clock marks on stderr (logs/worker-*.err): loadtests/coldstart.py
        # reads them for the cold start's breakdown.
        _mark("replica_init")
        lower_replica_priority()
        apply_node_cpu_env()
        from ray.serve.llm import LLMConfig

        server_cls, callback_cls = _server_class()
        cfg = LLMConfig.model_validate(llm_config)
        cfg.callback_config.callback_class = callback_cls
        self._server = server_cls.sync_init(cfg)
        _mark("engine_start")
        from serve_app.logs import serve_log_handlers_kept

        with serve_log_handlers_kept(), EnginePriority(os.environ.get(PRIORITY_ENV, "normal") or "normal"):
            await self._server.start()
        _mark("engine_ready")

    async def check_health(self) -> None:
        await self._server.check_health()

    async def ready(self) -> bool:
        """A cheap call: the ingress queues one on an idle pool to wake it."""
        return True

    async def chat_json(self, body: dict[str, Any]) -> AsyncIterator[list[Any]]:
        """An OpenAI chat request as a dict. Yields lists whose items are SSE
        text (``"data: {...}\\n\\n"``, streaming), ``{"completion": {...}}``
        (not streaming) or ``{"error": {"code": int, "message": str}}``."""
        from pydantic import ValidationError
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        try:
            request = ChatCompletionRequest(**body)
        except (ValidationError, TypeError, ValueError) as exc:
            yield [{"error": {"code": 400, "message": f"invalid chat completion request: {str(exc)[:2000]}"}}]
            return
        gen = await self._server.chat(request)
        async for items in _coalesced(gen):
            yield [_to_json(item) for item in items]

    async def __del__(self) -> None:
        engine = getattr(getattr(self, "_server", None), "engine", None)
        if engine is not None:
            await engine.shutdown()


async def _coalesced(gen: AsyncIterator[Any]) -> AsyncIterator[list[Any]]:
    """``gen``'s items, each batch holding every item ready by then.

    Serve LLM yields each streamed chunk on its own (its timed batching is
    off: a timer adds straight to time to first token), and each yield is one
    message to the ingress. A reader task drains ``gen`` into a queue; every
    time the caller asks for more, it gets everything queued. Nothing waits
    on a timer: the first answer chunk goes with the role chunk vLLM emits
    just before it (one message instead of two on the way to the first
    token), and when the ingress falls behind under load, what piled up meanwhile
    travels as one message instead of one per token.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    end = object()

    async def read() -> None:
        try:
            async for batch in gen:
                for item in batch if isinstance(batch, list) else [batch]:
                    queue.put_nowait(item)
        except Exception as exc:  # handed to the caller, in order
            queue.put_nowait(_Failed(exc))
        finally:
            queue.put_nowait(end)

    reader = asyncio.create_task(read())
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            done = items[-1] is end
            ready = [i for i in items if i is not end]
            failed = next((i for i in ready if isinstance(i, _Failed)), None)
            ready = [i for i in ready if not isinstance(i, _Failed)]
            if ready:
                yield ready
            if failed is not None:
                raise failed.exc
            if done:
                return
    finally:
        # The caller is gone (client disconnect, deadline) or done: cancelling
        # the reader closes ``gen``, which aborts the request on the engine.
        # Not awaited: suppressing the reader's CancelledError here could
        # swallow a cancellation of the caller's own task.
        reader.cancel()


class _Failed:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc


COLDSTART_MARK = "[pool-coldstart]"


def _mark(what: str) -> None:
    print(f"{COLDSTART_MARK} {what} {time.time():.3f} pid={os.getpid()}", file=sys.stderr, flush=True)


def _to_json(item: Any) -> Any:
    if isinstance(item, str):
        return item
    if type(item).__name__ == "ErrorResponse":
        e = getattr(item, "error", item)
        return {"error": {"code": int(getattr(e, "code", 500) or 500),
                          "message": str(getattr(e, "message", "model error"))[:500]}}
    return {"completion": item.model_dump(mode="json")}
