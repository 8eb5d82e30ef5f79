"""The head lost for longer than the workers' GCS reconnect timeout (issue 17,
the variant): runs last on the shared fault stack (conftest.MODULE_ORDER), as
it takes every worker node down.

What Ray does: each worker's raylet (and every worker process on it, the
replicas included) retries the lost GCS for RAY_gcs_rpc_server_reconnect_timeout_s
(KubeRay v1.7.0 sets 600 s on worker pods; WORKER_GCS_RECONNECT_S here), then
exits. Until then the workers keep serving; afterwards the node's entry
refuses connections. KubeRay restarts the exited worker containers and the head;
here a new head against the same Redis and a new worker node stand in for that,
and the Serve controller, recovered from Redis, starts the app's replicas on the
new worker without a redeploy.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import psutil
import pytest

from devtools.local_ray import node_processes
from tests.faults import procs
from tests.faults.conftest import WORKER_GCS_RECONNECT_S, FaultStack
from tests.faults.load import FAST_503_S, LoadDriver
from tests.faults.test_faults import BASELINE_S, create_user, finish, gone_at, wait_for, wait_healthy

pytestmark = pytest.mark.faults

# Past the timeout, the raylet notices on its next GCS call: allow some slack.
EXIT_SLACK_S = 30.0
# After the workers exited: how long the load keeps knocking at the dead entry.
AFTER_EXIT_S = 4.0
# New head, new worker node, the controller's recovery, ingress replicas started.
USERS_BACK_S = 240.0


async def test_head_lost_past_the_workers_reconnect_timeout(fault_stack: FaultStack) -> None:
    stack = fault_stack
    await wait_healthy(stack)
    workers = stack.live_workers()
    assert workers, "no live worker"
    entry = workers[0]
    raylets = [psutil.Process(pid) for w in workers for pid in procs.node_raylets(w.marker)]
    assert raylets
    async with LoadDriver(entry.url, stack.headers, tag="head-lost") as load:
        await asyncio.sleep(BASELINE_S)
        t_kill = time.monotonic()
        await asyncio.to_thread(stack.cluster.kill_head)
        # The workers keep serving until their reconnect timeout, then exit on their own.
        # (gone_at SIGKILLs them at the deadline: then they did not exit alone.)
        deadline = WORKER_GCS_RECONNECT_S + EXIT_SLACK_S
        t_exit = await gone_at(raylets, deadline)
        exited_alone = t_exit - t_kill < deadline
        await asyncio.sleep(AFTER_EXIT_S)
        t_back = time.monotonic()
    assert exited_alone, f"worker raylets still running {deadline:.0f}s after the head was killed"
    exit_s = t_exit - t_kill
    # What a dead node left behind (vLLM engines are not Ray workers; HAProxy
    # outlives its node): on EKS the container's exit takes them all.
    left = {w.name: [p.pid for p in node_processes(w.marker)] for w in workers}
    for w in workers:
        await asyncio.to_thread(stack.cluster.kill_node, w)

    # KubeRay: a new head pod (same Redis, same namespace) and new worker pods.
    start_s = await asyncio.to_thread(stack.cluster.restart_head)
    new_worker = await asyncio.to_thread(stack.cluster.add_worker, 4, 8 * 2**30)
    async with httpx.AsyncClient(base_url=new_worker.url, headers=stack.headers) as c:

        async def users_back() -> bool:
            return (await create_user(c, stack.acked)).status_code == 200

        users_s = await wait_for(users_back, USERS_BACK_S, "users requests on the new worker", every_s=1)
        q = await c.post("/question", json={"question": "Say hi.", "max_tokens": 4},
                         headers={"Cache-Control": "no-cache"}, timeout=30)
    recovery = time.monotonic() - t_back

    # Until the timeout the workers serve; what fails, fails after it (the
    # replicas may go a moment before their raylet).
    t_limit = t_kill + WORKER_GCS_RECONNECT_S - 1.0
    waiting = load.stats.between(t_kill, t_limit)
    failed = [o for o in load.stats.outcomes if o.verdict not in ("success", "fast_503")]
    early = [o for o in failed if o.started + o.elapsed < t_limit]
    after = Counter(o.verdict for o in failed)
    print(f"[faults] head lost for good: worker raylets exited {exit_s:.1f}s after the kill (reconnect timeout "
          f"{WORKER_GCS_RECONNECT_S}s); until the timeout {len(waiting)} requests "
          f"({sum(o.verdict == 'success' for o in waiting)} served); after it {dict(after)}, statuses "
          f"{dict(Counter(o.status for o in failed))} "
          f"(e.g. {[o.detail[:80] for o in failed[:3]]}); processes the dead nodes left: {left}; new head "
          f"`ray start` {start_s:.1f}s, users served on a new worker {users_s:.1f}s later; a question then: "
          f"{q.status_code} (Retry-After {q.headers.get('retry-after')})", flush=True)
    assert exit_s >= WORKER_GCS_RECONNECT_S - 1, "the workers exited before their reconnect timeout"
    assert any(o.verdict == "success" for o in waiting), "nothing served while the workers waited for the GCS"
    assert not early, [f"{o.kind} {o.verdict} {o.detail[:100]}" for o in early]
    # After it: refused at once, or a 503 from the node's orphaned HAProxy (a
    # dead pod takes that with it), never a hang.
    assert failed and all(o.verdict != "hang" and o.elapsed < FAST_503_S[o.kind] for o in failed), \
        load.stats.problems()
    # The question pool restarts from scratch (a vLLM cold start): 200 or a fast 503.
    assert q.status_code == 200 or (q.status_code == 503 and q.headers.get("retry-after", "").isdigit())
    await finish("head lost past the reconnect timeout (workers exit)", stack, load.stats, recovery,
                 allowed=dict(after))
