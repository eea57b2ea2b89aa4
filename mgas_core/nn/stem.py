"""The network stem (CIFAR and ImageNet variants) shared by the supernets and the evaluation network."""

from __future__ import annotations

from torch import Tensor, nn


class Stem(nn.Module):
    """The network stem; returns the two states the first cell reads.

    ``cifar``: one 3x3 conv to ``multiplier x C`` channels (DARTS: 3; H-DAS's stage-level network:
    the stage width, 4C) + BN (both states are its output). ``imagenet``
    (DARTS ``NetworkImageNet``): stem0 = two stride-2 convs to C, stem1 = ReLU, stride-2 conv;
    the first cell reads stem0 (1/4 resolution) and stem1 (1/8).
    """

    def __init__(self, in_channels: int, channels: int, variant: str = "cifar", multiplier: int = 3) -> None:
        super().__init__()
        if variant not in ("cifar", "imagenet"):
            raise ValueError(f"variant must be 'cifar' or 'imagenet', got {variant!r}")
        self.variant = variant
        if variant == "cifar":
            self.out_channels = multiplier * channels
            self.stem = nn.Sequential(nn.Conv2d(in_channels, self.out_channels, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(self.out_channels))
        else:
            self.out_channels = channels
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
            )
            self.stem1 = nn.Sequential(
                nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
            )

    @property
    def reduces_first_input(self) -> bool:
        """True when the first cell's ``s0`` has twice the resolution of ``s1`` (imagenet)."""
        return self.variant == "imagenet"

    def resolution(self, image_size: int) -> int:
        """Resolution of the state the first cell computes at."""
        return image_size if self.variant == "cifar" else max(1, image_size // 8)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.variant == "cifar":
            s = self.stem(x)
            return s, s
        s0 = self.stem0(x)
        return s0, self.stem1(s0)
