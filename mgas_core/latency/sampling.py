"""Random architectures of the search space, of every kind the methods derive, for timing.

A latency predictor is fitted to architectures drawn here (:func:`sample_architectures`), in the
proportions of :data:`KINDS`:

- ``genotype``: a DARTS-style genotype (DARTS, MSG-DAS): per intermediate node two distinct input
  states, one op each, a normal and a reduction cell, built at the retraining width and depth;
- ``cells``: per-cell multi-op cells at full width (GOLD-NAS): every op of every edge kept with a
  probability drawn per architecture, each node keeping at least one op;
- ``widths``: per-cell multi-op cells with filter widths (MGAS): as ``cells``, and every conv op
  keeps a fraction of its output channels and of its middle width, every pre-processing conv a
  fraction of its outputs, the fractions drawn from :data:`WIDTH_LEVELS`.

Widths are drawn from a few levels so that the lookup-table baseline
(:mod:`mgas_core.latency.lookup`) meets every op shape it has to sum more than once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mgas_core.nn.ops import OpWidths
from mgas_core.space.architecture import Architecture, CellArch, OpSpec
from mgas_core.space.topology import CellTopology, reduction_cells

KINDS = ("genotype", "cells", "widths")
WIDTH_LEVELS = (0.5, 0.75, 1.0)
CONV_PREFIXES = ("sep_conv", "dil_conv")


@dataclass(frozen=True)
class SampleShape:
    """Where sampled architectures are built: per-cell kinds at the search shape (their own width
    and depth), genotypes at the retraining shape."""

    nodes: int
    search_channels: int
    search_layers: int
    retrain_channels: int
    retrain_layers: int
    primitives: tuple[str, ...]

    def shape_of(self, kind: str) -> tuple[int, int]:
        """(channels, layers) an architecture of ``kind`` is built at."""
        if kind == "genotype":
            return self.retrain_channels, self.retrain_layers
        return self.search_channels, self.search_layers


def cell_widths(channels: int, layers: int) -> list[int]:
    """Each cell's width C_i of a network of ``layers`` cells (doubling at each reduction)."""
    reductions, width, out = set(reduction_cells(layers)), channels, []
    for i in range(layers):
        width *= 2 if i in reductions else 1
        out.append(width)
    return out


def _genotype_cell(rng: random.Random, shape: SampleShape) -> CellArch:
    ops = []
    for node in range(shape.nodes):
        for source in sorted(rng.sample(range(node + 2), 2)):
            ops.append(OpSpec(rng.choice(shape.primitives), source, node))
    return CellArch(ops, list(range(2, 2 + shape.nodes)))


def _kept(rng: random.Random, width: int) -> list[int]:
    """A random subset of ``width`` channel ids, of a size from :data:`WIDTH_LEVELS`."""
    count = max(1, round(rng.choice(WIDTH_LEVELS) * width))
    return sorted(rng.sample(range(width), count))


def _multi_op_cell(rng: random.Random, shape: SampleShape, width: int, keep: float, widths: bool) -> CellArch:
    topology = CellTopology(shape.nodes)
    ops: list[OpSpec] = []
    for node, edges in enumerate(topology.node_edges):
        candidates = [(topology.edges[e].source, op) for e in range(edges.start, edges.stop) for op in shape.primitives]
        chosen = [c for c in candidates if rng.random() < keep] or [rng.choice(candidates)]
        for source, op in chosen:
            spec: OpWidths | None = None
            if widths and op.startswith(CONV_PREFIXES):
                spec = {"out": _kept(rng, width)}
                if op.startswith("sep_conv"):
                    spec["mid"] = max(1, round(rng.choice(WIDTH_LEVELS) * width))
            ops.append(OpSpec(op, source, node, spec))
    preprocess: list[OpWidths | None] = [None, None]
    if widths:
        preprocess = [{"out": _kept(rng, width)}, {"out": _kept(rng, width)}]
    return CellArch(ops, list(range(2, 2 + shape.nodes)), preprocess=preprocess)


def sample_architecture(rng: random.Random, kind: str, shape: SampleShape, name: str) -> Architecture:
    """One random architecture of ``kind`` (:data:`KINDS`)."""
    if kind == "genotype":
        return Architecture(name, nodes=shape.nodes, normal=_genotype_cell(rng, shape),
                            reduce=_genotype_cell(rng, shape), meta={"sample_kind": kind})
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    channels, layers = shape.shape_of(kind)
    keep = rng.uniform(0.1, 0.6)
    cells = [_multi_op_cell(rng, shape, width, keep, kind == "widths") for width in cell_widths(channels, layers)]
    return Architecture(name, nodes=shape.nodes, cells=cells, channels=channels, layers=layers,
                        meta={"sample_kind": kind})


def sample_architectures(count: int, shape: SampleShape, seed: int,
                         kinds: Sequence[str] = KINDS) -> list[Architecture]:
    """``count`` architectures, the kinds in turn, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [sample_architecture(rng, kinds[i % len(kinds)], shape, f"sample{i}") for i in range(count)]
