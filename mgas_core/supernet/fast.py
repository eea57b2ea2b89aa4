"""The search supernet shared by every method: mixed edges, search cells, network, stage heads.

The supernet holds only weights; each method owns its architecture parameters and, per step,
hands the network one weight matrix per cell (``[edges, ops]``) plus the list of ops each edge
must compute (``active``). An op that is not active is not computed at all: the ``none`` op (its
output and its gradient are exactly zero), ops pruned by GOLD-NAS/MGAS, ops not sampled by
MSG-DAS. Each op's weight is folded into its final BN (see :mod:`mgas_core.nn.ops`) and
``relu(state)`` is computed once per state, not once per op.

Once MGAS removes filters, a cell's states keep only some channels; the cell then carries a
:class:`~mgas_core.space.channels.CellChannels` plan (``set_channels``) and adds each op's output into
its node at the op's channel positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mgas_core.nn.cpu_conv import dense_grad
from mgas_core.nn.ops import DARTS_SEARCH, FactorizedReduce, OpStyle, Pool, ReLUConvBN, build_op
from mgas_core.nn.stem import Stem
from mgas_core.space.channels import CellChannels
from mgas_core.space.topology import CellTopology, network_cells
from mgas_core.supernet.stage_heads import StageHead, remap_linear_in

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
            self._pools[key] = op.pooled(self.x)
        return self._pools[key]


class MixedEdge(nn.Module):
    """All candidate ops of one edge; computes ``sum_o w_o * op_o(x)`` over the active ops."""

    def __init__(self, primitives: Sequence[str], channels: int, stride: int, style: OpStyle = DARTS_SEARCH) -> None:
        super().__init__()
        self.ops = nn.ModuleList(build_op(p, channels, stride, style) for p in primitives)
        self.needs_relu = tuple(bool(op.needs_relu) for op in self.ops)

    def op_output(self, state: StateCache, weight: Tensor, i: int) -> Tensor:
        op = self.ops[i]
        if isinstance(op, Pool):
            return op.normalize(state.pooled(op), weight)
        return op(state.x, state.relu if self.needs_relu[i] else None, weight)

    def forward(self, state: StateCache | Tensor, weights: Sequence[Tensor], active: Sequence[int]) -> Tensor:
        if isinstance(state, Tensor):
            state = StateCache(state)
        out: Tensor | None = None
        for i in active:
            h = self.op_output(state, weights[i], i)
            out = h if out is None else out + h
        assert out is not None
        return out

    def placed(self, state: StateCache, weights: Sequence[Tensor], active: Sequence[int],
               acc: Tensor | None, positions: Sequence[Tensor | None], width: int) -> Tensor | None:
        """Add each active op's output into the node sum ``acc`` (``width`` channels) at its
        channel ``positions`` (None: the op writes exactly the node's channels)."""
        for i in active:
            h = self.op_output(state, weights[i], i)
            pos = positions[i]
            if pos is None:
                acc = h if acc is None else acc + h
                continue
            if acc is None:
                acc = h.new_zeros((h.shape[0], width, *h.shape[2:]))
            acc = acc.index_add(1, pos.to(h.device), h)
        return acc


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
        style: OpStyle = DARTS_SEARCH,
    ) -> None:
        super().__init__()
        self.topology = topology
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        self.channels = channels
        affine = style.affine
        self.preprocess0: nn.Module = (FactorizedReduce(c_prev_prev, channels, affine=affine) if reduction_prev
                                       else ReLUConvBN(c_prev_prev, channels, affine=affine))
        self.preprocess1: nn.Module = ReLUConvBN(c_prev, channels, affine=affine)
        self.edges = nn.ModuleList(
            MixedEdge(primitives, channels, self.edge_stride(e.index), style) for e in topology.edges
        )
        self.plan: CellChannels | None = None
        self._positions: list[list[Tensor | None]] | None = None

    def edge_stride(self, e: int) -> int:
        return 2 if self.reduction and self.topology.edges[e].source < 2 else 1

    def set_channels(self, plan: CellChannels | None, op_keys: Sequence[tuple[int, int]] = ()) -> None:
        """Use channel plan ``plan`` (None: every state has all channels); ``op_keys[k]`` is the
        (edge, op) of the plan's k-th op. Ops outside the plan must not be active."""
        if plan is None or plan.full:
            self.plan, self._positions = None, None
            return
        positions: list[list[Tensor | None]] = [[None] * len(edge.ops) for edge in self.edges]
        for (e, o), pos in zip(op_keys, plan.positions):
            positions[e][o] = pos
        self.plan, self._positions = plan, positions

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor, active: ActiveOps) -> Tensor:
        states = [StateCache(self.preprocess0(s0)), StateCache(self.preprocess1(s1))]
        rows = weights.unbind(0)
        for node, edge_slice in enumerate(self.topology.node_edges):
            acc: Tensor | None = None
            width = self.channels if self.plan is None else len(self.plan.states[node + 2])
            for e in range(edge_slice.start, edge_slice.stop):
                ops = active[e]
                if not ops:
                    continue
                src = self.topology.edges[e].source
                if self._positions is None:
                    h = self.edges[e](states[src], rows[e].unbind(0), ops)
                    acc = h if acc is None else acc + h
                else:
                    acc = self.edges[e].placed(states[src], rows[e].unbind(0), ops, acc, self._positions[e], width)
            if acc is None:  # every incoming op pruned: the node outputs zeros
                ref = states[1].x
                h, w = ref.shape[-2:]
                if self.reduction:
                    h, w = (h + 1) // 2, (w + 1) // 2
                acc = ref.new_zeros((ref.shape[0], width, h, w))
            states.append(StateCache(acc))
        # each node's gradient comes back dense (a channel slice of cat's is not, and CPU BN
        # backward on such a gradient takes a path ~4x slower than on a dense one)
        return torch.cat([dense_grad(s.x) for s in states[2:]], dim=1)


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
    """Stem -> ``layers`` search cells -> global pool + linear; optional stage heads after cells.

    ``exit_cells`` lists cell indices after which a convolutional stage head
    (:class:`~mgas_core.supernet.stage_heads.StageHead`) is attached, used by MGAS's multi-stage search;
    ``forward(..., upto=k)`` runs only cells ``0..k-1`` and classifies with the head after cell
    ``k-1`` (the main classifier when ``k == layers``). ``style`` is the ops' BN use.
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
        style: OpStyle = DARTS_SEARCH,
        image_size: int = 32,
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
        self.style = style
        self.cells = nn.ModuleList(
            SearchCell(self.topology, primitives, s.c_prev_prev, s.c_prev, s.channels, s.reduction, s.reduction_prev,
                       style)
            for s in self.shapes
        )
        self.classifier = nn.Linear(self.shapes[-1].out_channels, num_classes)
        self.checkpoint_cells = False
        resolutions = self.cell_resolutions(image_size)
        self.exit_heads = nn.ModuleDict(
            {str(i): StageHead(self.shapes[i].out_channels, num_classes, resolutions[i])
             for i in exit_cells if i != layers - 1}
        )

    def cell_resolutions(self, image_size: int) -> list[int]:
        """Output resolution of every cell for ``image_size`` inputs."""
        res, out = self.stem.resolution(image_size), []
        for s in self.shapes:
            if s.reduction:
                res = (res + 1) // 2
            out.append(res)
        return out

    def remap_cell_output(self, ci: int, source: Tensor, target: Tensor, width: int) -> None:
        """Cell ``ci``'s output channels changed: remap the inputs of what reads it (the next two
        cells' pre-processing, its stage head, the classifier)."""
        readers: list[nn.Module] = []
        if ci + 1 < self.layers:
            readers.append(self.cells[ci + 1].preprocess1)
        if ci + 2 < self.layers:
            readers.append(self.cells[ci + 2].preprocess0)
        if str(ci) in self.exit_heads:
            readers.append(self.exit_heads[str(ci)])
        for reader in readers:
            reader.remap_in(source, target, width)
        if ci == self.layers - 1:
            self.classifier = remap_linear_in(self.classifier, source, target, width)

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
        if upto < self.layers:
            return self.exit_heads[str(upto - 1)](s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
