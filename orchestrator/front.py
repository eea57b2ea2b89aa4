"""The non-dominated set of a population's candidates, marked in their rows (``non_dominated``).

A candidate is non-dominated when no other finished candidate of the experiment has at least its
validation accuracy and at most its cost (nonzero parameters, or measured latency: the population's
objective, recorded in each candidate's ``axes_json``) with one of the two strictly better. The
rows are rewritten in place (each trial's file, temp file then rename), so ``mgas collect`` and a
resumed sweep mark the same set.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from analysis.aggregate import pareto_front
from orchestrator.population import ACCURACY_METRIC, CANDIDATE_METHOD, OBJECTIVE_METRICS
from orchestrator.results import file_table, read_rows, result_location, result_schema, table_bytes
from orchestrator.storage import Location


def front_mask(rows: list[dict[str, Any]], cost: str) -> list[bool]:
    """Per row: non-dominated among the ok rows (accuracy up, ``cost`` down); failed rows: False."""
    frame = pd.DataFrame([{"cost": r.get(cost) if r.get("status") == "ok" else None,
                           "score": r.get(ACCURACY_METRIC) if r.get("status") == "ok" else None} for r in rows])
    frame = frame.astype(float)
    return [bool(v) for v in pareto_front(frame, "cost", "score")]


def mark_front(experiment: Location) -> list[str]:
    """Mark the candidates' rows of ``experiment``; returns the trial ids of the front."""
    rows = [r for r in read_rows(experiment) if r.get("method") == CANDIDATE_METHOD]
    if not rows:
        return []
    objective = json.loads(rows[0].get("axes_json") or "{}").get("objective", OBJECTIVE_METRICS["params"])
    mask = front_mask(rows, objective)
    front = []
    for row, on_front in zip(rows, mask):
        if on_front:
            front.append(row["trial_id"])
        if row.get("non_dominated") == on_front:
            continue
        location = result_location(experiment, CANDIDATE_METHOD, row["trial_id"])
        table = pq.read_table(io.BytesIO(location.read_bytes()))
        stored = table.to_pylist()
        for r in stored:
            r["non_dominated"] = on_front
        location.write_bytes(table_bytes(file_table(stored, result_schema())))
    return sorted(front)
