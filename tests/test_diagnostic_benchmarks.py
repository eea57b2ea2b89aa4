"""``benchmarks.diagnostics.step_profile``, ``benchmarks.diagnostics.sweep_start`` and
``benchmarks.compile_retrain`` (issue 17: every figure in docs/performance.md has its command): run
for real at the smallest size, in fresh processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.benchmark]

ROOT = Path(__file__).resolve().parents[1]


def run_json(*argv: str) -> object:
    done = subprocess.run([sys.executable, "-m", *argv, "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_step_profile_ranks_ops_counts_saved_tensors_and_times_bn_backward():
    tiny = ["--layers", "2", "--channels", "8", "--batch", "8", "--resolution", "16", "--steps", "1"]
    fused = run_json("benchmarks.diagnostics.step_profile", *tiny, "--top", "5")
    # no profile: saved tensors only
    unfused = run_json("benchmarks.diagnostics.step_profile", *tiny, "--unfused", "--top", "0")
    ops = fused["profile"]
    assert len(ops) == 5 and [o["self_s"] for o in ops] == sorted((o["self_s"] for o in ops), reverse=True)
    for o in ops:
        assert o["calls"] >= 1 and o["share"] == pytest.approx(o["self_s"] / fused["profiled_self_s"], abs=2e-3)
    assert sum(o["share"] for o in ops) <= 1.0 + 1e-6
    assert unfused["profile"] == [] and unfused["profiled_self_s"] is None
    for result in (fused, unfused):
        assert result["step_s"] > 0 and result["saved_storages"] > 0
        bn = result["bn_backward_ms"]
        assert set(bn) == {"dense", "channel_slice"} and min(bn.values()) > 0
    # the recomputing kernels keep fewer maps for backward than the ops one by one
    assert fused["unfused"] is False and unfused["unfused"] is True
    assert fused["saved_mb"] < unfused["saved_mb"]


@pytest.mark.parametrize("root", ["/w", "/check/work/main/.venv/lib/python3.11/site-packages"])
def test_a_process_is_named_by_its_program_whatever_its_install_path(root):
    from benchmarks.diagnostics.sweep_start import _title

    gcs = _title([f"{root}/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp/x", "--gcs_server_port=0", ""])
    assert gcs == "gcs_server --log_dir=/tmp/x --gcs_server_port=0"
    assert _title([f"{root}/bin/python", "-u", "-m", "x" * 200]).startswith("python -u -m xxx")
    assert len(_title([f"{root}/bin/python", "x" * 200])) == 80
    assert _title(["ray::IDLE", "", ""]) == "ray::IDLE"  # a title Ray set in place of argv
    assert _title([""]) == ""  # between fork and exec


@pytest.mark.ray
def test_sweep_start_orders_the_driver_phases_workers_and_trials():
    events = run_json("benchmarks.diagnostics.sweep_start", "--trials", "1", "--epochs", "1")
    first = {}
    for e in events:
        first.setdefault(e["event"], e["t_s"])
    assert [e["t_s"] for e in events] == sorted(e["t_s"] for e in events)
    trial = [name for name in first if name.startswith("trial ") and name.endswith(" starts")]
    assert len(trial) == 1
    starts, ends = first[trial[0]], first[trial[0].replace(" starts", " ends")]
    assert (first["run_command begins"] <= first["init_ray begins"] < first["init_ray ends"]
            <= first["Tuner.fit begins"] < starts < ends <= first["Tuner.fit ends"] <= first["run_command ends"])
    titles: dict[str, float] = {}
    for e in events:
        if e["event"].startswith("process "):
            titles.setdefault(e["event"].split(": ", 1)[1], e["t_s"])
    # Tune's trial worker: idle once Python and Ray are up, then loading the trainable, before the trial
    # (the loading title lasts a fraction of a second: the sampler can fall between its polls)
    assert titles["ray::IDLE"] < starts
    if "ray::ImplicitFunc.__init__" in titles:
        assert titles["ray::IDLE"] < titles["ray::ImplicitFunc.__init__"] <= starts
    assert any("gcs_server" in t for t in titles) and any("raylet" in t for t in titles)
    assert all(e["cpu_s"] >= 0 for e in events if "cpu_s" in e)


def test_compile_retrain_eager_side_is_deterministic_and_bad_modes_are_refused():
    tiny = ["--layers", "2", "--channels", "4", "--batch", "2", "--steps", "2"]
    result = run_json("benchmarks.compile_retrain", *tiny, "--modes", "eager,eager")
    first, second = result["runs"]
    assert [first["mode"], second["mode"]] == ["eager", "eager"]
    assert len(first["losses"]) == 3 and all(0 < v < 10 for v in first["losses"])
    assert first["losses"] == second["losses"]  # same weights, batch and seed: the drift in the ratio is the machine's
    assert first["step_ms"] > 0 and "speed_compiled_vs_eager" not in result  # no compiled run, no ratio
    done = subprocess.run([sys.executable, "-m", "benchmarks.compile_retrain", "--modes", "eager,jit"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "allowed: eager, compiled" in done.stderr


def test_compile_retrain_ratios_are_against_the_mean_eager_run():
    from benchmarks.compile_retrain import summarize

    runs = [{"mode": "eager", "first_step_s": 1.0, "step_ms": 100.0, "losses": [2.0, 1.5]},
            {"mode": "compiled", "first_step_s": 31.1, "step_ms": 55.0, "losses": [2.0, 1.4]},
            {"mode": "eager", "first_step_s": 1.2, "step_ms": 120.0, "losses": [2.0, 1.5]}]
    assert summarize(runs) == {"speed_compiled_vs_eager": 2.0, "compile_s": 30.0, "break_even_steps": 546,
                               "max_loss_gap": 0.1}
    slower = [runs[0], {**runs[1], "step_ms": 150.0}]
    assert summarize(slower)["break_even_steps"] is None  # never ahead
    assert summarize(runs[:1]) == {}
