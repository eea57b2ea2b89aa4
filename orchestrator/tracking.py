"""Experiment tracking: every trial of a sweep as one MLflow run.

``tracking: {mlflow: {uri: ..., experiment: ...}}`` in the spec, or ``mgas run --mlflow [URI]``.
Each trial becomes one run of the MLflow experiment (default: the sweep's name), tagged with its
``mgas.trial_id`` and the sweep's ``mgas.sweep_id``: a resumed sweep (whose Tune state restores
this tracker, sweep id included) finds its trials' runs again, so a trial never gets a second run,
while a fresh sweep of the same experiment starts runs of its own:

- params: the trial's sweep axes (``method``, ``seed``, ``target_params``, dotted settings), its
  dataset and preset, and the search and retrain epoch budgets;
- metrics, every epoch, under distinct keys per phase: ``search/<name>`` and ``retrain/<name>``
  (``retrain/snapshot_<k>/<name>`` for each retrained snapshot of a GOLD-NAS series), with the
  epoch as the step; at the end the row's numbers (``test_acc``, ``nonzero_params_m``, ...);
- artifacts: the architecture JSON and its weight masks (``architecture/``), every retrained
  snapshot's architecture (``snapshots/``).

Without a URI the store is ``sqlite:///<experiment>/mlruns/mlflow.db`` with artifacts in
``<experiment>/mlruns/artifacts`` (MLflow 3 keeps its plain-file store in maintenance mode and
refuses it by default; SQLite is its local store now): ``mlflow ui --backend-store-uri
sqlite:///<experiment>/mlruns/mlflow.db``. The callback runs on the sweep's controller (the
driver), which needs ``mlflow`` installed and the tracking URI reachable. Ray's own
``MLflowLoggerCallback`` is not used: it logs the whole nested trial config as params, one flat
metric namespace for both phases, and the whole trial folder (checkpoints included) as artifacts.
"""

from __future__ import annotations

import json
import math
import posixpath
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field

from mgas_common.errors import UserInputError
from mgas_core.settings.strict import Strict
from orchestrator.results import REPORTED_FIELDS, arch_location
from orchestrator.storage import resolve

TRIAL_TAG = "mgas.trial_id"
SWEEP_TAG = "mgas.sweep_id"
LOCAL_STORE = "mlruns"
SKIPPED_METRICS = {"epoch", "done_trial", "snapshot_index", "retrain_index", "retrains", "max_epochs",
                   "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "iterations_since_restore",
                   "time_since_restore", "pid", "done", "should_checkpoint"}
"""Tune's own bookkeeping fields of a result and our indices: not metrics."""


class MlflowSpec(Strict):
    uri: str | None = Field(None, min_length=1, max_length=4096, description="MLflow tracking URI; default: a "
                                                                             "SQLite store under the experiment")
    experiment: str | None = Field(None, min_length=1, max_length=500, description="default: the sweep's name")


class TrackingSpec(Strict):
    mlflow: MlflowSpec | None = None


def local_store(experiment_path: str) -> tuple[str, str]:
    """The tracking URI and artifact root of the store under a local experiment folder."""
    root = Path(experiment_path) / LOCAL_STORE
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def adopt_copied_store(tracking_uri: str, artifact_root: str | None, experiment: str) -> bool:
    """Point a copied local store at its own artifacts. MLflow records absolute artifact locations
    (the experiment's and each run's); in a sweep folder copied elsewhere they still name the
    original's ``mlruns/artifacts``, so a resumed copy would log its artifacts into the original.
    Only the default store under an experiment folder (ours) is rewritten; True if it was."""
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    if not tracking_uri.startswith("sqlite:///") or artifact_root is None or not db.is_file():
        return False
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        found = connection.execute("SELECT experiment_id, artifact_location FROM experiments WHERE name = ?",
                                   (experiment,)).fetchone()
        if found is None or found[1] == artifact_root:
            return False
        old = str(found[1]).rstrip("/")
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                           (artifact_root, found[0]))
        connection.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE experiment_id = ? "
                           "AND substr(artifact_uri, 1, ?) = ?", (artifact_root.rstrip("/"), len(old) + 1, found[0],
                                                                 len(old), old))
    return True


def mlflow_target(spec: MlflowSpec, experiment_uri: str, is_local: bool) -> tuple[str, str | None]:
    """(tracking URI, artifact root or None for the server's default), checked before Ray starts."""
    try:
        import mlflow  # noqa: F401
    except ImportError as exc:
        raise UserInputError(f"tracking.mlflow needs the mlflow package ({exc}); pip install mlflow") from None
    if spec.uri:
        return spec.uri, None
    if not is_local:
        raise UserInputError(f"tracking.mlflow.uri: results go to {experiment_uri}, not a local folder, so there is "
                             "no default local store; name a tracking server (http://...) or database")
    return local_store(experiment_uri)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def epoch_metrics(result: dict[str, Any]) -> tuple[dict[str, float], int]:
    """One epoch's report as MLflow metrics under its phase's prefix, and the step (the epoch)."""
    phase = str(result.get("phase", "search"))
    prefix = phase
    if phase == "retrain" and result.get("snapshot_index") is not None:
        prefix = f"retrain/snapshot_{int(result['snapshot_index'])}"
    metrics = {f"{prefix}/{k}": v for k, raw in result.items()
               if k not in SKIPPED_METRICS and (v := _number(raw)) is not None}
    return metrics, int(result.get("epoch", 0))


class MlflowTracker:
    """Logs trials to MLflow (used by :class:`orchestrator.callbacks.MlflowCallback`, and testable
    without Ray). The client is made on first use and left out of pickling (Tune saves callbacks)."""

    def __init__(self, tracking_uri: str, artifact_root: str | None, experiment: str, experiment_uri: str,
                 sweep_id: str | None = None) -> None:
        self.sweep_id = sweep_id or uuid.uuid4().hex
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.experiment = experiment
        self.experiment_uri = experiment_uri
        self._client: Any = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_experiment_id": None, "_runs": {}}

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            if self.tracking_uri.startswith("sqlite:///"):
                Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            experiment = resolve(self.experiment_uri)
            if experiment.local and (self.tracking_uri, self.artifact_root) == local_store(experiment.path):
                adopt_copied_store(self.tracking_uri, self.artifact_root, self.experiment)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            found = self._client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found is not None else self._client.create_experiment(
                self.experiment, artifact_location=self.artifact_root)
        return self._client

    def run_id(self, trial: dict[str, Any]) -> str:
        """The trial's run in this sweep: the one tagged with its id (a resumed sweep), else a new one."""
        tid = trial["trial_id"]
        if tid in self._runs:
            return self._runs[tid]
        client = self.client
        found = client.search_runs(
            [self._experiment_id], max_results=1,
            filter_string=f"tags.`{TRIAL_TAG}` = '{tid}' and tags.`{SWEEP_TAG}` = '{self.sweep_id}'")
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            settings = trial["settings"]
            run = client.create_run(self._experiment_id, run_name=tid, tags={
                TRIAL_TAG: tid, SWEEP_TAG: self.sweep_id, "mgas.experiment": str(trial.get("experiment")),
                "mgas.method": settings["search"]["method"],
                "mgas.git_sha": str(trial.get("provenance", {}).get("git_sha")),
            })
            run_id = run.info.run_id
            params = {**{k: v for k, v in trial["axes"].items()}, "dataset": settings["data"]["name"],
                      "search.epochs": settings["search"]["epochs"], "retrain.epochs": settings["retrain"]["epochs"]}
            from mlflow.entities import Param

            client.log_batch(run_id, params=[Param(str(k), json.dumps(v) if isinstance(v, list | dict) else str(v))
                                             for k, v in params.items()])
        self._runs[tid] = run_id
        return run_id

    def log_epoch(self, trial: dict[str, Any], result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        metrics, step = epoch_metrics(result)
        if metrics:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id(trial), metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, trial: dict[str, Any], result: dict[str, Any], error: str | None = None) -> None:
        """The row's numbers as metrics, the architecture files as artifacts, and the run's status."""
        from mlflow.entities import Metric

        run_id = self.run_id(trial)
        client = self.client
        ok = error is None and result.get("status") == "ok"
        now = int(time.time() * 1000)
        final = {k: v for k, raw in result.items() if k in REPORTED_FIELDS and (v := _number(raw)) is not None}
        if final:
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in final.items()])
        client.set_tag(run_id, "mgas.status", "ok" if ok else "failed")
        if not ok:
            client.set_tag(run_id, "mgas.error", (error or str(result.get("error")))[:5000])
        if ok:
            self._log_architectures(run_id, trial, result)
        client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    def _log_architectures(self, run_id: str, trial: dict[str, Any], result: dict[str, Any]) -> None:
        folder = arch_location(resolve(self.experiment_uri), trial["trial_id"])
        with tempfile.TemporaryDirectory(prefix="mgas-mlflow-") as tmp:
            arch_dir = Path(tmp) / "architecture"
            arch_dir.mkdir()
            for location in folder.files(""):
                (arch_dir / posixpath.basename(location.path)).write_bytes(location.read_bytes())
            if not any(arch_dir.iterdir()) and result.get("arch_json"):
                (arch_dir / "arch.json").write_text(str(result["arch_json"]))
            snapshots = json.loads(result.get("snapshot_rows_json") or "[]")
            if snapshots:
                snap_dir = Path(tmp) / "snapshots"
                snap_dir.mkdir()
                for snap in [*snapshots, {"snapshot_index": result.get("snapshot_index"),
                                          "arch_json": result.get("arch_json")}]:
                    if snap.get("arch_json") and snap.get("snapshot_index") is not None:
                        (snap_dir / f"snapshot_{int(snap['snapshot_index']):02d}.json").write_text(snap["arch_json"])
            self.client.log_artifacts(run_id, tmp)
