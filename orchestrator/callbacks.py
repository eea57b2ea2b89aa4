"""Tune callbacks run by the sweep's controller: the results writer, MLflow tracking and the sweep's progress.

The controller runs in the driver (``mgas run``), in the job's driver (``ray job submit``) or on the
head node (``ray://`` clients); the writer puts the files on the sweep's storage in every case.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from orchestrator.collect import write_trial_outputs
from orchestrator.progress import SweepStatus
from orchestrator.results import error_text
from orchestrator.storage import resolve
from orchestrator.tracking import MlflowTracker


def _trial_spec(trial: Any) -> dict[str, Any]:
    return trial.config["trial"]


def _trial_error(trial: Any) -> object:
    try:
        error = trial.get_error()
    except Exception:  # older/newer Trial APIs
        error = None
    return error if error is not None else "trial errored (no message)"


class ResultsWriter(Callback):
    """Writes one trial's row, curves and architecture when it finishes or fails (idempotent:
    the same bytes as ``mgas collect`` rebuilds later from Tune's saved state)."""

    def __init__(self, experiment_uri: str) -> None:
        self.experiment_uri = experiment_uri
        self.written: list[str] = []

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        write_trial_outputs(resolve(self.experiment_uri), _trial_spec(trial),
                            dict(trial.last_result or {}), None, getattr(trial, "checkpoint", None))
        self.written.append(_trial_spec(trial)["trial_id"])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        write_trial_outputs(resolve(self.experiment_uri), _trial_spec(trial),
                            dict(trial.last_result or {}), _trial_error(trial))
        self.written.append(_trial_spec(trial)["trial_id"])


class MlflowCallback(Callback):
    """Every trial as one MLflow run (:mod:`orchestrator.tracking`); after :class:`ResultsWriter`
    in the callback list, so the architecture files it logs are already on the storage."""

    def __init__(self, tracker: MlflowTracker) -> None:
        self.tracker = tracker

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.run_id(_trial_spec(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not result.get("done_trial"):
            self.tracker.log_epoch(_trial_spec(trial), result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = dict(trial.last_result or {})
        self.tracker.finish(_trial_spec(trial), result, None if result.get("status") == "ok" else
                            str(result.get("error") or "trial ended without a final report"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.finish(_trial_spec(trial), dict(trial.last_result or {}), error_text(_trial_error(trial)))


class SweepProgress(Callback):
    """What a running sweep shows. On a terminal: one status line on stderr (counts, each running
    trial's phase and epoch, ETA), redrawn at most every ``refresh_s`` seconds, plus a line per
    finished or failed trial. Elsewhere: a line per started, finished or failed trial only. Every
    per-epoch line goes to ``log_path`` (the experiment's ``progress.log``) when one is given."""

    def __init__(self, trials: list[dict[str, Any]], log_path: str | None = None, refresh_s: float = 2.0,
                 stream: TextIO | None = None) -> None:
        self.status = SweepStatus.of(trials)
        self.log_path = log_path
        self.refresh_s = refresh_s
        self._stream = stream  # None: sys.stderr at write time (keeps the callback picklable)
        self._drawn_at = -float("inf")
        self._live = False

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def _tty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def _log(self, text: str) -> None:
        if self.log_path is not None:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            with open(self.log_path, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.status.counts()} {text}\n")

    def _event(self, text: str) -> None:
        """A line that stays: printed on stderr (above the live line on a terminal) and logged."""
        self._log(text)
        clear = "\r\x1b[2K" if self._live else ""
        self.stream.write(f"{clear}{self.status.counts()} {text}\n")
        self._live = False
        self._redraw(force=True)
        self.stream.flush()

    def _redraw(self, force: bool = False) -> None:
        if not self._tty():
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < self.refresh_s:
            return
        self._drawn_at = now
        self.stream.write("\r\x1b[2K" + self.status.line()[:400])
        self._live = True
        self.stream.flush()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = _trial_spec(trial)["trial_id"]
        self.status.start(tid, time.time())
        self._event(f"{tid}: started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("done_trial"):
            return
        tid = _trial_spec(trial)["trial_id"]
        self.status.epoch(tid, result, time.time())
        progress = self.status.trials[tid]
        self._log(f"{tid}: {progress.phase} epoch {progress.phase_text().split(' ', 1)[1]} "
                  f"loss {result.get('loss', float('nan')):.3f} val_acc {result.get('val_acc', float('nan')):.3f}")
        self._redraw()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = _trial_spec(trial)["trial_id"]
        result = trial.last_result or {}
        ok = result.get("status") == "ok"
        self.status.finish(tid, ok)
        if ok:
            self._event(f"{tid}: done test_acc {result.get('test_acc', float('nan')):.4f} "
                        f"params {result.get('nonzero_params_m', float('nan')):.4f}M")
        else:
            self._event(f"{tid}: FAILED {result.get('error')}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event(f"{_trial_spec(trial)['trial_id']}: errored, restarting from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = _trial_spec(trial)["trial_id"]
        self.status.finish(tid, False)
        self._event(f"{tid}: FAILED {error_text(_trial_error(trial))}")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._live:
            self.stream.write("\n")
            self.stream.flush()
            self._live = False
