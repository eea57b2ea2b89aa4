"""``mgas report RESULTS_DIR``: figures (PNG + PDF), ``report.md`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
import sys
from pathlib import Path

import pandas as pd

from analysis.aggregate import ablation_table, aggregate, varying_factors
from analysis.load import Results, load_results
from analysis.plots import ablation_plot, cost_memory_plot, pareto_plot, remaining_ratio_plot
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
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(results: Results, out: Path, published_path: Path | None = None) -> dict[str, Path]:
    published = load_published(published_path)  # read and checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(results.ok)
    figures: dict[str, Path] = {
        "pareto": pareto_plot(agg, out),
        "pareto_flops": pareto_plot(agg, out, cost="flops_m", name="pareto_flops",
                                    xlabel="multiply-adds (M FLOPs)"),
        "search_cost_memory": cost_memory_plot(agg, out),
    }
    ratio = remaining_ratio_plot(results.curves, out)
    if ratio is not None:
        figures["remaining_ratio"] = ratio
    ablations: list[tuple[str, str, pd.DataFrame]] = []
    for method in sorted(agg["method"].unique()):
        for factor in varying_factors(agg, method):
            table = ablation_table(agg, method, factor)
            ablations.append((method, factor, table))
            figures[f"ablation_{method}_{factor}"] = ablation_plot(table, method, factor, out)
    comparison = comparison_table(agg, published)
    failed = results.failed[["experiment", "trial_id", "method", "error"]] if len(results.failed) else pd.DataFrame()
    missed = results.ok[results.ok["target_missed"]] if "target_missed" in results.ok else results.ok.iloc[:0]
    missed_table = (missed[["experiment", "trial_id", "method", "target_params_m", "nonzero_params_m", "target_gap"]]
                    if len(missed) else pd.DataFrame())
    sections = [
        ("Comparison with published numbers", comparison,
         "Measured: mean ± std over seeds (test error of the val-selected epoch, nonzero parameters, "
         "multiply-adds). Published values marked `?` are not confirmed (see experiments/reference/published.yaml)."),
        *[(f"Ablation: {m} over {f}", t, "") for m, f, t in ablations],
        ("Trials that missed their target", missed_table,
         "The search ended (epoch budget spent) above its target; these rows are grouped apart "
         "(`[target missed]`) and drawn hollow, never averaged with runs that reached the target. "
         "target_gap = nonzero / target - 1."),
        ("Failed trials", failed, ""),
    ]
    md = [f"# mgas report: {', '.join(results.experiments)}\n",
          f"{len(results.rows)} trials ({len(results.ok)} ok, {len(results.failed)} failed).\n"]
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


def _html_report(results: Results, figures: dict[str, Path], sections: list) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mgas report</title><style>",
             "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:12px}",
             "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>",
             f"<h1>mgas report: {html.escape(', '.join(results.experiments))}</h1>",
             f"<p>{len(results.rows)} trials ({len(results.ok)} ok, {len(results.failed)} failed).</p>"]
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


def report_command(results_dir: str | Path, out: Path | None = None, published: Path | None = None) -> dict[str, Path]:
    """Load, build and print where everything is; raises :class:`AnalysisError` on unusable input."""
    results = load_results(results_dir)
    for skipped in results.skipped:
        print(f"warning: skipped unreadable result file {skipped}", file=sys.stderr)
    paths = build_report(results, out or default_report_folder(results_dir), published)
    print(f"report: {paths['report_html']}")
    print(f"markdown: {paths['report_md']}")
    print(f"pareto plot: {paths['pareto']}")
    print(f"figures: {', '.join(str(p) for k, p in paths.items() if k not in ('report_md', 'report_html'))}")
    return paths
