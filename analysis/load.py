"""Load a results folder (one experiment, or a folder of experiments) with pyarrow/pandas only.

The folder is a local path or an object-store URI (``s3://bucket/sweeps/quickstart``, ``gs://...``)
read through ``pyarrow.fs`` (credentials and endpoint from the usual environment variables).

Unreadable files (truncated, not Parquet) and files that are not result tables (a column the
report needs is missing or has another type, no rows, a finished trial without finite
metrics) are reported by name with the reason and skipped, never mixed in; an empty folder, a
folder without a usable finished trial or a mix of schema versions is a clear
:class:`AnalysisError` naming the folder (and the first skipped file), not a traceback.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mgas_common.errors import UserInputError
from mgas_common.object_stores import probe_store
from mgas_common.partitions import with_partition_column

SUPPORTED_SCHEMAS = (1, 2)
"""Result schema versions this reader takes: 2 keeps ``method`` in the partition folder's name only,
1 also inside every file (both read as the same table)."""
MAX_FILES = 100_000

TEXT, WHOLE, NUMBER = "text", "whole number", "number"
ROW_COLUMNS = {
    "schema_version": WHOLE, "experiment": TEXT, "trial_id": TEXT, "method": TEXT, "dataset": TEXT, "status": TEXT,
    "test_acc": NUMBER, "val_acc": NUMBER, "params_m": NUMBER, "nonzero_params_m": NUMBER, "flops_m": NUMBER,
    "search_time_s": NUMBER, "retrain_time_s": NUMBER, "search_peak_mem_mb": NUMBER,
}
"""Columns a result file must have for the report, and their kind."""
OPTIONAL_ROW_COLUMNS = {
    "error": TEXT, "axes_json": TEXT, "seed": WHOLE, "device": TEXT, "target_params_m": NUMBER,
    "granularities": TEXT, "stages": WHOLE, "subgraphs": WHOLE, "target_gap": NUMBER,
    "latency_ms": NUMBER, "latency_device": TEXT, "latency_batch": WHOLE,
}
NOT_NULL = ("experiment", "trial_id", "method", "dataset", "status")
FINITE_WHEN_OK = ("test_acc", "nonzero_params_m", "flops_m", "search_time_s", "search_peak_mem_mb")
CURVE_COLUMNS = {"trial_id": TEXT, "method": TEXT, "phase": TEXT, "epoch": WHOLE}
OPTIONAL_CURVE_COLUMNS = {"remaining_ratio_op": NUMBER, "remaining_ratio_filter": NUMBER,
                          "remaining_ratio_weight": NUMBER}


class AnalysisError(ValueError):
    """A results folder that cannot be analysed; the message says why and what to do."""


@dataclass
class Results:
    rows: pd.DataFrame
    curves: pd.DataFrame
    experiments: list[str]
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        return self.rows[self.rows["status"] == "ok"]

    @property
    def failed(self) -> pd.DataFrame:
        return self.rows[self.rows["status"] != "ok"]


@dataclass(frozen=True)
class Folder:
    """A folder on a local or remote filesystem."""

    fs: pafs.FileSystem
    path: str
    name: str

    def child(self, name: str) -> Folder:
        return Folder(self.fs, posixpath.join(self.path, name), posixpath.join(self.name, name))

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def subfolders(self) -> list[Folder]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.path))
        return sorted((self.child(posixpath.basename(i.path)) for i in infos if i.type == pafs.FileType.Directory),
                      key=lambda f: f.path)

    def parquet_files(self) -> list[str]:
        """``method=*/*.parquet`` below this folder (paths inside the filesystem; a folder of that
        name is listed too, so the reader can name it instead of passing over it)."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return sorted(i.path for i in infos if i.path.endswith(".parquet")
                      and posixpath.basename(posixpath.dirname(i.path)).startswith("method=")
                      and not posixpath.basename(i.path).startswith("."))


def open_folder(root: str | Path) -> Folder:
    text = str(root)
    if "://" in text and not text.startswith("file://"):
        fs, path = probe_store(text, "results location")  # answers within seconds, or one line
        return Folder(fs, path.rstrip("/"), text.rstrip("/"))
    local = Path(text.removeprefix("file://")).expanduser().resolve()
    return Folder(pafs.LocalFileSystem(), str(local), str(local))


def experiment_dirs(root: Folder) -> list[Folder]:
    """``root`` itself if it holds ``results/``, else its sub-folders that do."""
    try:
        if root.child("results").is_dir():
            return [root]
        return [f for f in root.subfolders() if f.child("results").is_dir()]
    except OSError as exc:
        raise AnalysisError(f"results folder {root.name} cannot be read: {exc.strerror or exc}") from None


def _kind_ok(kind: pa.DataType, wanted: str) -> bool:
    if pa.types.is_null(kind):
        return True
    if wanted == TEXT:
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if wanted == WHOLE:
        return pa.types.is_integer(kind)
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _table_problem(table: pa.Table, required: dict[str, str], optional: dict[str, str]) -> str | None:
    """Why ``table`` is not a table of this kind (a missing column, a wrong type, no rows), or None."""
    for name, wanted in {**required, **optional}.items():
        if name not in table.column_names:
            if name in required:
                return f"column {name!r} is missing"
            continue
        if not _kind_ok(table.schema.field(name).type, wanted):
            return f"column {name!r} is {table.schema.field(name).type}, expected a {wanted}"
    if table.num_rows == 0:
        return "it holds no rows"
    return None


def _row_problem(table: pa.Table) -> str | None:
    """Why the rows of a result table cannot be reported (a null key, a non-finite metric of a
    finished trial), or None."""
    rows = table.select([c for c in (*NOT_NULL, *FINITE_WHEN_OK) if c in table.column_names]).to_pylist()
    for i, row in enumerate(rows):
        for name in NOT_NULL:
            if row.get(name) is None:
                return f"row {i}: {name} is empty"
        if row["status"] == "ok":
            for name in FINITE_WHEN_OK:
                value = row.get(name)
                if value is None or not math.isfinite(value):
                    return f"row {i}: {name} of a finished trial is {value}, not a finite number"
    return None


def _read(fs: pafs.FileSystem, paths: list[str], skipped: list[str]) -> list[tuple[str, pa.Table]]:
    tables = []
    for path in paths:
        if fs.get_file_info(path).type != pafs.FileType.File:
            skipped.append(f"{path}: not a file")
            continue
        try:
            with fs.open_input_file(path) as handle:
                tables.append((path, with_partition_column(pq.read_table(handle), path)))
        except (pa.ArrowException, OSError, ValueError) as exc:
            skipped.append(f"{path}: {' '.join(str(exc).split())[:200]}")
    return tables


def _usable(tables: list[tuple[str, pa.Table]], skipped: list[str], required: dict[str, str],
            optional: dict[str, str], rows_checked: bool = False) -> list[pa.Table]:
    usable = []
    for path, table in tables:
        problem = _table_problem(table, required, optional) or (_row_problem(table) if rows_checked else None)
        if problem is not None:
            skipped.append(f"{path}: {problem}")
            continue
        usable.append(table)
    return usable


def _files(dirs: list[Folder], kind: str) -> list[str]:
    paths = [p for d in dirs for p in d.child(kind).parquet_files()]
    if len(paths) > MAX_FILES:
        raise AnalysisError(f"{len(paths)} {kind} files; at most {MAX_FILES} can be reported at once")
    return paths


def _version(table: pa.Table) -> int | None:
    """The table's schema version (0 for files from before versions were recorded; None when the
    column holds no usable whole number)."""
    if "schema_version" not in table.column_names:
        return 0
    if not pa.types.is_integer(table.schema.field("schema_version").type):
        return None
    values = {int(v) for v in table.column("schema_version").to_pylist() if v is not None}
    return values.pop() if len(values) == 1 else None


def _frame(tables: list[pa.Table]) -> pd.DataFrame:
    if not tables:
        return pd.DataFrame()
    return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def load_results(root: str | Path) -> Results:
    try:
        folder = open_folder(root)
        exists = folder.is_dir()
    except UserInputError as exc:  # an object store that did not answer
        raise AnalysisError(str(exc)) from None
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise AnalysisError(f"cannot open results location {root}: {' '.join(str(exc).split())[:300]}") from exc
    if not exists:
        raise AnalysisError(f"results folder {root} does not exist")
    dirs = experiment_dirs(folder)
    if not dirs:
        raise AnalysisError(f"{root} holds no results: expected {root}/results/ or <experiment>/results/ folders "
                            "written by `mgas run`")
    skipped: list[str] = []
    tables = _read(folder.fs, _files(dirs, "results"), skipped)
    versions = {v for _, t in tables if t.num_rows and (v := _version(t)) is not None}
    unsupported = versions - set(SUPPORTED_SCHEMAS)
    readable = ", ".join(map(str, SUPPORTED_SCHEMAS))
    if unsupported and len(versions) > 1:
        raise AnalysisError(f"{root} mixes result schema versions {sorted(versions)}; analyse each experiment "
                            f"separately or re-run the older one with this version of mgas (it reads {readable})")
    if unsupported:
        raise AnalysisError(f"{root} was written with result schema version {min(versions)}; this mgas reads "
                            f"versions {readable}")
    row_tables = _usable(tables, skipped, ROW_COLUMNS, OPTIONAL_ROW_COLUMNS, rows_checked=True)
    if not row_tables:
        detail = f" ({len(skipped)} unusable file(s) skipped; first: {skipped[0]})" if skipped else ""
        raise AnalysisError(f"{root} has no trial results yet{detail}")
    rows = _frame(row_tables)
    if (rows["status"] == "ok").sum() == 0:
        errors = "; ".join(f"{r.trial_id}: {getattr(r, 'error', None)}" for r in rows.itertuples())[:500]
        raise AnalysisError(f"{root} has {len(rows)} trial(s) but none finished successfully ({errors})")
    curves = _frame(_usable(_read(folder.fs, _files(dirs, "curves"), skipped), skipped, CURVE_COLUMNS,
                            OPTIONAL_CURVE_COLUMNS))
    reached = rows["target_reached"] if "target_reached" in rows else pd.Series(None, index=rows.index, dtype=object)
    rows["target_missed"] = reached.map(lambda v: v is False or v is np.False_)
    rows["group"] = rows.apply(group_label, axis=1)
    rows["arch_name"] = rows["arch_json"].map(arch_name) if "arch_json" in rows else None
    rows["reference"] = rows["method"] == REFERENCE_METHOD
    return Results(rows=rows, curves=curves, experiments=sorted(rows["experiment"].unique()), skipped=skipped)


REFERENCE_METHOD = "published"
"""Rows of this method are published architectures retrained here: references, not searches."""


def arch_name(text: object) -> str | None:
    """The ``name`` of a row's architecture JSON (None where it has none or is not JSON)."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except (json.JSONDecodeError, RecursionError):
        return None
    name = value.get("name") if isinstance(value, dict) else None
    return str(name)[:200] if name is not None else None


def group_label(row: pd.Series) -> str:
    """The configuration a row belongs to, without its seed: seeds of one group are aggregated."""
    try:
        axes = json.loads(row.get("axes_json") or "{}")
    except (json.JSONDecodeError, TypeError, RecursionError):
        axes = {}
    if not isinstance(axes, dict):
        axes = {}
    axes.pop("seed", None)
    method = axes.pop("method", row.get("method"))
    parts = [str(method)]
    for key in sorted(axes):
        value = axes[key]
        text = "+".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key.split('.')[-1]}={text}")
    if bool(row.get("target_missed", False)):
        parts.append("[target missed]")  # never averaged with runs that reached the target
    return " ".join(parts)
