"""Values that only mean something relative to the data size or schedule (bismap.workflow.config_checks)."""
from __future__ import annotations

import pytest

from bismap.stages.stylize import fda_band, fda_problem
from bismap.workflow.config_checks import ema_problem


def test_fda_band_is_the_originals_floor() -> None:
    assert fda_band(0.01, 1024, 2048) == 10 and fda_band(0.01, 720, 1280) == 7  # the paper's beta: a real band
    assert fda_band(0.01, 96, 192) == 0 and fda_band(0.011, 96, 192) == 1


def test_fda_band_of_zero_is_refused_with_the_smallest_working_beta() -> None:
    msg = fda_problem(0.01, 96, 192, "img.png")
    assert msg is not None and msg.startswith("img.png: stylize.beta 0.01 gives an FDA band of 0")
    assert "stylize.beta >= 0.0105" in msg and fda_band(0.0105, 96, 192) == 1
    assert fda_problem(0.011, 96, 192, "x") is None and fda_problem(0.01, 1024, 2048, "x") is None


@pytest.mark.parametrize("decay, iters, refused", [(0.999, 300, True), (0.99, 300, False), (0.999, 90000, False),
                                                   (0.5, 2, False), (0.999, 2, True)])
def test_ema_horizon_longer_than_the_schedule_is_refused(decay, iters, refused) -> None:
    msg = ema_problem(decay, iters, "config: self_training.consistency")
    assert (msg is not None) == refused
    if refused:
        assert f"ema_decay {decay} averages over" in msg and f"<= {1 - 1 / iters:.4g}" in msg
