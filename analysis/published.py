"""Published reference numbers and the paper-style comparison table (measured beside published)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import fmt_mean_std
from analysis.load import AnalysisError
from mgas_core.errors import UserInputError
from mgas_core.safe_yaml import load_yaml
from mgas_core.user_files import read_input_text

DEFAULT_PUBLISHED = Path(__file__).resolve().parents[1] / "experiments" / "reference" / "published.yaml"
REQUIRED = ("method", "dataset", "variant", "source", "confirmed")


NUMERIC = ("test_error_pct", "test_error_std", "params_m", "flops_m", "search_cost_gpu_days")


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, expected a mapping"
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key in ("method", "dataset", "variant", "source"):
        if not isinstance(entry[key], str):
            return f"{key} must be text"
    if not isinstance(entry["confirmed"], bool):
        return "confirmed must be true or false"
    for key in NUMERIC:
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            return f"{key} must be a finite number or empty, got {value!r}"
    return None


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """The published reference numbers (``entries`` of a YAML file, each checked)."""
    path = Path(path) if path is not None else DEFAULT_PUBLISHED
    if path == DEFAULT_PUBLISHED and not path.is_file():
        return pd.DataFrame(columns=[*REQUIRED, *NUMERIC])
    try:
        data = load_yaml(read_input_text(path, "published numbers"), f"published numbers {path}")
    except UserInputError as exc:
        raise AnalysisError(str(exc)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict) or not isinstance(data.get("entries", []), list):
        raise AnalysisError(f"published numbers {path} must be a mapping with a list of 'entries'")
    entries = data.get("entries", [])
    for i, e in enumerate(entries):
        problem = _entry_problem(e)
        if problem:
            raise AnalysisError(f"{path} entries[{i}] {problem}")
    frame = pd.DataFrame(entries, columns=sorted({k for e in entries for k in e} | set(REQUIRED)))
    for col in NUMERIC:
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
