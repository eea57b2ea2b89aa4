"""``mgas run``: an experiment YAML -> trials on Ray Tune -> one Parquet row per trial."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from orchestrator.results import read_rows
from orchestrator.spec import ExperimentSpec, expand_trials, load_spec

RUN_NAME = "sweep"


def describe_axes(axes: dict[str, Any]) -> str:
    return " ".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in axes.items())


def print_plan(spec: ExperimentSpec, trials: list[dict[str, Any]], experiment_dir: Path) -> dict[str, Any]:
    res = spec.resources
    concurrent = spec.max_concurrent_trials or len(trials)
    print(f"experiment {spec.name}: {len(trials)} trials on {spec.dataset.name} (preset {spec.preset})")
    width = max(len(t["trial_id"]) for t in trials)
    for t in trials:
        s = t["settings"]["search"]
        print(f"  {t['trial_id']:<{width}}  search {s['epochs']} ep, retrain {t['settings']['retrain']['epochs']} ep  "
              f"{describe_axes(t['axes'])}")
    peak_cpu = res.cpu * min(concurrent, len(trials))
    peak_gpu = res.gpu * min(concurrent, len(trials))
    print(f"resources per trial: cpu={res.cpu:g} gpu={res.gpu:g}; at most {concurrent} concurrent "
          f"(needs up to cpu={peak_cpu:g} gpu={peak_gpu:g}); max_failures={spec.max_failures}")
    print(f"results: {experiment_dir / 'results'}")
    return {"experiment": spec.name, "trials": len(trials), "cpu_per_trial": res.cpu, "gpu_per_trial": res.gpu,
            "max_concurrent_trials": concurrent, "results_dir": str(experiment_dir / "results")}


def _absolute_data_root(trials: list[dict[str, Any]]) -> None:
    for t in trials:
        data = t["settings"]["data"]
        if data.get("root"):
            data["root"] = str(Path(os.path.expanduser(data["root"])).resolve())


def run_command(experiment: Path, out: Path | None = None, address: str | None = None, resume: bool = False,
                dry_run: bool = False, dashboard: bool = False, dashboard_host: str | None = None) -> dict[str, Any]:
    from orchestrator.ray_runtime import embedded_init_kwargs

    spec, folder = load_spec(experiment)
    embedded_init_kwargs(dashboard, dashboard_host)  # flag errors before anything starts
    trials = expand_trials(spec)
    _absolute_data_root(trials)
    out_root = (out or (folder / spec.output_dir)).resolve()
    experiment_dir = out_root / spec.name
    if dry_run:
        return print_plan(spec, trials, experiment_dir)
    return run_sweep(spec, trials, experiment_dir, address or os.environ.get("RAY_ADDRESS"), resume,
                     dashboard, dashboard_host)


def run_sweep(spec: ExperimentSpec, trials: list[dict[str, Any]], experiment_dir: Path, address: str | None,
              resume: bool, dashboard: bool = False, dashboard_host: str | None = None) -> dict[str, Any]:
    # persist the sweep's state often, so a killed driver resumes with every finished trial known
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune

    from orchestrator.callbacks import ResultsWriter, SweepProgress
    from orchestrator.preflight import check_capacity, cluster_nodes, local_node
    from orchestrator.ray_runtime import check_cluster_storage, init_ray, ray_is_running
    from orchestrator.trainable import tune_trainable

    storage = spec.storage_path or str(experiment_dir / "tune")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    started = time.time()
    if not address and not ray_is_running():
        check_capacity(spec.resources, [local_node()], "this machine (embedded Ray)")  # before Ray starts
    embedded = init_ray(address, dashboard, dashboard_host)
    try:
        check_capacity(spec.resources, cluster_nodes(), "this machine (embedded Ray)" if embedded
                       else f"the Ray cluster at {address or 'this process'}")
        if not embedded:
            check_cluster_storage(storage, spec.shared_storage)
        experiment_dir.mkdir(parents=True, exist_ok=True)
        trainable = tune.with_resources(tune_trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
        writer = ResultsWriter(spec.name, experiment_dir)
        progress = SweepProgress(len(trials))
        run_path = f"{storage.rstrip('/')}/{RUN_NAME}"
        restored = resume and tune.Tuner.can_restore(run_path)
        if restored:
            print(f"resuming sweep from {run_path}")
            tuner = tune.Tuner.restore(run_path, trainable, resume_unfinished=True, resume_errored=True,
                                       param_space={"trial": tune.grid_search(trials)})
        else:
            if resume:
                print(f"nothing to resume at {run_path}; starting the sweep")
            _move_previous(run_path)
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(trials)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=spec.max_concurrent_trials,
                    trial_dirname_creator=lambda t: t.config["trial"]["trial_id"],
                    trial_name_creator=lambda t: t.config["trial"]["trial_id"],
                ),
                run_config=tune.RunConfig(
                    name=RUN_NAME,
                    storage_path=storage,
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    callbacks=[writer, progress],
                    verbose=0,
                ),
            )
        grid = tuner.fit()
    finally:
        if embedded:
            import ray

            ray.shutdown()
    del grid
    rows = {r["trial_id"]: r for r in read_rows(experiment_dir)}
    ok = sum(1 for t in trials if rows.get(t["trial_id"], {}).get("status") == "ok")
    summary = {"experiment": spec.name, "trials": len(trials), "ok": ok, "failed": len(trials) - ok,
               "rows": len(rows), "resumed": restored, "results_dir": str(experiment_dir / "results"),
               "wall_time_s": time.time() - started}
    print(f"sweep {spec.name}: {ok}/{len(trials)} trials ok, {len(trials) - ok} failed in "
          f"{summary['wall_time_s']:.0f}s; results in {summary['results_dir']}")
    return summary


def _move_previous(run_path: str) -> None:
    """A fresh sweep keeps an earlier sweep's Tune state under a dated name (nothing is lost)."""
    if "://" in run_path:
        return
    path = Path(run_path)
    if path.exists():
        path.rename(path.with_name(f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"))

