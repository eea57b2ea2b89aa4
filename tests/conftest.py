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


@pytest.fixture
def tiny_settings():
    return tiny
