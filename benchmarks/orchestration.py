"""Orchestration overhead: N tiny trials through Ray Tune versus the same work in one process.

    python -m benchmarks.orchestration [--trials 8] [--epochs 10] [--repeats 1] [--cold-processes] [--json]

Reports the in-process sequential wall time in a warm process (half the trials before the sweep,
half after, so that the machine's drift in speed cancels), the Ray sweep's wall time (embedded
Ray start and shutdown included) and the parallel efficiency on the machine's CPUs,
``efficiency = in_process / (cpus * ray)`` (1.0 = perfect use of every core). The default trial
(a 3-cell digits search of the default method, DARTS, with its benchmark settings, and a
retraining, of 10 epochs each) takes about 30 s in one process on
this project's machine: the trial length the sweep's overhead is judged at. Ray's start (about
1.5 s), Tune's start of a trial worker with its imports (ray.tune and torch, about 4 s, once per
concurrent trial: finished trials hand their worker to the next, ``reuse_actors``) and Ray's
shutdown (about 0.4 s) are fixed costs, so shorter trials give a lower efficiency. This machine's
speed varies by tens of percent from minute to minute: ``--repeats N`` measures N times and
prints the median.

The same trials also run in ``cpus`` plain processes side by side (warm, no Ray; half before the
sweep, half after): ``machine_parallel_efficiency = in_process / (cpus * plain_processes)`` is what
this machine's cores give two trials at once without any orchestration, ``ray_vs_plain_processes
= plain_processes / ray`` what Ray Tune costs on top (1.0 = nothing), and their product is
``parallel_efficiency``. The plain side splits each half over the CPUs, so it is meaningful when a
half is a multiple of the CPU count (the default 8 trials on 2 CPUs: 4 and 4).

``--cold-processes`` also runs all the trials once in ``cpus`` fresh processes (no Ray, started
for the run: Python, torch and the trial code imported, each process's first trial paying its
first-use costs, as the sweep's workers do), timed from their start, next to the sweep (right
before it; with ``--repeats``, before and after it in turn): ``cold_machine_parallel_efficiency =
in_process / (cpus * cold_processes)`` estimates what an orchestrator that starts its trial
processes afresh for each sweep gets on this machine, and ``ray_vs_cold_processes = cold_processes
/ ray`` what Ray Tune costs beyond starting them. The in-process and plain halves are then around
the pair, so one run's pair is off the middle by half the other's time: the drift between the two
is in their ratio (alternate with ``--repeats``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

from mgas_core.methods.registry import get_method
from mgas_core.settings.run import DEFAULT_METHOD


def make_spec(folder: Path, trials: int, epochs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": "overhead",
        "output_dir": str(folder / "out"),
        "dataset": "digits",
        "preset": "tiny",
        "base": {"search.epochs": epochs, "search.layers": 3, "search.channels": 4, "search.nodes": 3,
                 **get_method(DEFAULT_METHOD).benchmark_overrides, "retrain.epochs": epochs, "retrain.layers": 3,
                 "retrain.channels": 8, "device": "cpu"},
        "sweep": {"method": [DEFAULT_METHOD], "seed": list(range(trials))},
        "resources": {"cpu": 1},
        "max_failures": 0,
    }
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _no_report(metrics: dict, state: object) -> None:
    return None


def run_in_process(trials: list[dict]) -> float:
    """Seconds to run ``trials`` one after another in this process (no Ray, no checkpoints)."""
    from orchestrator.trainable import run_trial_pipeline

    start = time.perf_counter()
    for trial in trials:
        run_trial_pipeline(trial, None, _no_report)
    return time.perf_counter() - start


def _plain_worker(warm: list[dict], tasks: mp.Queue, done: mp.Queue) -> None:
    torch.set_num_threads(1)
    try:
        run_in_process(warm)
        done.put(None)
        while (trial := tasks.get()) is not None:
            done.put(run_in_process([trial]))
    except Exception:  # the parent raises it instead of waiting for a trial that never ends
        done.put(traceback.format_exc())


def _answer(done: mp.Queue, timeout_s: float, processes: list) -> float | None:
    """The next answer of ``processes``; raises when one of them failed, died without answering
    (killed, or its import failed) or none answered in ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = done.get(timeout=1.0)
            break
        except queue.Empty:
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a plain trial process died (exit code {dead[0]})") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no plain trial process answered in {timeout_s:.0f} s") from None
    if isinstance(answer, str):
        raise RuntimeError(f"a plain trial process failed:\n{answer}")
    return answer


class PlainProcesses:
    """``count`` warm processes (one untimed warm-up trial each, one thread) that run trials side
    by side without Ray: each takes the next trial when it is free, as the sweep's lanes do."""

    def __init__(self, count: int, warm: list[dict]) -> None:
        context = mp.get_context("spawn")
        self.tasks, self.done = context.Queue(), context.Queue()
        self.processes = [context.Process(target=_plain_worker, args=(warm, self.tasks, self.done), daemon=True)
                          for _ in range(count)]
        for process in self.processes:
            process.start()
        for _ in self.processes:
            _answer(self.done, 600, self.processes)  # warmed up

    def run(self, trials: list[dict]) -> tuple[float, list[float]]:
        """Wall seconds until every trial has ended, and each trial's seconds."""
        start = time.perf_counter()
        for trial in trials:
            self.tasks.put(trial)
        each = [_answer(self.done, 3600, self.processes) for _ in trials]
        return time.perf_counter() - start, each

    def close(self) -> None:
        for _ in self.processes:
            self.tasks.put(None)
        _end(self.processes)


def _end(processes: list) -> None:
    """Wait for ``processes`` to end; the ones still running after a minute (a failed run's
    other process, busy with a trial) are terminated."""
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)


def run_cold_processes(count: int, trials: list[dict]) -> tuple[float, list[float]]:
    """Wall seconds from starting ``count`` fresh processes until they have run ``trials`` (each
    takes the next one when free), and each trial's seconds."""
    context = mp.get_context("spawn")
    tasks, done = context.Queue(), context.Queue()
    start = time.perf_counter()
    processes = [context.Process(target=_plain_worker, args=([], tasks, done), daemon=True) for _ in range(count)]
    try:
        for process in processes:
            process.start()
        for trial in [*trials, *[None] * count]:  # a process ends at the first None, after every trial
            tasks.put(trial)
        answers = [_answer(done, 3600, processes) for _ in range(len(trials) + count)]  # "ready" is None
        wall = time.perf_counter() - start
    except BaseException:
        for process in processes:  # a failed run's other process would go on with the queued trials
            if process.is_alive():
                process.terminate()
        raise
    finally:
        _end(processes)
    return wall, [a for a in answers if a is not None]


def measure(folder: Path, trials_n: int, epochs: int, cold_processes: bool = False, cold_first: bool = True) -> dict:
    """One measurement: half the trials in process, then in plain processes side by side, the Ray
    sweep of all of them (with ``cold_processes``, and all of them in fresh processes before it or,
    without ``cold_first``, after it), the other half side by side, then in process (this
    machine's speed drifts by tens of percent within minutes; a linear drift cancels out in each
    sum)."""
    from orchestrator.results import read_rows
    from orchestrator.spec import expand_trials, load_spec
    from orchestrator.sweep import run_command

    cpus = os.cpu_count() or 1
    path = make_spec(folder, trials_n, epochs)
    trials = expand_trials(load_spec(path)[0])
    torch.set_num_threads(1)
    # a warm process: the first trial of a process imports its dataset and optimizer code (about
    # 3 s), which the sweep's workers pay once each; the in-process time does not count it
    warm = expand_trials(load_spec(make_spec(folder / "warm", 1, 1))[0])
    run_in_process(warm)
    plain = PlainProcesses(cpus, warm)
    half = len(trials) // 2
    try:
        before = run_in_process(trials[:half])
        plain_before, plain_each = plain.run(trials[:half])
        cold = run_cold_processes(cpus, trials) if cold_processes and cold_first else None
        start, wall_start = time.perf_counter(), time.time()
        summary = run_command(path)
        through_ray, wall_end = time.perf_counter() - start, time.time()
        if cold_processes and not cold_first:
            cold = run_cold_processes(cpus, trials)
        plain_after, plain_each_after = plain.run(trials[half:])
        after = run_in_process(trials[half:])
    finally:
        plain.close()
    rows = read_rows(Path(summary["results_dir"]).parent)
    in_process, side_by_side = before + after, plain_before + plain_after
    plain_each += plain_each_after
    through = [r["wall_time_s"] for r in rows]
    extra = {} if cold is None else {
        "cold_processes_s": round(cold[0], 2),
        "cold_machine_parallel_efficiency": round(in_process / (cpus * cold[0]), 3),
        "ray_vs_cold_processes": round(cold[0] / through_ray, 3),
        "per_trial_cold_processes_s": round(sum(cold[1]) / len(cold[1]), 2),
        "cold_processes_ran": "before the sweep" if cold_first else "after the sweep",
    }
    return {
        "in_process_s": round(in_process, 2), "ray_s": round(through_ray, 2),
        "parallel_efficiency": round(in_process / (cpus * through_ray), 3),
        "plain_processes_s": round(side_by_side, 2),
        "machine_parallel_efficiency": round(in_process / (cpus * side_by_side), 3),
        "ray_vs_plain_processes": round(side_by_side / through_ray, 3),
        "per_trial_plain_processes_s": round(sum(plain_each) / len(plain_each), 2),
        "ok_trials": summary["ok"],
        "per_trial_in_process_s": round(in_process / len(trials), 2),
        "per_trial_in_process_before_after_s": [round(before / half, 2), round(after / (len(trials) - half), 2)],
        # where the Ray sweep's time goes: until the first trial starts (Ray and Tune start, a
        # worker's imports), after the last one ends (results, Ray's shutdown), and inside trials
        "ray_until_first_trial_s": round(min(r["started_at"] for r in rows) - wall_start, 2),
        "ray_after_last_trial_s": round(wall_end - max(r["finished_at"] for r in rows), 2),
        "per_trial_through_ray_s": round(sum(through) / len(through), 2),
        "trial_through_ray_min_max_s": [round(min(through), 2), round(max(through), 2)],
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="number of identical tiny trials")
    parser.add_argument("--epochs", type=int, default=10, help="search and retrain epochs per trial (~30 s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measurements one after another; the efficiency printed is their median")
    parser.add_argument("--cold-processes", action="store_true",
                        help="also run the trials in fresh plain processes (no Ray), timed from their start")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.trials < 2 or args.epochs < 1 or args.repeats < 1:
        parser.error("--trials must be >= 2, --epochs and --repeats >= 1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runs = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            runs.append(measure(Path(d), args.trials, args.epochs, args.cold_processes, cold_first=repeat % 2 == 0))
    result = {"trials": args.trials, "epochs": args.epochs, "cpus": os.cpu_count() or 1}
    if len(runs) == 1:
        result.update(runs[0])
    else:
        keys = ["parallel_efficiency", "machine_parallel_efficiency", "ray_vs_plain_processes"]
        if args.cold_processes:
            keys += ["cold_machine_parallel_efficiency", "ray_vs_cold_processes"]
        for key in keys:
            result[key] = statistics.median(r[key] for r in runs)
            result[f"{key}_each"] = [r[key] for r in runs]
        result["runs"] = runs
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
