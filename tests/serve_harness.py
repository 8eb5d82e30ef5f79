"""A real local Ray cluster for tests, and `serve deploy` of serve_config.yaml variants.

The cluster uses its own ports (Ray's default GCS port 6379 is Redis's here)
so it does not collide with a developer's running service.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from serve_app.cli import stop_ray_and_engines
from serve_app.config import SERVE_CONFIG_PATH
from serve_app.settings import child_env

BIN = Path(sys.executable).parent
REPO = SERVE_CONFIG_PATH.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRay:
    def __init__(self, num_cpus: int = 8, extra_env: dict[str, str] | None = None) -> None:
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.num_cpus = num_cpus
        self.env = child_env(
            {
                "HF_HUB_OFFLINE": "1",
                # Token auth on the dashboard/jobs API, as on EKS; the token
                # is generated into ~/.ray/auth_token on first use.
                "RAY_AUTH_MODE": "token",
                # Metrics every second (default 10 s): tests read engine gauges.
                "RAY_metrics_report_interval_ms": "1000",
                **(extra_env or {}),
            }
        )
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.address = f"127.0.0.1:{self.gcs_port}"

    def start(self) -> None:
        subprocess.run(
            [
                str(BIN / "ray"), "start", "--head",
                f"--port={self.gcs_port}",
                f"--dashboard-port={self.dashboard_port}",
                "--dashboard-host=127.0.0.1",
                f"--metrics-export-port={self.metrics_port}",
                f"--num-cpus={self.num_cpus}",
                "--disable-usage-stats",
            ],
            check=True, env=self.env, cwd=REPO, capture_output=True, timeout=180,
        )

    def stop(self) -> None:
        stop_ray_and_engines(self.env)

    def serve_config(self, args: dict[str, Any] | None, env_vars: dict[str, str]) -> dict[str, Any]:
        config = yaml.safe_load(SERVE_CONFIG_PATH.read_text())
        config["http_options"]["port"] = self.http_port
        app = config["applications"][0]
        if args is not None:
            app["args"] = args
        app["runtime_env"] = {"env_vars": env_vars}
        return config

    def deploy(self, config: dict[str, Any], timeout_s: float = 600) -> float:
        """`serve deploy` the config; returns seconds until the app is RUNNING."""
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(config, f)
        t0 = time.monotonic()
        out = subprocess.run([str(BIN / "serve"), "deploy", f.name, "-a", self.dashboard], env=self.env,
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"serve deploy failed: {out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        name = config["applications"][0]["name"]
        while time.monotonic() - t0 < timeout_s:
            status = self.app_status(name)
            if status.get("status") == "RUNNING":
                return time.monotonic() - t0
            if status.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"deploy failed: {json.dumps(status)[:3000]}")
            time.sleep(1)
        raise TimeoutError(f"not RUNNING after {timeout_s}s: {json.dumps(self.app_status(name))[:3000]}")

    def auth_headers(self) -> dict[str, str]:
        token = Path.home() / ".ray" / "auth_token"
        return {"Authorization": f"Bearer {token.read_text().strip()}"} if token.exists() else {}

    def app_status(self, name: str) -> dict[str, Any]:
        r = httpx.get(f"{self.dashboard}/api/serve/applications/", headers=self.auth_headers(), timeout=10)
        r.raise_for_status()
        return r.json().get("applications", {}).get(name, {})

    def deployments(self, name: str) -> dict[str, Any]:
        return self.app_status(name).get("deployments", {})

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text


def args_from_serve_config(**overrides: Any) -> dict[str, Any]:
    args = copy.deepcopy(yaml.safe_load(SERVE_CONFIG_PATH.read_text())["applications"][0]["args"])
    args.update(overrides)
    return args
