"""Parquet results: one file per finished trial, one curves file per trial, explicit schemas.

Layout under ``<out>/<experiment>/``::

    results/method=<m>/<trial_id>.parquet   one row: the trial's outcome (ok or failed + error)
    curves/method=<m>/<trial_id>.parquet    one row per epoch (search and retrain phases)

Files are written by one driver-side writer (:class:`ResultsWriter`, a Tune callback), to a
temp file then renamed, and named by the trial's stable id, so re-running or resuming a sweep
replaces a trial's row instead of duplicating it.
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

from mgas_core.io import atomic_write_bytes
from mgas_core.methods.base import result_columns

SCHEMA_VERSION = 1

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
    ("test_acc", pa.float64()),
    ("val_acc", pa.float64()),
    ("search_val_acc", pa.float64()),
    ("params_m", pa.float64()),
    ("nonzero_params_m", pa.float64()),
    ("flops_m", pa.float64()),
    ("supernet_params_m", pa.float64()),
    ("channels", pa.int64()),
    ("layers", pa.int64()),
    ("remaining_ratio_op", pa.float64()),
    ("remaining_ratio_filter", pa.float64()),
    ("remaining_ratio_weight", pa.float64()),
    ("search_epochs", pa.int64()),
    ("search_time_s", pa.float64()),
    ("retrain_time_s", pa.float64()),
    ("search_peak_mem_mb", pa.float64()),
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


def write_table(table: pa.Table, path: Path) -> Path:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return atomic_write_bytes(path, buf.getvalue())


def result_path(experiment_dir: Path, method: str, trial_id: str) -> Path:
    return experiment_dir / "results" / f"method={method}" / f"{trial_id}.parquet"


def curve_path(experiment_dir: Path, method: str, trial_id: str) -> Path:
    return experiment_dir / "curves" / f"method={method}" / f"{trial_id}.parquet"


def curve_rows(history: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for rec in history:
        rows.append({
            **base,
            "phase": rec.get("phase"), "epoch": rec.get("epoch"), "loss": rec.get("loss"),
            "train_acc": rec.get("train_acc"), "val_acc": rec.get("val_acc"), "time_s": rec.get("time_s"),
            "lr": rec.get("lr", rec.get("w_lr")), "lambda": rec.get("lambda"), "tau": rec.get("tau"),
            "stage": rec.get("stage"), "size_m": rec.get("size_estimate_m"),
            "remaining_ratio_op": rec.get("remaining_ratio_op"),
            "remaining_ratio_filter": rec.get("remaining_ratio_filter"),
            "remaining_ratio_weight": rec.get("remaining_ratio_weight"),
            "events_json": json.dumps(rec.get("events", []), default=str),
        })
    return rows


def write_trial(experiment_dir: Path, row: dict[str, Any], history: list[dict[str, Any]] | None) -> Path:
    """Write (replace) the trial's result row and its curves."""
    row = {"schema_version": SCHEMA_VERSION, "finished_at": time.time(), **row}
    target = result_path(experiment_dir, row["method"], row["trial_id"])
    path = write_table(table_from_rows([row], result_schema()), target)
    if history:
        base = {"schema_version": SCHEMA_VERSION, "experiment": row["experiment"], "trial_id": row["trial_id"],
                "method": row["method"], "seed": row.get("seed")}
        write_table(table_from_rows(curve_rows(history, base), CURVE_SCHEMA),
                    curve_path(experiment_dir, row["method"], row["trial_id"]))
    return path


def read_rows(experiment_dir: Path) -> list[dict[str, Any]]:
    """All result rows of one experiment (used by resume bookkeeping and tests)."""
    rows = []
    for path in sorted((experiment_dir / "results").glob("method=*/*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows
