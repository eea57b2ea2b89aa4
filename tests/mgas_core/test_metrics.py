"""Memory a reader can compare: the peak of a run above what the process held when it began."""

from __future__ import annotations

import sys

import pytest
import torch

from mgas_core.metrics import PeakMemory

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


def _touch(mb: int) -> torch.Tensor:
    return torch.ones(mb * 2**20 // 4)  # written, so resident


@LINUX
def test_cpu_peak_is_what_the_run_added_above_its_start():
    memory = PeakMemory(torch.device("cpu"))
    assert memory.kind == "cpu peak RSS above the start of the run"
    block = _touch(200)
    del block
    assert 190 <= memory.run_peak_mb() <= 260
    assert memory.peak_mb() >= memory.baseline_mb + 190


@LINUX
def test_an_earlier_peak_of_the_same_process_is_not_counted():
    block = _touch(300)  # an earlier trial in a reused worker, or torch's own start-up
    del block
    memory = PeakMemory(torch.device("cpu"))
    small = _touch(20)
    del small
    assert memory.run_peak_mb() < 100
