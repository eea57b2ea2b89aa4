"""The stage-level part of an architecture: how many cells each stage has and how they connect.

A network of ``S`` stages has ``S - 1`` reduction cells, one between each two stages. A stage is
described by :class:`StageArch`:

* ``cells`` normal cells, chained as DARTS chains them (each cell reads the outputs of the two
  cells before it) when ``edges`` is None — per-stage depth is then the only stage-level choice
  (the network-level search's candidates, ``network_mo``);
* or a DAG of cells (H-DAS's stage level, Liu et al., AAAI 2021): the stage's input (the stem's or
  the previous reduction cell's output) is pre-processed twice into states 0 and 1; cell ``k`` is
  state ``k + 2`` and reads one input, the sum of its ``edges`` (each a parameter-free op —
  ``skip_connect``, ``max_pool_3x3`` or ``avg_pool_3x3`` — applied to an earlier state), given to
  both of its cell inputs; the stage's output is the concatenation of the ``concat`` states.

The module owns the description, its JSON form, its validation and the cell layout it implies;
:mod:`mgas_core.stage_network` builds the DAG form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mgas_common.errors import UserInputError
from mgas_core.settings.strict import MAX_LAYERS

STAGE_OPS: tuple[str, ...] = ("max_pool_3x3", "avg_pool_3x3", "skip_connect")
"""The parameter-free operations between cells (H-DAS's stage-level candidates, without ``none``)."""
MAX_STAGES = 8


class StageError(UserInputError):
    """A stage-level description that cannot be built."""


@dataclass
class StageArch:
    """One stage: ``cells`` normal cells, chained (``edges`` None) or connected by a DAG."""

    cells: int
    edges: list[list[tuple[str, int]]] | None = None
    concat: list[int] | None = None

    @property
    def is_dag(self) -> bool:
        return self.edges is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cells": self.cells}
        if self.edges is not None:
            out["edges"] = [[{"op": op, "input": src} for op, src in node] for node in self.edges]
            out["concat"] = list(self.concat or [])
        return out


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _EdgeFile(_FileModel):
    op: str = Field(max_length=64)
    input: int = Field(ge=0, le=MAX_LAYERS + 2)


class StageFile(_FileModel):
    cells: int = Field(ge=1, le=MAX_LAYERS)
    edges: list[list[_EdgeFile]] | None = Field(None, max_length=MAX_LAYERS)
    concat: list[int] | None = Field(None, min_length=1, max_length=MAX_LAYERS + 2)


def stage_from_file(raw: StageFile) -> StageArch:
    edges = [[(e.op, e.input) for e in node] for node in raw.edges] if raw.edges is not None else None
    return StageArch(raw.cells, edges, list(raw.concat) if raw.concat is not None else None)


def validate_stages(stages: list[StageArch]) -> None:
    """Every stage has at least one cell; DAG stages (all or none) have one edge list per cell, edges
    from earlier states with a stage-level op, and a concat of existing states."""
    if not stages:
        raise StageError("'stages' is empty")
    if len(stages) > MAX_STAGES:
        raise StageError(f"'stages' lists {len(stages)} stages; at most {MAX_STAGES}")
    kinds = {s.is_dag for s in stages}
    if len(kinds) > 1:
        raise StageError("either every stage has 'edges' (a DAG of cells) or none has (chained cells)")
    for i, stage in enumerate(stages):
        where = f"stages[{i}]"
        if stage.cells < 1:
            raise StageError(f"{where}.cells must be >= 1, got {stage.cells}")
        if stage.edges is None:
            if stage.concat is not None:
                raise StageError(f"{where}.concat is only meaningful with 'edges'")
            continue
        if len(stage.edges) != stage.cells:
            raise StageError(f"{where}.edges lists {len(stage.edges)} cells, but cells={stage.cells}")
        for k, node in enumerate(stage.edges):
            if not node:
                raise StageError(f"{where}.edges[{k}] is empty: every cell reads at least one earlier state")
            for op, src in node:
                if op not in STAGE_OPS:
                    raise StageError(f"{where}.edges[{k}] op {op!r} is not a stage-level operation; allowed: "
                                     f"{', '.join(STAGE_OPS)}")
                if not 0 <= src < k + 2:
                    raise StageError(f"{where}.edges[{k}] input {src} must be an earlier state (< {k + 2})")
        if not stage.concat:
            raise StageError(f"{where}.concat is missing: the states that form the stage's output")
        for s in stage.concat:
            if not 0 <= s < stage.cells + 2:
                raise StageError(f"{where}.concat names state {s}; the stage has states 0..{stage.cells + 1}")


def stage_layout(stages: list[StageArch]) -> tuple[int, tuple[int, ...]]:
    """(number of cells, indices of the reduction cells) of a network with these stages."""
    reductions, index = [], 0
    for i, stage in enumerate(stages):
        index += stage.cells
        if i < len(stages) - 1:
            reductions.append(index)
            index += 1
    return index, tuple(reductions)


def normal_cells_by_stage(reductions: tuple[int, ...] | list[int], layers: int) -> list[list[int]]:
    """The indices of the normal cells of each stage of a ``layers``-cell network whose reduction
    cells are ``reductions`` (a stage may have none)."""
    bounds = [-1, *reductions, layers]
    return [list(range(bounds[s] + 1, bounds[s + 1])) for s in range(len(bounds) - 1)]
