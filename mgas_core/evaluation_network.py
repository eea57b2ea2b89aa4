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
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.evaluation_cells import AuxiliaryHead, CellSpecs, EvalCell, cell_specs
from mgas_core.metrics import ParamCount, count_params
from mgas_core.nn.maskable_conv import MaskableConv2d
from mgas_core.nn.stem import Stem
from mgas_core.space.architecture import Architecture, ArchitectureError
from mgas_core.space.topology import CellShape, network_cells
from mgas_core.stage_network import StageDagNetwork


def network_specs(arch: Architecture, channels: int, layers: int, stem_channels: int,
                  first_reduction_prev: bool) -> Iterator[tuple[CellShape, CellSpecs]]:
    """Every cell's shape and module specs; a cell's inputs are its predecessors' real outputs."""
    cells = arch.cells_for(layers)
    shapes = network_cells(channels, layers, 4, stem_channels, first_reduction_prev, [len(c.concat) for c in cells],
                           arch.reductions(layers))
    c_pp, c_p = stem_channels, stem_channels
    for shape, cell in zip(shapes, cells):
        try:
            specs = cell_specs(cell, c_pp, c_p, shape.channels, shape.reduction, shape.reduction_prev, arch.style)
        except ValueError as exc:
            raise ArchitectureError(f"cell {shape.index} of {arch.name!r}: {exc}") from exc
        yield shape, specs
        c_pp, c_p = c_p, specs.plan.output_width()


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
        # after the second reduction cell: 2L//3 in DARTS's layout, the last reduction of a staged one
        self.aux_position = max(arch.reductions(layers)) if arch.stages is not None else 2 * layers // 3
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


def own_shape(arch: Architecture, channels: int | None, layers: int | None) -> tuple[int, int]:
    """(channels, layers) a network of ``arch`` builds at: a per-cell architecture's own depth
    (and its own width where it records one), a stage-level architecture's own depth, else the
    given ones."""
    if not arch.is_genotype:
        channels = arch.channels if channels is None else channels
        layers = len(arch.cells or []) if layers is None else layers
    elif arch.stages is not None:
        layers = arch.layers if layers is None else layers
    if channels is None or layers is None:
        what = "a genotype" if arch.is_genotype else "width-free (no 'channels')"
        raise ArchitectureError(f"architecture {arch.name!r} is {what}: give channels and layers")
    return channels, layers


def build_eval_network(
    arch: Architecture,
    num_classes: int,
    in_channels: int = 3,
    channels: int | None = None,
    layers: int | None = None,
    auxiliary: bool = True,
    variant: str = "cifar",
) -> nn.Module:
    """Build ``arch``: the DARTS-style network (:class:`EvalNetwork`), or H-DAS's
    (:class:`~mgas_core.stage_network.StageDagNetwork`) for stage-level DAGs. Per-cell and staged
    architectures default to (and require) their own depth."""
    channels, layers = own_shape(arch, channels, layers)
    if arch.has_dag_stages:
        arch.reductions(layers)  # the depth must be the stages' own
        return StageDagNetwork(arch, channels, num_classes, in_channels, auxiliary, variant)
    return EvalNetwork(arch, channels, layers, num_classes, in_channels, auxiliary, variant)


def count_architecture_params(arch: Architecture, num_classes: int, in_channels: int = 3,
                              variant: str = "cifar", channels: int | None = None,
                              layers: int | None = None) -> ParamCount:
    """What ``count_params(build_eval_network(arch, ..., auxiliary=False))`` gives, without
    building the network: the same module specs, each module's size counted once on the meta
    device and cached; the weights fixed masks remove are counted from the masks (MGAS asks this
    at every mask epoch, once per op it prunes). A stage-level DAG is built on the meta device."""
    channels, layers = own_shape(arch, channels, layers)
    if arch.has_dag_stages:
        with torch.device("meta"):
            net = build_eval_network(arch, num_classes, in_channels, channels, layers, False, variant)
        return _masked(count_params(net).dense, arch.masks)
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
