"""The serveConfigV2 of the rendered KubeRay test overlay, deployed as is on a
local cluster shaped like the RayService (head with num-cpus 0 + a CPU worker
node process), answers /question and /users."""

from __future__ import annotations

import uuid

import httpx
import pytest

from devtools.kuberay_gen import extract_serve_config
from tests.conftest import REDIS_URL
from tests.llm.conftest import MODEL_DIR

pytestmark = pytest.mark.llm


@pytest.fixture(scope="module")
def overlay_app(ray_cluster, session_database, model_dir):
    config = extract_serve_config("test")
    app = config["applications"][0]
    # The image bakes the model at /home/ray/models/...; here it is the repo's
    # provisioned folder. Nothing else of the overlay's config is changed.
    for model in app["args"]["llm"]["models"]:
        model["source"] = str(MODEL_DIR)
    config = ray_cluster.serve_config(
        base=config,
        env_vars={"DATABASE_URL": session_database, "REDIS_URL": REDIS_URL,
                  "REDIS_KEY_PREFIX": f"t-{uuid.uuid4().hex[:12]}"},
    )
    took = ray_cluster.deploy(config, timeout_s=900)
    print(f"\nKubeRay test overlay's serveConfigV2 RUNNING in {took:.1f}s")
    return ray_cluster


def test_overlay_config_answers_questions_and_users(overlay_app, session_api_key) -> None:
    headers = {"Authorization": f"Bearer {session_api_key}"}
    with httpx.Client(base_url=overlay_app.url, timeout=120, headers=headers) as c:
        r = c.post("/question", json={"question": "What is 2 + 2?", "max_tokens": 16, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["answer"].strip()
        assert r.headers["x-served-by-pool"] == "cpu"  # the test overlay has no GPU pool
        user = c.post("/users", json={"name": "K8s", "email": f"{uuid.uuid4().hex[:8]}@example.com"}).json()
        assert c.get(f"/users/{user['id']}").json() == user
    deployments = overlay_app.deployments("qa")
    assert not any(name.startswith("gpu-pool:") for name in deployments)
    assert all(d["status"] == "HEALTHY" for d in deployments.values())
