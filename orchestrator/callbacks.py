"""Driver-side Tune callbacks: the single Parquet writer and the sweep progress line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from orchestrator.results import write_trial
from orchestrator.trainable import trial_row


def _trial_spec(trial: Any) -> dict[str, Any]:
    return trial.config["trial"]


def _error_text(trial: Any) -> str:
    try:
        error = trial.get_error()
    except Exception:  # older/newer Trial APIs
        error = None
    text = str(error) if error else ""
    if not text and getattr(trial, "error_file", None) and Path(trial.error_file).exists():
        text = Path(trial.error_file).read_text()
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else "trial errored (no message)"


class ResultsWriter(Callback):
    """Writes one Parquet row (and the curves) per finished or failed trial. The only writer."""

    def __init__(self, experiment: str, experiment_dir: Path) -> None:
        self.experiment = experiment
        self.experiment_dir = experiment_dir
        self.written: list[str] = []

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = dict(trial.last_result or {})
        spec = _trial_spec(trial)
        if not result.get("done_trial"):
            result = {"status": "failed", "error": "trial ended without a final report"}
        history = json.loads(result.get("history_json") or "[]")
        write_trial(self.experiment_dir, trial_row(self.experiment, spec, result), history)
        self._copy_architecture(trial, spec["trial_id"])
        self.written.append(spec["trial_id"])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        spec = _trial_spec(trial)
        row = trial_row(self.experiment, spec, {"status": "failed", "error": _error_text(trial)})
        write_trial(self.experiment_dir, row, None)
        self.written.append(spec["trial_id"])

    def _copy_architecture(self, trial: Any, trial_id: str) -> None:
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is None:
            return
        target = self.experiment_dir / "archs" / trial_id
        with checkpoint.as_directory() as d:
            for name in ("arch.json", "arch.masks.safetensors"):
                src = Path(d) / name
                if src.exists():
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, target / name)


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
        self._line(f"{tid}: FAILED {_error_text(trial)}")
