"""The search supernet shared by every method: mixed edges, search cells, network, stage heads.

The supernet holds only weights; each method owns its architecture parameters and, per step,
hands the network one weight matrix per cell (``[edges, ops]``) plus the list of ops each edge
must compute (``active``). An op that is not active is not computed at all: the ``none`` op (its
output and its gradient are exactly zero), ops pruned by GOLD-NAS/MGAS, ops not sampled by
MSG-DAS. Each op's weight is folded into its final affine-free BN (see :mod:`mgas_core.ops`) and
``relu(state)`` is computed once per state, not once per op.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mgas_core.ops import FactorizedReduce, Pool, ReLUConvBN, build_op
from mgas_core.space import CellTopology, network_cells
from mgas_core.stem import Stem

ActiveOps = Sequence[Sequence[int]]
"""Per edge, the op indices to compute."""


class StateCache:
    """What every op reading one state can share: ``relu(x)`` and the pooled maps.

    A cell computes each of these once per state instead of once per edge: the official code
    applies the same parameter-free ReLU/pool to the same input on every edge leaving the state.
    """

    __slots__ = ("_pools", "_relu", "x")

    def __init__(self, x: Tensor) -> None:
        self.x = x
        self._relu: Tensor | None = None
        self._pools: dict[tuple[str, int], Tensor] = {}

    @property
    def relu(self) -> Tensor:
        if self._relu is None:
            self._relu = F.relu(self.x)
        return self._relu

    def pooled(self, op: Pool) -> Tensor:
        key = (op.kind, op.stride)
        if key not in self._pools:
            self._pools[key] = op.pool(self.x)
        return self._pools[key]


class MixedEdge(nn.Module):
    """All candidate ops of one edge; computes ``sum_o w_o * op_o(x)`` over the active ops."""

    def __init__(self, primitives: Sequence[str], channels: int, stride: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(build_op(p, channels, stride, search=True) for p in primitives)
        self.needs_relu = tuple(bool(op.needs_relu) for op in self.ops)

    def forward(self, state: StateCache | Tensor, weights: Sequence[Tensor], active: Sequence[int]) -> Tensor:
        if isinstance(state, Tensor):
            state = StateCache(state)
        out: Tensor | None = None
        for i in active:
            op = self.ops[i]
            if isinstance(op, Pool):
                h = op.normalize(state.pooled(op), weights[i])
            else:
                h = op(state.x, state.relu if self.needs_relu[i] else None, weights[i])
            out = h if out is None else out + h
        assert out is not None
        return out


class SearchCell(nn.Module):
    def __init__(
        self,
        topology: CellTopology,
        primitives: Sequence[str],
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.topology = topology
        self.reduction = reduction
        self.channels = channels
        self.preprocess0: nn.Module = (FactorizedReduce(c_prev_prev, channels, affine=False) if reduction_prev
                                       else ReLUConvBN(c_prev_prev, channels, affine=False))
        self.preprocess1: nn.Module = ReLUConvBN(c_prev, channels, affine=False)
        self.edges = nn.ModuleList(
            MixedEdge(primitives, channels, 2 if reduction and e.source < 2 else 1) for e in topology.edges
        )

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor, active: ActiveOps) -> Tensor:
        states = [StateCache(self.preprocess0(s0)), StateCache(self.preprocess1(s1))]
        rows = weights.unbind(0)
        for edge_slice in self.topology.node_edges:
            acc: Tensor | None = None
            for e in range(edge_slice.start, edge_slice.stop):
                ops = active[e]
                if not ops:
                    continue
                src = self.topology.edges[e].source
                h = self.edges[e](states[src], rows[e].unbind(0), ops)
                acc = h if acc is None else acc + h
            if acc is None:  # every incoming op pruned: the node outputs zeros
                ref = states[1].x
                h, w = ref.shape[-2:]
                if self.reduction:
                    h, w = (h + 1) // 2, (w + 1) // 2
                acc = ref.new_zeros((ref.shape[0], self.channels, h, w))
            states.append(StateCache(acc))
        return torch.cat([s.x for s in states[2:]], dim=1)


def _frozen_bn_stats(module: nn.Module) -> AbstractContextManager[None]:
    """During a checkpointed cell's recomputation, BN must not update its running statistics a
    second time: momentum 0 keeps them unchanged while batch statistics are still used."""

    @contextmanager
    def ctx() -> Iterator[None]:
        bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
        saved = [bn.momentum for bn in bns]
        for bn in bns:
            bn.momentum = 0.0
        try:
            yield
        finally:
            for bn, momentum in zip(bns, saved):
                bn.momentum = momentum

    return ctx()


class SuperNetwork(nn.Module):
    """Stem -> ``layers`` search cells -> global pool + linear; optional exit heads after cells.

    ``exit_cells`` lists cell indices after which a stage head (pool + linear) is attached, used by
    MGAS's multi-stage search; ``forward(..., upto=k)`` runs only cells ``0..k-1`` and classifies
    with the head after cell ``k-1`` (the main classifier when ``k == layers``).
    """

    def __init__(
        self,
        primitives: Sequence[str],
        channels: int,
        layers: int,
        num_classes: int,
        in_channels: int = 3,
        nodes: int = 4,
        stem_multiplier: int = 3,
        exit_cells: Sequence[int] = (),
        variant: str = "cifar",
    ) -> None:
        super().__init__()
        self.primitives = tuple(primitives)
        self.topology = CellTopology(nodes)
        self.layers = layers
        self.channels = channels
        self.num_classes = num_classes
        if stem_multiplier != 3:
            raise ValueError("the DARTS stem has 3C channels (stem_multiplier=3)")
        self.stem = Stem(in_channels, channels, variant)
        self.shapes = network_cells(channels, layers, nodes, self.stem.out_channels,
                                    self.stem.reduces_first_input)
        self.cells = nn.ModuleList(
            SearchCell(self.topology, primitives, s.c_prev_prev, s.c_prev, s.channels, s.reduction, s.reduction_prev)
            for s in self.shapes
        )
        self.classifier = nn.Linear(self.shapes[-1].out_channels, num_classes)
        self.checkpoint_cells = False
        self.exit_heads = nn.ModuleDict(
            {str(i): nn.Linear(self.shapes[i].out_channels, num_classes) for i in exit_cells if i != layers - 1}
        )

    @property
    def num_edges(self) -> int:
        return self.topology.num_edges

    def reduction_flags(self) -> list[bool]:
        return [s.reduction for s in self.shapes]

    def forward(
        self,
        x: Tensor,
        cell_weights: Sequence[Tensor],
        cell_active: Sequence[ActiveOps],
        upto: int | None = None,
    ) -> Tensor:
        upto = self.layers if upto is None else upto
        s0, s1 = self.stem(x)
        for i in range(upto):
            cell = self.cells[i]
            if self.checkpoint_cells and torch.is_grad_enabled():
                out = checkpoint(cell, s0, s1, cell_weights[i], cell_active[i], use_reentrant=False,
                                 context_fn=lambda cell=cell: (nullcontext(), _frozen_bn_stats(cell)))
            else:
                out = cell(s0, s1, cell_weights[i], cell_active[i])
            s0, s1 = s1, out
        out = F.adaptive_avg_pool2d(s1, 1).flatten(1)
        head = self.classifier if upto == self.layers else self.exit_heads[str(upto - 1)]
        return head(out)
