"""A sweep whose driver process is killed is resumed with --resume: only unfinished trials run, and
the rows of the trials that had finished are rewritten from Tune's state."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from orchestrator.results import read_rows
from tests.orchestrator.helpers import write_spec

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # Ray tests run one after another


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's whole process group and any Ray process it left behind."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if f"mgas-ray-{os.getuid()}" in cmd:
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def test_killed_driver_then_resume_runs_only_unfinished_trials(tmp_path):
    path = write_spec(tmp_path, name="resume", sweep={"method": ["darts"], "seed": [0, 1]},
                      max_concurrent_trials=1, base={"search.epochs": 3})
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(path)]
    experiment_dir = tmp_path / "out" / "resume"
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(read_rows(experiment_dir)) < 1:
            time.sleep(0.2)
        time.sleep(2.5)  # let Tune persist the sweep state that records the finished trial
    finally:
        _kill_session(proc)
    before = {r["trial_id"]: r["finished_at"] for r in read_rows(experiment_dir)}
    assert len(before) == 1, before

    shutil.rmtree(experiment_dir / "results")  # as if the head's disk was lost: the restore rewrites the row
    done = subprocess.run([*cmd, "--resume", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming sweep" in done.stdout
    rows = read_rows(experiment_dir)
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(r["status"] == "ok" for r in rows)
    after = {r["trial_id"]: r["finished_at"] for r in rows}
    for trial_id, finished in before.items():  # finished trials were not run again
        assert after[trial_id] == finished
