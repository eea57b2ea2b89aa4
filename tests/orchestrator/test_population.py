"""The network-level multi-objective search: the block library, the spec's checks, and a population
on embedded Ray whose driver is killed and resumed (no finished candidate runs again, the study
goes on), with its non-dominated set recomputed here from the rows and read back from the figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import yaml

from analysis.aggregate import pareto_front
from mgas_common.errors import UserInputError
from mgas_core.space.architecture import architecture_from_json
from mgas_core.space.builtin_architectures import DARTS_V1, DARTS_V2
from orchestrator.population import PopulationSpec, block_library
from orchestrator.results import read_rows
from orchestrator.spec import expand_trials, load_spec
from tests.orchestrator.helpers import write_spec
from tests.processes import kill_process_tree, private_ray_env, wait_for

matplotlib.use("Agg")


def _row(trial_id: str, arch: dict, snapshot: int | None = None, status: str = "ok", method: str = "darts") -> dict:
    return {"trial_id": trial_id, "status": status, "method": method, "snapshot_index": snapshot,
            "arch_json": json.dumps(arch)}


def test_the_block_library_takes_each_stage_pair_once_without_widths():
    per_cell = DARTS_V2.cells_for(5)
    cells = {"format": "mgas-architecture", "version": 1, "name": "g", "nodes": 4, "channels": 8,
             "cells": [c.to_json() for c in per_cell]}
    cells["cells"][0]["ops"][0]["widths"] = {"out": [0, 1]}
    rows = [_row("a", DARTS_V1.to_json()), _row("b", DARTS_V1.to_json()),  # the same genotype twice: one block
            _row("c", cells, snapshot=0, method="gold_nas"), _row("d", DARTS_V2.to_json(), status="failed"),
            _row("e", DARTS_V2.to_json(), method="network_mo")]  # candidates never feed the library
    blocks = block_library(rows)
    # DARTS_V1 once; the per-cell one: stage 1 (cell 0 + reduction 1), stage 2 (cell 2 + reduction 3),
    # stage 3 (cell 4 + the last reduction) are all DARTS_V2's pair: one block
    assert len(blocks) == 2
    parsed = [architecture_from_json(b) for b in blocks]
    assert parsed[0].normal.to_json() == DARTS_V1.normal.to_json()
    assert parsed[1].normal.to_json() == DARTS_V2.normal.to_json() and parsed[1].reduce.to_json() == \
        DARTS_V2.reduce.to_json()
    assert parsed[1].meta["source"] == "c#0"
    assert all("widths" not in json.dumps(b) for b in blocks)


def test_population_settings_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="width 7"):
        PopulationSpec(widths=[8, 7])
    with pytest.raises(ValueError, match="cells_per_stage"):
        PopulationSpec(cells_per_stage=(3, 1))
    path = write_spec(tmp_path, name="pop", sweep={"method": ["network_mo"], "seed": [0]}, population={"size": 4})
    with pytest.raises(UserInputError, match="network_mo is the population's candidates"):
        load_spec(path)
    path = write_spec(tmp_path, name="pop", sweep={"seed": [0]}, population={"size": 4,
                                                                             "settings": {"retrain.epoch": 2}})
    with pytest.raises(UserInputError, match=r"population.settings: unknown setting 'retrain.epoch'"):
        load_spec(path)
    path = write_spec(tmp_path, name="pop", sweep={"seed": [0]},
                      population={"objective": "latency", "settings": {"retrain.latency_runs": 0}})
    with pytest.raises(UserInputError, match=r"population\.objective latency needs the candidates' measured latency"):
        load_spec(path)
    path = write_spec(tmp_path, name="pop", sweep={"seed": [0]}, population={"size": 4})
    spec, _ = load_spec(path)
    assert [t["settings"]["search"]["method"] for t in expand_trials(spec)] == ["gold_nas"]  # the default blocks


def _front_from_rows(rows: list[dict]) -> set[str]:
    import pandas as pd

    frame = pd.DataFrame([{"cost": r["nonzero_params_m"], "acc": r["val_acc"]} for r in rows])
    mask = pareto_front(frame, "cost", "acc")
    return {r["trial_id"] for r, on in zip(rows, mask) if on}


@pytest.mark.slow
@pytest.mark.ray
def test_a_population_is_killed_and_resumed_without_repeating_finished_candidates(tmp_path):
    path = write_spec(tmp_path, name="pop", sweep={"method": ["gold_nas"], "seed": [0]},
                      population={"size": 2, "generations": 2, "seed": 0, "cells_per_stage": [1, 2],
                                  "widths": [4, 8], "settings": {"retrain.epochs": 2, "retrain.latency_runs": 0}},
                      max_concurrent_trials=1)
    experiment = tmp_path / "out" / "pop"
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(path)]

    def candidates() -> list[dict]:
        try:
            return [r for r in read_rows(experiment) if r["method"] == "network_mo"]
        except Exception:  # a file being replaced right now
            return []

    with private_ray_env():
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: len(candidates()) >= 1 or proc.poll() is not None, 300, "a finished candidate")
        finally:
            ended = kill_process_tree(proc.pid)
            proc.wait(timeout=30)
        assert proc.pid in ended
        before = {r["trial_id"]: r["finished_at"] for r in candidates()}
        assert 1 <= len(before) < 4, before
        done = subprocess.run([*cmd, "--resume", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(before)} candidate(s) finished, {4 - len(before)} to run" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["population"]["candidates"] == 4
    rows = candidates()
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    after = {r["trial_id"]: r["finished_at"] for r in rows}
    for trial_id, finished in before.items():  # a finished candidate was not run again
        assert after[trial_id] == finished
    assert {r["generation"] for r in rows} == {0, 1}  # NSGA-II went on to its second generation
    assert all(r["status"] == "ok" and r["cells_per_stage"] for r in rows)
    for r in rows:  # each row is the genome it was given
        axes = json.loads(r["axes_json"])
        assert r["cells_per_stage"] == ",".join(map(str, axes["stage_cells"])) and r["channels"] == axes["width"]
    front = {r["trial_id"] for r in rows if r["non_dominated"]}
    assert front and front == _front_from_rows(rows)  # recomputed here from the rows
    assert summary["population"]["non_dominated"] == sorted(front)
    journal = experiment / "population" / "optuna.journal"
    assert journal.is_file() and (experiment / "population" / "blocks.json").is_file()

    # the report's front, read back from the figure's artists
    from analysis.load import load_results
    from analysis.population import population_front_figure

    figure = population_front_figure(load_results(experiment).ok)
    ax = figure.axes[0]
    step = next(line for line in ax.get_lines() if line.get_label() == "non-dominated set")
    drawn = sorted(zip(step.get_xdata(), step.get_ydata()))
    expected = sorted((r["nonzero_params_m"], r["val_acc"] * 100) for r in rows if r["trial_id"] in front)
    assert len(drawn) == len(expected)
    for (x, y), (cost, acc) in zip(drawn, expected):
        assert (x, y) == (pytest.approx(cost), pytest.approx(acc))
    labels = [c.get_label() for c in ax.collections]
    assert "gold_nas (block stage)" in labels  # the block stage beside the front (no styles: the names)


def test_an_object_store_experiment_with_a_population_is_refused_before_ray(tmp_path):
    from orchestrator.population import local_experiment_path

    with pytest.raises(UserInputError, match="journal is a local file"):
        local_experiment_path("s3://bucket/experiment")
    spec = yaml.safe_load(Path(write_spec(tmp_path, name="p", population={})).read_text())
    assert spec["population"] == {}


def test_the_front_is_marked_on_the_population_objective_the_rows_record(tmp_path):
    from orchestrator.front import mark_front
    from orchestrator.results import write_trial
    from orchestrator.storage import resolve

    experiment = tmp_path / "pop"
    axes = json.dumps({"method": "network_mo", "objective": "latency_ms"})
    # (val_acc, nonzero params, latency): on latency the front is c1, c2, c3; on params it would be c0, c2
    points = {"c0": (0.90, 0.10, 9.0), "c1": (0.95, 0.50, 2.0), "c2": (0.97, 0.20, 8.0), "c3": (0.80, 0.90, 1.0),
              "c4": (0.85, 0.60, 3.0)}
    for tid, (acc, params, latency) in points.items():
        write_trial(experiment, [{"experiment": "pop", "trial_id": tid, "method": "network_mo", "status": "ok",
                                  "val_acc": acc, "nonzero_params_m": params, "latency_ms": latency,
                                  "axes_json": axes}], None)
    write_trial(experiment, [{"experiment": "pop", "trial_id": "c5", "method": "network_mo", "status": "failed",
                              "error": "diverged", "axes_json": axes}], None)
    assert mark_front(resolve(str(experiment))) == ["c1", "c2", "c3"]
    marked = {r["trial_id"]: r["non_dominated"] for r in read_rows(experiment)}
    assert marked == {"c0": False, "c1": True, "c2": True, "c3": True, "c4": False, "c5": False}
    rows = [r for r in read_rows(experiment) if r["status"] == "ok"]
    import pandas as pd

    frame = pd.DataFrame([{"cost": r["latency_ms"], "acc": r["val_acc"]} for r in rows])
    recomputed = {r["trial_id"] for r, on in zip(rows, pareto_front(frame, "cost", "acc")) if on}
    assert recomputed == {"c1", "c2", "c3"}


def test_a_resume_counts_each_candidate_once_and_reruns_the_interrupted_under_its_id():
    import optuna

    from orchestrator.collect import SavedTrial
    from orchestrator.population import prepare_resume

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = optuna.distributions.IntDistribution(1, 3)

    def add(state, values=None, resumes=None, params=1):
        study.add_trial(optuna.trial.create_trial(state=state, values=values, params={"x": params},
                                                  distributions={"x": dist},
                                                  user_attrs={} if resumes is None else {"resumes": resumes}))

    done = {"done_trial": True, "val_acc": 0.9, "nonzero_params_m": 0.1}
    add(optuna.trial.TrialState.COMPLETE, [0.9, 0.1])                       # c0000 finished
    add(optuna.trial.TrialState.FAIL)                                        # c0001 interrupted by an earlier kill
    add(optuna.trial.TrialState.COMPLETE, [0.8, 0.2], resumes=1)             # ... and run again to the end
    add(optuna.trial.TrialState.FAIL, params=2)                              # c0003 failed for real (diverged)
    add(optuna.trial.TrialState.RUNNING, params=3)                           # c0004 running at this kill
    saved = {"network_mo_c0000": SavedTrial({}, done), "network_mo_c0001": SavedTrial({}, done),
             "network_mo_c0003": SavedTrial({}, {"done_trial": True, "status": "failed"}),
             "network_mo_c0004": SavedTrial({}, {"epoch": 1}, checkpoint=type("C", (), {"uri": "/ckpt"})())}
    finished, resume_from = prepare_resume(study, saved)
    assert finished == 3  # c0000, c0001 (once, though two study trials), c0003
    assert resume_from == {"network_mo_c0004": "/ckpt"}
    trials = study.get_trials(deepcopy=False)
    assert trials[4].state == optuna.trial.TrialState.FAIL
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["resumes"] == 4
