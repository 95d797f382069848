"""Frozen batch norm for inference: the original evaluates and labels with fixed backbone BN statistics.

Converting after the weights are loaded keeps the exact statistics; a frozen layer can
never drift when a caller forgets `model.eval()` (e.g. multi-scale inference in train mode).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["FrozenBatchNorm2d", "freeze_batchnorm"]


def _frozen_from(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    with torch.no_grad():
        if bn.affine:
            frozen.weight.copy_(bn.weight.detach())
            frozen.bias.copy_(bn.bias.detach())
        if bn.track_running_stats and bn.running_mean is not None:
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
    return frozen.to(device=bn.weight.device if bn.affine else None)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every `BatchNorm2d` inside `module` (in place) by a `FrozenBatchNorm2d` with the same
    affine parameters and running statistics. Returns `module` (or the replacement if `module` is a BN).

    Pass `model.backbone` to freeze only the backbone, as the original's inference and test nets do.
    """
    if isinstance(module, nn.BatchNorm2d):
        return _frozen_from(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _frozen_from(child))
        else:
            freeze_batchnorm(child)
    return module
