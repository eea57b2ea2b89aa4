"""The shared search loop: every method plugs into it (:mod:`mgas_core.methods.protocol`).

The loop is epoch-based and resumable: the caller receives, after every epoch, the epoch's record
and a function producing the full state (model, optimisers, controller, RNG states, history,
elapsed time); passing that state back as ``state=`` continues bitwise identically on the same
machine. Data order depends only on (seed, epoch), never on how many times the process was
restarted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mgas_core.data import Splits, epoch_batches, split_in_half
from mgas_core.engine.runtime import check_finite, evaluate, load_saved, rng_state, seed_everything, set_rng_state
from mgas_core.methods.protocol import RetrainCandidate, SearchMethod
from mgas_core.methods.registry import create_method
from mgas_core.metrics import PeakMemory, Stopwatch
from mgas_core.settings.run import RunSettings
from mgas_core.space.architecture import Architecture

EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]
"""``callback(record, state_fn)`` after every epoch; ``state_fn()`` builds the resumable state."""
StartCallback = Callable[[], None]
"""``callback()`` once the model is built and any saved state loaded, before the first epoch:
everything that can be refused has been checked, so a caller writes its outputs from here on."""


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
        load_saved(lambda: method.load_state_dict(state["method"]))
        load_saved(lambda: set_rng_state(state["rng"]))
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
