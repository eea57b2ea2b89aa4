"""The evaluation network built from an :class:`~mgas_core.space.architecture.Architecture`.

Structure and parameter counts follow the official DARTS ``NetworkCIFAR`` / ``NetworkImageNet``
(auxiliary head after cell 2L//3, drop-path on non-identity ops, ImageNet stem of three stride-2
convs). Per-cell architectures (GOLD-NAS, MGAS) add per-op channel widths and fixed weight masks;
removed filters are gone for real: every state keeps only the channels some op writes
(:mod:`mgas_core.space.channels`) and the convs reading it have only those input columns. An
imported architecture's ``style`` (:class:`~mgas_core.space.architecture.NetworkStyle`) switches
on what its own ``model.py`` builds differently (affine-free BN, BN after pools and the identity,
pre-processing of an unread input), so its parameter count is the official one to the integer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.metrics import ParamCount, count_params
from mgas_core.nn.maskable_conv import MaskableConv2d
from mgas_core.nn.ops import (
    FactorizedReduce,
    Identity,
    OpWidths,
    ReLUConvBN,
    build_op,
    writes_input_channels,
)
from mgas_core.nn.stem import Stem
from mgas_core.space.architecture import DEFAULT_STYLE, Architecture, ArchitectureError, CellArch, NetworkStyle
from mgas_core.space.channels import CellChannels, OpChannels, plan_cell
from mgas_core.space.topology import CellShape, network_cells


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


def network_specs(arch: Architecture, channels: int, layers: int, stem_channels: int,
                  first_reduction_prev: bool) -> Iterator[tuple[CellShape, CellSpecs]]:
    """Every cell's shape and module specs; a cell's inputs are its predecessors' real outputs."""
    cells = arch.cells_for(layers)
    shapes = network_cells(channels, layers, 4, stem_channels, first_reduction_prev, [len(c.concat) for c in cells])
    c_pp, c_p = stem_channels, stem_channels
    for shape, cell in zip(shapes, cells):
        try:
            specs = cell_specs(cell, c_pp, c_p, shape.channels, shape.reduction, shape.reduction_prev, arch.style)
        except ValueError as exc:
            raise ArchitectureError(f"cell {shape.index} of {arch.name!r}: {exc}") from exc
        yield shape, specs
        c_pp, c_p = c_p, specs.plan.output_width()


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


class EvalNetwork(nn.Module):
    """DARTS evaluation network (``variant`` ``cifar`` or ``imagenet``) for an architecture."""

    def __init__(
        self,
        arch: Architecture,
        channels: int,
        layers: int,
        num_classes: int,
        in_channels: int = 3,
        auxiliary: bool = True,
        variant: str = "cifar",
    ) -> None:
        super().__init__()
        if variant not in ("cifar", "imagenet"):
            raise ValueError(f"variant must be 'cifar' or 'imagenet', got {variant!r}")
        if arch.channels is not None and not arch.is_genotype and channels != arch.channels:
            raise ArchitectureError(f"architecture {arch.name!r} was derived at {arch.channels} channels; "
                                    f"it cannot be built with {channels}")
        if channels % 2:
            raise ArchitectureError(f"channels must be even (FactorizedReduce halves them), got {channels}")
        self.arch_name = arch.name
        self.channels = channels
        self.layers = layers
        self.variant = variant
        self.drop_path_prob = 0.0
        cells = arch.cells_for(layers)
        self.stem = Stem(in_channels, channels, variant)
        self.cells = nn.ModuleList()
        self.aux_position = 2 * layers // 3
        c_p = c_aux = self.stem.out_channels
        for shape, specs in network_specs(arch, channels, layers, self.stem.out_channels,
                                          self.stem.reduces_first_input):
            try:
                built = EvalCell(specs, shape.channels, shape.reduction, cells[shape.index])
            except ValueError as exc:
                raise ArchitectureError(f"cell {shape.index} of {arch.name!r}: {exc}") from exc
            self.cells.append(built)
            c_p = built.out_channels
            if shape.index == self.aux_position:
                c_aux = c_p
        self.auxiliary_head = AuxiliaryHead(c_aux, num_classes, variant == "imagenet") if auxiliary else None
        self.classifier = nn.Linear(c_p, num_classes)
        if arch.masks:
            apply_weight_masks(self, arch.masks)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s0, s1 = self.stem(x)
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = F.adaptive_avg_pool2d(s1, 1).flatten(1)
        return self.classifier(out), logits_aux


def check_weight_masks(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, MaskableConv2d]:
    """The maskable conv each mask belongs to; a mask that names no such conv, has another shape
    than its weight or holds values other than 0 and 1 is an :class:`ArchitectureError`."""
    convs = {}
    for key, mask in masks.items():
        try:
            conv = model.get_submodule(key)
        except AttributeError as exc:
            raise ArchitectureError(f"weight mask {key!r} names no module of the network") from exc
        if not isinstance(conv, MaskableConv2d):
            raise ArchitectureError(f"weight mask {key!r} names a {type(conv).__name__}, not a maskable conv")
        if tuple(mask.shape) != tuple(conv.weight.shape):
            raise ArchitectureError(f"weight mask {key!r} has shape {tuple(mask.shape)}, its conv weight "
                                    f"{tuple(conv.weight.shape)}")
        if mask.dtype.is_complex or not bool(((mask == 0) | (mask == 1)).all()):
            raise ArchitectureError(f"weight mask {key!r} must hold only 0 and 1")
        convs[key] = conv
    return convs


def apply_weight_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Attach fixed weight masks (keys are module paths of :class:`MaskableConv2d` convs)."""
    for key, conv in check_weight_masks(model, masks).items():
        conv.set_fixed_mask(masks[key])


def build_eval_network(
    arch: Architecture,
    num_classes: int,
    in_channels: int = 3,
    channels: int | None = None,
    layers: int | None = None,
    auxiliary: bool = True,
    variant: str = "cifar",
) -> EvalNetwork:
    """Build ``arch``; per-cell architectures default to (and require) their own width/depth."""
    if not arch.is_genotype:
        channels = arch.channels if channels is None else channels
        layers = len(arch.cells or []) if layers is None else layers
    if channels is None or layers is None:
        raise ArchitectureError(f"architecture {arch.name!r} is a genotype: give channels and layers")
    return EvalNetwork(arch, channels, layers, num_classes, in_channels, auxiliary, variant)


def count_architecture_params(arch: Architecture, num_classes: int, in_channels: int = 3,
                              variant: str = "cifar", channels: int | None = None,
                              layers: int | None = None) -> ParamCount:
    """What ``count_params(build_eval_network(arch, ..., auxiliary=False))`` gives, without
    building the network: the same module specs, each module's size counted once on the meta
    device and cached; the weights fixed masks remove are counted from the masks (MGAS asks this
    at every mask epoch, once per op it prunes)."""
    if not arch.is_genotype:
        channels = arch.channels if channels is None else channels
        layers = len(arch.cells or []) if layers is None else layers
    if channels is None or layers is None:
        raise ArchitectureError(f"architecture {arch.name!r} is a genotype: give channels and layers")
    stem_c, first_reduction_prev, stem_params = _stem_facts(in_channels, channels, variant)
    dense, last = stem_params, stem_c
    for _, specs in network_specs(arch, channels, layers, stem_c, first_reduction_prev):
        dense += sum(m.params() for m in specs.modules)
        last = specs.plan.output_width()
    dense += last * num_classes + num_classes
    return _masked(dense, arch.masks)


def masked_count(net: nn.Module, masks: dict[str, Tensor] | None) -> ParamCount:
    """Dense and nonzero parameters of ``net`` (masks not attached) under the weight ``masks``."""
    return _masked(count_params(net).dense, masks)


def _masked(dense: int, masks: dict[str, Tensor] | None) -> ParamCount:
    removed = sum(int((mask == 0).sum()) for mask in (masks or {}).values())
    return ParamCount(dense=dense, nonzero=dense - removed)


@lru_cache(maxsize=64)
def _stem_facts(in_channels: int, channels: int, variant: str) -> tuple[int, bool, int]:
    with torch.device("meta"):
        stem = Stem(in_channels, channels, variant)
    return stem.out_channels, stem.reduces_first_input, sum(p.numel() for p in stem.parameters())
