"""Shared fixtures: tiny settings that run in seconds on 2 CPU cores."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mgas_core.config import RunSettings, build_settings

torch.set_num_threads(1)


def tiny(**overrides: Any) -> RunSettings:
    """A 3-cell, 4-channel, 2-node supernet on 8x8 synthetic data; overrides are dotted paths."""
    base: dict[str, Any] = {
        "data.name": "synthetic",
        "data.synthetic.channels": 3,
        "data.synthetic.size": 8,
        "data.synthetic.classes": 4,
        "data.synthetic.samples": 96,
        "data.val_fraction": 0.2,
        "search.layers": 3,
        "search.channels": 4,
        "search.nodes": 2,
        "search.batch_size": 16,
        "search.epochs": 3,
        "search.darts.order": 1,
        # MG-DARTS at its smallest schedule (every phase: 1 warm-up epoch, then 1-2 search epochs)
        "search.mgas.warmup_epochs": 1,
        "search.mgas.mask_interval": 1,
        "search.mgas.stage_epochs": 1,
        "search.mgas.final_epochs": 2,
        "retrain.epochs": 2,
        "retrain.channels": 4,
        "retrain.layers": 3,
        "retrain.batch_size": 16,
        "retrain.cutout": 0,
        "device": "cpu",
    }
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_settings("paper", base)


def search_until(settings: RunSettings, stop_after: int | None = None, state: dict[str, Any] | None = None) -> Any:
    """Run (or resume from ``state``) a search; with ``stop_after``, return the resumable state
    captured after that epoch instead of the result."""
    from mgas_core.data import load_splits
    from mgas_core.train import run_search

    class Stop(Exception):
        pass

    captured: dict[str, Any] = {}

    def on_epoch(record: dict[str, Any], state_fn: Any) -> None:
        if stop_after is not None and record["epoch"] == stop_after:
            captured["state"] = state_fn()
            raise Stop

    try:
        return run_search(settings, load_splits(settings.data), torch.device("cpu"), state=state, on_epoch=on_epoch)
    except Stop:
        return captured["state"]


@pytest.fixture
def tiny_settings():
    return tiny
