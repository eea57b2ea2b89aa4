"""Derivation of a DARTS-style genotype (2 inputs per node, one op per input) from edge weights, and
the removal of ops a pruned cell no longer reaches."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mgas_core.space.architecture import Architecture, ArchitectureError, CellArch, OpSpec
from mgas_core.space.topology import CellTopology


def derive_cell(weights: Tensor, primitives: Sequence[str], topology: CellTopology) -> CellArch:
    """Per node keep the 2 incoming edges with the largest non-``none`` weight, each with its
    argmax non-``none`` op (ties go to the earlier edge / op, as in the official code)."""
    w = weights.detach().cpu().tolist()
    candidates = [i for i, p in enumerate(primitives) if p != "none"]
    ops: list[OpSpec] = []
    for node, edge_slice in enumerate(topology.node_edges):
        edges = list(range(edge_slice.start, edge_slice.stop))
        strength = {e: max(w[e][k] for k in candidates) for e in edges}
        best_edges = sorted(edges, key=lambda e: -strength[e])[:2]
        for e in best_edges:
            best = max(candidates, key=lambda k: (w[e][k], -k))
            ops.append(OpSpec(primitives[best], topology.edges[e].source, node))
    return CellArch(ops, list(topology.output_states))


def derive_genotype(
    normal: Tensor, reduce: Tensor, primitives: Sequence[str], topology: CellTopology, name: str
) -> Architecture:
    return Architecture(
        name=name,
        nodes=topology.nodes,
        normal=derive_cell(normal, primitives, topology),
        reduce=derive_cell(reduce, primitives, topology),
    )


def prune_dead_ops(ops: list[OpSpec]) -> tuple[list[OpSpec], list[int]]:
    """Drop ops that read from nodes without inputs (repeatedly); return live ops and concat."""
    ops = list(ops)
    while True:
        live = {o.node + 2 for o in ops}
        kept = [o for o in ops if o.input < 2 or o.input in live]
        if len(kept) == len(ops):
            break
        ops = kept
    concat = sorted({o.node + 2 for o in ops})
    if not concat:
        raise ArchitectureError("every operation of a cell was pruned; the cell has no output")
    return ops, concat
