"""``mgas run --resume`` from data only: the sweep's JSON and the trials' checkpoints, never a pickle.

Tune's own restore (``Tuner.restore``) unpickles ``tuner.pkl`` and the cloudpickled parts of its
experiment state; a results folder on shared storage is written by other people, so that would
run their code. A resume here reads what :mod:`orchestrator.collect` reads — each trial folder's
``params.json``, the last line of ``result.json``, ``error.txt`` and its ``checkpoint_*`` folders
(``torch.load(weights_only=True)``) — plus the sweep's own ``tune/sweep.json`` (its id, which keeps
the MLflow runs of a resumed sweep, and how many attempts it had), and starts a fresh Tune run of
the trials that did not finish, each from its newest checkpoint:

- a trial whose last result says it finished is not run again (its row is rewritten from that result);
- a trial that errored or was stopped runs again from its newest checkpoint (from the start when it
  has none); a trial of the spec that never started runs from the start;
- every attempt writes its trial folders beside the earlier ones (``<trial_id>`` then
  ``<trial_id>-resume<k>``); the newest attempt of a trial that has a result is the trial's state;
- the spec must still describe the same trials: a trial whose settings changed is refused in one
  line (a checkpoint of other settings would be continued silently otherwise).

Everything is read and written under the ``--out`` of this command, so a copied folder resumes
in place of the copy, and a driver killed with SIGKILL resumes from what reached the storage.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

from mgas_common.errors import UserInputError
from orchestrator.collect import SavedTrial, latest_saved_trials
from orchestrator.storage import Location, resolve

SWEEP_FILE = "sweep.json"
RESUME_KEY = "resume_from"
"""The trial config's key naming the checkpoint folder (a path or URI) the trial continues from."""
ATTEMPT_KEY = "attempt"


@dataclass(frozen=True)
class SweepRecord:
    """``tune/sweep.json``: the sweep's id (its MLflow runs are tagged with it) and its attempts."""

    sweep_id: str
    attempts: int

    @staticmethod
    def read(run: Location) -> SweepRecord | None:
        location = run.child(SWEEP_FILE)
        if not location.exists():
            return None
        try:
            data = json.loads(location.read_bytes()[:65536])
            return SweepRecord(str(data["sweep_id"]), int(data["attempts"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise UserInputError(f"{location.uri}: not a sweep record of mgas ({exc}); run without --resume to "
                                 "start the sweep again") from None

    def write(self, run: Location) -> None:
        run.child(SWEEP_FILE).write_bytes(json.dumps({"sweep_id": self.sweep_id, "attempts": self.attempts},
                                                     sort_keys=True).encode())

    @staticmethod
    def new() -> SweepRecord:
        return SweepRecord(uuid.uuid4().hex, 1)


@dataclass
class ResumePlan:
    """What a resume runs: ``finished`` trials keep their saved result; ``to_run`` are the trial
    configs of this attempt (``resume_from`` set where a checkpoint exists)."""

    record: SweepRecord
    finished: list[SavedTrial] = field(default_factory=list)
    to_run: list[dict[str, Any]] = field(default_factory=list)

    @property
    def from_checkpoint(self) -> int:
        return sum(1 for t in self.to_run if t.get(RESUME_KEY))

    def describe(self) -> str:
        fresh = len(self.to_run) - self.from_checkpoint
        return (f"{len(self.finished)} trial(s) finished, {self.from_checkpoint} continue from a checkpoint, "
                f"{fresh} start from the beginning")


def _settings_differ(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first top-level settings group that differs between a saved trial and the spec's."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            return key
    return None


def plan_resume(run: Location, trials: list[dict[str, Any]]) -> ResumePlan | None:
    """The resume of the sweep whose Tune folder is ``run``; None where nothing was saved there."""
    record = SweepRecord.read(run)
    saved = latest_saved_trials(run) if run.is_dir() else {}
    if record is None and not saved:
        return None
    record = SweepRecord(record.sweep_id if record else uuid.uuid4().hex, (record.attempts if record else 1) + 1)
    plan = ResumePlan(record)
    for trial in trials:
        state = saved.get(trial["trial_id"])
        if state is not None:
            changed = _settings_differ(state.trial.get("settings", {}), trial["settings"])
            if changed is not None:
                raise UserInputError(f"--resume: trial {trial['trial_id']}'s settings.{changed} differ from the ones "
                                     f"it was started with ({run.uri}); run without --resume to start a new sweep "
                                     "(the earlier one is kept under a dated name)")
            if state.error is None and state.result.get("done_trial"):
                plan.finished.append(state)
                continue
        again = {**trial, ATTEMPT_KEY: record.attempts - 1}
        if state is not None and state.checkpoint is not None:
            again[RESUME_KEY] = state.checkpoint.uri
        plan.to_run.append(again)
    return plan


def trial_folder_name(trial: Any) -> str:
    """Tune's folder of a trial: its id, then ``-resume<k>`` for the k-th resume of the sweep."""
    spec = trial.config["trial"]
    attempt = int(spec.get(ATTEMPT_KEY, 0))
    return spec["trial_id"] if attempt == 0 else f"{spec['trial_id']}-resume{attempt}"


def resume_checkpoint(trial: dict[str, Any]) -> Any:
    """The ``tune.Checkpoint`` a resumed trial continues from (its newest saved one), or None."""
    where = trial.get(RESUME_KEY)
    if not where:
        return None
    from ray import tune

    location = resolve(where)
    if not location.is_dir():
        raise UserInputError(f"trial {trial['trial_id']}: its checkpoint {where} is gone; run without --resume")
    return tune.Checkpoint(posixpath.normpath(location.path), filesystem=location.fs)
