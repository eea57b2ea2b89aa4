"""Where a sweep's CPU goes: every process of a running ``mgas run``, its CPU time in a window.

    python -m benchmarks.diagnostics.process_cpu [--trials 4] [--epochs 10] [--window 25 65] [--json]

Runs ``mgas run`` on the trials of ``benchmarks.orchestration`` (digits DARTS, 1 CPU each) and
samples the CPU time (user + system) of the driver and of every process it starts, Ray's daemons
and the trial workers among them, from ``/proc`` about once a second. Prints, for the window of
seconds after the start (by default the middle of a 4-trial sweep, while both trials of a lane
pair run), each process's CPU seconds and share of one core, the trial workers' mean share of
their core, and the rest: Ray's processes and the driver together, and the machine's other work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

TRIAL_WORKER = "ray::ImplicitFunc"  # Tune's function trainable (".train" while it runs a trial)


def label(process: psutil.Process, root: int) -> str:
    """A short name: Ray's own process titles (``ray::...``), a Python script's file name, else the
    executable's name; the command that was started is ``driver``."""
    if process.pid == root:
        return "driver"
    name = process.name()
    args = process.cmdline()
    if args and args[0].startswith("ray::"):
        return args[0].split()[0]
    scripts = [Path(a).name for a in args[1:] if a.endswith(".py")]
    return scripts[0] if "python" in name and scripts else name


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def sample_tree(command: list[str], window: tuple[float, float], interval_s: float = 1.0) -> dict:
    """Run ``command``; return the CPU seconds of it and each descendant within ``window`` (seconds
    after the start), with the machine's busy seconds in the same window."""
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    seen: dict[int, tuple[str, float]] = {}  # the last name and CPU time read of each process
    at_start: dict[int, float] | None = None
    machine_start = machine_end = window_started = window_ended = 0.0
    at_end: dict[int, tuple[str, float]] | None = None
    while proc.poll() is None:
        for p in [root, *root.children(recursive=True)]:
            try:
                seen[p.pid] = (label(p, proc.pid), cpu_seconds(p))  # Ray retitles its workers as they start
            except psutil.Error:  # ended between listing and reading
                continue
        elapsed = time.monotonic() - start
        if at_start is None and elapsed >= window[0]:
            at_start, machine_start = {pid: cpu for pid, (_, cpu) in seen.items()}, machine_busy_seconds()
            window_started = elapsed
        if at_start is not None and at_end is None and elapsed >= window[1]:
            at_end, machine_end, window_ended = dict(seen), machine_busy_seconds(), elapsed
        time.sleep(interval_s)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {proc.returncode}")
    if at_start is None or at_end is None:
        raise SystemExit(f"the command ended after {time.monotonic() - start:.0f} s, before the window's end")
    seconds = window_ended - window_started
    processes = sorted(({"pid": pid, "process": name, "cpu_s": round(cpu - at_start.get(pid, 0.0), 2),
                         "share_of_a_core": round((cpu - at_start.get(pid, 0.0)) / seconds, 3)}
                        for pid, (name, cpu) in at_end.items() if cpu - at_start.get(pid, 0.0) > 0.005),
                       key=lambda r: -r["cpu_s"])
    return {"window_s": round(seconds, 1), "processes": processes,
            "machine_busy_s": round(machine_end - machine_start, 2)}


def summarize(sampled: dict) -> dict:
    rows = sampled["processes"]
    workers = [r for r in rows if r["process"].startswith(TRIAL_WORKER)]
    ours = sum(r["cpu_s"] for r in rows if not r["process"].startswith(TRIAL_WORKER))
    seconds = sampled["window_s"]
    return {**sampled,
            "trial_worker_share_of_its_core": round(sum(r["share_of_a_core"] for r in workers) / max(len(workers), 1),
                                                    3),
            "ray_and_driver_share_of_a_core": round(ours / seconds, 3),
            "outside_the_sweep_share_of_a_core": round((sampled["machine_busy_s"] - sum(r["cpu_s"] for r in rows))
                                                       / seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials of benchmarks.orchestration's sweep")
    parser.add_argument("--epochs", type=int, default=10, help="search and retrain epochs per trial")
    parser.add_argument("--window", type=float, nargs=2, default=(25.0, 65.0), metavar=("FROM", "TO"),
                        help="seconds after the start of `mgas run`")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.trials < 1 or args.epochs < 1 or not 0 <= args.window[0] < args.window[1]:
        parser.error("--trials and --epochs must be >= 1 and the window FROM < TO, both >= 0")
    from benchmarks.orchestration import make_spec

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as d:
        spec = make_spec(Path(d), args.trials, args.epochs)
        result = summarize(sample_tree([sys.executable, "-m", "orchestrator.cli", "run", str(spec)],
                                       tuple(args.window)))
    if args.json:
        print(json.dumps(result))
        return
    for r in result["processes"]:
        print(f"{r['cpu_s']:8.2f} s {100 * r['share_of_a_core']:5.1f} %  {r['pid']:>7}  {r['process']}")
    for key in ("window_s", "trial_worker_share_of_its_core", "ray_and_driver_share_of_a_core",
                "outside_the_sweep_share_of_a_core"):
        print(f"{key}: {result[key]}")


if __name__ == "__main__":
    main()
