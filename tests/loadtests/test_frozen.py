"""``bench_vllm.frozen``: the peer runs alternate ours and vLLM's server, the
other side stopped. A side left stopped after a failed run would wreck the rest
of the benchmark, so the block's exit must continue every process it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from loadtests.bench_vllm import frozen


def _child() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def _gone_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _continued(pid: int) -> bool:
    """Whether the stopped child was continued. The kernel records a SIGCONT
    on the stopped process when it is sent, so no wait is needed (WNOHANG: a
    child never continued fails here instead of hanging the test)."""
    got, status = os.waitpid(pid, os.WCONTINUED | os.WNOHANG)
    return got == pid and os.WIFCONTINUED(status)


def test_frozen_stops_each_process_for_the_block_and_continues_it_after() -> None:
    a, b = _child(), _child()
    try:
        with frozen([a.pid, b.pid]) as stopped:
            assert stopped == [a.pid, b.pid]
            for p in (a, b):
                # waitpid(WUNTRACED) returns once the child has stopped: no polling.
                _, status = os.waitpid(p.pid, os.WUNTRACED)
                assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP
        for p in (a, b):
            assert _continued(p.pid)
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_frozen_continues_the_processes_when_the_block_fails_and_skips_gone_ones() -> None:
    a = _child()
    gone = _gone_pid()
    try:
        with pytest.raises(RuntimeError, match="a run failed"), frozen([gone, a.pid]) as stopped:
            assert stopped == [a.pid]  # the gone one is not counted, and not an error
            _, status = os.waitpid(a.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status)
            raise RuntimeError("a run failed")
        assert _continued(a.pid)
    finally:
        a.kill()
        a.wait()


def test_engine_processes_are_told_apart_by_the_title_vllm_gives_them() -> None:
    """The peer runs' third arm freezes only our engine: vLLM's engine core
    and workers rename themselves ``VLLM::...`` (setproctitle); a replica, a
    daemon or a process gone meanwhile is not one."""
    import psutil

    from devtools.local_ray import is_engine_process

    code = ("import setproctitle, time; setproctitle.setproctitle('VLLM::Worker'); "
            "print('ok', flush=True); time.sleep(120)")
    engine = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    other = _child()
    try:
        assert engine.stdout is not None and engine.stdout.readline().strip() == "ok"
        assert is_engine_process(psutil.Process(engine.pid))
        assert not is_engine_process(psutil.Process(other.pid))
        gone = psutil.Process(other.pid)
        other.kill()
        other.wait()
        assert not is_engine_process(gone)
    finally:
        for p in (engine, other):
            p.kill()
            p.wait()


def test_vllms_server_gets_the_pools_openmp_settings_too() -> None:
    """The peer is measured at its best: the OpenMP waits the pool ships beat
    libgomp's default for vLLM's own server as well, so its env carries them
    (and every core, none reserved), not only the pool's VLLM_ variables."""
    from loadtests.bench_vllm import best_cpu_env

    env = best_cpu_env({"VLLM_CPU_KVCACHE_SPACE": "2", "GOMP_SPINCOUNT": "10000", "OMP_WAIT_POLICY": "PASSIVE",
                        "QA_ENGINE_PRIORITY": "idle", "VLLM_CPU_NUM_OF_RESERVED_CPU": "1",
                        "VLLM_CPU_OMP_THREADS_BIND": "node"})
    assert env["GOMP_SPINCOUNT"] == "10000" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert "QA_ENGINE_PRIORITY" not in env  # ours, not vLLM's
    assert env["VLLM_CPU_OMP_THREADS_BIND"] != "node"  # resolved to this node's CPUs
