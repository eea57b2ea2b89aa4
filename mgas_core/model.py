"""The evaluation network built from an :class:`~mgas_core.arch.Architecture`.

Structure and parameter counts follow the official DARTS ``NetworkCIFAR`` / ``NetworkImageNet``
(auxiliary head after cell 2L//3, drop-path on non-identity ops, ImageNet stem of three stride-2
convs). Per-cell architectures (GOLD-NAS, MGAS) add per-op channel widths and fixed weight masks.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.arch import Architecture, ArchitectureError, CellArch
from mgas_core.maskable_conv import MaskableConv2d
from mgas_core.metrics import ParamCount, count_params
from mgas_core.ops import FactorizedReduce, Identity, ReLUConvBN, build_op
from mgas_core.space import network_cells
from mgas_core.stem import Stem


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (DARTS drop-path)."""
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    def __init__(
        self,
        cell: CellArch,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.channels = channels
        pre0, pre1 = cell.preprocess
        self.preprocess0: nn.Module | None = None
        if cell.uses_input(0):
            kept0 = (pre0 or {}).get("out")
            self.preprocess0 = (FactorizedReduce(c_prev_prev, channels, True, kept0) if reduction_prev
                                else ReLUConvBN(c_prev_prev, channels, True, kept0))
        self.preprocess1: nn.Module | None = None
        if cell.uses_input(1):
            self.preprocess1 = ReLUConvBN(c_prev, channels, True, (pre1 or {}).get("out"))
        for k, spec in enumerate(cell.ops):
            mid = (spec.widths or {}).get("mid")
            if isinstance(mid, int) and not 1 <= mid <= channels:
                raise ValueError(f"ops[{k}].widths.mid={mid} must be between 1 and the cell's {channels} channels")
        self.ops = nn.ModuleList()
        for spec in cell.ops:
            stride = 2 if reduction and spec.input < 2 else 1
            self.ops.append(build_op(spec.op, channels, stride, search=False, widths=spec.widths))
        self.inputs = [o.input for o in cell.ops]
        self.num_states = 2 + max(o.node + 1 for o in cell.ops)
        self.node_ops: list[list[int]] = [[] for _ in range(self.num_states)]
        for k, o in enumerate(cell.ops):
            self.node_ops[o.node + 2].append(k)
        self.concat = list(cell.concat)

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float) -> Tensor:
        states: list[Tensor | None] = [None] * self.num_states
        if self.preprocess0 is not None:
            states[0] = self.preprocess0(s0)
        if self.preprocess1 is not None:
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
                acc = h if acc is None else acc + h
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
        stem_c, first_reduction_prev = self.stem.out_channels, self.stem.reduces_first_input
        shapes = network_cells(channels, layers, 4, stem_c, first_reduction_prev, [len(c.concat) for c in cells])
        self.cells = nn.ModuleList()
        self.aux_position = 2 * layers // 3
        c_aux = shapes[-1].out_channels
        for shape, cell in zip(shapes, cells):
            try:
                self.cells.append(EvalCell(cell, shape.c_prev_prev, shape.c_prev, shape.channels,
                                           shape.reduction, shape.reduction_prev))
            except ValueError as exc:
                raise ArchitectureError(f"cell {shape.index} of {arch.name!r}: {exc}") from exc
            if shape.index == self.aux_position:
                c_aux = shape.out_channels
        self.auxiliary_head = AuxiliaryHead(c_aux, num_classes, variant == "imagenet") if auxiliary else None
        self.classifier = nn.Linear(shapes[-1].out_channels, num_classes)
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
    allocating or initialising a weight: the network is built on the meta device and the weights
    its fixed masks remove are counted from the masks (search loops ask this every few steps)."""
    with torch.device("meta"):
        net = build_eval_network(replace(arch, masks=None), num_classes, in_channels, channels, layers,
                                 auxiliary=False, variant=variant)
    return masked_count(net, arch.masks)


def masked_count(net: nn.Module, masks: dict[str, Tensor] | None) -> ParamCount:
    """Dense and nonzero parameters of ``net`` (masks not attached) under the weight ``masks``."""
    dense = count_params(net).dense
    removed = sum(int((mask == 0).sum()) for mask in (masks or {}).values())
    return ParamCount(dense=dense, nonzero=dense - removed)
