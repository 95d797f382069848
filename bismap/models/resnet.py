"""torchvision ResNet-18/34/50/101 as dilated DeepLab backbones (output stride 16 or 8).

The module keeps torchvision's parameter names (conv1, bn1, layer1..4) minus `fc`, so
ImageNet weights and the SimCLRv2 `r101_1x_sk0.pth` file (torchvision names) load directly.
Dilation is set by hand on the built layers because torchvision's BasicBlock nets reject
`replace_stride_with_dilation`; the same code serves both block types.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torchvision
from torch import nn

from bismap.io import InputError
from bismap.models.checkpointing import run_blocks

RESNET_DEPTHS = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101"}


def stage_dilations(output_stride: int, multi_grid: Sequence[int], blocks: tuple[int, int],
                    bottleneck: bool) -> tuple[list[int] | None, list[int]]:
    """Per-block dilations for (stage 3, stage 4) of a ResNet at the given output stride.

    Stage 3 is None at OS16 (left strided); stage 4 carries the multi-grid unit
    (base dilation x multi_grid) for Bottleneck nets, a uniform dilation otherwise.
    """
    if output_stride not in (8, 16):
        raise InputError(f"model.output_stride: must be 8 or 16, got {output_stride}")
    base4 = 2 if output_stride == 16 else 4
    n3, n4 = blocks
    if bottleneck:
        grid = list(multi_grid) if multi_grid else [1]
        if len(grid) != n4:
            raise InputError(f"model.multi_grid: needs {n4} entries (one per last-stage block), got {list(grid)}")
        d4 = [base4 * int(g) for g in grid]
    else:
        d4 = [base4] * n4
    d3 = None if output_stride == 16 else [2] * n3
    return d3, d4


def dilate_torchvision_layer(layer: nn.Sequential, dilations: Sequence[int]) -> None:
    """Turn a strided torchvision ResNet stage into a stride-1 stage with per-block 3x3 dilations."""
    for block, d in zip(layer, dilations):
        for conv in block.modules():
            if isinstance(conv, nn.Conv2d):
                if conv.stride != (1, 1):
                    conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation = (d, d)
                    conv.padding = (d, d)


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc; forward -> (layer1 at stride 4, layer4 at `output_stride`)."""

    def __init__(self, depth: int = 101, output_stride: int = 16, multi_grid: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise InputError(f"model.backbone: ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        net = getattr(torchvision.models, RESNET_DEPTHS[depth])(weights=None)
        self.depth = depth
        self.arch = RESNET_DEPTHS[depth]
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        bottleneck = depth >= 50
        d3, d4 = stage_dilations(output_stride, multi_grid, (len(self.layer3), len(self.layer4)), bottleneck)
        if d3 is not None:
            dilate_torchvision_layer(self.layer3, d3)
        dilate_torchvision_layer(self.layer4, d4)
        self.output_stride = output_stride
        self.low_channels = 256 if bottleneck else 64
        self.high_channels = 2048 if bottleneck else 512
        self.activation_checkpointing = False  # models.checkpointing; set by the trainer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        on = self.activation_checkpointing
        low = run_blocks(self.layer1, x, on)
        high = run_blocks(self.layer4, run_blocks(self.layer3, run_blocks(self.layer2, low, on), on), on)
        return low, high


def imagenet_state_dict(depth: int) -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 weights for this depth, via the weights API (download or cache).

    Fails with an InputError that says how to work around a machine without network access.
    """
    arch = RESNET_DEPTHS[depth]
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # network, proxy, hash, disk: all mean "weights unavailable"
        raise InputError(
            f"{weights.url}: could not fetch ImageNet weights for {arch} ({type(e).__name__}: {e}); "
            f"download the file into $TORCH_HOME/hub/checkpoints/ or set model.weights to a local .pth path"
        ) from None
