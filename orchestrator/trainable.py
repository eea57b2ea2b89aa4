"""The trial pipeline (search -> derive -> retrain -> test) and its Ray Tune function trainable.

:func:`run_trial_pipeline` knows nothing about Ray: it reports after every epoch through a
callback that receives the epoch's metrics and the full resumable state. :func:`tune_trainable`
plugs it into Tune: ``tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))`` every
epoch and ``tune.get_checkpoint()`` on (re)start, so a killed worker resumes from its last epoch
and ends bitwise identical to an undisturbed run (same seed, same machine, same thread count).
Nothing from ``ray.train`` is used inside a trial.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mgas_core.arch import Architecture, architecture_from_json
from mgas_core.config import RunSettings
from mgas_core.data import load_splits
from mgas_core.errors import UserInputError
from mgas_core.io import CorruptFileError, load_checkpoint, save_checkpoint
from mgas_core.methods.base import get_method, result_values
from mgas_core.provenance import provenance
from mgas_core.train import DivergedError, resolve_device, run_retrain, run_search

STATE_FILE = "trial_state.pt"
Report = Callable[[dict[str, Any], dict[str, Any]], None]


class TrialFailed(Exception):
    """A trial that must not be retried (divergence, out of memory): recorded as failed."""


def _arch_state(arch: Architecture) -> dict[str, Any]:
    return {"json": json.dumps(arch.to_json()), "masks": dict(arch.masks or {})}


def _arch_from_state(state: dict[str, Any]) -> Architecture:
    arch = architecture_from_json(json.loads(state["json"]))
    arch.masks = dict(state["masks"]) or None
    return arch


def _flat_metrics(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if isinstance(v, int | float | str | bool) and k != "events"}
    out["events_json"] = json.dumps(record.get("events", []), default=str)
    return out


def _placement() -> dict[str, Any]:
    """Where this trial runs (node, GPUs); empty outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return {}
        ctx = ray.get_runtime_context()
        gpus = ctx.get_accelerator_ids().get("GPU", [])
        return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "gpu_ids": ",".join(gpus)}
    except Exception:  # placement is informational; never fail a trial over it
        return {}


def _oom_message(exc: BaseException, settings: RunSettings, phase: str) -> str:
    batch = settings.search.batch_size if phase == "search" else settings.retrain.batch_size
    key = "search.batch_size" if phase == "search" else "retrain.batch_size"
    return (f"out of memory in {phase} at batch size {batch} ({type(exc).__name__}); hint: lower {key} "
            f"or give each trial more memory (resources.gpu / fewer concurrent trials)")


def run_trial_pipeline(trial: dict[str, Any], state: dict[str, Any] | None, report: Report) -> dict[str, Any]:
    """Run (or resume) one trial; returns the final metrics (the Parquet row's fields)."""
    # a method registered outside mgas_core (a plugin, a test) is imported where it was defined
    get_method(trial["settings"]["search"]["method"], trial.get("method_module"))
    settings = RunSettings.model_validate(trial["settings"])
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    state = dict(state or {"phase": "search", "attempt": 0})
    state["attempt"] = int(state.get("attempt", 0)) + 1
    splits = load_splits(settings.data, cutout=settings.retrain.cutout)
    phase = state["phase"]
    try:
        if phase == "search":
            def on_search_epoch(record: dict[str, Any], state_fn: Callable[[], dict[str, Any]]) -> None:
                report(_flat_metrics(record), {**state, "search": state_fn()})

            result = run_search(settings, splits, device, state=state.get("search"), on_epoch=on_search_epoch)
            snapshots = result.summary.pop("snapshots", [])
            state.update({
                "phase": "retrain", "search": None, "arch": _arch_state(result.arch),
                "search_summary": {
                    "val_acc": result.val_acc, "search_time_s": result.search_time_s,
                    "peak_mem_mb": result.peak_mem_mb, "epochs": len(result.history),
                    "events": result.events, "history": result.history,
                    "snapshots": [{k: (v.to_json() if isinstance(v, Architecture) else v) for k, v in s.items()}
                                  for s in snapshots],
                    **{k: v for k, v in result.summary.items()},
                },
            })
            phase = "retrain"
        arch = _arch_from_state(state["arch"])
        summary = state["search_summary"]

        def on_retrain_epoch(record: dict[str, Any], state_fn: Callable[[], dict[str, Any]]) -> None:
            report(_flat_metrics(record), {**state, "retrain": state_fn()})

        retrained = run_retrain(arch, settings, splits, device, state=state.get("retrain"), on_epoch=on_retrain_epoch)
    except DivergedError as exc:
        raise TrialFailed(str(exc)) from exc
    except UserInputError as exc:  # settings this trial's method or data refuse: retrying cannot help
        raise TrialFailed(str(exc)) from exc
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise TrialFailed(_oom_message(exc, settings, phase)) from exc
    ratios = summary.get("remaining_ratio", {})
    final = {
        "status": "ok", "error": None,
        "test_acc": retrained.test_acc, "val_acc": retrained.val_acc, "search_val_acc": summary["val_acc"],
        "params_m": retrained.params.dense_m, "nonzero_params_m": retrained.params.nonzero_m,
        "flops_m": retrained.flops / 1e6, "channels": retrained.channels, "layers": retrained.layers,
        "supernet_params_m": summary["supernet_params"] / 1e6 if "supernet_params" in summary else None,
        "remaining_ratio_op": ratios.get("op"), "remaining_ratio_filter": ratios.get("filter"),
        "remaining_ratio_weight": ratios.get("weight"),
        "search_epochs": summary["epochs"], "search_time_s": summary["search_time_s"],
        "retrain_time_s": retrained.retrain_time_s, "search_peak_mem_mb": summary["peak_mem_mb"],
        "retrain_peak_mem_mb": retrained.peak_mem_mb, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "attempts": state["attempt"], "arch_json": json.dumps(arch.to_json()),
        "events_json": json.dumps(summary["events"] + [{"type": "recovery", "detail": note}
                                                        for note in state.get("recovery", [])], default=str),
        "snapshots_json": json.dumps(summary["snapshots"], default=str),
        "history_json": json.dumps(summary["history"] + retrained.history, default=str),
    }
    return final


def trial_row(experiment: str, trial: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The Parquet row of a finished or failed trial."""
    settings = trial["settings"]
    axes = trial["axes"]
    search = settings["search"]
    method = search["method"]
    prov = provenance()
    row = {
        "experiment": experiment, "trial_id": trial["trial_id"], "method": method,
        "dataset": settings["data"]["name"], "seed": settings["seed"],
        "target_params_m": search.get("target_params"),
        **result_values(settings),
        "config_json": json.dumps(settings), "axes_json": json.dumps(axes, default=str),
        "git_sha": prov["git_sha"], "versions": json.dumps(prov["versions"]),
    }
    keep = {k: v for k, v in metrics.items() if k != "history_json"}
    row.update({k: v for k, v in keep.items() if k in _ROW_FIELDS})
    return row


_ROW_FIELDS = {
    "status", "error", "test_acc", "val_acc", "search_val_acc", "params_m", "nonzero_params_m", "flops_m",
    "supernet_params_m", "channels", "layers", "remaining_ratio_op", "remaining_ratio_filter",
    "remaining_ratio_weight", "search_epochs", "search_time_s", "retrain_time_s", "search_peak_mem_mb",
    "retrain_peak_mem_mb", "device", "device_name", "node_id", "node_ip", "gpu_ids", "attempts",
    "events_json", "snapshots_json", "arch_json", "started_at", "wall_time_s",
}


def _write_state_dir(directory: Path, state: dict[str, Any]) -> None:
    save_checkpoint(state, directory / STATE_FILE)
    arch = state.get("arch")
    if arch:
        # the JSON names its mask file, so `mgas train --arch .../arch.json` retrains with the masks
        _arch_from_state(arch).save(directory / "arch.json")


def restore_trial_state(checkpoint: Any) -> dict[str, Any] | None:
    """The state of Tune's newest checkpoint; if it is damaged (checksum or load failure), the
    newest good older one that Tune kept beside it (``num_to_keep=2``); if none, ``None`` (the
    trial restarts). What happened is printed and kept in the state's ``recovery`` list, which
    ends up in the trial's ``events_json``."""
    candidates = [Path(checkpoint.path)]
    parent = candidates[0].parent
    if parent.is_dir():
        older = sorted((p for p in parent.glob("checkpoint_*") if p.is_dir() and p != candidates[0]), reverse=True)
        candidates += older
    problems: list[str] = []
    for i, candidate in enumerate(candidates):
        try:
            if i == 0:
                with checkpoint.as_directory() as d:
                    state = load_checkpoint(Path(d) / STATE_FILE)
            else:
                state = load_checkpoint(candidate / STATE_FILE)
        except (CorruptFileError, OSError) as exc:
            problems.append(str(exc))
            continue
        if problems:
            note = f"damaged checkpoint ({'; '.join(problems)}); resumed from {candidate.name}"
            print(f"mgas trial: {note}", file=sys.stderr)
            state["recovery"] = [*state.get("recovery", []), note]
        return state
    note = f"damaged checkpoint ({'; '.join(problems)}); no good checkpoint left, restarting the trial"
    print(f"mgas trial: {note}", file=sys.stderr)
    return {"phase": "search", "attempt": 0, "recovery": [note]}


def tune_trainable(config: dict[str, Any]) -> None:
    """The function trainable: restore from ``tune.get_checkpoint()``, report every epoch."""
    from ray import tune

    trial = config["trial"]
    checkpoint = tune.get_checkpoint()
    state = restore_trial_state(checkpoint) if checkpoint is not None else None
    placement = _placement()

    def report(metrics: dict[str, Any], full_state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="mgas-ckpt-") as d:
            _write_state_dir(Path(d), full_state)
            tune.report({**metrics, "trial_id": trial["trial_id"], "done_trial": False},
                        checkpoint=tune.Checkpoint.from_directory(d))

    started = time.time()
    try:
        final = run_trial_pipeline(trial, state, report)
    except TrialFailed as exc:
        final = {"status": "failed", "error": str(exc)}
    final.update(placement)
    final["started_at"] = started
    final["wall_time_s"] = time.time() - started
    tune.report({**final, "trial_id": trial["trial_id"], "done_trial": True})
