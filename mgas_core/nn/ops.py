"""Primitive operations of the DARTS space, shared by every supernet and the evaluation network.

Definitions follow the official DARTS code: SepConv = twice (ReLU, depthwise kxk, pointwise 1x1,
BN) with only the first depthwise strided; DilConv = ReLU, depthwise dilated kxk, pointwise, BN;
skip with stride 2 = FactorizedReduce. An :class:`OpStyle` says how BN is used: DARTS-style search
ops have affine-free BN and pools followed by affine-free BN; the evaluation network (and the
MG-DARTS search supernet, as its official code builds it) has affine BN and bare pools.

Three things differ from a textbook implementation, none of which changes what is computed:

* every op takes ``(x, x_relu, scale)``: ``x_relu`` is ``relu(x)`` computed once per input state
  and shared by every op that starts with a ReLU (the official code recomputes it per op);
* ``scale`` (the op's architecture weight, a scalar or a per-channel vector) is folded into the
  op's final BN (``scale * BN(h)`` is one BN with weight and bias multiplied by ``scale``), so
  ``w * BN(h)`` costs no extra tensor: the BN keeps its input for backward anyway;
* filters can be removed for real (MGAS): an op then computes only the output channels it kept
  (``kept_out``, ids in the cell's channel space) and reads only the input channels its state
  still has (:meth:`ChannelOutput.remap_in`); :mod:`mgas_core.space.channels` places them in the node.

Convolutions are :class:`~mgas_core.nn.maskable_conv.MaskableConv2d`: a stored weight mask (derived
architectures, MGAS's weight level) and MGAS's live learned mask can be attached.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.nn.cpu_conv import dense_grad
from mgas_core.nn.fused_ops import depthwise_pointwise, max_pool_3x3, sep_conv_body
from mgas_core.nn.maskable_conv import MaskableConv2d
from mgas_core.nn.step import FilterGate

OpWidths = dict[str, object]
"""Per-op width description stored in architectures: ``{"mid": int, "out": [kept channel ids]}``."""


@dataclass(frozen=True)
class OpStyle:
    """How an op uses BatchNorm: ``affine`` BN after its convs; ``pool_bn``: BN after a pool (affine
    when ``affine``); ``identity_bn``: the stride-1 skip is a BN (the public GOLD-NAS code's)."""

    affine: bool
    pool_bn: bool
    identity_bn: bool = False


DARTS_SEARCH = OpStyle(affine=False, pool_bn=True)
"""DARTS search ops (official ``model_search.py``): affine-free BN, pools followed by BN."""
EVALUATION = OpStyle(affine=True, pool_bn=False)
"""Evaluation-network ops (official ``model.py``), also MG-DARTS's search ops: affine BN, bare pools."""


def bn_parameters(bn: nn.BatchNorm2d, scale: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """The weight and bias of one BN computing ``scale * bn(x)`` (``bn``'s own without a scale)."""
    if scale is None:
        return (bn.weight, bn.bias) if bn.affine else (None, None)
    if scale.dim() == 0:
        # materialised: CPU BN backward returns a wrong input gradient for a stride-0 (expanded)
        # weight when the input is channels-last and grad_output is not (torch 2.14; caught by
        # tests/mgas_core/test_supernet_equivalence.py)
        scale = scale.expand(bn.num_features).contiguous()
    return (bn.weight * scale, bn.bias * scale) if bn.affine else (scale, None)


def batch_norm(x: Tensor, bn: nn.BatchNorm2d, scale: Tensor | None) -> Tensor:
    """``bn(x)``, or ``scale * bn(x)`` computed as one BN whose weight (and bias) carry ``scale``."""
    if scale is None:
        return bn(x)
    weight, bias = bn_parameters(bn, scale)
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
    use_batch_stats = bn.training or bn.running_mean is None
    return F.batch_norm(x, bn.running_mean, bn.running_var, weight, bias, use_batch_stats, bn.momentum, bn.eps)


def combine_scales(scale: Tensor | None, gate: FilterGate | None) -> Tensor | None:
    if gate is None:
        return scale
    g = gate.scale()
    return g if scale is None else g * scale


def _kept_index(kept: list[int] | None, channels: int) -> Tensor | None:
    if kept is None or len(kept) == channels:
        return None
    if len(kept) == 0 or len(set(kept)) != len(kept) or min(kept) < 0 or max(kept) >= channels:
        raise ValueError(f"kept channels {kept} are not distinct ids in [0, {channels})")
    return torch.tensor(sorted(kept), dtype=torch.long)


class ChannelOutput(nn.Module, ABC):
    """Base for ops whose filters can be removed: ``kept_out`` ids into the ``channels``-wide cell
    channel space, and an input layout that can change (:meth:`remap_in`)."""

    needs_relu = True

    def __init__(self, channels: int, kept: list[int] | None) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer("out_index", _kept_index(kept, channels))
        self.out_gate: FilterGate | None = None

    @property
    def kept_out(self) -> list[int]:
        if self.out_index is None:
            return list(range(self.channels))
        return [int(i) for i in self.out_index]

    def _set_out_index(self, kept_positions: Tensor) -> None:
        device = next(self.parameters()).device
        new = torch.tensor(self.kept_out, dtype=torch.long)[kept_positions.cpu()].to(device)
        self.out_index = None if len(new) == self.channels else new
        if self.out_gate is not None:
            self.out_gate.keep(kept_positions)

    def remap_in(self, source: Tensor, target: Tensor, width: int) -> None:
        """New input layout of ``width`` channels: old input ``source[i]`` becomes ``target[i]``
        (see :meth:`MaskableConv2d.remap_in`)."""
        for conv in self.input_convs():
            conv.remap_in(source, target, width)

    @abstractmethod
    def input_convs(self) -> list[MaskableConv2d]:
        """The convs that read the op's input (their input columns follow its state's channels)."""

    @property
    def in_width(self) -> int:
        return self.input_convs()[0].in_channels


class ReLUConvBN(ChannelOutput):
    """ReLU -> 1x1 conv -> BN: the cell pre-processing op (a filter-level unit in MGAS)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True, kept: list[int] | None = None) -> None:
        super().__init__(c_out, kept)
        n = c_out if kept is None else len(kept)
        self.conv = MaskableConv2d(c_in, n, 1)
        self.bn = nn.BatchNorm2d(n, affine=affine)

    def forward(self, x: Tensor, x_relu: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        h = self.conv(F.relu(x) if x_relu is None else x_relu)
        return batch_norm(h, self.bn, combine_scales(scale, self.out_gate))

    def keep_out(self, positions: Tensor) -> None:
        self.conv.keep_out(positions)
        _keep_bn(self, "bn", positions)
        self._set_out_index(positions)

    def input_convs(self) -> list[MaskableConv2d]:
        return [self.conv]

    def widths(self) -> OpWidths:
        return {"out": self.kept_out}


class FactorizedReduce(ChannelOutput):
    """Two 1x1 stride-2 convs on x and x shifted by one pixel, concatenated, BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True, kept: list[int] | None = None) -> None:
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        super().__init__(c_out, kept)
        half = c_out // 2
        ids = list(range(c_out)) if kept is None else sorted(kept)
        n1 = sum(1 for i in ids if i < half)
        n2 = len(ids) - n1
        # a fully pruned half has no conv at all (a conv cannot have zero output channels)
        self.conv_1 = MaskableConv2d(c_in, n1, 1, stride=2) if n1 else None
        self.conv_2 = MaskableConv2d(c_in, n2, 1, stride=2) if n2 else None
        self.bn = nn.BatchNorm2d(n1 + n2, affine=affine)

    def forward(self, x: Tensor, x_relu: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        xr = F.relu(x) if x_relu is None else x_relu
        parts = []
        if self.conv_1 is not None:
            parts.append(self.conv_1(xr))
        if self.conv_2 is not None:
            parts.append(self.conv_2(xr[:, :, 1:, 1:]))
        h = torch.cat([dense_grad(p) for p in parts], dim=1) if len(parts) > 1 else parts[0]
        return batch_norm(h, self.bn, combine_scales(scale, self.out_gate))

    def input_convs(self) -> list[MaskableConv2d]:
        return [c for c in (self.conv_1, self.conv_2) if c is not None]

    @property
    def half_sizes(self) -> tuple[int, int]:
        return (0 if self.conv_1 is None else self.conv_1.out_channels,
                0 if self.conv_2 is None else self.conv_2.out_channels)

    def keep_out(self, positions: Tensor) -> None:
        n1, _ = self.half_sizes
        first, second = positions[positions < n1], positions[positions >= n1] - n1
        if len(positions) == 0:
            raise ValueError("FactorizedReduce must keep at least one channel")
        for name, keep in (("conv_1", first), ("conv_2", second)):
            conv = getattr(self, name)
            if conv is None:
                continue
            if len(keep) == 0:
                setattr(self, name, None)
            else:
                conv.keep_out(keep)
        _keep_bn(self, "bn", positions)
        self._set_out_index(positions)

    def weight_convs(self) -> dict[str, MaskableConv2d]:
        return {}

    def widths(self) -> OpWidths:
        return {"out": self.kept_out}


class SepConv(ChannelOutput):
    """(ReLU, depthwise kxk, pointwise, BN) twice; only the first depthwise conv is strided.

    ``mid`` is the width after the first pointwise conv (default ``c_out``, removable); ``kept``
    the kept output channel ids.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
        mid: int | None = None,
        kept: list[int] | None = None,
    ) -> None:
        super().__init__(c_out, kept)
        m = c_out if mid is None else mid
        n = c_out if kept is None else len(kept)
        self.dw1 = MaskableConv2d(c_in, c_in, kernel_size, stride, padding, groups=c_in)
        self.pw1 = MaskableConv2d(c_in, m, 1)
        self.bn1 = nn.BatchNorm2d(m, affine=affine)
        self.dw2 = MaskableConv2d(m, m, kernel_size, 1, padding, groups=m)
        self.pw2 = MaskableConv2d(m, n, 1)
        self.bn2 = nn.BatchNorm2d(n, affine=affine)
        self.mid_gate: FilterGate | None = None

    def forward(self, x: Tensor, x_relu: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        xr = F.relu(x) if x_relu is None else x_relu
        inner = combine_scales(None, self.mid_gate)
        h = sep_conv_body(self, xr, *bn_parameters(self.bn1, inner))  # keeps 2 maps for backward, not 5
        if h is None:
            h = F.relu(batch_norm(self.pw1(self.dw1(xr)), self.bn1, inner))
            h = self.pw2(self.dw2(h))
        return batch_norm(h, self.bn2, combine_scales(scale, self.out_gate))

    def keep_mid(self, positions: Tensor) -> None:
        self.pw1.keep_out(positions)
        _keep_bn(self, "bn1", positions)
        self.dw2.keep_out(positions)
        self.pw2.keep_in(positions)
        if self.mid_gate is not None:
            self.mid_gate.keep(positions)

    def keep_out(self, positions: Tensor) -> None:
        self.pw2.keep_out(positions)
        _keep_bn(self, "bn2", positions)
        self._set_out_index(positions)

    def weight_convs(self) -> dict[str, MaskableConv2d]:
        return {"dw1": self.dw1, "pw1": self.pw1, "dw2": self.dw2, "pw2": self.pw2}

    def input_convs(self) -> list[MaskableConv2d]:
        return [self.dw1, self.pw1]

    def widths(self) -> OpWidths:
        return {"mid": self.pw1.out_channels, "out": self.kept_out}


class DilConv(ChannelOutput):
    """ReLU, depthwise dilated kxk, pointwise 1x1, BN."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
        kept: list[int] | None = None,
    ) -> None:
        super().__init__(c_out, kept)
        n = c_out if kept is None else len(kept)
        self.dw = MaskableConv2d(c_in, c_in, kernel_size, stride, padding, dilation, groups=c_in)
        self.pw = MaskableConv2d(c_in, n, 1)
        self.bn = nn.BatchNorm2d(n, affine=affine)

    def forward(self, x: Tensor, x_relu: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        xr = F.relu(x) if x_relu is None else x_relu
        h = depthwise_pointwise(self.dw, self.pw, xr)  # the depthwise output is recomputed, not kept
        if h is None:
            h = self.pw(self.dw(xr))
        return batch_norm(h, self.bn, combine_scales(scale, self.out_gate))

    def keep_out(self, positions: Tensor) -> None:
        self.pw.keep_out(positions)
        _keep_bn(self, "bn", positions)
        self._set_out_index(positions)

    def weight_convs(self) -> dict[str, MaskableConv2d]:
        return {"dw": self.dw, "pw": self.pw}

    def input_convs(self) -> list[MaskableConv2d]:
        return [self.dw, self.pw]

    def widths(self) -> OpWidths:
        return {"out": self.kept_out}


class Pool(nn.Module):
    """3x3 max or average pool (count_include_pad=False); optionally followed by BN (``affine``)."""

    needs_relu = False

    def __init__(self, kind: str, channels: int, stride: int, with_bn: bool, affine: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.stride = stride
        if kind == "max":
            self.pool: nn.Module = nn.MaxPool2d(3, stride=stride, padding=1)
        elif kind == "avg":
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        else:
            raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
        self.bn = nn.BatchNorm2d(channels, affine=affine) if with_bn else None

    def pooled(self, x: Tensor) -> Tensor:
        """The pool of ``x`` (a max pool keeps no argmax map for backward: recomputed)."""
        if self.kind == "max":
            return max_pool_3x3(x, self.stride)
        return self.pool(x)

    def normalize(self, pooled: Tensor, scale: Tensor | None = None) -> Tensor:
        """The op applied to an already pooled map (a cell shares pooling across edges)."""
        if self.bn is not None:
            return batch_norm(pooled, self.bn, scale)
        return pooled if scale is None else pooled * scale

    def forward(self, x: Tensor, x_relu: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        return self.normalize(self.pooled(x), scale)


class Identity(nn.Module):
    """The stride-1 skip; with ``bn`` (the public GOLD-NAS code's evaluation network) a BN of its input."""

    needs_relu = False

    def __init__(self, bn: nn.BatchNorm2d | None = None) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: Tensor, x_relu: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        if self.bn is not None:
            return batch_norm(x, self.bn, scale)
        return x if scale is None else x * scale


class Zero(nn.Module):
    """The ``none`` op: an all-zero output (spatially strided)."""

    needs_relu = False

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor, x_relu: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        out = x.mul(0.0) if self.stride == 1 else x[:, :, :: self.stride, :: self.stride].mul(0.0)
        return out if scale is None else out * scale


def _keep_bn(owner: nn.Module, name: str, positions: Tensor) -> None:
    old: nn.BatchNorm2d = getattr(owner, name)
    new = nn.BatchNorm2d(len(positions), eps=old.eps, momentum=old.momentum, affine=old.affine)
    new = new.to(device=old.running_mean.device, dtype=old.running_mean.dtype)
    with torch.no_grad():
        new.running_mean.copy_(old.running_mean[positions])
        new.running_var.copy_(old.running_var[positions])
        new.num_batches_tracked.copy_(old.num_batches_tracked)
        if old.affine:
            new.weight.copy_(old.weight[positions])
            new.bias.copy_(old.bias[positions])
    new.train(old.training)
    setattr(owner, name, new)


def build_op(
    name: str,
    channels: int,
    stride: int,
    style: OpStyle,
    widths: OpWidths | None = None,
    in_channels: int | None = None,
) -> nn.Module:
    """Build primitive ``name`` writing into a ``channels``-wide cell channel space.

    ``style`` sets BN use (:data:`DARTS_SEARCH`, :data:`EVALUATION`); ``widths`` applies removed
    filters (``mid``, ``out`` ids) of a derived architecture; ``in_channels`` is the width of the
    state the op reads when filters were removed there (default ``channels``).
    """
    affine = style.affine
    widths = widths or {}
    unknown = set(widths) - {"mid", "out"}
    if unknown:
        raise ValueError(f"unknown width keys {sorted(unknown)} for op {name!r}; allowed: mid, out")
    kept = widths.get("out")
    mid = widths.get("mid")
    c_in = channels if in_channels is None else in_channels
    if name == "none":
        return Zero(stride)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return Pool(name[:3], c_in, stride, with_bn=style.pool_bn, affine=affine)
    if name == "skip_connect":
        if stride == 1:
            return Identity(nn.BatchNorm2d(c_in, affine=affine) if style.identity_bn else None)
        return FactorizedReduce(c_in, channels, affine, kept)  # type: ignore[arg-type]
    if name in ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7"):
        k = int(name[-1])
        return SepConv(c_in, channels, k, stride, k // 2, affine, mid, kept)  # type: ignore[arg-type]
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        k = int(name[-1])
        return DilConv(c_in, channels, k, stride, k - 1, 2, affine, kept)  # type: ignore[arg-type]
    raise ValueError(f"unknown operation {name!r}")


def writes_input_channels(name: str, stride: int) -> bool:
    """True for ops that write exactly the channels they read (pools, the stride-1 identity);
    every other op writes its own kept filters (a stride-2 skip is a FactorizedReduce conv)."""
    return name in ("max_pool_3x3", "avg_pool_3x3") or (name == "skip_connect" and stride == 1)


KNOWN_OPS = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
