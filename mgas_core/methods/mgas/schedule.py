"""MG-DARTS's schedule: stages, phases within them, and the lambda controller (official code).

A search of ``S`` stages runs, for every stage ``s``: ``warmup`` epochs (weights only, lambda 0),
then ``search`` epochs until the stage's size is below ``stage_goal`` x its size when the stage
began, then (stages 2..S) one ``regrow`` epoch with the stored masks frozen. A ``final`` phase over
the whole network follows: warm-up, then search epochs until the target is met (the derived
network's nonzero parameters at most ``target_params``, else the official size below the
official default). Stored masks change only at mask epochs: search epochs
``e`` with ``e > 0`` and ``e % mask_interval == 0`` (official: 2, 4, 6, ...), and, here, the last
epoch of a phase's budget (the official loops have no budget).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mgas_common.errors import UserInputError
from mgas_core.settings.run import SearchSettings

WARMUP, SEARCH, REGROW = "warmup", "search", "regrow"


def stage_cuts(layers: int, stages: int) -> list[int]:
    """Cell counts ``[c_1, ..., c_S]`` (``c_S = layers``): stage ``s`` trains cells ``0 .. c_s - 1``.

    The official split for 3 stages is at ``L // 3`` and ``2L // 3``, where the reduction cells
    are, so they open stages 2 and 3; ``S`` stages split at ``floor(k L / S)``.
    """
    if stages < 1 or stages > layers:
        raise UserInputError(f"stages must be between 1 and the number of cells ({layers}), got {stages}")
    cuts = [k * layers // stages for k in range(1, stages + 1)]
    if any(b <= a for a, b in zip([0, *cuts], cuts)):
        raise UserInputError(f"stages={stages} leaves a stage without cells for {layers} cells")
    return cuts


@dataclass
class Phase:
    """Where the search is: ``stage`` 1..S (``S + 1`` is the final phase), ``kind``, epochs in it."""

    stage: int
    kind: str
    first_epoch: int
    epochs: int = 0
    search_epochs: int = 0


@dataclass
class MgasSchedule:
    stages: int
    warmup_epochs: int
    mask_interval: int
    stage_budget: int
    final_budget: int
    regrow: bool
    phase: Phase = field(default_factory=lambda: Phase(1, WARMUP, 0))
    done: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.warmup_epochs == 0 and self.phase.kind == WARMUP and self.phase.epochs == 0:
            self.phase.kind = SEARCH

    @classmethod
    def from_settings(cls, settings: SearchSettings) -> MgasSchedule:
        """The schedule ``settings`` plan: phase budgets default to ``search.epochs``; regrowth runs
        when ops are pruned (``op`` granularity) and a fraction of them is to come back."""
        cfg = settings.mgas
        return cls(cfg.stages, cfg.warmup_epochs, cfg.mask_interval, cfg.stage_epochs or settings.epochs,
                   cfg.final_epochs or settings.epochs, regrow="op" in cfg.granularities and cfg.regrow_fraction > 0)

    def plan_text(self) -> str:
        """How the most epochs split: ``18 ep max: 3 stages x (1 warm-up + <= 2), 2 regrow, final 1 + <= 6``."""
        regrow = (self.stages - 1) if self.regrow else 0
        return (f"{self.max_epochs} ep max: {self.stages} stage{'s' * (self.stages != 1)} x ({self.warmup_epochs} "
                f"warm-up + <= {self.stage_budget}), {regrow} regrow, final {self.warmup_epochs} + <= "
                f"{self.final_budget}")

    @property
    def final_stage(self) -> int:
        return self.stages + 1

    @property
    def in_final(self) -> bool:
        return self.phase.stage == self.final_stage

    @property
    def max_epochs(self) -> int:
        regrow = (self.stages - 1) if self.regrow else 0
        return (self.stages + 1) * self.warmup_epochs + self.stages * self.stage_budget + regrow + self.final_budget

    @property
    def budget(self) -> int:
        return self.final_budget if self.in_final else self.stage_budget

    def is_mask_epoch(self) -> bool:
        """True when the current (search) epoch ends with a stored-mask update."""
        if self.phase.kind != SEARCH:
            return False
        e = self.phase.search_epochs
        return (e > 0 and e % self.mask_interval == 0) or e + 1 >= self.budget

    def budget_spent(self) -> bool:
        return self.phase.kind == SEARCH and self.phase.search_epochs + 1 >= self.budget

    def finish_epoch(self) -> None:
        """Count the epoch that just ended in the current phase (before any transition)."""
        self.phase.epochs += 1
        if self.phase.kind == SEARCH:
            self.phase.search_epochs += 1
        elif self.phase.kind == WARMUP and self.phase.epochs >= self.warmup_epochs:
            self._enter(SEARCH, self.phase.stage)

    def end_search(self) -> None:
        """The search part of the current stage met its goal or spent its budget."""
        stage = self.phase.stage
        if stage >= 2 and self.regrow and stage < self.final_stage:
            self._enter(REGROW, stage)
        else:
            self._next_stage()

    def end_regrow(self) -> None:
        self._next_stage()

    def _next_stage(self) -> None:
        self._enter(WARMUP if self.warmup_epochs else SEARCH, self.phase.stage + 1)

    def _enter(self, kind: str, stage: int) -> None:
        self.done.append(self.record())
        self.phase = Phase(stage, kind, self.phase.first_epoch + self.phase.epochs)

    def record(self, phase: Phase | None = None) -> dict[str, Any]:
        p = phase or self.phase
        name = "final" if p.stage == self.final_stage else f"stage {p.stage}"
        return {"phase": f"{name} {p.kind}", "stage": p.stage if p.stage <= self.stages else "final",
                "kind": p.kind, "first_epoch": p.first_epoch, "epochs": p.epochs}

    def table(self) -> list[dict[str, Any]]:
        """Every phase run so far (the current one included if it ran an epoch)."""
        return [*self.done, *([self.record()] if self.phase.epochs else [])]

    def state_dict(self) -> dict[str, Any]:
        return {"phase": asdict(self.phase), "done": [dict(d) for d in self.done]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase = Phase(**state["phase"])
        self.done = [dict(d) for d in state["done"]]


class MgasLambda:
    """The official controller: see :class:`~mgas_core.methods.mgas.settings.MgasLambdaControl`."""

    def __init__(self, lambda0: float, c0: float, high: int, low: int, max_lambda: float) -> None:
        self.lambda0, self.c0, self.high, self.low, self.max_lambda = lambda0, c0, high, low, max_lambda
        self.value = 0.0
        self.delta = lambda0

    def reset(self) -> None:
        """Every stage and the final phase start at lambda 0."""
        self.value, self.delta = 0.0, self.lambda0

    def update(self, pruned: int, ce: float, cost: float, cap_ratio: float) -> float:
        """After a mask epoch that pruned ``pruned`` ops, with the epoch's mean CE and mean
        ``lambda * size`` term."""
        cap = self.value if ce < cap_ratio * cost else self.max_lambda
        if pruned >= self.high:
            self.delta = self.lambda0
            self.value /= self.c0
        elif pruned < self.low and self.value != cap:
            self.delta *= self.c0**2
            self.value += self.delta
        self.value = min(self.value, cap)
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "delta": self.delta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.delta = float(state["value"]), float(state["delta"])


def scaled_counts(high: int, low: int, reference_ops: int, ops: int) -> tuple[int, int]:
    """The controller's pruned-op counts for a supernet of ``ops`` ops (official: 784 ops)."""
    scale = ops / reference_ops
    hi = max(2, round(high * scale))
    lo = min(hi - 1, max(1, round(low * scale)))
    return hi, lo
