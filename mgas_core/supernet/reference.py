"""A straightforward supernet that mirrors the official DARTS code's structure (``--impl reference``).

Every op of every edge is computed, ``none`` included; each op applies its own ReLU; search-time
pools are ``Sequential(pool, BN)``; the mixed edge is ``sum(w * op(x) for w, op in zip(...))``.
It exists for two things only: the equivalence test (same weights, alphas and batch give the same
logits and gradients as :class:`~mgas_core.supernet.fast.SuperNetwork`) and the side-by-side benchmark.
Parameters and buffers are created in the same order as the optimised supernet, so
``zip(a.parameters(), b.parameters())`` pairs them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.nn.stem import Stem
from mgas_core.space.topology import CellTopology, network_cells


def _relu_conv_bn(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, 1, bias=False),
                         nn.BatchNorm2d(c_out, affine=False))


class _FactorizedReduce(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class _Zero(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x.mul(0.0) if self.stride == 1 else x[:, :, :: self.stride, :: self.stride].mul(0.0)


def _sep(c: int, k: int, stride: int) -> nn.Module:
    p = k // 2
    return nn.Sequential(
        nn.ReLU(inplace=False), nn.Conv2d(c, c, k, stride, p, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=False),
        nn.ReLU(inplace=False), nn.Conv2d(c, c, k, 1, p, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=False),
    )


def _dil(c: int, k: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c, c, k, stride, k - 1, 2, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))


def _op(name: str, c: int, stride: int) -> nn.Module:
    if name == "none":
        return _Zero(stride)
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(c, affine=False))
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), nn.BatchNorm2d(c, affine=False))
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else _FactorizedReduce(c, c)
    if name.startswith("sep_conv_"):
        return _sep(c, int(name[-1]), stride)
    if name.startswith("dil_conv_"):
        return _dil(c, int(name[-1]), stride)
    raise ValueError(f"unknown operation {name!r}")


class _MixedOp(nn.Module):
    def __init__(self, primitives: Sequence[str], c: int, stride: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(_op(p, c, stride) for p in primitives)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))  # type: ignore[return-value]


class _Cell(nn.Module):
    def __init__(self, topology: CellTopology, primitives: Sequence[str], c_pp: int, c_p: int, c: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.topology = topology
        self.preprocess0 = _FactorizedReduce(c_pp, c) if reduction_prev else _relu_conv_bn(c_pp, c)
        self.preprocess1 = _relu_conv_bn(c_p, c)
        self.edges = nn.ModuleList(
            _MixedOp(primitives, c, 2 if reduction and e.source < 2 else 1) for e in topology.edges
        )

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for edge_slice in self.topology.node_edges:
            states.append(sum(self.edges[e](states[self.topology.edges[e].source], weights[e])
                              for e in range(edge_slice.start, edge_slice.stop)))
        return torch.cat(states[2:], dim=1)


class ReferenceSuperNetwork(nn.Module):
    """Same constructor and forward signature as :class:`~mgas_core.supernet.fast.SuperNetwork`; the
    ``active`` lists are ignored (everything is computed, inactive ops must carry weight 0)."""

    def __init__(self, primitives: Sequence[str], channels: int, layers: int, num_classes: int,
                 in_channels: int = 3, nodes: int = 4, stem_multiplier: int = 3,
                 exit_cells: Sequence[int] = (), variant: str = "cifar") -> None:
        super().__init__()
        if exit_cells:
            raise ValueError("the reference supernet has no stage heads (multi-stage search needs impl=fast)")
        self.primitives = tuple(primitives)
        self.topology = CellTopology(nodes)
        self.layers = layers
        if stem_multiplier != 3:
            raise ValueError("the DARTS stem has 3C channels (stem_multiplier=3)")
        self.stem = Stem(in_channels, channels, variant)
        self.shapes = network_cells(channels, layers, nodes, self.stem.out_channels,
                                    self.stem.reduces_first_input)
        self.cells = nn.ModuleList(
            _Cell(self.topology, primitives, s.c_prev_prev, s.c_prev, s.channels, s.reduction, s.reduction_prev)
            for s in self.shapes
        )
        self.classifier = nn.Linear(self.shapes[-1].out_channels, num_classes)

    def reduction_flags(self) -> list[bool]:
        return [s.reduction for s in self.shapes]

    def forward(self, x: Tensor, cell_weights: Sequence[Tensor], cell_active: object = None,
                upto: int | None = None) -> Tensor:
        del cell_active
        if upto not in (None, self.layers):
            raise ValueError("the reference supernet always runs every cell")
        s0, s1 = self.stem(x)
        for cell, w in zip(self.cells, cell_weights):
            s0, s1 = s1, cell(s0, s1, w)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
