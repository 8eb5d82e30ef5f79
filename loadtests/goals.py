"""Reads the goal rows of a benchmark report (issue 16): ours against the
best direct `vllm serve`, deploy -> first answer, and cached users
Serve/uvicorn. Prints them as JSON; exit 1 when one of them is missing.

    .venv/bin/python loadtests/goals.py [loadtests/results/report.md]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Each required row: every word must appear in its "what" cell (case-insensitive).
REQUIRED = {
    "ours_vs_best_direct_vllm": ("best", "direct", "vllm serve"),
    "deploy_to_first_answer": ("deploy", "first answer"),
    "cached_users_serve_vs_uvicorn": ("cached", "users", "serve / uvicorn"),
}


def goal_rows(report: str) -> list[dict[str, str]]:
    """The rows of the first table under "## Goals" as {#, what, measured, goal, verdict}."""
    rows: list[dict[str, str]] = []
    in_goals = False
    for line in report.splitlines():
        if line.startswith("## "):
            if in_goals and rows:
                break
            in_goals = line.strip() == "## Goals"
            continue
        if not in_goals:
            continue
        if not line.startswith("|"):
            if rows:  # the first table of the section only
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("#", "") or set(cells[0]) <= {"-"}:
            continue
        rows.append(dict(zip(("#", "what", "measured", "goal", "verdict"), cells, strict=False)))
    return rows


def required_rows(report: str) -> dict[str, dict[str, str] | None]:
    rows = goal_rows(report)
    out: dict[str, Any] = {}
    for key, words in REQUIRED.items():
        out[key] = next((r for r in rows if all(w in r.get("what", "").lower() for w in words)), None)
    return out


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else HERE / "results" / "report.md"
    found = required_rows(path.read_text())
    print(json.dumps(found, indent=1))
    missing = [k for k, v in found.items() if v is None]
    if missing:
        print(f"missing goal rows: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
