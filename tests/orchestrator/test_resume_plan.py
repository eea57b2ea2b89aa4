"""What ``--resume`` runs, read from a sweep folder's JSON and checkpoint folders (no Ray): finished
trials are kept, the others continue from their newest checkpoint or start again, the newest
attempt of a trial is its state, and a spec that changed is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mgas_common.errors import UserInputError
from orchestrator.resume import SweepRecord, plan_resume, trial_folder_name
from orchestrator.spec import expand_trials, load_spec
from orchestrator.storage import resolve
from tests.orchestrator.helpers import write_spec


def trials_of(tmp_path: Path, **fields) -> list[dict]:
    spec, _ = load_spec(write_spec(tmp_path, sweep={"method": ["darts"], "seed": [0, 1, 2]}, **fields))
    return expand_trials(spec)


def save_trial(run: Path, trial: dict, folder: str, results: list[dict], checkpoints: int = 0,
               error: str | None = None) -> Path:
    path = run / folder
    path.mkdir(parents=True)
    (path / "params.json").write_text(json.dumps({"trial": trial}))
    (path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
    for k in range(checkpoints):
        (path / f"checkpoint_{k:06d}").mkdir()
    if error:
        (path / "error.txt").write_text(error)
    return path


def test_finished_trials_are_kept_the_others_continue_from_their_newest_checkpoint(tmp_path):
    trials = trials_of(tmp_path)
    run = tmp_path / "sweep" / "tune"
    save_trial(run, trials[0], "darts_seed0", [{"epoch": 0}, {"done_trial": True, "status": "ok"}], checkpoints=2)
    crashed = save_trial(run, trials[1], "darts_seed1", [{"epoch": 0}, {"epoch": 1}], checkpoints=3, error="killed")
    # darts_seed2 never started
    plan = plan_resume(resolve(run), trials)
    assert [s.trial["trial_id"] for s in plan.finished] == ["darts_seed0"]
    assert [t["trial_id"] for t in plan.to_run] == ["darts_seed1", "darts_seed2"]
    assert plan.to_run[0]["resume_from"] == str(crashed / "checkpoint_000002")
    assert "resume_from" not in plan.to_run[1]
    assert plan.describe() == "1 trial(s) finished, 1 continue from a checkpoint, 1 start from the beginning"
    assert plan.record.attempts == 2 and all(t["attempt"] == 1 for t in plan.to_run)

    class TuneTrial:  # what Tune hands trial_dirname_creator
        config = {"trial": plan.to_run[0]}

    assert trial_folder_name(TuneTrial()) == "darts_seed1-resume1"


def test_the_newest_attempt_of_a_trial_is_its_state(tmp_path):
    trials = trials_of(tmp_path)
    run = tmp_path / "sweep" / "tune"
    SweepRecord("abc", 2).write(resolve(run))
    save_trial(run, trials[0], "darts_seed0", [{"epoch": 0}], checkpoints=1)
    save_trial(run, {**trials[0], "attempt": 1}, "darts_seed0-resume1", [{"done_trial": True, "status": "ok"}])
    save_trial(run, trials[1], "darts_seed1", [{"epoch": 0}], checkpoints=1)
    newer = save_trial(run, {**trials[1], "attempt": 1}, "darts_seed1-resume1", [{"epoch": 3}], checkpoints=2)
    plan = plan_resume(resolve(run), trials)
    assert plan.record == SweepRecord("abc", 3)  # the sweep keeps its id (its MLflow runs) across resumes
    assert [s.trial["trial_id"] for s in plan.finished] == ["darts_seed0"]
    assert plan.to_run[0]["resume_from"] == str(newer / "checkpoint_000001")
    assert plan.to_run[0]["attempt"] == 2


def test_nothing_saved_is_nothing_to_resume(tmp_path):
    assert plan_resume(resolve(tmp_path / "sweep" / "tune"), trials_of(tmp_path)) is None


def test_a_changed_spec_is_refused_in_one_line(tmp_path):
    saved = trials_of(tmp_path)
    run = tmp_path / "sweep" / "tune"
    save_trial(run, saved[0], "darts_seed0", [{"epoch": 0}], checkpoints=1)
    changed = trials_of(tmp_path, base={"search.epochs": 5})
    with pytest.raises(UserInputError, match=r"trial darts_seed0's settings.search differ .*run without --resume"):
        plan_resume(resolve(run), changed)


def test_a_damaged_sweep_record_is_refused(tmp_path):
    run = tmp_path / "sweep" / "tune"
    run.mkdir(parents=True)
    (run / "sweep.json").write_text("{not json")
    with pytest.raises(UserInputError, match=r"sweep.json: not a sweep record of mgas"):
        plan_resume(resolve(run), trials_of(tmp_path))
