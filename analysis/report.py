"""``mgas report RESULTS_DIR``: figures (PNG + PDF), ``report.md`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
import json
import sys
from pathlib import Path

import pandas as pd

from analysis.aggregate import ablation_table, aggregate, snapshot_series, trial_rows, varying_factors
from analysis.load import Results, load_results
from analysis.plots import Style, ablation_plot, cost_memory_plot, pareto_plot, remaining_ratio_plot
from analysis.population import front_table, population_front_plot
from analysis.published import comparison_table, load_published


def _md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}"  # NaN (a std over one seed, a missing value): left empty
    return str(v).replace("|", "\\|")


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def latency_axis(agg: pd.DataFrame) -> str | None:
    """The accuracy-vs-latency figure's axis label (the devices and batches the rows were timed on),
    or None when no row has a measured latency."""
    if "latency_ms_mean" not in agg or not agg["latency_ms_mean"].notna().any():
        return None
    timed = agg[agg["latency_ms_mean"].notna()]
    devices = sorted({str(d) for d in timed.get("latency_device", pd.Series(dtype=str)).dropna()})
    batches = sorted({int(b) for b in timed.get("latency_batch", pd.Series(dtype=float)).dropna()})
    where = "; ".join(devices) if len(devices) <= 2 else f"{len(devices)} devices"
    batch = f"batch {', '.join(map(str, batches))}" if batches else ""
    return f"measured latency (ms; {', '.join(x for x in (batch, where) if x)})"


def build_report(results: Results, out: Path, published_path: Path | None = None,
                 styles: dict[str, Style] | None = None) -> dict[str, Path]:
    """Figures, tables and the Markdown and HTML report of ``results`` in ``out``; ``styles`` are the
    methods' declared colours, markers and labels (``mgas report`` passes the registry's)."""
    published = load_published(published_path)  # read and checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(results.ok)
    series = snapshot_series(results.ok)
    figures: dict[str, Path] = {
        "pareto": pareto_plot(agg, out, series=series, styles=styles),
        "pareto_flops": pareto_plot(agg, out, cost="flops_m", name="pareto_flops",
                                    xlabel="multiply-adds (M FLOPs)", series=series, styles=styles),
        "search_cost_memory": cost_memory_plot(agg, out, styles),
    }
    latency = latency_axis(agg)
    if latency is not None:
        figures["pareto_latency"] = pareto_plot(agg, out, cost="latency_ms", name="pareto_latency", xlabel=latency,
                                                series=series, styles=styles)
    front = population_front_plot(results.ok, out, styles)
    if front is not None:
        figures["population_front"] = front
    ratio = remaining_ratio_plot(results.curves, out)
    if ratio is not None:
        figures["remaining_ratio"] = ratio
    ablations: list[tuple[str, str, pd.DataFrame]] = []
    for method in sorted(agg["method"].unique()):
        for factor in varying_factors(agg, method):
            table = ablation_table(agg, method, factor)
            ablations.append((method, factor, table))
            figures[f"ablation_{method}_{factor}"] = ablation_plot(table, method, factor, out, styles)
    comparison = comparison_table(agg, published)
    failed = results.failed[["experiment", "trial_id", "method", "error"]] if len(results.failed) else pd.DataFrame()
    own = trial_rows(results.ok)
    missed = own[own["target_missed"]] if "target_missed" in own else own.iloc[:0]
    missed_table = (missed[["experiment", "trial_id", "method", "target_params_m", "nonzero_params_m", "target_gap"]]
                    if len(missed) else pd.DataFrame())
    sections = [
        ("Comparison with published numbers", comparison,
         "Measured: mean ± std over seeds (± only with two seeds or more; test error of the val-selected epoch, "
         "nonzero parameters, multiply-adds, search cost in GPU-days on a GPU and CPU-hours on a CPU, peak "
         "search memory with what it measures). A published row stands beside a configuration only when "
         "method, dataset, search space, evaluation protocol and the entry's extra settings all match "
         "(experiments/reference/published.yaml); otherwise —. Published values marked `?` are not confirmed."),
        ("Reference rows: published architectures retrained here", reference_table(results.ok),
         "Each a published architecture (search.method published: search.published.arch) retrained under this "
         "report's protocol, no search: what the searches above are measured against. Drawn as the grey stars, "
         "labelled with the architecture's name."),
        *[(f"Ablation: {m} over {f}", t, "") for m, f, t in ablations],
        ("Population fronts (network-level NSGA-II)", front_table(results.ok),
         "The non-dominated candidates of each population (validation accuracy up, the population's cost down, "
         "over its finished candidates), as marked in the rows' non_dominated column; test accuracy is reported, "
         "never selected on."),
        ("Snapshot series (GOLD-NAS)", series_table(series),
         "Every snapshot of a search that yields a series, retrained from scratch: one row each, largest first; "
         "the last of each search is the architecture it ended on."),
        ("Trials that missed their target", missed_table,
         "The search ended (epoch budget spent) above its target (MGAS, a GOLD-NAS floor), or a width-scaled "
         "genotype's nearest width is further from its target than retrain.target_tolerance; these rows are "
         "grouped apart (`[target missed]`) and drawn hollow, never averaged with runs that reached the target. "
         "target_gap = nonzero / target - 1."),
        ("Failed trials", failed, ""),
        *provenance_sections(results.rows),
    ]
    md = [f"# mgas report: {', '.join(results.experiments)}\n", f"{counts_text(results)}\n"]
    if results.skipped:
        md.append("Skipped unreadable files:\n" + "".join(f"- {s}\n" for s in results.skipped))
    for key, path in figures.items():
        md.append(f"## {key.replace('_', ' ')}\n\n![{key}]({path.name})\n")
    for title, table, note in sections:
        md.append(f"## {title}\n\n{note}\n\n{_md_table(table)}")
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))
    html_path = out / "report.html"
    html_path.write_text(_html_report(results, figures, sections))
    return {"report_md": md_path, "report_html": html_path, **figures}


def reference_table(ok: pd.DataFrame) -> pd.DataFrame:
    """The reference rows (published architectures retrained here), one per trial."""
    if "reference" not in ok or not ok["reference"].any():
        return pd.DataFrame()
    cols = ["experiment", "dataset", "arch_name", "seed", "test_acc", "params_m", "nonzero_params_m", "flops_m",
            "retrain_time_s"]
    refs = ok[ok["reference"]]
    return refs[[c for c in cols if c in refs]].sort_values(["experiment", "dataset", "arch_name"])


def series_table(series: pd.DataFrame) -> pd.DataFrame:
    if series.empty:
        return pd.DataFrame()
    cols = ["trial_id", "snapshot_index", "snapshot_epoch", "snapshot_final", "nonzero_params_m", "flops_m",
            "test_acc", "retrain_time_s"]
    return series[[c for c in cols if c in series]].reset_index(drop=True)


def provenance_sections(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """Where the numbers come from: code revisions, library versions, devices, and each trial's
    node and GPU (one entry per trial, from its own row)."""
    trials = trial_rows(rows)

    def counts(column: str, name: str) -> pd.DataFrame:
        if column not in trials:
            return pd.DataFrame()
        values = trials[column].fillna("unknown").astype(str)
        return values.value_counts().rename_axis(name).reset_index(name="trials")

    libraries: dict[tuple[str, str], int] = {}
    for text in trials.get("versions", []):
        try:
            versions = json.loads(text) if isinstance(text, str) else {}
        except json.JSONDecodeError:
            versions = {}
        for library, version in (versions.items() if isinstance(versions, dict) else []):
            libraries[(str(library), str(version))] = libraries.get((str(library), str(version)), 0) + 1
    library_table = pd.DataFrame([{"library": lib, "version": ver, "trials": n}
                                  for (lib, ver), n in sorted(libraries.items())])
    placement = [c for c in ("experiment", "trial_id", "method", "status", "device", "device_name", "node_ip",
                             "node_id", "gpu_ids", "git_sha") if c in trials]
    return [
        ("Provenance: code revisions", counts("git_sha", "git revision"), "The git revision each trial ran."),
        ("Provenance: library versions", library_table, "Library versions recorded by each trial."),
        ("Provenance: devices", counts("device_name", "device"), "The device each trial searched and retrained on."),
        ("Provenance: trials", trials[placement].reset_index(drop=True), "Each trial's node, GPU ids and revision."),
    ]


def counts_text(results: Results) -> str:
    """Trials and rows counted apart: a search that yields a series (GOLD-NAS) is one trial whose
    retrained snapshots are rows of their own ("6 trials (6 ok, 0 failed), 8 rows: 2 more are
    retrained GOLD-NAS snapshots")."""
    own = trial_rows(results.rows)
    ok = int((own["status"] == "ok").sum())
    text = f"{len(own)} trials ({ok} ok, {len(own) - ok} failed), {len(results.rows)} rows"
    extra = results.rows.drop(own.index)
    if len(extra):
        per_method = extra.groupby("method").size()
        text += ": " + ", ".join(f"{n} more {'is a' if n == 1 else 'are'} retrained {m} snapshot{'s' * (n != 1)}"
                                 for m, n in per_method.items())
    if "reference" in own and own["reference"].any():
        refs = int(own["reference"].sum())
        text += f"; {refs} of the trials {'is a reference row' if refs == 1 else 'are reference rows'} " \
                "(published architectures retrained here)"
    return text + "."


def _html_report(results: Results, figures: dict[str, Path], sections: list) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mgas report</title><style>",
             "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:12px}",
             "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>",
             f"<h1>mgas report: {html.escape(', '.join(results.experiments))}</h1>",
             f"<p>{html.escape(counts_text(results))}</p>"]
    if results.skipped:
        parts.append("<p>Skipped unreadable files:</p><ul>" +
                     "".join(f"<li>{html.escape(s)}</li>" for s in results.skipped) + "</ul>")
    for key, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        title = html.escape(key.replace("_", " "))
        parts.append(f"<h2>{title}</h2><img alt='{key}' src='data:image/png;base64,{data}'>")
    for title, table, note in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(note)}</p>{_html_table(table)}")
    parts.append("</body></html>")
    return "".join(parts)


def default_report_folder(results_dir: str | Path) -> Path:
    """``RESULTS/report`` for a local folder; ``./<name>-report`` here for an object-store URI."""
    text = str(results_dir)
    if "://" in text and not text.startswith("file://"):
        return Path.cwd() / f"{text.rstrip('/').rsplit('/', 1)[-1]}-report"
    return Path(text.removeprefix("file://")) / "report"


def report_command(results_dir: str | Path, out: Path | None = None, published: Path | None = None,
                   styles: dict[str, Style] | None = None) -> dict[str, Path]:
    """Load, build and print where everything is; raises :class:`AnalysisError` on unusable input."""
    results = load_results(results_dir)
    for skipped in results.skipped:
        print(f"warning: skipped unreadable result file {skipped}", file=sys.stderr)
    paths = build_report(results, out or default_report_folder(results_dir), published, styles)
    print(f"report: {paths['report_html']}")
    print(f"markdown: {paths['report_md']}")
    print(f"pareto plot: {paths['pareto']}")
    print(f"figures: {', '.join(str(p) for k, p in paths.items() if k not in ('report_md', 'report_html'))}")
    return paths
