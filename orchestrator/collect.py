"""The one writer of a trial's outputs, and ``mgas collect``: every row rebuilt from Tune's saved state.

:func:`write_trial_outputs` turns what Tune holds about a trial (its config, last result, error and
newest checkpoint) into its row, curves and architecture files under the experiment's folder on the
storage. It runs in the live driver callback, after ``Tuner.fit`` (so a restored sweep rewrites the
rows of trials that finished before the restore) and in ``mgas collect``, which reads the sweep back
with ``Tuner.restore(...).get_results()``: no row depends on a driver having stayed alive, and the
rebuilt rows are the same bytes.
"""

from __future__ import annotations

import json
import posixpath
import sys
from typing import Any

from mgas_common.errors import UserInputError
from orchestrator.results import arch_location, rows_from_result, write_trial
from orchestrator.storage import Location, copy_file, resolve

TUNE_DIR = "tune"
ARCH_FILES = ("arch.json", "arch.masks.safetensors")


def copy_architecture(checkpoint: Any, experiment: Location, trial_id: str) -> int:
    """Copy ``arch.json`` and its masks out of the trial's checkpoint: two small files read where
    the checkpoint is stored, never the whole checkpoint. Returns how many were copied."""
    if checkpoint is None:
        return 0
    import pyarrow.fs as pafs

    source_fs = getattr(checkpoint, "filesystem", None) or pafs.LocalFileSystem()
    target = arch_location(experiment, trial_id)
    copied = 0
    for name in ARCH_FILES:
        copied += copy_file(source_fs, posixpath.join(str(checkpoint.path), name), target.child(name))
    return copied


def write_trial_outputs(experiment: Location, trial: dict[str, Any], result: dict[str, Any] | None,
                        error: object = None, checkpoint: Any = None) -> dict[str, Any]:
    """Write (replace) one trial's rows, curves and architecture; returns the trial's own row (the
    final architecture's; a GOLD-NAS search adds one row per other retrained snapshot)."""
    rows = rows_from_result(trial, result, error)
    row = rows[-1]
    history = None
    if row.get("status") == "ok" and result:
        history = json.loads(result.get("history_json") or "[]")
        copy_architecture(checkpoint, experiment, trial["trial_id"])
    write_trial(experiment, rows, history)
    return row


def tune_run_location(experiment: Location) -> Location:
    return experiment.child(TUNE_DIR)


def experiment_locations(root: Location) -> list[Location]:
    """``root`` if it holds a sweep's Tune state, else its sub-folders that do."""
    if tune_run_location(root).is_dir():
        return [root]
    return [sub for sub in root.subfolders() if tune_run_location(sub).is_dir()]


def collect_experiment(experiment: Location) -> dict[str, Any]:
    """Rebuild every finished trial's outputs from Tune's saved results."""
    from ray import tune

    from orchestrator.trainable import tune_trainable

    run = tune_run_location(experiment)
    if not tune.Tuner.can_restore(run.uri):
        raise UserInputError(f"{run.uri} holds no Tune sweep state (expected <storage>/<experiment>/tune)")
    grid = tune.Tuner.restore(run.uri, tune_trainable).get_results()
    return write_results(experiment, grid)


def write_results(experiment: Location, grid: Any) -> dict[str, Any]:
    """Write the outputs of every trial of a ``ResultGrid`` that ended (finished or errored);
    trials still pending or running when the sweep stopped get no row until they end."""
    counts = {"ok": 0, "failed": 0, "unfinished": 0}
    trial_ids = []
    for result in grid:
        trial = (result.config or {}).get("trial")
        if trial is None:
            continue
        metrics = result.metrics or {}
        if result.error is None and not metrics.get("done_trial"):
            counts["unfinished"] += 1
            continue
        row = write_trial_outputs(experiment, trial, metrics, result.error, result.checkpoint)
        counts["ok" if row["status"] == "ok" else "failed"] += 1
        trial_ids.append(trial["trial_id"])
    return {"experiment": experiment.uri, "rows": len(trial_ids), **counts, "trial_ids": sorted(trial_ids)}


def collect_command(storage: str) -> list[dict[str, Any]]:
    """``mgas collect STORAGE``: one experiment folder, or a folder of them."""
    try:
        root = resolve(storage)
        experiments = experiment_locations(root)
    except (OSError, ValueError) as exc:  # unknown scheme, unreachable store, no credentials
        raise UserInputError(f"cannot read {storage}: {' '.join(str(exc).split())[:300]}") from exc
    if not experiments:
        raise UserInputError(f"{root.uri} holds no sweep: expected {TUNE_DIR}/ (Tune's state) in it or in its "
                                "sub-folders, as `mgas run` writes under storage_path/<experiment>")
    summaries = []
    for experiment in experiments:
        summary = collect_experiment(experiment)
        summaries.append(summary)
        print(f"collect {experiment.uri}: {summary['rows']} rows ({summary['ok']} ok, {summary['failed']} failed)"
              + (f", {summary['unfinished']} trial(s) unfinished (no row; resume with mgas run --resume)"
                 if summary["unfinished"] else ""), file=sys.stdout)
    return summaries
