"""Settings of a search and a retraining run: validated pydantic models with paper defaults.

Defaults are the papers' CIFAR settings. ``PRESETS`` hold dotted-path overrides (``tiny`` is the
CPU-sized setting used on ``digits``; ``imagenet`` the mobile setting for retraining). Every model
forbids unknown keys so a typo names the offending field.
"""

from __future__ import annotations

import math
import types
import typing
from functools import cache
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from mgas_core.errors import UserInputError

DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "synthetic")
GRANULARITIES = ("op", "filter", "weight")

MAX_INT = 1_000_000
"""Magnitude bound of any integer setting that declares no upper bound of its own."""
MAX_FLOAT = 1e12
"""Magnitude bound of any float setting that declares no upper bound of its own."""
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types a field annotation admits (``int | None`` -> {int, NoneType})."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in typing.get_args(annotation)))
    if origin is Literal:
        return {type(a) for a in typing.get_args(annotation)}
    if origin is Annotated:
        return _scalar_kinds(typing.get_args(annotation)[0])
    return {annotation} if isinstance(annotation, type) else set()


def _has_upper_bound(metadata: list[Any]) -> bool:
    return any(isinstance(m, annotated_types.Le | annotated_types.Lt) for m in metadata)


class Strict(BaseModel):
    """Base of every settings model: unknown keys refused, every float finite, no boolean where a
    number belongs (``epochs: true``), and every number that declares no upper bound of its own
    bounded by :data:`MAX_INT` / :data:`MAX_FLOAT`, so a typo cannot start a run that never ends."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        kinds = _scalar_kinds(field.annotation)
        numeric = kinds & {int, float}
        if isinstance(value, bool) and numeric and bool not in kinds:
            raise ValueError("expected a number, not a boolean")
        if numeric and isinstance(value, int | float) and not isinstance(value, bool) \
                and not _has_upper_bound(field.metadata):
            limit = MAX_FLOAT if float in numeric else MAX_INT
            if math.isfinite(value) and abs(value) > limit:
                raise ValueError(f"must be between {-limit:g} and {limit:g}, got {value:g}")
        return value


class SyntheticShape(Strict):
    channels: int = Field(3, ge=1, le=64)
    size: int = Field(32, ge=4, le=1024)
    classes: int = Field(10, ge=2, le=100_000)
    samples: int = Field(512, ge=8, le=10_000_000)


class DataSettings(Strict):
    name: Literal["digits", "cifar10", "cifar100", "imagenet", "synthetic"] = "cifar10"
    root: str | None = Field(None, min_length=1, max_length=4096, pattern=r"^[^\x00]*$")
    download: bool = False
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    workers: int | None = Field(None, ge=0, le=256,
                                description="data loader processes; None: the trial's CPUs minus one")
    synthetic: SyntheticShape = SyntheticShape()


class DartsSettings(Strict):
    order: Literal[1, 2] = 2
    alpha_lr: float = Field(3e-4, gt=0)
    alpha_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.999)
    alpha_weight_decay: float = Field(1e-3, ge=0)
    alpha_init_std: float = Field(1e-3, ge=0)
    unrolled_eps: float = Field(0.01, gt=0)


class LambdaControl(Strict):
    """GOLD-NAS lambda controller constants (shared by GOLD-NAS and MGAS)."""

    lambda0: float = Field(1e-5, gt=0)
    c0: float = Field(2.0, gt=1)


class GoldNasSettings(Strict):
    alpha_lr: float = Field(1.0, gt=0)
    alpha_momentum: float = Field(0.9, ge=0, lt=1)
    w_lr: float = Field(0.01, gt=0)
    cost: Literal["params", "flops"] = "params"
    cost_c: float = Field(1.0, ge=0, description="constant part of each op's cost")
    cost_mu: float = Field(1.0, ge=0, description="weight of the op's normalised params/FLOPs")
    eta_min: float = Field(0.01, ge=0, lt=1)
    eta_max: float = Field(0.05, ge=0, lt=1)
    n0: int = Field(4, ge=1, le=10_000)
    control: LambdaControl = LambdaControl()
    warmup_epochs: int = Field(0, ge=0)
    snapshot: Literal["plateau", "epoch"] = Field(
        "plateau", description="Pareto snapshot when pruning resumes after a plateau, or after every pruning epoch")
    stable_rounds: int = Field(3, ge=0, le=MAX_EPOCHS,
                               description="a plateau is more than this many epochs in a row without pruning")
    retrain_snapshots: int | None = Field(
        None, ge=1, le=1000, description="retrain this many snapshots of the series (evenly spaced, the final one "
                                          "always); None: every snapshot")


class MsgDasSettings(Strict):
    subgraphs: int = Field(2, ge=1, le=64)
    tau_max: float = Field(10.0, gt=0)
    tau_min: float = Field(0.1, gt=0)
    alpha_lr: float = Field(3e-4, gt=0)
    alpha_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.999)
    alpha_weight_decay: float = Field(1e-3, ge=0)
    dropblock_rate: float = Field(0.1, ge=0, lt=1, description="initial DropBlock rate on the skip branch")
    dropblock_size: int = Field(3, ge=1, le=1024)
    distill_weight: float = Field(1.0, ge=0)
    distill_temperature: float = Field(2.0, gt=0)
    teacher: Literal["ensemble", "supernet"] = "ensemble"


class MgasLambdaControl(Strict):
    """The official MG-DARTS lambda controller, applied at every mask epoch.

    With ``n`` ops pruned at the mask epoch: ``n >= high`` -> lambda /= c0 and the increment resets
    to lambda0; ``n < low`` -> (unless lambda sits at its cap) increment *= c0^2, lambda += increment.
    The cap is lambda itself once the epoch's mean CE falls below ``cap_ratio`` x its mean
    lambda x size term (``stage_cap_ratio`` in the stages, ``final_cap_ratio`` in the final phase),
    else ``max_lambda``. ``high``/``low`` are the official counts for its 784-op supernet
    (8 cells x 14 edges x 7 ops); they scale with the supernet's number of ops.
    """

    lambda0: float = Field(1e-5, gt=0)
    c0: float = Field(2.0, gt=1)
    high: int = Field(48, ge=1, description="ops pruned at a mask epoch that halve lambda (784-op supernet)")
    low: int = Field(24, ge=1, description="fewer ops pruned than this grow lambda (784-op supernet)")
    reference_ops: int = Field(784, ge=1, description="op count the high/low counts were set for")
    stage_cap_ratio: float = Field(1.0, ge=0, description="0: lambda has no cap")
    final_cap_ratio: float = Field(0.5, ge=0, description="0: lambda has no cap")
    max_lambda: float = Field(100.0, gt=0)


class MgasSettings(Strict):
    """MG-DARTS as in its official code (lxy12357/MG_DARTS); docs/fidelity.md lists every deviation."""

    granularities: list[Literal["op", "filter", "weight"]] = ["op", "filter", "weight"]
    stages: int = Field(3, ge=1)
    warmup_epochs: int = Field(5, ge=0, description="weights-only epochs (lambda 0) opening every stage and the "
                                                    "final phase")
    mask_interval: int = Field(2, ge=1, description="stored masks are recomputed every k-th search epoch")
    stage_goal: float = Field(0.3, gt=0, lt=1, description="a stage ends once its size is below this fraction "
                                                           "of its size when it began")
    stage_epochs: int | None = Field(None, ge=1, description="max search epochs of a stage (after warm-up); "
                                                             "default search.epochs")
    final_epochs: int | None = Field(None, ge=1, description="max search epochs of the final phase (after "
                                                             "warm-up); default search.epochs")
    regrow_fraction: float = Field(0.2, ge=0, le=1, description="ops regrown after stages 2.. as a fraction of "
                                                                "the ops pruned in the stage")
    min_width_fraction: float = Field(0.5, gt=0, le=1, description="filter removal keeps at least this fraction "
                                                                   "of every unit's initial width")
    w_lr: float = Field(0.01, gt=0, description="weight learning rate (constant)")
    alpha_lr: float = Field(1.0, gt=0)
    beta_lr: float = Field(1.0, gt=0)
    op_threshold_lr: float = Field(0.1, gt=0)
    filter_threshold_lr: float = Field(0.1, gt=0)
    weight_threshold_lr: float = Field(0.001, gt=0)
    arch_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of alpha, beta and the thresholds")
    control: MgasLambdaControl = MgasLambdaControl()
    augment: Literal["autoaugment", "standard"] = Field(
        "autoaugment", description="search-time CIFAR augmentation: crop+flip+AutoAugment (official) or crop+flip")
    cutout: int = Field(16, ge=0, description="search-time cutout length on CIFAR (0 disables it)")
    default_target_ratio: float = Field(0.5, gt=0, lt=1, description="target = ratio * supernet size if no target")

    @field_validator("granularities")
    @classmethod
    def _non_empty_unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("granularities must be a non-empty subset of op, filter, weight")
        if len(set(v)) != len(v):
            raise ValueError(f"granularities has duplicates: {v}")
        return [g for g in GRANULARITIES if g in v]


MAX_LAYERS = 100
MAX_CHANNELS = 2048
MAX_NODES = 16
MAX_BATCH = 65_536
MAX_TARGET_M = 100_000.0


class SettingConflict(ValueError):
    """Settings that are each valid but cannot run together; ``field`` is the dotted path (below
    ``search.`` when raised by a method's :meth:`~mgas_core.methods.base.SearchMethod.check_settings`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def field_error(field: str, message: str, value: Any, model: str = "settings") -> ValidationError:
    """A validation error located at the dotted ``field`` (raised from model validators, so the
    one-line message names the field rather than the whole model)."""
    loc = tuple(int(p) if p.isdigit() else p for p in field.split("."))
    detail = InitErrorDetails(type=PydanticCustomError("setting_conflict", "{message}", {"message": message}),
                              loc=loc, input=value)
    return ValidationError.from_exception_data(model, [detail])


def _registry() -> Any:
    """The method registry (imported lazily: the registry module imports this one)."""
    from mgas_core.methods import base

    base.load_methods()
    return base


class SearchSettings(Strict):
    """The search's settings; every registered method adds its own group (``search.<method>.*``).

    Build it through :class:`RunSettings` / :func:`build_settings`, which use
    :func:`search_settings_model` (this class plus one field per registered method's settings)."""

    method: str = Field(default_factory=lambda: _registry().DEFAULT_METHOD, description="a registered method")
    epochs: int = Field(50, ge=1, le=MAX_EPOCHS)
    layers: int = Field(8, ge=1, le=MAX_LAYERS)
    channels: int = Field(16, ge=2, le=MAX_CHANNELS)
    nodes: int = Field(4, ge=1, le=MAX_NODES)
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    w_lr: float = Field(0.025, gt=0)
    w_lr_min: float = Field(0.001, ge=0)
    w_momentum: float = Field(0.9, ge=0, lt=1)
    w_weight_decay: float = Field(3e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    target_params: float | None = Field(None, gt=0, le=MAX_TARGET_M,
                                        description="target size in millions of parameters")
    impl: Literal["fast", "reference"] = "fast"
    memory_format: Literal["auto", "contiguous", "channels_last"] = Field(
        "auto", description="activation layout; auto = channels_last (measured faster on CPU and GPU)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast of the forward pass (CUDA)")
    checkpoint_cells: bool = Field(False, description="recompute each cell in backward to save activation memory")

    @field_validator("method")
    @classmethod
    def _registered(cls, v: str) -> str:
        names = _registry().method_names()
        if v not in names:
            raise ValueError(f"unknown method {v!r}; allowed: {', '.join(names)}")
        return v

    @field_validator("channels")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"channels must be even (FactorizedReduce halves them), got {v}")
        return v

    @model_validator(mode="after")
    def _runnable(self) -> SearchSettings:
        """Combinations that cannot run are refused here, before anything is written or started."""
        if type(self) is SearchSettings:  # the bare base class has no method groups to check
            return self
        method = _registry().METHOD_REGISTRY[self.method]
        try:
            if self.impl == "reference" and not method.reference_impl:
                allowed = [n for n, m in _registry().METHOD_REGISTRY.items() if m.reference_impl]
                raise SettingConflict("impl", f"impl 'reference' exists for {', '.join(allowed)}, not for "
                                              f"{self.method!r}; allowed for {self.method}: fast")
            if self.checkpoint_cells and self.impl == "reference":
                raise SettingConflict("checkpoint_cells", "checkpoint_cells needs impl fast (the reference "
                                                          "supernet mirrors the official code)")
            method.check_settings(self)
        except SettingConflict as exc:
            value = self
            for part in exc.field.split("."):
                value = getattr(value, part, None)
            raise field_error(exc.field, str(exc), value, type(self).__name__) from None
        return self


@cache
def _search_model(groups: tuple[tuple[str, type[BaseModel]], ...]) -> type[SearchSettings]:
    fields: dict[str, Any] = {name: (model, Field(default_factory=model)) for name, model in groups}
    return create_model("SearchSettings", __base__=SearchSettings, __module__=__name__, **fields)


def search_settings_model() -> type[SearchSettings]:
    """:class:`SearchSettings` with one field per registered method that has its own settings."""
    registry = _registry()
    groups = tuple((name, m.settings_model) for name, m in registry.METHOD_REGISTRY.items()
                   if m.settings_model is not None)
    return _search_model(groups)


class RetrainSettings(Strict):
    epochs: int = Field(600, ge=1, le=MAX_EPOCHS)
    channels: int | None = Field(36, ge=2, le=MAX_CHANNELS, description="None: the architecture's own width")
    layers: int | None = Field(20, ge=1, le=MAX_LAYERS, description="None: the architecture's own depth")
    batch_size: int = Field(96, ge=1, le=MAX_BATCH)
    lr: float = Field(0.025, gt=0)
    lr_min: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    auxiliary: bool = True
    aux_weight: float = Field(0.4, ge=0)
    drop_path: float = Field(0.2, ge=0, lt=1)
    cutout: int = Field(16, ge=0, le=1024, description="cutout length in pixels; 0 disables it")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    target_params: float | None = Field(
        None, gt=0, le=MAX_TARGET_M, description="scale a genotype's width so the network has about this many M params"
    )
    target_tolerance: float = Field(
        0.05, ge=0, lt=1, description="a width-scaled genotype reaches its target when its size is within this "
                                      "fraction of it (target_reached, target_gap)")
    memory_format: Literal["auto", "contiguous", "channels_last"] = Field(
        "auto", description="activation layout; auto = channels_last (measured faster)")
    compile: bool = Field(False, description="train and evaluate through torch.compile (mgas_core/compiled.py): "
                                             "minutes of compile that pay off after a few hundred steps on CPU")
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field(
        "inductor", description="torch.compile backend with retrain.compile: inductor (generated kernels) or "
                                "torch's debugging backends aot_eager and eager (the same graphs, eager kernels)")

    @field_validator("channels")
    @classmethod
    def _even(cls, v: int | None) -> int | None:
        if v is not None and v % 2:
            raise ValueError(f"channels must be even (FactorizedReduce halves them), got {v}")
        return v


class RunSettings(Strict):
    """Everything one search-then-retrain run needs."""

    data: DataSettings = DataSettings()
    search: SerializeAsAny[SearchSettings] = Field(default_factory=lambda: search_settings_model()())
    retrain: RetrainSettings = RetrainSettings()
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, le=1024)
    deterministic: bool = Field(False, description="cuDNN deterministic, no benchmark, torch deterministic algorithms")

    @field_validator("search", mode="before")
    @classmethod
    def _with_method_groups(cls, value: Any) -> Any:
        model = search_settings_model()
        if isinstance(value, model):
            return value
        if isinstance(value, SearchSettings):
            value = value.model_dump()
        return model.model_validate(value)

    @model_validator(mode="after")
    def _device_fits(self) -> RunSettings:
        if self.device == "cpu" and self.search.precision == "bf16":
            raise field_error("search.precision", "precision bf16 needs a CUDA device; allowed with device cpu: fp32",
                              "bf16", "RunSettings")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {
        # CPU-sized: a 4-cell, 3-node, C=8 supernet on 8x8 digits; minutes per search on 2 cores
        "search.epochs": 6,
        "search.layers": 4,
        "search.nodes": 3,
        "search.channels": 8,
        "search.batch_size": 96,
        "search.w_lr": 0.05,
        "search.darts.order": 1,
        "search.darts.alpha_lr": 3e-3,
        "search.msg_das.alpha_lr": 0.03,
        "search.gold_nas.w_lr": 0.05,
        "search.gold_nas.control.lambda0": 0.05,
        "search.gold_nas.snapshot": "epoch",
        # MG-DARTS scaled to digits (docs/fidelity.md, "presets"): 1 warm-up epoch per phase, a
        # mask update every epoch, short budgets; lambda0 for 12 steps per epoch instead of the
        # ~520 of CIFAR; no lambda cap, since digits' CE is ~0 and the cap would freeze lambda
        "search.mgas.stages": 3,
        "search.mgas.warmup_epochs": 1,
        "search.mgas.mask_interval": 1,
        "search.mgas.stage_epochs": 2,
        "search.mgas.final_epochs": 6,
        "search.mgas.w_lr": 0.05,
        "search.mgas.control.lambda0": 0.001,
        "search.mgas.control.stage_cap_ratio": 0,
        "search.mgas.control.final_cap_ratio": 0,
        "retrain.epochs": 6,
        "retrain.channels": 12,
        "retrain.layers": 4,
        "retrain.batch_size": 96,
        "retrain.lr": 0.05,
        "retrain.cutout": 0,
        "retrain.drop_path": 0.1,
        "data.val_fraction": 0.2,
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


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, SearchSettings):
        return search_settings_model()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def known_paths(model: type[BaseModel] = RunSettings, prefix: str = "") -> list[str]:
    """Every dotted settings path (leaves) of ``model``, registered methods' groups included."""
    out = []
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            out.extend(known_paths(nested, f"{prefix}{name}."))
        else:
            out.append(f"{prefix}{name}")
    return out


def build_settings(preset: str = "paper", overrides: dict[str, Any] | None = None) -> RunSettings:
    """``RunSettings`` from a preset plus dotted-path overrides (later wins)."""
    if preset not in PRESETS:
        raise UserInputError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    raw: dict[str, Any] = {}
    for path, value in {**PRESETS[preset], **(overrides or {})}.items():
        set_dotted(raw, path, value)
    return RunSettings.model_validate(raw)
