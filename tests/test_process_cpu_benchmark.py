"""``benchmarks.diagnostics.process_cpu``: the CPU time of a command's process tree within a window, read from
``/proc`` (no Ray: a parent that starts a CPU-bound child)."""

from __future__ import annotations

import sys

import pytest

from benchmarks.diagnostics.process_cpu import sample_tree, summarize

pytestmark = [pytest.mark.benchmark]

SPIN = "import time\nend = time.monotonic() + 4\nwhile time.monotonic() < end:\n    pass\n"


def test_a_busy_child_is_named_and_timed_within_the_window(tmp_path):
    spin = tmp_path / "spin.py"
    spin.write_text(SPIN)
    parent = f"import subprocess, sys; subprocess.run([sys.executable, {str(spin)!r}], check=True)"
    sampled = summarize(sample_tree([sys.executable, "-c", parent], (1.0, 3.0), interval_s=0.2))
    assert 1.5 <= sampled["window_s"] <= 3.0
    rows = {r["process"]: r for r in sampled["processes"]}
    assert "spin.py" in rows, rows
    # a CPU-bound process: most of a core even on a loaded machine, never more than one
    assert 0.2 < rows["spin.py"]["share_of_a_core"] <= 1.05
    assert rows["spin.py"]["cpu_s"] <= sampled["machine_busy_s"] + 0.05
    assert sampled["trial_worker_share_of_its_core"] == 0.0  # no Tune trial here
