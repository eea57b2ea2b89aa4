"""H-DAS's cell level (Hc-DAS): stage-specific cells on the DARTS supernet.

DARTS shares one normal and one reduction cell over the network; Hc-DAS relaxes that to one normal
cell per stage and one cell per reduction (official ``models/search_cellcnn.py``: ``normal1``,
``reduce1``, ``normal2``, ``reduce2``, ``normal3``), each with its own alpha matrix (edges x the 8
DARTS ops, softmax weights, init ``1e-3 * N(0, 1)``). Each is derived as DARTS derives a cell
(official ``parse_c``: per node the two strongest edges, each with its strongest op but ``none``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.space.architecture import CellArch
from mgas_core.space.genotype import derive_cell


def cell_groups(reductions: list[bool]) -> list[int]:
    """The alpha group of every cell: normal cells of stage ``s`` share group ``2s``, the reduction
    cell after stage ``s`` is group ``2s + 1``."""
    groups, stage = [], 0
    for reduction in reductions:
        if reduction:
            groups.append(2 * stage + 1)
            stage += 1
        else:
            groups.append(2 * stage)
    return groups


class StageCellModel(nn.Module):
    """A DARTS supernet plus one alpha matrix per stage's normal cell and per reduction cell."""

    def __init__(self, net: nn.Module, init_std: float) -> None:
        super().__init__()
        self.net = net
        self.groups = cell_groups(net.reduction_flags())
        num_edges, num_ops = net.topology.num_edges, len(net.primitives)
        self.alphas = nn.ParameterList(nn.Parameter(init_std * torch.randn(num_edges, num_ops))
                                       for _ in range(max(self.groups) + 1))
        live = [i for i, p in enumerate(net.primitives) if p != "none"]
        self.active = [[live] * num_edges for _ in self.groups]

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def cell_weights(self) -> list[Tensor]:
        weights = [F.softmax(a, dim=-1) for a in self.alphas]
        return [weights[g] for g in self.groups]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x, self.cell_weights(), self.active)

    def derive_cells(self) -> list[CellArch]:
        """One derived cell per group (normal of stage 1, reduction 1, normal of stage 2, ...)."""
        with torch.no_grad():
            cells = [derive_cell(F.softmax(a, dim=-1), self.net.primitives, self.net.topology) for a in self.alphas]
        for g, cell in enumerate(cells):
            cell.reduction = bool(g % 2)
        return cells
