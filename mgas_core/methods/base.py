"""The method protocol every search method implements, and the method registry.

The registry is the one source of method names: settings validation, experiment specs, the
result schema, the trial pipeline and the benchmarks all read it. A method is one module: its
class, decorated with ``@register_method("name")``, declares its own settings group
(``settings_model``, validated as ``search.<name>.*``), whether it runs on the reference
supernet, which of its settings become result columns and short sweep axes, and which setting
combinations it cannot run (``check_settings``). Every module of ``mgas_core.methods`` is
imported on first use; methods from other installed packages are found through the
``mgas.methods`` entry-point group.

The shared loop (:func:`mgas_core.train.run_search`) calls, per epoch: ``begin_epoch``, then
``train_step`` per batch (with a second batch from the held-out half for bilevel methods) until
the epoch ends or ``finished`` turns true, then ``end_of_epoch`` (pruning, regrowth, stage
changes, snapshots). ``derive`` returns the discrete architecture; ``state_dict`` carries every
optimiser, controller and parameter so a resumed search is bitwise identical.
"""

from __future__ import annotations

import importlib
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from mgas_core.arch import Architecture
from mgas_core.config import SearchSettings, SettingConflict
from mgas_core.data import Batch, DatasetInfo, SearchAugment
from mgas_core.errors import UserInputError

Event = dict[str, Any]


@dataclass
class RetrainCandidate:
    """An architecture a search yields for retraining: its result, or one point of a series
    (GOLD-NAS's snapshots: ``snapshot_index`` and the search epoch it was taken at)."""

    arch: Architecture
    snapshot_index: int | None = None
    final: bool = True
    search_epoch: int | None = None


class SearchMethod(ABC):
    name: ClassVar[str]
    primitives: ClassVar[tuple[str, ...]]
    bilevel: ClassVar[bool] = False
    """True when ``train_step`` needs a batch from the architecture half of the training set."""
    settings_model: ClassVar[type[BaseModel] | None] = None
    """The method's own settings group, validated as ``search.<name>.*`` (None: it has none)."""
    reference_impl: ClassVar[bool] = False
    """True when the method also runs on the reference supernet (``search.impl: reference``)."""
    result_fields: ClassVar[tuple[str, ...]] = ()
    """Fields of the method's settings group recorded as result columns of the same name."""
    sweep_axes: ClassVar[tuple[str, ...]] = ()
    """Fields of the method's settings group usable as short sweep axes (``stages``)."""

    @classmethod
    def check_settings(cls, settings: SearchSettings) -> None:
        """Refuse settings this method cannot run with: raise
        :class:`~mgas_core.config.SettingConflict` naming the field (called during validation)."""
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

    @property
    def finished(self) -> bool:
        """True once the search has met its stopping rule (e.g. the target size)."""
        return False

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @abstractmethod
    def train_step(self, batch: Batch, arch_batch: Batch | None = None) -> dict[str, float]:
        """One search step; returns at least ``loss`` and ``acc`` of the weight step."""

    def end_of_epoch(self, epoch: int) -> list[Event]:
        return []

    @abstractmethod
    def derive(self) -> Architecture:
        """The discrete architecture the search currently stands for."""

    @abstractmethod
    def predict(self, x: Tensor) -> Tensor:
        """Logits of the supernet as it is searched (used for val accuracy every epoch)."""

    def log_metrics(self) -> dict[str, Any]:
        """Per-epoch scalars beyond loss/accuracy (lambda, temperature, remaining ratios ...)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Method-specific fields of the final JSON summary."""
        return {}

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


METHOD_REGISTRY: dict[str, type[SearchMethod]] = {}
DEFAULT_METHOD = "darts"
"""The method of settings that name none (``mgas train`` retrains without searching)."""
ENTRY_POINT_GROUP = "mgas.methods"
METHOD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_entry_points_loaded: list[bool] = []


def register_method(name: str) -> Callable[[type[SearchMethod]], type[SearchMethod]]:
    """Class decorator: make ``name`` a search method (``search.method: name``)."""
    def wrap(cls: type[SearchMethod]) -> type[SearchMethod]:
        if not METHOD_NAME.match(name):
            raise ValueError(f"method name {name!r} must be lower-case letters, digits and _ (a settings key)")
        if name in SearchSettings.model_fields:
            raise ValueError(f"method name {name!r} is taken by the search setting of that name")
        known = METHOD_REGISTRY.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"method {name!r} registered twice ({known.__module__} and {cls.__module__})")
        cls.name = name
        METHOD_REGISTRY[name] = cls
        return cls

    return wrap


def unregister_method(name: str) -> None:
    """Remove a registered method (tests that register a throwaway one clean up with this)."""
    METHOD_REGISTRY.pop(name, None)


def load_methods() -> dict[str, type[SearchMethod]]:
    """The registry with every built-in method (all modules of ``mgas_core.methods``) and those
    that installed packages declare in the ``mgas.methods`` entry-point group."""
    importlib.import_module("mgas_core.methods")
    if not _entry_points_loaded:
        _entry_points_loaded.append(True)
        from importlib.metadata import entry_points

        for entry in entry_points(group=ENTRY_POINT_GROUP):
            entry.load()
    return METHOD_REGISTRY


def method_names() -> tuple[str, ...]:
    return tuple(load_methods())


def result_columns() -> dict[str, type]:
    """Result columns the registered methods declare (``result_fields``), each with the scalar
    type it is stored as: int, float, bool, or str (lists are joined with commas)."""
    columns: dict[str, type] = {}
    for name, method in load_methods().items():
        for field in method.result_fields:
            if method.settings_model is None or field not in method.settings_model.model_fields:
                raise ValueError(f"method {name!r} declares result field {field!r}, which its settings lack")
            annotation = method.settings_model.model_fields[field].annotation
            kind = next((k for k in (bool, int, float) if annotation is k or annotation == k | None), str)
            if columns.setdefault(field, kind) is not kind:
                raise ValueError(f"result column {field!r} is declared as {columns[field].__name__} and "
                                 f"{kind.__name__} by two methods")
    return columns


def result_values(settings: dict[str, Any]) -> dict[str, Any]:
    """The declared result columns of one run (``settings`` as dumped to JSON): the method's own
    values, None for columns other methods declare."""
    columns = dict.fromkeys(result_columns())
    name = settings["search"]["method"]
    for field in get_method(name).result_fields:
        value = settings["search"][name][field]
        columns[field] = ",".join(map(str, value)) if isinstance(value, list | tuple) else value
    return columns


def get_method(name: str, module: str | None = None) -> type[SearchMethod]:
    """The class registered as ``name``; ``module`` (where it was registered, recorded with each
    trial) is imported first if the name is not known in this process yet (a Ray worker)."""
    registry = load_methods()
    if name not in registry and module:
        importlib.import_module(module)
    if name not in registry:
        raise UserInputError(f"unknown method {name!r}; allowed: {', '.join(registry)}")
    return registry[name]


def create_method(settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> SearchMethod:
    method = get_method(settings.method)(settings, info, device, seed)
    method.model.to(memory_format=method.memory_format)
    return method


def search_augment_for(settings: SearchSettings) -> SearchAugment:
    """The search-time augmentation of ``settings.method`` (see :meth:`SearchMethod.search_augment`)."""
    import mgas_core.methods  # noqa: F401  (registers the built-in methods)

    cls = METHOD_REGISTRY.get(settings.method)
    return cls.search_augment(settings) if cls is not None else SearchAugment()


def resolve_memory_format(settings: SearchSettings) -> torch.memory_format:
    """``auto`` is channels-last for the optimised supernet (measured faster: benchmarks/RESULTS.md)
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
