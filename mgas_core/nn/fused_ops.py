"""SepConv and DilConv bodies that keep a third of the activations for backward.

Autograd keeps, per SepConv, the output of each of its four convs and of its inner ReLU (five maps
the size of the op's output), and per DilConv two. Most of them are cheap to recompute: a
depthwise conv costs a few percent of the op, a BN normalisation and a ReLU one elementwise pass.
These functions compute the same forward (the same calls, in the same order) but keep only the
op's input (shared by every op reading that state) and, for SepConv, the first pointwise output
(which the inner BN needs anyway); backward recomputes the depthwise outputs and the inner
``relu(BN(.))`` from them and runs each conv's and the BN's backward kernel itself (once: a
gradient of these gradients, ``create_graph=True``, raises instead of coming out wrong; run such
code under :func:`unfused`). At the paper's
search shape this cuts the memory of a DARTS step by about a third (``docs/performance.md``).

Only the convolution path is fused (``MaskableConv2d.path_for`` = ``conv`` for every conv, as on
maps above the CPU rewrites' sizes); the BN must use batch statistics. Anything else (tiny maps,
eval mode, autocast, no gradient) runs the ops one by one as before. Gradients reach the
effective conv weights and the BN weight/bias tensors the caller passes, so weight masks, MGAS's
live masks and filter gates are differentiated by autograd around these functions as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mgas_core.nn.cpu_conv import is_channels_last
from mgas_core.nn.maskable_conv import MaskableConv2d


@dataclass(frozen=True)
class ConvGeometry:
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def forward(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def backward(self, grad: Tensor, x: Tensor, weight: Tensor, need_input: bool,
                 need_weight: bool) -> tuple[Tensor | None, Tensor | None]:
        if not (need_input or need_weight):
            return None, None
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, list(self.stride), list(self.padding), list(self.dilation), False, [0, 0],
            self.groups, [need_input, need_weight, False])
        return gx, gw


def conv_geometry(conv: MaskableConv2d, x: Tensor | _DenseMap) -> tuple[Tensor, ConvGeometry] | None:
    """``conv``'s effective weight (taps that only meet padding dropped) and geometry on input
    ``x``, or None when its forward would take one of the CPU rewrites instead of the conv."""
    if conv.path_for(x) != "conv":  # type: ignore[arg-type]
        return None
    weight, padding = conv._reachable(conv.effective_weight(), x) if conv.rewrites else (conv.effective_weight(),
                                                                                           conv.padding)
    return weight, ConvGeometry(conv.stride, padding, conv.dilation, conv.groups)  # type: ignore[arg-type]


class _DenseMap:
    """Stands for a dense map of a given shape and layout where a conv's path is chosen
    (:func:`~mgas_core.nn.cpu_conv.choose_path` reads device, shape and strides only), so the next
    conv's path is known before the map exists."""

    def __init__(self, device: torch.device, shape: tuple[int, ...], channels_last: bool) -> None:
        self.device, self.shape, self.channels_last = device, torch.Size(shape), channels_last

    def dim(self) -> int:
        return len(self.shape)

    def stride(self, dim: int) -> int:
        _, c, h, w = self.shape
        strides = (h * w * c, 1, w * c, c) if self.channels_last else (c * h * w, h * w, w, 1)
        return strides[dim]

    def is_contiguous(self, memory_format: torch.memory_format = torch.contiguous_format) -> bool:
        return self.channels_last == (memory_format == torch.channels_last)


def _output_map(x: Tensor | _DenseMap, weight: Tensor, geo: ConvGeometry) -> _DenseMap:
    """The conv's output: the shape ``F.conv2d`` gives, in the input's layout."""
    n, _, h, w = x.shape
    size = [(d + 2 * p - dil * (k - 1) - 1) // s + 1
            for d, p, dil, k, s in zip((h, w), geo.padding, geo.dilation, weight.shape[-2:], geo.stride)]
    channels_last = x.channels_last if isinstance(x, _DenseMap) else is_channels_last(x)
    return _DenseMap(x.device, (n, weight.shape[0], *size), channels_last)


_UNFUSED: list[bool] = []


@contextmanager
def unfused() -> Iterator[None]:
    """Run the ops one by one inside (for code that differentiates gradients)."""
    _UNFUSED.append(True)
    try:
        yield
    finally:
        _UNFUSED.pop()


def fusable(x: Tensor, *tensors: Tensor | None) -> bool:
    """Whether saving memory this way applies: gradient wanted, no autocast, not :func:`unfused`."""
    return (not _UNFUSED and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)
            and (x.requires_grad or any(t is not None and t.requires_grad for t in tensors)))


class _DepthwisePointwise(torch.autograd.Function):
    """``pw(dw(x))`` keeping only ``x``; backward recomputes ``dw(x)``."""

    @staticmethod
    def forward(ctx, x: Tensor, w_dw: Tensor, w_pw: Tensor, g_dw: ConvGeometry,  # type: ignore[override]
                g_pw: ConvGeometry) -> Tensor:
        ctx.geometry = (g_dw, g_pw)
        ctx.save_for_backward(x, w_dw, w_pw)
        return g_pw.forward(g_dw.forward(x, w_dw), w_pw)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, w_dw, w_pw = ctx.saved_tensors
        g_dw, g_pw = ctx.geometry
        need_x, need_dw, need_pw = ctx.needs_input_grad[:3]
        with torch.no_grad():
            d = g_dw.forward(x, w_dw)
            gd, gw_pw = g_pw.backward(grad, d, w_pw, need_x or need_dw, need_pw)
            del d
            gx, gw_dw = g_dw.backward(gd, x, w_dw, need_x, need_dw) if gd is not None else (None, None)
        return gx, gw_dw, gw_pw, None, None


class _SepConvBody(torch.autograd.Function):
    """``pw2(dw2(relu(bn1(pw1(dw1(x))))))`` keeping ``x`` and ``pw1``'s output; backward
    recomputes both depthwise outputs and ``relu(bn1(.))`` from the saved batch statistics."""

    @staticmethod
    def forward(ctx, x: Tensor, w_dw1: Tensor, w_pw1: Tensor, bn_w: Tensor | None,  # type: ignore[override]
                bn_b: Tensor | None, w_dw2: Tensor, w_pw2: Tensor, geometry: tuple[ConvGeometry, ...],
                bn: nn.BatchNorm2d) -> Tensor:
        g1, g2, g3, g4 = geometry
        p1 = g2.forward(g1.forward(x, w_dw1), w_pw1)
        y1, mean, invstd = torch.ops.aten.native_batch_norm(p1, bn_w, bn_b, bn.running_mean, bn.running_var, True,
                                                            bn.momentum, bn.eps)
        out = g4.forward(g3.forward(F.relu(y1), w_dw2), w_pw2)
        ctx.geometry, ctx.eps = geometry, bn.eps
        ctx.has_w, ctx.has_b = bn_w is not None, bn_b is not None
        ctx.save_for_backward(x, w_dw1, w_pw1, bn_w if bn_w is not None else x.new_empty(0),
                              bn_b if bn_b is not None else x.new_empty(0), w_dw2, w_pw2, p1, mean, invstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, w_dw1, w_pw1, bn_w, bn_b, w_dw2, w_pw2, p1, mean, invstd = ctx.saved_tensors
        g1, g2, g3, g4 = ctx.geometry
        bn_w = bn_w if ctx.has_w else None
        need = ctx.needs_input_grad
        with torch.no_grad():
            shape = (1, -1, 1, 1)
            y1 = (p1 - mean.view(shape)) * invstd.view(shape)
            if bn_w is not None:
                y1.mul_(bn_w.view(shape))
            if ctx.has_b:
                y1.add_(bn_b.view(shape))
            r = y1.relu_()
            d2 = g3.forward(r, w_dw2)
            gd2, gw_pw2 = g4.backward(grad, d2, w_pw2, True, need[6])
            del d2
            gr, gw_dw2 = g3.backward(gd2, r, w_dw2, True, need[5])
            del gd2
            gy1 = torch.ops.aten.threshold_backward(gr, r, 0)
            del gr, r
            gp1, gbn_w, gbn_b = torch.ops.aten.native_batch_norm_backward(
                gy1, p1, bn_w, None, None, mean, invstd, True, ctx.eps, [True, need[3], need[4]])
            del gy1
            d1 = g1.forward(x, w_dw1)
            gd1, gw_pw1 = g2.backward(gp1, d1, w_pw1, need[0] or need[1], need[2])
            del d1, gp1
            gx, gw_dw1 = g1.backward(gd1, x, w_dw1, need[0], need[1]) if gd1 is not None else (None, None)
        return (gx, gw_dw1, gw_pw1, gbn_w if need[3] else None, gbn_b if need[4] else None, gw_dw2, gw_pw2,
                None, None)


class _MaxPoolRecomputed(torch.autograd.Function):
    """3x3 max pool (padding 1) keeping only its input, not the int64 argmax map (twice the size of
    a float map); backward finds the argmax again."""

    @staticmethod
    def forward(ctx, x: Tensor, stride: int) -> Tensor:  # type: ignore[override]
        ctx.stride = stride
        ctx.save_for_backward(x)
        return F.max_pool2d(x, 3, stride, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        geometry = ([3, 3], [ctx.stride, ctx.stride], [1, 1], [1, 1], False)
        with torch.no_grad():
            _, index = torch.ops.aten.max_pool2d_with_indices(x, *geometry)
            return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *geometry, index), None


def max_pool_3x3(x: Tensor, stride: int) -> Tensor:
    """``max_pool2d(x, 3, stride, padding=1)``, keeping for backward only ``x`` when it needs one."""
    if fusable(x):
        return _MaxPoolRecomputed.apply(x, stride)
    return F.max_pool2d(x, 3, stride, 1)


def depthwise_pointwise(dw: MaskableConv2d, pw: MaskableConv2d, x: Tensor) -> Tensor | None:
    """``pw(dw(x))`` through :class:`_DepthwisePointwise`, or None where it does not apply."""
    first = conv_geometry(dw, x)
    if first is None:
        return None
    w_dw, g_dw = first
    second = conv_geometry(pw, _output_map(x, w_dw, g_dw))
    if second is None:
        return None
    w_pw, g_pw = second
    if not fusable(x, w_dw, w_pw):
        return None
    return _DepthwisePointwise.apply(x, w_dw, w_pw, g_dw, g_pw)


def sep_conv_body(op: nn.Module, x: Tensor, bn_w: Tensor | None, bn_b: Tensor | None) -> Tensor | None:
    """The SepConv ``op``'s output before its last BN, through :class:`_SepConvBody`, or None
    where it does not apply. ``bn_w``/``bn_b``: the inner BN's weight and bias (gate included)."""
    bn = op.bn1
    if not (bn.training and bn.track_running_stats and bn.running_mean is not None and bn.momentum is not None):
        return None
    geometry: list[ConvGeometry] = []
    weights: list[Tensor] = []
    shape: Tensor | _DenseMap = x
    for conv in (op.dw1, op.pw1, op.dw2, op.pw2):
        found = conv_geometry(conv, shape)
        if found is None:
            return None
        weights.append(found[0])
        geometry.append(found[1])
        shape = _output_map(shape, found[0], found[1])
    if not fusable(x, *weights, bn_w, bn_b):
        return None
    bn.num_batches_tracked.add_(1)
    return _SepConvBody.apply(x, weights[0], weights[1], bn_w, bn_b, weights[2], weights[3], tuple(geometry), bn)
