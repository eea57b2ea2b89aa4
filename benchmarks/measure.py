"""What the step benchmarks share: their shape flags, the methods' flags (from the registry), the
settings of a benchmarked method, memory readings, the figures every step reports, and running one
side of a comparison in a fresh process.

``benchmarks.supernet`` (ours), ``benchmarks.official.step`` (the official code's step) and
``benchmarks.diagnostics.step_profile`` import it; it imports none of them.

A method's own flags (``--order``, ``--subgraphs``, ``--stages``, ...) are the ones it declares in
:attr:`~mgas_core.methods.protocol.SearchMethod.cli_flags` (``mgas search`` offers the same), so a
method registered anywhere is benchmarked with its flags and no edit here. What its benchmarked
step is comes from the method too: :attr:`~mgas_core.methods.protocol.SearchMethod.benchmark_overrides`
(settings on top of the ``paper`` preset) and
:meth:`~mgas_core.methods.protocol.SearchMethod.prepare_benchmark` (the state a step is timed in:
``--stage``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from typing import Any

from pydantic import ValidationError

from mgas_common.errors import format_validation_error
from mgas_core.methods.registry import build_settings, get_method, method_flags, method_names, result_values
from mgas_core.metrics import process_peak_rss_mb
from mgas_core.settings.run import DEFAULT_METHOD, RunSettings

PAPER_SHAPE = (8, 16, 64)
"""The DARTS paper's search shape (cells, C, batch), the default of every step benchmark here."""
SHAPE_FLAGS = ("layers", "channels", "batch", "resolution", "steps", "warmup", "threads", "device")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def step_figures(elapsed: float, steps: int, batch: int, peak: float, baseline: float) -> dict[str, float]:
    """The figures every step benchmark reports (ours and the official code's alike)."""
    return {
        "step_s": round(elapsed / steps, 4),
        "images_per_s": round(batch * steps / elapsed, 2),
        "peak_mem_mb": round(peak, 1),
        "baseline_mem_mb": round(baseline, 1),
        "activation_mb": round(peak - baseline, 1),
        "process_peak_rss_mb": round(process_peak_rss_mb(), 1),
    }


def add_shape_arguments(p: argparse.ArgumentParser, note: str, defaults: tuple[int, int, int] | None) -> None:
    """The step's shape and run flags both step benchmarks take (``SHAPE_FLAGS``); ``--layers``,
    ``--channels`` and ``--batch`` are left None for the caller to fill, ``note`` says how."""
    for flag, what, default in zip(("--layers", "--channels", "--batch"), ("cells", "initial channels", "batch size"),
                                   defaults or ("", "", "")):
        p.add_argument(flag, type=int, help=f"{what}: {note.format(default)}")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_method_arguments(p: argparse.ArgumentParser, *, method_default: str | None = DEFAULT_METHOD,
                         stage: bool = True) -> None:
    """``--method`` (any registered method), every registered method's own flags (as ``mgas
    search`` offers them; left None unless given) and, with ``stage``, ``--stage`` (alias
    ``--mgas-stage``): the stage whose step is timed (:meth:`SearchMethod.prepare_benchmark`)."""
    p.add_argument("--method", default=method_default, choices=method_names(searching_only=True),
                   help=f"the method benchmarked (default {method_default or DEFAULT_METHOD})")
    for dest, (path, kind, choices, help_text) in method_flags().items():
        flag = "--" + dest.replace("_", "-")  # one the benchmark has too is argparse's "conflicting option string"
        override = get_method(path.split(".")[1]).benchmark_overrides.get(path)
        if override is not None:  # the method's benchmarked step, not the setting's default
            help_text = re.sub(r"\(default [^)]*\)$", f"(default here {override})", help_text)
        p.add_argument(flag, dest=dest, type=_csv if kind is list else kind, choices=choices, help=help_text)
    if stage:
        p.add_argument("--stage", "--mgas-stage", dest="stage", type=int, default=1,
                       help="the search stage whose step is timed, 1-based (a method with S stages: 1 to S + 1, "
                            "the final phase; default 1)")


def method_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of the benchmarked method: its :attr:`benchmark_overrides`, then every method
    flag given (dotted path -> value)."""
    given = {path: getattr(args, dest) for dest, (path, *_rest) in method_flags().items()
             if getattr(args, dest, None) is not None}
    return {**get_method(args.method).benchmark_overrides, **given}


def benchmark_settings(overrides: dict[str, Any]) -> RunSettings:
    """The ``paper`` preset with ``overrides``; a setting the method cannot run with is a one-line
    error (exit status 1), not a traceback."""
    try:
        return build_settings("paper", overrides)
    except ValidationError as exc:
        raise SystemExit(f"error: {format_validation_error(exc)}") from None


def method_figures(settings: RunSettings) -> dict[str, Any]:
    """The method's settings a result reports: every registered method's result columns (as in a
    sweep's rows: None for the other methods', lists joined with commas), then the values of the
    method's own flags that are not result columns (DARTS: ``order``)."""
    dumped = settings.model_dump(mode="json")
    name = settings.search.method
    columns = result_values(dumped)
    own = {dest: dumped["search"][name][dest] for dest, (path, *_rest) in method_flags().items()
           if path.split(".")[1] == name and dest not in columns}
    return {**columns, **own}


def argv_without(argv: list[str], flag: str, takes_value: bool | str) -> list[str]:
    """``argv`` less ``flag`` and its value (``takes_value``: True for one value, ``"+"`` for
    every value up to the next option)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == flag:
            if takes_value == "+":
                while i < len(argv) and not argv[i].startswith("-"):
                    i += 1
            elif takes_value:
                i += 1
            continue
        if not a.startswith(flag + "="):
            out.append(a)
    return out


def run_json(cmd: list[str]) -> dict[str, Any]:
    """Run one side in a fresh process (its stderr goes straight to ours); its last stdout line."""
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode < 0:
        raise SystemExit(f"error: `{' '.join(cmd[1:])}` was killed by signal {-done.returncode}"
                         + (" (the kernel's out-of-memory killer, most likely: try a smaller --batch)"
                            if done.returncode == -9 else ""))
    if done.returncode != 0:
        raise SystemExit(f"error: `{' '.join(cmd[1:])}` exited with status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])
