"""Where and how a run executes: the device and its checks, seeding and RNG state, the errors
both loops raise (divergence, a saved state that does not fit), and evaluation."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mgas_common.errors import UserInputError
from mgas_core.data import epoch_batches
from mgas_core.engine.compiled import check_compile
from mgas_core.settings.run import RunSettings


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class StateMismatchError(UserInputError):
    """A saved state (a checkpoint) that does not fit the model these settings build."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("device: cuda requested but no CUDA device is available; allowed here: cpu, auto")
    return torch.device(name)


def check_device(settings: RunSettings, device: torch.device) -> None:
    """Refuse settings the resolved device cannot run (before anything is written)."""
    if settings.search.precision == "bf16" and device.type != "cuda":
        raise UserInputError(f"search.precision: bf16 needs a CUDA device, this run uses {device.type}; "
                             "allowed here: fp32")
    check_compile(settings.retrain.compile, settings.retrain.compile_backend, device)


def load_saved(load: Callable[[], object]) -> None:
    """Apply part of a saved state; torch's own refusals (missing or extra keys, other shapes,
    other parameter groups, a wrong-sized RNG state) mean the state belongs to another model."""
    try:
        load()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise StateMismatchError(f"the saved state does not fit this run ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:300]})") from exc


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": repr(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    random.setstate(ast.literal_eval(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite(loss: float, epoch: int) -> None:
    if not math.isfinite(loss):
        raise DivergedError(f"diverged at epoch {epoch}: loss is {loss}")


@torch.no_grad()
def evaluate(predict: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, dataset: Any,
             batch_size: int, device: torch.device, workers: int = 0) -> float:
    """Top-1 accuracy of ``predict`` on ``dataset`` with ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in epoch_batches(dataset, batch_size, shuffle=False, workers=workers):
        logits = predict(x.to(device))
        correct += int((logits.argmax(1) == y.to(device)).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(1, total)
