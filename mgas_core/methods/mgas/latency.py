"""MGAS with a latency predictor (``search.latency``): the latency joins the size.

- Resource term: the official op-level size term ``log(1 + k_n sigmoid(alpha) / S_n)`` summed over
  the ops whose live mask is on, each weighted by its latency on the device relative to the
  slowest op (the predictor's lookup table, each op at its cell's shape), so the controller's
  lambda pushes the slow ops out first.
- Stop rule: the final phase's target is met once the size target is (``target_params``, or the
  official default) *and* the derived architecture's predicted latency is at most
  ``search.latency.target_ms``; with a latency target and no ``target_params`` the latency alone is
  the target (the official default size would otherwise decide the size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mgas_core.data import DatasetInfo
from mgas_core.latency.cost import LatencyCost, latency_cost, latency_figures
from mgas_core.settings.run import SearchSettings
from mgas_core.space.architecture import Architecture


class MgasLatency:
    def __init__(self, cost: LatencyCost, settings: SearchSettings, device: torch.device,
                 primitives: Sequence[str]) -> None:
        self.cost = cost
        times = cost.op_latencies(settings.channels, settings.layers, primitives)
        self.op_weights = (times / times.max().clamp_min(1e-12)).to(device)
        self.latency_only = settings.target_params is None and cost.target_ms is not None

    @classmethod
    def create(cls, settings: SearchSettings, info: DatasetInfo, device: torch.device,
               primitives: Sequence[str]) -> MgasLatency | None:
        cost = latency_cost(settings, info, device, primitives)
        return None if cost is None else cls(cost, settings, device, primitives)

    def met(self, derive: Callable[[], Architecture]) -> bool:
        """The derived architecture's predicted latency is within the target (no target: met)."""
        target = self.cost.target_ms
        return target is None or self.cost.architecture_ms(derive()) <= target

    def weights(self, cells: range) -> Tensor:
        return self.op_weights[cells.start:cells.stop]

    def fields(self, arch: Architecture) -> dict[str, Any]:
        return latency_figures(self.cost, None, arch)
