"""The vLLM engine driven directly (no Ray, no HTTP): the baseline of the LLM path.

Run by ``loadtests/bench.py`` in its own process (so the engine's memory goes
away with it) as ``python loadtests/direct_engine.py SPEC.json OUT.json``.
SPEC: {"model": path, "engine_kwargs": {...}, "env": {...}, "prompts": [...],
"max_tokens": n, "temperature": t, "phases": [{"kind": "throughput"|"ttft",
"concurrency": c, "requests": n}, ...]}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = str(Path(__file__).resolve().parent.parent)


async def _one(engine: Any, question: str, params: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    # The chat template is applied inside the timed span: it is part of what
    # an engine serving chat does per request (vLLM's OpenAI server does it),
    # so the time Serve adds over this is the time only Serve and our app add.
    prompt = engine.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    ttft = None
    tokens = 0
    async for out in engine.generate(prompt, params, uuid.uuid4().hex):
        comp = out.outputs[0]
        if ttft is None and comp.text:
            ttft = (time.perf_counter() - t0) * 1000
        tokens = len(comp.token_ids)
    return {"latency_ms": (time.perf_counter() - t0) * 1000, "ttft_ms": ttft, "tokens": tokens}


async def _closed_loop(engine: Any, prompts: list[str], params: Any, concurrency: int, total: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            results.append(await _one(engine, prompts[i % len(prompts)], params))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"wall_s": time.perf_counter() - t0, "results": results}


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, REPO)
    from serve_app.pool_server import node_cpu_env

    # The pool's "VLLM_CPU_OMP_THREADS_BIND: node" resolved as its replica does.
    os.environ.update(node_cpu_env(spec.get("env") or {}))
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    t0 = time.perf_counter()
    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(model=spec["model"], disable_log_stats=True, **spec["engine_kwargs"])
    )
    prompts = spec["prompts"]
    params = SamplingParams(max_tokens=spec["max_tokens"], temperature=spec["temperature"])
    # Ready = the first short answer, as the cold start of the Serve path.
    await _one(engine, prompts[0], SamplingParams(max_tokens=4, temperature=0))
    ready_s = time.perf_counter() - t0
    # The same warm-up as the Serve path gets (8 questions, 4 at a time).
    await _closed_loop(engine, prompts, params, 4, 8)
    out: dict[str, Any] = {"ready_s": ready_s, "phases": []}
    try:
        for phase in spec["phases"]:
            p = params if "max_tokens" not in phase else SamplingParams(
                max_tokens=phase["max_tokens"], temperature=spec["temperature"])
            run = await _closed_loop(engine, prompts, p, phase["concurrency"], phase["requests"])
            out["phases"].append({**phase, **run})
            print(f"[direct] {phase} done in {run['wall_s']:.1f}s", file=sys.stderr, flush=True)
    finally:
        engine.shutdown()
    return out


if __name__ == "__main__":
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        result = asyncio.run(main(json.load(f)))
    with open(out_path, "w") as f:
        json.dump(result, f)
    # vLLM's atexit handlers can hang on a 2-core machine; the result is
    # written. No engine process may outlive us (each holds its KV cache).
    import psutil

    for child in psutil.Process().children(recursive=True):
        child.kill()
    os._exit(0)
