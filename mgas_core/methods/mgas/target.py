"""What MGAS's final phase stops at, and the pruned-op count the official final loop hands lambda.

The target is ``target_params`` nonzero parameters of the derived network (the project's unit),
else the official one: ``--min_flops`` of ``train_search.py``, a fraction
(``MgasSettings.default_target_size``) of the official size measure of the whole network
(:func:`~mgas_core.methods.mgas.units.stage_size`, the official ``current_flops``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor

from mgas_common.errors import UserInputError
from mgas_core.methods.mgas.settings import OFFICIAL_MIN_FLOPS, OFFICIAL_SUPERNET_SIZE, MgasSettings
from mgas_core.methods.mgas.units import MgasModel, stage_size
from mgas_core.settings.run import SearchSettings

OFFICIAL_STAGE_GOAL = 0.3
"""``min_flops_ratio`` of the official ``main()``: every stage ends below 0.3 x its size at its start."""

TargetKind = Literal["params", "size"]


def resolve_target(settings: SearchSettings, model: MgasModel, full_size: float) -> tuple[TargetKind, float]:
    """(kind, value) of a search's target; a ``target_params`` no search can meet is one line."""
    net = model.net
    if not settings.target_params:
        return "size", settings.mgas.default_target_size * stage_size(model, range(len(net.cells)))
    target = settings.target_params * 1e6
    fixed = sum(p.numel() for p in net.stem.parameters()) + sum(p.numel() for p in net.classifier.parameters())
    if target >= full_size:
        raise UserInputError(f"target_params={target / 1e6:.4g} M is not below the supernet's size "
                             f"({full_size / 1e6:.4g} M params); choose a smaller target")
    if target <= fixed:
        raise UserInputError(f"target_params={target / 1e6:.4g} M is below the unprunable stem + "
                             f"classifier ({fixed / 1e6:.4g} M)")
    return "params", target


def target_measure(kind: TargetKind, model: MgasModel, nonzero: Callable[[], int]) -> float:
    """What the target is measured in: the derived network's nonzero parameters (``nonzero``),
    else the official size of the whole network."""
    return float(nonzero()) if kind == "params" else stage_size(model, range(len(model.net.cells)))


def target_met(kind: TargetKind, target: float, measured: float) -> bool:
    """Within ``target_params``, else below the official default (``current_flops < min_flops``)."""
    return measured <= target if kind == "params" else measured < target


def target_fields(kind: TargetKind, target: float, measured: float) -> dict[str, Any]:
    """The target as a summary and its events report it."""
    return {"target_kind": kind, "target": round(target),
            "target_params": round(target) if kind == "params" else None, "target_gap": measured / target - 1}


def official_prune_count(alive: Tensor, off: list[tuple[int, int, int]], within: Callable[[], bool]) -> int:
    """What the official final loop hands the lambda controller (``pruning_epoch``): its size
    leaves masked ops out already, so removing them changes nothing and the loop removes every
    masked op still standing, or only one when the size without them is already within the target
    (``train_search.py``, the ``prune_op(..., max=1)`` loop). ``alive`` is left as it was."""
    if not off:
        return 0
    saved = alive.clone()
    for ci, e, o in off:
        alive[ci, e, o] = False
    met = within()
    alive.copy_(saved)
    return 1 if met else len(off)


def stage_goal(cfg: MgasSettings, target_fraction: float) -> float:
    """The fraction of its size at its start a stage ends below: ``cfg.stage_goal``, or, with
    ``stage_goal_from_target``, ``target_fraction ** k`` where ``k`` makes the official pair hold
    (the official target, ``--min_flops`` = 5.5 % of the official supernet, gives the official 0.3):
    a target of 21 % of the supernet gives 0.52, 51 % gives 0.76. ``target_fraction`` is the
    target over what it is measured in on the whole supernet."""
    if not cfg.stage_goal_from_target:
        return cfg.stage_goal
    k = math.log(OFFICIAL_STAGE_GOAL) / math.log(OFFICIAL_MIN_FLOPS / OFFICIAL_SUPERNET_SIZE)
    return min(max(target_fraction, 1e-9), 1.0) ** k
