"""Load a results folder (one experiment, or a folder of experiments) with pyarrow/pandas only.

The folder is a local path or an object-store URI (``s3://bucket/sweeps/quickstart``, ``gs://...``)
read through ``pyarrow.fs`` (credentials and endpoint from the usual environment variables).

Unreadable files (truncated, not Parquet) are reported by name and skipped, never mixed in;
an empty folder, a folder without a finished trial or a mix of schema versions is a clear
:class:`AnalysisError`, not a traceback.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SUPPORTED_SCHEMA = 1


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
        """``method=*/*.parquet`` below this folder (paths inside the filesystem)."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                      and posixpath.basename(posixpath.dirname(i.path)).startswith("method=")
                      and not posixpath.basename(i.path).startswith("."))


def open_folder(root: str | Path) -> Folder:
    text = str(root)
    if "://" in text and not text.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(text)
        return Folder(fs, path.rstrip("/"), text.rstrip("/"))
    local = Path(text.removeprefix("file://")).expanduser().resolve()
    return Folder(pafs.LocalFileSystem(), str(local), str(local))


def experiment_dirs(root: Folder) -> list[Folder]:
    """``root`` itself if it holds ``results/``, else its sub-folders that do."""
    if root.child("results").is_dir():
        return [root]
    return [f for f in root.subfolders() if f.child("results").is_dir()]


def _read_tables(fs: pafs.FileSystem, paths: list[str], skipped: list[str]) -> list[pa.Table]:
    tables = []
    for path in paths:
        try:
            with fs.open_input_file(path) as handle:
                tables.append(pq.read_table(handle))
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            skipped.append(f"{path}: {' '.join(str(exc).split())[:200]}")
    return tables


def _versions(tables: list[pa.Table]) -> set[int]:
    versions = set()
    for t in tables:
        if "schema_version" not in t.column_names:
            versions.add(0)
        else:
            versions.update(int(v) for v in t.column("schema_version").to_pylist() if v is not None)
    return versions


def _frame(tables: list[pa.Table]) -> pd.DataFrame:
    if not tables:
        return pd.DataFrame()
    return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def load_results(root: str | Path) -> Results:
    try:
        folder = open_folder(root)
        exists = folder.is_dir()
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise AnalysisError(f"cannot open results location {root}: {' '.join(str(exc).split())[:300]}") from exc
    if not exists:
        raise AnalysisError(f"results folder {root} does not exist")
    dirs = experiment_dirs(folder)
    if not dirs:
        raise AnalysisError(f"{root} holds no results: expected {root}/results/ or <experiment>/results/ folders "
                            "written by `mgas run`")
    skipped: list[str] = []
    row_tables = _read_tables(folder.fs, [p for d in dirs for p in d.child("results").parquet_files()], skipped)
    if not row_tables:
        detail = f" ({len(skipped)} unreadable file(s) skipped)" if skipped else ""
        raise AnalysisError(f"{root} has no trial results yet{detail}")
    versions = _versions(row_tables)
    if len(versions) > 1:
        raise AnalysisError(f"{root} mixes result schema versions {sorted(versions)}; analyse each experiment "
                            "separately or re-run the older one with this version of mgas")
    if versions != {SUPPORTED_SCHEMA}:
        raise AnalysisError(f"{root} was written with result schema version {versions.pop()}; this mgas reads "
                            f"version {SUPPORTED_SCHEMA}")
    rows = _frame(row_tables)
    if (rows["status"] == "ok").sum() == 0:
        errors = "; ".join(f"{r.trial_id}: {r.error}" for r in rows.itertuples())[:500]
        raise AnalysisError(f"{root} has {len(rows)} trial(s) but none finished successfully ({errors})")
    curves = _frame(_read_tables(folder.fs, [p for d in dirs for p in d.child("curves").parquet_files()], skipped))
    reached = rows["target_reached"] if "target_reached" in rows else pd.Series(None, index=rows.index, dtype=object)
    rows["target_missed"] = reached.map(lambda v: v is False or v is np.False_)
    rows["group"] = rows.apply(group_label, axis=1)
    return Results(rows=rows, curves=curves, experiments=sorted(rows["experiment"].unique()), skipped=skipped)


def group_label(row: pd.Series) -> str:
    """The configuration a row belongs to, without its seed: seeds of one group are aggregated."""
    try:
        axes = json.loads(row.get("axes_json") or "{}")
    except json.JSONDecodeError:
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
