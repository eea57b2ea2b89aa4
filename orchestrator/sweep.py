"""``mgas run``: an experiment YAML -> trials on Ray Tune -> one Parquet row per trial on the storage.

Everything of one experiment lives in one folder, ``<root>/<name>/`` (see :mod:`orchestrator.results`),
where ``<root>`` is ``--out``, else the spec's ``storage_path`` (a local path, an NFS mount or an
``s3://``/``gs://`` URI), else its ``output_dir``; relative paths are relative to the YAML's folder.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.interrupts import raise_if_interrupted
from orchestrator.progress import search_plan
from orchestrator.reachability import check_ray_address
from orchestrator.runtime_env import load_runtime_env
from orchestrator.spec import ExperimentSpec, expand_trials, load_spec
from orchestrator.storage import Location, is_uri, join, normalize, reach, resolve
from orchestrator.tracking import MlflowSpec, MlflowTracker, TrackingSpec, mlflow_target
from orchestrator.tracking_store import check_tracking_store

TUNE_DIR = "tune"
PROGRESS_LOG = "progress.log"  # every epoch of every trial, appended
KEEP_CHECKPOINTS = 3  # with checkpoint_interval_s >= 5 s, Tune never needs to force an experiment sync


def describe_axes(axes: dict[str, Any]) -> str:
    return " ".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in axes.items())


def describe_request(request: dict[str, Any]) -> str:
    text = f"cpu={request['cpu']:g} gpu={request['gpu']:g}"
    return text + (f" accelerator_type={request['accelerator_type']}" if request.get("accelerator_type") else "")


def print_plan(spec: ExperimentSpec, trials: list[dict[str, Any]], experiment_uri: str) -> dict[str, Any]:
    concurrent = spec.max_concurrent_trials or len(trials)
    print(f"experiment {spec.name}: {len(trials)} trials on {spec.dataset.name} (preset {spec.preset})")
    width = max(len(t["trial_id"]) for t in trials)
    for t in trials:
        plan = search_plan(t)[1]
        print(f"  {t['trial_id']:<{width}}  search {plan}, retrain {t['settings']['retrain']['epochs']} ep  "
              f"{describe_axes(t['axes'])}")
    res = spec.resources
    methods = sorted({t["settings"]["search"]["method"] for t in trials})
    per_method = {m: spec.resources.for_method(m) for m in methods}
    overrides = {m: r for m, r in per_method.items() if r != spec.resources.for_method("default")}
    n = min(concurrent, len(trials))
    peak_cpu = max(r["cpu"] for r in per_method.values()) * n
    peak_gpu = max(r["gpu"] for r in per_method.values()) * n
    print(f"resources per trial: cpu={res.cpu:g} gpu={res.gpu:g}"
          + "".join(f"; {m}: {describe_request(r)}" for m, r in overrides.items())
          + f"; at most {concurrent} concurrent (needs up to cpu={peak_cpu:g} gpu={peak_gpu:g}); "
          f"max_failures={spec.max_failures}")
    if spec.population is not None:
        from orchestrator.population import describe

        print(f"then {describe(spec.population, None)}; each candidate: "
              f"{describe_axes(spec.population.settings) or 'the base settings'}")
    print(f"results: {join(experiment_uri, 'results')}")
    return {"experiment": spec.name, "trials": len(trials), "cpu_per_trial": res.cpu, "gpu_per_trial": res.gpu,
            "resources": per_method, "max_concurrent_trials": concurrent,
            "results_dir": join(experiment_uri, "results")}


def experiment_uri(spec: ExperimentSpec, folder: Path, out: Path | str | None) -> str:
    root = str(out) if out is not None else (spec.storage_path or spec.output_dir)
    if not is_uri(root) and not Path(os.path.expanduser(root)).is_absolute():
        root = str(folder / root)
    return join(normalize(root), spec.name)


def run_command(experiment: Path, out: Path | str | None = None, address: str | None = None, resume: bool = False,
                dry_run: bool = False, dashboard: bool = False, dashboard_host: str | None = None,
                runtime_env_file: Path | None = None, mlflow: str | None = None) -> dict[str, Any]:
    """``mgas run``. ``mlflow``: a tracking URI ("" for the local store) that turns MLflow
    tracking on, or replaces the spec's ``tracking.mlflow.uri``."""
    from mgas_core.engine.provenance import git_revision, library_versions
    from orchestrator.ray_runtime import embedded_init_kwargs

    spec, folder = load_spec(experiment)
    if mlflow is not None:
        spec.tracking = TrackingSpec(mlflow=MlflowSpec(**{**(spec.tracking.mlflow or MlflowSpec()).model_dump(),
                                                          "uri": mlflow or None}))
    embedded_init_kwargs(dashboard, dashboard_host)  # flag errors before anything starts
    runtime_env = spec.runtime.to_ray(folder.resolve()) if spec.runtime else {}
    if runtime_env_file is not None:
        runtime_env.update(load_runtime_env(runtime_env_file))
    trials = expand_trials(spec)
    uri = experiment_uri(spec, folder, out)
    if dry_run:
        return print_plan(spec, trials, uri)
    address = address if address is not None else os.environ.get("RAY_ADDRESS")
    address = check_ray_address(address)  # within seconds, before anything is written or Ray starts
    location = reach(uri)  # an object store answers within seconds (credentials, endpoint), or one line
    tracker = None
    if spec.tracking.mlflow is not None:
        check_tracking_store(spec.tracking.mlflow.uri, spec.tracking.mlflow.experiment or spec.name)
        tracking_uri, artifacts = mlflow_target(spec.tracking.mlflow, location.path, location.local)
        tracker = MlflowTracker(tracking_uri, artifacts, spec.tracking.mlflow.experiment or spec.name, uri)
    provenance = {"git_sha": git_revision(), "versions": library_versions()}
    for t in trials:
        t.update({"experiment": spec.name, "provenance": provenance,
                  "checkpoint_interval_s": spec.checkpoint_interval_s})
    return run_sweep(spec, trials, uri, address, resume, dashboard, dashboard_host, runtime_env, tracker)


def trial_placement(config: dict[str, Any]) -> Any:
    """Tune's per-trial resources: the trial's method's request, as one placement-group bundle."""
    from ray.tune import PlacementGroupFactory

    request = config["trial"]["resources"]
    bundle: dict[str, float] = {"CPU": float(request["cpu"])}
    if request.get("gpu"):
        bundle["GPU"] = float(request["gpu"])
    if request.get("accelerator_type"):
        bundle[f"accelerator_type:{request['accelerator_type']}"] = 0.001  # Ray's marker of a GPU model
    return PlacementGroupFactory([bundle])


def trial_name(trial: Any) -> str:
    return trial.config["trial"]["trial_id"]


def _tuner(spec: ExperimentSpec, trainable: Any, trials: list[dict[str, Any]], uri: str, callbacks: list[Any]) -> Any:
    """A fresh Tune run of ``trials`` in ``<uri>/tune`` (a resumed sweep's attempt too: no Tune restore)."""
    from ray import tune

    from orchestrator.resume import trial_folder_name

    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.max_concurrent_trials,
            # a finished trial's worker runs the next trial of the same resources: torch and
            # the package stay imported (benchmarks/orchestration.py)
            reuse_actors=True,
            trial_dirname_creator=trial_folder_name,
            trial_name_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=uri,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def run_sweep(spec: ExperimentSpec, trials: list[dict[str, Any]], uri: str, address: str | None, resume: bool,
              dashboard: bool = False, dashboard_host: str | None = None,
              runtime_env: dict[str, Any] | None = None, tracker: MlflowTracker | None = None) -> dict[str, Any]:
    # persist the sweep's state often, so a killed driver resumes with every finished trial known
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Tune's own console output (a config banner, trial tables) off: the sweep's status is ours
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    from orchestrator.callbacks import MlflowCallback, ResultsWriter, SweepProgress
    from orchestrator.collect import saved_from_grid, write_results
    from orchestrator.preflight import (
        check_capacity,
        check_local_compile,
        check_local_latency,
        cluster_nodes,
        local_node,
    )
    from orchestrator.ray_runtime import (
        callbacks_untagged,
        check_cluster,
        check_nodes_import,
        init_ray,
        ray_is_running,
        trials_in_driver_environment,
    )
    from orchestrator.resume import SweepRecord, plan_resume
    from orchestrator.trainable import tune_trainable

    started = time.time()
    experiment = resolve(uri)
    methods = [t["settings"]["search"]["method"] for t in trials]
    run = experiment.child(TUNE_DIR)
    plan = plan_resume(run, trials) if resume else None  # a changed spec is refused before Ray starts
    if spec.population is not None:
        from orchestrator.population import local_experiment_path

        local_experiment_path(uri)  # the study's journal needs a file system: refused before Ray starts
    if not address and not ray_is_running():  # before Ray starts
        check_capacity(spec.resources, methods, [local_node()], "this machine (embedded Ray)")
        check_local_compile(trials)
        check_local_latency(trials)
    embedded = init_ray(address, dashboard, dashboard_host, runtime_env)
    try:
        raise_if_interrupted()  # a Ctrl-C while Ray started may have been dropped (orchestrator/interrupts.py)
        check_capacity(spec.resources, methods, cluster_nodes(), "this machine (embedded Ray)" if embedded
                       else f"the Ray cluster at {address or 'this process'}")
        if not embedded:
            check_cluster(uri, spec.shared_storage, address, trials)
        elif runtime_env:  # the runtime env set up on this machine's workers, as the trials will get it
            check_nodes_import()
        trainable = tune.with_resources(tune_trainable, trial_placement)
        progress = SweepProgress(trials, join(uri, PROGRESS_LOG) if experiment.local else None)
        restored = plan is not None
        if plan is not None:
            print(f"resuming sweep from {run.uri}: {plan.describe()}", file=sys.stderr)
            record, to_run, finished = plan.record, plan.to_run, plan.finished
        else:
            if resume:
                print(f"nothing to resume at {run.uri}; starting the sweep", file=sys.stderr)
            _move_previous(experiment)
            record, to_run, finished = SweepRecord.new(), trials, []
        for saved in finished:
            progress.status.finish(saved.trial["trial_id"], saved.result.get("status") == "ok")
        if tracker is not None:
            tracker.sweep_id = record.sweep_id  # a resumed sweep logs into its trials' runs again
        record.write(run)
        if not to_run:
            written = write_results(experiment, finished)
        else:
            tuner = _tuner(spec, trainable, to_run, uri, [ResultsWriter(uri), *([MlflowCallback(tracker)] if tracker
                                                                                else []), progress])
            with callbacks_untagged(), trials_in_driver_environment(embedded):
                grid = tuner.fit()
            # every ended trial's row again: this run's from the result grid, a resumed sweep's earlier
            # ones from their saved results
            written = write_results(experiment, [*finished, *saved_from_grid(grid)])
        if spec.population is not None and not written["unfinished"]:
            population = _population(spec, trainable, trials[0], uri, experiment, resume, record.attempts - 1,
                                     [ResultsWriter(uri), *([MlflowCallback(tracker)] if tracker else []),
                                      SweepProgress([], join(uri, PROGRESS_LOG) if experiment.local else None)])
            written = {k: written[k] + population[k] for k in ("ok", "failed", "unfinished", "rows")}
            written["population"] = population
    finally:
        if embedded:
            import ray

            ray.shutdown()
    ok = written["ok"]
    results_dir = join(uri, "results")
    if spec.population is not None:
        trials = [*trials, *[{}] * spec.population.total]  # the counts below include the candidates
    if written["unfinished"]:  # Tune stopped on a Ctrl-C (or SIGTERM) and saved its state first
        left = len(trials) - ok - written["failed"]
        print(f"sweep {spec.name} interrupted: {ok}/{len(trials)} trials ok, {left} not finished (no row yet); "
              "the same `mgas run` with --resume continues it", file=sys.stderr)
        raise KeyboardInterrupt

    summary = {"experiment": spec.name, "trials": len(trials), "ok": ok, "failed": len(trials) - ok,
               "rows": written["rows"], "resumed": restored, "results_dir": results_dir,
               "wall_time_s": time.time() - started}
    if "population" in written:
        summary["population"] = {k: written["population"][k] for k in ("candidates", "blocks", "study",
                                                                       "non_dominated") if k in written["population"]}
    if tracker is not None:
        summary["mlflow"] = {"tracking_uri": tracker.tracking_uri, "experiment": tracker.experiment}
        print(f"mlflow: {tracker.experiment} at {tracker.tracking_uri} "
              f"(mlflow ui --backend-store-uri {tracker.tracking_uri})", file=sys.stderr)
    print(f"sweep {spec.name}: {ok}/{len(trials)} trials ok, {len(trials) - ok} failed in "
          f"{summary['wall_time_s']:.0f}s; results in {results_dir}", file=sys.stderr)
    return summary


def _population(spec: ExperimentSpec, trainable: Any, first: dict[str, Any], uri: str, experiment: Location,
                resume: bool, attempt: int, callbacks: list[Any]) -> dict[str, Any]:
    """The network stage of a ``population:`` experiment on the Ray the sweep started."""
    from ray import tune

    from mgas_core.methods.registry import get_method
    from orchestrator.population import CANDIDATE_METHOD
    from orchestrator.population_sweep import run_population_stage
    from orchestrator.resume import trial_folder_name

    # the epoch reports carry val_acc but not the size: Tune checks only the final result's metrics here
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    template = {k: first[k] for k in ("experiment", "provenance", "checkpoint_interval_s") if k in first}
    template.update({"resources": spec.resources.for_method(CANDIDATE_METHOD),
                     "method_module": get_method(CANDIDATE_METHOD).__module__})

    def tuner(samples: int, searcher: Any, run_callbacks: list[Any]) -> Any:
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=samples,
                                        max_concurrent_trials=spec.max_concurrent_trials, reuse_actors=True,
                                        trial_dirname_creator=trial_folder_name, trial_name_creator=trial_name),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=uri,
                                      failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                                      callbacks=run_callbacks, verbose=0),
        )

    return run_population_stage(spec, experiment, uri, template, resume, attempt, callbacks, tuner)


def _move_previous(experiment: Location) -> None:
    """A fresh sweep keeps an earlier sweep's Tune state under a dated name (nothing is lost).
    On an object store (no rename) the new sweep's state is written beside the old one and is the
    one Tune restores (the newest)."""
    from orchestrator.population import POPULATION_DIR

    stamp = time.strftime('%Y%m%d-%H%M%S')
    for name in (TUNE_DIR, POPULATION_DIR):  # a population's study goes with the sweep it belongs to
        run = experiment.child(name)
        if run.local and run.exists():
            path = Path(run.path)
            path.rename(path.with_name(f"{path.name}-{stamp}"))
