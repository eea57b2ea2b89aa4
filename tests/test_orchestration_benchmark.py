"""``benchmarks.orchestration`` (issues 5 and 17): a real embedded-Ray sweep against the same
trials in a warm process, at the smallest size (2 one-epoch trials)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.benchmark]  # Ray tests: one after another

ROOT = Path(__file__).resolve().parents[1]


def test_orchestration_benchmark_measures_both_sides_and_where_the_time_goes():
    done = subprocess.run([sys.executable, "-m", "benchmarks.orchestration", "--trials", "2", "--epochs", "1",
                           "--cold-processes", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok_trials"] == 2 and result["trials"] == 2
    # (from the rounded times: the printed efficiency is computed before rounding)
    assert result["parallel_efficiency"] == pytest.approx(result["in_process_s"] / (result["cpus"] * result["ray_s"]),
                                                          abs=2e-3)
    # the same trials in plain processes side by side: the machine's own share and Ray's on top
    assert result["plain_processes_s"] > 0 and result["per_trial_plain_processes_s"] > 0
    assert result["machine_parallel_efficiency"] == pytest.approx(
        result["in_process_s"] / (result["cpus"] * result["plain_processes_s"]), abs=2e-3)
    assert result["ray_vs_plain_processes"] == pytest.approx(result["plain_processes_s"] / result["ray_s"], abs=2e-3)
    assert result["parallel_efficiency"] == pytest.approx(
        result["machine_parallel_efficiency"] * result["ray_vs_plain_processes"], abs=5e-3)
    before, after = result["per_trial_in_process_before_after_s"]
    assert result["in_process_s"] == pytest.approx(before + after, abs=0.02)
    low, high = result["trial_through_ray_min_max_s"]
    assert 0 < low <= result["per_trial_through_ray_s"] <= high
    # fresh processes: their start (Python, torch, the trial code) before the trials, no Ray
    assert result["cold_processes_s"] > result["per_trial_cold_processes_s"] > 0
    assert result["cold_machine_parallel_efficiency"] == pytest.approx(
        result["in_process_s"] / (result["cpus"] * result["cold_processes_s"]), abs=2e-3)
    assert result["ray_vs_cold_processes"] == pytest.approx(result["cold_processes_s"] / result["ray_s"], abs=2e-3)
    # the sweep's own time: its start, its trials (two at a time) and its end
    assert result["ray_until_first_trial_s"] > 0 and result["ray_after_last_trial_s"] > 0
    assert result["ray_until_first_trial_s"] + high + result["ray_after_last_trial_s"] <= result["ray_s"] + 0.5


def test_orchestration_benchmark_refuses_a_sweep_it_cannot_split():
    done = subprocess.run([sys.executable, "-m", "benchmarks.orchestration", "--trials", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--trials must be >= 2" in done.stderr


def test_a_plain_process_that_dies_without_answering_is_reported_not_waited_for():
    from benchmarks.orchestration import _answer

    context = mp.get_context("spawn")
    done = context.Queue()
    process = context.Process(target=os._exit, args=(3,))  # as a killed or failed import would
    process.start()
    process.join(60)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"died \(exit code 3\)"):
        _answer(done, 600, [process])
    assert time.monotonic() - start < 30
