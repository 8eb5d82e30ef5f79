"""The Grafana dashboard in the repo is importable and only queries exported metrics."""

from __future__ import annotations

import json
import re

from serve_app.config import REPO_ROOT
from serve_app.metrics import exported_names

DASHBOARD = REPO_ROOT / "kuberay" / "components" / "monitoring" / "dashboards" / "qa-service.json"
METRIC = re.compile(r"\bray_[a-zA-Z0-9_:]+")


def dashboard_metric_names() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    return {name for panel in dash["panels"] for t in panel["targets"] for name in METRIC.findall(t["expr"])}


def test_dashboard_is_valid_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("requests per second", "error rate", "p99", "first token", "tokens per second", "cache hit",
                   "replicas", "queue"):
        assert needed in titles, needed
    for panel in dash["panels"]:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])


def test_app_metrics_in_the_dashboard_are_exported() -> None:
    ours = {n for n in dashboard_metric_names() if n.startswith("ray_qa_")}
    assert ours, "the dashboard shows no application metric"
    assert ours <= exported_names(), ours - exported_names()
