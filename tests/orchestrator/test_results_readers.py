"""Results are readable by the standard tools: ``results/`` and ``curves/`` of an experiment read
as one table each, with a ``method`` column, by pandas, pyarrow (file reader and datasets), polars
and duckdb (schema version 2: ``method`` lives in the Hive partition folder's name only). Folders
written before (version 1, ``method`` inside every file too, tests/data/results_v1) stay readable
by ``mgas report`` and by ``read_rows``, alone or beside new ones. The real sweep of test_sweep.py
is read with every reader too."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from analysis.load import load_results
from mgas_core.latency.measure import LATENCY_FIELDS
from orchestrator.cli import main
from orchestrator.results import read_rows, write_trial

V1 = Path(__file__).resolve().parents[1] / "data" / "results_v1" / "quickstart"


def read_with_every_reader(folder: Path) -> dict[str, pd.DataFrame]:
    """One parquet folder (``results/`` or ``curves/``) as each standard reader returns it."""
    frames = {
        "pandas": pd.read_parquet(folder),
        "pyarrow.parquet": pq.read_table(folder).to_pandas(),
        "pyarrow.dataset": pads.dataset(folder, partitioning="hive").to_table().to_pandas(),
        "polars": pl.scan_parquet(folder / "**" / "*.parquet", hive_partitioning=True).collect().to_pandas(),
        "duckdb": duckdb.sql(f"SELECT * FROM read_parquet('{folder}/*/*.parquet', hive_partitioning=1)").df(),
    }
    for frame in frames.values():
        frame["method"] = frame["method"].astype(str)
    return frames


def assert_every_reader_reads(experiment: Path) -> None:
    """Every reader sees the rows ``read_rows`` sees (trial, method, snapshot) and every curve row."""
    rows = read_rows(experiment)
    expected = sorted((r["trial_id"], r["method"], -1 if r["snapshot_index"] is None else r["snapshot_index"])
                      for r in rows)
    for reader, frame in read_with_every_reader(experiment / "results").items():
        got = sorted(zip(frame["trial_id"], frame["method"], frame["snapshot_index"].fillna(-1).astype(int),
                         strict=True))
        assert got == expected, reader
        assert set(frame.columns) >= {"method", "trial_id", "test_acc", "arch_json"}, reader
    curve_files = list((experiment / "curves").glob("method=*/*.parquet"))
    curve_rows = sum(pq.read_metadata(f).num_rows for f in curve_files)
    for reader, frame in read_with_every_reader(experiment / "curves").items():
        assert len(frame) == curve_rows, reader
        assert set(frame["method"]) == {f.parent.name.removeprefix("method=") for f in curve_files}, reader


def history_from_curves(table: pd.DataFrame) -> list[dict]:
    """The epoch records a curves file was written from (the inverse of ``curve_rows``)."""
    history = []
    for rec in table.to_dict("records"):
        rec = {k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()}
        history.append({"phase": rec["phase"], "search_phase": rec["search_phase"],
                        "snapshot_index": rec["snapshot_index"], "epoch": rec["epoch"], "loss": rec["loss"],
                        "train_acc": rec["train_acc"], "val_acc": rec["val_acc"], "time_s": rec["time_s"],
                        "lr": rec["lr"], "lambda": rec["lambda"], "tau": rec["tau"], "stage": rec["stage"],
                        "stage_size_m": rec["size_m"], "remaining_ratio_op": rec["remaining_ratio_op"],
                        "remaining_ratio_filter": rec["remaining_ratio_filter"],
                        "remaining_ratio_weight": rec["remaining_ratio_weight"],
                        "events": json.loads(rec["events_json"])})
    return history


def rewrite_as_today(source: Path, target: Path) -> None:
    """Every trial of a version-1 experiment written again by today's writer."""
    by_trial: dict[str, list[dict]] = defaultdict(list)
    for row in read_rows(source):
        row = {k: v for k, v in row.items() if k != "schema_version"}
        by_trial[row["trial_id"]].append({**row, "experiment": target.name})
    for trial_id, rows in by_trial.items():
        curves = pq.read_table(next((source / "curves").glob(f"method=*/{trial_id}.parquet"))).to_pandas()
        write_trial(target, sorted(rows, key=lambda r: r["snapshot_index"] or 0), history_from_curves(curves))


def test_todays_files_are_one_table_with_a_method_column_for_every_reader(tmp_path):
    today = tmp_path / "today" / "quickstart"  # the same name: the same rows
    rewrite_as_today(V1, today)
    files = list((today / "results").glob("method=*/*.parquet"))
    assert files and all("method" not in pq.read_schema(f).names for f in files)  # in the folder name only
    assert_every_reader_reads(today)
    old = sorted(read_rows(V1), key=lambda r: (r["trial_id"], r["snapshot_index"] or 0))
    new = sorted(read_rows(today), key=lambda r: (r["trial_id"], r["snapshot_index"] or 0))
    assert [r["schema_version"] for r in new] == [2] * len(old)
    # columns added since (the measured latency; a population's candidate, generation and non-dominated flag;
    # the cells per stage of a stage-level architecture), empty in a rewritten file
    added = set(new[0]) - set(old[0])
    assert added == {*LATENCY_FIELDS, "candidate", "generation", "non_dominated", "cells_per_stage"}
    assert all(r[k] is None for r in new for k in added)
    assert [{**{k: r[k] for k in old[0]}, "schema_version": 0, "experiment": "x"} for r in new] == \
        [{**r, "schema_version": 0, "experiment": "x"} for r in old]


def test_folders_written_before_stay_readable_alone_and_beside_new_ones(tmp_path, capsys):
    old = load_results(V1)
    assert sorted(old.rows["method"].unique()) == ["darts", "gold_nas", "mgas"]
    root = tmp_path / "results"
    shutil.copytree(V1, root / "quickstart")
    rewrite_as_today(V1, root / "again")
    both = load_results(root)
    columns = ["trial_id", "method", "test_acc", "arch_json"]
    halves = [both.rows[both.rows["experiment"] == e][columns].sort_values(columns[:3]).reset_index(drop=True)
              for e in ("quickstart", "again")]
    assert halves[0].equals(halves[1]) and len(both.curves) == 2 * len(old.curves)
    assert main(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").read_text().count("gold_nas") >= 1
