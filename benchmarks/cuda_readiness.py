"""Issue 17's GPU measurements in one command, for a short lease of a GPU machine.

    python -m benchmarks.cuda_readiness --official-darts PATH --official-mgas PATH --out-dir DIR

Runs, one fresh process each and in this order, until ``--budget-s`` is spent (what did not start
in time is recorded as skipped, a run that fails or outlasts ``--run-timeout-s`` as such, and the
rest goes on):

1. every registered method's supernet step (``--methods``, default all; ``benchmarks.supernet``,
   the paper's search shape unless the
   shape flags say otherwise) in each precision and memory format: fp32 and (on CUDA) bf16
   autocast, contiguous and channels-last; images/s and peak memory
   (``torch.cuda.max_memory_allocated`` on CUDA);
2. ours beside the official DARTS and MG_DARTS steps (``--official-darts``, ``--official-mgas``:
   checkouts the user supplies; left out when not given);
3. a CIFAR-10-shaped synthetic search epoch of ``--epoch-method`` (default DARTS, first order:
   its benchmark settings; ``benchmarks.search_epoch``) with the defaults, extrapolated to the
   paper's 50 epochs (the goal: at most 2 hours), then with that method's fastest variant of step 1
   when that is not the default (when the method is one of ``--methods``).

It writes ``readiness.json`` (every run: command, status, seconds, result or error) and
``readiness.md`` (the tables) to ``--out-dir``, each through a temporary file and a rename, and
prints the JSON (``--json``) or the tables. A variant "wins" over the default (what a search uses
unless told otherwise: fp32, and channels-last, which ``memory_format: auto`` resolves to with the
fast implementation) when it is at least ``--win-ratio`` (1.05) times as fast: below that, one run of each
cannot tell it from noise. ``--device cpu`` runs the same plan on a CPU (fp32 only), which is how
the tests check it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.official.compare import OFFICIAL_KINDS
from benchmarks.search_epoch import CIFAR10_SEARCH_IMAGES
from mgas_core.methods.registry import get_method, method_names
from mgas_core.settings.run import DEFAULT_METHOD

FORMATS = ("contiguous", "channels_last")
SHAPE_FLAGS = ("layers", "channels", "batch", "resolution")


@dataclass
class Run:
    name: str
    kind: str  # "step", "official", "epoch"
    cmd: list[str]
    method: str
    variant: tuple[str, str] | None = None
    status: str = "pending"  # ok, failed, timeout, skipped
    seconds: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        out = {"name": self.name, "kind": self.kind, "method": self.method, "cmd": self.cmd, "status": self.status,
               "seconds": self.seconds, "result": self.result, "error": self.error}
        if self.variant:
            out["precision"], out["memory_format"] = self.variant
        return out


def default_variant() -> tuple[str, str]:
    """What a search uses unless told otherwise: its default precision and the memory format its
    ``memory_format: auto`` resolves to (channels-last with the fast implementation)."""
    import torch

    from mgas_core.methods.protocol import resolve_memory_format
    from mgas_core.methods.registry import build_settings

    search = build_settings("paper").search
    fmt = "channels_last" if resolve_memory_format(search) == torch.channels_last else "contiguous"
    return search.precision, fmt


def precisions(device: str) -> tuple[str, ...]:
    return ("fp32", "bf16") if device == "cuda" else ("fp32",)


def shape_args(args: argparse.Namespace, keys: tuple[str, ...] = SHAPE_FLAGS) -> list[str]:
    return [x for key in keys if getattr(args, key) is not None for x in (f"--{key}", str(getattr(args, key)))]


def step_runs(args: argparse.Namespace) -> list[Run]:
    common = ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
              *shape_args(args), "--json"]
    runs = []
    for method in args.methods:
        for precision in precisions(args.device):
            for fmt in FORMATS:
                cmd = [sys.executable, "-m", "benchmarks.supernet", "--method", method, "--precision", precision,
                       "--memory-format", fmt, *common]
                runs.append(Run(f"{method} {precision} {fmt}", "step", cmd, method, (precision, fmt)))
    return runs


def official_runs(args: argparse.Namespace) -> list[Run]:
    runs = []
    for kind in OFFICIAL_KINDS:
        path = getattr(args, f"official_{kind}")
        if path is None or kind not in args.methods:
            continue
        cmd = [sys.executable, "-m", "benchmarks.supernet", f"--official-{kind}", str(path), "--device", args.device,
               "--steps", str(args.steps), "--warmup", str(args.warmup), *shape_args(args), "--json"]
        runs.append(Run(f"{kind} vs official", "official", cmd, kind))
    return runs


def epoch_run(args: argparse.Namespace, variant: tuple[str, str]) -> Run:
    method = args.epoch_method
    cmd = [sys.executable, "-m", "benchmarks.search_epoch", "--method", method, "--device", args.device,
           "--images", str(args.epoch_images), "--epochs", str(args.epoch_count),
           "--precision", variant[0], "--memory-format", variant[1],
           *shape_args(args, ("layers", "channels", "batch")), "--json"]
    return Run(f"{method} epoch {variant[0]} {variant[1]}", "epoch", cmd, method, variant)


def execute(run: Run, deadline: float, run_timeout_s: float) -> None:
    """Run one command in a fresh process; record its last JSON line, or why there is none."""
    left = deadline - time.monotonic()
    if left <= 0:
        run.status, run.error = "skipped", "the budget (--budget-s) was spent before it could start"
        return
    start = time.monotonic()
    try:
        done = subprocess.run(run.cmd, capture_output=True, text=True, timeout=min(left, run_timeout_s), check=False)
    except subprocess.TimeoutExpired:
        run.status, run.seconds = "timeout", round(time.monotonic() - start, 1)
        run.error = f"still running after {run.seconds} s"
        return
    run.seconds = round(time.monotonic() - start, 1)
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        try:
            run.result, run.status = json.loads(lines[-1]), "ok"
            return
        except json.JSONDecodeError:
            pass
    tail = [ln for ln in (done.stderr + "\n" + done.stdout).splitlines() if ln.strip()][-3:]
    run.status, run.error = "failed", f"exit status {done.returncode}: " + " | ".join(tail)[-600:]


def variant_table(runs: list[Run], win_ratio: float, default: tuple[str, str]) -> dict[str, Any]:
    """Per method: each variant's images/s and peak memory, as ratios to the default variant, and
    the fastest variant, which wins when it is ``win_ratio`` times as fast as the default."""
    out: dict[str, Any] = {}
    for method in dict.fromkeys(r.method for r in runs if r.kind == "step"):
        ok = {r.variant: r.result for r in runs if r.kind == "step" and r.method == method and r.status == "ok"}
        base = ok.get(default)
        rows = []
        for variant, result in ok.items():
            assert result is not None and variant is not None
            rows.append({"precision": variant[0], "memory_format": variant[1], "default": variant == default,
                         "images_per_s": result["images_per_s"], "peak_mem_mb": result["peak_mem_mb"],
                         "speed_vs_default": round(result["images_per_s"] / base["images_per_s"], 3) if base else None,
                         "memory_vs_default": round(result["peak_mem_mb"] / base["peak_mem_mb"], 3) if base else None})
        best = max(rows, key=lambda r: r["images_per_s"]) if rows else None
        wins = bool(best and best["speed_vs_default"] is not None and best["speed_vs_default"] >= win_ratio
                    and (best["precision"], best["memory_format"]) != default)
        out[method] = {"variants": rows, "fastest": best and {"precision": best["precision"],
                                                              "memory_format": best["memory_format"]},
                       "fastest_wins_over_default": wins}
    return out


def summarise(runs: list[Run], args: argparse.Namespace, started: float) -> dict[str, Any]:
    official = {r.method: ({k: r.result[k] for k in ("speed_vs_official", "memory_vs_official",
                                                     "activation_vs_official", "official_commit")}
                           if r.status == "ok" and r.result else {"status": r.status, "error": r.error})
                for r in runs if r.kind == "official"}
    epochs = [{"precision": r.variant[0], "memory_format": r.variant[1], "status": r.status,
               **({k: r.result[k] for k in ("epoch_s", "cifar10_epoch_s", "search_hours", "within_goal",
                                            "train_images", "steps_per_epoch", "peak_mem_mb")}
                  if r.status == "ok" and r.result else {"error": r.error})}
              for r in runs if r.kind == "epoch" and r.variant]
    device_names = {r.result.get("device_name") for r in runs if r.status == "ok" and r.result} - {None}
    return {"device": args.device, "device_names": sorted(device_names), "steps": args.steps,
            "wall_s": round(time.monotonic() - started, 1), "budget_s": args.budget_s,
            "counts": {s: sum(r.status == s for r in runs) for s in ("ok", "failed", "timeout", "skipped")},
            "default_variant": list(args.default_variant), "win_ratio": args.win_ratio,
            "variants": variant_table(runs, args.win_ratio, args.default_variant),
            "official": official, "search_epoch_method": args.epoch_method,
            "search_epoch_label": style.label if (style := get_method(args.epoch_method).style) else args.epoch_method,
            "search_epoch": epochs, "runs": [r.record() for r in runs]}


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# CUDA readiness ({summary['device']}: {', '.join(summary['device_names']) or 'no run finished'})", "",
             "| method | precision | memory format | images/s | peak MB | speed vs default | memory vs default |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for method, table in summary["variants"].items():
        for row in table["variants"]:
            fmt = row["memory_format"] + (" (default)" if row["default"] else "")
            lines.append(f"| {method} | {row['precision']} | {fmt} | {row['images_per_s']} | {row['peak_mem_mb']} | "
                         f"{row['speed_vs_default']} | {row['memory_vs_default']} |")
    lines += ["", "| method | fastest variant | wins over the default |", "| --- | --- | --- |"]
    for method, table in summary["variants"].items():
        fastest = table["fastest"]
        name = f"{fastest['precision']} {fastest['memory_format']}" if fastest else "none ran"
        lines.append(f"| {method} | {name} | {'yes' if table['fastest_wins_over_default'] else 'no'} |")
    if summary["official"]:
        lines += ["", "| method | speed vs official | memory vs official |", "| --- | --- | --- |"]
        for method, figures in summary["official"].items():
            lines.append(f"| {method} | {figures.get('speed_vs_official', figures.get('status'))} | "
                         f"{figures.get('memory_vs_official', figures.get('error', ''))} |")
    if summary["search_epoch"]:
        lines += ["", f"| {summary['search_epoch_label']} epoch | epoch s (measured) | CIFAR-10 epoch s | "
                  "50 epochs h | within 2 h |",
                  "| --- | --- | --- | --- | --- |"]
        for e in summary["search_epoch"]:
            lines.append(f"| {e['precision']} {e['memory_format']} | {e.get('epoch_s', e['status'])} | "
                         f"{e.get('cifar10_epoch_s', '')} | {e.get('search_hours', '')} | {e.get('within_goal', '')} |")
    lines += ["", f"Runs: {summary['counts']}, {summary['wall_s']} s of a {summary['budget_s']} s budget."]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def plan_and_run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + args.budget_s
    runs = step_runs(args) + official_runs(args)
    for run in runs:
        execute(run, deadline, args.run_timeout_s)
    if args.epoch_method in args.methods and args.epoch_images > 0:
        epoch = [epoch_run(args, args.default_variant)]
        fastest = variant_table(runs, args.win_ratio, args.default_variant).get(args.epoch_method, {})
        if fastest.get("fastest_wins_over_default"):
            epoch.append(epoch_run(args, (fastest["fastest"]["precision"], fastest["fastest"]["memory_format"])))
        for run in epoch:
            execute(run, deadline, args.run_timeout_s)
        runs += epoch
    return summarise(runs, args, started)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    methods = method_names(searching_only=True)
    p.add_argument("--methods", default=",".join(methods), help=f"comma-separated, of {', '.join(methods)} "
                                                                "(default all)")
    p.add_argument("--epoch-method", default=DEFAULT_METHOD, choices=methods,
                   help=f"the method of the search epoch (default {DEFAULT_METHOD}); run when it is one of --methods")
    p.add_argument("--official-darts", metavar="PATH", help="a checkout of quark0/darts")
    p.add_argument("--official-mgas", metavar="PATH", help="a git clone of lxy12357/MG_DARTS")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each supernet run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    for key in SHAPE_FLAGS:
        p.add_argument(f"--{key}", type=int, help="the step's shape (default: the paper's search shape)")
    p.add_argument("--epoch-images", type=int, default=CIFAR10_SEARCH_IMAGES,
                   help="training images of each measured search epoch (0: no epoch run)")
    p.add_argument("--epoch-count", type=int, default=2, help="epochs measured per epoch run")
    p.add_argument("--budget-s", type=float, default=540.0, help="no run starts after this many seconds")
    p.add_argument("--run-timeout-s", type=float, default=240.0, help="a run still going after this is stopped")
    p.add_argument("--win-ratio", type=float, default=1.05)
    p.add_argument("--out-dir", type=Path, help="where readiness.json and readiness.md are written")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    searching = method_names(searching_only=True)
    unknown = [m for m in methods if m not in searching]
    if unknown or not methods:
        p.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; allowed: {', '.join(searching)}")
    args.methods = tuple(dict.fromkeys(methods))
    args.default_variant = default_variant()
    if args.steps < 1 or args.warmup < 0 or args.epoch_images < 0 or args.epoch_count < 1:
        p.error("--steps and --epoch-count must be >= 1, --warmup and --epoch-images >= 0")
    if 0 < args.epoch_images < 10:
        p.error("--epoch-images must be 0 (no epoch run) or at least 10")
    for kind in OFFICIAL_KINDS:
        path = getattr(args, f"official_{kind}")
        if path is not None and not Path(path).is_dir():
            p.error(f"--official-{kind}: {path} is not a folder (pass a checkout of the official repository)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    summary = plan_and_run(args)
    text = markdown(summary)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(args.out_dir / "readiness.json", json.dumps(summary, indent=1) + "\n")
        write_atomically(args.out_dir / "readiness.md", text)
    print(json.dumps(summary) if args.json else text)


if __name__ == "__main__":
    main()
