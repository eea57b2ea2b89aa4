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
resources:                     # per trial; fractional GPUs share one; per method over default
  default: {cpu: 1, gpu: 0}
  mgas: {gpu: 1, accelerator_type: A100}
runtime:                       # Ray runtime_env: the code and its requirements on every node
  working_dir: ..              # relative to this file
  pip: [safetensors]
  env_vars: {OMP_NUM_THREADS: "1"}
deterministic: false           # true: cuDNN deterministic + torch.use_deterministic_algorithms
checkpoint_interval_s: 10      # at most one trial checkpoint per interval (first epoch and the end always)
tracking:                      # every trial as an MLflow run (uri: default a SQLite store in the experiment)
  mlflow: {uri: http://mlflow.example:5000, experiment: my-sweep}
max_concurrent_trials: 2
max_failures: 1
population: {size: 8, generations: 2}   # then a network-level NSGA-II search (orchestrator.population)
```

Axes that only mean something for one method (a method's short axes such as ``granularities``
and ``stages`` for MGAS, ``search.<m>.*``) are dropped for the other methods, so no duplicate
trials appear; which axes and setting groups belong to which method comes from the method
registry. The file is read with a bounded YAML loader (duplicate keys, alias bombs and files over
a few MB are refused); every number must be finite and in range; every trial's settings are
validated with :class:`~mgas_core.settings.run.RunSettings`, including the combinations a method cannot
run; any error names the field and the allowed values.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

from pydantic import Field, RootModel, ValidationError, field_validator, model_validator

from mgas_common.errors import UserInputError, format_validation_error
from mgas_common.safe_yaml import load_yaml
from mgas_common.user_files import read_input_text
from mgas_core.methods.registry import build_settings, known_paths, load_methods, preset_names
from mgas_core.settings.run import DATASETS, DEFAULT_METHOD, RunSettings
from mgas_core.settings.strict import PATH_TEXT, Strict, field_error
from orchestrator.exclude_rules import RuleIndex
from orchestrator.population import PopulationSpec, check_population
from orchestrator.runtime_env import RuntimeSpec
from orchestrator.tracking import TrackingSpec

COMMON_AXES = {"method": "search.method", "seed": "seed", "target_params": "search.target_params"}
MAX_TRIALS = 10_000
MAX_AXIS_VALUES = 1_000


def method_axes() -> dict[str, dict[str, str]]:
    """Short sweep axes declared by methods: axis -> {method: dotted settings path}."""
    out: dict[str, dict[str, str]] = {}
    for name, method in load_methods().items():
        for field in method.sweep_axes:
            out.setdefault(field, {})[name] = f"search.{name}.{field}"
    return out


def axis_paths(axis: str) -> list[str]:
    """The settings a sweep axis sets: a short axis's path(s), or the dotted path itself."""
    if axis in COMMON_AXES:
        return [COMMON_AXES[axis]]
    return list(method_axes().get(axis, {}).values()) or [axis]


def axis_names() -> list[str]:
    return [*COMMON_AXES, *method_axes()]


class TrialResources(Strict):
    """What one trial asks for; unset fields come from ``resources.default``."""

    cpu: float | None = Field(None, gt=0, le=1024)
    gpu: float | None = Field(None, ge=0, le=64)
    accelerator_type: str | None = Field(None, min_length=1, max_length=128,
                                         description="e.g. A100: only nodes with that GPU")

    @field_validator("gpu")
    @classmethod
    def _one_device(cls, v: float | None) -> float | None:
        if v is not None and v > 1:
            raise ValueError(f"gpu {v:g}: a trial uses one device (multi-GPU trials do not exist yet); "
                             "allowed: 0 to 1, fractions share a GPU between trials")
        return v


RESOURCE_FIELDS = set(TrialResources.model_fields)


class ResourcesSpec(RootModel[dict[str, TrialResources]]):
    """``resources: {cpu: 1, gpu: 0.5}`` for every trial, or per method over a default:
    ``resources: {default: {cpu: 1}, mgas: {gpu: 1}, msg_das: {gpu: 0.5, accelerator_type: A100}}``."""

    root: dict[str, TrialResources] = {}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        flat = {k: v[k] for k in v if k in RESOURCE_FIELDS}
        if flat and "default" in v:
            raise ValueError("give cpu/gpu/accelerator_type either at the top of resources or under default, "
                             "not both")
        rest = {k: val for k, val in v.items() if k not in RESOURCE_FIELDS}
        return {"default": flat, **rest} if flat else rest

    @model_validator(mode="after")
    def _known_methods(self) -> ResourcesSpec:
        methods = load_methods()
        unknown = [k for k in self.root if k != "default" and k not in methods]
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} in resources; allowed: default, {', '.join(methods)}, "
                             f"{', '.join(sorted(RESOURCE_FIELDS))}")
        return self

    def for_method(self, method: str) -> dict[str, Any]:
        """The resolved request of one method's trials: ``{cpu, gpu, accelerator_type}``."""
        merged: dict[str, Any] = {"cpu": 1.0, "gpu": 0.0, "accelerator_type": None}
        for key in ("default", method):
            if key in self.root:
                merged.update(self.root[key].model_dump(exclude_none=True))
        return merged

    @property
    def cpu(self) -> float:
        return float(self.for_method("default")["cpu"])

    @property
    def gpu(self) -> float:
        return float(self.for_method("default")["gpu"])


class DatasetSpec(Strict):
    name: str
    root: str | None = Field(None, min_length=1, max_length=4096, pattern=PATH_TEXT)  # resolved on the trial's node
    download: bool = False
    workers: int | None = Field(None, ge=0, le=256, description="loader processes; default: the trial's CPUs minus one")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; allowed: {', '.join(DATASETS)}")
        return v


class ExperimentSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = Field("", max_length=10_000)
    output_dir: str = Field("results", min_length=1, max_length=4096, pattern=PATH_TEXT)
    storage_path: str | None = Field(None, min_length=1, max_length=4096, pattern=PATH_TEXT)
    shared_storage: bool = False
    dataset: DatasetSpec
    preset: str = "paper"
    device: str = "auto"
    base: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]] = {}
    sweep: dict[str, list[Any]] = {}
    include: list[dict[str, Any]] = Field([], max_length=MAX_TRIALS)
    exclude: list[dict[str, Any]] = Field([], max_length=MAX_TRIALS)
    resources: ResourcesSpec = ResourcesSpec()
    runtime: RuntimeSpec | None = None
    tracking: TrackingSpec = TrackingSpec()
    deterministic: bool = False
    checkpoint_interval_s: float = Field(10.0, ge=0, le=86_400)
    max_concurrent_trials: int | None = Field(None, ge=1, le=MAX_TRIALS)
    max_failures: int = Field(1, ge=0, le=1000)
    population: PopulationSpec | None = None
    """A network-level multi-objective search after the sweep (the block stage): see orchestrator.population."""

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        if v not in preset_names():
            raise ValueError(f"unknown preset {v!r}; allowed: {', '.join(preset_names())}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {v!r}; allowed: auto, cpu, cuda")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        names = list(load_methods())
        for m in v:
            if m not in names:
                raise ValueError(f"unknown method {m!r}; allowed: {', '.join(names)}")
        return v

    @field_validator("sweep")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        paths = set(known_paths())
        axes = axis_names()
        for axis, values in v.items():
            if axis not in axes and axis not in paths:
                raise ValueError(f"unknown sweep axis {axis!r}; allowed: {', '.join(axes)} "
                                 "or a dotted settings path such as search.epochs")
            if not isinstance(values, list) or not values:
                raise ValueError(f"axis {axis!r} must be a non-empty list of values")
            if len(values) > MAX_AXIS_VALUES:
                raise ValueError(f"axis {axis!r} has {len(values)} values; at most {MAX_AXIS_VALUES}")
        setting_of: dict[str, str] = {}
        for axis in v:
            for path in axis_paths(axis):
                if path in setting_of:
                    raise ValueError(f"axes {setting_of[path]!r} and {axis!r} both sweep {path}; keep one")
                setting_of[path] = axis
        size = math.prod(len(values) for values in v.values())
        if size > MAX_TRIALS:
            raise ValueError(f"the grid has {size} combinations; at most {MAX_TRIALS} trials per experiment")
        return v

    @model_validator(mode="after")
    def _method_names(self) -> ExperimentSpec:
        names = list(load_methods())
        named = [("sweep.method", v) for v in self.sweep.get("method", [])]
        named += [("base.search.method", self.base["search.method"])] if "search.method" in self.base else []
        named += [(f"{kind}.{i}.method", rule["method"]) for kind, rules in (("include", self.include),
                                                                             ("exclude", self.exclude))
                  for i, rule in enumerate(rules) if "method" in rule]
        for where, value in named:
            if not isinstance(value, str) or value not in names:
                raise field_error(where, f"unknown method {value!r}; allowed: {', '.join(names)}", value)
        return self

    @model_validator(mode="after")
    def _gpu_for_cuda(self) -> ExperimentSpec:
        if self.device != "cuda":
            return self
        for key in ("default", *(k for k in self.resources.root if k != "default")):
            if self.resources.for_method(key)["gpu"] == 0:
                where = "resources.gpu" if key == "default" else f"resources.{key}.gpu"
                raise field_error("device", f"cuda needs {where} > 0 (a trial without a GPU share sees no CUDA "
                                            "device); allowed with gpu 0: auto, cpu", self.device)
        return self


def _check_paths(where: str, mapping: dict[str, Any]) -> None:
    paths = set(known_paths())
    axes = axis_names()
    for key in mapping:
        if key not in paths and key not in axes:
            close = sorted(p for p in paths if p.split(".")[-1] == key.split(".")[-1])
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserInputError(f"{where}: unknown setting {key!r}{hint}")


def load_spec(path: str | Path) -> tuple[ExperimentSpec, Path]:
    """Parse and validate an experiment YAML (bounded safe loader); return it and its folder."""
    path = Path(path)
    raw = load_yaml(read_input_text(path, "experiment file"), f"experiment file {path}")
    if not isinstance(raw, dict):
        raise UserInputError(f"experiment file {path} must be a mapping of settings, got {type(raw).__name__}")
    resources = raw.get("resources")
    try:
        if isinstance(resources, dict) and "default" not in resources:  # the shorthand: errors name resources.cpu
            TrialResources.model_validate({k: v for k, v in resources.items() if k in RESOURCE_FIELDS})
    except ValidationError as exc:
        raise UserInputError(f"{path.name}: {format_validation_error(exc, prefix='resources.')}") from exc
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
    if spec.population is not None:
        _check_paths("population.settings", spec.population.settings)
        check_population(spec.population, spec.base, spec.sweep.get("method", []), path.name)
    return spec, path.parent


def _to_path(axis: str, method: str) -> str:
    if axis in COMMON_AXES:
        return COMMON_AXES[axis]
    return method_axes().get(axis, {}).get(method, axis)


def _applies(axis: str, method: str) -> bool:
    owners = method_axes().get(axis)
    if owners is not None and axis not in COMMON_AXES:
        return method in owners
    parts = axis.split(".")
    return not (len(parts) > 2 and parts[0] == "search" and parts[1] in load_methods() and parts[1] != method)


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
    # a population's block stage defaults to GOLD-NAS: its complexity term yields cells of falling size
    default = "gold_nas" if spec.population is not None else DEFAULT_METHOD
    axes.setdefault("method", [spec.base.get("search.method", default)])
    names = list(axes)
    combos: list[dict[str, Any]] = []
    seen: set[str] = set()
    excluded = RuleIndex(spec.exclude)
    for values in itertools.product(*(axes[n] for n in names)):
        combo = dict(zip(names, values))
        method = combo["method"]
        combo = {k: v for k, v in combo.items() if _applies(k, method)}
        if excluded.matches(combo):
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
    if len(combos) > MAX_TRIALS:
        raise UserInputError(f"the sweep expands to {len(combos)} trials; at most {MAX_TRIALS} per experiment")
    trials = []
    for combo in combos:
        settings = trial_settings(spec, combo)
        method = load_methods()[settings["search"]["method"]]
        trials.append({"trial_id": trial_key(combo), "axes": combo, "settings": settings,
                       "resources": spec.resources.for_method(settings["search"]["method"]),
                       "method_module": method.__module__})
    ids = [t["trial_id"] for t in trials]
    if len(set(ids)) != len(ids):
        raise UserInputError("two trials share an id; make the sweep's axis values distinct")
    return trials


def trial_settings(spec: ExperimentSpec, axes: dict[str, Any]) -> dict[str, Any]:
    default = "gold_nas" if spec.population is not None else DEFAULT_METHOD
    method = axes.get("method", spec.base.get("search.method", default))
    overrides: dict[str, Any] = {"data.name": spec.dataset.name, "data.root": spec.dataset.root,
                                 "data.download": spec.dataset.download, "data.workers": spec.dataset.workers,
                                 "device": spec.device, "deterministic": spec.deterministic}
    overrides.update(spec.base)
    overrides.update(spec.methods.get(method, {}))
    for axis, value in axes.items():
        overrides[_to_path(axis, method)] = value
        if axis == "target_params":
            overrides["retrain.target_params"] = value
    threads = max(1, int(spec.resources.for_method(method)["cpu"]))
    overrides.setdefault("threads", threads)
    where = f"trial {trial_key(axes)}"
    try:
        settings: RunSettings = build_settings(spec.preset, overrides)
    except ValidationError as exc:
        raise UserInputError(f"{where}: {format_validation_error(exc)}") from exc
    except UserInputError as exc:
        raise UserInputError(f"{where}: {exc}") from exc
    if settings.search.precision == "bf16" and spec.resources.for_method(method)["gpu"] == 0:
        raise UserInputError(f"{where}: search.precision: bf16 needs a GPU, but resources.gpu is 0; "
                             "allowed without a GPU: fp32")
    return settings.model_dump(mode="json")
