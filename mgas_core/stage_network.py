"""The evaluation network of an H-DAS stage-level architecture (cells connected by a DAG per stage).

Structure as the official H-DAS code's ``AugmentStage`` (``msight-tech/research-hdas``,
``models/augment_stage.py``, ``models/get_dag.py``): a stem conv to the stage width ``W = m x C``
(``m`` the nodes a cell concatenates; H-DAS's stem multiplier 4 with 4-node cells) -> per stage:
two 1x1 ReLU-conv-BN pre-processings of the stage input (states 0 and 1), then each cell ``k``
(state ``k + 2``) reads the sum of its edges (parameter-free ops on earlier states, drop-path on
every op but the identity) as both of its inputs; the stage output is the concatenation of its
``concat`` states -> a reduction cell (reading the stage output as both inputs) -> the next stage
at twice the width. The auxiliary head follows the last reduction cell; global pool + linear.
Cells are this project's evaluation cells (:class:`~mgas_core.evaluation_cells.EvalCell`), so a
DARTS, MSG-DAS or H-DAS cell builds the same modules as in the DARTS network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.evaluation_cells import AuxiliaryHead, EvalCell, cell_specs, drop_path
from mgas_core.nn.ops import Identity, ReLUConvBN, build_op
from mgas_core.nn.stem import Stem
from mgas_core.space.architecture import Architecture, ArchitectureError, CellArch
from mgas_core.space.stages import StageArch


class StageDag(nn.Module):
    """One stage: pre-processing of its input, the edges into each cell, the cells, the concat."""

    def __init__(self, stage: StageArch, cells: list[CellArch], c_in: int, channels: int, arch: Architecture) -> None:
        super().__init__()
        assert stage.edges is not None and stage.concat is not None
        multiplier = len(cells[0].concat)
        self.width = multiplier * channels
        affine = arch.style.bn_affine
        self.preprocess0 = ReLUConvBN(c_in, self.width, affine)
        self.preprocess1 = ReLUConvBN(c_in, self.width, affine)
        self.edges = nn.ModuleList(
            nn.ModuleList(build_op(op, self.width, 1, arch.style.op_style) for op, _ in node) for node in stage.edges
        )
        self.sources = [[src for _, src in node] for node in stage.edges]
        self.cells = nn.ModuleList()
        for cell in cells:
            specs = cell_specs(cell, self.width, self.width, channels, False, False, arch.style)
            self.cells.append(EvalCell(specs, channels, False, cell))
        self.concat = list(stage.concat)

    @property
    def out_channels(self) -> int:
        return len(self.concat) * self.width

    def forward(self, x: Tensor, drop_prob: float) -> Tensor:
        states = [self.preprocess0(x), self.preprocess1(x)]
        for edges, sources, cell in zip(self.edges, self.sources, self.cells):
            acc: Tensor | None = None
            for op, src in zip(edges, sources):
                h = op(states[src])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                acc = h if acc is None else acc + h
            assert acc is not None, "validated stages give every cell an input"
            states.append(cell(acc, acc, drop_prob))
        return torch.cat([states[i] for i in self.concat], dim=1)


class StageDagNetwork(nn.Module):
    """H-DAS's evaluation network of ``arch`` (which has DAG stages) at ``channels``; same forward
    contract as :class:`~mgas_core.evaluation_network.EvalNetwork` (logits, auxiliary logits)."""

    def __init__(self, arch: Architecture, channels: int, num_classes: int, in_channels: int = 3,
                 auxiliary: bool = True, variant: str = "cifar") -> None:
        super().__init__()
        if not arch.has_dag_stages or arch.stages is None:
            raise ArchitectureError(f"architecture {arch.name!r} has no stage-level DAG")
        if variant != "cifar":
            raise ArchitectureError(f"a stage-level DAG builds the CIFAR-style network (H-DAS's CIFAR and "
                                    f"ImageNet transfer use it on 32x32 inputs); data variant {variant!r} is not "
                                    "supported; allowed: cifar")
        if arch.channels is not None and channels != arch.channels:
            raise ArchitectureError(f"architecture {arch.name!r} was derived at {arch.channels} channels; "
                                    f"it cannot be built with {channels}")
        if channels % 2:
            raise ArchitectureError(f"channels must be even (FactorizedReduce halves them), got {channels}")
        layers = arch.layers
        assert layers is not None
        cells = arch.cells_for(layers)
        reductions = arch.reductions(layers)
        self.arch_name = arch.name
        self.channels, self.layers, self.variant = channels, layers, variant
        self.drop_path_prob = 0.0
        self.stem = Stem(in_channels, channels, variant, multiplier=len(cells[0].concat))
        self.stages = nn.ModuleList()
        self.reduction_cells = nn.ModuleList()
        c_in, width, start = self.stem.out_channels, channels, 0
        c_aux = c_in
        for s, stage in enumerate(arch.stages):
            dag = StageDag(stage, cells[start:start + stage.cells], c_in, width, arch)
            self.stages.append(dag)
            c_in = dag.out_channels
            if s < len(arch.stages) - 1:
                index = reductions[s]
                width *= 2
                specs = cell_specs(cells[index], c_in, c_in, width, True, False, arch.style)
                cell = EvalCell(specs, width, True, cells[index])
                self.reduction_cells.append(cell)
                c_in = c_aux = cell.out_channels
                start = index + 1
        self.auxiliary_head = AuxiliaryHead(c_aux, num_classes, False) if auxiliary else None
        self.classifier = nn.Linear(self.stages[-1].out_channels, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s, _ = self.stem(x)
        logits_aux = None
        for i, stage in enumerate(self.stages):
            s = stage(s, self.drop_path_prob)
            if i < len(self.reduction_cells):
                s = self.reduction_cells[i](s, s, self.drop_path_prob)
                if i == len(self.reduction_cells) - 1 and self.auxiliary_head is not None and self.training:
                    logits_aux = self.auxiliary_head(s)
        out = F.adaptive_avg_pool2d(s, 1).flatten(1)
        return self.classifier(out), logits_aux
