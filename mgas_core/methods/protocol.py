"""The protocol every search method implements, and the helpers the methods share.

A method is one module (or a subpackage for a large one) under ``mgas_core/methods/``, or a module
of another installed package named in the ``mgas.methods`` entry-point group: its class, decorated
with :func:`~mgas_core.methods.registry.register_method`, declares everything about itself — its
settings group (``settings_model``, validated as ``search.<name>.*``), its presets, its command-line
flags, its plot style, whether it runs on the reference supernet, which of its settings become
result columns and short sweep axes, and which setting combinations it cannot run
(``check_settings``). Nothing else in the project names a method.

The shared loop (:func:`mgas_core.engine.search.run_search`) calls, per epoch: ``begin_epoch``, then
``train_step`` per batch (with a second batch from the held-out half for bilevel methods) until
the epoch ends or ``finished`` turns true, then ``end_of_epoch`` (pruning, regrowth, stage
changes, snapshots). ``derive`` returns the discrete architecture; ``state_dict`` carries every
optimiser, controller and parameter so a resumed search is bitwise identical.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, nn

from mgas_common.errors import UserInputError
from mgas_core.data import Batch, DatasetInfo, SearchAugment
from mgas_core.settings.run import SearchSettings
from mgas_core.settings.strict import SettingConflict
from mgas_core.space.architecture import Architecture

Event = dict[str, Any]


@dataclass
class RetrainCandidate:
    """An architecture a search yields for retraining: its result, or one point of a series
    (GOLD-NAS's snapshots: ``snapshot_index`` and the search epoch it was taken at)."""

    arch: Architecture
    snapshot_index: int | None = None
    final: bool = True
    search_epoch: int | None = None


@dataclass(frozen=True)
class MethodStyle:
    """How reports draw a method: its label, a matplotlib colour and a marker. A method that
    declares none is drawn in a colour of the default palette, labelled with its name."""

    label: str
    colour: str | None = None
    marker: str | None = None


class SearchMethod(ABC):
    name: ClassVar[str]
    primitives: ClassVar[tuple[str, ...]]
    bilevel: ClassVar[bool] = False
    searches: ClassVar[bool] = True
    """False for a method that only names an architecture to retrain (``published``): no search
    step to benchmark or test."""
    """True when ``train_step`` needs a batch from the architecture half of the training set."""
    settings_model: ClassVar[type[BaseModel] | None] = None
    """The method's own settings group, validated as ``search.<name>.*`` (None: it has none)."""
    reference_impl: ClassVar[bool] = False
    takes_latency_cost: ClassVar[bool] = False  # search.latency.predictor: a latency term in its loss
    """True when the method also runs on the reference supernet (``search.impl: reference``)."""
    result_fields: ClassVar[tuple[str, ...]] = ()
    """Fields of the method's settings group recorded as result columns of the same name."""
    sweep_axes: ClassVar[tuple[str, ...]] = ()
    """Fields of the method's settings group usable as short sweep axes (``stages``)."""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    """The method's values in each named preset (``tiny``, ``smoke``, ...), as dotted paths inside its
    own group (``search.<name>.``); the registry merges them with the shared presets."""
    cli_flags: ClassVar[dict[str, str]] = {}
    """Fields of the method's settings group offered as ``mgas search`` flags (``--field-name``),
    each with its help text; the type and choices come from the field."""
    style: ClassVar[MethodStyle | None] = None
    """How reports draw the method (None: a palette colour, labelled with the name)."""
    benchmark_overrides: ClassVar[dict[str, Any]] = {}
    """Settings of the method's own group (dotted paths, ``search.<name>.``) that the benchmarks
    (``benchmarks.supernet``, ``benchmarks.search_epoch``, the step profile) use on top of the
    ``paper`` preset unless a flag sets them: what the method's benchmarked step is (DARTS: first
    order; MGAS: one stage, the whole network)."""

    @classmethod
    def check_settings(cls, settings: SearchSettings) -> None:
        """Refuse settings this method cannot run with: raise
        :class:`~mgas_core.settings.strict.SettingConflict` naming the field (called during validation)."""
        del settings

    def __init__(self, settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> None:
        self.settings = settings
        self.info = info
        self.device = device
        self.seed = seed
        self.events: list[Event] = []
        self.epoch = 0
        self.memory_format = resolve_memory_format(settings)
        if settings.precision == "bf16" and device.type != "cuda":
            raise UserInputError("search.precision=bf16 needs a CUDA device; allowed on CPU: fp32")
        try:  # validated with the settings already; settings changed since (assignment) are checked again
            type(self).check_settings(settings)
        except SettingConflict as exc:
            raise UserInputError(f"search.{exc.field}: {exc}") from None

    @classmethod
    def search_augment(cls, settings: SearchSettings) -> SearchAugment:
        """Extra search-time augmentation the method's official code uses (none by default)."""
        del settings
        return SearchAugment()

    def to_device(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Move a batch to the device in the supernet's activation layout."""
        x = batch[0].to(self.device, memory_format=self.memory_format)
        return x, batch[1].to(self.device)

    def autocast(self) -> AbstractContextManager[Any]:
        """bf16 autocast of forward passes when ``precision=bf16`` (CUDA), else a no-op."""
        if self.settings.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # --- the protocol -------------------------------------------------------------------------
    model: nn.Module
    """Everything learnable: the supernet and the architecture parameters (``state_dict`` ready)."""

    @property
    def max_epochs(self) -> int:
        return self.settings.epochs

    @classmethod
    def epoch_plan(cls, settings: SearchSettings) -> tuple[int, str]:
        """The most search epochs ``settings`` can run (what :attr:`max_epochs` will be) and how they
        split, for ``mgas run --dry-run`` and progress before the trial starts: by default
        ``search.epochs``; a method with phases says so (MGAS: stages, warm-ups, regrowth, final)."""
        return settings.epochs, f"{settings.epochs} ep"

    @property
    def finished(self) -> bool:
        """True once the search has met its stopping rule (e.g. the target size)."""
        return False

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def prepare_benchmark(self, stage: int) -> dict[str, Any]:
        """Put a freshly built method into the state whose ``train_step`` a step benchmark times:
        a step of stage ``stage`` (1-based; ``benchmarks.supernet --stage``) with every loss term
        on. Returns what the benchmark reports beside its figures: ``cells_run``, the cells a step
        trains, where that is fewer than all. The default, for a method without stages: nothing to
        do at stage 1; any other stage is refused."""
        if stage != 1:
            raise UserInputError(f"method {self.name!r} has one stage: --stage {stage} does not exist; allowed: 1")
        return {}

    @abstractmethod
    def train_step(self, batch: Batch, arch_batch: Batch | None = None) -> dict[str, float]:
        """One search step; returns at least ``loss`` and ``acc`` of the weight step."""

    def end_of_epoch(self, epoch: int) -> list[Event]:
        return []

    @abstractmethod
    def derive(self) -> Architecture:
        """The discrete architecture the search currently stands for."""

    def predict(self, x: Tensor) -> Tensor:
        """Logits of the supernet as it is searched (used for val accuracy every epoch); by default
        the model's forward."""
        return self.model(x)

    def log_metrics(self) -> dict[str, Any]:
        """Per-epoch scalars beyond loss/accuracy (lambda, temperature, remaining ratios ...)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Method-specific fields of the final JSON summary."""
        return {}

    def weight_step(self, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> dict[str, float]:
        """The SGD step of the weights on a training batch (cross-entropy of ``self.model``, the
        architecture parameters frozen, gradients clipped): DARTS's and its descendants'."""
        optimizer.zero_grad(set_to_none=True)
        with frozen(self.model.arch_parameters()):
            with self.autocast():
                logits = self.model(x)
                loss = F.cross_entropy(logits, y)
            loss.backward()
        clip_and_step(optimizer, self.model.weight_parameters(), self.settings.grad_clip)
        return {"loss": float(loss.detach()), "acc": accuracy(logits.detach(), y)}

    def architectures_to_retrain(self) -> list[RetrainCandidate]:
        """What the trial pipeline retrains, each becoming a result row, the final one last: by
        default the one derived architecture."""
        return [RetrainCandidate(self.derive())]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Controller state beyond model and optimisers (plain values and tensors only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    def prepare_load(self, state: dict[str, Any]) -> None:
        """Reshape the model to a saved structure before its tensors are loaded (MGAS shrinking)."""
        del state

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers().items()},
            "events": list(self.events),
            "epoch": self.epoch,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prepare_load(state)
        self.model.load_state_dict(state["model"])
        opts = self.optimizers()
        if set(opts) != set(state["optimizers"]):
            raise ValueError(f"optimizer set {sorted(state['optimizers'])} does not match {sorted(opts)}")
        for k, opt in opts.items():
            opt.load_state_dict(state["optimizers"][k])
        self.events = list(state["events"])
        self.epoch = int(state["epoch"])
        self.load_extra_state(state["extra"])


class RetrainOnlyMethod(SearchMethod):
    """A method with no search: it names the architecture to retrain (``published``, a population's
    ``network_mo`` candidate). A subclass says which (:meth:`architecture`) and which setting
    names it (``architecture_field``, for the one-line error when it cannot be built)."""

    searches = False
    architecture_field: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def architecture(cls, settings: SearchSettings) -> Architecture:
        """The architecture to retrain (raises :class:`UserInputError` when it cannot be built)."""

    @classmethod
    def check_settings(cls, settings: SearchSettings) -> None:
        """The architecture must build before any trial starts (the spec's validation runs this)."""
        if settings.method != cls.name:
            return
        try:
            cls.architecture(settings)
        except UserInputError as exc:
            raise SettingConflict(cls.architecture_field, str(exc)) from None

    def __init__(self, settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> None:
        super().__init__(settings, info, device, seed)
        self.arch = type(self).architecture(settings)
        self.model = nn.Module()

    @property
    def max_epochs(self) -> int:
        return 0

    def train_step(self, batch: Batch, arch_batch: Batch | None = None) -> dict[str, float]:
        raise RuntimeError(f"method {self.name!r} has no search step")

    def derive(self) -> Architecture:
        return copy.deepcopy(self.arch)


def resolve_memory_format(settings: SearchSettings) -> torch.memory_format:
    """``auto`` is channels-last for the optimised supernet (measured faster: docs/performance.md)
    and contiguous for the reference one, which mirrors the official code."""
    if settings.memory_format == "channels_last" or (settings.memory_format == "auto" and settings.impl == "fast"):
        return torch.channels_last
    return torch.contiguous_format


# --- helpers shared by the methods ------------------------------------------------------------


def cosine_lr(base: float, minimum: float, epoch: int, epochs: int) -> float:
    """Cosine annealing from ``base`` to ``minimum`` over ``epochs`` (epoch 0 gets ``base``)."""
    return minimum + (base - minimum) * (1 + math.cos(math.pi * epoch / max(1, epochs))) / 2


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@contextmanager
def frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Temporarily stop gradient into ``params`` (saves the unneeded backward work)."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def accuracy(logits: Tensor, target: Tensor) -> float:
    return float((logits.argmax(dim=1) == target).float().mean())


def clip_and_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], clip: float) -> None:
    nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def clone_tensors(state: Any) -> Any:
    """A copy of a nested dict/list/tuple structure (an optimiser ``state_dict()``) in which every
    tensor is cloned and everything else shared: what ``copy.deepcopy`` gives for such a state,
    at a fraction of its cost (no memo, no pickling protocol per tensor)."""
    if isinstance(state, Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {k: clone_tensors(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(clone_tensors(v) for v in state)
    return state
