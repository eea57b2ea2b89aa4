"""The DARTS cell search space shared by every method: primitives, cell topology, network layout.

A cell has two input states (indices 0 and 1) and ``nodes`` intermediate nodes (indices 2 ..).
Node ``i`` (state index ``i + 2``) receives one edge from every earlier state, so edges are
ordered node by node: node 0 owns edges 0-1, node 1 owns edges 2-4, and so on. The explicit
:class:`CellTopology` is the only place that knows this numbering.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

DARTS_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""The 8 DARTS operations, in the official order (alpha columns follow it)."""

NO_NONE_PRIMITIVES: tuple[str, ...] = DARTS_PRIMITIVES[1:]
"""The 7 operations used by GOLD-NAS and MGAS (any number of them may survive per edge)."""

PRIMITIVE_SETS: dict[str, tuple[str, ...]] = {"darts": DARTS_PRIMITIVES, "no_none": NO_NONE_PRIMITIVES}


@dataclass(frozen=True)
class Edge:
    """One edge of a cell: from state ``source`` into intermediate node ``node`` (0-based)."""

    index: int
    source: int
    node: int

    @property
    def target_state(self) -> int:
        return self.node + 2


@dataclass(frozen=True)
class CellTopology:
    """Explicit edge list and node -> edge-slice map of a cell with ``nodes`` intermediate nodes."""

    nodes: int = 4

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        edges: list[Edge] = []
        for node in range(self.nodes):
            for source in range(node + 2):
                edges.append(Edge(index=len(edges), source=source, node=node))
        return tuple(edges)

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    @cached_property
    def node_edges(self) -> tuple[slice, ...]:
        """``node_edges[i]`` is the slice of edge indices entering intermediate node ``i``."""
        slices = []
        start = 0
        for node in range(self.nodes):
            slices.append(slice(start, start + node + 2))
            start += node + 2
        return tuple(slices)

    @cached_property
    def edges_from_state(self) -> tuple[tuple[int, ...], ...]:
        """Edge indices leaving each state (0 .. nodes + 1)."""
        out: list[list[int]] = [[] for _ in range(self.nodes + 2)]
        for edge in self.edges:
            out[edge.source].append(edge.index)
        return tuple(tuple(x) for x in out)

    def edge_index(self, source: int, node: int) -> int:
        if not 0 <= node < self.nodes or not 0 <= source < node + 2:
            raise ValueError(f"no edge from state {source} into node {node} in a {self.nodes}-node cell")
        return self.node_edges[node].start + source

    @property
    def output_states(self) -> tuple[int, ...]:
        """States concatenated into the cell output (all intermediate nodes)."""
        return tuple(range(2, self.nodes + 2))


def reduction_cells(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells of an ``layers``-cell network (at L//3 and 2L//3)."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    return tuple(sorted({layers // 3, 2 * layers // 3}))


@dataclass(frozen=True)
class CellShape:
    """Channel bookkeeping of one cell in a network."""

    index: int
    reduction: bool
    reduction_prev: bool
    c_prev_prev: int
    c_prev: int
    channels: int
    multiplier: int

    @property
    def out_channels(self) -> int:
        return self.multiplier * self.channels


def network_cells(
    channels: int,
    layers: int,
    multiplier: int,
    stem_channels: int,
    first_reduction_prev: bool = False,
    outputs_per_cell: list[int] | None = None,
    reductions: tuple[int, ...] | None = None,
) -> list[CellShape]:
    """Channel plan of the DARTS network: doubles C at each reduction cell.

    ``outputs_per_cell`` overrides the number of concatenated nodes of each cell (a derived
    architecture may concatenate fewer nodes than ``multiplier``); ``reductions`` the reduction
    cells (default L//3 and 2L//3; a stage-level architecture places its own).
    """
    reductions = set(reduction_cells(layers) if reductions is None else reductions)
    shapes = []
    c_pp, c_p, c_curr = stem_channels, stem_channels, channels
    reduction_prev = first_reduction_prev
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            c_curr *= 2
        mult = multiplier if outputs_per_cell is None else outputs_per_cell[i]
        shapes.append(CellShape(i, reduction, reduction_prev, c_pp, c_p, c_curr, mult))
        reduction_prev = reduction
        c_pp, c_p = c_p, mult * c_curr
    return shapes
