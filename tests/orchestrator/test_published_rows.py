"""Published architectures as reference rows: `method: published` retrains the architecture it names
(a built-in or an imported JSON) with no search, beside a search of the same sweep, and the report
lists and draws those rows as references."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from analysis.aggregate import aggregate
from analysis.load import load_results
from analysis.plots import pareto_figure
from analysis.report import build_report, counts_text
from tests.orchestrator.helpers import write_spec
from tests.processes import private_ray_env

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
IMPORTED = "experiments/reference/architectures/MG_DARTS_small/arch.json"  # relative to ROOT, where mgas runs


def test_published_architectures_are_retrained_as_reference_rows_and_marked_in_the_report(tmp_path):
    spec = write_spec(tmp_path, name="refs", dataset="digits",
                      sweep={"method": ["published"], "search.published.arch": ["darts_v2", IMPORTED], "seed": [0]},
                      include=[{"method": "darts", "seed": 0}],
                      base={"retrain.epochs": 1, "retrain.channels": 4, "retrain.layers": 2})
    with private_ray_env():
        done = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(spec), "--json"], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = load_results(tmp_path / "out" / "refs")
    rows = results.ok.set_index("trial_id")
    references = rows[rows["method"] == "published"]
    assert sorted(references["arch_name"]) == ["DARTS_V2", "MG_DARTS_small"]
    assert references["reference"].all() and not rows.loc["darts_seed0", "reference"]
    assert (references["search_epochs"] == 0).all() and references["test_acc"].notna().all()
    assert "2 of the trials are reference rows (published architectures retrained here)" in counts_text(results)
    figure = pareto_figure(aggregate(results.ok))
    labels = {t.get_text() for t in figure.axes[0].texts}
    assert {"DARTS_V2 (published)", "MG_DARTS_small (published)"} <= labels
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert "published" in legend
    report = build_report(results, tmp_path / "report")["report_md"].read_text()
    section = report.split("## Reference rows: published architectures retrained here")[1].split("## ")[0]
    assert "MG_DARTS_small" in section and "DARTS_V2" in section
