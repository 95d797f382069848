"""Mean-teacher EMA, updated exactly as the original: parameters averaged, buffers copied.

Copying the BN buffers (rather than averaging them) is what the original does; the teacher
then normalises with the student's current running statistics.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def create_ema(model: nn.Module) -> nn.Module:
    """A detached copy of `model` (no gradients), in eval mode."""
    ema = copy.deepcopy(unwrap(model))
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * p for parameters; buffers (BN stats) copied from `model`."""
    student = unwrap(model)
    e_params = list(ema.parameters())
    s_params = list(student.parameters())
    if len(e_params) != len(s_params):
        raise ValueError("EMA and model have different parameter lists")
    floats = [(e, s) for e, s in zip(e_params, s_params) if e.dtype.is_floating_point]
    if floats:
        torch._foreach_lerp_([e for e, _ in floats], [s.detach() for _, s in floats], 1.0 - float(decay))
    for e, s in zip(ema.buffers(), student.buffers()):
        e.copy_(s)
