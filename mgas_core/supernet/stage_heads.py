"""Convolutional auxiliary heads that close the early stages of a multi-stage search (MG-DARTS).

The official MG-DARTS search attaches to the end of stage 1 (32x32 maps on CIFAR) and stage 2
(16x16) a head of: ReLU, average pool (11 resp. 7, stride 3, no padding) down to a quarter of the
resolution, 1x1 conv to 128 channels, BN, ReLU, a conv whose kernel covers the whole pooled map
to 256 channels, BN, ReLU, linear classifier. :class:`StageHead` is that head for any resolution:
the pool keeps the official ``resolution // 4`` output (kernel ``r - 3 * (r // 4 - 1)``, exactly 11
and 7 at 32 and 16); maps smaller than 4 pixels are averaged to 1x1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.nn.maskable_conv import MaskableConv2d


class StageHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, resolution: int) -> None:
        super().__init__()
        self.pooled = max(1, resolution // 4)
        kernel = resolution - 3 * (self.pooled - 1)
        self.pool: nn.Module | None = (nn.AvgPool2d(kernel, stride=3, padding=0, count_include_pad=False)
                                       if resolution >= 4 else None)
        self.reduce = MaskableConv2d(channels, 128, 1)
        self.bn1 = nn.BatchNorm2d(128)
        self.spatial = nn.Conv2d(128, 256, self.pooled, bias=False)
        self.bn2 = nn.BatchNorm2d(256)
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        x = self.pool(x) if self.pool is not None else F.adaptive_avg_pool2d(x, 1)
        x = F.relu(self.bn1(self.reduce(x)))
        x = F.relu(self.bn2(self.spatial(x)))
        return self.classifier(torch.flatten(x, 1))

    def remap_in(self, source: Tensor, target: Tensor, width: int) -> None:
        """The input channels changed (filters removed or regrown before this head)."""
        self.reduce.remap_in(source, target, width)


def remap_linear_in(linear: nn.Linear, source: Tensor, target: Tensor, width: int) -> nn.Linear:
    """A copy of ``linear`` reading ``width`` inputs: old input ``source[i]`` becomes ``target[i]``
    (new inputs get zero weights)."""
    new = nn.Linear(width, linear.out_features, bias=linear.bias is not None).to(linear.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, target] = linear.weight[:, source]
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new
