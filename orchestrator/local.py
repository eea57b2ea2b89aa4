"""Single-process runs behind ``mgas info``, ``mgas search`` and ``mgas train`` (no Ray needed)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import torch

from mgas_common.errors import UserInputError
from mgas_common.user_files import check_output_dir
from mgas_core.data import DatasetInfo, load_splits, resolve_data_settings
from mgas_core.engine.determinism import torch_determinism
from mgas_core.engine.provenance import provenance
from mgas_core.engine.retrain import RetrainResult, retrain_shape, run_retrain
from mgas_core.engine.runtime import StateMismatchError, check_device, resolve_device
from mgas_core.engine.search import SearchResult, run_search
from mgas_core.engine.search_state import check_search_checkpoint, checkpoint_payload
from mgas_core.evaluation_network import build_eval_network, check_weight_masks, masked_count
from mgas_core.files.atomic import atomic_write_text
from mgas_core.files.checkpoints import PREVIOUS_SUFFIX, load_first_good, save_checkpoint_keeping_previous
from mgas_core.latency.measure import measure_latency
from mgas_core.methods.registry import search_augment_for
from mgas_core.metrics import count_flops, count_params
from mgas_core.settings.run import RunSettings
from mgas_core.settings.strict import MAX_CHANNELS, MAX_LAYERS
from mgas_core.space.architecture import Architecture
from orchestrator.latency_cluster import with_local_predictors

CHECKPOINT = "checkpoint.pt"


class EpochProgress:
    """A one-line progress bar per epoch on stderr (redrawn in place on a terminal)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, record: dict[str, Any]) -> None:
        done = record["epoch"] + 1
        self.total = int(record.get("max_epochs", self.total))  # MGAS: phases end early
        filled = min(self.width, round(self.width * done / max(1, self.total)))
        bar = "#" * filled + "." * (self.width - filled)
        extra = "".join(f" {k} {record[k]:.3g}" for k in ("lambda", "tau", "params_m") if record.get(k) is not None)
        if record.get("search_phase"):
            extra += f" [{record['search_phase']}]"
        line = (f"{self.label} [{bar}] epoch {done}/{self.total} loss {record['loss']:.3f} "
                f"val {record['val_acc']:.3f}{extra} {record['time_s']:.0f}s")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _prepare(settings: RunSettings) -> RunSettings:
    """Threads, and the data settings resolved on this machine (root, loader workers)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    settings = settings.model_copy(deep=True)
    settings.data = resolve_data_settings(settings.data, settings.threads, Path.cwd())
    return settings


def write_run_config(out_dir: Path, settings: RunSettings, command: str) -> None:
    data = {"command": command, "settings": settings.model_dump(mode="json"), **provenance()}
    atomic_write_text(out_dir / "config.json", json.dumps(data, indent=1) + "\n")


def derived_size(arch: Architecture, settings: RunSettings, info: DatasetInfo) -> dict[str, Any]:
    """Dense and nonzero params of the network ``mgas train`` would build for ``arch``."""
    channels, layers = retrain_shape(arch, settings.retrain, info)
    # meta tensors make counting free; fixed weight masks need real values to be counted
    with torch.device("cpu" if arch.masks else "meta"):
        net = build_eval_network(arch, info.num_classes, info.in_channels, channels, layers,
                                 auxiliary=False, variant=info.variant)
    count = count_params(net)
    return {"params": count.dense, "nonzero_params": count.nonzero, "params_m": count.dense_m,
            "nonzero_params_m": count.nonzero_m, "channels": channels, "layers": layers}


def derived_latency(arch: Architecture, settings: RunSettings, info: DatasetInfo,
                    device: torch.device) -> dict[str, Any]:
    """The measured latency of the network ``mgas train`` would build for ``arch`` (untrained
    weights: the time does not depend on their values), on this device with this process's
    threads (``retrain.latency_batch``, ``retrain.latency_runs``; none when the runs are 0)."""
    cfg = settings.retrain
    if not cfg.latency_runs:
        return {}
    channels, layers = retrain_shape(arch, cfg, info)
    torch.manual_seed(0)
    net = build_eval_network(arch, info.num_classes, info.in_channels, channels, layers, auxiliary=False,
                             variant=info.variant).to(device)
    measured = measure_latency(net, info.input_shape, cfg.latency_batch, device, torch.get_num_threads(),
                               runs=cfg.latency_runs)
    return measured.row_fields()


def _resume_state(ckpt: Path, settings: RunSettings) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest good search checkpoint (``checkpoint.pt``, else ``checkpoint.pt.prev``) of a
    search with these settings, and the lines to print once the search really starts: what was
    damaged, which file it resumes from and at which epoch. A checkpoint that is whole but does
    not belong to this search is refused."""
    previous = ckpt.with_name(ckpt.name + PREVIOUS_SUFFIX)
    loaded, used, problems = load_first_good([ckpt, previous])
    notes = [f"warning: damaged checkpoint skipped: {problem}" for problem in problems]
    if loaded is None or used is None:
        reason = "no good checkpoint left" if problems else f"no checkpoint in {ckpt.parent}"
        return None, [*notes, f"warning: {reason}; the search starts from epoch 0"]
    try:
        state = check_search_checkpoint(loaded, settings)
    except UserInputError as exc:
        raise UserInputError(f"checkpoint {used}: {exc}") from None
    notes.append(f"resuming from {used}{' (the previous good checkpoint)' if problems else ''}: "
                 f"{state['next_epoch']} of {settings.search.epochs} epochs done")
    state["source"] = str(used)
    return state, notes


def search_command(settings: RunSettings, out_dir: Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run a search into ``out_dir``: arch JSON (+ masks), config, metrics.jsonl, checkpoint, summary.

    Everything that can be refused (the folder, the device, the data, the checkpoint and whether
    it fits the model) is checked before the first file is written."""
    check_output_dir(out_dir, "--out")
    settings = with_local_predictors(_prepare(settings), Path.cwd())
    device = resolve_device(settings.device)
    check_device(settings, device)
    splits = load_splits(settings.data, search_augment=search_augment_for(settings.search))
    ckpt = out_dir / CHECKPOINT
    state, notes = _resume_state(ckpt, settings) if resume else (None, [])
    bar = EpochProgress(settings.search.epochs, f"search {settings.search.method}") if progress else None
    metrics_path = out_dir / "metrics.jsonl"

    def on_start() -> None:
        for note in notes:
            print(note, file=sys.stderr)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(out_dir, settings, "search")
        # exactly one row per epoch done: the resumed checkpoint's history, nothing after it
        done = state["history"] if state is not None else []
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in done))

    def on_epoch(record: dict[str, Any], state_fn: Any) -> None:
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        save_checkpoint_keeping_previous(checkpoint_payload(settings, state_fn()), ckpt)
        if bar is not None:
            bar(record)

    try:
        with torch_determinism(settings.deterministic):
            result = run_search(settings, splits, device, state=state, on_epoch=on_epoch, on_start=on_start)
    except StateMismatchError as exc:
        raise UserInputError(f"checkpoint {state['source'] if state else ckpt}: {exc}") from None
    return write_search_outputs(result, settings, splits.info, out_dir, device)


def write_search_outputs(result: SearchResult, settings: RunSettings, info: DatasetInfo, out_dir: Path,
                         device: torch.device) -> dict[str, Any]:
    arch_path = result.arch.save(out_dir / "arch.json")
    summary: dict[str, Any] = {
        "method": settings.search.method,
        "dataset": info.name,
        "seed": settings.seed,
        "arch_path": str(arch_path),
        "val_acc": result.val_acc,
        "search_time_s": result.search_time_s,
        "peak_mem_mb": result.peak_mem_mb,
        "peak_mem_kind": result.peak_mem_kind,
        "device": str(device),
        "epochs_run": len(result.history),
        **derived_size(result.arch, settings, info),
        **derived_latency(result.arch, settings, info, device),
        **result.summary,
        "events": result.events,
    }
    for snap in summary.get("snapshots", []):
        if "arch" in snap:
            snap_arch = snap.pop("arch")
            snap["arch_path"] = str(snap_arch.save(out_dir / "snapshots" / f"snapshot_{snap['index']:02d}.json"))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def train_command(arch: Architecture, settings: RunSettings, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    check_output_dir(out_dir, "--out")
    settings = _prepare(settings)
    device = resolve_device(settings.device)
    splits = load_splits(settings.data, cutout=settings.retrain.cutout)
    bar = EpochProgress(settings.retrain.epochs, f"train {arch.name}") if progress else None
    metrics_path = out_dir / "metrics.jsonl"

    def on_start() -> None:  # the network is built: the architecture fits; now write
        out_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(out_dir, settings, "train")
        atomic_write_text(metrics_path, "")

    def on_epoch(record: dict[str, Any], state_fn: Any) -> None:
        del state_fn
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if bar is not None:
            bar(record)

    with torch_determinism(settings.deterministic):
        result: RetrainResult = run_retrain(arch, settings, splits, device, on_epoch=on_epoch, on_start=on_start)
    summary = {
        "arch": arch.name,
        "dataset": splits.info.name,
        "seed": settings.seed,
        "val_acc": result.val_acc,
        "test_acc": result.test_acc,
        "params": result.params.dense,
        "nonzero_params": result.params.nonzero,
        "params_m": result.params.dense_m,
        "flops": result.flops,
        "flops_m": result.flops / 1e6,
        "channels": result.channels,
        "layers": result.layers,
        "retrain_time_s": result.retrain_time_s,
        "peak_mem_mb": result.peak_mem_mb,
        "peak_mem_kind": result.peak_mem_kind,
        "device": str(device),
        **(result.latency.row_fields() if result.latency else {}),
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def eval_shape(arch: Architecture, info: DatasetInfo, channels: int | None,
               layers: int | None) -> tuple[int, int]:
    """(channels, layers) ``mgas info`` counts: a genotype at the given, else its recorded (an
    imported one), else the paper's width and depth; a per-cell architecture only at its own."""
    if arch.is_genotype:
        channels = channels if channels is not None else (arch.channels or (48 if info.variant == "imagenet" else 36))
        layers = layers if layers is not None else (arch.layers or (14 if info.variant == "imagenet" else 20))
    else:
        assert arch.channels is not None and arch.cells is not None
        for flag, given, own in (("--channels", channels, arch.channels), ("--layers", layers, len(arch.cells))):
            if given is not None and given != own:
                raise UserInputError(f"{flag} {given}: architecture {arch.name!r} was derived with {own}; "
                                     f"it can only be counted at {flag} {own}")
        channels, layers = arch.channels, len(arch.cells)
    if not (2 <= channels <= MAX_CHANNELS and channels % 2 == 0):
        raise UserInputError(f"--channels must be an even number between 2 and {MAX_CHANNELS} (got {channels})")
    if not 1 <= layers <= MAX_LAYERS:
        raise UserInputError(f"--layers must be between 1 and {MAX_LAYERS} (got {layers})")
    return channels, layers


def info_command(arch: Architecture, info: DatasetInfo, channels: int | None, layers: int | None) -> dict[str, Any]:
    """Parameters and FLOPs of the evaluation network, counted on the meta device (no weight is
    allocated, so any width the settings allow is counted in about a second)."""
    channels, layers = eval_shape(arch, info, channels, layers)
    with torch.device("meta"):
        model = build_eval_network(replace(arch, masks=None), info.num_classes, info.in_channels, channels, layers,
                                   auxiliary=True, variant=info.variant)
    if arch.masks:
        check_weight_masks(model, arch.masks)
    count = masked_count(model, arch.masks)
    flops = count_flops(model, info.input_shape)
    return {
        "arch": arch.name,
        "dataset": info.name,
        "channels": model.channels,
        "layers": model.layers,
        "params": count.dense,
        "params_m": round(count.dense_m, 6),
        "nonzero_params": count.nonzero,
        "nonzero_params_m": round(count.nonzero_m, 6),
        "flops": flops,
        "flops_m": round(flops / 1e6, 3),
    }
