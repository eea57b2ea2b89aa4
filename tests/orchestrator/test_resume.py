"""A sweep whose driver process is killed is resumed with --resume: only unfinished trials run, and
the rows of the trials that had finished are rewritten from Tune's state.

Safe beside real work: the driver runs with a Ray temp folder of its own (so it shares nothing
with a `mgas run` of the same user), and the test ends exactly the processes it started: the
driver and its descendants, by pid. It waits on conditions (a finished trial's row, Tune's saved
sweep state recording it), never for a fixed time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.results import read_rows
from tests.orchestrator.helpers import write_spec
from tests.processes import kill_process_tree, private_ray_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # Ray tests run one after another (tests/conftest.py)


def terminated_in_saved_state(run_dir: Path) -> set[str]:
    """Trial ids Tune's newest saved sweep state records as finished (what `--resume` will skip)."""
    states = sorted(run_dir.glob("experiment_state-*.json"))
    if not states:
        return set()
    try:
        data = json.loads(states[-1].read_text())
    except (json.JSONDecodeError, OSError):  # being rewritten right now
        return set()
    done = set()
    for trial_state, _ in data.get("trial_data", []):
        state = json.loads(trial_state) if isinstance(trial_state, str) else trial_state
        if state.get("status") == "TERMINATED":
            done.add(state.get("trial_id"))
    return done


def test_killed_driver_then_resume_runs_only_unfinished_trials(tmp_path):
    # the second trial is much longer than the first, so it is still running when the driver dies
    path = write_spec(tmp_path, name="resume", sweep={"method": ["darts"], "seed": [0]},
                      include=[{"method": "darts", "seed": 1, "retrain.epochs": 6}],
                      max_concurrent_trials=1, base={"search.epochs": 3})
    experiment_dir = tmp_path / "out" / "resume"
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(path)]
    with private_ray_env():
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([*cmd, "--mlflow"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: len(read_rows(experiment_dir)) >= 1 or proc.poll() is not None, 300,
                     "the first trial's result row")
            wait_for(lambda: terminated_in_saved_state(experiment_dir / "tune") or proc.poll() is not None,
                     60, "Tune's saved sweep state to record the finished trial")
        finally:
            ended = kill_process_tree(proc.pid)
            proc.wait(timeout=30)
        assert proc.pid in ended
        before = {r["trial_id"]: r["finished_at"] for r in read_rows(experiment_dir)}
        assert len(before) == 1, before

        shutil.rmtree(experiment_dir / "results")  # as if the head's disk was lost: the restore rewrites the row
        done = subprocess.run([*cmd, "--mlflow", "--resume", "--json"], env=env, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming sweep" in done.stderr
    summary = json.loads(done.stdout)  # --json: the summary object is all there is on stdout
    assert summary["resumed"] is True and summary["ok"] == 2
    rows = read_rows(experiment_dir)
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(r["status"] == "ok" for r in rows)
    after = {r["trial_id"]: r["finished_at"] for r in rows}
    for trial_id, finished in before.items():  # finished trials were not run again
        assert after[trial_id] == finished
    # the restored sweep keeps tracking into the same runs: still one MLflow run per trial
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=summary["mlflow"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert sorted(r.data.tags["mgas.trial_id"] for r in runs) == sorted(ids)
    assert all(r.info.status == "FINISHED" for r in runs)
