"""Arithmetic and Markdown of the benchmark report (``loadtests/bench.py``).

Pure functions, standard library only: the benchmark, the plotting script (in
the load-test venv) and the unit tests all import this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest
    ranks (numpy's default method); None for no values."""
    data = sorted(float(v) for v in values)
    if not data:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return data[lo]
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(latencies_ms: Sequence[float], wall_s: float | None = None, errors: int = 0) -> dict[str, Any]:
    """Count, p50/p95/p99, mean and (when the wall time is known) requests/s
    of successful requests; the error rate over all requests."""
    n = len(latencies_ms)
    total = n + errors
    out: dict[str, Any] = {
        "count": n,
        "errors": errors,
        "error_rate": (errors / total) if total else 0.0,
        "p50_ms": percentile(latencies_ms, 50),
        "p95_ms": percentile(latencies_ms, 95),
        "p99_ms": percentile(latencies_ms, 99),
        "mean_ms": (sum(latencies_ms) / n) if n else None,
    }
    out["rps"] = rate(n, wall_s)
    return out


def rate(count: float, seconds: float | None) -> float | None:
    """count / seconds, None when there is no positive duration."""
    if not seconds or seconds <= 0:
        return None
    return count / seconds


def tokens_per_s(output_tokens: Sequence[int], wall_s: float) -> float | None:
    """Aggregate output-token throughput of a run: all tokens over its wall time."""
    return rate(sum(output_tokens), wall_s)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def verdict(value: float | None, goal: float, higher_is_better: bool = True) -> str:
    """PASS/MISS against a goal; n/a when the value could not be measured."""
    if value is None:
        return "n/a"
    ok = value >= goal if higher_is_better else value <= goal
    return "PASS" if ok else "MISS"


def generator_saturated(loadgen_cpu_s: float, wall_s: float, threads: int = 1, limit: float = 0.9) -> bool:
    """Whether the load generator used at least ``limit`` of the cores it
    runs on: then the server's number is a lower bound, not a capacity."""
    if wall_s <= 0 or threads <= 0:
        return False
    return loadgen_cpu_s / (wall_s * threads) >= limit


def queries_from_counter(delta: int, per_query: float) -> float | None:
    """PostgreSQL queries inferred from a statistics counter delta (e.g. table scans),
    given what one cold read adds to it (calibrated)."""
    if per_query <= 0:
        return None
    return delta / per_query


def fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def spread(values: Iterable[float | None]) -> dict[str, Any] | None:
    """min / median / max of the measured values (None ones dropped); None when none."""
    data = sorted(float(v) for v in values if v is not None)
    if not data:
        return None
    return {"min": data[0], "median": percentile(data, 50), "max": data[-1], "n": len(data)}


def fmt_spread(s: dict[str, Any] | None, digits: int = 2, unit: str = "") -> str:
    """"0.93 (0.91-0.95, n=3)": the median, then the range over the repeats."""
    if not s:
        return "n/a"
    if s["n"] == 1:
        return fmt(s["median"], digits, unit)
    return f"{fmt(s['median'], digits, unit)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)}, n={s['n']})"


def pairwise(a: Sequence[float | None], b: Sequence[float | None], op: str = "ratio") -> list[float | None]:
    """Run i of ``a`` against run i of ``b``: a/b (``ratio``) or a-b (``diff``)."""
    out: list[float | None] = []
    for x, y in zip(a, b, strict=False):
        if op == "ratio":
            out.append(ratio(x, y))
        else:
            out.append(None if x is None or y is None else x - y)
    return out
