"""Orchestration overhead: N tiny trials through Ray Tune versus the same work in one process.

    python -m benchmarks.orchestration [--trials 8] [--epochs 10] [--json]

Reports the in-process sequential wall time, the Ray sweep's wall time (embedded Ray start and
shutdown included) and the parallel efficiency on the machine's CPUs,
``efficiency = in_process / (cpus * ray)`` (1.0 = perfect use of every core). The default trial
(a 3-cell digits DARTS search and retraining of 10 epochs each) takes about 30 s in one process on
this project's machine: the trial length the sweep's overhead is judged at. Ray's start (about
2.7 s), a trial worker's start and imports (about 2 s, once per concurrent trial: finished
trials hand their worker to the next, ``reuse_actors``) and its shutdown (about 1.4 s) are fixed
costs, so shorter trials give a lower efficiency.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml


def make_spec(folder: Path, trials: int, epochs: int) -> Path:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="number of identical tiny trials")
    parser.add_argument("--epochs", type=int, default=10, help="search and retrain epochs per trial (~30 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from orchestrator.results import read_rows
    from orchestrator.spec import expand_trials, load_spec
    from orchestrator.sweep import run_command
    from orchestrator.trainable import run_trial_pipeline

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        path = make_spec(Path(d), args.trials, args.epochs)
        trials = expand_trials(load_spec(path)[0])
        torch.set_num_threads(1)
        start = time.perf_counter()
        for trial in trials:
            run_trial_pipeline(trial, None, lambda metrics, state: None)
        in_process = time.perf_counter() - start
        start, wall_start = time.perf_counter(), time.time()
        summary = run_command(path)
        through_ray, wall_end = time.perf_counter() - start, time.time()
        rows = read_rows(Path(summary["results_dir"]).parent)
    result = {
        "trials": args.trials, "epochs": args.epochs, "cpus": cpus,
        "in_process_s": round(in_process, 2), "ray_s": round(through_ray, 2),
        "per_trial_in_process_s": round(in_process / args.trials, 2),
        "parallel_efficiency": round(in_process / (cpus * through_ray), 3),
        "ok_trials": summary["ok"],
        # where the Ray sweep's time goes: until the first trial starts (Ray and Tune start, a
        # worker's imports), after the last one ends (results, Ray's shutdown), and inside trials
        "ray_until_first_trial_s": round(min(r["started_at"] for r in rows) - wall_start, 2),
        "ray_after_last_trial_s": round(wall_end - max(r["finished_at"] for r in rows), 2),
        "per_trial_through_ray_s": round(sum(r["wall_time_s"] for r in rows) / len(rows), 2),
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
