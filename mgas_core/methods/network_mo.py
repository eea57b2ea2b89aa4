"""One candidate of the network-level multi-objective search (``search.method: network_mo``).

The two-stage framework of the project's seed: a block search (any method of this project, by
default one with a complexity term) finds cells; an evolutionary multi-objective search then
builds the target network from them, trading accuracy against size. The second stage runs as a
Ray Tune population (``population:`` in an experiment, :mod:`orchestrator.population`, Optuna's
NSGA-II); each of its trials is one candidate network, described here by its genome:

* ``blocks``: the block library (each a normal and a reduction cell found by the block stage);
* ``stage_blocks``: which block each stage takes (its normal cells and the reduction cell after it);
* ``stage_cells``: how many normal cells each stage has (reduction cells between the stages);
* the width is the candidate's ``retrain.channels``.

The candidate is not searched: it is built (chained cells, DARTS-style, reductions between the
stages) and trained under the trial's retraining protocol — the population's short budget.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from mgas_common.errors import UserInputError
from mgas_core.methods.protocol import MethodStyle, RetrainOnlyMethod
from mgas_core.methods.registry import register_method
from mgas_core.settings.run import SearchSettings
from mgas_core.settings.strict import MAX_LAYERS, Strict, field_error
from mgas_core.space.architecture import Architecture, ArchitectureError, CellArch, architecture_from_json
from mgas_core.space.stages import StageArch
from mgas_core.space.topology import NO_NONE_PRIMITIVES

MAX_BLOCKS = 1_000


class NetworkMoSettings(Strict):
    blocks: list[dict[str, Any]] = Field([], max_length=MAX_BLOCKS,
                                         description="the block library: architecture JSONs of genotypes (a normal "
                                                     "and a reduction cell each), as the block stage found them")
    stage_blocks: list[int] = Field([0, 0, 0], min_length=1, max_length=8,
                                    description="the block each stage takes (an index into blocks)")
    stage_cells: list[int] = Field([1, 1, 1], min_length=1, max_length=8,
                                   description="normal cells of each stage")

    @model_validator(mode="after")
    def _genome(self) -> NetworkMoSettings:
        if len(self.stage_blocks) != len(self.stage_cells):
            raise field_error("stage_cells", f"one count per stage: {len(self.stage_cells)} counts for "
                                             f"{len(self.stage_blocks)} stages", self.stage_cells, "NetworkMoSettings")
        for i, n in enumerate(self.stage_cells):
            if not 1 <= n <= MAX_LAYERS:
                raise field_error(f"stage_cells.{i}", f"{n} cells; allowed: 1 to {MAX_LAYERS}", n,
                                  "NetworkMoSettings")
        for i, b in enumerate(self.stage_blocks):
            if self.blocks and not 0 <= b < len(self.blocks):
                raise field_error(f"stage_blocks.{i}", f"block {b} does not exist; allowed: 0 to "
                                                       f"{len(self.blocks) - 1}", b, "NetworkMoSettings")
        return self


def library_blocks(blocks: list[dict[str, Any]]) -> list[Architecture]:
    """The block library as genotype architectures (each checked as an architecture file is)."""
    out = []
    for i, data in enumerate(blocks):
        try:
            arch = architecture_from_json(data, where=f"blocks[{i}]")
        except ArchitectureError as exc:
            raise UserInputError(str(exc)) from None
        if not arch.is_genotype:
            raise UserInputError(f"blocks[{i}]: a block is a genotype (a normal and a reduction cell)")
        out.append(arch)
    return out


def candidate_architecture(blocks: list[Architecture], stage_blocks: list[int], stage_cells: list[int],
                           name: str) -> Architecture:
    """The candidate network: stage ``s`` has ``stage_cells[s]`` normal cells of block
    ``stage_blocks[s]`` and, unless it is the last, that block's reduction cell after it."""
    cells: list[CellArch] = []
    for s, (b, n) in enumerate(zip(stage_blocks, stage_cells)):
        block = blocks[b]
        assert block.normal is not None and block.reduce is not None
        cells += [CellArch(list(block.normal.ops), list(block.normal.concat)) for _ in range(n)]
        if s < len(stage_blocks) - 1:
            cells.append(CellArch(list(block.reduce.ops), list(block.reduce.concat), reduction=True))
    nodes = max(blocks[b].nodes for b in stage_blocks)
    meta = {"stage_blocks": list(stage_blocks), "cells_per_stage": list(stage_cells),
            "block_sources": [blocks[b].meta.get("source") for b in stage_blocks]}
    return Architecture(name=name, nodes=nodes, cells=cells, stages=[StageArch(n) for n in stage_cells], meta=meta)


@register_method("network_mo")
class NetworkMo(RetrainOnlyMethod):
    primitives = NO_NONE_PRIMITIVES
    settings_model = NetworkMoSettings
    architecture_field = "network_mo.blocks"
    style = MethodStyle("Network-level MO (NSGA-II)", "#17becf", "h")

    @classmethod
    def architecture(cls, settings: SearchSettings) -> Architecture:
        cfg = settings.network_mo
        if not cfg.blocks:
            raise UserInputError("a candidate needs the block library (the population's block stage writes it)")
        genome = f"b{'-'.join(map(str, cfg.stage_blocks))}_c{'-'.join(map(str, cfg.stage_cells))}"
        return candidate_architecture(library_blocks(cfg.blocks), cfg.stage_blocks, cfg.stage_cells,
                                      f"candidate_{genome}")

    @classmethod
    def epoch_plan(cls, settings: SearchSettings) -> tuple[int, str]:
        return 0, "no search (a candidate network of the population)"

    def summary(self) -> dict[str, Any]:
        return {"cells_per_stage": list(self.settings.network_mo.stage_cells),
                "stage_blocks": list(self.settings.network_mo.stage_blocks)}
