"""SimCLRv2 ResNets (optionally with selective kernels), named exactly like the public
SimCLRv2-Pytorch conversion (`r152_1x_sk1.pth['resnet']`: net.0 stem, net.N.blocks.i ...),
so those files load strictly; plus key maps between the sk0 layout and torchvision names
(`r101_1x_sk0.pth['state_dict']` uses torchvision names).

Padding is (k-1)//2 on every conv as in the converter (not TF "SAME"): the converted
weights were evaluated that way.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bismap.io import InputError
from bismap.models.checkpointing import run_blocks

SIMCLR_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BN_EPS = 1e-5


def _conv(cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False)


class BatchNormRelu(nn.Sequential):
    """BN at index 0 (the checkpoint names it `.0`), ReLU or Identity at index 1."""

    def __init__(self, channels: int, relu: bool = True) -> None:
        super().__init__(nn.BatchNorm2d(channels, eps=BN_EPS), nn.ReLU() if relu else nn.Identity())


class SelectiveKernel(nn.Module):
    """Two 3x3 branches (one conv producing 2C channels) mixed by a softmax attention over branches."""

    def __init__(self, cin: int, cout: int, stride: int, sk_ratio: float, min_dim: int = 32) -> None:
        super().__init__()
        self.main_conv = nn.Sequential(_conv(cin, 2 * cout, stride=stride), BatchNormRelu(2 * cout))
        mid = max(int(cout * sk_ratio), min_dim)
        self.mixing_conv = nn.Sequential(_conv(cout, mid, 1), BatchNormRelu(mid), _conv(mid, 2 * cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.main_conv(x)
        x = torch.stack(torch.chunk(x, 2, dim=1), dim=0)  # [2,B,C,H,W]
        g = x.sum(dim=0).mean(dim=(2, 3), keepdim=True)
        m = self.mixing_conv(g)
        m = torch.stack(torch.chunk(m, 2, dim=1), dim=0)  # [2,B,C,1,1]
        return (x * F.softmax(m, dim=0)).sum(dim=0)


class Projection(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, sk_ratio: float) -> None:
        super().__init__()
        if sk_ratio > 0:
            self.shortcut = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.AvgPool2d(2, stride=stride, padding=0),
                                          _conv(cin, cout, 1))
        else:
            self.shortcut = _conv(cin, cout, 1, stride=stride)
        self.bn = BatchNormRelu(cout, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.shortcut(x))


class BottleneckBlock(nn.Module):
    expansion = 4

    def __init__(self, cin: int, cout: int, stride: int, sk_ratio: float, use_projection: bool) -> None:
        super().__init__()
        self.projection = Projection(cin, cout * 4, stride, sk_ratio) if use_projection else nn.Identity()
        ops: list[nn.Module] = [_conv(cin, cout, 1), BatchNormRelu(cout)]
        if sk_ratio > 0:
            ops.append(SelectiveKernel(cout, cout, stride, sk_ratio))
        else:
            ops += [_conv(cout, cout, stride=stride), BatchNormRelu(cout)]
        ops += [_conv(cout, cout * 4, 1), BatchNormRelu(cout * 4, relu=False)]
        self.net = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.projection(x) + self.net(x))


class Blocks(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, sk_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([BottleneckBlock(cin, cout, stride, sk_ratio, True)])
        self.channels_out = cout * BottleneckBlock.expansion
        for _ in range(n - 1):
            self.blocks.append(BottleneckBlock(self.channels_out, cout, 1, sk_ratio, False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


class Stem(nn.Sequential):
    def __init__(self, sk_ratio: float, width_multiplier: int) -> None:
        c = 64 * width_multiplier // 2
        if sk_ratio > 0:
            ops = [_conv(3, c, stride=2), BatchNormRelu(c), _conv(c, c), BatchNormRelu(c), _conv(c, 2 * c)]
        else:
            ops = [_conv(3, 2 * c, kernel_size=7, stride=2)]
        ops += [BatchNormRelu(2 * c), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]
        super().__init__(*ops)


class SimCLRResNet(nn.Module):
    """SimCLRv2 ResNet; forward -> the last stage's feature map [B, 2048*w, H/32, W/32] (no pooling, no fc).

    `fc` exists only so the converter's `resnet` dict (fc included) loads strictly.
    """

    def __init__(self, depth: int, width_multiplier: int = 1, sk_ratio: float = 0.0625,
                 include_fc: bool = True) -> None:
        super().__init__()
        if depth not in SIMCLR_LAYERS:
            raise InputError(f"model.backbone: SimCLRv2 depth must be one of {sorted(SIMCLR_LAYERS)}, got {depth}")
        layers = SIMCLR_LAYERS[depth]
        self.depth, self.width_multiplier, self.sk_ratio = depth, width_multiplier, float(sk_ratio)
        w = width_multiplier
        ops: list[nn.Module] = [Stem(sk_ratio, w)]
        cin = 64 * w
        for i, (n, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            ops.append(Blocks(n, cin, 64 * w * 2**i, stride, sk_ratio))
            cin = ops[-1].channels_out
        self.net = nn.Sequential(*ops)
        self.out_channels = cin
        self.fc = nn.Linear(cin, 1000) if include_fc else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def pooled(self, x: torch.Tensor, apply_fc: bool = False) -> torch.Tensor:
        """Global-average-pooled embedding (the converter's forward), optionally through fc."""
        h = self.net(x).mean(dim=(2, 3))
        return self.fc(h) if apply_fc and self.fc is not None else h


def _dilate_blocks(stage: Blocks, dilations: Sequence[int]) -> None:
    """Make a strided SimCLR stage stride 1 with per-block dilation on its 3x3 convs."""
    for block, d in zip(stage.blocks, dilations):
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    m.dilation, m.padding = (d, d), (d, d)
            elif isinstance(m, nn.AvgPool2d):
                m.stride = 1  # with the (0,1,0,1) zero pad a 2x2 window at stride 1 keeps the size


class SimCLRBackbone(SimCLRResNet):
    """SimCLRv2 ResNet as a DeepLab backbone: no fc; forward -> (stage 1 at stride 4, stage 4 at `output_stride`)."""

    def __init__(self, depth: int = 101, width_multiplier: int = 1, sk_ratio: float = 0.0,
                 output_stride: int = 16, multi_grid: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__(depth, width_multiplier, sk_ratio, include_fc=False)
        from bismap.models.resnet import stage_dilations

        s3, s4 = self.net[3], self.net[4]
        d3, d4 = stage_dilations(output_stride, multi_grid, (len(s3.blocks), len(s4.blocks)), bottleneck=True)
        if d3 is not None:
            _dilate_blocks(s3, d3)
        _dilate_blocks(s4, d4)
        self.output_stride = output_stride
        self.low_channels = 64 * width_multiplier * 4
        self.high_channels = self.out_channels
        self.activation_checkpointing = False  # models.checkpointing; set by the trainer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        on = self.activation_checkpointing
        low = high = run_blocks(self.net[1].blocks, self.net[0](x), on)
        for stage in self.net[2:5]:
            high = run_blocks(stage.blocks, high, on)
        return low, high


# --- key maps between torchvision ResNet names and the converter's sk0 names -------------------

_TV_BLOCK = {"conv1": "net.0", "bn1": "net.1.0", "conv2": "net.2", "bn2": "net.3.0", "conv3": "net.4",
             "bn3": "net.5.0", "downsample.0": "projection.shortcut", "downsample.1": "projection.bn.0"}
_SK0_BLOCK = {v: k for k, v in _TV_BLOCK.items()}
_TV_RE = re.compile(r"^layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.(\w+)$")
_SK0_RE = re.compile(r"^net\.([1-4])\.blocks\.(\d+)\."
                     r"(net\.[0245]|net\.[135]\.0|projection\.shortcut|projection\.bn\.0)\.(\w+)$")


def torchvision_to_simclr_sk0(key: str) -> str | None:
    """`layer3.5.bn2.weight` -> `net.3.blocks.5.net.3.0.weight`; None if the key has no counterpart."""
    if key.startswith("conv1."):
        return "net.0.0." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "net.0.1.0." + key[len("bn1."):]
    if key.startswith("fc."):
        return key
    m = _TV_RE.match(key)
    if not m:
        return None
    return f"net.{m[1]}.blocks.{m[2]}.{_TV_BLOCK[m[3]]}.{m[4]}"


def simclr_sk0_to_torchvision(key: str) -> str | None:
    """Inverse of `torchvision_to_simclr_sk0`."""
    if key.startswith("net.0.0."):
        return "conv1." + key[len("net.0.0."):]
    if key.startswith("net.0.1.0."):
        return "bn1." + key[len("net.0.1.0."):]
    if key.startswith("fc."):
        return key
    m = _SK0_RE.match(key)
    if not m:
        return None
    return f"layer{m[1]}.{m[2]}.{_SK0_BLOCK[m[3]]}.{m[4]}"
