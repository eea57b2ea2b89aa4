"""The cells of an evaluation network: their module specs (hashable, so sizes are cached), the
cell module, drop-path and the auxiliary head, shared by the DARTS-style network
(:mod:`mgas_core.evaluation_network`) and H-DAS's stage-level one (:mod:`mgas_core.stage_network`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.nn.ops import (
    FactorizedReduce,
    Identity,
    OpWidths,
    ReLUConvBN,
    build_op,
    writes_input_channels,
)
from mgas_core.space.architecture import DEFAULT_STYLE, CellArch, NetworkStyle
from mgas_core.space.channels import CellChannels, OpChannels, plan_cell


def cell_channel_plan(cell: CellArch, channels: int, reduction: bool) -> CellChannels:
    """The channels every state of ``cell`` keeps (see :mod:`mgas_core.space.channels`)."""
    inputs = [(p or {}).get("out") for p in cell.preprocess]
    ops = []
    for spec in cell.ops:
        stride = 2 if reduction and spec.input < 2 else 1
        out = None
        if not writes_input_channels(spec.op, stride):
            out = tuple((spec.widths or {}).get("out", range(channels)))  # type: ignore[arg-type]
        ops.append(OpChannels(spec.input, spec.node, out))
    nodes = 1 + max(o.node for o in cell.ops)
    return plan_cell(channels, [tuple(x) if x is not None else None for x in inputs], ops, nodes, cell.concat)


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (DARTS drop-path).

    Under ``torch.compile`` the keep mask is drawn by comparing uniform numbers with the symbolic
    probability: ``bernoulli_`` of a float would specialise the graph on its value, one recompile
    per epoch as the probability grows (mgas_core/engine/compiled.py)."""
    keep = 1.0 - drop_prob
    if torch.compiler.is_compiling():
        mask = (torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device) < keep).to(x.dtype)
    else:
        mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


@dataclass(frozen=True)
class ModuleSpec:
    """How to build one module of an evaluation cell (hashable, so its size can be cached)."""

    kind: str  # "op", "relu_conv_bn" or "factorized_reduce"
    args: tuple

    def build(self) -> nn.Module:
        if self.kind == "op":
            name, channels, stride, widths, in_channels, style = self.args
            return build_op(name, channels, stride, style, _unfreeze(widths), in_channels)
        c_in, c_out, kept, affine = self.args
        cls = FactorizedReduce if self.kind == "factorized_reduce" else ReLUConvBN
        return cls(c_in, c_out, affine, list(kept) if kept is not None else None)

    def params(self) -> int:
        return _spec_params(self)


@lru_cache(maxsize=8192)
def _spec_params(spec: ModuleSpec) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in spec.build().parameters())


def _freeze(widths: OpWidths | None) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (widths or {}).items()))


def _unfreeze(widths: tuple) -> OpWidths:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in widths}


@dataclass(frozen=True)
class CellSpecs:
    plan: CellChannels
    preprocess0: ModuleSpec | None
    preprocess1: ModuleSpec | None
    ops: tuple[ModuleSpec, ...]

    @property
    def modules(self) -> list[ModuleSpec]:
        return [m for m in (self.preprocess0, self.preprocess1, *self.ops) if m is not None]


def cell_specs(cell: CellArch, c_prev_prev: int, c_prev: int, channels: int, reduction: bool,
               reduction_prev: bool, style: NetworkStyle = DEFAULT_STYLE) -> CellSpecs:
    """The modules of an evaluation cell: pre-processing of the inputs it reads (of both with
    ``style.unused_preprocess``), and its ops, each reading the channels its state keeps."""
    for k, o in enumerate(cell.ops):
        mid = (o.widths or {}).get("mid")
        if isinstance(mid, int) and not 1 <= mid <= channels:
            raise ValueError(f"ops[{k}].widths.mid={mid} must be between 1 and the cell's {channels} channels")
    plan = cell_channel_plan(cell, channels, reduction)
    pre0, pre1 = cell.preprocess
    spec0 = spec1 = None
    affine, op_style = style.bn_affine, style.op_style
    if cell.uses_input(0) or style.unused_preprocess:
        kept0 = (pre0 or {}).get("out")
        spec0 = ModuleSpec("factorized_reduce" if reduction_prev else "relu_conv_bn",
                           (c_prev_prev, channels, tuple(kept0) if kept0 is not None else None, affine))
    if cell.uses_input(1) or style.unused_preprocess:
        kept1 = (pre1 or {}).get("out")
        spec1 = ModuleSpec("relu_conv_bn", (c_prev, channels, tuple(kept1) if kept1 is not None else None, affine))
    ops = tuple(ModuleSpec("op", (o.op, channels, 2 if reduction and o.input < 2 else 1, _freeze(o.widths),
                                  len(plan.states[o.input]), op_style)) for o in cell.ops)
    return CellSpecs(plan, spec0, spec1, ops)


class EvalCell(nn.Module):
    def __init__(self, specs: CellSpecs, channels: int, reduction: bool, cell: CellArch) -> None:
        super().__init__()
        self.reduction = reduction
        self.channels = channels
        self.plan = specs.plan
        self.preprocess0: nn.Module | None = specs.preprocess0.build() if specs.preprocess0 else None
        self.preprocess1: nn.Module | None = specs.preprocess1.build() if specs.preprocess1 else None
        self.reads = (cell.uses_input(0), cell.uses_input(1))  # an unread pre-processing is not run
        self.ops = nn.ModuleList(spec.build() for spec in specs.ops)
        self.inputs = [o.input for o in cell.ops]
        self.positions = list(self.plan.positions)
        self.num_states = 2 + max(o.node + 1 for o in cell.ops)
        self.node_ops: list[list[int]] = [[] for _ in range(self.num_states)]
        for k, o in enumerate(cell.ops):
            self.node_ops[o.node + 2].append(k)
        self.concat = list(cell.concat)

    @property
    def out_channels(self) -> int:
        return self.plan.output_width()

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float) -> Tensor:
        states: list[Tensor | None] = [None] * self.num_states
        if self.preprocess0 is not None and self.reads[0]:
            states[0] = self.preprocess0(s0)
        if self.preprocess1 is not None and self.reads[1]:
            states[1] = self.preprocess1(s1)
        relus: dict[int, Tensor] = {}
        for node_state in range(2, self.num_states):
            acc: Tensor | None = None
            for k in self.node_ops[node_state]:
                op, src = self.ops[k], self.inputs[k]
                x = states[src]
                assert x is not None, "validated architectures never read an empty state"
                x_relu = None
                if op.needs_relu:
                    if src not in relus:
                        relus[src] = F.relu(x)
                    x_relu = relus[src]
                h = op(x, x_relu)
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                pos = self.positions[k]
                if pos is None:
                    acc = h if acc is None else acc + h
                else:
                    if acc is None:
                        width = len(self.plan.states[node_state])
                        acc = h.new_zeros((h.shape[0], width, *h.shape[2:]))
                    acc = acc.index_add(1, pos.to(h.device), h)
            states[node_state] = acc
        return torch.cat([states[i] for i in self.concat], dim=1)  # type: ignore[misc]


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary classifier. CIFAR variant assumes 8x8 input, ImageNet 14x14 (no last BN).

    For other input sizes the pooled map is resized to 2x2 so the head works on any dataset; at
    the official resolutions the computation is exactly the official one.
    """

    def __init__(self, channels: int, num_classes: int, imagenet: bool) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=2 if imagenet else 3, padding=0, count_include_pad=False)
        layers: list[nn.Module] = [
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if not imagenet:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        x = self.pool(x) if min(x.shape[-2:]) >= 5 else x
        if x.shape[-2:] != (2, 2):
            x = F.adaptive_avg_pool2d(x, 2)
        x = self.features(x)
        return self.classifier(x.flatten(1))
