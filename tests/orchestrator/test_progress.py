"""The sweep's status line and ETA (pure bookkeeping, clock passed in) and its output streams."""

from __future__ import annotations

import io

import pytest

from orchestrator.progress import SweepStatus, format_duration


def _trial(tid: str, search: int, retrain: int) -> dict:
    return {"trial_id": tid, "settings": {"search": {"epochs": search}, "retrain": {"epochs": retrain}}}


def test_eta_is_epochs_left_times_measured_epoch_time_over_parallel_trials():
    status = SweepStatus.of([_trial("a", 2, 2), _trial("b", 2, 2), _trial("c", 2, 2)])
    assert status.eta_s() is None  # nothing timed yet
    status.start("a", 0.0)
    status.start("b", 0.0)
    status.epoch("a", {"phase": "search", "epoch": 0}, 10.0)
    status.epoch("b", {"phase": "search", "epoch": 0}, 30.0)
    # epochs measured 10 s and 30 s: mean 20 s; left: a 3, b 3, c 4 = 10 epochs; 2 trials at once
    assert status.epochs_left() == 10
    assert status.eta_s() == pytest.approx(10 * 20 / 2)
    status.epoch("a", {"phase": "search", "epoch": 1}, 30.0)
    status.epoch("a", {"phase": "retrain", "epoch": 0}, 50.0)
    assert status.trials["a"].done_epochs == 3 and status.trials["a"].phase_total == 2
    status.finish("b", ok=False)
    assert status.epochs_left() == 1 + 4  # a's last retrain epoch, c untouched; b failed
    line = status.line()
    assert line.startswith("[0/3 done | 1 running | 1 failed] a retrain 1/2")
    assert line.endswith(f"ETA {format_duration(status.eta_s())}")


def test_a_method_that_revises_its_search_budget_moves_the_plan():
    status = SweepStatus.of([_trial("m", 10, 4)])
    status.start("m", 0.0)
    status.epoch("m", {"phase": "search", "epoch": 0, "max_epochs": 17}, 5.0)  # MGAS: phases
    assert status.trials["m"].planned == 17 + 4 and status.epochs_left() == 20
    status.epoch("m", {"phase": "retrain", "epoch": 3}, 9.0)
    assert status.epochs_left() == 0


@pytest.mark.parametrize("seconds,text", [(5, "5s"), (65, "1m05s"), (3 * 3600 + 125, "3h02m")])
def test_durations_read_as_a_person_would_write_them(seconds, text):
    assert format_duration(seconds) == text


class _Trial:
    def __init__(self, tid: str, last_result: dict | None = None) -> None:
        self.config = {"trial": _trial(tid, 2, 1)}
        self.last_result = last_result


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_one_live_line_and_a_log_every_epoch(tmp_path):
    from orchestrator.callbacks import SweepProgress

    log = tmp_path / "exp" / "progress.log"
    screen = _Terminal()
    progress = SweepProgress([_trial("a", 2, 1)], str(log), refresh_s=3600, stream=screen)
    trial = _Trial("a")
    progress.on_trial_start(0, [], trial)
    for epoch in range(2):
        progress.on_trial_result(0, [], trial, {"phase": "search", "epoch": epoch, "loss": 1.0, "val_acc": 0.5})
    trial.last_result = {"status": "ok", "test_acc": 0.9, "nonzero_params_m": 0.05}
    progress.on_trial_complete(0, [], trial)
    progress.on_experiment_end([])
    lines = screen.getvalue().split("\n")
    assert sum("a: started" in ln for ln in lines) == 1 and sum("a: done test_acc 0.9000" in ln for ln in lines) == 1
    assert "epoch" not in screen.getvalue()  # epochs update the live line (at most every refresh_s), not new lines
    logged = log.read_text().splitlines()
    assert [ln.split("] ", 1)[1] for ln in logged if "search epoch" in ln] == [
        "a: search epoch 1/2 loss 1.000 val_acc 0.500", "a: search epoch 2/2 loss 1.000 val_acc 0.500"]


def test_a_search_that_yields_several_architectures_plans_each_retraining():
    status = SweepStatus.of([_trial("g", 4, 3)])
    status.start("g", 0.0)
    for epoch in range(4):
        status.epoch("g", {"phase": "search", "epoch": epoch}, float(epoch + 1))
    assert status.epochs_left() == 3
    status.epoch("g", {"phase": "retrain", "epoch": 0, "retrains": 3, "retrain_index": 0}, 5.0)
    assert status.trials["g"].planned == 4 + 3 * 3 and status.epochs_left() == 8
    status.epoch("g", {"phase": "retrain", "epoch": 1, "retrains": 3, "retrain_index": 1}, 6.0)
    assert status.epochs_left() == 13 - (4 + 3 + 2)
    assert status.line().startswith("[0/1 done | 1 running | 0 failed] g retrain 2/3 (2 of 3)")
