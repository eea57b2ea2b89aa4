"""Timeline of an embedded Ray sweep's start: where the seconds before the first trial go.

    python -m benchmarks.diagnostics.sweep_start [--trials 2] [--epochs 1] [--json]

Runs the sweep of ``benchmarks.orchestration`` (``--trials`` identical digits DARTS trials) with
``mgas``'s own ``run_command`` and prints, in seconds from the call, when the driver's phases
began and ended (``init_ray``, Tune's ``Tuner.fit``), when each of Ray's processes first showed
with a new title (polled from ``/proc`` every 20 ms, with the CPU seconds it had used by then: a
trial worker shows as ``ray::IDLE`` once Python and ``import ray`` are done, and as
``ray::ImplicitFunc.__init__`` once Tune's trainable class, with ``ray.tune`` and the trial code,
is loaded), and when each trial started and finished (the rows' ``started_at`` and
``finished_at``). Only this process's sweep is watched: processes are those whose parent chain
leads to it. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _title(argv: list[str]) -> str:
    """A process's command line, its program named without its install path (which can be long
    enough to push the name past the cut), at most 80 characters. Empty between fork and exec."""
    program, *args = argv or [""]
    if "/" in program and " " not in program:  # a path, not a title set by setproctitle
        program = program.rsplit("/", 1)[1]
    return " ".join([program, *args]).strip()[:80]


def _descendants(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (title, CPU seconds) of every process below ``root``."""
    parents, info = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        parents[int(entry)] = int(fields[1])
        info[int(entry)] = (_title(argv), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    out = {}
    for pid in info:
        up, seen = pid, set()
        while up in parents and up not in seen and up != root:
            seen.add(up)
            up = parents[up]
        if up == root and pid != root:
            out[pid] = info[pid]
    return out


class ProcessWatch:
    """Polls ``/proc`` in a thread; records each (pid, title) the first time it is seen."""

    def __init__(self, t0: float, interval_s: float = 0.02) -> None:
        self.t0, self.interval_s = t0, interval_s
        self.seen: dict[tuple[int, str], tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            now = time.time() - self.t0
            for pid, (title, cpu) in _descendants(me).items():
                if title:  # empty between fork and exec
                    self.seen.setdefault((pid, title), (now, cpu))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _timed(events: list[tuple[float, str]], t0: float, name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        events.append((time.time() - t0, f"{name} begins"))
        try:
            return fn(*args, **kwargs)
        finally:
            events.append((time.time() - t0, f"{name} ends"))
    return wrapper


def timeline(trials: int, epochs: int) -> list[dict[str, Any]]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray import tune

    import orchestrator.ray_runtime as ray_runtime
    from benchmarks.orchestration import make_spec
    from orchestrator.results import read_rows
    from orchestrator.sweep import run_command

    events: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        path = make_spec(Path(folder), trials, epochs)
        t0 = time.time()
        init_ray, fit = ray_runtime.init_ray, tune.Tuner.fit
        ray_runtime.init_ray = _timed(events, t0, "init_ray", init_ray)  # run_sweep imports it at call time
        tune.Tuner.fit = _timed(events, t0, "Tuner.fit", fit)  # type: ignore[method-assign]
        try:
            with ProcessWatch(t0) as watch:
                summary = _timed(events, t0, "run_command", run_command)(path)
        finally:
            ray_runtime.init_ray, tune.Tuner.fit = init_ray, fit  # type: ignore[method-assign]
        rows = read_rows(Path(summary["results_dir"]).parent)
    out = [{"t_s": round(t, 3), "event": name} for t, name in events]
    out += [{"t_s": round(t, 3), "event": f"process {pid}: {title}", "cpu_s": round(cpu, 2)}
            for (pid, title), (t, cpu) in watch.seen.items()]
    for row in rows:
        out.append({"t_s": round(row["started_at"] - t0, 3), "event": f"trial {row['trial_id']} starts"})
        out.append({"t_s": round(row["finished_at"] - t0, 3), "event": f"trial {row['trial_id']} ends"})
    return sorted(out, key=lambda e: e["t_s"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.trials < 1 or args.epochs < 1:
        p.error("--trials and --epochs must be >= 1")
    events = timeline(args.trials, args.epochs)
    if args.json:
        print(json.dumps(events))
        return
    for e in events:
        cpu = f"  (cpu {e['cpu_s']:.2f} s)" if "cpu_s" in e else ""
        print(f"{e['t_s']:8.3f}  {e['event']}{cpu}")


if __name__ == "__main__":
    main()
