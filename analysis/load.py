"""Load a results folder (one experiment, or a folder of experiments) with pyarrow/pandas only.

Unreadable files (truncated, not Parquet) are reported by name and skipped, never mixed in;
an empty folder, a folder without a finished trial or a mix of schema versions is a clear
:class:`AnalysisError`, not a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
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


def experiment_dirs(root: Path) -> list[Path]:
    """``root`` itself if it holds ``results/``, else its sub-folders that do."""
    if (root / "results").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "results").is_dir())


def _read_tables(paths: list[Path], skipped: list[str]) -> list[pa.Table]:
    tables = []
    for path in paths:
        try:
            tables.append(pq.read_table(path))
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
    root = Path(root)
    if not root.is_dir():
        raise AnalysisError(f"results folder {root} does not exist")
    dirs = experiment_dirs(root)
    if not dirs:
        raise AnalysisError(f"{root} holds no results: expected {root}/results/ or <experiment>/results/ folders "
                            "written by `mgas run`")
    skipped: list[str] = []
    row_tables = _read_tables([p for d in dirs for p in sorted((d / "results").glob("method=*/*.parquet"))], skipped)
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
    curves = _frame(_read_tables([p for d in dirs for p in sorted((d / "curves").glob("method=*/*.parquet"))],
                                 skipped))
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
