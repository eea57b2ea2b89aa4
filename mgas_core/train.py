"""The shared search loop (every method plugs into it) and the retraining loop.

Both loops are epoch-based and resumable: the caller receives, after every epoch, the epoch's
record and a function producing the full state (model, optimisers, controller, RNG states,
history, elapsed time); passing that state back as ``state=`` continues bitwise identically on
the same machine. Data order depends only on (seed, epoch), never on how many times the process
was restarted.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mgas_core.arch import Architecture
from mgas_core.compiled import check_compile, compiled_forward
from mgas_core.config import MAX_CHANNELS, RetrainSettings, RunSettings
from mgas_core.data import DatasetInfo, Splits, epoch_batches, split_in_half
from mgas_core.errors import UserInputError
from mgas_core.methods.base import RetrainCandidate, SearchMethod, cosine_lr, create_method, set_lr
from mgas_core.metrics import ParamCount, PeakMemory, Stopwatch, count_flops, count_params
from mgas_core.model import EvalNetwork, build_eval_network, count_architecture_params

EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]
"""``callback(record, state_fn)`` after every epoch; ``state_fn()`` builds the resumable state."""
StartCallback = Callable[[], None]
"""``callback()`` once the model is built and any saved state loaded, before the first epoch:
everything that can be refused has been checked, so a caller writes its outputs from here on."""


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


def _load_saved(load: Callable[[], object]) -> None:
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


@dataclass
class SearchResult:
    arch: Architecture
    val_acc: float
    search_time_s: float
    peak_mem_mb: float
    """The search's memory peak (:meth:`PeakMemory.run_peak_mb`: CUDA allocator peak, or CPU RSS
    above the start of the search); ``peak_mem_kind`` says which."""
    history: list[dict[str, Any]]
    events: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    method: SearchMethod | None = None
    peak_mem_kind: str = ""
    candidates: list[RetrainCandidate] = field(default_factory=list)
    """What the search yields for retraining, the final architecture (``arch``) last."""


def run_search(
    settings: RunSettings,
    splits: Splits,
    device: torch.device,
    state: dict[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
    on_start: StartCallback | None = None,
) -> SearchResult:
    """Run (or resume) the search of ``settings.search.method`` on ``splits``."""
    seed_everything(settings.seed)
    method = create_method(settings.search, splits.info, device, settings.seed)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    watch = Stopwatch()
    peak_before = 0.0  # the peak of the part of the search that ran before a resume
    if state is not None:
        _load_saved(lambda: method.load_state_dict(state["method"]))
        _load_saved(lambda: set_rng_state(state["rng"]))
        history = list(state["history"])
        start_epoch = int(state["next_epoch"])
        watch = Stopwatch(float(state["elapsed"]))
        peak_before = float(state.get("peak_mem_mb", 0.0))
    memory = PeakMemory(device)  # model, optimisers and data are loaded: the first step is next
    if on_start is not None:
        on_start()
    if method.bilevel:
        weight_data, arch_data = split_in_half(splits.train)
    else:
        weight_data, arch_data = splits.train, None
    batch, seed = settings.search.batch_size, settings.seed
    workers = settings.data.workers
    epoch = start_epoch
    while epoch < method.max_epochs and not method.finished:
        with watch:
            method.begin_epoch(epoch)
            stats: list[dict[str, float]] = []
            arch_iter = (iter(epoch_batches(arch_data, batch, True, seed, epoch, stream=1, workers=workers))
                         if arch_data is not None else None)
            for b in epoch_batches(weight_data, batch, True, seed, epoch, stream=0, workers=workers):
                arch_batch = next(arch_iter, None) if arch_iter is not None else None
                if arch_iter is not None and arch_batch is None:
                    break
                stats.append(method.train_step(b, arch_batch))
                check_finite(stats[-1]["loss"], epoch)
                if method.finished:
                    break
        # the epoch's model is judged before end-of-epoch changes (pruning, a new stage's head)
        val_acc = evaluate(lambda t: method.predict(t.contiguous(memory_format=method.memory_format)),
                           method.model, splits.val, batch, device, workers)
        with watch:
            events = method.end_of_epoch(epoch)
        record = {
            "phase": "search",
            "epoch": epoch,
            "loss": float(np.mean([s["loss"] for s in stats])) if stats else float("nan"),
            "train_acc": float(np.mean([s["acc"] for s in stats])) if stats else float("nan"),
            "val_acc": val_acc,
            "time_s": watch.elapsed,
            "events": events,
            "max_epochs": method.max_epochs,
            **method.log_metrics(),
        }
        history.append(record)
        epoch += 1
        if on_epoch is not None:
            next_epoch, hist, elapsed = epoch, list(history), watch.elapsed

            def state_fn(next_epoch: int = next_epoch, hist: list = hist, elapsed: float = elapsed) -> dict[str, Any]:
                return {"method": method.state_dict(), "rng": rng_state(), "history": hist,
                        "next_epoch": next_epoch, "elapsed": elapsed,
                        "peak_mem_mb": max(peak_before, memory.run_peak_mb())}

            on_epoch(record, state_fn)
    candidates = method.architectures_to_retrain()
    for candidate in candidates:
        candidate.arch.meta.update({"method": method.name, "seed": settings.seed, "dataset": splits.info.name})
    return SearchResult(
        arch=candidates[-1].arch,
        val_acc=history[-1]["val_acc"] if history else float("nan"),
        search_time_s=watch.elapsed,
        peak_mem_mb=max(peak_before, memory.run_peak_mb()),
        peak_mem_kind=memory.kind,
        history=history,
        events=list(method.events),
        summary=method.summary(),
        method=method,
        candidates=candidates,
    )


# --- retraining ---------------------------------------------------------------------------------


def width_for_target(arch: Architecture, target_m: float, layers: int, num_classes: int, in_channels: int,
                     variant: str) -> int:
    """The even width C whose network (auxiliary head excluded) is closest to ``target_m`` M params.

    Parameter count grows monotonically with C, so a binary search over even C finds the first
    width at or above the target; the closer of it and the next smaller width wins.
    """
    def params(c: int) -> int:
        return count_architecture_params(arch, num_classes, in_channels, variant, channels=c, layers=layers).dense

    target = target_m * 1e6
    lo, hi = 1, MAX_CHANNELS // 2  # in units of 2 channels
    widest = params(2 * hi)
    if widest < target:
        raise UserInputError(f"retrain.target_params={target_m:g} M cannot be reached: {arch.name} at "
                             f"{layers} cells has {widest / 1e6:.4g} M params even at C={2 * hi}")
    while lo < hi:
        mid = (lo + hi) // 2
        if params(2 * mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = 2 * lo
    if lo > 1 and abs(params(best - 2) - target) < abs(params(best) - target):
        best -= 2
    return best


@dataclass
class RetrainResult:
    val_acc: float
    test_acc: float
    params: ParamCount
    flops: int
    channels: int
    layers: int
    retrain_time_s: float
    peak_mem_mb: float
    history: list[dict[str, Any]]
    peak_mem_kind: str = ""


def retrain_shape(arch: Architecture, cfg: RetrainSettings, info: DatasetInfo) -> tuple[int, int]:
    """(channels, layers) of the network retrained for ``arch`` under ``cfg``."""
    if not arch.is_genotype:
        assert arch.channels is not None and arch.cells is not None
        return arch.channels, len(arch.cells)
    layers = cfg.layers if cfg.layers is not None else (arch.layers or 20)
    if cfg.target_params is not None:
        width = width_for_target(arch, cfg.target_params, layers, info.num_classes, info.in_channels, info.variant)
        return width, layers
    channels = cfg.channels if cfg.channels is not None else (arch.channels or 36)
    return channels, layers


def build_retrain_network(arch: Architecture, cfg: RetrainSettings, splits: Splits) -> EvalNetwork:
    info = splits.info
    channels, layers = retrain_shape(arch, cfg, info)
    return build_eval_network(arch, info.num_classes, info.in_channels, channels, layers, cfg.auxiliary, info.variant)


def run_retrain(
    arch: Architecture,
    settings: RunSettings,
    splits: Splits,
    device: torch.device,
    state: dict[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
    on_start: StartCallback | None = None,
) -> RetrainResult:
    """Train ``arch`` from scratch; select the epoch with the best val accuracy; report its test."""
    cfg = settings.retrain
    check_compile(cfg.compile, cfg.compile_backend, device)
    seed_everything(settings.seed + 1)
    layout = torch.contiguous_format if cfg.memory_format == "contiguous" else torch.channels_last
    model = build_retrain_network(arch, cfg, splits).to(device, memory_format=layout)
    channels, layers = model.channels, model.layers
    params = count_params(model)
    flops = count_flops(model, splits.info.input_shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    forward = compiled_forward(model, cfg.compile, cfg.compile_backend)  # saved and loaded: ``model``
    memory = PeakMemory(device)
    history: list[dict[str, Any]] = []
    best_val, best_state = -1.0, None
    start_epoch, watch = 0, Stopwatch()
    if state is not None:
        _load_saved(lambda: model.load_state_dict(state["model"]))
        _load_saved(lambda: optimizer.load_state_dict(state["optimizer"]))
        _load_saved(lambda: set_rng_state(state["rng"]))
        history, start_epoch = list(state["history"]), int(state["next_epoch"])
        best_val, best_state = float(state["best_val"]), state["best_state"]
        watch = Stopwatch(float(state["elapsed"]))
    if on_start is not None:
        on_start()
    train_data = splits.train_augmented if splits.train_augmented is not None else splits.train
    workers = settings.data.workers
    for epoch in range(start_epoch, cfg.epochs):
        with watch:
            set_lr(optimizer, cosine_lr(cfg.lr, cfg.lr_min, epoch, cfg.epochs))
            model.drop_path_prob = cfg.drop_path * epoch / cfg.epochs
            model.train()
            losses, correct, seen = [], 0, 0
            batches = epoch_batches(train_data, cfg.batch_size, True, settings.seed, epoch, stream=2, workers=workers)
            for x, y in batches:
                x, y = x.to(device, memory_format=layout), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                logits, logits_aux = forward(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if logits_aux is not None and cfg.aux_weight > 0:
                    loss = loss + cfg.aux_weight * F.cross_entropy(logits_aux, y, label_smoothing=cfg.label_smoothing)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                check_finite(losses[-1], epoch)
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(y)
        val_acc = evaluate(lambda t: forward(t.contiguous(memory_format=layout))[0], model, splits.val,
                           cfg.batch_size, device, workers)
        if val_acc > best_val:
            best_val = val_acc
            best_state = copy.deepcopy(model.state_dict())
        record = {"phase": "retrain", "epoch": epoch, "loss": float(np.mean(losses)),
                  "train_acc": correct / max(1, seen), "val_acc": val_acc, "time_s": watch.elapsed,
                  "lr": optimizer.param_groups[0]["lr"]}
        history.append(record)
        if on_epoch is not None:
            snapshot = (epoch + 1, list(history), best_val, best_state, watch.elapsed)

            def state_fn(snapshot: tuple = snapshot) -> dict[str, Any]:
                nxt, hist, bv, bs, elapsed = snapshot
                return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                        "history": hist, "next_epoch": nxt, "best_val": bv, "best_state": bs, "elapsed": elapsed}

            on_epoch(record, state_fn)
    if best_state is not None:
        model.load_state_dict(best_state)
    test_acc = evaluate(lambda t: forward(t.contiguous(memory_format=layout))[0], model, splits.test,
                        cfg.batch_size, device, workers)
    return RetrainResult(best_val, test_acc, params, flops, channels, layers, watch.elapsed, memory.run_peak_mb(),
                         history, memory.kind)
