"""Analysis on small Parquet datasets with known values (written here with the real schema)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.aggregate import aggregate, pareto_front
from analysis.load import load_results
from analysis.published import comparison_table, load_published
from analysis.report import build_report
from orchestrator.cli import main
from orchestrator.results import write_trial

# (method, seed, axes extras, test_acc, nonzero params M)
TRIALS = [
    ("darts", 0, {}, 0.90, 0.30), ("darts", 1, {}, 0.92, 0.30),
    ("gold_nas", 0, {}, 0.93, 0.20), ("gold_nas", 1, {}, 0.95, 0.20),
    ("msg_das", 0, {}, 0.85, 0.25),
    ("mgas", 0, {"target_params": 0.1}, 0.94, 0.10), ("mgas", 1, {"target_params": 0.1}, 0.96, 0.10),
    ("mgas", 0, {"target_params": 0.05}, 0.91, 0.05),
    ("mgas", 0, {"target_params": 0.2}, 0.97, 0.20),
]


def write_dataset(root: Path, experiment: str = "exp", trials=TRIALS, failed: bool = True) -> Path:
    exp = root / experiment
    for method, seed, extra, acc, params in trials:
        axes = {"method": method, "seed": seed, **extra}
        trial_id = "_".join(f"{k}{v}" for k, v in axes.items())
        row = {"experiment": experiment, "trial_id": trial_id, "method": method, "dataset": "digits", "seed": seed,
               "target_params_m": extra.get("target_params"), "status": "ok", "test_acc": acc, "val_acc": acc,
               "params_m": params * 1.2, "nonzero_params_m": params, "flops_m": params * 100,
               "search_time_s": 120.0, "search_peak_mem_mb": 500.0 + 10 * len(method), "device": "cpu",
               "axes_json": json.dumps(axes), "granularities": "op,filter,weight" if method == "mgas" else None}
        history = [{"phase": "search", "epoch": e, "loss": 1.0 / (e + 1), "val_acc": 0.5,
                    "remaining_ratio_op": 1 - 0.1 * e, "remaining_ratio_filter": 1 - 0.05 * e,
                    "remaining_ratio_weight": 1 - 0.2 * e} for e in range(3)]
        write_trial(exp, row, history)
    if failed:
        write_trial(exp, {"experiment": experiment, "trial_id": "darts_seed9", "method": "darts", "dataset": "digits",
                          "seed": 9, "status": "failed", "error": "diverged at epoch 2: loss is nan",
                          "axes_json": json.dumps({"method": "darts", "seed": 9})}, None)
    return exp


def test_mean_std_over_seeds(tmp_path):
    results = load_results(write_dataset(tmp_path))
    assert len(results.rows) == 10 and len(results.ok) == 9 and len(results.failed) == 1
    agg = aggregate(results.ok).set_index("group")
    assert agg.loc["darts", "n"] == 2
    assert agg.loc["darts", "test_acc_mean"] == pytest.approx(0.91)
    assert agg.loc["darts", "test_acc_std"] == pytest.approx(np.std([0.90, 0.92], ddof=1))
    assert agg.loc["mgas target_params=0.1", "test_acc_mean"] == pytest.approx(0.95)
    assert agg.loc["msg_das", "test_acc_std"] == 0.0


def test_pareto_front_keeps_only_non_dominated_points(tmp_path):
    agg = aggregate(load_results(write_dataset(tmp_path)).ok).set_index("group")
    front = pareto_front(agg, "nonzero_params_m_mean", "test_acc_mean")
    on = set(front[front].index)
    # mgas@0.05 (smallest), mgas@0.1 (0.95 at 0.1M), mgas@0.2 (0.97 best); gold_nas 0.94 at 0.2M is dominated
    assert on == {"mgas target_params=0.05", "mgas target_params=0.1", "mgas target_params=0.2"}
    toy = pd.DataFrame({"c": [1.0, 2.0, 2.0, 3.0], "s": [1.0, 2.0, 1.5, 2.0]})
    assert pareto_front(toy, "c", "s").tolist() == [True, True, False, False]


def test_published_beside_measured(tmp_path):
    agg = aggregate(load_results(write_dataset(tmp_path)).ok)
    published = load_published()
    darts_c10 = published[(published.method == "darts") & (published.dataset == "cifar10")]
    assert set(darts_c10["test_error_pct"]) == {2.76, 3.00}
    agg.loc[agg.method == "darts", "dataset"] = "cifar10"
    table = comparison_table(agg, published)
    row = table[table.method == "darts"].iloc[0]
    assert row["test error % (measured)"] == "9.00 ± 1.41"
    assert row["test error % (published)"] == "2.76" and "ICLR 2019" in row["published source"]
    gold = table[table.method == "gold_nas"].iloc[0]
    assert gold["test error % (published)"] == "—"  # no digits entry
    agg.loc[agg.method == "gold_nas", "dataset"] = "cifar10"
    gold = comparison_table(agg, published).query("method == 'gold_nas'").iloc[0]
    assert gold["test error % (published)"] == "2.99?"  # not confirmed against the paper


def test_report_writes_images_and_self_contained_html(tmp_path):
    paths = build_report(load_results(write_dataset(tmp_path)), tmp_path / "report")
    for key in ("pareto", "pareto_flops", "search_cost_memory", "remaining_ratio", "ablation_mgas_target_params_m"):
        png = paths[key]
        assert png.stat().st_size > 1000
        with Image.open(png) as img:
            assert img.size[0] > 100 and img.size[1] > 100
        assert png.with_suffix(".pdf").stat().st_size > 1000
    page = paths["report_html"].read_text()
    assert page.count("data:image/png;base64,") == 5 and "src='pareto.png'" not in page
    assert "<table>" in page and "diverged at epoch 2" in page and "2.76" not in page  # digits: no paper row
    md = paths["report_md"].read_text()
    assert "![pareto](pareto.png)" in md and "| mgas | digits |" in md and "Ablation: mgas over target_params_m" in md


def test_report_command_over_several_experiments(tmp_path, capsys):
    write_dataset(tmp_path, "one")
    write_dataset(tmp_path, "two", trials=TRIALS[:3], failed=False)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "pareto.png" in out
    assert (tmp_path / "r" / "report.md").read_text().startswith("# mgas report: one, two")


@pytest.mark.parametrize("setup,fragment", [
    ("empty", "holds no results"),
    ("missing", "does not exist"),
    ("only_failed", "none finished successfully"),
    ("mixed", "mixes result schema versions"),
])
def test_unusable_results_give_a_clear_message(tmp_path, capsys, setup, fragment):
    root = tmp_path / "res"
    if setup != "missing":
        root.mkdir()
    if setup == "only_failed":
        write_dataset(root, trials=[], failed=True)
    if setup == "mixed":
        exp = write_dataset(root, trials=TRIALS[:1], failed=False)
        import pyarrow as pa
        import pyarrow.parquet as pq
        old = pa.table({"schema_version": pa.array([0], pa.int32()), "trial_id": ["old"], "status": ["ok"]})
        pq.write_table(old, exp / "results" / "method=darts" / "old.parquet")
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err


def test_truncated_parquet_is_named_and_skipped(tmp_path, capsys):
    exp = write_dataset(tmp_path)
    victim = next((exp / "results").glob("method=gold_nas/*.parquet"))
    victim.write_bytes(victim.read_bytes()[:50])
    results = load_results(exp)
    assert len(results.rows) == 9 and any(victim.name in s for s in results.skipped)
    assert main(["report", str(exp)]) == 0
    captured = capsys.readouterr()
    assert victim.name in captured.err and "skipped" in captured.err
    assert victim.name in (exp / "report" / "report.md").read_text()


def test_analysis_imports_neither_torch_nor_ray():
    code = ("import sys, analysis.report, analysis.load, analysis.plots, analysis.published; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
