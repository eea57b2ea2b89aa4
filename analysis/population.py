"""The network-level multi-objective search in the report: each population's candidates, its
non-dominated set (the rows' ``non_dominated`` column, marked when the sweep ended) as a front,
the other methods' retrained architectures beside it, and a table of the front."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.plots import Style, save_figure, style

CANDIDATES = "network_mo"
COSTS = {"nonzero_params_m": "nonzero parameters (M)", "latency_ms": "measured latency (ms)"}


def population_rows(ok: pd.DataFrame) -> pd.DataFrame:
    """The candidates of every population (ok rows of method ``network_mo``)."""
    if "method" not in ok or "non_dominated" not in ok:
        return ok.iloc[:0]
    return ok[ok["method"] == CANDIDATES]


def population_cost(candidates: pd.DataFrame) -> str:
    """The population's second objective, as its candidates recorded it (``axes_json``)."""
    objective = json.loads(candidates["axes_json"].iloc[0] or "{}").get("objective") if "axes_json" in candidates \
        else None
    return objective if objective in COSTS else "nonzero_params_m"


def population_front_figure(ok: pd.DataFrame, styles: dict[str, Style] | None = None) -> plt.Figure:
    """Validation accuracy (the search's objective) vs the population's cost, per experiment: every
    candidate (faded), the non-dominated ones joined by a step line, and the other methods' rows of
    the same experiment (the block stage's searches) as their own markers."""
    candidates = population_rows(ok)
    experiments = sorted(candidates["experiment"].unique())
    fig, axes = plt.subplots(1, len(experiments), figsize=(6.4 * len(experiments), 4.6), squeeze=False)
    for ax, experiment in zip(axes[0], experiments):
        pop = candidates[candidates["experiment"] == experiment]
        cost = population_cost(pop)
        colour, marker, label = style(CANDIDATES, styles)
        front_mask = pop["non_dominated"].fillna(False).astype(bool)
        rest, front = pop[~front_mask], pop[front_mask].sort_values(cost)
        ax.scatter(rest[cost], rest["val_acc"] * 100, color=colour, marker=marker, alpha=0.35, s=36,
                   label=f"{label}: candidates ({len(pop)})", zorder=2)
        ax.step(front[cost], front["val_acc"] * 100, where="post", color="black", linewidth=1.2, zorder=1,
                label="non-dominated set")
        ax.scatter(front[cost], front["val_acc"] * 100, color=colour, marker=marker, s=56, edgecolor="black",
                   label=f"{label}: non-dominated ({len(front)})", zorder=3)
        others = ok[(ok["experiment"] == experiment) & (ok["method"] != CANDIDATES)]
        for method, rows in others.groupby("method", sort=True):
            o_colour, o_marker, o_label = style(str(method), styles)
            ax.scatter(rows[cost], rows["val_acc"] * 100, color=o_colour, marker=o_marker, s=48,
                       label=f"{o_label} (block stage)", zorder=2)
        generations = pop["generation"].dropna()
        span = f", {int(generations.max()) + 1} generations" if len(generations) else ""
        ax.set_title(f"{experiment}: population front{span}")
        ax.set_xlabel(COSTS[cost])
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return fig


def population_front_plot(ok: pd.DataFrame, folder: Path, styles: dict[str, Style] | None = None) -> Path | None:
    if population_rows(ok).empty:
        return None
    return save_figure(population_front_figure(ok, styles), folder, "population_front")


def front_table(ok: pd.DataFrame) -> pd.DataFrame:
    """The non-dominated candidates: genome, objectives and test accuracy (reported, not selected on)."""
    pop = population_rows(ok)
    front = pop[pop["non_dominated"].fillna(False).astype(bool)]
    if front.empty:
        return pd.DataFrame()
    out = pd.DataFrame({
        "experiment": front["experiment"], "candidate": front["candidate"].astype("Int64"),
        "generation": front["generation"].astype("Int64"), "cells_per_stage": front["cells_per_stage"],
        "channels": front["channels"], "val_acc %": np.round(front["val_acc"] * 100, 2),
        "test_acc %": np.round(front["test_acc"] * 100, 2), "nonzero_params_m": front["nonzero_params_m"],
        "latency_ms": front.get("latency_ms"),
    })
    return out.sort_values(["experiment", "nonzero_params_m"]).reset_index(drop=True)
