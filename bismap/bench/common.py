"""Shared helpers of the benchmark suite: the default config, timing, markdown tables."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[2]


def default_config() -> dict[str, Any]:
    """config.yaml (the embedded default run) as a dict."""
    import yaml

    return yaml.safe_load((REPO / "config.yaml").read_text())


def best_time(fn: Callable[[], Any], repeats: int = 1, warmup: int = 0) -> float:
    """Lowest wall time of `repeats` calls after `warmup` untimed ones (other jobs on a shared CPU only add time)."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def median_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `repeats` calls after `warmup` untimed ones (robust to a burst of other jobs)."""
    import statistics

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        if v == 0 or math.isinf(v) or math.isnan(v):
            return str(v)
        return f"{v:.{digits}g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table of `rows` with (key, header) columns."""
    out = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join(out)


def profile_top(fn: Callable[[], Any], rows: int = 6) -> list[dict]:
    """torch.profiler of one call: the `rows` operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in ops[:rows]]


PROFILE_COLUMNS = [("op", "operator"), ("self_ms", "self CPU ms"), ("share", "share"), ("calls", "calls")]
