"""Inside a trial, without Ray: one retry after a device out-of-memory, determinism flags, data
settings resolved where the trial runs, downloads under a file lock."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from mgas_core.data import download_lock, loader_workers, resolve_data_settings
from mgas_core.files.checkpoints import load_checkpoint, save_checkpoint
from mgas_core.settings.run import DataSettings
from orchestrator.spec import expand_trials, load_spec
from orchestrator.trainable import ARCH_STATE_KEY, TrialFailed, run_trial, run_trial_pipeline
from tests.orchestrator.helpers import write_spec


class MemoryReporter:
    """Keeps every epoch's state as a checkpoint file, as the Tune reporter keeps its newest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.latest: Path | None = None
        self.epochs = 0

    def __call__(self, metrics, state_fn) -> None:
        self.epochs += 1
        self.latest = save_checkpoint(state_fn(), self.folder / f"state_{self.epochs}.pt")

    def last_state(self):
        return load_checkpoint(self.latest) if self.latest else None


def _trial(tmp_path, **fields):
    spec, _ = load_spec(write_spec(tmp_path, sweep={"method": ["darts"], "seed": [0]}, **fields))
    return expand_trials(spec)[0]


def _inject(monkeypatch, error: type[BaseException], at_calls: set[int]) -> dict:
    from mgas_core.methods.darts import Darts

    calls = {"n": 0}
    original = Darts.train_step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] in at_calls:
            raise error("injected: CUDA out of memory. Tried to allocate 3.2 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Darts, "train_step", step)
    return calls


@pytest.mark.slow
def test_one_device_oom_is_retried_from_the_last_checkpoint_and_recorded(tmp_path, monkeypatch):
    trial = _trial(tmp_path)
    undisturbed = run_trial_pipeline(trial, None, lambda metrics, state_fn: None)
    _inject(monkeypatch, torch.OutOfMemoryError, {3})  # in search epoch 1 (2 steps per epoch)
    final = run_trial(trial, None, MemoryReporter(tmp_path))
    events = json.loads(final["events_json"])
    retries = [e for e in events if e["type"] == "oom_retry"]
    assert len(retries) == 1 and "out of memory in search at batch size 16" in retries[0]["detail"]
    assert final["attempts"] == 2
    for key in ("arch_json", "test_acc", "val_acc", "search_val_acc", "params_m"):  # same as undisturbed
        assert final[key] == undisturbed[key], key
    assert final[ARCH_STATE_KEY]["json"] == undisturbed[ARCH_STATE_KEY]["json"]


def test_second_oom_and_host_memory_error_fail_the_trial(tmp_path, monkeypatch):
    trial = _trial(tmp_path)
    _inject(monkeypatch, torch.OutOfMemoryError, set(range(3, 1000)))
    with pytest.raises(TrialFailed, match=r"hint: lower search.batch_size .*\(again after one retry\)"):
        run_trial(trial, None, MemoryReporter(tmp_path))
    monkeypatch.undo()
    _inject(monkeypatch, MemoryError, {3})
    with pytest.raises(TrialFailed) as info:
        run_trial(trial, None, MemoryReporter(tmp_path))
    assert "again" not in str(info.value)  # host memory is not retried


def test_deterministic_sets_the_flags_for_the_trial_only_and_is_recorded(tmp_path, monkeypatch):
    seen = {}
    from mgas_core.methods.darts import Darts

    original = Darts.train_step

    def step(self, *args, **kwargs):
        seen["flags"] = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                         torch.backends.cudnn.benchmark)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Darts, "train_step", step)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    final = run_trial_pipeline(_trial(tmp_path, deterministic=True), None, lambda metrics, state_fn: None)
    assert seen["flags"] == (True, True, False) and final["deterministic"] is True
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic) == before


def test_data_settings_are_resolved_where_the_trial_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = resolve_data_settings(DataSettings(name="cifar10", root="~/data"), 4, tmp_path)
    assert home.root == str(tmp_path / "home" / "data") and home.workers == 3
    relative = resolve_data_settings(DataSettings(name="cifar10", root="data/c10", workers=0), 8, tmp_path / "wd")
    assert relative.root == str(tmp_path / "wd" / "data" / "c10") and relative.workers == 0
    assert loader_workers(None, 1) == 0 and loader_workers(None, None) == 0 and loader_workers(None, 64) == 16


def _hold_lock(root: str, log: str, hold_s: float) -> None:
    with download_lock(Path(root), True):
        with open(log, "a") as fh:
            fh.write(f"enter {time.monotonic()}\n")
        time.sleep(hold_s)  # the "download" this lock protects
        with open(log, "a") as fh:
            fh.write(f"exit {time.monotonic()}\n")


def test_downloads_of_one_root_never_overlap(tmp_path):
    log = tmp_path / "log.txt"
    ctx = multiprocessing.get_context("fork")  # the child only needs the lock, not a fresh interpreter
    procs = [ctx.Process(target=_hold_lock, args=(str(tmp_path / "root"), str(log), 0.3)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    events = [line.split() for line in log.read_text().splitlines()]
    assert [kind for kind, _ in events] == ["enter", "exit"] * 3  # one at a time


def test_a_copy_without_git_takes_its_revision_from_the_environment(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    import mgas_core.engine.provenance as provenance

    (tmp_path / "mgas_core" / "engine").mkdir(parents=True)
    (tmp_path / "mgas_core" / "__init__.py").write_text("")
    (tmp_path / "mgas_core" / "engine" / "__init__.py").write_text("")
    shutil.copy(provenance.__file__, tmp_path / "mgas_core" / "engine" / "provenance.py")  # as a working_dir upload
    code = "import sys; sys.path.insert(0, sys.argv[1]); from mgas_core.engine.provenance import git_revision; " \
           "print(git_revision())"
    env = {**os.environ, "MGAS_GIT_SHA": "abc123", "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.stdout.strip() == "abc123", done.stderr


@pytest.mark.slow
def test_an_mgas_trial_that_misses_its_target_says_so_in_its_row(tmp_path):
    from orchestrator.results import row_from_result

    spec, _ = load_spec(write_spec(tmp_path, sweep={"method": ["mgas"], "target_params": [0.002], "seed": [0]}))
    trial = expand_trials(spec)[0]
    final = run_trial_pipeline(trial, None, lambda metrics, state_fn: None)
    row = row_from_result(trial, {**final, "done_trial": True})
    assert row["status"] == "ok" and row["target_reached"] is False
    nonzero = row["nonzero_params_m"]
    assert row["target_gap"] == pytest.approx(nonzero / 0.002 - 1, rel=1e-6) and row["target_gap"] > 0


GOLD_SERIES = {"search.epochs": 5, "search.layers": 3, "search.channels": 6, "search.nodes": 3,
               "search.gold_nas.snapshot": "epoch", "search.gold_nas.control.lambda0": 0.2,
               "search.gold_nas.w_lr": 0.05, "retrain.epochs": 1}


def _gold_series_trial(tmp_path):
    spec, _ = load_spec(write_spec(tmp_path, sweep={"method": ["gold_nas"], "seed": [0]}, base=GOLD_SERIES))
    return expand_trials(spec)[0]


@pytest.mark.slow
def test_every_gold_nas_snapshot_is_retrained_into_a_row_of_its_own(tmp_path):
    from orchestrator.results import rows_from_result

    trial = _gold_series_trial(tmp_path)
    final = run_trial_pipeline(trial, None, lambda metrics, state_fn: None)
    rows = rows_from_result(trial, {**final, "done_trial": True})
    snapshots = json.loads(final["snapshots_json"])
    assert len(rows) == len(snapshots) >= 3
    assert [r["snapshot_index"] for r in rows] == [s["index"] for s in snapshots]
    sizes = [r["nonzero_params_m"] for r in rows]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)  # strictly decreasing
    # each row is its own architecture, retrained: its size is the snapshot's, its metrics its own
    assert [round(r["params_m"] * 1e6) for r in rows] == [s["params"] for s in snapshots]
    assert len({r["arch_json"] for r in rows}) == len(rows) and len({r["test_acc"] for r in rows}) >= 1
    assert [r["snapshot_final"] for r in rows] == [False] * (len(rows) - 1) + [True]
    assert all(r["trial_id"] == trial["trial_id"] and r["status"] == "ok" for r in rows)
    history = json.loads(final["history_json"])
    retrain = [h for h in history if h["phase"] == "retrain"]
    assert [h["snapshot_index"] for h in retrain] == [s["index"] for s in snapshots]  # 1 epoch each


@pytest.mark.slow
def test_a_trial_resumed_in_the_middle_of_its_snapshot_series_ends_as_an_undisturbed_one(tmp_path):
    trial = _gold_series_trial(tmp_path)
    undisturbed = run_trial_pipeline(trial, None, lambda metrics, state_fn: None)
    states = []
    run_trial_pipeline(trial, None, lambda metrics, state_fn: states.append((metrics, state_fn())))
    middle = next(state for metrics, state in states
                  if metrics.get("phase") == "retrain" and len(state["retrained"]) == 2)
    resumed = run_trial_pipeline(trial, middle, lambda metrics, state_fn: None)
    for key in ("test_acc", "val_acc", "nonzero_params_m", "arch_json", "snapshots_json"):
        assert resumed[key] == undisturbed[key], key
    measured = ("retrain_time_s", "retrain_peak_mem_mb", "latency_ms")  # times and memory differ from run to run
    assert [{k: v for k, v in r.items() if k not in measured} for r in json.loads(resumed["snapshot_rows_json"])] \
        == [{k: v for k, v in r.items() if k not in measured} for r in json.loads(undisturbed["snapshot_rows_json"])]


@pytest.mark.slow
def test_a_width_scaled_genotype_says_whether_its_nearest_width_is_within_tolerance(tmp_path):
    from orchestrator.results import row_from_result

    for target, tolerance in ((0.01, 0.5), (0.0123, 1e-9)):
        spec, _ = load_spec(write_spec(tmp_path, sweep={"method": ["darts"], "target_params": [target], "seed": [0]},
                                       base={"retrain.target_tolerance": tolerance, "retrain.channels": None}))
        trial = expand_trials(spec)[0]
        final = run_trial_pipeline(trial, None, lambda metrics, state_fn: None)
        row = row_from_result(trial, {**final, "done_trial": True})
        gap = row["nonzero_params_m"] / target - 1
        assert row["target_gap"] == pytest.approx(gap)
        assert row["target_reached"] is (abs(gap) <= tolerance)


def test_a_compiled_retraining_the_node_cannot_build_fails_the_trial_before_its_search(tmp_path, monkeypatch,
                                                                                      no_such_cxx):
    # on a cluster only the node knows its compiler: the trial fails (recorded, not retried) at once
    from mgas_core.methods.darts import Darts

    monkeypatch.setattr(Darts, "train_step", lambda *a, **k: pytest.fail("the search ran"))
    trial = _trial(tmp_path, base={"retrain.compile": True})
    with pytest.raises(TrialFailed, match=r"retrain\.compile: Inductor on CPU builds C\+\+ kernels with "
                                          r"no-such-compiler"):
        run_trial(trial, None, MemoryReporter(tmp_path))
