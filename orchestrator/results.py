"""Parquet results on the sweep's storage: one row file and one curves file per trial, explicit schemas.

Layout under the experiment's folder ``<storage>/<experiment>/`` (a local path, NFS, or ``s3://``)::

    tune/                                   Tune's state: trial folders, checkpoints, results
    results/method=<m>/<trial_id>.parquet   one row: the trial's outcome (ok or failed + error)
    curves/method=<m>/<trial_id>.parquet    one row per epoch (search and retrain phases)

``method`` is a Hive partition key: it is in the folder name and not inside the files (schema
version 2; version 1 files held it as a column too, which standard readers refuse to merge), so
``pandas.read_parquet``, ``pyarrow.dataset``, polars and duckdb read ``results/`` and ``curves/``
as one table each with a ``method`` column (``mgas_common/partitions.py``).
    archs/<trial_id>/arch.json (+ masks)    the derived architecture

A row is a pure function of what Tune saved for the trial (:func:`row_from_result`: the trial's
config, its last reported result, its error), so the writer is idempotent per trial: the live
driver-side callback, the rewrite after ``Tuner.fit``/restore and ``mgas collect`` all produce the
same bytes, and a trial's row is replaced, never duplicated. Files are named by the trial's stable id
and written whole (temp file then rename; one PUT on an object store). The columns are defined
once, in :func:`result_schema` (plus the columns each registered method declares); adding one
means adding it there and, if a trial reports it, to :data:`REPORTED_FIELDS`.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mgas_common.partitions import PARTITION_KEY, with_partition_column, without_partition_column
from mgas_core.methods.registry import get_method, result_columns, result_values
from orchestrator.storage import Location, resolve

SCHEMA_VERSION = 2

_RESULT_HEAD = [
    ("schema_version", pa.int32()),
    ("experiment", pa.string()),
    ("trial_id", pa.string()),
    ("method", pa.string()),
    ("dataset", pa.string()),
    ("seed", pa.int64()),
    ("target_params_m", pa.float64()),
]
"""Then the columns the registered methods declare (``SearchMethod.result_fields``: MGAS's
``granularities`` and ``stages``, MSG-DAS's ``subgraphs``), then :data:`_RESULT_TAIL`."""
_ARROW_TYPES = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
_RESULT_TAIL = [
    ("status", pa.string()),
    ("error", pa.string()),
    ("target_reached", pa.bool_()),
    ("target_gap", pa.float64()),
    ("snapshot_index", pa.int64()),
    ("snapshot_final", pa.bool_()),
    ("snapshot_epoch", pa.int64()),
    ("test_acc", pa.float64()),
    ("val_acc", pa.float64()),
    ("search_val_acc", pa.float64()),
    ("params_m", pa.float64()),
    ("nonzero_params_m", pa.float64()),
    ("flops_m", pa.float64()),
    ("latency_ms", pa.float64()),
    ("latency_device", pa.string()),
    ("latency_batch", pa.int64()),
    ("latency_threads", pa.int64()),
    ("supernet_params_m", pa.float64()),
    ("channels", pa.int64()),
    ("layers", pa.int64()),
    ("cells_per_stage", pa.string()),
    ("candidate", pa.int64()),
    ("generation", pa.int64()),
    ("non_dominated", pa.bool_()),
    ("remaining_ratio_op", pa.float64()),
    ("remaining_ratio_filter", pa.float64()),
    ("remaining_ratio_weight", pa.float64()),
    ("search_epochs", pa.int64()),
    ("search_time_s", pa.float64()),
    ("retrain_time_s", pa.float64()),
    ("search_peak_mem_mb", pa.float64()),
    ("search_peak_mem_kind", pa.string()),
    ("retrain_peak_mem_mb", pa.float64()),
    ("device", pa.string()),
    ("device_name", pa.string()),
    ("node_id", pa.string()),
    ("node_ip", pa.string()),
    ("gpu_ids", pa.string()),
    ("attempts", pa.int64()),
    ("events_json", pa.string()),
    ("snapshots_json", pa.string()),
    ("arch_json", pa.string()),
    ("config_json", pa.string()),
    ("axes_json", pa.string()),
    ("git_sha", pa.string()),
    ("versions", pa.string()),
    ("started_at", pa.float64()),
    ("wall_time_s", pa.float64()),
    ("finished_at", pa.float64()),
    ("deterministic", pa.bool_()),
]


def result_schema() -> pa.Schema:
    """The explicit schema of a result row, with the columns the method registry declares."""
    method_columns = [(name, _ARROW_TYPES[kind]) for name, kind in result_columns().items()]
    return pa.schema([*_RESULT_HEAD, *method_columns, *_RESULT_TAIL])

CURVE_SCHEMA = pa.schema([
    ("schema_version", pa.int32()),
    ("experiment", pa.string()),
    ("trial_id", pa.string()),
    ("method", pa.string()),
    ("seed", pa.int64()),
    ("phase", pa.string()),
    ("search_phase", pa.string()),
    ("snapshot_index", pa.int64()),
    ("epoch", pa.int64()),
    ("loss", pa.float64()),
    ("train_acc", pa.float64()),
    ("val_acc", pa.float64()),
    ("time_s", pa.float64()),
    ("lr", pa.float64()),
    ("lambda", pa.float64()),
    ("tau", pa.float64()),
    ("stage", pa.float64()),
    ("size_m", pa.float64()),
    ("remaining_ratio_op", pa.float64()),
    ("remaining_ratio_filter", pa.float64()),
    ("remaining_ratio_weight", pa.float64()),
    ("events_json", pa.string()),
])


def _coerce(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_string(kind):
        return value if isinstance(value, str) else json.dumps(value, default=str)
    if pa.types.is_integer(kind):
        return int(value)
    if pa.types.is_boolean(kind):
        return bool(value)
    if pa.types.is_floating(kind):
        value = float(value)
        return None if math.isnan(value) else value
    return value


def table_from_rows(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    unknown = {k for row in rows for k in row} - set(schema.names)
    if unknown:
        raise ValueError(f"columns {sorted(unknown)} are not in the schema")
    columns = {f.name: [_coerce(row.get(f.name), f.type) for row in rows] for f in schema}
    return pa.table(columns, schema=schema)


def file_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """The table a result or curves file holds: ``rows`` less the partition key (in the folder name)."""
    return table_from_rows([{k: v for k, v in row.items() if k != PARTITION_KEY} for row in rows],
                           without_partition_column(schema))


def table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def result_location(experiment: Location, method: str, trial_id: str) -> Location:
    return experiment.child("results", f"method={method}", f"{trial_id}.parquet")


def curve_location(experiment: Location, method: str, trial_id: str) -> Location:
    return experiment.child("curves", f"method={method}", f"{trial_id}.parquet")


def arch_location(experiment: Location, trial_id: str) -> Location:
    return experiment.child("archs", trial_id)


def curve_rows(history: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for rec in history:
        rows.append({
            **base,
            "phase": rec.get("phase"), "search_phase": rec.get("search_phase"),
            "snapshot_index": rec.get("snapshot_index"), "epoch": rec.get("epoch"),
            "loss": rec.get("loss"),
            "train_acc": rec.get("train_acc"), "val_acc": rec.get("val_acc"), "time_s": rec.get("time_s"),
            "lr": rec.get("lr", rec.get("w_lr")), "lambda": rec.get("lambda"), "tau": rec.get("tau"),
            "stage": rec.get("stage"), "size_m": rec.get("stage_size_m"),
            "remaining_ratio_op": rec.get("remaining_ratio_op"),
            "remaining_ratio_filter": rec.get("remaining_ratio_filter"),
            "remaining_ratio_weight": rec.get("remaining_ratio_weight"),
            "events_json": json.dumps(rec.get("events", []), default=str),
        })
    return rows


# what a trial's final report carries into its row (the rest comes from the trial's config)
REPORTED_FIELDS = {
    "status", "error", "target_reached", "target_gap", "snapshot_index", "snapshot_final", "snapshot_epoch",
    "search_peak_mem_kind", "test_acc", "val_acc", "search_val_acc", "params_m",
    "nonzero_params_m", "flops_m", "latency_ms", "latency_device", "latency_batch", "latency_threads",
    "supernet_params_m", "channels", "layers", "remaining_ratio_op", "remaining_ratio_filter",
    "remaining_ratio_weight", "search_epochs", "search_time_s", "retrain_time_s", "search_peak_mem_mb",
    "retrain_peak_mem_mb", "device", "device_name", "node_id", "node_ip", "gpu_ids", "attempts",
    "events_json", "snapshots_json", "arch_json", "started_at", "wall_time_s", "finished_at", "deterministic",
    "git_sha", "versions",
}


def error_text(error: object) -> str:
    """The last line of a trial's error (Tune's exception, or its saved text), at most 2000 chars."""
    text = str(error) if error else ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else "trial errored (no message)"


def row_from_result(trial: dict[str, Any], result: dict[str, Any] | None, error: object = None) -> dict[str, Any]:
    """The Parquet row of one trial from what Tune saved: its config entry ``trial``, its last
    reported result and its error. A pure function: the same inputs give the same row."""
    result = dict(result or {})
    settings = trial["settings"]
    search = settings["search"]
    method = search["method"]
    provenance = trial.get("provenance", {})
    get_method(method, trial.get("method_module"))  # a method registered outside mgas_core (a plugin)
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "experiment": trial.get("experiment"), "trial_id": trial["trial_id"], "method": method,
        "dataset": settings["data"]["name"], "seed": settings["seed"],
        "target_params_m": search.get("target_params"),
        **result_values(settings),
        "config_json": json.dumps(settings, sort_keys=True),
        "axes_json": json.dumps(trial["axes"], sort_keys=True, default=str),
        "deterministic": settings.get("deterministic", False),
        "git_sha": provenance.get("git_sha"), "versions": json.dumps(provenance.get("versions", {}), sort_keys=True),
    }
    finished = bool(result.get("done_trial"))
    if finished and error is None:
        row.update({k: v for k, v in result.items() if k in REPORTED_FIELDS and v is not None})
    else:
        row.update({k: result[k] for k in ("node_id", "node_ip", "gpu_ids") if result.get(k) is not None})
        row["status"] = "failed"
        row["error"] = error_text(error) if error is not None else "trial ended without a final report"
        row["finished_at"] = result.get("timestamp")
    if isinstance(row.get("versions"), dict):
        row["versions"] = json.dumps(row["versions"], sort_keys=True)
    population = trial.get("population") or {}
    row["candidate"], row["generation"] = population.get("candidate"), population.get("generation")
    row["cells_per_stage"] = cells_per_stage(row.get("arch_json"))
    return row


def cells_per_stage(arch_json: str | None) -> str | None:
    """The normal cells of each stage of a stage-level architecture ("3,3,2"), else None."""
    if not arch_json:
        return None
    stages = json.loads(arch_json).get("stages")
    return ",".join(str(s["cells"]) for s in stages) if stages else None


def rows_from_result(trial: dict[str, Any], result: dict[str, Any] | None,
                     error: object = None) -> list[dict[str, Any]]:
    """Every row of one trial: the trial's own (:func:`row_from_result`, the final architecture)
    and, for a search that yields a series (GOLD-NAS), one more per other retrained snapshot:
    the same trial fields with that architecture's retrained metrics, ``snapshot_final`` false and
    no target verdict (only the final architecture answers for the target)."""
    row = row_from_result(trial, result, error)
    rows = [row]
    extra = (result or {}).get("snapshot_rows_json") if row["status"] == "ok" else None
    for snapshot in json.loads(extra) if extra else []:
        rows.append({**row, **{k: v for k, v in snapshot.items() if k in REPORTED_FIELDS},
                     "target_reached": None, "target_gap": None,
                     "cells_per_stage": cells_per_stage(snapshot.get("arch_json"))})
    return sorted(rows, key=lambda r: -1 if r.get("snapshot_index") is None else r["snapshot_index"])


def write_trial(experiment: str | Path | Location, rows: dict[str, Any] | list[dict[str, Any]],
                history: list[dict[str, Any]] | None) -> Location:
    """Write (replace) the trial's result rows (one file, one row per retrained architecture) and
    its curves under the experiment's folder."""
    target = experiment if isinstance(experiment, Location) else resolve(experiment)
    rows = [{"schema_version": SCHEMA_VERSION, **r} for r in ([rows] if isinstance(rows, dict) else rows)]
    first = rows[0]
    for row in rows:
        if row.get("finished_at") is None and row.get("status") == "ok":
            row["finished_at"] = time.time()
    if history:
        base = {"schema_version": SCHEMA_VERSION, "experiment": first["experiment"], "trial_id": first["trial_id"],
                "method": first["method"], "seed": first.get("seed")}
        curve_location(target, first["method"], first["trial_id"]).write_bytes(
            table_bytes(file_table(curve_rows(history, base), CURVE_SCHEMA)))
    location = result_location(target, first["method"], first["trial_id"])
    location.write_bytes(table_bytes(file_table(rows, result_schema())))  # the rows last: they mark "done"
    return location


def read_rows(experiment: str | Path | Location) -> list[dict[str, Any]]:
    """All result rows of one experiment (local or on an object store)."""
    target = experiment if isinstance(experiment, Location) else resolve(experiment)
    rows = []
    for location in target.child("results").files(".parquet"):
        table = pq.read_table(io.BytesIO(location.read_bytes()))
        rows.extend(with_partition_column(table, location.path).to_pylist())
    return rows
