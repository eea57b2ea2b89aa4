"""Multi-stage search plan: where to cut the supernet and how many epochs each phase gets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mgas_core.errors import UserInputError
from mgas_core.space import CellShape


def cell_activation_costs(shapes: Sequence[CellShape], image_size: int) -> list[float]:
    """Relative activation memory of each cell: channels x resolution^2 of its outputs.

    What a cell keeps for backward is dominated by its ops' outputs and intermediates (every
    candidate op of every edge), all at the cell's output resolution; a reduction cell's ops have
    stride 2, so it is charged at the halved resolution with its doubled width (measured: charging
    it at the incoming resolution put two full-resolution cells into stage 1 of 3, which then
    needed 0.67x the single-stage peak instead of about a third).
    """
    costs, res = [], float(image_size)
    for s in shapes:
        if s.reduction:
            res = max(1.0, res / 2)
        costs.append(s.channels * res * res)
    return costs


def stage_cuts(shapes: Sequence[CellShape], stages: int, image_size: int) -> list[int]:
    """Cell counts ``[c_1, ..., c_S]`` (c_S = layers): stage s runs cells ``0 .. c_s - 1``.

    Consecutive sub-nets of about equal activation cost, each at least one cell, so stage 1
    needs roughly 1/S of the full supernet's activation memory.
    """
    layers = len(shapes)
    if stages < 1 or stages > layers:
        raise UserInputError(f"stages must be between 1 and the number of cells ({layers}), got {stages}")
    costs = cell_activation_costs(shapes, image_size)
    total = sum(costs)
    cuts: list[int] = []
    cumulative = [sum(costs[: i + 1]) for i in range(layers)]
    for s in range(1, stages):
        goal = total * s / stages
        lo = (cuts[-1] if cuts else 0) + 1  # at least one cell per stage
        hi = layers - (stages - s)  # leave one cell for every later stage
        best = min(range(lo, hi + 1), key=lambda n: abs(cumulative[n - 1] - goal))
        cuts.append(best)
    return [*cuts, layers]


@dataclass(frozen=True)
class StagePlan:
    cuts: list[int]
    stage_epochs: int
    final_epochs: int

    @property
    def stages(self) -> int:
        return len(self.cuts)

    @property
    def total_epochs(self) -> int:
        return self.stages * self.stage_epochs + self.final_epochs

    def phase(self, epoch: int) -> int:
        """0-based stage index of ``epoch``; ``stages`` means the final whole-net phase."""
        return min(epoch // self.stage_epochs, self.stages)


def make_plan(shapes: Sequence[CellShape], stages: int, image_size: int, epochs: int,
              stage_epochs: int | None, final_epochs: int | None) -> StagePlan:
    cuts = stage_cuts(shapes, stages, image_size)
    per_stage = stage_epochs if stage_epochs is not None else max(1, epochs // (stages + 1))
    final = final_epochs if final_epochs is not None else max(1, epochs - stages * per_stage)
    return StagePlan(cuts, per_stage, final)
