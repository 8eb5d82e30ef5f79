"""Helpers for tests that deploy serve_config.yaml variants on a real local Ray."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from devtools.local_ray import LocalRay
from serve_app.config import REPO_ROOT, SERVE_CONFIG_PATH

REPO = REPO_ROOT


def make_test_cluster(**kwargs: Any) -> LocalRay:
    # Engine gauges every second (default 10 s): tests poll them.
    return LocalRay(extra_env={"RAY_metrics_report_interval_ms": "1000"}, **kwargs)


def args_from_serve_config(**overrides: Any) -> dict[str, Any]:
    args = copy.deepcopy(yaml.safe_load(SERVE_CONFIG_PATH.read_text())["applications"][0]["args"])
    args.update(overrides)
    return args
