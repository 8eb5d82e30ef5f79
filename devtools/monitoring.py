"""Local Prometheus for the Ray dashboard's metrics and the Grafana dashboard.

Prometheus comes from Debian's ``prometheus`` package when installed (no
registry ships Grafana here: point an existing Grafana at this Prometheus and
import kuberay/components/monitoring/dashboards/qa-service.json).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

PROMETHEUS_PORT = 9090


def prometheus_config(metrics_targets: list[str], scrape_interval_s: int = 5) -> dict:
    # Loopback targets: the run command's Ray exports on 127.0.0.1:8080. Ray's
    # own service-discovery file lists the node's interface address instead.
    return {
        "global": {"scrape_interval": f"{scrape_interval_s}s", "evaluation_interval": f"{scrape_interval_s}s"},
        "scrape_configs": [
            {"job_name": "ray", "static_configs": [{"targets": metrics_targets}]},
        ],
    }


def start_prometheus(data_dir: Path, metrics_targets: list[str], port: int = PROMETHEUS_PORT) -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError("prometheus is not installed: apt-get install -y --no-install-recommends prometheus")
    pdir = (data_dir / "prometheus").resolve()
    pdir.mkdir(parents=True, exist_ok=True)
    config = pdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(metrics_targets)))
    log = (pdir / "prometheus.log").open("ab")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={pdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2d"],
        stdout=log, stderr=log, start_new_session=True,
    )
    (pdir / "prometheus.pid").write_text(str(proc.pid))
    return f"http://127.0.0.1:{port}"


def stop_prometheus(data_dir: Path) -> None:
    from devtools.local_services import terminate_pidfile

    terminate_pidfile(data_dir / "prometheus" / "prometheus.pid")
