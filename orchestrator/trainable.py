"""The trial pipeline (search -> derive -> retrain -> test) and its Ray Tune function trainable.

:func:`run_trial_pipeline` knows nothing about Ray: after every epoch it calls ``report(metrics,
state_fn)``, where ``state_fn()`` builds the full resumable state only if the caller wants a
checkpoint. :func:`run_trial` adds one retry after a ``torch.OutOfMemoryError`` (a neighbour's
spike on a shared GPU), from the last checkpoint, recorded in the row's events.
:func:`tune_trainable` plugs it into Tune: ``tune.report(metrics, checkpoint=...)`` at most every
``checkpoint_interval_s`` (so Tune never has to force an experiment sync) and once at the end
with the final metrics, and ``tune.get_checkpoint()`` on (re)start, so a killed worker resumes from
its last checkpoint and ends bitwise identical to an undisturbed run (same seed, same machine,
same thread count). Nothing from ``ray.train`` is used inside a trial.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pyarrow.fs as pafs
import torch

from mgas_common.errors import UserInputError
from mgas_core.data import load_splits, resolve_data_settings
from mgas_core.engine.determinism import torch_determinism
from mgas_core.engine.provenance import git_revision, library_versions
from mgas_core.engine.retrain import RetrainResult, run_retrain
from mgas_core.engine.runtime import DivergedError, check_device, resolve_device
from mgas_core.engine.search import run_search
from mgas_core.files.checkpoints import CorruptFileError, load_checkpoint, load_checkpoint_bytes, save_checkpoint
from mgas_core.latency.measure import LATENCY_FIELDS
from mgas_core.methods.registry import get_method, search_augment_for, validate_settings
from mgas_core.settings.run import RunSettings
from mgas_core.space.architecture import Architecture, architecture_from_json
from orchestrator.collect import STATE_FILE
from orchestrator.latency_cluster import with_local_predictors

ARCH_STATE_KEY = "_arch_state"  # in the pipeline's final metrics: the architecture with its masks (not reported)
StateFn = Callable[[], dict[str, Any]]
Report = Callable[[dict[str, Any], StateFn], None]


class TrialFailed(Exception):
    """A trial that must not be retried (divergence, out of memory): recorded as failed."""


class TrialOutOfMemory(TrialFailed):
    """Out of memory; ``retryable`` for ``torch.OutOfMemoryError`` (device memory taken by a neighbour)."""

    def __init__(self, message: str, retryable: bool, phase: str) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.phase = phase


class Reporter(Protocol):
    def __call__(self, metrics: dict[str, Any], state_fn: StateFn) -> None: ...

    def last_state(self) -> dict[str, Any] | None: ...


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
    """Where this trial runs (node, GPUs, CPUs); empty outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return {}
        ctx = ray.get_runtime_context()
        gpus = ctx.get_accelerator_ids().get("GPU", [])
        cpus = ctx.get_assigned_resources().get("CPU")
        return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "gpu_ids": ",".join(gpus),
                "cpus": cpus}
    except Exception:  # placement is informational; never fail a trial over it
        return {}


def _oom_message(exc: BaseException, settings: RunSettings, phase: str) -> str:
    batch = settings.search.batch_size if phase == "search" else settings.retrain.batch_size
    key = "search.batch_size" if phase == "search" else "retrain.batch_size"
    return (f"out of memory in {phase} at batch size {batch} ({type(exc).__name__}); hint: lower {key} "
            f"or give each trial more memory (resources.gpu / fewer concurrent trials)")


def run_trial_pipeline(trial: dict[str, Any], state: dict[str, Any] | None, report: Report,
                       cpus: float | None = None) -> dict[str, Any]:
    """Run (or resume) one trial; returns the final metrics (the Parquet row's fields).
    ``cpus``: the trial's CPU allocation (data loader workers are derived from it)."""
    # a method registered outside mgas_core (a plugin, a test) is imported where it was defined
    get_method(trial["settings"]["search"]["method"], trial.get("method_module"))
    settings = validate_settings(trial["settings"])
    base_dir = Path(os.environ.get("TUNE_ORIG_WORKING_DIR") or os.getcwd())
    settings.data = resolve_data_settings(settings.data, cpus if cpus is not None else settings.threads, base_dir)
    settings = with_local_predictors(settings, base_dir)  # an object store's: copied to this node
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    try:  # before the search: what this node cannot run (a compiler, bf16) fails the trial now
        check_device(settings, device)
    except UserInputError as exc:  # settings this node refuses: retrying cannot help
        raise TrialFailed(str(exc)) from exc
    state = dict(state or {"phase": "search", "attempt": 0})
    state["attempt"] = int(state.get("attempt", 0)) + 1
    with torch_determinism(settings.deterministic):
        return _pipeline(settings, device, state, report)


RETRAINED_FIELDS = ("test_acc", "val_acc", "params_m", "nonzero_params_m", "flops_m", "channels", "layers",
                    "retrain_time_s", "retrain_peak_mem_mb", "arch_json", *LATENCY_FIELDS)
"""The fields of a row that belong to the architecture retrained (one per GOLD-NAS snapshot)."""


def _retrained_fields(retrained: RetrainResult, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "snapshot_index": entry["snapshot_index"], "snapshot_final": entry["final"],
        "snapshot_epoch": entry["search_epoch"],
        "test_acc": retrained.test_acc, "val_acc": retrained.val_acc,
        "params_m": retrained.params.dense_m, "nonzero_params_m": retrained.params.nonzero_m,
        "flops_m": retrained.flops / 1e6, "channels": retrained.channels, "layers": retrained.layers,
        "retrain_time_s": retrained.retrain_time_s, "retrain_peak_mem_mb": retrained.peak_mem_mb,
        "arch_json": entry["arch"]["json"],
        **(retrained.latency.row_fields() if retrained.latency else dict.fromkeys(LATENCY_FIELDS)),
        "history": [{**rec, "snapshot_index": entry["snapshot_index"]} for rec in retrained.history],
    }


def width_target(settings: RunSettings, arch: Architecture, nonzero_m: float) -> dict[str, Any]:
    """``target_reached``/``target_gap`` of a genotype scaled to ``retrain.target_params``: the
    nearest even width lands within ``retrain.target_tolerance`` of the target, or it does not."""
    target = settings.retrain.target_params
    if target is None or not arch.is_genotype:
        return {}
    gap = nonzero_m / target - 1
    return {"target_reached": abs(gap) <= settings.retrain.target_tolerance, "target_gap": gap}


def _pipeline(settings: RunSettings, device: torch.device, state: dict[str, Any], report: Report) -> dict[str, Any]:
    splits = load_splits(settings.data, cutout=settings.retrain.cutout,
                         search_augment=search_augment_for(settings.search))
    phase = state["phase"]
    try:
        if phase == "search":
            def on_search_epoch(record: dict[str, Any], state_fn: Callable[[], dict[str, Any]]) -> None:
                report(_flat_metrics(record), lambda: {**state, "search": state_fn()})

            result = run_search(settings, splits, device, state=state.get("search"), on_epoch=on_search_epoch)
            snapshots = result.summary.pop("snapshots", [])
            state.update({
                "phase": "retrain", "search": None, "arch": _arch_state(result.arch),
                # every architecture the search yields, the final one last; each becomes a row
                "plan": [{"snapshot_index": c.snapshot_index, "final": c.final, "search_epoch": c.search_epoch,
                          "arch": _arch_state(c.arch)} for c in result.candidates],
                "retrained": [],
                "search_summary": {
                    "val_acc": result.val_acc, "search_time_s": result.search_time_s,
                    "peak_mem_mb": result.peak_mem_mb, "peak_mem_kind": result.peak_mem_kind,
                    "epochs": len(result.history), "events": result.events, "history": result.history,
                    "snapshots": [{k: (v.to_json() if isinstance(v, Architecture) else v) for k, v in s.items()}
                                  for s in snapshots],
                    **{k: v for k, v in result.summary.items()},
                },
            })
            phase = "retrain"
        summary = state["search_summary"]
        plan, retrained = state["plan"], state["retrained"]
        while len(retrained) < len(plan):
            entry = plan[len(retrained)]

            def on_retrain_epoch(record: dict[str, Any], state_fn: Callable[[], dict[str, Any]],
                                 entry: dict[str, Any] = entry) -> None:
                report(_flat_metrics({**record, "snapshot_index": entry["snapshot_index"],
                                      "retrain_index": len(retrained), "retrains": len(plan)}),
                       lambda: {**state, "retrained": list(retrained), "retrain": state_fn()})

            done = run_retrain(_arch_from_state(entry["arch"]), settings, splits, device, state=state.get("retrain"),
                               on_epoch=on_retrain_epoch)
            retrained.append(_retrained_fields(done, entry))
            state["retrain"] = None
    except DivergedError as exc:
        raise TrialFailed(str(exc)) from exc
    except UserInputError as exc:  # settings this trial's method or data refuse: retrying cannot help
        raise TrialFailed(str(exc)) from exc
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise TrialOutOfMemory(_oom_message(exc, settings, phase), isinstance(exc, torch.OutOfMemoryError),
                               phase) from exc
    ratios = summary.get("remaining_ratio", {})
    events = (summary["events"] + [{"type": "recovery", "detail": note} for note in state.get("recovery", [])]
              + list(state.get("events", [])))
    final_arch = _arch_from_state(state["arch"])
    main = retrained[-1]
    target = {"target_reached": summary.get("target_reached"), "target_gap": summary.get("target_gap"),
              **width_target(settings, final_arch, main["nonzero_params_m"])}
    snapshot_rows = [{k: v for k, v in r.items() if k != "history"} for r in retrained[:-1]]
    has_series = main["snapshot_index"] is not None
    final = {
        "status": "ok", "error": None, **target,
        **{k: main.get(k) for k in RETRAINED_FIELDS},  # a checkpoint from before a field existed lacks it
        "snapshot_index": main["snapshot_index"], "snapshot_epoch": main["snapshot_epoch"],
        "snapshot_final": True if has_series else None,
        "search_val_acc": summary["val_acc"],
        "supernet_params_m": summary["supernet_params"] / 1e6 if "supernet_params" in summary else None,
        "remaining_ratio_op": ratios.get("op"), "remaining_ratio_filter": ratios.get("filter"),
        "remaining_ratio_weight": ratios.get("weight"),
        "search_epochs": summary["epochs"], "search_time_s": summary["search_time_s"],
        "search_peak_mem_mb": summary["peak_mem_mb"], "search_peak_mem_kind": summary.get("peak_mem_kind"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "attempts": state["attempt"],
        "deterministic": settings.deterministic and torch.are_deterministic_algorithms_enabled(),
        "events_json": json.dumps(events, default=str),
        "snapshots_json": json.dumps(summary["snapshots"], default=str),
        "snapshot_rows_json": json.dumps(snapshot_rows, default=str) if snapshot_rows else None,
        "history_json": json.dumps(summary["history"] + [rec for r in retrained for rec in r["history"]],
                                   default=str),
        ARCH_STATE_KEY: state["arch"],
    }
    return final


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_trial(trial: dict[str, Any], state: dict[str, Any] | None, reporter: Reporter,
              cpus: float | None = None) -> dict[str, Any]:
    """:func:`run_trial_pipeline` with one retry after ``torch.OutOfMemoryError``: the memory is
    released and the trial continues from its last checkpoint (deterministically, so the result
    is the one an undisturbed run gives); the retry is an ``oom_retry`` event of the row. A second
    out-of-memory, or host ``MemoryError``, fails the trial."""
    try:
        return run_trial_pipeline(trial, state, reporter, cpus)
    except TrialOutOfMemory as exc:
        if not exc.retryable:
            raise
        message = str(exc)
    _free_accelerator_memory()
    retry_state = dict(reporter.last_state() or state or {"phase": "search", "attempt": 0})
    retry_state["events"] = [*retry_state.get("events", []),
                             {"type": "oom_retry", "detail": f"{message}; retrying once from the last checkpoint"}]
    print(f"mgas trial {trial['trial_id']}: {message}; retrying once from the last checkpoint", file=sys.stderr)
    try:
        return run_trial_pipeline(trial, retry_state, reporter, cpus)
    except TrialOutOfMemory as again:
        raise TrialFailed(f"{again} (again after one retry)") from again


def _write_state_dir(directory: Path, state: dict[str, Any]) -> None:
    save_checkpoint(state, directory / STATE_FILE)
    arch = state.get("arch")
    if arch:
        # the JSON names its mask file, so `mgas train --arch .../arch.json` retrains with the masks
        _arch_from_state(arch).save(directory / "arch.json")


def _checkpoint_location(checkpoint: Any) -> tuple[pafs.FileSystem, str]:
    fs = getattr(checkpoint, "filesystem", None) or pafs.LocalFileSystem()
    return fs, str(checkpoint.path).rstrip("/")


def _read_state(fs: pafs.FileSystem, directory: str) -> dict[str, Any]:
    path = posixpath.join(directory, STATE_FILE)
    try:
        with fs.open_input_stream(path) as stream:
            data = stream.read()
    except (OSError, FileNotFoundError) as exc:
        raise CorruptFileError(f"{path}: cannot be read ({exc})") from exc
    return load_checkpoint_bytes(data, path)


def restore_trial_state(checkpoint: Any) -> dict[str, Any] | None:
    """The state of Tune's newest checkpoint (read from wherever it is stored: a local folder or an
    object store, state file only); if it is damaged (checksum or load failure), the newest good
    older one that Tune kept beside it; if none, a fresh state (the trial restarts). What happened
    is printed and kept in the state's ``recovery`` list, which ends up in the trial's
    ``events_json``."""
    fs, newest = _checkpoint_location(checkpoint)
    parent = posixpath.dirname(newest)
    candidates = [newest]
    try:
        siblings = fs.get_file_info(pafs.FileSelector(parent, recursive=False))
    except OSError:
        siblings = []
    candidates += sorted((i.path.rstrip("/") for i in siblings
                          if i.type == pafs.FileType.Directory and posixpath.basename(i.path).startswith("checkpoint_")
                          and i.path.rstrip("/") != newest), reverse=True)
    problems: list[str] = []
    for candidate in candidates:
        try:
            state = _read_state(fs, candidate)
        except CorruptFileError as exc:
            problems.append(str(exc))
            continue
        if problems:
            note = f"damaged checkpoint ({'; '.join(problems)}); resumed from {posixpath.basename(candidate)}"
            print(f"mgas trial: {note}", file=sys.stderr)
            state["recovery"] = [*state.get("recovery", []), note]
        return state
    note = f"damaged checkpoint ({'; '.join(problems)}); no good checkpoint left, restarting the trial"
    print(f"mgas trial: {note}", file=sys.stderr)
    return {"phase": "search", "attempt": 0, "recovery": [note]}


class TuneReporter:
    """Reports every epoch to Tune, with a checkpoint at most every ``interval_s`` seconds (the
    first epoch always; ``final=True`` always). Tune forces an experiment sync when a trial saves
    ``num_to_keep`` checkpoints between two syncs; spacing them keeps that from happening. The
    newest checkpoint stays in a local folder for an out-of-memory retry."""

    def __init__(self, trial_id: str, interval_s: float) -> None:
        self.trial_id = trial_id
        self.interval_s = interval_s
        self.folder = Path(tempfile.mkdtemp(prefix="mgas-trial-"))
        self.latest: Path | None = None
        self.saved_at = float("-inf")
        self.count = 0

    def __call__(self, metrics: dict[str, Any], state_fn: StateFn, final: bool = False) -> None:
        from ray import tune

        payload = {**metrics, "trial_id": self.trial_id, "done_trial": final}
        if not final and time.monotonic() - self.saved_at < self.interval_s:
            tune.report(payload)
            return
        directory = self.folder / f"checkpoint_{self.count:06d}"
        self.count += 1
        _write_state_dir(directory, state_fn())
        tune.report(payload, checkpoint=tune.Checkpoint.from_directory(str(directory)))
        if self.latest is not None:
            shutil.rmtree(self.latest, ignore_errors=True)
        self.latest, self.saved_at = directory, time.monotonic()

    def last_state(self) -> dict[str, Any] | None:
        return load_checkpoint(self.latest / STATE_FILE) if self.latest is not None else None

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def tune_trainable(config: dict[str, Any]) -> None:
    """The function trainable: restore from ``tune.get_checkpoint()``, report every epoch, and end
    with one report of the final metrics and a small ``done`` checkpoint (final metrics and the
    architecture files): a trial restored after it finished re-reports them, and that checkpoint,
    without running."""
    from ray import tune

    from orchestrator.resume import resume_checkpoint

    trial = config["trial"]
    # Tune's checkpoint of this attempt (a worker restarted after a failure), else the newest one
    # of the attempt a resumed sweep continues
    checkpoint = tune.get_checkpoint() or resume_checkpoint(trial)
    state = restore_trial_state(checkpoint) if checkpoint is not None else None
    if state is not None and state.get("phase") == "done":
        # the done checkpoint again, in this attempt's folder too (its architecture files with it)
        again = TuneReporter(trial["trial_id"], 0.0)
        try:
            again(state["final"], lambda: state, final=True)
        finally:
            again.close()
        return
    placement = _placement()
    cpus = placement.pop("cpus", None)
    reporter = TuneReporter(trial["trial_id"], float(trial.get("checkpoint_interval_s", 10.0)))
    started = time.time()
    try:
        try:
            final = run_trial(trial, state, reporter, cpus)
        except TrialFailed as exc:
            final = {"status": "failed", "error": str(exc)}
        final.update(placement)
        final.update({"started_at": started, "wall_time_s": time.time() - started, "finished_at": time.time(),
                      "git_sha": trial.get("provenance", {}).get("git_sha") or git_revision(),
                      "versions": json.dumps(library_versions(), sort_keys=True)})
        arch = final.pop(ARCH_STATE_KEY, None)
        done: dict[str, Any] = {"phase": "done", "final": final, "attempt": final.get("attempts", 0)}
        if arch is not None:
            done["arch"] = arch  # the done checkpoint carries arch.json and its masks
        reporter(final, lambda: done, final=True)
    finally:
        reporter.close()
