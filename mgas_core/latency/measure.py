"""Timing a network's forward pass: what a latency is, and the conditions it is valid for.

A latency is the median wall time of ``runs`` forward passes of the network as deployed (stored
weight masks folded into the weights) in evaluation mode
(``torch.no_grad``) on one fixed input, after ``warmup`` untimed passes, with the CPU
threads fixed for the measurement (restored afterwards) and, on CUDA, the device synchronised
before each pass starts and after it ends. It holds only for what it was measured under
(:class:`LatencyConditions`: the device and its name, torch's version, the threads, the batch and
the input shape), which is stored with every measurement and every predictor.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

DEFAULT_WARMUP = 5
DEFAULT_RUNS = 30
LATENCY_DEVICES = ("cpu", "cuda")


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: torch.device) -> str:
    """What a latency on ``device`` was measured on: the GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


CONDITION_FIELDS = ("device", "device_name", "torch_version", "threads", "batch", "input_shape")
HARDWARE_FIELDS = ("device", "device_name", "torch_version", "input_shape")
"""What a search's predictor must match where the search runs (threads and batch are what the
predictor predicts for, stated with it)."""


@dataclass(frozen=True)
class LatencyConditions:
    """What a latency (or a predictor of it) holds for."""

    device: str  # "cpu" or "cuda"
    device_name: str
    torch_version: str
    threads: int
    batch: int
    input_shape: tuple[int, int, int]  # channels, height, width of one image

    @classmethod
    def current(cls, device: torch.device, threads: int, batch: int,
                input_shape: tuple[int, int, int]) -> LatencyConditions:
        return cls(device.type, device_name(device), str(torch.__version__), threads, batch, tuple(input_shape))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyConditions:
        return cls(str(data["device"]), str(data["device_name"]), str(data["torch_version"]), int(data["threads"]),
                   int(data["batch"]), tuple(int(v) for v in data["input_shape"]))  # type: ignore[arg-type]

    def mismatch(self, other: LatencyConditions, fields: tuple[str, ...] = CONDITION_FIELDS) -> str | None:
        """Why a latency measured under ``other`` does not hold under ``self`` (one line), or None;
        ``fields``: the conditions compared."""
        for name in fields:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"{name} is {_show(mine)} here, {_show(theirs)} where it was measured"
        return None


def _show(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else repr(value)


LATENCY_FIELDS = ("latency_ms", "latency_device", "latency_batch", "latency_threads")
"""The columns of a result row that say how fast its network runs and what that holds for."""


@dataclass(frozen=True)
class LatencyMeasurement:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    warmup: int
    conditions: LatencyConditions

    def as_dict(self) -> dict[str, Any]:
        return {"latency_ms": round(self.median_ms, 4), "latency_p10_ms": round(self.p10_ms, 4),
                "latency_p90_ms": round(self.p90_ms, 4), "runs": self.runs, "warmup": self.warmup,
                **self.conditions.as_dict()}

    def row_fields(self) -> dict[str, Any]:
        """The columns a result row carries: the latency and what it holds for."""
        c = self.conditions
        return {"latency_ms": self.median_ms, "latency_device": f"{c.device}: {c.device_name}",
                "latency_batch": c.batch, "latency_threads": c.threads}


@contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block, the previous count restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_calls(call: Callable[[], object], device: torch.device, warmup: int, runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` timed calls of ``call`` after ``warmup`` untimed ones, with
    no autograd (``no_grad``: inference-mode tensors would end up in caches a later backward
    reads, such as the CPU conv rewrite's tap index); on CUDA the device is synchronised before
    and after every timed call."""
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    times: list[float] = []
    with torch.no_grad():  # not inference_mode: its tensors would poison caches autograd reads later
        for _ in range(warmup):
            call()
        for _ in range(runs):
            sync()
            start = time.perf_counter()
            call()
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    return times


def time_forward(model: nn.Module, x: torch.Tensor, warmup: int, runs: int) -> list[float]:
    """:func:`time_calls` of ``model(x)`` in evaluation mode (the mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        return time_calls(lambda: model(x), x.device, warmup, runs)
    finally:
        model.train(was_training)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def deployed(model: nn.Module) -> nn.Module:
    """The network as it would be deployed: each stored weight mask folded into its weights once
    (a copy; ``model`` is left as it is), so a forward pass does not multiply by the mask again.
    A model without stored masks is returned as it is."""
    from mgas_core.nn.maskable_conv import MaskableConv2d

    if not any(isinstance(m, MaskableConv2d) and m.weight_mask is not None for m in model.modules()):
        return model
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for m in folded.modules():
            if isinstance(m, MaskableConv2d) and m.weight_mask is not None:
                m.weight.mul_(m.weight_mask)
                m.weight_mask = None
    return folded


def measure_latency(model: nn.Module, input_shape: tuple[int, int, int], batch: int, device: torch.device,
                    threads: int, warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS,
                    memory_format: torch.memory_format = torch.contiguous_format) -> LatencyMeasurement:
    """The median forward latency of ``model`` (already on ``device``) at ``batch`` images of
    ``input_shape``, with ``threads`` CPU threads; a fixed random input (seeded, so every
    measurement times the same data)."""
    if batch < 1 or runs < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"batch, runs and threads must be >= 1 and warmup >= 0, got batch={batch}, runs={runs}, "
                         f"warmup={warmup}, threads={threads}")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *input_shape), generator=generator).to(device).contiguous(memory_format=memory_format)
    with fixed_threads(threads):
        times = time_forward(deployed(model), x, warmup, runs)
    conditions = LatencyConditions.current(device, threads, batch, input_shape)
    return LatencyMeasurement(statistics.median(times), quantile(times, 0.1), quantile(times, 0.9), runs, warmup,
                              conditions)
