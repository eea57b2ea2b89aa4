"""Orchestration overhead: N tiny trials through Ray Tune versus the same work in one process.

    python -m benchmarks.orchestration [--trials 8] [--epochs 10] [--repeats 1] [--json]

Reports the in-process sequential wall time in a warm process (half the trials before the sweep,
half after, so that the machine's drift in speed cancels), the Ray sweep's wall time (embedded
Ray start and shutdown included) and the parallel efficiency on the machine's CPUs,
``efficiency = in_process / (cpus * ray)`` (1.0 = perfect use of every core). The default trial
(a 3-cell digits DARTS search and retraining of 10 epochs each) takes about 30 s in one process on
this project's machine: the trial length the sweep's overhead is judged at. Ray's start (about
4 s), Tune's start of a trial worker with its imports (ray.tune and torch, about 3 s, once per
concurrent trial: finished trials hand their worker to the next, ``reuse_actors``) and Ray's
shutdown (about 1.2 s) are fixed costs, so shorter trials give a lower efficiency. This machine's
speed varies by tens of percent from minute to minute: ``--repeats N`` measures N times and
prints the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml


def make_spec(folder: Path, trials: int, epochs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": "overhead",
        "output_dir": str(folder / "out"),
        "dataset": "digits",
        "preset": "tiny",
        "base": {"search.epochs": epochs, "search.layers": 3, "search.channels": 4, "search.nodes": 3,
                 "search.darts.order": 1, "retrain.epochs": epochs, "retrain.layers": 3, "retrain.channels": 8,
                 "device": "cpu"},
        "sweep": {"method": ["darts"], "seed": list(range(trials))},
        "resources": {"cpu": 1},
        "max_failures": 0,
    }
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_in_process(trials: list[dict]) -> float:
    """Seconds to run ``trials`` one after another in this process (no Ray, no checkpoints)."""
    from orchestrator.trainable import run_trial_pipeline

    start = time.perf_counter()
    for trial in trials:
        run_trial_pipeline(trial, None, lambda metrics, state: None)
    return time.perf_counter() - start


def measure(folder: Path, trials_n: int, epochs: int) -> dict:
    """One measurement: half the trials in process, the Ray sweep of all of them, the other half
    in process (this machine's speed drifts by tens of percent within minutes; a linear drift
    cancels out in the sum)."""
    from orchestrator.results import read_rows
    from orchestrator.spec import expand_trials, load_spec
    from orchestrator.sweep import run_command

    cpus = os.cpu_count() or 1
    path = make_spec(folder, trials_n, epochs)
    trials = expand_trials(load_spec(path)[0])
    torch.set_num_threads(1)
    # a warm process: the first trial of a process imports its dataset and optimizer code (about
    # 3 s), which the sweep's workers pay once each; the in-process time does not count it
    warm = make_spec(folder / "warm", 1, 1)
    run_in_process(expand_trials(load_spec(warm)[0]))
    half = len(trials) // 2
    before = run_in_process(trials[:half])
    start, wall_start = time.perf_counter(), time.time()
    summary = run_command(path)
    through_ray, wall_end = time.perf_counter() - start, time.time()
    after = run_in_process(trials[half:])
    rows = read_rows(Path(summary["results_dir"]).parent)
    in_process = before + after
    through = [r["wall_time_s"] for r in rows]
    return {
        "in_process_s": round(in_process, 2), "ray_s": round(through_ray, 2),
        "parallel_efficiency": round(in_process / (cpus * through_ray), 3),
        "ok_trials": summary["ok"],
        "per_trial_in_process_s": round(in_process / len(trials), 2),
        "per_trial_in_process_before_after_s": [round(before / half, 2), round(after / (len(trials) - half), 2)],
        # where the Ray sweep's time goes: until the first trial starts (Ray and Tune start, a
        # worker's imports), after the last one ends (results, Ray's shutdown), and inside trials
        "ray_until_first_trial_s": round(min(r["started_at"] for r in rows) - wall_start, 2),
        "ray_after_last_trial_s": round(wall_end - max(r["finished_at"] for r in rows), 2),
        "per_trial_through_ray_s": round(sum(through) / len(through), 2),
        "trial_through_ray_min_max_s": [round(min(through), 2), round(max(through), 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="number of identical tiny trials")
    parser.add_argument("--epochs", type=int, default=10, help="search and retrain epochs per trial (~30 s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measurements one after another; the efficiency printed is their median")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.trials < 2 or args.epochs < 1 or args.repeats < 1:
        parser.error("--trials must be >= 2, --epochs and --repeats >= 1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            runs.append(measure(Path(d), args.trials, args.epochs))
    result = {"trials": args.trials, "epochs": args.epochs, "cpus": os.cpu_count() or 1}
    if len(runs) == 1:
        result.update(runs[0])
    else:
        result.update(parallel_efficiency=statistics.median(r["parallel_efficiency"] for r in runs),
                      parallel_efficiency_each=[r["parallel_efficiency"] for r in runs], runs=runs)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
