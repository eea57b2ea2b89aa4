"""The one writer of a trial's outputs, and ``mgas collect``: every row rebuilt from Tune's saved state.

:func:`write_trial_outputs` turns what Tune holds about a trial (its config, last result, error and
newest checkpoint) into its row, curves and architecture files under the experiment's folder on the
storage. It runs in the live driver callback, after ``Tuner.fit`` (so a restored sweep rewrites the
rows of trials that finished before the restore) and in ``mgas collect``, which reads each trial's
folder of Tune's state as data only — ``params.json``, the last line of ``result.json``,
``error.txt`` and the newest ``checkpoint_*`` folder — never Tune's pickles (``tuner.pkl``, the
experiment state, ``params.pkl``, ``error.pkl``): a results folder on shared storage is data that
other people write, and unpickling it would run their code. No row depends on a driver having
stayed alive, and the rebuilt rows are the same bytes.
"""

from __future__ import annotations

import json
import posixpath
import re
import sys
from dataclasses import dataclass
from typing import Any

from mgas_common.errors import UserInputError
from orchestrator.results import arch_location, rows_from_result, write_trial
from orchestrator.storage import Location, copy_file, reach

TUNE_DIR = "tune"
CHECKPOINT_DIR = re.compile(r"^checkpoint_\d+$")
MAX_STATE_BYTES = 256 * 1024 * 1024
"""The most of one state file read (a result line carries the whole epoch history)."""
ARCH_FILES = ("arch.json", "arch.masks.safetensors")
STATE_FILE = "trial_state.pt"
"""A trial checkpoint's state (orchestrator.trainable writes it)."""


@dataclass(frozen=True)
class SavedTrial:
    """What Tune saved about one trial: the trial's entry of its config, its last result, the text
    of its error, and its newest checkpoint (a ``tune.Checkpoint`` or a :class:`Location`)."""

    trial: dict[str, Any]
    result: dict[str, Any]
    error: object = None
    checkpoint: Any = None


def copy_architecture(checkpoint: Any, experiment: Location, trial_id: str) -> int:
    """Copy ``arch.json`` and its masks out of the trial's checkpoint: two small files read where
    the checkpoint is stored, never the whole checkpoint. Returns how many were copied."""
    if checkpoint is None:
        return 0
    import pyarrow.fs as pafs

    source_fs = getattr(checkpoint, "filesystem", None) or getattr(checkpoint, "fs", None) or pafs.LocalFileSystem()
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


def _json_object(location: Location, what: str) -> dict[str, Any] | None:
    """A JSON object file of a trial's folder, or None when it is missing or not one."""
    if not location.exists():
        return None
    try:
        value = json.loads(location.read_bytes()[:MAX_STATE_BYTES])
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{location.uri}: {what} is not JSON ({exc})") from None
    return value if isinstance(value, dict) else None


def saved_trial(folder: Location) -> SavedTrial | None:
    """One trial's folder of Tune's state, read as data (JSON and text, never a pickle); None for a
    folder that is not a trial of ours or that has no result yet."""
    params = _json_object(folder.child("params.json"), "params.json")
    trial = (params or {}).get("trial")
    results = folder.child("result.json")
    if not isinstance(trial, dict) or not results.exists():
        return None
    lines = [line for line in results.read_bytes().splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1]) if lines else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{results.uri}: its last line is not JSON ({exc})") from None
    error_file = folder.child("error.txt")
    error = error_file.read_bytes()[:MAX_STATE_BYTES].decode("utf-8", "replace") if error_file.exists() else None
    checkpoints = [sub for sub in folder.subfolders() if CHECKPOINT_DIR.match(posixpath.basename(sub.path))]
    result = result if isinstance(result, dict) else {}
    if not result.get("done_trial") and not error and checkpoints:
        result = _done_result(checkpoints[-1]) or result
    return SavedTrial(trial, result, error or None, checkpoints[-1] if checkpoints else None)


def _done_result(checkpoint: Location) -> dict[str, Any] | None:
    """The final metrics a trial's ``done`` checkpoint holds: what its last result line says, when
    the driver died after the trial ended but before Tune flushed that line (the checkpoint is on
    the storage by then; the line is not). Read with ``torch.load(weights_only=True)``."""
    from mgas_core.files.checkpoints import CorruptFileError, load_checkpoint_bytes

    location = checkpoint.child(STATE_FILE)
    if not location.exists():
        return None
    try:
        state = load_checkpoint_bytes(location.read_bytes(), location.uri)
    except CorruptFileError:
        return None
    if state.get("phase") != "done" or not isinstance(state.get("final"), dict):
        return None
    return {**state["final"], "done_trial": True}


def latest_saved_trials(run: Location) -> dict[str, SavedTrial]:
    """Each trial of a sweep's Tune folder by id: the state of its newest attempt that has a result
    (a resumed sweep writes ``<trial_id>-resume<k>`` beside the earlier attempts' folders)."""
    latest: dict[str, tuple[int, SavedTrial]] = {}
    for sub in run.subfolders():
        saved = saved_trial(sub)
        if saved is None or not isinstance(saved.trial.get("trial_id"), str):
            continue
        attempt = saved.trial.get("attempt", 0)
        attempt = attempt if isinstance(attempt, int) else 0
        known = latest.get(saved.trial["trial_id"])
        if known is None or attempt >= known[0]:
            latest[saved.trial["trial_id"]] = (attempt, saved)
    return {trial_id: saved for trial_id, (_, saved) in sorted(latest.items())}


def collect_experiment(experiment: Location) -> dict[str, Any]:
    """Rebuild every finished trial's outputs from Tune's saved results (its JSON, not its pickles)."""
    run = tune_run_location(experiment)
    trials = list(latest_saved_trials(run).values())
    if not trials:
        raise UserInputError(f"{run.uri} holds no trial of a sweep (expected <storage>/<experiment>/tune/<trial>/"
                             "params.json and result.json, as `mgas run` writes)")
    return write_results(experiment, trials)


def saved_from_grid(grid: Any) -> list[SavedTrial]:
    """The trials of a live ``ResultGrid`` (after ``Tuner.fit``) as :class:`SavedTrial`."""
    out = []
    for result in grid:
        trial = (result.config or {}).get("trial")
        if trial is not None:
            out.append(SavedTrial(trial, result.metrics or {}, result.error, result.checkpoint))
    return out


def write_results(experiment: Location, trials: list[SavedTrial]) -> dict[str, Any]:
    """Write the outputs of every trial that ended (finished or errored); trials still pending or
    running when the sweep stopped get no row until they end."""
    counts = {"ok": 0, "failed": 0, "unfinished": 0}
    trial_ids = []
    for saved in trials:
        if saved.error is None and not saved.result.get("done_trial"):
            counts["unfinished"] += 1
            continue
        row = write_trial_outputs(experiment, saved.trial, saved.result, saved.error, saved.checkpoint)
        counts["ok" if row["status"] == "ok" else "failed"] += 1
        trial_ids.append(saved.trial["trial_id"])
    out = {"experiment": experiment.uri, "rows": len(trial_ids), **counts, "trial_ids": sorted(trial_ids)}
    if any(saved.trial.get("population") is not None for saved in trials):
        from orchestrator.front import mark_front

        out["non_dominated"] = mark_front(experiment)  # over every candidate row of the experiment
    return out


def collect_command(storage: str) -> list[dict[str, Any]]:
    """``mgas collect STORAGE``: one experiment folder, or a folder of them."""
    root = reach(storage)  # an object store answers within seconds, or one line
    try:
        experiments = experiment_locations(root)
    except (OSError, ValueError) as exc:  # a store that answered the probe and then failed
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
