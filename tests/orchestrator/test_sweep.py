"""Sweeps on real embedded Ray (2 CPUs): Parquet rows, fault tolerance, no duplicates."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from mgas_common.partitions import without_partition_column
from mgas_core.evaluation_network import count_architecture_params
from mgas_core.space.architecture import load_architecture
from orchestrator.cli import main
from orchestrator.collect import collect_command
from orchestrator.results import read_rows, result_schema
from orchestrator.spec import expand_trials, load_spec
from orchestrator.sweep import run_command
from orchestrator.trainable import run_trial_pipeline
from tests.conftest import PLUGIN
from tests.orchestrator.helpers import MGAS_TINY, plant_payloads, write_spec
from tests.orchestrator.test_results_readers import assert_every_reader_reads
from tests.processes import private_ray_env

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # Ray tests run one after another (tests/conftest.py)


@pytest.fixture(scope="module", autouse=True)
def ray_2cpu():
    """This module's own 2-CPU Ray, in a temp folder of its own (nothing shared with other Rays)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    with private_ray_env() as folder:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _temp_dir=str(folder))
        yield
        ray.shutdown()


def _check_mlflow_runs(experiment_dir: Path, trials: list[dict], gold_rows: list[dict]) -> None:
    """One MLflow run per trial, with its axes as params, every epoch's metrics under the phase's
    keys, the row's numbers, and the architecture files as artifacts."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{experiment_dir / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.data.tags["mgas.trial_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(t["trial_id"] for t in trials)  # exactly one run per trial
    for trial in trials:
        run = runs[trial["trial_id"]]
        settings = trial["settings"]
        assert run.info.status == "FINISHED" and run.data.tags["mgas.status"] == "ok"
        assert run.data.params["method"] == settings["search"]["method"]
        assert run.data.params["seed"] == str(trial["axes"]["seed"])
        search_epochs = [m.step for m in client.get_metric_history(run.info.run_id, "search/loss")]
        assert search_epochs == list(range(len(search_epochs))) and search_epochs
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "architecture")}
        assert "architecture/arch.json" in artifacts
        if settings["search"]["method"] == "gold_nas":
            for row in gold_rows:
                key = f"retrain/snapshot_{row['snapshot_index']}/loss"
                assert len(client.get_metric_history(run.info.run_id, key)) == settings["retrain"]["epochs"], key
            snapshots = {a.path for a in client.list_artifacts(run.info.run_id, "snapshots")}
            assert len(snapshots) == len(gold_rows)
        else:
            retrain = client.get_metric_history(run.info.run_id, "retrain/loss")
            assert [m.step for m in retrain] == list(range(settings["retrain"]["epochs"]))
        if settings["search"]["method"] == "mgas":
            assert "architecture/arch.masks.safetensors" in artifacts
            assert client.get_metric_history(run.info.run_id, "search/remaining_ratio_op")
        assert run.data.metrics["test_acc"] >= 0 and run.data.metrics["nonzero_params_m"] > 0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


GOLD_SERIES = {"search.epochs": 4, "search.gold_nas.snapshot": "epoch", "search.gold_nas.control.lambda0": 1.0,
               "search.gold_nas.w_lr": 0.05}


def test_sweep_writes_exactly_one_filled_row_per_trial(tmp_path, capsys):
    path = write_spec(tmp_path, sweep={"method": ["darts", "gold_nas", "msg_das", "mgas"], "seed": [0]},
                      include=[{"method": "darts", "seed": 1}], methods={"mgas": MGAS_TINY, "gold_nas": GOLD_SERIES},
                      tracking={"mlflow": {}})
    tune_state_log = logging.getLogger("ray.tune.execution.experiment_state")
    records, level = _Records(), tune_state_log.level
    tune_state_log.addHandler(records)
    tune_state_log.setLevel(logging.WARNING)  # the fixture's Ray logs errors only
    try:
        summary = run_command(path)
    finally:
        tune_state_log.removeHandler(records)
        tune_state_log.setLevel(level)
    # checkpoints are spaced (checkpoint_interval_s), so Tune never forces an experiment sync
    assert not [m for m in records.messages if "triggered multiple times" in m], records.messages
    experiment_dir = tmp_path / "out" / "tiny"
    # progress: nothing per epoch on the terminal (stderr is not a TTY here: one line per started and
    # finished trial), every epoch of every trial in progress.log
    out, err = capsys.readouterr()
    trial_ids = [t["trial_id"] for t in expand_trials(load_spec(path)[0])]
    assert "epoch" not in out and "epoch" not in err, (out[-500:], err[-500:])
    for tid in trial_ids:
        assert sum(1 for line in err.splitlines() if f"] {tid}: done test_acc" in line) == 1, err[-2000:]
    log = (experiment_dir / "progress.log").read_text().splitlines()
    all_rows = read_rows(experiment_dir)
    for t in expand_trials(load_spec(path)[0]):
        retrain = [ln for ln in log if f"] {t['trial_id']}: retrain epoch " in ln]
        retrained = sum(1 for r in all_rows if r["trial_id"] == t["trial_id"])  # GOLD-NAS: one per snapshot
        assert len(retrain) == t["settings"]["retrain"]["epochs"] * retrained, log
        assert any(f"] {t['trial_id']}: search epoch 1/" in ln for ln in log)
    rows = [r for r in all_rows if r["snapshot_final"] is not False]  # each trial's own row
    assert summary["ok"] == 5 and len(rows) == 5
    assert sorted(r["trial_id"] for r in rows) == sorted(t["trial_id"] for t in expand_trials(load_spec(path)[0]))
    # the GOLD-NAS search's snapshots, each retrained into a row of its own, strictly decreasing in size
    gold = sorted((r for r in all_rows if r["method"] == "gold_nas"), key=lambda r: r["snapshot_index"])
    assert len(gold) >= 3 and len(all_rows) == 4 + len(gold)
    sizes = [r["nonzero_params_m"] for r in gold]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert [r["snapshot_final"] for r in gold] == [False] * (len(gold) - 1) + [True]
    _check_mlflow_runs(experiment_dir, expand_trials(load_spec(path)[0]), gold)
    required = ["experiment", "trial_id", "method", "dataset", "seed", "status", "test_acc", "val_acc", "params_m",
                "nonzero_params_m", "flops_m", "search_time_s", "retrain_time_s", "search_peak_mem_mb", "device",
                "arch_json", "config_json", "git_sha", "versions", "node_id"]
    for row in rows:
        assert row["status"] == "ok" and row["error"] is None
        for col in required:
            assert row[col] is not None, (row["trial_id"], col)
        assert json.loads(row["arch_json"])["format"] == "mgas-architecture"
    mgas = next(r for r in rows if r["method"] == "mgas")
    assert mgas["granularities"] == "op,filter,weight" and mgas["stages"] == 2
    assert mgas["remaining_ratio_op"] is not None
    table = pq.read_table(next((experiment_dir / "results").glob("method=darts/*.parquet")))
    assert table.schema.equals(without_partition_column(result_schema()))  # the method is the folder's name
    assert_every_reader_reads(experiment_dir)  # pandas, pyarrow, polars and duckdb: one table each
    curves = list((experiment_dir / "curves").glob("method=*/*.parquet"))
    assert len(curves) == 5
    phases = set(pq.read_table(curves[0]).column("phase").to_pylist())
    assert phases == {"search", "retrain"}
    assert (experiment_dir / "archs" / mgas["trial_id"] / "arch.masks.safetensors").exists()
    # the saved JSON names its mask file: retraining it (`mgas train --arch`) uses the masks
    saved = load_architecture(experiment_dir / "archs" / mgas["trial_id"] / "arch.json")
    assert saved.masks and count_architecture_params(saved, 4, 3).nonzero == round(mgas["nonzero_params_m"] * 1e6)

    # every file is rebuilt byte for byte from Tune's saved state once the results are deleted
    def files():
        return {p.relative_to(experiment_dir): p.read_bytes() for folder in ("results", "curves", "archs")
                for p in sorted((experiment_dir / folder).rglob("*")) if p.is_file()}

    written = files()
    for folder in ("results", "curves", "archs"):
        shutil.rmtree(experiment_dir / folder)
    # ... from its JSON alone: Tune's pickles are never loaded (someone else's results folder is data)
    marker = tmp_path / "payload_ran"
    planted = plant_payloads(experiment_dir / "tune", marker)
    assert collect_command(str(experiment_dir))[0]["rows"] == 5  # trials; GOLD-NAS's file holds its series
    assert not marker.exists() and len(planted) > 5
    assert files() == written

    # running a trial of the experiment again replaces its row, never duplicates it
    first = {r["trial_id"]: r["finished_at"] for r in rows}
    again = write_spec(tmp_path, sweep={"method": ["darts"], "seed": [0]})
    run_command(again)
    rerun = {r["trial_id"]: r["finished_at"] for r in read_rows(experiment_dir)}
    assert len(rerun) == 5 and sum(rerun[k] != first[k] for k in first) == 1
    assert len(list((experiment_dir / "results").glob("method=*/*.parquet"))) == 5


def _watch_and_kill(trial_dir: Path, after_epoch: int, killed: dict) -> None:
    deadline = time.time() + 120
    result_file = trial_dir / "result.json"
    while time.time() < deadline:
        if result_file.exists():
            for line in result_file.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("phase") == "search" and rec.get("epoch", -1) >= after_epoch:
                    killed["pid"] = rec["pid"]
                    os.kill(rec["pid"], signal.SIGKILL)
                    return
        time.sleep(0.05)


def test_killed_worker_resumes_from_checkpoint_and_matches_undisturbed_run(tmp_path):
    # enough epochs after the one the watcher waits for that the kill lands inside the search, not
    # after the trial's last report (a smoke-sized epoch takes tens of milliseconds)
    path = write_spec(tmp_path, name="kill", sweep={"method": ["darts"], "seed": [3]},
                      base={"search.epochs": 24})
    spec, _ = load_spec(path)
    trial = expand_trials(spec)[0]
    trial_dir = tmp_path / "out" / "kill" / "tune" / trial["trial_id"]
    killed: dict = {}
    watcher = threading.Thread(target=_watch_and_kill, args=(trial_dir, 1, killed), daemon=True)
    watcher.start()
    run_command(path)
    watcher.join(timeout=5)
    assert "pid" in killed, "the worker was never killed"
    row = read_rows(tmp_path / "out" / "kill")[0]
    assert row["status"] == "ok" and row["attempts"] == 2  # restarted once, from its checkpoint

    undisturbed = run_trial_pipeline(trial, None, lambda metrics, state: None)
    assert row["arch_json"] == undisturbed["arch_json"]
    for key in ("test_acc", "val_acc", "search_val_acc", "params_m", "flops_m"):
        assert row[key] == undisturbed[key], key
    first_search = json.loads(undisturbed["history_json"])[0]
    curve = pq.read_table(next((tmp_path / "out" / "kill" / "curves").glob("*/*.parquet"))).to_pylist()
    assert curve[0]["loss"] == first_search["loss"]


def test_diverging_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = write_spec(tmp_path, name="nan", sweep={"method": ["darts"], "seed": [0],
                                                    "search.w_lr": [0.025, 1.0e12]})
    run_command(path)
    rows = {r["trial_id"]: r for r in read_rows(tmp_path / "out" / "nan")}
    assert len(rows) == 2
    bad = next(r for r in rows.values() if "1000000000000" in r["trial_id"])
    good = next(r for r in rows.values() if r is not bad)
    assert good["status"] == "ok"
    assert bad["status"] == "failed" and re.match(r"diverged at epoch \d+: loss is (nan|inf)", bad["error"])
    assert bad["attempts"] is None or bad["attempts"] <= 1


def test_fifth_method_runs_through_a_one_trial_sweep(random_alpha, tmp_path, capsys):
    """A method registered outside mgas_core (tests/plugins/random_alpha.py) runs as a Ray trial."""
    path = write_spec(tmp_path, name="plugin", sweep={"method": [random_alpha], "alpha_std": [0.5]},
                      base={"search.epochs": 1, "retrain.epochs": 1})
    trials = expand_trials(load_spec(path)[0])
    assert len(trials) == 1 and trials[0]["method_module"] == PLUGIN
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "alpha_std=0.5" in capsys.readouterr().out
    summary = run_command(path)  # the module's Ray: its workers import the plugin where it was registered
    assert summary["ok"] == 1
    [row] = read_rows(tmp_path / "out" / "plugin")
    assert row["method"] == random_alpha and row["status"] == "ok" and row["alpha_std"] == 0.5
    assert json.loads(row["config_json"])["search"]["random_alpha"] == {"alpha_std": 0.5}
    [result_file] = (tmp_path / "out" / "plugin" / "results").glob(f"method={random_alpha}/*.parquet")
    assert pq.read_table(result_file).schema.equals(without_partition_column(result_schema()))
