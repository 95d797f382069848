"""Several models of one architecture as one: the log of their mean softmax, used as logits.

Why log-mean-probability: argmax and softmax of it are the ensemble's mean prediction, so code that
averages logits over scales and flips (engine.inference.predict_logits) and takes softmax
confidences works on an ensemble unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MeanProbability(nn.Module):
    """forward(x) -> log(mean_m softmax(logits_m(x))), [B, C, h, w] at the first model's output size."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ValueError("MeanProbability needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for model in self.members:
            out = model(x)
            logits = out[-1] if isinstance(out, (tuple, list)) else out
            if total is not None and logits.shape[-2:] != total.shape[-2:]:
                logits = nn.functional.interpolate(logits, size=total.shape[-2:], mode="bilinear", align_corners=True)
            p = torch.softmax(logits.float(), dim=1)
            total = p if total is None else total + p
        return torch.log((total / len(self.members)).clamp_min(1e-12))
