"""A fixed-length encoding of an architecture for the latency predictor.

For a space of at most ``layers`` cells of ``nodes`` intermediate nodes and the primitives ``P``,
the vector holds, per cell, per edge and per op, three numbers: 1 when the op is there, the
fraction of the cell's width its output keeps, and the fraction of the width its middle (a
SepConv's inner channels) keeps; then per cell the kept fraction of each pre-processing conv and
whether it reduces; then the network's shape (log2 of the initial width, the number of cells).
A genotype is encoded cell by cell (its normal cell where the network has a normal cell, its
reduction cell at the reductions), so every kind of architecture shares one encoding.

The same numbers can be read off a supernet's distribution (an op's probability instead of its
presence, the expected kept fractions), which is what makes the predictor usable as a
differentiable cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mgas_core.space.architecture import Architecture
from mgas_core.space.topology import CellTopology, reduction_cells

OP_FEATURES = 3  # present, kept output fraction, kept middle fraction
CELL_FEATURES = 3  # pre-processing 0 and 1 kept fractions, reduction
SHAPE_FEATURES = 2  # log2 initial width, cells


@dataclass(frozen=True)
class EncodingSpace:
    """What the encoding can describe: up to ``layers`` cells of ``nodes`` nodes over ``primitives``."""

    layers: int
    nodes: int
    primitives: tuple[str, ...]

    @property
    def edges(self) -> int:
        return CellTopology(self.nodes).num_edges

    @property
    def size(self) -> int:
        per_cell = self.edges * len(self.primitives) * OP_FEATURES + CELL_FEATURES
        return self.layers * per_cell + SHAPE_FEATURES

    def as_dict(self) -> dict[str, object]:
        return {"layers": self.layers, "nodes": self.nodes, "primitives": list(self.primitives)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EncodingSpace:
        return cls(int(data["layers"]), int(data["nodes"]), tuple(data["primitives"]))  # type: ignore[arg-type]

    def problem(self, arch: Architecture, layers: int) -> str | None:
        """Why ``arch`` built with ``layers`` cells is outside this encoding (one line), or None."""
        if layers > self.layers:
            return f"{layers} cells, the predictor's space has at most {self.layers}"
        if arch.nodes != self.nodes:
            return f"{arch.nodes} nodes per cell, the predictor's space has {self.nodes}"
        unknown = sorted({o.op for c in arch.cells_for(layers) for o in c.ops} - set(self.primitives))
        if unknown:
            return f"ops {', '.join(unknown)} are not among the predictor's {', '.join(self.primitives)}"
        return None


def _fraction(ids: object, width: int) -> float:
    return len(ids) / width if isinstance(ids, list | tuple) else 1.0


def assemble(ops: Tensor, cells: Tensor, channels: int, layers: int) -> Tensor:
    """The vector from its parts: ``ops`` [space layers, edges, ops, 3] and ``cells`` [space layers,
    3] (rows past ``layers`` zero), then the shape. Differentiable in ``ops`` and ``cells``."""
    shape = torch.tensor([math.log2(channels), float(layers)], dtype=ops.dtype, device=ops.device)
    return torch.cat([torch.cat([ops.flatten(1), cells], dim=1).flatten(), shape])


def cell_rows(space: EncodingSpace, layers: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``cells`` part of a full-width network: both pre-processing convs whole, the reductions flagged."""
    cells = torch.zeros(space.layers, CELL_FEATURES, dtype=dtype)
    cells[:layers, :2] = 1.0
    for i in reduction_cells(layers):
        cells[i, 2] = 1.0
    return cells


def encode(arch: Architecture, space: EncodingSpace, channels: int, layers: int) -> Tensor:
    """The encoding of ``arch`` built at ``channels`` x ``layers`` (float32, ``space.size``)."""
    problem = space.problem(arch, layers)
    if problem:
        raise ValueError(f"architecture {arch.name!r} cannot be encoded: {problem}")
    topology = CellTopology(space.nodes)
    edge_of = {(e.source, e.node): e.index for e in topology.edges}
    op_index = {p: i for i, p in enumerate(space.primitives)}
    ops = torch.zeros(space.layers, space.edges, len(space.primitives), OP_FEATURES)
    cells = cell_rows(space, layers)
    reductions = set(reduction_cells(layers))
    width = channels
    for i, cell in enumerate(arch.cells_for(layers)):
        width *= 2 if i in reductions else 1
        for spec in cell.ops:
            e, o = edge_of[(spec.input, spec.node)], op_index[spec.op]
            widths = spec.widths or {}
            ops[i, e, o, 0] = 1.0
            ops[i, e, o, 1] = _fraction(widths.get("out"), width)
            mid = widths.get("mid")
            ops[i, e, o, 2] = mid / width if isinstance(mid, int) else 1.0
        for k, pre in enumerate(cell.preprocess):
            cells[i, k] = _fraction((pre or {}).get("out"), width)
    return assemble(ops, cells, channels, layers)
