"""The convolution every supernet and retrained network uses: :class:`MaskableConv2d`.

Its effective weight is ``weight * masks``: a stored 0/1 mask (``weight_mask``: the fixed mask of a
derived architecture, or MGAS's permanent weight-level mask) and, during an MGAS step, the live
learned-threshold mask ``Step(|w| - t)`` that MGAS computes for all its convs at once. Its forward
drops the kernel taps that can only touch zero padding (tiny maps) and, on CPU, runs the exact
faster formulations of
:mod:`mgas_core.nn.cpu_conv`; ``rewrites = False`` runs the conv as declared (FLOP counting).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.nn.cpu_conv import ConvPath, choose_path, depthwise_matmul, depthwise_scale, pointwise_linear


class MaskableConv2d(nn.Conv2d):
    """A bias-free conv whose effective weight is ``weight * masks``.

    ``weight_mask`` (buffer, 0/1 or None) is the stored mask; ``cached_mask`` the live mask an MGAS
    step lends it (None outside a step).
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
        self.cached_mask: Tensor | None = None  # live learned mask, lent for one MGAS step
        # exact faster formulations (padding-only taps dropped, mgas_core/nn/cpu_conv.py paths); off,
        # the conv runs as declared, which is what FLOP counting must see (count_flops)
        self.rewrites = True

    def effective_weight(self) -> Tensor:
        w = self.weight
        if self.cached_mask is not None:
            w = w * self.cached_mask
        if self.weight_mask is not None:
            w = w * self.weight_mask
        return w

    def stored_nonzero(self) -> int:
        """Weights the stored mask keeps (all of them without one)."""
        return self.weight.numel() if self.weight_mask is None else int(self.weight_mask.sum())

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
        dilation: tuple[int, int] = self.dilation  # type: ignore[assignment]
        path = choose_path(x, tuple(weight.shape), stride, padding, dilation, self.groups)
        if path == "scale":
            return depthwise_scale(x, weight, stride)
        if path == "matmul":
            return depthwise_matmul(x, weight, stride, padding, dilation)
        if path == "linear":
            return pointwise_linear(x, weight, stride)
        return F.conv2d(x, weight, None, stride, padding, dilation, self.groups)

    def path_for(self, x: Tensor) -> ConvPath:
        """The formulation :meth:`forward` uses for input ``x`` (``conv`` when rewrites are off)."""
        if not self.rewrites:
            return "conv"
        weight, padding = self._reachable(self.weight, x)
        return choose_path(x, tuple(weight.shape), self.stride, padding, self.dilation, self.groups)  # type: ignore[arg-type]

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
        self.remap_in(index, torch.arange(len(index)), len(index))

    def remap_in(self, source: Tensor, target: Tensor, width: int) -> None:
        """New input layout of ``width`` channels: old input ``source[i]`` becomes ``target[i]``.

        Dense conv: other new columns are zero (the output is unchanged; they learn from there).
        Depthwise conv: input channels are its groups, so the same remap applies to its outputs;
        new groups get the default initialisation (a zero group next to a zero consumer column
        would never receive gradient).
        """
        old = self.weight.detach()
        if self.groups > 1:
            new = torch.empty((width, *old.shape[1:]), dtype=old.dtype, device=old.device)
            nn.init.kaiming_uniform_(new, a=math.sqrt(5))
            new[target] = old[source]
            mask = None
            if self.weight_mask is not None:
                mask = torch.ones_like(new)
                mask[target] = self.weight_mask[source]
            self.groups = self.in_channels = self.out_channels = width
        else:
            new = old.new_zeros((old.shape[0], width, *old.shape[2:]))
            new[:, target] = old[:, source]
            mask = None
            if self.weight_mask is not None:
                mask = torch.ones_like(new)
                mask[:, target] = self.weight_mask[:, source]
            self.in_channels = width
        self.weight = nn.Parameter(new)
        self.weight_mask = mask
