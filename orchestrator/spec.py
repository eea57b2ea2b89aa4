"""Experiment specs: one YAML file -> a validated list of trials, before Ray starts.

```yaml
name: quickstart
output_dir: results            # relative to the YAML file's folder unless absolute
dataset: digits                # or {name: cifar10, root: ~/data, download: false}
preset: tiny                   # paper | tiny | imagenet
base:                          # dotted-path settings for every trial
  search.epochs: 12
methods:                       # dotted-path settings per method
  mgas: {search.mgas.regrow_fraction: 0.2}
sweep:                         # grid axes; any dotted settings path is an axis too
  method: [darts, gold_nas, msg_das, mgas]
  target_params: [0.05, 0.1]   # M params (MGAS target, GOLD-NAS floor, genotype width scaling)
  granularities: [[op, filter, weight]]   # MGAS only
  stages: [3]                  # MGAS only
  seed: [0, 1, 2]
exclude: [{method: darts, target_params: 0.05}]
include: [{method: mgas, target_params: 0.2, seed: 0}]
resources: {cpu: 1, gpu: 0}    # per trial; fractional GPUs allowed
max_concurrent_trials: 2
max_failures: 1
```

Axes that only mean something for one method (``granularities``, ``stages``, ``search.<m>.*``)
are dropped for the other methods, so no duplicate trials appear. Every trial's settings are
validated with :class:`~mgas_core.config.RunSettings`; any error names the field and the allowed
values.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mgas_core.config import DATASETS, METHODS, PRESETS, RunSettings, build_settings, known_paths
from mgas_core.errors import UserInputError, format_validation_error

AXIS_PATHS = {
    "method": "search.method",
    "seed": "seed",
    "granularities": "search.mgas.granularities",
    "stages": "search.mgas.stages",
    "target_params": "search.target_params",
}
METHOD_ONLY_AXES = {"granularities": "mgas", "stages": "mgas"}


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _fractional_or_whole(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpu must be a fraction <= 1 or a whole number, got {v}")
        return v


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    root: str | None = None
    download: bool = False

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; allowed: {', '.join(DATASETS)}")
        return v


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    output_dir: str = "results"
    storage_path: str | None = None
    shared_storage: bool = False
    dataset: DatasetSpec
    preset: str = "paper"
    device: str = "auto"
    base: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]] = {}
    sweep: dict[str, list[Any]] = {}
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []
    resources: Resources = Resources()
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; allowed: {', '.join(PRESETS)}")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for m in v:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}; allowed: {', '.join(METHODS)}")
        return v

    @field_validator("sweep")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        paths = set(known_paths())
        for axis, values in v.items():
            if axis not in AXIS_PATHS and axis not in paths:
                raise ValueError(f"unknown sweep axis {axis!r}; allowed: {', '.join(AXIS_PATHS)} "
                                 "or a dotted settings path such as search.epochs")
            if not isinstance(values, list) or not values:
                raise ValueError(f"axis {axis!r} must be a non-empty list of values")
        return v


def _check_paths(where: str, mapping: dict[str, Any]) -> None:
    paths = set(known_paths())
    for key in mapping:
        if key not in paths and key not in AXIS_PATHS:
            close = sorted(p for p in paths if p.split(".")[-1] == key.split(".")[-1])
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserInputError(f"{where}: unknown setting {key!r}{hint}")


def load_spec(path: str | Path) -> tuple[ExperimentSpec, Path]:
    """Parse and validate an experiment YAML (safe loader only); return it and its folder."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"experiment file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserInputError(f"experiment file {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict):
        raise UserInputError(f"experiment file {path} must be a mapping of settings, got {type(raw).__name__}")
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        raise UserInputError(f"{path.name}: {format_validation_error(exc)}") from exc
    _check_paths("base", spec.base)
    for m, overrides in spec.methods.items():
        _check_paths(f"methods.{m}", overrides)
    for rule_kind, rules in (("include", spec.include), ("exclude", spec.exclude)):
        for i, rule in enumerate(rules):
            _check_paths(f"{rule_kind}[{i}]", rule)
    return spec, path.parent


def _to_path(axis: str) -> str:
    return AXIS_PATHS.get(axis, axis)


def _applies(axis: str, method: str) -> bool:
    owner = METHOD_ONLY_AXES.get(axis)
    if owner is not None:
        return owner == method
    path = _to_path(axis)
    parts = path.split(".")
    return not (len(parts) > 2 and parts[0] == "search" and parts[1] in METHODS and parts[1] != method)


def _matches(rule: dict[str, Any], axes: dict[str, Any]) -> bool:
    return all(k in axes and axes[k] == v for k, v in rule.items())


def trial_key(axes: dict[str, Any]) -> str:
    """A stable, readable id of a trial from its axis values."""
    parts = [str(axes.get("method", "trial"))]
    for k in sorted(axes):
        if k == "method":
            continue
        v = axes[k]
        text = "+".join(map(str, v)) if isinstance(v, list) else str(v)
        short = k.split(".")[-1]
        parts.append(f"{short}{text}" if k in ("seed", "stages") else f"{short}-{text}")
    key = "_".join(parts).replace("/", "-").replace(" ", "")
    if len(key) > 100:
        key = key[:80] + "_" + hashlib.sha1(key.encode()).hexdigest()[:10]
    return key


def expand_trials(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """Grid over the sweep axes, minus excludes, plus includes; one dict per trial with the
    validated settings (``settings``), the axis values (``axes``) and a stable ``trial_id``."""
    axes = dict(spec.sweep)
    axes.setdefault("method", [spec.base.get("search.method", "darts")])
    names = list(axes)
    combos: list[dict[str, Any]] = []
    seen: set[str] = set()
    for values in itertools.product(*(axes[n] for n in names)):
        combo = dict(zip(names, values))
        method = combo["method"]
        combo = {k: v for k, v in combo.items() if _applies(k, method)}
        if any(_matches(rule, combo) for rule in spec.exclude):
            continue
        key = json.dumps(combo, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            combos.append(combo)
    for rule in spec.include:
        key = json.dumps(rule, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            combos.append(dict(rule))
    if not combos:
        raise UserInputError("the sweep expands to no trials (every combination was excluded)")
    trials = []
    for combo in combos:
        trials.append({"trial_id": trial_key(combo), "axes": combo, "settings": trial_settings(spec, combo)})
    ids = [t["trial_id"] for t in trials]
    if len(set(ids)) != len(ids):
        raise UserInputError("two trials share an id; make the sweep's axis values distinct")
    return trials


def trial_settings(spec: ExperimentSpec, axes: dict[str, Any]) -> dict[str, Any]:
    method = axes.get("method", spec.base.get("search.method", "darts"))
    overrides: dict[str, Any] = {"data.name": spec.dataset.name, "data.root": spec.dataset.root,
                                 "data.download": spec.dataset.download, "device": spec.device}
    overrides.update(spec.base)
    overrides.update(spec.methods.get(method, {}))
    for axis, value in axes.items():
        overrides[_to_path(axis)] = value
        if axis == "target_params":
            overrides["retrain.target_params"] = value
    threads = max(1, int(spec.resources.cpu))
    overrides.setdefault("threads", threads)
    where = f"trial {trial_key(axes)}"
    try:
        settings: RunSettings = build_settings(spec.preset, overrides)
    except ValidationError as exc:
        raise UserInputError(f"{where}: {format_validation_error(exc)}") from exc
    except ValueError as exc:
        raise UserInputError(f"{where}: {exc}") from exc
    return settings.model_dump(mode="json")
