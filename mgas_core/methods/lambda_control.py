"""The GOLD-NAS lambda controller (``train_search.py:main`` of the reference code).

lambda starts at 0 with the increment at ``lambda0``: the first epoch trains without resource
pressure. After every pruning check: if enough was pruned (at least ``n0`` ops), the pressure was
too strong, so ``lambda /= c0`` and the increment resets to ``lambda0``; otherwise the increment
grows, ``dlambda *= c0``, and ``lambda += dlambda``. Pruning therefore never stalls for long, and
never runs away. (MGAS has its own controller, :mod:`mgas_core.methods.mgas_schedule`.)
"""

from __future__ import annotations

from typing import Any


class LambdaController:
    def __init__(self, lambda0: float, c0: float) -> None:
        if lambda0 <= 0 or c0 <= 1:
            raise ValueError(f"lambda0 must be > 0 and c0 > 1, got lambda0={lambda0}, c0={c0}")
        self.lambda0 = lambda0
        self.c0 = c0
        self.value = 0.0
        self.delta = lambda0

    def update(self, enough_pruned: bool) -> float:
        if enough_pruned:
            self.value /= self.c0
            self.delta = self.lambda0
        else:
            self.delta *= self.c0
            self.value += self.delta
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "delta": self.delta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.delta = float(state["delta"])
