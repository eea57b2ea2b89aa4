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


DARTS_CIFAR_PROTOCOL = {"epochs": 600, "layers": 20, "channels": 36, "batch_size": 96, "cutout": 16,
                        "drop_path": 0.2, "auxiliary": True, "aux_weight": 0.4, "target_params": None}


def trial_config(method: str, dataset: str = "digits", order: int = 2, retrain: dict | None = None) -> str:
    """A resolved config as a trial records it (the parts the published join reads)."""
    return json.dumps({"data": {"name": dataset}, "seed": 0,
                       "search": {"method": method, "layers": 8, "channels": 16, "nodes": 4, "darts": {"order": order}},
                       "retrain": retrain or dict(DARTS_CIFAR_PROTOCOL)})


def write_dataset(root: Path, experiment: str = "exp", trials=TRIALS, failed: bool = True) -> Path:
    exp = root / experiment
    for method, seed, extra, acc, params in trials:
        axes = {"method": method, "seed": seed, **extra}
        trial_id = "_".join(f"{k}{v}" for k, v in axes.items())
        row = {"experiment": experiment, "trial_id": trial_id, "method": method, "dataset": "digits", "seed": seed,
               "target_params_m": extra.get("target_params"), "status": "ok", "test_acc": acc, "val_acc": acc,
               "params_m": params * 1.2, "nonzero_params_m": params, "flops_m": params * 100,
               "search_time_s": 120.0, "search_peak_mem_mb": 500.0 + 10 * len(method), "device": "cpu",
               "search_peak_mem_kind": "cpu peak RSS above the start of the run",
               "config_json": trial_config(method), "git_sha": "abc1234", "device_name": "cpu",
               "node_ip": f"10.0.0.{seed + 1}", "versions": json.dumps({"torch": "2.14.1", "ray": "2.60.0"}),
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
    assert np.isnan(agg.loc["msg_das", "test_acc_std"])  # one seed: no spread, not a spread of 0


def test_pareto_front_keeps_only_non_dominated_points(tmp_path):
    agg = aggregate(load_results(write_dataset(tmp_path)).ok).set_index("group")
    front = pareto_front(agg, "nonzero_params_m_mean", "test_acc_mean")
    on = set(front[front].index)
    # mgas@0.05 (smallest), mgas@0.1 (0.95 at 0.1M), mgas@0.2 (0.97 best); gold_nas 0.94 at 0.2M is dominated
    assert on == {"mgas target_params=0.05", "mgas target_params=0.1", "mgas target_params=0.2"}
    toy = pd.DataFrame({"c": [1.0, 2.0, 2.0, 3.0], "s": [1.0, 2.0, 1.5, 2.0]})
    assert pareto_front(toy, "c", "s").tolist() == [True, True, False, False]


def _darts_rows(root: Path, runs: list[tuple[int, dict | None, int, float]]) -> Path:
    """DARTS trials on cifar10: (order, retrain protocol or None for the paper's, seed, test_acc)."""
    exp = root / "darts_c10"
    for order, retrain, seed, acc in runs:
        axes = {"method": "darts", "search.darts.order": order, "seed": seed,
                **({"retrain.epochs": retrain["epochs"]} if retrain else {})}
        trial_id = f"darts_o{order}_{'paper' if retrain is None else 'short'}_s{seed}"
        write_trial(exp, {"experiment": "darts_c10", "trial_id": trial_id, "method": "darts", "dataset": "cifar10",
                          "seed": seed, "status": "ok", "test_acc": acc, "val_acc": acc, "params_m": 3.3,
                          "nonzero_params_m": 3.3, "flops_m": 528.0, "search_time_s": 86400.0 * order,
                          "search_peak_mem_mb": 9000.0, "device": "cuda:0",
                          "search_peak_mem_kind": "cuda max_memory_allocated",
                          "config_json": trial_config("darts", "cifar10", order, retrain),
                          "axes_json": json.dumps(axes)}, None)
    return exp


def test_published_rows_are_joined_on_the_configuration_never_on_the_method_name(tmp_path):
    short = {**DARTS_CIFAR_PROTOCOL, "epochs": 6}
    exp = _darts_rows(tmp_path, [(1, None, 0, 0.970), (1, None, 1, 0.972), (2, None, 0, 0.9724),
                                 (2, short, 0, 0.90), (1, short, 0, 0.89)])
    table = comparison_table(aggregate(load_results(exp).ok), load_published())
    by_config = {r["configuration"]: r for r in table.to_dict("records")}
    assert len(table) == 4 == len(by_config)
    first, second = by_config["darts order=1"], by_config["darts order=2"]
    # a first-order run stands beside the first-order paper row, never the second-order 2.76
    assert first["test error % (published)"] == "3.00" and "first order" in first["published source"]
    assert second["test error % (published)"] == "2.76" and "second order" in second["published source"]
    assert first["search cost GPU-days (published)"] == "1.50" and first["search cost"] == "1.0000 GPU-days"
    assert second["search cost"] == "2.0000 GPU-days"  # measured GPU-days beside published GPU-days
    for config in ("darts epochs=6 order=2", "darts epochs=6 order=1"):  # another protocol: nothing beside it
        row = by_config[config]
        assert [row[k] for k in table.columns if "published" in k] == ["—"] * 4
    assert first["peak search memory MB"] == "9000 (CUDA allocator peak)"


def test_a_published_entry_without_a_known_configuration_is_never_matched(tmp_path):
    rows = write_dataset(tmp_path, trials=[("gold_nas", 0, {}, 0.93, 0.2)], failed=False)
    agg = aggregate(load_results(rows).ok)
    agg["dataset"] = "cifar10"
    published = load_published()
    assert published.query("method == 'gold_nas' and dataset == 'cifar10'")["test_error_pct"].tolist() == [2.99]
    row = comparison_table(agg, published).iloc[0]
    assert row["test error % (published)"] == "—" and row["published source"] == "—"
    assert row["search cost"] == "0.033 CPU-hours"  # measured on a CPU: stated as CPU-hours


def _markdown_table(md: str, title: str) -> list[dict[str, str]]:
    section = md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in cell.replace("±", " ").split() if x.replace(".", "", 1).isdigit()]


@pytest.mark.slow
def test_every_number_of_the_report_comparison_table_is_the_aggregate_of_the_rows(tmp_path):
    paths = build_report(load_results(write_dataset(tmp_path)), tmp_path / "report")
    table = _markdown_table(paths["report_md"].read_text(), "Comparison with published numbers")
    expected: dict[str, list[tuple[float, float]]] = {}
    for method, _seed, extra, acc, params in TRIALS:  # computed here from the rows, not by the code under test
        group = method + "".join(f" {k}={v}" for k, v in sorted(extra.items()))
        expected.setdefault(group, []).append((acc, params))
    assert sorted(r["configuration"] for r in table) == sorted(expected)
    for row in table:
        accs, sizes = (np.array(v) for v in zip(*expected[row["configuration"]]))
        n = len(accs)
        assert int(row["seeds"]) == n
        error = _numbers(row["test error % (measured)"])
        assert error[0] == pytest.approx(100 * (1 - accs.mean()), abs=0.005)
        if n >= 2:
            assert error[1] == pytest.approx(100 * accs.std(ddof=1), abs=0.005)
        else:
            assert len(error) == 1  # one seed: no spread is shown
        assert _numbers(row["params M"])[0] == pytest.approx(sizes.mean(), abs=5e-4)
        assert _numbers(row["FLOPs M"])[0] == pytest.approx(100 * sizes.mean(), abs=0.05)
        assert row["search cost"] == f"{120 / 3600:.3f} CPU-hours"
        method = row["configuration"].split()[0]
        assert row["peak search memory MB"] == f"{500 + 10 * len(method)} (CPU RSS above start)"
        assert row["test error % (published)"] == "—"  # digits: no paper measured it


def _series_rows(root: Path, sizes: list[float], accs: list[float]) -> Path:
    exp = root / "gold"
    rows = []
    for i, (size, acc) in enumerate(zip(sizes, accs)):
        rows.append({"experiment": "gold", "trial_id": "gold_nas_seed0", "method": "gold_nas", "dataset": "digits",
                     "seed": 0, "status": "ok", "test_acc": acc, "val_acc": acc, "params_m": size,
                     "nonzero_params_m": size, "flops_m": size * 100, "search_time_s": 60.0,
                     "search_peak_mem_mb": 100.0, "snapshot_index": i, "snapshot_epoch": 2 * i,
                     "snapshot_final": i == len(sizes) - 1, "axes_json": json.dumps({"method": "gold_nas", "seed": 0})})
    write_trial(exp, rows, None)
    write_dataset(root, "gold", trials=[("mgas", 0, {"target_params": 0.1}, 0.94, 0.10),
                                        ("mgas", 1, {"target_params": 0.1}, 0.96, 0.10),
                                        ("mgas", 0, {"target_params": 0.05}, 0.91, 0.05)], failed=False)
    return exp


def test_a_gold_nas_search_is_drawn_as_its_own_series_and_counted_once(tmp_path):
    from analysis.aggregate import snapshot_series
    from analysis.plots import pareto_figure

    sizes, accs = [0.24, 0.17, 0.09, 0.05], [0.97, 0.965, 0.95, 0.93]
    results = load_results(_series_rows(tmp_path, sizes, accs))
    agg = aggregate(results.ok)
    gold = agg[agg.method == "gold_nas"]
    assert len(gold) == 1 and gold["nonzero_params_m_mean"].iloc[0] == 0.05  # the trial's own row, once
    fig = pareto_figure(agg, series=snapshot_series(results.ok), styles={"gold_nas": ("#ff7f0e", None, "GOLD-NAS")})
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if "series" in str(ln.get_label())]
    assert len(lines) == 1 and lines[0].get_label() == "GOLD-NAS series (seed 0, 4 retrained)"
    assert lines[0].get_color() == "#ff7f0e"  # the declared colour, the palette's marker
    assert list(lines[0].get_xdata()) == sizes and list(lines[0].get_ydata()) == pytest.approx([a * 100 for a in accs])
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["target 0.05M", "target 0.1M"]  # MGAS points carry their target
    bars = [seg for c in ax.containers if c.has_yerr for col in c.lines[2] for seg in col.get_segments()]
    drawn = sorted(float(seg[0][0]) for seg in bars if abs(seg[1][1] - seg[0][1]) > 1e-9)
    assert drawn == [0.1]  # only the 2-seed point has error bars (one seed has no spread to draw)


def test_report_lists_the_series_the_misses_and_where_every_number_comes_from(tmp_path):
    exp = _series_rows(tmp_path, [0.24, 0.05], [0.97, 0.93])
    write_dataset(tmp_path, "gold", trials=[("mgas", 2, {"target_params": 0.01}, 0.9, 0.02)], failed=False)
    results = load_results(exp)
    results.rows.loc[results.rows.trial_id.str.contains("target_params0.01"), "target_missed"] = True
    md = build_report(results, tmp_path / "report")["report_md"].read_text()
    series = _markdown_table(md, "Snapshot series (GOLD-NAS)")
    assert [(r["snapshot_index"], r["nonzero_params_m"]) for r in series] == [("0", "0.24"), ("1", "0.05")]
    missed = _markdown_table(md, "Trials that missed their target")
    assert [r["trial_id"] for r in missed] == ["methodmgas_seed2_target_params0.01"]
    assert "abc1234" in md and "| torch | 2.14.1 |" in md and "10.0.0.3" in md


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_a_method_is_drawn_as_it_declares_and_an_undeclared_one_from_the_palette():
    from analysis.plots import PALETTE, style

    assert style("mine", {"mine": ("#123456", "h", "My method")}) == ("#123456", "h", "My method")
    colour, marker, label = style("other", {"mine": ("#123456", "h", "My method")})
    assert (colour, marker) in PALETTE and label == "other"
    assert style("other") == (colour, marker, label)  # the same in every figure
    assert style("mine", {"mine": (None, None, "My method")})[2] == "My method"


def test_the_report_counts_trials_and_rows_apart_and_leaves_a_one_seed_spread_empty(tmp_path):
    from analysis.report import counts_text

    exp = _series_rows(tmp_path, [0.24, 0.17, 0.09, 0.05], [0.97, 0.965, 0.95, 0.93])
    results = load_results(exp)
    assert len(results.rows) == 7  # 4 snapshots of one GOLD-NAS search, 3 MGAS trials
    text = counts_text(results)
    assert text == "4 trials (4 ok, 0 failed), 7 rows: 3 more are retrained gold_nas snapshots."
    md = build_report(results, tmp_path / "report")["report_md"].read_text()
    assert text in md
    section = md.split("## Ablation: mgas over target_params_m")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    cells = {float(r.strip("|").split("|")[0]): [c.strip() for c in r.strip("|").split("|")] for r in table[2:]}
    std = header.index("test_acc_std")
    assert cells[0.05][header.index("n")] == "1" and cells[0.05][std] == ""  # one seed: no spread stated
    assert cells[0.1][header.index("n")] == "2"
    assert float(cells[0.1][std]) == pytest.approx(np.std([0.94, 0.96], ddof=1), abs=1e-4)


def test_rows_with_a_measured_latency_get_an_accuracy_vs_latency_figure(tmp_path):
    from analysis.plots import pareto_figure
    from analysis.report import latency_axis

    exp = write_dataset(tmp_path, failed=False)
    results = load_results(exp)
    assert latency_axis(aggregate(results.ok)) is None  # no latency measured: no figure
    assert "pareto_latency" not in build_report(results, tmp_path / "r0")
    rows = results.rows.copy()
    rows["latency_ms"] = rows["nonzero_params_m"] * 40 + rows["seed"]  # seeds differ: a mean to draw
    rows["latency_device"] = "cpu: AMD EPYC"
    rows["latency_batch"] = 1
    results.rows = rows
    agg = aggregate(results.ok)
    label = latency_axis(agg)
    assert label == "measured latency (ms; batch 1, cpu: AMD EPYC)"
    paths = build_report(results, tmp_path / "r1")
    assert paths["pareto_latency"].stat().st_size > 1000
    ax = pareto_figure(agg, cost="latency_ms", xlabel=label).axes[0]
    assert ax.get_xlabel() == label
    drawn = sorted(float(x) for c in ax.containers for x in c.lines[0].get_xdata())  # each errorbar's points
    assert drawn == pytest.approx(sorted(agg["latency_ms_mean"].tolist()))
