"""Figures: Pareto trade-offs, remaining-ratio curves, search cost/memory bars, ablations.

Every function writes ``<name>.png`` and ``<name>.pdf`` into a folder and returns the PNG path.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.aggregate import front_steps, pareto_front

Style = tuple[str | None, str | None, str]
"""How a method is drawn: colour, marker (None: from the palette) and label. The methods declare
theirs (``SearchMethod.style``) and ``mgas report`` passes them in; analysis imports no method."""
PALETTE = [("#1f77b4", "o"), ("#ff7f0e", "s"), ("#2ca02c", "^"), ("#d62728", "D"), ("#9467bd", "v"),
           ("#8c564b", "P"), ("#e377c2", "X"), ("#7f7f7f", "*"), ("#bcbd22", "<"), ("#17becf", ">")]


def style(method: str, styles: dict[str, Style] | None = None) -> tuple[str, str, str]:
    """Colour, marker and label of ``method``: as declared in ``styles``, the palette filling what
    is not declared (chosen by the name, so a method keeps its colour in every figure)."""
    colour, marker = PALETTE[zlib.crc32(method.encode()) % len(PALETTE)]
    declared = (styles or {}).get(method)
    if declared is None:
        return colour, marker, method
    return declared[0] or colour, declared[1] or marker, declared[2]


def save_figure(fig: plt.Figure, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{name}.png"
    fig.savefig(png, dpi=130, bbox_inches="tight")
    fig.savefig(folder / f"{name}.pdf", bbox_inches="tight")
    plt.close(fig)
    return png


def _error(values: pd.Series, counts: pd.Series, scale: float = 1.0) -> np.ndarray | None:
    """Error bars only where a point aggregates two seeds or more (one seed has no spread)."""
    err = np.where(counts.to_numpy() >= 2, values.fillna(0.0).to_numpy(dtype=float) * scale, 0.0)
    return err if err.any() else None


def pareto_plot(agg: pd.DataFrame, folder: Path, cost: str = "nonzero_params_m", name: str = "pareto",
                xlabel: str = "nonzero parameters (M)", series: pd.DataFrame | None = None,
                styles: dict[str, Style] | None = None) -> Path:
    """:func:`pareto_figure` written as ``<name>.png`` and ``.pdf``."""
    return save_figure(pareto_figure(agg, cost, xlabel, series, styles), folder, name)


def pareto_figure(agg: pd.DataFrame, cost: str = "nonzero_params_m", xlabel: str = "nonzero parameters (M)",
                  series: pd.DataFrame | None = None, styles: dict[str, Style] | None = None) -> plt.Figure:
    """Test accuracy vs ``cost`` per configuration (mean ± std over seeds, bars only with two
    seeds or more); the front of every dataset as a step line, dominated points faded; MGAS
    points labelled with their target; every search that yields a series (GOLD-NAS's retrained
    snapshots, ``series``) drawn as its own connected line, labelled ``... series``."""
    datasets = sorted(agg["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 4.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sub = agg[agg["dataset"] == dataset].copy()
        sub["acc_pct"] = sub["test_acc_mean"] * 100
        drawn = series[series["dataset"] == dataset] if series is not None and not series.empty else None
        # the front over every measured architecture: the configurations and the other snapshots of a series
        points = sub[[f"{cost}_mean", "acc_pct"]].rename(columns={f"{cost}_mean": "cost"})
        if drawn is not None:
            others = drawn[drawn["snapshot_final"].map(lambda v: v is False or v is np.False_)]
            points = pd.concat([points, pd.DataFrame({"cost": others[cost].to_numpy(dtype=float),
                                                      "acc_pct": others["test_acc"].to_numpy(dtype=float) * 100})],
                               ignore_index=False)
            points.index = [*sub.index, *[f"series{i}" for i in range(len(others))]]
        on_front = pareto_front(points, "cost", "acc_pct")
        xs, ys = front_steps(points, "cost", "acc_pct")
        if len(xs):  # the front holds its best accuracy up to the largest model shown
            right = float(points["cost"].max())
            xs, ys = np.append(xs, max(right, xs[-1]) * 1.02), np.append(ys, ys[-1])
            ax.step(xs, ys, where="post", color="black", linewidth=1.2, alpha=0.7, label="Pareto front", zorder=1)
        methods = sorted(sub["method"].unique())
        for method in methods:
            colour, marker, label = style(method, styles)
            m = sub[sub["method"] == method]
            missed = m["target_missed"].fillna(False).astype(bool) if "target_missed" in m else m["n"] < 0
            for front_flag, alpha in ((True, 1.0), (False, 0.35)):
                for miss in (False, True):
                    pts = m[(on_front[m.index] == front_flag) & (missed == miss)]
                    if pts.empty:
                        continue
                    first = front_flag or m[on_front[m.index]].empty
                    ax.errorbar(pts[f"{cost}_mean"], pts["acc_pct"], yerr=_error(pts["test_acc_std"], pts["n"], 100),
                                xerr=_error(pts[f"{cost}_std"], pts["n"]), fmt=marker, color=colour, alpha=alpha,
                                markersize=7, capsize=3, linestyle="none", zorder=2, mfc="none" if miss else colour,
                                label=(f"{label} (target missed)" if miss else label) if first else None)
            if "reference" in m and m["reference"].fillna(False).astype(bool).all() and "arch_name" in m:
                for row in m.itertuples():  # reference rows: the published architecture's name beside it
                    ax.annotate(f"{row.arch_name} (published)", (getattr(row, f"{cost}_mean"), row.acc_pct),
                                textcoords="offset points", xytext=(5, -10), fontsize=7, color=colour)
                continue
            if "target_params_m" in m:  # searches for a target size: the target beside each point
                for row in m.itertuples():
                    if row.target_params_m == row.target_params_m and row.target_params_m is not None:
                        ax.annotate(f"target {row.target_params_m:g}M", (getattr(row, f"{cost}_mean"), row.acc_pct),
                                    textcoords="offset points", xytext=(5, 5), fontsize=7, color=colour)
        if drawn is not None:
            _draw_series(ax, drawn, cost, styles)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset}: accuracy vs {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return fig


def _draw_series(ax: plt.Axes, series: pd.DataFrame, cost: str, styles: dict[str, Style] | None) -> None:
    """One connected line per search, through its retrained snapshots in the order taken."""
    for trial_id, points in series.groupby("trial_id", sort=True):
        points = points.sort_values("snapshot_index")
        method = str(points["method"].iloc[0])
        colour, marker, label = style(method, styles)
        seed = points["seed"].iloc[0] if "seed" in points else None
        ax.plot(points[cost], points["test_acc"] * 100, color=colour, marker=marker, markersize=4, linewidth=1.0,
                alpha=0.8, zorder=2, mfc="white",
                label=f"{label} series ({trial_id if seed is None else f'seed {seed}'}, {len(points)} retrained)")


def remaining_ratio_plot(curves: pd.DataFrame, folder: Path) -> Path | None:
    """MGAS: remaining ratio of each granularity over search epochs, one line per trial."""
    if curves.empty or "remaining_ratio_op" not in curves:
        return None
    sub = curves[(curves["method"] == "mgas") & (curves["phase"] == "search")]
    if sub.empty:
        return None
    levels = ("op", "filter", "weight")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
    for ax, level in zip(axes, levels):
        for trial_id, t in sub.groupby("trial_id"):
            ax.plot(t["epoch"], t[f"remaining_ratio_{level}"], marker=".", label=trial_id)
        ax.set_title(f"{level} level")
        ax.set_xlabel("search epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("remaining ratio (fraction of units kept)")
    axes[-1].legend(fontsize=6, loc="lower left")
    return save_figure(fig, folder, "remaining_ratio")


def cost_memory_plot(agg: pd.DataFrame, folder: Path, styles: dict[str, Style] | None = None) -> Path:
    """Mean search time and peak search memory per method (bars), per dataset."""
    per = agg.groupby(["dataset", "method"]).agg(seconds=("search_time_s_mean", "mean"),
                                                 mem=("search_peak_mem_mb_mean", "mean")).reset_index()
    labels = [f"{style(m, styles)[2]}\n{d}" for d, m in zip(per["dataset"], per["method"])]
    colours = [style(m, styles)[0] for m in per["method"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(per) * 2), 3.8))
    a.bar(labels, per["seconds"] / 60, color=colours)
    a.set_ylabel("search time (minutes)")
    a.set_title("search cost per method")
    b.bar(labels, per["mem"], color=colours)
    b.set_ylabel("peak search memory (MB)")
    b.set_title("peak memory per method")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, folder, "search_cost_memory")


def ablation_plot(table: pd.DataFrame, method: str, factor: str, folder: Path,
                  styles: dict[str, Style] | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(len(table))
    ax.bar(x, table["test_acc_mean"] * 100, yerr=table["test_acc_std"].fillna(0.0) * 100,
           color=style(method, styles)[0], capsize=3)
    ax.set_xticks(x, [str(v) for v in table[factor]], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(factor)
    ax.set_ylabel("test accuracy (%)")
    low = float((table["test_acc_mean"] - table["test_acc_std"].fillna(0.0)).min() * 100)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax2 = ax.twinx()
    ax2.plot(x, table["nonzero_params_m_mean"], color="black", marker="o")
    ax2.set_ylabel("nonzero parameters (M)")
    ax.set_title(f"{style(method, styles)[2]} ablation over {factor}")
    return save_figure(fig, folder, f"ablation_{method}_{factor}")
