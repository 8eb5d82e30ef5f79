"""Per-scenario figures of the fault tests, printed at the end of the run and
kept as a Markdown table (the closing note quotes it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from serve_app.config import REPO_ROOT

REPORT_PATH = REPO_ROOT / "test-output" / "faults.md"

COLUMNS = {
    "scenario": "Scenario",
    "sent": "Requests",
    "successes": "2xx",
    "fast_503": "503 (fast, Retry-After)",
    "other_errors": "Other errors",
    "hangs": "Hangs",
    "acked_writes": "Acked POST /users",
    "lost_writes": "Lost writes",
    "recovery_s": "Recovery (s)",
}


@dataclass
class ScenarioResult:
    scenario: str
    sent: int
    successes: int
    fast_503: int
    other_errors: int
    hangs: int
    acked_writes: int
    lost_writes: int
    recovery_s: float | None

    def line(self) -> str:
        rec = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        return (f"[faults] {self.scenario}: sent={self.sent} ok={self.successes} 503={self.fast_503} "
                f"other={self.other_errors} hangs={self.hangs} acked={self.acked_writes} "
                f"lost={self.lost_writes} recovery_s={rec}")


RESULTS: list[ScenarioResult] = []


def markdown() -> str:
    rows = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    for r in RESULTS:
        values = asdict(r)
        values["recovery_s"] = "-" if r.recovery_s is None else f"{r.recovery_s:.1f}"
        rows.append("| " + " | ".join(str(values[k]) for k in COLUMNS) + " |")
    if RESULTS:
        total = [sum(getattr(r, k) for r in RESULTS) for k in list(COLUMNS)[1:-1]]
        rows.append("| **total** | " + " | ".join(str(v) for v in total) + " | |")
    return "\n".join(rows) + "\n"


def record(result: ScenarioResult) -> None:
    RESULTS.append(result)
    print(result.line(), flush=True)
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text(markdown())


def write_if_any() -> Path | None:
    if not RESULTS:
        return None
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text(markdown())
    return REPORT_PATH
