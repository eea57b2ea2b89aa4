"""A device's predictor folder: written whole (``save_predictors``), read back with its conditions
checked against where it is used (``load_predictor``).

The folder holds ``predictor.pt`` (each predictor's tensors and plain values, ``torch.save``d and
read with ``weights_only``), ``lookup.json`` (the lookup table), ``samples.jsonl`` (every timed
architecture with its latency and table sum) and ``predictor.json`` (the build's summary: the
conditions, the held-out errors, how long it took).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mgas_common.errors import UserInputError
from mgas_core.files.atomic import atomic_directory
from mgas_core.latency.lookup import LookupTable
from mgas_core.latency.measure import CONDITION_FIELDS, HARDWARE_FIELDS, LatencyConditions
from mgas_core.latency.predictor import LatencyPredictor
from mgas_core.space.architecture import Architecture, architecture_from_json

PREDICTOR_FILE = "predictor.pt"
SUMMARY_FILE = "predictor.json"
TABLE_FILE = "lookup.json"
SAMPLES_FILE = "samples.jsonl"
PREDICTOR_KINDS = ("mlp", "hybrid")


@dataclass
class TimedSample:
    arch: Architecture
    channels: int
    layers: int
    latency_ms: float
    table_ms: float


def save_predictors(out: Path, predictors: dict[str, LatencyPredictor], table: LookupTable,
                    samples: Sequence[TimedSample], report: dict[str, Any]) -> None:
    """The predictor folder, written whole or not at all."""
    with atomic_directory(out) as tmp:
        torch.save({kind: p.state() for kind, p in predictors.items()}, tmp / PREDICTOR_FILE)
        (tmp / TABLE_FILE).write_text(json.dumps(table.as_dict()))
        with open(tmp / SAMPLES_FILE, "w") as fh:
            for s in samples:
                fh.write(json.dumps({"arch": s.arch.to_json(), "channels": s.channels, "layers": s.layers,
                                     "latency_ms": s.latency_ms, "table_ms": s.table_ms}) + "\n")
        (tmp / SUMMARY_FILE).write_text(json.dumps(report, indent=1) + "\n")


def load_samples(folder: Path) -> list[TimedSample]:
    out = []
    for line in (folder / SAMPLES_FILE).read_text().splitlines():
        row = json.loads(line)
        out.append(TimedSample(architecture_from_json(row["arch"]), int(row["channels"]), int(row["layers"]),
                               float(row["latency_ms"]), float(row["table_ms"])))
    return out


def load_predictor(folder: str | Path, here: LatencyConditions | None = None, kind: str = "mlp",
                   fields: tuple[str, ...] = CONDITION_FIELDS) -> LatencyPredictor:
    """The ``kind`` predictor of ``folder``; with ``here``, refused in one line unless it was built
    under the same conditions (``fields``: by default device, device name, torch version, threads,
    batch, input shape)."""
    folder = Path(folder)
    path = folder / PREDICTOR_FILE
    if kind not in PREDICTOR_KINDS:
        raise UserInputError(f"latency predictor kind must be one of {', '.join(PREDICTOR_KINDS)}, got {kind!r}")
    if not path.is_file():
        raise UserInputError(f"{folder} is not a latency predictor folder (no {PREDICTOR_FILE}): build one with "
                             f"`mgas latency build --out {folder} ...`")
    try:
        states = torch.load(path, weights_only=True, map_location="cpu")
        predictor = LatencyPredictor.from_state(states[kind])
    except Exception as exc:  # a damaged or foreign file is the user's input, not a bug here
        raise UserInputError(f"{path} cannot be read as a latency predictor: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}") from None
    if here is not None:
        problem = here.mismatch(predictor.conditions, fields)
        if problem:
            raise UserInputError(f"latency predictor {folder} does not hold here: {problem}; build one here with "
                                 f"`mgas latency build`")
    return predictor


def resolve_predictor_dir(path: str, base_dir: Path) -> str:
    """A predictor folder as the trial sees it: ``~`` is this machine's home, a relative folder is
    relative to ``base_dir`` (where ``mgas run`` was started)."""
    folder = Path(os.path.expanduser(path))
    return str(folder if folder.is_absolute() else (base_dir / folder).resolve())


def predictor_folder(root: str | Path, here: LatencyConditions) -> Path:
    """The predictor folder for ``here``: ``root`` itself when it is one, else the one folder below
    it (``mgas latency build --address`` writes one per node type) built on this device, torch
    and input shape; none is one line naming what there is."""
    root = Path(root)
    if (root / PREDICTOR_FILE).is_file() or not root.is_dir():
        return root
    candidates = sorted(p.parent for p in root.glob(f"*/{PREDICTOR_FILE}"))
    built = []
    for folder in candidates:
        try:
            conditions = LatencyConditions.from_dict(json.loads((folder / SUMMARY_FILE).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            conditions = load_predictor(folder).conditions
        if here.mismatch(conditions, HARDWARE_FIELDS) is None:
            return folder
        built.append(f"{conditions.device}: {conditions.device_name} (torch {conditions.torch_version}, "
                     f"input {'x'.join(map(str, conditions.input_shape))})")
    where = "; ".join(built) if built else "no predictor folder"
    raise UserInputError(f"no latency predictor in {root} for {here.device}: {here.device_name} (torch "
                         f"{here.torch_version}, input {'x'.join(map(str, here.input_shape))}); it holds: {where}")
