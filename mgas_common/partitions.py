"""The Hive partition of result files: ``results/method=<m>/<trial>.parquet``. The method lives in
the folder name only, so every standard reader (pandas, pyarrow datasets, polars, duckdb) reads a
results folder as one table with a ``method`` column; code that opens one file adds it back."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import pyarrow as pa

PARTITION_KEY = "method"


def partition_value(path: str) -> str | None:
    """The method named by the folder a file sits in (``.../method=darts/x.parquet`` -> ``darts``)."""
    folder = posixpath.basename(posixpath.dirname(str(path).replace("\\", "/")))
    prefix = f"{PARTITION_KEY}="
    return unquote(folder[len(prefix):]) if folder.startswith(prefix) else None


def without_partition_column(schema: pa.Schema) -> pa.Schema:
    """The schema a file is written with: the row schema less the partition key."""
    index = schema.get_field_index(PARTITION_KEY)
    return schema if index < 0 else schema.remove(index)


def with_partition_column(table: pa.Table, path: str) -> pa.Table:
    """``table`` as read from the file at ``path``, with the partition key as a column (files written
    before it moved into the folder name hold the column already and are returned as they are)."""
    value = partition_value(path)
    if PARTITION_KEY in table.column_names or value is None:
        return table
    column = pa.array([value] * table.num_rows, pa.string())
    index = table.column_names.index("trial_id") + 1 if "trial_id" in table.column_names else table.num_columns
    return table.add_column(index, PARTITION_KEY, column)
