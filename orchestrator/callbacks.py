"""Tune callbacks run by the sweep's controller: the results writer and the sweep progress line.

The controller runs in the driver (``mgas run``), in the job's driver (``ray job submit``) or on the
head node (``ray://`` clients); the writer puts the files on the sweep's storage in every case.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ray.tune import Callback

from orchestrator.collect import write_trial_outputs
from orchestrator.results import error_text
from orchestrator.storage import resolve


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
        write_trial_outputs(resolve(self.experiment_uri), _trial_spec(trial), dict(trial.last_result or {}),
                            None, getattr(trial, "checkpoint", None))
        self.written.append(_trial_spec(trial)["trial_id"])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        write_trial_outputs(resolve(self.experiment_uri), _trial_spec(trial), dict(trial.last_result or {}),
                            _trial_error(trial))
        self.written.append(_trial_spec(trial)["trial_id"])


class SweepProgress(Callback):
    """One line per event: counts of running/done/failed trials and the reporting trial's state."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self._stream = stream  # None: sys.stdout at write time (keeps the callback picklable)
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.failed: set[str] = set()

    def _line(self, text: str) -> None:
        counts = (f"[{len(self.done)}/{self.total} done | {len(self.running)} running | "
                  f"{len(self.failed)} failed]")
        stream = self._stream or sys.stdout
        stream.write(f"{counts} {text}\n")
        stream.flush()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = _trial_spec(trial)["trial_id"]
        self.running.add(tid)
        self._line(f"{tid}: started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("done_trial"):
            return
        tid = _trial_spec(trial)["trial_id"]
        self.running.add(tid)
        phase = result.get("phase", "?")
        epoch = int(result.get("epoch", 0)) + 1
        self._line(f"{tid}: {phase} epoch {epoch} loss {result.get('loss', float('nan')):.3f} "
                   f"val_acc {result.get('val_acc', float('nan')):.3f}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = _trial_spec(trial)["trial_id"]
        self.running.discard(tid)
        result = trial.last_result or {}
        if result.get("status") == "ok":
            self.done.add(tid)
            self._line(f"{tid}: done test_acc {result.get('test_acc', float('nan')):.4f} "
                       f"params {result.get('nonzero_params_m', float('nan')):.4f}M")
        else:
            self.failed.add(tid)
            self._line(f"{tid}: FAILED {result.get('error')}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"{_trial_spec(trial)['trial_id']}: errored, restarting from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = _trial_spec(trial)["trial_id"]
        self.running.discard(tid)
        self.failed.add(tid)
        self._line(f"{tid}: FAILED {error_text(_trial_error(trial))}")
