"""Cross-key checks of values that only mean something relative to the data or the schedule.

The paper's numbers were set for ~25k 1024x2048 images and 90k iterations; copied to a small
data set or a short schedule some of them silently stop doing anything. These checks run when the
workflow reads its config (rules/config.smk), before any job starts, and say which keys to change.
"""
from __future__ import annotations

import math


def fda_band(beta: float, height: int, width: int) -> int:
    """Half-size of the FDA square of swapped low frequencies, as the original: floor(beta * min(H, W))."""
    return int(math.floor(beta * min(height, width)))


def fda_problem(beta: float, height: int, width: int, where: str) -> str | None:
    """A message when `beta` > 0 swaps no frequency band at this image size (only the mean colour)."""
    if beta <= 0 or fda_band(beta, height, width) > 0:
        return None
    need = math.ceil(1e4 / min(height, width)) / 1e4
    return (f"{where}: stylize.beta {beta} gives an FDA band of 0 coefficients at {height}x{width} "
            f"(floor(beta x {min(height, width)})), so only the mean colour would be swapped; set "
            f"stylize.beta >= {need} for a band of 1, or stylize.method: none to switch stylizing off")


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
