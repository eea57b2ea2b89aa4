"""Exact CPU rewrites of the small convolutions that dominate search and retraining on tiny maps.

On CPU, oneDNN's backward pass for a depthwise convolution is many times slower than its forward
when the conv is dilated or the map is only a few pixels wide (a 5x5 dilated depthwise conv on an
8x8 map: ~6 ms forward+backward against ~1.5 ms for an undilated one). Those are exactly the
shapes of the DARTS space on small inputs (digits: cells at 8x8, 4x4 and 2x2), so
:class:`~mgas_core.nn.maskable_conv.MaskableConv2d` routes them to an equivalent formulation:

* ``scale``: a depthwise conv whose only reachable tap is the centre (after the tap crop) is a
  per-channel scale of the (strided) input;
* ``matmul``: a depthwise conv on a small input (at most 64 pixels and 1024 values per sample)
  is a per-channel ``[HWo, HWi]`` matrix built from the kernel taps (a Toeplitz-like gather;
  entries for padding are zero), applied with one batched product. Its work grows with the
  square of the map and it keeps a copy of the input for backward, so larger inputs stay on the
  convolution (at the paper's 8x8 cells with C=64 it measured faster per call but cost 430 MB
  more peak memory over the search supernet and no throughput);
* ``linear``: a 1x1, stride-1 dense conv on a channels-last map of at most 16 pixels is a matrix
  product over the channel dimension of the same memory (no copy); a strided 1x1 conv (the
  FactorizedReduce halves) on a channels-last map is always one, on the subsampled map. This is
  also a correctness fix: oneDNN's 1x1 weight-gradient kernel for strided channels-last convs
  (torch 2.14, ``jit_avx2_1x1_convolution_bwd_weights``) wrote out of bounds under valgrind once
  filter removal left channel counts that are not multiples of 8 (heap corruption and aborts),
  and gave wrong weight gradients for 3 input channels.

Each computes the same sums as the convolution (only the summation order can differ, ~1e-6
relative) and gives the same gradients to the input and to every real tap; padding taps get
none. The rule is fixed, not autotuned, so the same seed gives the same architecture on the same
machine. ``python -m benchmarks.diagnostics.conv_paths`` measures it per shape.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor

ConvPath = Literal["conv", "scale", "matmul", "linear"]

MATMUL_MAX_PIXELS = 64
MATMUL_MAX_VALUES = 1024  # channels x pixels of one sample
LINEAR_MAX_PIXELS = 16


def choose_path(
    x: Tensor,
    weight_shape: tuple[int, ...],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> ConvPath:
    """Which formulation computes ``conv2d(x, weight)`` fastest on CPU for this shape (fixed rule,
    from ``benchmarks/diagnostics/conv_paths.py``; always ``conv`` off the CPU)."""
    if x.device.type != "cpu" or x.dim() != 4:
        return "conv"
    c_out, c_in_per_group, k_h, k_w = weight_shape
    pixels = x.shape[-2] * x.shape[-1]
    depthwise = groups > 1 and c_in_per_group == 1 and c_out == groups == x.shape[1]
    if depthwise:
        if (k_h, k_w) == (1, 1) and padding == (0, 0):
            return "scale"
        small = pixels <= MATMUL_MAX_PIXELS and pixels * x.shape[1] <= MATMUL_MAX_VALUES
        if small and (max(dilation) > 1 or pixels <= 4 or (k_h * k_w >= 25 and pixels <= 16)):
            return "matmul"
        return "conv"
    pointwise = groups == 1 and (k_h, k_w) == (1, 1) and padding == (0, 0)
    if pointwise and stride != (1, 1) and x.stride(1) == 1:  # channels-last, also a sliced one
        return "linear"
    if pointwise and pixels <= LINEAR_MAX_PIXELS and x.is_contiguous(memory_format=torch.channels_last):
        return "linear"
    return "conv"


@lru_cache(maxsize=512)
def tap_index(
    height: int,
    width: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Tensor, int, int]:
    """``index[o, i]`` = the flat kernel tap linking output pixel ``o`` to input pixel ``i``, or
    ``k_h * k_w`` (a zero slot) where no tap does; with the output size ``(h_out, w_out)``."""
    k_h, k_w = kernel
    rows = _axis_taps(height, k_h, stride[0], padding[0], dilation[0])
    cols = _axis_taps(width, k_w, stride[1], padding[1], dilation[1])
    h_out, w_out = rows.shape[0], cols.shape[0]
    # rows[o, i] = tap row linking output row o to input row i (-1: none); same for columns
    tap = rows[:, None, :, None] * k_w + cols[None, :, None, :]
    valid = (rows[:, None, :, None] >= 0) & (cols[None, :, None, :] >= 0)
    index = torch.where(valid, tap, torch.full_like(tap, k_h * k_w))
    return index.reshape(h_out * w_out, height * width), h_out, w_out


def _axis_taps(size: int, kernel: int, stride: int, padding: int, dilation: int) -> Tensor:
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(f"conv output would be empty: size {size}, kernel {kernel}, stride {stride}, "
                         f"padding {padding}, dilation {dilation}")
    taps = torch.full((out, size), -1, dtype=torch.long)
    for o in range(out):
        for k in range(kernel):
            i = o * stride - padding + k * dilation
            if 0 <= i < size:
                taps[o, i] = k
    return taps


def depthwise_scale(x: Tensor, weight: Tensor, stride: tuple[int, int]) -> Tensor:
    """A depthwise conv with a 1x1 kernel and no padding: ``x[::s, ::s] * w[c]``."""
    if stride != (1, 1):
        x = x[:, :, :: stride[0], :: stride[1]]
    return x * weight.reshape(1, -1, 1, 1)


def depthwise_matmul(
    x: Tensor,
    weight: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """A depthwise conv as one per-channel matrix product; keeps ``x``'s memory layout."""
    batch, channels, height, width = x.shape
    # dynamo ignores lru_cache (and warns at every compile): under torch.compile the index's few
    # ops are traced into the graph either way, so call the function itself
    taps_of = tap_index.__wrapped__ if torch.compiler.is_compiling() else tap_index
    index, h_out, w_out = taps_of(height, width, (weight.shape[2], weight.shape[3]), stride, padding, dilation)
    taps = torch.cat([weight.reshape(channels, -1), weight.new_zeros(channels, 1)], dim=1)
    matrix = taps[:, index.to(x.device)]  # [C, HWo, HWi]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        flat = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # a view
        out = torch.einsum("bpc,cop->boc", flat, matrix).contiguous()
        return out.reshape(batch, h_out, w_out, channels).permute(0, 3, 1, 2)
    out = torch.einsum("bcp,cop->bco", x.reshape(batch, channels, height * width), matrix).contiguous()
    return out.reshape(batch, channels, h_out, w_out)


def pointwise_linear(x: Tensor, weight: Tensor, stride: tuple[int, int] = (1, 1)) -> Tensor:
    """A 1x1 dense conv (no padding) on a channels-last map as a product over the channel dim."""
    if stride != (1, 1):
        x = x[:, :, :: stride[0], :: stride[1]]
    out = torch.nn.functional.linear(x.permute(0, 2, 3, 1), weight.reshape(weight.shape[0], weight.shape[1]))
    return out.permute(0, 3, 1, 2)


def is_channels_last(x: Tensor) -> bool:
    """A 4-d tensor laid out channels-last (and not also plain contiguous, as 1x1 maps are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _DenseGrad(torch.autograd.Function):
    """Identity whose backward hands on its gradient dense, in the input's memory format.

    ``torch.cat`` gives each input a channel slice of the output gradient; in channels-last that
    slice is not dense, and oneDNN's 1x1 convolution weight-gradient kernel (torch 2.14 CPU,
    ``jit_avx2_1x1_convolution_bwd_weights``) writes out of bounds on such a gradient when the
    channel counts are not multiples of 8 (found with valgrind on a FactorizedReduce whose input
    had lost filters: heap corruption, "double free or corruption"). FactorizedReduce's two convs
    feed a ``cat``, so their outputs pass through this.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.channels_last = is_channels_last(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)


def dense_grad(x: Tensor) -> Tensor:
    return _DenseGrad.apply(x)
