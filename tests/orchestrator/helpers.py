"""Tiny experiment specs for the orchestrator tests (seconds per trial on one CPU)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import yaml

TINY_BASE = {"search.epochs": 2}
"""On top of the ``smoke`` preset (the suite's size, mgas_core/settings/presets.py): 2 search epochs."""


MGAS_TINY = {
    "search.layers": 4, "search.mgas.stages": 2, "search.mgas.warmup_epochs": 0, "search.mgas.mask_interval": 1,
    "search.mgas.stage_epochs": 1, "search.mgas.final_epochs": 1, "search.mgas.control.lambda0": 0.5,
    "search.mgas.control.stage_cap_ratio": 0, "search.mgas.control.final_cap_ratio": 0,
}
"""MG-DARTS at its smallest: 2 stages of 1 search epoch, a regrow epoch, a final epoch (no warm-up)."""


def write_spec(folder: Path, name: str = "tiny", **fields: Any) -> Path:
    spec: dict[str, Any] = {
        "name": name,
        "output_dir": "out",
        "dataset": "synthetic",
        "preset": "smoke",
        "base": dict(TINY_BASE),
        "methods": {"mgas": dict(MGAS_TINY)},
        "sweep": {"method": ["darts", "mgas"], "seed": [0, 1]},
        "resources": {"cpu": 1},
        "max_concurrent_trials": 2,
        "max_failures": 1,
    }
    for key, value in fields.items():
        if key == "base":
            spec["base"].update(value)
        else:
            spec[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Payload:
    """A pickle that, once loaded, creates a file: what a crafted Tune state file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def plant_payloads(tune_dir: Path, marker: Path) -> list[Path]:
    """Replace every pickle Tune keeps in a sweep's folder (``tuner.pkl``, the experiment and search
    states, each trial's ``params.pkl`` and ``error.pkl``) with a :class:`Payload`; the planted files."""
    payload = pickle.dumps(Payload(str(marker)))
    planted = [tune_dir / "tuner.pkl", *tune_dir.glob("experiment_state-*.json"), *tune_dir.glob("*-state-*.json"),
               *tune_dir.glob("*.pkl"), *tune_dir.glob("*/params.pkl"),
               *(d / "error.pkl" for d in tune_dir.iterdir() if d.is_dir())]
    planted = sorted(set(planted))
    for path in planted:
        path.write_bytes(payload)
    return planted
