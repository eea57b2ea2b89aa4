"""The method protocol every search method implements, and the method registry.

The shared loop (:func:`mgas_core.train.run_search`) calls, per epoch: ``begin_epoch``, then
``train_step`` per batch (with a second batch from the held-out half for bilevel methods) until
the epoch ends or ``finished`` turns true, then ``end_of_epoch`` (pruning, regrowth, stage
changes, snapshots). ``derive`` returns the discrete architecture; ``state_dict`` carries every
optimiser, controller and parameter so a resumed search is bitwise identical.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mgas_core.arch import Architecture
from mgas_core.config import SearchSettings
from mgas_core.data import Batch, DatasetInfo, SearchAugment
from mgas_core.errors import UserInputError

Event = dict[str, Any]


class SearchMethod(ABC):
    name: ClassVar[str]
    primitives: ClassVar[tuple[str, ...]]
    bilevel: ClassVar[bool] = False
    """True when ``train_step`` needs a batch from the architecture half of the training set."""

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


def register_method(name: str) -> Callable[[type[SearchMethod]], type[SearchMethod]]:
    def wrap(cls: type[SearchMethod]) -> type[SearchMethod]:
        if name in METHOD_REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        METHOD_REGISTRY[name] = cls
        return cls

    return wrap


def create_method(settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> SearchMethod:
    import mgas_core.methods  # noqa: F401  (registers the built-in methods)

    if settings.method not in METHOD_REGISTRY:
        raise ValueError(f"unknown method {settings.method!r}; allowed: {', '.join(sorted(METHOD_REGISTRY))}")
    method = METHOD_REGISTRY[settings.method](settings, info, device, seed)
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
