"""A sweep whose driver process is killed is resumed with --resume: only unfinished trials run, and
the rows of the trials that had finished are rewritten from their saved results; the unfinished one
continues from its newest checkpoint, and no pickle of the folder is loaded.

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

from mgas_common.errors import UserInputError
from orchestrator.collect import latest_saved_trials
from orchestrator.results import read_rows
from orchestrator.storage import resolve
from tests.orchestrator.helpers import plant_payloads, write_spec
from tests.processes import kill_process_tree, private_ray_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # Ray tests run one after another (tests/conftest.py)


def saved_state(run_dir: Path) -> dict[str, str]:
    """Each trial of the sweep's saved state as `--resume` reads it: "finished", "checkpoint" (it
    continues from one) or "none" (it starts again)."""
    try:
        saved = latest_saved_trials(resolve(run_dir)) if run_dir.is_dir() else {}
    except UserInputError:  # a result line being written right now
        return {}
    return {tid: "finished" if s.result.get("done_trial") and s.error is None else
            "checkpoint" if s.checkpoint is not None else "none" for tid, s in saved.items()}


def test_killed_driver_then_resume_runs_only_unfinished_trials(tmp_path):
    # the second trial is much longer than the first (30 retraining epochs: a wide window on a loaded
    # machine), so it is still running when the driver dies
    path = write_spec(tmp_path, name="resume", sweep={"method": ["darts"], "seed": [0]},
                      include=[{"method": "darts", "seed": 1, "retrain.epochs": 30}],
                      max_concurrent_trials=1, base={"search.epochs": 3})
    experiment_dir = tmp_path / "out" / "resume"
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(path)]
    with private_ray_env():
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([*cmd, "--mlflow"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: len(read_rows(experiment_dir)) >= 1 or proc.poll() is not None, 300,
                     "the first trial's result row")
            wait_for(lambda: sorted(saved_state(experiment_dir / "tune").values()) == ["checkpoint", "finished"]
                     or proc.poll() is not None, 120,
                     "the saved state: one trial finished, the other with a checkpoint")
        finally:
            ended = kill_process_tree(proc.pid)
            proc.wait(timeout=30)
        assert proc.pid in ended
        before = {r["trial_id"]: r["finished_at"] for r in read_rows(experiment_dir)}
        assert len(before) == 1, before

        shutil.rmtree(experiment_dir / "results")  # as if the head's disk was lost: the restore rewrites the row
        marker = tmp_path / "payload_ran"
        assert len(plant_payloads(experiment_dir / "tune", marker)) >= 4  # --resume reads no pickle
        done = subprocess.run([*cmd, "--mlflow", "--resume", "--json"], env=env, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming sweep" in done.stderr
    assert "1 trial(s) finished, 1 continue from a checkpoint, 0 start from the beginning" in done.stderr
    assert not marker.exists()
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
