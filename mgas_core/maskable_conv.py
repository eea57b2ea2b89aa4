"""The convolution every supernet and retrained network uses: :class:`MaskableConv2d`.

Its effective weight is ``weight * masks`` (a fixed 0/1 mask of a derived architecture and/or the
learned-threshold mask of MGAS's weight level). Its forward drops the kernel taps that can only
touch zero padding (tiny maps) and, on CPU, runs the exact faster formulations of
:mod:`mgas_core.cpu_conv`; ``rewrites = False`` runs the conv as declared (FLOP counting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.cpu_conv import (
    LINEAR_MAX_PIXELS,
    ConvPath,
    choose_path,
    depthwise_matmul,
    depthwise_scale,
    pointwise_linear,
)
from mgas_core.masks import LearnedThreshold


class MaskableConv2d(nn.Conv2d):
    """A bias-free conv whose effective weight is ``weight * masks``.

    ``weight_mask`` (buffer, fixed 0/1) is used by derived architectures; ``weight_threshold``
    (a :class:`LearnedThreshold`, MGAS weight level) gives ``Step(|w| - t)``.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(c_in, c_out, kernel_size, stride, padding, dilation, groups, bias=False)
        self.register_buffer("weight_mask", None)
        self.weight_threshold: LearnedThreshold | None = None
        self.cached_mask: Tensor | None = None  # batched for one step by the MGAS unit batcher
        # exact faster formulations (padding-only taps dropped, mgas_core/cpu_conv.py paths); off,
        # the conv runs as declared, which is what FLOP counting must see (count_flops)
        self.rewrites = True

    def learned_weight_mask(self) -> Tensor | None:
        if self.weight_threshold is None:
            return None
        if self.cached_mask is not None:
            return self.cached_mask
        return self.weight_threshold.mask(self.weight.abs())

    def effective_weight(self) -> Tensor:
        w = self.weight
        learned = self.learned_weight_mask()
        if learned is not None:
            w = w * learned
        if self.weight_mask is not None:
            w = w * self.weight_mask
        return w

    def set_fixed_mask(self, mask: Tensor) -> None:
        if mask.shape != self.weight.shape:
            raise ValueError(f"weight mask shape {tuple(mask.shape)} != conv weight {tuple(self.weight.shape)}")
        self.weight_mask = mask.to(self.weight.dtype).clone()
        with torch.no_grad():
            self.weight.mul_(self.weight_mask)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.effective_weight()
        if not self.rewrites:
            return self._conv_forward(x, weight, None)
        weight, padding = self._reachable(weight, x)
        stride: tuple[int, int] = self.stride  # type: ignore[assignment]
        x, stride = self._subsampled(x, padding)
        dilation: tuple[int, int] = self.dilation  # type: ignore[assignment]
        path = choose_path(x, tuple(weight.shape), stride, padding, dilation, self.groups)
        if path == "scale":
            return depthwise_scale(x, weight, stride)
        if path == "matmul":
            return depthwise_matmul(x, weight, stride, padding, dilation)
        if path == "linear":
            return pointwise_linear(x, weight)
        return F.conv2d(x, weight, None, stride, padding, dilation, self.groups)

    def path_for(self, x: Tensor) -> ConvPath:
        """The formulation :meth:`forward` uses for input ``x`` (``conv`` when rewrites are off)."""
        if not self.rewrites:
            return "conv"
        weight, padding = self._reachable(self.weight, x)
        x, stride = self._subsampled(x, padding)
        return choose_path(x, tuple(weight.shape), stride, padding, self.dilation, self.groups)  # type: ignore[arg-type]

    def _subsampled(self, x: Tensor, padding: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """A strided 1x1 conv without padding reads every s-th pixel, so on CPU it can run as that
        subsample (kept channels-last) and a stride-1 conv, exactly. It does where that is faster
        (the subsample is small enough for the channel-matmul path: 1.2x, benchmarks/conv_paths.py)
        and where it must: torch 2.14's CPU channels-last strided 1x1 backward corrupts the heap
        for fewer than 8 input channels (test_cpu_conv.py::test_strided_pointwise_conv_runs_subsampled).
        On larger maps the declared strided conv stays (subsampling there measured 2-3x slower)."""
        stride: tuple[int, int] = self.stride  # type: ignore[assignment]
        if x.device.type != "cpu" or self.kernel_size != (1, 1) or padding != (0, 0) or stride == (1, 1):
            return x, stride
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        pixels = -(-x.shape[-2] // stride[0]) * -(-x.shape[-1] // stride[1])
        if x.shape[1] >= 8 and not (channels_last and pixels <= LINEAR_MAX_PIXELS):
            return x, stride
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return x[:, :, :: stride[0], :: stride[1]].contiguous(memory_format=layout), (1, 1)

    def _reachable(self, weight: Tensor, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``weight`` and padding with the padding-only taps dropped (see :meth:`reachable_taps`)."""
        crop = self.reachable_taps(x.shape[-2], x.shape[-1])
        if crop is None:
            return weight, self.padding  # type: ignore[return-value]
        (h0, h1, pad_h), (w0, w1, pad_w) = crop
        return weight[:, :, h0:h1, w0:w1], (pad_h, pad_w)

    def reachable_taps(self, height: int, width: int) -> tuple[tuple[int, int, int], ...] | None:
        """On a map smaller than the kernel's reach, the outer taps of a 'same'-padded conv only
        ever multiply zero padding: per spatial dim ``(first, end, padding)`` of the taps that can
        touch the input (an exact rewrite: same output, zero gradient for the dropped taps), or
        ``None`` when every tap is reachable. Matters on tiny maps (digits' 2x2 and 4x4 cells,
        where a 5x5 dilated conv reduces to its centre tap)."""
        out, cropped = [], False
        for size, k, d, p in zip((height, width), self.kernel_size, self.dilation, self.padding):  # type: ignore[arg-type]
            centre = (k - 1) // 2
            if k % 2 == 0 or p != d * centre:
                return None
            keep = min(centre, (size - 1) // d)
            cropped |= keep < centre
            out.append((centre - keep, centre + keep + 1, keep * d))
        return tuple(out) if cropped else None

    def keep_out(self, index: Tensor) -> None:
        """Keep output channels ``index`` (and the matching depthwise groups)."""
        self.weight = nn.Parameter(self.weight.detach()[index].clone())
        if self.weight_mask is not None:
            self.weight_mask = self.weight_mask[index].clone()
        if self.groups > 1:
            self.groups = len(index)
            self.in_channels = len(index)
        self.out_channels = len(index)

    def keep_in(self, index: Tensor) -> None:
        """Keep input channels ``index`` of a dense (groups=1) conv."""
        self.weight = nn.Parameter(self.weight.detach()[:, index].clone())
        if self.weight_mask is not None:
            self.weight_mask = self.weight_mask[:, index].clone()
        self.in_channels = len(index)
