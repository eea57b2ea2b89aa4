"""Published reference numbers and the paper-style comparison table (measured beside published)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.aggregate import fmt_mean_std
from analysis.load import AnalysisError

DEFAULT_PUBLISHED = Path(__file__).resolve().parents[1] / "experiments" / "reference" / "published.yaml"
REQUIRED = ("method", "dataset", "variant", "source", "confirmed")


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    path = Path(path) if path is not None else DEFAULT_PUBLISHED
    if not path.is_file():
        return pd.DataFrame(columns=[*REQUIRED, "test_error_pct", "params_m"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AnalysisError(f"published numbers {path} are not valid YAML: {exc}") from exc
    entries = (data or {}).get("entries", [])
    for i, e in enumerate(entries):
        missing = [k for k in REQUIRED if k not in e]
        if missing:
            raise AnalysisError(f"{path} entries[{i}] lacks {', '.join(missing)}")
    frame = pd.DataFrame(entries)
    for col in ("test_error_pct", "test_error_std", "params_m", "flops_m", "search_cost_gpu_days"):
        if col not in frame:
            frame[col] = np.nan
    return frame


def _published_text(value: Any, confirmed: bool, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" + ("" if confirmed else "?")


def search_cost_text(seconds: float, device: str | None) -> str:
    if seconds is None or np.isnan(seconds):
        return "—"
    unit = "GPU-h" if device and device.startswith("cuda") else "CPU-h"
    return f"{seconds / 3600:.3f} {unit}"


def comparison_table(agg: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per measured configuration, with the method's published numbers on that dataset."""
    rows = []
    for r in agg.sort_values(["dataset", "method", "nonzero_params_m_mean"]).itertuples():
        pub = published[(published["method"] == r.method) & (published["dataset"] == r.dataset)]
        p = pub.iloc[0] if len(pub) else None
        rows.append({
            "method": r.method,
            "dataset": r.dataset,
            "configuration": r.group,
            "seeds": r.n,
            "test error % (measured)": fmt_mean_std(1 - r.test_acc_mean, r.test_acc_std, r.n, 100.0),
            "params M": fmt_mean_std(r.nonzero_params_m_mean, r.nonzero_params_m_std, r.n, 1.0, 3),
            "FLOPs M": fmt_mean_std(r.flops_m_mean, r.flops_m_std, r.n, 1.0, 1),
            "search cost": search_cost_text(r.search_time_s_mean, getattr(r, "device", None)),
            "peak search memory MB": f"{r.search_peak_mem_mb_mean:.0f}",
            "test error % (published)": "—" if p is None else _published_text(p["test_error_pct"], p["confirmed"]),
            "params M (published)": "—" if p is None else _published_text(p["params_m"], p["confirmed"]),
            "search cost GPU-days (published)": "—" if p is None else _published_text(
                p["search_cost_gpu_days"], p["confirmed"]),
            "published source": "—" if p is None else f"{p['variant']}: {p['source']}",
        })
    return pd.DataFrame(rows)
