"""Presets and dotted setting paths: the shared part of every preset, and the machinery that turns
a preset plus ``a.b.c: value`` overrides into validated settings.

A preset is a dict of dotted-path overrides. The shared part below sets what every method uses
(data, the shared search fields, retraining); each method adds the values of its own group
(:attr:`~mgas_core.methods.protocol.SearchMethod.presets`), and the method registry merges both
(:func:`mgas_core.methods.registry.presets`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from mgas_common.errors import UserInputError

SHARED_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {
        # CPU-sized: a 4-cell, 3-node, C=8 supernet on 8x8 digits; minutes per search on 2 cores
        "search.epochs": 6,
        "search.layers": 4,
        "search.nodes": 3,
        "search.channels": 8,
        "search.batch_size": 96,
        "search.w_lr": 0.05,
        "retrain.epochs": 6,
        "retrain.channels": 12,
        "retrain.layers": 4,
        "retrain.batch_size": 96,
        "retrain.lr": 0.05,
        "retrain.cutout": 0,
        "retrain.drop_path": 0.1,
        "data.val_fraction": 0.2,
    },
    "smoke": {
        # the smallest shape that runs every method: a 3-cell, 2-node, C=4 supernet on 96 8x8
        # synthetic images, seconds per search and retraining (the test suite's size)
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
        "retrain.epochs": 2,
        "retrain.channels": 4,
        "retrain.layers": 3,
        "retrain.batch_size": 16,
        "retrain.cutout": 0,
        "device": "cpu",
    },
    "imagenet": {
        "data.name": "imagenet",
        "retrain.epochs": 250,
        "retrain.channels": 48,
        "retrain.layers": 14,
        "retrain.batch_size": 128,
        "retrain.lr": 0.1,
        "retrain.weight_decay": 3e-5,
        "retrain.drop_path": 0.0,
        "retrain.cutout": 0,
        "retrain.label_smoothing": 0.1,
    },
}


def set_dotted(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``path`` ``'a.b'``, creating nested dicts."""
    keys = path.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise UserInputError(f"{path}: {'.'.join(keys[: i + 1])} is a single value, not a settings group")
    node[keys[-1]] = value


def model_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted settings path (leaves) of ``model``."""
    out = []
    for name, field in model.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            out.extend(model_paths(nested, f"{prefix}{name}."))
        else:
            out.append(f"{prefix}{name}")
    return out


def nested_overrides(presets: dict[str, dict[str, Any]], preset: str,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nested settings dict of ``preset`` plus dotted-path ``overrides`` (later wins)."""
    if preset not in presets:
        raise UserInputError(f"unknown preset {preset!r}; allowed: {', '.join(presets)}")
    raw: dict[str, Any] = {}
    for path, value in {**presets[preset], **(overrides or {})}.items():
        set_dotted(raw, path, value)
    return raw
