"""Small-sample statistics of the benchmark: mean ± sample std and paired differences with a 95 % t-interval.

No scipy: the two-sided 95 % Student t quantiles t_{0.975, df} for df 1..30 are tabulated
(standard tables, 3 decimals); above 30 the Cornish-Fisher expansion in 1/df around the normal
quantile is used (error < 1e-3 there).
"""
from __future__ import annotations

import math
from typing import Sequence

# t_{0.975, df}, df = 1..30
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.959964


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def clean(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1; 0.0 for a single value; None for none)."""
    vals = clean(values)
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def paired(diffs: Sequence[float | None]) -> dict:
    """Mean paired difference, sample std, n and the 95 % t-interval [lo, hi] (None below n = 2)."""
    vals = clean(diffs)
    m, s = mean_std(vals)
    out = {"mean": m, "std": s, "n": len(vals), "lo": None, "hi": None}
    if len(vals) >= 2:
        half = t975(len(vals) - 1) * s / math.sqrt(len(vals))
        out["lo"], out["hi"] = m - half, m + half
    return out
