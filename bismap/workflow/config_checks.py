"""Cross-key checks of values that only mean something relative to the data or the schedule.

The paper's numbers were set for ~25k 1024x2048 images and 90k iterations; copied to a small
data set or a short schedule some of them silently stop doing anything. These checks run when the
workflow reads its config (rules/config.smk), before any job starts, and say which keys to change.
"""
from __future__ import annotations

import math

from bismap.stages.stylize import fda_problem  # the stage owns the band's definition


def ema_problem(decay: float, iterations: int, where: str) -> str | None:
    """A message when the mean teacher averages over more iterations than the schedule has.

    An EMA with decay d averages over ~1/(1-d) steps; with fewer iterations than that, the teacher
    ends the run as mostly its starting weights (d**iterations of them).
    """
    if decay <= 0 or iterations <= 0:
        return None
    horizon = math.inf if decay >= 1 else 1.0 / (1.0 - decay)
    if horizon <= iterations:
        return None
    return (f"{where}: ema_decay {decay} averages over ~{horizon:.0f} iterations but self-training runs "
            f"{iterations}, so the mean teacher would end as {decay ** iterations:.0%} its initial weights; "
            f"set ema_decay <= {1 - 1 / iterations:.4g} or more iterations")


def scale_problems(config: dict) -> list[str]:
    """Every check above that applies to the (validated, defaults-filled) config."""
    problems = []
    syn = config["synthetic"]
    stylize = config["stylize"]
    if syn["enabled"] and stylize["method"] == "fda" and not stylize.get("folder"):
        problems.append(fda_problem(float(stylize["beta"]), int(syn["height"]), int(syn["width"]),
                                    "config (synthetic benchmark)"))
    for stage in ("self_training", "naive_self_training"):
        cons = config[stage]["consistency"]
        if float(cons["weight"]) > 0:
            iters = config["train_overrides"][stage]["iterations"] or config["train"]["iterations"]
            problems.append(ema_problem(float(cons["ema_decay"]), int(iters), f"config: {stage}.consistency"))
    return [p for p in problems if p]
