"""Ctrl-C means stop: ``mgas run`` interrupted while it starts (its modules loading), while Ray
starts, or mid-sweep ends with ``mgas: interrupted`` and exit 130, no traceback and no Ray left
running; a sweep stopped so saves its state first, and ``--resume`` then completes it with every
trial's row exactly once. The signal goes to the command's process group, as a terminal's Ctrl-C
does; each test ends only the processes it started."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from orchestrator.results import read_rows
from tests.orchestrator.helpers import plant_payloads
from tests.processes import kill_process_tree, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]


def write_spec(folder: Path, epochs: int) -> Path:
    spec = {"name": "cc", "output_dir": "out", "dataset": "synthetic", "preset": "smoke",
            "sweep": {"method": ["darts"], "seed": [0, 1]}, "base": {"search.epochs": epochs},
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 2}
    path = folder / "cc.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class Command:
    """``python -m orchestrator ARGS`` (the ``mgas`` entry point) in a session of its own, its
    stderr lines collected as they come."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def _drain(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)

    def said(self, text: str) -> Callable[[], bool]:
        return lambda: text in self._drain()

    def ctrl_c(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)

    def left_running(self) -> list[psutil.Process]:
        """Processes of the command's session still alive (Ray's, once its driver has exited)."""
        out = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.process.pid and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
            except (OSError, psutil.Error):
                continue
        return out

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        """Wait for the command to exit and for its session's other processes (Ray's) to end with
        it; ``leftover`` names those still alive after 60 s, which are then ended by pid."""
        try:
            rc = self.process.wait(timeout=timeout)
        finally:
            kill_process_tree(self.process.pid)
        self.reader.join(timeout=30)
        with contextlib.suppress(AssertionError):  # named below, then ended
            wait_for(lambda: not self.left_running(), 60, "the command's Ray processes to end")
        self.leftover = [proc.name() for proc in self.left_running()]
        for proc in self.left_running():
            kill_process_tree(proc.pid)
        return rc, self._drain()


def maps_hold(pid: int, library: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return library in Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return False
    return check


def assert_interrupted(rc: int, err: str) -> None:
    assert rc == 130, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "mgas: interrupted" and "Traceback" not in err, err[-3000:]


def test_ctrl_c_while_the_command_loads_its_modules(tmp_path):
    command = Command(["run", str(write_spec(tmp_path, 2))])
    wait_for(maps_hold(command.process.pid, "libtorch"), 120, "torch being loaded")
    command.ctrl_c()
    rc, err = command.finish()
    assert_interrupted(rc, err)
    assert not (tmp_path / "out").exists()


def test_ctrl_c_while_ray_starts_then_resume_runs_the_sweep(tmp_path):
    spec = write_spec(tmp_path, 2)
    command = Command(["run", str(spec)])
    sessions = Path(os.environ["RAY_TMPDIR"])
    before = set(sessions.rglob("session_*"))
    wait_for(lambda: set(sessions.rglob("session_*")) - before, 120, "a Ray session being created")
    command.ctrl_c()
    rc, err = command.finish()
    assert_interrupted(rc, err)
    assert command.leftover == []  # no Ray left running
    resumed = Command(["run", str(spec), "--resume"])
    rc, err = resumed.finish()
    assert rc == 0, err[-3000:]
    assert sorted(r["trial_id"] for r in read_rows(tmp_path / "out" / "cc")) == ["darts_seed0", "darts_seed1"]


def test_ctrl_c_mid_sweep_saves_the_state_and_resume_completes_it(tmp_path):
    spec = write_spec(tmp_path, 16)
    command = Command(["run", str(spec)])
    wait_for(command.said(": started"), 180, "a trial starting")
    command.ctrl_c()
    rc, err = command.finish()
    assert_interrupted(rc, err)
    assert command.leftover == []
    assert "interrupted: 0/2 trials ok, 2 not finished" in err
    assert read_rows(tmp_path / "out" / "cc") == []  # an interrupted trial is not a failed one
    resumed = Command(["run", str(spec), "--resume"])
    rc, err = resumed.finish()
    assert rc == 0 and "resuming sweep" in err, err[-3000:]
    rows = read_rows(tmp_path / "out" / "cc")
    assert sorted((r["trial_id"], r["status"]) for r in rows) == [("darts_seed0", "ok"), ("darts_seed1", "ok")]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_copied_sweep_folder_resumes_in_the_copy_and_leaves_the_original_alone(tmp_path):
    spec = write_spec(tmp_path, 16)
    command = Command(["run", str(spec), "--mlflow"])
    wait_for(command.said(": started"), 180, "a trial starting")
    command.ctrl_c()
    assert_interrupted(*command.finish())
    original = tmp_path / "out" / "cc"
    copy = tmp_path / "elsewhere"
    shutil.copytree(original, copy / "cc")
    marker = tmp_path / "payload_ran"
    plant_payloads(copy / "cc" / "tune", marker)  # the copy came from someone else: data, never code
    before = files_of(original)
    resumed = Command(["run", str(spec), "--out", str(copy), "--resume", "--mlflow"])
    rc, err = resumed.finish()
    assert rc == 0 and "resuming sweep" in err, err[-3000:]
    assert not marker.exists()
    assert files_of(original) == before  # no row, progress line, MLflow run or state written into the original
    rows = read_rows(copy / "cc")
    assert sorted((r["trial_id"], r["status"]) for r in rows) == [("darts_seed0", "ok"), ("darts_seed1", "ok")]
    assert "darts_seed0: done" in (copy / "cc" / "progress.log").read_text()
    from mlflow import MlflowClient  # the copy's own tracking store: one finished run per trial

    client = MlflowClient(tracking_uri=f"sqlite:///{copy / 'cc' / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cc").experiment_id])
    assert sorted((r.data.tags["mgas.trial_id"], r.info.status) for r in runs) == [
        ("darts_seed0", "FINISHED"), ("darts_seed1", "FINISHED")]
    assert all(r.info.artifact_uri.startswith((copy / "cc" / "mlruns" / "artifacts").as_uri()) for r in runs)
    assert len(list((copy / "cc" / "mlruns" / "artifacts").rglob("arch.json"))) == 2
