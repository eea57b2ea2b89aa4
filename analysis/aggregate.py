"""Aggregation over seeds, Pareto fronts and ablation tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("test_acc", "val_acc", "params_m", "nonzero_params_m", "flops_m", "latency_ms", "search_time_s",
           "search_peak_mem_mb", "retrain_time_s", "target_gap")


def trial_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Each trial's own row: the architecture its search ended on (a GOLD-NAS search's other
    snapshots are rows of their own, ``snapshot_final`` false, drawn as its series)."""
    if "snapshot_final" not in rows:
        return rows
    return rows[rows["snapshot_final"].map(lambda v: v is None or bool(v) or v != v)]


def snapshot_series(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of searches that yield a series of architectures (GOLD-NAS), one per snapshot."""
    if "snapshot_index" not in rows:
        return rows.iloc[:0]
    return rows[rows["snapshot_index"].notna()].sort_values(["trial_id", "snapshot_index"])


def aggregate(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, dataset, group): mean, std and count of every metric over seeds
    (each trial's own row only; see :func:`trial_rows`)."""
    ok = trial_rows(ok)
    keys = ["experiment", "dataset", "method", "group"]
    grouped = ok.groupby(keys, dropna=False)
    out = grouped.size().rename("n").to_frame()
    for metric in METRICS:
        if metric not in ok:
            continue
        out[f"{metric}_mean"] = grouped[metric].mean()
        out[f"{metric}_std"] = grouped[metric].std(ddof=1)  # NaN for one seed: no spread to state
    for extra in ("target_params_m", "granularities", "stages", "subgraphs", "device", "target_missed",
                  "search_peak_mem_kind", "config_json", "reference", "arch_name", "latency_device", "latency_batch"):
        if extra in ok:
            out[extra] = grouped[extra].first()
    return out.reset_index()


def pareto_front(points: pd.DataFrame, cost: str, score: str) -> pd.Series:
    """Boolean mask of non-dominated points: no other point has lower-or-equal ``cost`` and
    higher-or-equal ``score`` with at least one strict."""
    c = points[cost].to_numpy(dtype=float)
    s = points[score].to_numpy(dtype=float)
    mask = np.ones(len(points), dtype=bool)
    for i in range(len(points)):
        if np.isnan(c[i]) or np.isnan(s[i]):
            mask[i] = False
            continue
        dominated = (c <= c[i]) & (s >= s[i]) & ((c < c[i]) | (s > s[i]))
        mask[i] = not dominated.any()
    return pd.Series(mask, index=points.index)


def front_steps(points: pd.DataFrame, cost: str, score: str) -> tuple[np.ndarray, np.ndarray]:
    """The front as a step line: sorted by cost, the best score reached so far."""
    front = points[pareto_front(points, cost, score)].sort_values(cost)
    return front[cost].to_numpy(dtype=float), front[score].to_numpy(dtype=float)


ABLATION_FACTORS = ("granularities", "stages", "target_params_m", "subgraphs")


def varying_factors(agg: pd.DataFrame, method: str) -> list[str]:
    """The ablation factors that take more than one value for ``method``."""
    sub = agg[agg["method"] == method]
    return [f for f in ABLATION_FACTORS if f in sub and sub[f].nunique(dropna=True) > 1]


def ablation_table(agg: pd.DataFrame, method: str, factor: str) -> pd.DataFrame:
    sub = agg[agg["method"] == method].copy()
    cols = [factor, "n", "test_acc_mean", "test_acc_std", "nonzero_params_m_mean", "flops_m_mean",
            "search_time_s_mean", "search_peak_mem_mb_mean"]
    cols = [c for c in cols if c in sub]
    return sub[cols].sort_values(factor).reset_index(drop=True)


def fmt_mean_std(mean: float, std: float, n: int, scale: float = 1.0, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "—"
    text = f"{mean * scale:.{digits}f}"
    if n and n > 1:
        text += f" ± {std * scale:.{digits}f}"
    return text
