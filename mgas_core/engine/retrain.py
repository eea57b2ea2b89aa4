"""The retraining loop: a found architecture trained from scratch as its evaluation network,
val-selected epoch, then test accuracy; resumable like the search (:mod:`mgas_core.engine.search`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mgas_common.errors import UserInputError
from mgas_core.data import DatasetInfo, Splits, epoch_batches
from mgas_core.engine.compiled import check_compile, compiled_forward
from mgas_core.engine.runtime import check_finite, evaluate, load_saved, rng_state, seed_everything, set_rng_state
from mgas_core.engine.search import EpochCallback, StartCallback
from mgas_core.evaluation_network import build_eval_network, count_architecture_params
from mgas_core.latency.measure import LatencyMeasurement, measure_latency
from mgas_core.methods.protocol import cosine_lr, set_lr
from mgas_core.metrics import ParamCount, PeakMemory, Stopwatch, count_flops, count_params
from mgas_core.settings.run import RetrainSettings, RunSettings
from mgas_core.settings.strict import MAX_CHANNELS
from mgas_core.space.architecture import Architecture


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
    latency: LatencyMeasurement | None = None  # of the retrained network on its own device


def retrain_shape(arch: Architecture, cfg: RetrainSettings, info: DatasetInfo) -> tuple[int, int]:
    """(channels, layers) of the network retrained for ``arch`` under ``cfg``: a per-cell
    architecture's own depth and width (a width-free one, H-DAS's, at ``retrain.channels``); a
    stage-level architecture's own depth (``retrain.layers`` does not apply)."""
    if not arch.is_genotype:
        assert arch.cells is not None
        if arch.channels is not None:
            return arch.channels, len(arch.cells)
        return cfg.channels if cfg.channels is not None else 36, len(arch.cells)
    if arch.stages is not None:
        layers = arch.layers or 0
    else:
        layers = cfg.layers if cfg.layers is not None else (arch.layers or 20)
    if cfg.target_params is not None:
        width = width_for_target(arch, cfg.target_params, layers, info.num_classes, info.in_channels, info.variant)
        return width, layers
    channels = cfg.channels if cfg.channels is not None else (arch.channels or 36)
    return channels, layers


def build_retrain_network(arch: Architecture, cfg: RetrainSettings, splits: Splits) -> nn.Module:
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
        load_saved(lambda: model.load_state_dict(state["model"]))
        load_saved(lambda: optimizer.load_state_dict(state["optimizer"]))
        load_saved(lambda: set_rng_state(state["rng"]))
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
    peak = memory.run_peak_mb()
    latency = None
    if cfg.latency_runs:  # the process's own threads: what the trial was given
        latency = measure_latency(model, splits.info.input_shape, cfg.latency_batch, device, torch.get_num_threads(),
                                  runs=cfg.latency_runs, memory_format=layout)
    return RetrainResult(best_val, test_acc, params, flops, channels, layers, watch.elapsed, peak, history,
                         memory.kind, latency)
