"""The settings of a run: data, the shared search settings, retraining, and the run itself.

Defaults are the papers' CIFAR settings. A method's own group (``search.<method>.*``) is declared
by the method (:attr:`~mgas_core.methods.protocol.SearchMethod.settings_model`); this module knows
no method.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from mgas_core.settings.strict import (
    MAX_BATCH,
    MAX_CHANNELS,
    MAX_EPOCHS,
    MAX_LAYERS,
    MAX_NODES,
    MAX_SEED,
    MAX_TARGET_M,
    PATH_TEXT,
    Strict,
    field_error,
)

DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "synthetic")
GRANULARITIES = ("op", "filter", "weight")
MAX_SYNTHETIC_BYTES = 16 * 2**30
"""The most memory the synthetic data set's images may take."""
DEFAULT_METHOD = "darts"
"""The method of settings that name none (``mgas train`` retrains without searching)."""


def check_lr_floor(settings: Strict, lr: str, floor: str) -> None:
    """A cosine schedule decays from ``lr`` down to ``floor``: a floor above the rate is refused."""
    high, low = getattr(settings, lr), getattr(settings, floor)
    if low > high:
        raise field_error(floor, f"{floor} ({low:g}) is above {lr} ({high:g}); the cosine schedule decays from "
                                 f"{lr} down to {floor}", low, type(settings).__name__)


class SyntheticShape(Strict):
    channels: int = Field(3, ge=1, le=64)
    size: int = Field(32, ge=4, le=1024)
    classes: int = Field(10, ge=2, le=100_000)
    samples: int = Field(512, ge=8, le=10_000_000)

    @model_validator(mode="after")
    def _fits_in_memory(self) -> SyntheticShape:
        """Each size within its bound can still multiply to petabytes: the float32 tensor is bounded."""
        size = 4 * self.samples * self.channels * self.size * self.size
        if size > MAX_SYNTHETIC_BYTES:
            raise ValueError(f"samples x channels x size x size is {size / 2**30:,.0f} GiB of float32; at most "
                             f"{MAX_SYNTHETIC_BYTES / 2**30:g} GiB (lower samples or size)")
        return self


class DataSettings(Strict):
    name: Literal["digits", "cifar10", "cifar100", "imagenet", "synthetic"] = "cifar10"
    root: str | None = Field(None, min_length=1, max_length=4096, pattern=PATH_TEXT)
    download: bool = False
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    workers: int | None = Field(None, ge=0, le=256,
                                description="data loader processes; None: the trial's CPUs minus one")
    synthetic: SyntheticShape = SyntheticShape()


class LatencyCostSettings(Strict):
    """A latency term in the search loss (``mgas_core/latency/cost.py``), for the methods that take it."""

    predictor: str | None = Field(None, min_length=1, max_length=4096,
                                  description="folder of a device's latency predictor (mgas latency build); set, "
                                              "the search adds the latency term")
    target_ms: float | None = Field(None, gt=0, le=1e7, description="latency target (ms): only a slower "
                                                                    "architecture pays the term")
    coefficient: float = Field(0.1, ge=0, le=1e6, description="balancing coefficient of the latency term")


class SearchSettings(Strict):
    """The settings every search shares. The method registry derives the model runs use from it
    (:func:`mgas_core.methods.registry.search_settings_model`): one field per registered method's
    own group (``search.<method>.*``), the method name checked against the registry, and the
    combinations a method cannot run refused."""

    method: str = Field(DEFAULT_METHOD, description="a registered method")
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
    latency: LatencyCostSettings = LatencyCostSettings()

    @field_validator("channels")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"channels must be even (FactorizedReduce halves them), got {v}")
        return v

    @model_validator(mode="after")
    def _lr_range(self) -> SearchSettings:
        check_lr_floor(self, "w_lr", "w_lr_min")
        if self.latency.target_ms is not None and self.latency.predictor is None:
            raise field_error("latency.target_ms", "latency.target_ms needs latency.predictor (a folder written by "
                              "`mgas latency build`)", self.latency.target_ms, "SearchSettings")
        return self


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
    latency_batch: int = Field(1, ge=1, le=MAX_BATCH, description="images per forward pass when the retrained "
                                                                 "network's latency is measured")
    latency_runs: int = Field(30, ge=0, le=10_000, description="timed forward passes of the latency measurement "
                                                               "(their median is latency_ms; 0: not measured)")
    target_params: float | None = Field(
        None, gt=0, le=MAX_TARGET_M, description="scale a genotype's width so the network has about this many M params"
    )
    target_tolerance: float = Field(
        0.05, ge=0, lt=1, description="a width-scaled genotype reaches its target when its size is within this "
                                      "fraction of it (target_reached, target_gap)")
    memory_format: Literal["auto", "contiguous", "channels_last"] = Field(
        "auto", description="activation layout; auto = channels_last (measured faster)")
    compile: bool = Field(False, description="train and evaluate through torch.compile (mgas_core/engine/compiled.py): "
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

    @model_validator(mode="after")
    def _lr_range(self) -> RetrainSettings:
        check_lr_floor(self, "lr", "lr_min")
        return self


class RunSettings(Strict):
    """Everything one search-then-retrain run needs. Runs use the registry's subclass
    (:func:`mgas_core.methods.registry.run_settings_model`), whose ``search`` field carries every
    registered method's group; this base knows no method."""

    data: DataSettings = DataSettings()
    search: SerializeAsAny[SearchSettings] = Field(default_factory=SearchSettings)
    retrain: RetrainSettings = RetrainSettings()
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, le=1024)
    deterministic: bool = Field(False, description="cuDNN deterministic, no benchmark, torch deterministic algorithms")

    @field_validator("search", mode="before")
    @classmethod
    def _as_search_model(cls, value: Any) -> Any:
        """Search settings of another model (the base, or a registry of other methods) are
        revalidated as this class's ``search`` model."""
        model = cls.model_fields["search"].annotation
        if isinstance(value, SearchSettings) and isinstance(model, type) and not isinstance(value, model):
            return value.model_dump()
        return value

    @model_validator(mode="after")
    def _device_fits(self) -> RunSettings:
        if self.device == "cpu" and self.search.precision == "bf16":
            raise field_error("search.precision", "precision bf16 needs a CUDA device; allowed with device cpu: fp32",
                              "bf16", "RunSettings")
        return self
