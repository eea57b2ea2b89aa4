"""Which channels of each cell state exist: the bookkeeping behind real filter removal.

Every channel of a cell lives in the cell's channel space ``0 .. C-1``. A state (the two
pre-processed inputs and every intermediate node) keeps a sorted subset of it:

* an input state keeps the output filters its pre-processing conv kept;
* a conv op (SepConv, DilConv, FactorizedReduce) writes the output filters it kept;
* an identity or pool op writes exactly the channels of the state it reads;
* a node keeps the union of what its ops write (a channel no op writes is gone).

The cell output concatenates the nodes' channels, so the next cells' pre-processing convs read
only channels that exist. The search supernet (after MGAS removes filters) and the evaluation
network built from a derived architecture use the same rule (:func:`plan_cell`), which is why the
retrained network is exactly the narrowed supernet: no weight reads a channel that is always zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

ChannelIds = tuple[int, ...]


@dataclass(frozen=True)
class OpChannels:
    """One op of a cell: reads state ``source``, writes node ``node``; ``out`` None = its input's."""

    source: int
    node: int
    out: ChannelIds | None


@dataclass(frozen=True)
class CellChannels:
    """The channels of every state of a cell and where each op's output goes in its node."""

    states: tuple[ChannelIds, ...]
    """Per state (inputs 0, 1, then the nodes): the kept channel ids, sorted."""
    op_out: tuple[ChannelIds, ...]
    """Per op (in the order given to :func:`plan_cell`): the channel ids it writes."""
    positions: tuple[Tensor | None, ...]
    """Per op: positions of its channels inside its node's channels (None: the same list)."""
    concat: tuple[int, ...]
    channels: int

    @property
    def full(self) -> bool:
        """True when nothing was removed: every state has all ``channels`` channels and every op
        writes all of its node's (a node can keep every channel while one of its ops lost some:
        that op's output is then placed, not summed as it is)."""
        return all(len(s) == self.channels for s in self.states) and all(p is None for p in self.positions)

    def output_ids(self) -> list[int]:
        """The cell output's channels, as ids into the concatenation of full-width nodes."""
        return [k * self.channels + c for k, state in enumerate(self.concat) for c in self.states[state]]

    def output_width(self) -> int:
        return sum(len(self.states[s]) for s in self.concat)


def positions_of(ids: Sequence[int], within: Sequence[int]) -> Tensor | None:
    """Positions of ``ids`` inside ``within`` (both sorted); None when they are the same list."""
    if tuple(ids) == tuple(within):
        return None
    where = {c: i for i, c in enumerate(within)}
    missing = [c for c in ids if c not in where]
    if missing:
        raise ValueError(f"channels {missing} are not among {list(within)}")
    return torch.tensor([where[c] for c in ids], dtype=torch.long)


def plan_cell(channels: int, inputs: Sequence[ChannelIds | None], ops: Sequence[OpChannels],
              nodes: int, concat: Sequence[int] | None = None) -> CellChannels:
    """The channel plan of a cell from its inputs' kept channels and its ops' outputs.

    ``inputs[j]`` None means all channels. Nodes are planned in order, so an identity or pool
    reading an earlier node inherits that node's channels.
    """
    full = tuple(range(channels))
    states: list[ChannelIds] = [tuple(sorted(x)) if x is not None else full for x in inputs]
    op_out: list[ChannelIds | None] = [None] * len(ops)
    for node in range(nodes):
        members = [k for k, op in enumerate(ops) if op.node == node]
        union: set[int] = set()
        for k in members:
            op = ops[k]
            if op.source >= len(states):
                raise ValueError(f"an op of node {node} reads state {op.source}, which comes later")
            out = states[op.source] if op.out is None else tuple(sorted(op.out))
            op_out[k] = out
            union.update(out)
        states.append(tuple(sorted(union)))
    positions = tuple(positions_of(op_out[k] or (), states[op.node + 2]) for k, op in enumerate(ops))
    cat = tuple(concat) if concat is not None else tuple(range(2, 2 + nodes))
    return CellChannels(tuple(states), tuple(o or () for o in op_out), positions, cat, channels)


def keep_positions(old: Sequence[int], new: Sequence[int]) -> tuple[Tensor, Tensor]:
    """How a consumer's input columns change from channel list ``old`` to ``new``.

    Returns ``(source, target)``: column ``source[i]`` of the old input becomes column
    ``target[i]`` of the new one; new columns not listed are new channels (the consumer gives them
    fresh weights: zero for dense convs, so its output is unchanged).
    """
    where = {c: i for i, c in enumerate(old)}
    pairs = [(where[c], j) for j, c in enumerate(new) if c in where]
    src = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    dst = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return src, dst
