"""Model-size, compute, time and memory measurements."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mgas_core.nn.maskable_conv import MaskableConv2d


@dataclass(frozen=True)
class ParamCount:
    dense: int
    nonzero: int

    @property
    def dense_m(self) -> float:
        return self.dense / 1e6

    @property
    def nonzero_m(self) -> float:
        return self.nonzero / 1e6


def count_params(model: nn.Module, exclude: str = "auxiliary") -> ParamCount:
    """Parameters of ``model`` whose name does not contain ``exclude`` (the official DARTS counter
    leaves out the auxiliary head). ``nonzero`` subtracts weights removed by fixed weight masks."""
    dense = sum(p.numel() for name, p in model.named_parameters() if exclude not in name)
    masked_out = 0
    for name, module in model.named_modules():
        if isinstance(module, MaskableConv2d) and module.weight_mask is not None and exclude not in name:
            masked_out += int((module.weight_mask == 0).sum())
    return ParamCount(dense=dense, nonzero=dense - masked_out)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass at batch 1 (PyTorch's counter reports 2 FLOPs per MAC).

    Convolutions count as declared (every kernel tap, padding included, as papers count them):
    their exact rewrites (``MaskableConv2d.rewrites``) are off while counting, since a dropped
    padding tap or a tap-matrix product would change the count but not the function."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros((1, *input_shape), device=device)
    counter = FlopCounterMode(display=False)
    convs = [m for m in model.modules() if isinstance(m, MaskableConv2d)]
    rewrites = [conv.rewrites for conv in convs]
    try:
        for conv in convs:
            conv.rewrites = False
        with torch.no_grad(), counter:
            model(x)
    finally:
        for conv, on in zip(convs, rewrites):
            conv.rewrites = on
        model.train(was_training)
    return counter.get_total_flops() // 2


def process_peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _proc_status_mb(field: str) -> float | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in MiB (None where there is no procfs)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a run from now on, comparable between methods.

    CUDA: ``torch.cuda.max_memory_allocated`` (the caching allocator's peak: model, optimiser
    state and activations; peak stats reset here). CPU: the peak resident set size above the RSS
    held when measuring began (model, optimiser and data already loaded, before the first step),
    the kernel's peak mark being reset here, so what torch's import and earlier work took is
    not counted and a reused worker process does not carry an earlier trial's peak.
    ``kind`` says which of the two a figure is."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline_mb = torch.cuda.memory_allocated(device) / 2**20
            self.kind = "cuda max_memory_allocated"
            return
        self.baseline_mb = _proc_status_mb("VmRSS") or 0.0
        self._reset = _reset_peak_rss()
        self.kind = "cpu peak RSS above the start of the run" if self._reset else "cpu process peak RSS"

    def peak_mb(self) -> float:
        """The total peak: allocated bytes on CUDA, resident memory on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = _proc_status_mb("VmHWM") if self._reset else None
        return peak if peak is not None else process_peak_rss_mb()

    def run_peak_mb(self) -> float:
        """What results report: the allocator peak on CUDA, the peak above the start on CPU."""
        if self.device.type == "cuda" or not self._reset:
            return self.peak_mb()
        return max(0.0, self.peak_mb() - self.baseline_mb)


class Stopwatch:
    """Wall-clock time that can be paused; resumed runs add their time to a restored total."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.elapsed = elapsed
        self._start: float | None = None

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._start is not None
        self.elapsed += time.perf_counter() - self._start
        self._start = None
