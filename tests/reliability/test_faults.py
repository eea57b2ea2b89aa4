"""Faults: writers killed mid-write, damaged checkpoints, out-of-memory in a trial, safe defaults."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from ray import tune

from mgas_core.files.atomic import atomic_write_bytes
from mgas_core.files.checkpoints import (
    CorruptFileError,
    load_checkpoint,
    load_first_good,
    save_checkpoint,
    save_checkpoint_keeping_previous,
)
from orchestrator.local import _resume_state
from orchestrator.ray_runtime import embedded_init_kwargs
from orchestrator.spec import expand_trials, load_spec
from orchestrator.trainable import TrialFailed, _write_state_dir, restore_trial_state, run_trial_pipeline
from tests.orchestrator.helpers import write_spec

KILLS = 24


def _payload(version: int) -> bytes:
    body = hashlib.sha256(str(version).encode()).digest() * (40_000 + 997 * (version % 50))  # ~1.3-2.8 MB
    return version.to_bytes(8, "little") + body


def _is_whole(data: bytes) -> bool:
    return len(data) >= 8 and data == _payload(int.from_bytes(data[:8], "little"))


def _write_forever(path: str, kind: str) -> None:
    version = 1
    while True:
        if kind == "bytes":
            atomic_write_bytes(path, _payload(version))
        else:
            save_checkpoint_keeping_previous({"version": version, "w": torch.full((200_000,), float(version))},
                                             path)
        version += 1


def _kill_loop(path: Path, kind: str) -> int:
    """Start a writer process, SIGKILL it after a random delay; repeat. Returns the number of kills."""
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    kills = 0
    for _ in range(KILLS):
        proc = ctx.Process(target=_write_forever, args=(str(path), kind), daemon=True)
        proc.start()
        time.sleep(0.02 + rng.random() * 0.15)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        kills += proc.exitcode == -signal.SIGKILL
        yield kills


@pytest.mark.slow
def test_killing_the_writer_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "results.bin"
    kills = 0
    for kills_so_far in _kill_loop(target, "bytes"):
        kills = kills_so_far
        if target.exists():  # the first writer may die before its first rename
            assert _is_whole(target.read_bytes()), "a killed writer left a partial file"
    assert kills >= 20


@pytest.mark.slow
def test_killing_the_checkpoint_writer_always_leaves_a_good_checkpoint(tmp_path):
    target = tmp_path / "checkpoint.pt"
    kills, good = 0, 0
    for kills_so_far in _kill_loop(target, "checkpoint"):
        kills = kills_so_far
        state, _, _ = load_first_good([target, target.with_name(target.name + ".prev")])
        if state is not None:
            good += 1
            assert torch.equal(state["w"], torch.full((200_000,), float(state["version"])))
        else:
            assert not target.exists() and not target.with_name("checkpoint.pt.prev").exists()
    assert kills >= 20 and good >= 20


# --- damaged checkpoints ----------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped byte in the middle: the checksum catches it
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])


@pytest.mark.parametrize("how", ["truncated", "tampered"])
def test_damaged_tune_checkpoint_falls_back_to_the_previous_one(tmp_path, how, capsys):
    trial_dir = tmp_path / "trial"
    for i in range(2):
        d = trial_dir / f"checkpoint_00000{i}"
        d.mkdir(parents=True)
        _write_state_dir(d, {"phase": "search", "attempt": 1, "epoch_marker": i})
    newest = trial_dir / "checkpoint_000001"
    _damage(newest / "trial_state.pt", how)
    state = restore_trial_state(tune.Checkpoint.from_directory(str(newest)))
    assert state["epoch_marker"] == 0
    assert "checkpoint_000000" in state["recovery"][0] and "damaged" in state["recovery"][0]
    assert "resumed from checkpoint_000000" in capsys.readouterr().err


def test_no_good_checkpoint_restarts_the_trial_and_says_so(tmp_path, capsys):
    d = tmp_path / "trial" / "checkpoint_000000"
    d.mkdir(parents=True)
    _write_state_dir(d, {"phase": "retrain", "attempt": 3})
    _damage(d / "trial_state.pt", "truncated")
    state = restore_trial_state(tune.Checkpoint.from_directory(str(d)))
    assert state["phase"] == "search" and state["attempt"] == 0 and "restarting" in state["recovery"][0]
    assert "restarting the trial" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "tampered"])
def test_local_search_resume_falls_back_to_previous_checkpoint(tmp_path, how, capsys):
    from orchestrator.local import search_command
    from tests.conftest import tiny

    settings = tiny(search__epochs=2)
    search_command(settings, tmp_path, progress=False)  # checkpoint.pt after epoch 2, .prev after epoch 1
    ckpt = tmp_path / "checkpoint.pt"
    state, notes = _resume_state(ckpt, settings)
    assert state["next_epoch"] == 2 and notes == [f"resuming from {ckpt}: 2 of 2 epochs done"]
    _damage(ckpt, how)
    with pytest.raises(CorruptFileError):
        load_checkpoint(ckpt)
    state, notes = _resume_state(ckpt, settings)
    assert state["next_epoch"] == 1 and len(notes) == 2
    assert notes[0].startswith("warning: damaged checkpoint skipped")
    assert notes[1] == f"resuming from {ckpt}.prev (the previous good checkpoint): 1 of 2 epochs done"
    search_command(settings, tmp_path, resume=True, progress=False)  # the notes are printed once it starts
    assert notes[1] in capsys.readouterr().err


# --- out of memory ----------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [MemoryError, torch.OutOfMemoryError])
def test_out_of_memory_is_recorded_with_batch_size_and_hint(tmp_path, monkeypatch, error):
    from mgas_core.methods.darts import Darts

    calls = {"n": 0}
    original = Darts.train_step

    def exhausting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise error("injected: could not allocate 3.2 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Darts, "train_step", exhausting)
    spec, _ = load_spec(write_spec(tmp_path, sweep={"method": ["darts"], "seed": [0]}))
    trial = expand_trials(spec)[0]
    with pytest.raises(TrialFailed) as info:
        run_trial_pipeline(trial, None, lambda metrics, state: None)
    message = str(info.value)
    assert "out of memory in search at batch size 16" in message
    assert "hint: lower search.batch_size" in message


def test_settings_a_trial_cannot_run_fail_it_once_with_the_reason(tmp_path):
    """A target above the supernet's size is only known once MGAS builds it: the trial fails with
    that reason instead of being retried (max_failures) with the same settings."""
    spec, _ = load_spec(write_spec(tmp_path, sweep={"method": ["mgas"], "seed": [0], "target_params": [50.0]}))
    trial = expand_trials(spec)[0]
    with pytest.raises(TrialFailed, match="not below the supernet's size"):
        run_trial_pipeline(trial, None, lambda metrics, state: None)


# --- security defaults ------------------------------------------------------------------------------


def test_embedded_ray_has_no_dashboard_by_default_and_loopback_when_enabled():
    default = embedded_init_kwargs()
    assert default["include_dashboard"] is False
    enabled = embedded_init_kwargs(dashboard=True)
    assert enabled["include_dashboard"] is True and enabled["dashboard_host"] == "127.0.0.1"
    explicit = embedded_init_kwargs(dashboard=True, dashboard_host="0.0.0.0")
    assert explicit["dashboard_host"] == "0.0.0.0"


def test_dashboard_host_without_dashboard_is_refused(tmp_path, capsys):
    from orchestrator.cli import main

    path = write_spec(tmp_path)
    assert main(["run", str(path), "--dashboard-host", "0.0.0.0"]) == 2
    assert "--dashboard-host needs --dashboard" in capsys.readouterr().err


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(CorruptFileError, match="cannot be loaded safely"):
        load_checkpoint(path)
    save_checkpoint({"x": torch.ones(2)}, tmp_path / "ok.pt")  # plain tensors load fine
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["x"], torch.ones(2))
