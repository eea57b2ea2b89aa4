"""Per-cell op scores shared by GOLD-NAS and MGAS: one alpha per (cell, edge, op), sigmoid
weights (no softmax competition), and the alive mask of permanently pruned ops."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PerCellAlphaModel(nn.Module):
    """Supernet + independent alphas for every cell + the alive mask of pruned ops."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        layers, edges, ops = len(net.cells), net.topology.num_edges, len(net.primitives)
        self.alpha = nn.Parameter(torch.zeros(layers, edges, ops))
        self.register_buffer("alive", torch.ones(layers, edges, ops, dtype=torch.bool))
        self._active: list[list[list[int]]] | None = None

    def refresh_active(self) -> None:
        self._active = [[torch.nonzero(row).flatten().tolist() for row in cell] for cell in self.alive]

    @property
    def active(self) -> list[list[list[int]]]:
        if self._active is None:
            self.refresh_active()
        assert self._active is not None
        return self._active

    def cell_weights(self) -> Tensor:
        return torch.sigmoid(self.alpha) * self.alive.to(self.alpha.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x, list(self.cell_weights().unbind(0)), self.active)
