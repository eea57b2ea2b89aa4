"""MLflow tracking without Ray: one run per trial and sweep, metrics under their phase's keys."""

from __future__ import annotations

import pickle

from orchestrator.tracking import MlflowTracker, epoch_metrics, local_store


def _trial(tid: str) -> dict:
    return {"trial_id": tid, "experiment": "exp", "axes": {"method": "darts", "seed": 0},
            "settings": {"search": {"method": "darts", "epochs": 2}, "retrain": {"epochs": 1},
                         "data": {"name": "digits"}}}


def test_a_resumed_sweep_finds_its_runs_and_a_fresh_sweep_starts_its_own(tmp_path):
    from mlflow import MlflowClient

    uri, artifacts = local_store(str(tmp_path / "exp"))
    first = MlflowTracker(uri, artifacts, "exp", str(tmp_path / "exp"))
    run = first.run_id(_trial("t0"))
    first.log_epoch(_trial("t0"), {"phase": "search", "epoch": 0, "loss": 2.0, "done": False, "trial_id": "t0"})
    restored = pickle.loads(pickle.dumps(first))  # as Tune restores its callbacks on --resume
    assert restored._client is None and restored.run_id(_trial("t0")) == run
    restored.log_epoch(_trial("t0"), {"phase": "retrain", "epoch": 0, "snapshot_index": 2, "loss": 1.0})
    fresh = MlflowTracker(uri, artifacts, "exp", str(tmp_path / "exp"))
    assert fresh.run_id(_trial("t0")) != run  # a new sweep of the experiment: runs of its own
    client = MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(run, "search/loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0)]
    assert [m.value for m in client.get_metric_history(run, "retrain/snapshot_2/loss")] == [1.0]
    assert "search/done" not in client.get_run(run).data.metrics  # Tune's bookkeeping is not a metric


def test_epoch_metrics_name_the_phase_and_skip_bookkeeping():
    metrics, step = epoch_metrics({"phase": "search", "epoch": 3, "loss": 0.5, "lambda": 1e-3, "done": False,
                                   "training_iteration": 4, "trial_id": "x", "val_acc": float("nan")})
    assert step == 3 and metrics == {"search/loss": 0.5, "search/lambda": 1e-3}
