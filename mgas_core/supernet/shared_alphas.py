"""Shared op scores of DARTS-style search: one alpha matrix for all normal cells and one for all
reduction cells (softmax weights over the ops of each edge), and the genotype they derive."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.space.architecture import Architecture
from mgas_core.space.genotype import derive_genotype


class SharedAlphaModel(nn.Module):
    """A supernet plus one alpha matrix for normal and one for reduction cells (softmax weights)."""

    def __init__(self, net: nn.Module, init_std: float) -> None:
        super().__init__()
        self.net = net
        num_edges, num_ops = net.topology.num_edges, len(net.primitives)
        self.alpha_normal = nn.Parameter(init_std * torch.randn(num_edges, num_ops))
        self.alpha_reduce = nn.Parameter(init_std * torch.randn(num_edges, num_ops))
        self.reductions = net.reduction_flags()
        live = [i for i, p in enumerate(net.primitives) if p != "none"]
        self.active = [[live] * num_edges for _ in self.reductions]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def cell_weights(self, alphas: tuple[Tensor, Tensor] | None = None) -> list[Tensor]:
        a_n, a_r = alphas if alphas is not None else (self.alpha_normal, self.alpha_reduce)
        w_n, w_r = F.softmax(a_n, dim=-1), F.softmax(a_r, dim=-1)
        return [w_r if red else w_n for red in self.reductions]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x, self.cell_weights(), self.active)

    def derive(self, name: str) -> Architecture:
        """The genotype the alphas stand for: per node the two strongest inputs, each with its
        strongest op other than ``none`` (DARTS's rule, :func:`~mgas_core.space.genotype.derive_genotype`)."""
        with torch.no_grad():
            w_n, w_r = F.softmax(self.alpha_normal, -1), F.softmax(self.alpha_reduce, -1)
        return derive_genotype(w_n, w_r, tuple(self.net.primitives), self.net.topology, name=name)
