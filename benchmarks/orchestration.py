"""Orchestration overhead: N tiny trials through Ray Tune versus the same work in one process.

    python -m benchmarks.orchestration [--trials 8] [--epochs 6] [--json]

Reports the in-process sequential wall time, the Ray sweep's wall time (embedded Ray start and
shutdown included) and the parallel efficiency on the machine's CPUs,
``efficiency = in_process / (cpus * ray)`` (1.0 = perfect use of every core).
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
    parser.add_argument("--epochs", type=int, default=6, help="search and retrain epochs per trial")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
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
        start = time.perf_counter()
        summary = run_command(path)
        through_ray = time.perf_counter() - start
    result = {
        "trials": args.trials, "epochs": args.epochs, "cpus": cpus,
        "in_process_s": round(in_process, 2), "ray_s": round(through_ray, 2),
        "per_trial_in_process_s": round(in_process / args.trials, 2),
        "parallel_efficiency": round(in_process / (cpus * through_ray), 3),
        "ok_trials": summary["ok"],
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
