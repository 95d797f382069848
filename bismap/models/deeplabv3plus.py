"""DeepLabV3+ as in the original (ASPP without dropout, 48-ch low-level projection,
two 3x3 decoder convs, Dropout2d, 1x1 classifier). forward returns (feature, logits) where
feature is the classifier input at stride 4: the prototype (GMM) stages read it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = 0 if kernel_size == 1 else dilation * (kernel_size - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """1x1 + three dilated 3x3 + image pooling branches, concatenated and projected (no dropout)."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, channels, 1)]
                                      + [conv_bn_relu(in_channels, channels, 3, r) for r in rates])
        self.pool = conv_bn_relu(in_channels, channels, 1)
        self.project = conv_bn_relu(channels * (len(rates) + 2), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1))
        outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True))
        return self.project(torch.cat(outs, dim=1))


class Decoder(nn.Module):
    def __init__(self, low_in: int, low_channels: int, aspp_channels: int, channels: int, num_classes: int,
                 dropout: float) -> None:
        super().__init__()
        self.low = conv_bn_relu(low_in, low_channels, 1)
        self.fuse = nn.Sequential(conv_bn_relu(low_channels + aspp_channels, channels, 3),
                                  conv_bn_relu(channels, channels, 3))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=True)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low(low)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        feature = self.dropout(self.fuse(torch.cat([high, low], dim=1)))
        return feature, self.classifier(feature)


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal (fan_in) convs, BN weight 1 / bias 0: the original's `init_weights('kaiming')`."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DeepLabV3Plus(nn.Module):
    """backbone(x) -> (low [stride 4], high [stride OS]); forward -> (feature, logits), both at stride 4."""

    def __init__(self, backbone: nn.Module, num_classes: int = 19, output_stride: int = 16,
                 aspp_channels: int = 256, decoder_channels: int = 256, low_level_channels: int = 48,
                 dropout: float = 0.1, aspp_rates: Sequence[int] | None = None) -> None:
        super().__init__()
        if aspp_rates is None:
            aspp_rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.backbone = backbone
        self.aspp = ASPP(backbone.high_channels, aspp_channels, aspp_rates)
        self.decoder = Decoder(backbone.low_channels, low_level_channels, aspp_channels, decoder_channels, num_classes,
                               dropout)
        self.feature_dim = decoder_channels
        self.num_classes = num_classes
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.backbone(x)
        return self.decoder(low, self.aspp(high))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone params: base lr, ASPP + decoder params: head_lr_mult x lr)."""
        head = list(self.aspp.parameters()) + list(self.decoder.parameters())
        return list(self.backbone.parameters()), head
