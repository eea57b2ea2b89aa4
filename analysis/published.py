"""Published reference numbers and the paper-style comparison table (measured beside published).

A published entry is joined to a measured configuration on what makes the two comparable, never
on the method name alone: the method and dataset, the search space, the evaluation protocol and
model variant, and any extra settings the entry names (``experiments/reference/published.yaml``
explains the format). Each is a set of settings of the trial's resolved config (``config_json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import fmt_mean_std
from analysis.load import AnalysisError
from mgas_common.errors import UserInputError
from mgas_common.safe_yaml import load_yaml
from mgas_common.user_files import read_input_text

DEFAULT_PUBLISHED = Path(__file__).resolve().parents[1] / "experiments" / "reference" / "published.yaml"
REQUIRED = ("method", "dataset", "variant", "source", "confirmed", "space", "protocol")
NUMERIC = ("test_error_pct", "test_error_std", "params_m", "flops_m", "search_cost_gpu_days")
SCALARS = (str, int, float, bool, type(None))
UNSET = object()


def _settings_problem(value: Any, what: str) -> str | None:
    """Why ``value`` is not a mapping of dotted setting paths to scalar values, or None."""
    if not isinstance(value, dict):
        return f"{what} must be a mapping of dotted setting paths to values, got {type(value).__name__}"
    for key, setting in value.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            return f"{what} key {key!r} must be a dotted setting path such as search.darts.order"
        if not isinstance(setting, SCALARS) or (isinstance(setting, float) and not math.isfinite(setting)):
            return f"{what} {key} must be a plain value (text, number, true/false or null), got {setting!r}"
    return None


def _entry_problem(entry: Any, spaces: dict[str, Any], protocols: dict[str, Any]) -> str | None:
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
    for key, known in (("space", spaces), ("protocol", protocols)):
        name = entry[key]
        if name is not None and (not isinstance(name, str) or name not in known):
            allowed = ", ".join(sorted(known)) or "none defined"
            return f"{key} {name!r} is not one of the file's {key}s ({allowed}; null: not comparable)"
    if "match" in entry:
        problem = _settings_problem(entry["match"], "match")
        if problem:
            return problem
    for key in NUMERIC:
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            return f"{key} must be a finite number or empty, got {value!r}"
    return None


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """The published entries of a YAML file, each checked, with its resolved ``settings``: the
    settings a measured configuration must have for the entry to be set beside it (None when the
    entry's space or protocol is not known, so it is never matched)."""
    path = Path(path) if path is not None else DEFAULT_PUBLISHED
    if path == DEFAULT_PUBLISHED and not path.is_file():
        return pd.DataFrame(columns=[*REQUIRED, *NUMERIC, "settings"])
    try:
        data = load_yaml(read_input_text(path, "published numbers"), f"published numbers {path}")
    except UserInputError as exc:
        raise AnalysisError(str(exc)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict) or not isinstance(data.get("entries", []), list):
        raise AnalysisError(f"published numbers {path} must be a mapping with a list of 'entries'")
    groups: dict[str, dict[str, Any]] = {}
    for group in ("spaces", "protocols"):
        named = data.get(group, {}) or {}
        if not isinstance(named, dict):
            raise AnalysisError(f"published numbers {path}: {group} must be a mapping of names to settings")
        for name, settings in named.items():
            problem = _settings_problem(settings, f"{group}.{name}")
            if problem:
                raise AnalysisError(f"published numbers {path}: {problem}")
        groups[group] = named
    entries = data.get("entries", [])
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry, groups["spaces"], groups["protocols"])
        if problem:
            raise AnalysisError(f"{path} entries[{i}] {problem}")
    rows = []
    for entry in entries:
        comparable = entry["space"] is not None and entry["protocol"] is not None
        settings = ({"search.method": entry["method"], "data.name": entry["dataset"],
                     **groups["spaces"][entry["space"]], **groups["protocols"][entry["protocol"]],
                     **entry.get("match", {})} if comparable else None)
        rows.append({**entry, "settings": settings})
    frame = pd.DataFrame(rows, columns=sorted({k for e in rows for k in e} | {*REQUIRED, "settings"}))
    for col in NUMERIC:
        if col not in frame:
            frame[col] = np.nan
    return frame


def setting(config: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of a resolved config (``UNSET`` where it has none)."""
    value: Any = config
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return UNSET
        value = value[part]
    return value


def matches(config: dict[str, Any], settings: dict[str, Any] | None) -> bool:
    """Whether a measured configuration has every setting of a published entry."""
    if settings is None:
        return False
    for path, wanted in settings.items():
        value = setting(config, path)
        if value is UNSET or value != wanted or isinstance(value, bool) != isinstance(wanted, bool):
            return False
    return True


def matching_entries(config_json: str | None, published: pd.DataFrame) -> list[pd.Series]:
    try:
        config = json.loads(config_json) if config_json else {}
    except (json.JSONDecodeError, TypeError):
        config = {}
    if not isinstance(config, dict):
        return []
    return [p for _, p in published.iterrows() if matches(config, p["settings"])]


def _published_text(value: Any, confirmed: bool, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" + ("" if confirmed else "?")


def search_cost_text(seconds: float, device: str | None) -> str:
    """Measured search cost in the published unit where it is one: GPU-days on a GPU; on a CPU
    in CPU-hours, stated as such (never set beside GPU-days as if comparable)."""
    if seconds is None or np.isnan(seconds):
        return "—"
    if not isinstance(device, str):
        return f"{seconds / 3600:.3f} hours (device not recorded)"
    if device.startswith("cuda"):
        return f"{seconds / 86400:.4f} GPU-days"
    return f"{seconds / 3600:.3f} CPU-hours"


MEMORY_KIND_SHORT = {"cuda max_memory_allocated": "CUDA allocator peak",
                     "cpu peak RSS above the start of the run": "CPU RSS above start",
                     "cpu process peak RSS": "CPU process RSS"}


def memory_text(mean: float, kind: str | None) -> str:
    if mean is None or np.isnan(mean):
        return "—"
    kind = kind if isinstance(kind, str) and kind else None
    label = MEMORY_KIND_SHORT.get(kind, kind) if kind else "kind not recorded"
    return f"{mean:.0f} ({label})"


def comparison_table(agg: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per measured configuration and published entry that matches it (or "—" beside it
    when none does), measured values as mean ± std over seeds."""
    rows = []
    for r in agg.sort_values(["dataset", "method", "nonzero_params_m_mean"]).itertuples():
        measured = {
            "method": r.method,
            "dataset": r.dataset,
            "configuration": r.group,
            "seeds": r.n,
            "test error % (measured)": fmt_mean_std(1 - r.test_acc_mean, r.test_acc_std, r.n, 100.0),
            "params M": fmt_mean_std(r.nonzero_params_m_mean, r.nonzero_params_m_std, r.n, 1.0, 3),
            "FLOPs M": fmt_mean_std(r.flops_m_mean, r.flops_m_std, r.n, 1.0, 1),
            "search cost": search_cost_text(r.search_time_s_mean, getattr(r, "device", None)),
            "peak search memory MB": memory_text(r.search_peak_mem_mb_mean, getattr(r, "search_peak_mem_kind", None)),
        }
        for p in matching_entries(getattr(r, "config_json", None), published) or [None]:
            rows.append({
                **measured,
                "test error % (published)": "—" if p is None else _published_text(p["test_error_pct"],
                                                                                   p["confirmed"]),
                "params M (published)": "—" if p is None else _published_text(p["params_m"], p["confirmed"]),
                "search cost GPU-days (published)": "—" if p is None else _published_text(
                    p["search_cost_gpu_days"], p["confirmed"]),
                "published source": "—" if p is None else f"{p['variant']}: {p['source']}",
            })
    return pd.DataFrame(rows)
