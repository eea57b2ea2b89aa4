"""The lookup-table baseline (FBNet, ProxylessNAS): an architecture's latency as the sum of the
latencies of its parts, each timed alone.

The parts are the evaluation network's modules: the stem and the classifier (global pooling
and the linear layer), every cell's pre-processing convs and every op, each keyed by what decides
its cost (kind, channels in and out, kept widths, stride, the input's spatial size; not which
channel ids a width keeps). A part is timed once, the first time an architecture needs it, on a
random input of its shape, and the table keeps its median. The sum leaves out what happens
between the parts (the ReLU shared by a state's ops, the node sums and scatters, the
concatenation), which is the error the learned residual of the hybrid predictor corrects.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mgas_core.evaluation_cells import ModuleSpec, _unfreeze
from mgas_core.evaluation_network import build_eval_network, network_specs
from mgas_core.latency.measure import LatencyConditions, fixed_threads, time_calls
from mgas_core.space.architecture import Architecture

Key = tuple[Any, ...]


def spec_key(spec: ModuleSpec, resolution: int) -> Key:
    """What decides a module's cost: its kind and shape, kept widths as counts, the input size."""
    if spec.kind == "op":
        name, channels, stride, widths, in_channels, style = spec.args
        w = _unfreeze(widths)
        out = w.get("out")
        return ("op", name, channels, stride, w.get("mid"), len(out) if isinstance(out, list) else None,
                in_channels, style.affine, style.pool_bn, style.identity_bn, resolution)
    c_in, c_out, kept, affine = spec.args
    return (spec.kind, c_in, c_out, len(kept) if kept is not None else None, affine, resolution)


@dataclass(frozen=True)
class Part:
    """One part of a network and its time: ``cell`` and ``op`` (the op's index in the cell's op
    list) for the parts of a cell; the stem, a pre-processing conv and the classifier have no op."""

    key: Key
    ms: float
    cell: int | None = None
    op: int | None = None


@dataclass
class LookupTable:
    """Per-part medians (ms) under one set of :class:`LatencyConditions`."""

    conditions: LatencyConditions
    num_classes: int
    variant: str
    warmup: int = 3
    runs: int = 10
    entries: dict[Key, float] = field(default_factory=dict)
    timed: int = 0  # parts timed so far

    def _time(self, key: Key, build: Callable[[], tuple[nn.Module, Callable[[nn.Module], object]]],
              device: torch.device) -> float:
        if key not in self.entries:
            module, call = build()
            module.to(device).eval()
            with fixed_threads(self.conditions.threads):
                times = time_calls(lambda: call(module), device, self.warmup, self.runs)
            self.entries[key] = statistics.median(times)
            self.timed += 1
        return self.entries[key]

    def _input(self, channels: int, resolution: int, device: torch.device) -> torch.Tensor:
        shape = (self.conditions.batch, channels, resolution, resolution)
        return torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)

    def parts(self, arch: Architecture, channels: int, layers: int, device: torch.device) -> Iterator[Part]:
        """Every part of ``arch`` built at ``channels`` x ``layers`` with its time (timing the
        parts not in the table yet), in network order."""
        in_channels, height, _ = self.conditions.input_shape
        with torch.device("meta"):
            shell = build_eval_network(arch, self.num_classes, in_channels, channels, layers, auxiliary=False,
                                       variant=self.variant)
        stem = shell.stem
        stem_res = height // (4 if self.variant == "imagenet" else 1)
        first_res = height // (2 if self.variant == "imagenet" else 1)

        def stem_part() -> tuple[nn.Module, Callable[[nn.Module], object]]:
            module = type(stem)(in_channels, channels, self.variant)
            x = self._input(in_channels, height, device)
            return module, lambda m: m(x)

        stem_key = ("stem", in_channels, channels, self.variant, height)
        yield Part(stem_key, self._time(stem_key, stem_part, device))
        res_prev, res = first_res, stem_res
        last_width = stem.out_channels
        for shape, specs in network_specs(arch, channels, layers, stem.out_channels, stem.reduces_first_input):
            cell = arch.cells_for(layers)[shape.index]
            for spec, reads, res_in in ((specs.preprocess0, cell.uses_input(0), res_prev),
                                        (specs.preprocess1, cell.uses_input(1), res)):
                if spec is None or not reads:
                    continue
                key = spec_key(spec, res_in)
                yield Part(key, self._time(key, self._module_part(spec, res_in, device), device), shape.index)
            for k, spec in enumerate(specs.ops):
                key = spec_key(spec, res)
                yield Part(key, self._time(key, self._module_part(spec, res, device), device), shape.index, k)
            res_prev, res = res, res // 2 if shape.reduction else res
            last_width = specs.plan.output_width()
        head_key = ("classifier", last_width, self.num_classes, res)

        def head_part() -> tuple[nn.Module, Callable[[nn.Module], object]]:
            module = nn.Linear(last_width, self.num_classes)
            x = self._input(last_width, res, device)
            return module, lambda m: m(F.adaptive_avg_pool2d(x, 1).flatten(1))

        yield Part(head_key, self._time(head_key, head_part, device))

    def _module_part(self, spec: ModuleSpec, resolution: int,
                     device: torch.device) -> Callable[[], tuple[nn.Module, Callable[[nn.Module], object]]]:
        def build() -> tuple[nn.Module, Callable[[nn.Module], object]]:
            module = spec.build()
            if spec.kind == "op":
                x = self._input(spec.args[4], resolution, device)
                x_relu = F.relu(x) if getattr(module, "needs_relu", False) else None
                return module, lambda m: m(x, x_relu)
            x = self._input(spec.args[0], resolution, device)
            return module, lambda m: m(x)
        return build

    def predict(self, arch: Architecture, channels: int, layers: int, device: torch.device) -> float:
        """The table's latency of ``arch``: the sum of its parts' times (ms)."""
        return sum(p.ms for p in self.parts(arch, channels, layers, device))

    def as_dict(self) -> dict[str, Any]:
        return {"conditions": self.conditions.as_dict(), "num_classes": self.num_classes, "variant": self.variant,
                "warmup": self.warmup, "runs": self.runs,
                "entries": [[list(map(_plain, k)), v] for k, v in self.entries.items()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LookupTable:
        table = cls(LatencyConditions.from_dict(data["conditions"]), int(data["num_classes"]), str(data["variant"]),
                    int(data["warmup"]), int(data["runs"]))
        table.entries = {tuple(k): float(v) for k, v in data["entries"]}
        return table


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)
