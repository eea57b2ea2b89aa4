"""Search-step throughput and peak memory of a supernet, one configuration per process.

    python -m benchmarks.supernet --method darts --layers 8 --channels 16 --batch 64 --resolution 32 \
        --steps 3 --threads 1 --device cpu --impl fast --json
    python -m benchmarks.supernet --compare impl ...        # fast vs reference, each in a fresh process
    python -m benchmarks.supernet --method mgas --mgas-stage 1 --stages 3 ...   # MGAS stage-1 supernet

A step is the method's full ``train_step`` on synthetic data: forward, backward and optimiser
steps (DARTS/MSG-DAS also run their alpha step on a second batch). ``images_per_s`` counts the
images of the weight step. ``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` on CUDA and the
process's peak RSS on CPU; ``activation_mb`` is that peak minus the memory held before the first
step (model, optimiser, data), which isolates what the step itself needs.

Against the official code (issue 17), ours and the official step each in a fresh process, one after
the other, with the same shape and the same definition of a step (``benchmarks.official_step``):

    python -m benchmarks.supernet --official-darts PATH --threads 1 --steps 2 --json   # quark0/darts
    python -m benchmarks.supernet --official-mgas PATH --threads 1 --steps 2 --json    # lxy12357/MG_DARTS

    python -m benchmarks.supernet --official-mgas PATH --stages 3 --mgas-stage 2 --threads 1 --json

``PATH`` is a checkout of the official repository (nothing of it is vendored). DARTS: first order
(``--method darts --order 1``). MGAS: a search step, every granularity, lambda > 0, of the whole
network (``--stages 1``: the official final phase, ``train()``) or of stage ``k`` of the official
three-stage search (``--stages 3 --mgas-stage k``, k = 1, 2, 3: cells ``0 .. L//3 - 1``,
``0 .. 2L//3 - 1`` or all and the stage's head, ``train_local(..., stage_index=k)``; stages 1 and 2
need ``--resolution 32``, the input the official stage heads are built for;
``benchmarks.official_mgas``). Both sides must run the same cells. The shape defaults to the
paper's search shape, 8 cells, C=16, batch 64, for both methods (MG-DARTS's script searches at
batch 96, where its CPU step needs more than the 24 GB of this project's machines and is killed:
``--batch 96`` asks for it). It prints
``{"ours", "official", "speed_vs_official" (our images/s / theirs), "memory_vs_official" (our peak
/ theirs), "activation_vs_official", "official_repo", "official_commit"}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from mgas_core.config import build_settings
from mgas_core.data import DatasetInfo
from mgas_core.methods import create_method
from mgas_core.methods.base import method_names, result_values
from mgas_core.metrics import PeakMemory, process_peak_rss_mb

if TYPE_CHECKING:
    from benchmarks.official_step import OfficialSources

MGAS_BENCH_LAMBDA = 1e-3  # the size-term weight of a benchmarked MGAS step (> 0: every loss term)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    info = DatasetInfo("synthetic", 10, 3, args.resolution, "cifar")
    overrides: dict[str, Any] = {
        "search.method": args.method, "search.layers": args.layers, "search.channels": args.channels,
        "search.batch_size": args.batch, "search.impl": args.impl, "search.darts.order": args.order,
        "search.msg_das.subgraphs": args.subgraphs, "search.mgas.stages": args.stages,
        "search.memory_format": args.memory_format, "search.precision": args.precision,
        "search.checkpoint_cells": args.checkpoint_cells,
    }
    run_settings = build_settings("paper", overrides)
    settings = run_settings.search
    torch.manual_seed(0)
    method = create_method(settings, info, device, seed=0)
    if args.method == "mgas":  # a search step of the requested stage (lambda > 0: every loss term)
        method.start_search_phase(args.mgas_stage, lam=MGAS_BENCH_LAMBDA)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.resolution, args.resolution)
    batches = [(torch.randn(shape, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
               for _ in range(2)]
    arch_batch = batches[1] if method.bilevel else None
    method.begin_epoch(0)
    # memory held before any step (model, optimiser, data): the peak above it is what a step needs
    baseline = current_rss_mb() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
    memory = PeakMemory(device)
    for _ in range(args.warmup):
        method.train_step(batches[0], arch_batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        method.train_step(batches[0], arch_batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = memory.peak_mb()
    return {
        "method": args.method, "impl": args.impl, "layers": args.layers, "channels": args.channels,
        "batch": args.batch, "resolution": args.resolution, "steps": args.steps, "threads": args.threads,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "memory_format": "channels_last" if method.memory_format == torch.channels_last else "contiguous",
        "precision": args.precision, "order": args.order,
        **result_values(run_settings.model_dump(mode="json")),  # the method's own columns (registry)
        "mgas_stage": args.mgas_stage if hasattr(method, "stage") else None,
        "cells_run": getattr(method, "upto", args.layers),
        **step_figures(elapsed, args.steps, args.batch, peak, baseline),
    }


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


def _argv_without(argv: list[str], flag: str, takes_value: bool) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == flag:
            skip = takes_value
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
        del i
    return out


def compare(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run each variant of ``args.compare`` in its own fresh process, in one run; report ratios."""
    variants = {
        "impl": [("reference", ["--impl", "reference", "--memory-format", "contiguous"]), ("fast", ["--impl", "fast"])],
        "stages": [("single_stage", ["--stages", "1", "--mgas-stage", "1"]),
                   ("stage1_of_3", ["--stages", "3", "--mgas-stage", "1"])],
        "subgraphs": [(f"msg_das_k{k}", ["--method", "msg_das", "--subgraphs", str(k)]) for k in (1, 2, 4)]
        + [("darts", ["--method", "darts"])],
    }[args.compare]
    base = _argv_without(argv, "--compare", True)
    results = {}
    for name, extra in variants:
        out = subprocess.run([sys.executable, "-m", "benchmarks.supernet", *base, *extra, "--json"],
                             capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    names = [n for n, _ in variants]
    first, last = results[names[0]], results[names[-1]]
    summary: dict[str, Any] = {"compare": args.compare, "results": results}
    if args.compare == "impl":
        summary["throughput_ratio"] = round(last["images_per_s"] / first["images_per_s"], 3)
        summary["peak_mem_ratio"] = round(last["peak_mem_mb"] / first["peak_mem_mb"], 3)
        summary["activation_mem_ratio"] = round(last["activation_mb"] / max(1e-9, first["activation_mb"]), 3)
    elif args.compare == "stages":
        summary["peak_mem_ratio"] = round(last["peak_mem_mb"] / first["peak_mem_mb"], 3)
        summary["activation_mem_ratio"] = round(last["activation_mb"] / max(1e-9, first["activation_mb"]), 3)
    else:
        summary["peak_mem_mb"] = {n: results[n]["peak_mem_mb"] for n in names}
        summary["activation_mb"] = {n: results[n]["activation_mb"] for n in names}
    return summary


PAPER_SHAPE = (8, 16, 64)
"""The DARTS paper's search shape (cells, C, batch), the default of every step benchmark here."""
OFFICIAL_KINDS = ("darts", "mgas")  # --official-darts, --official-mgas
SHAPE_FLAGS = ("layers", "channels", "batch", "resolution", "steps", "warmup", "threads", "device")


def official_ratios(ours: dict[str, Any], official: dict[str, Any]) -> dict[str, float | None]:
    """Ours over official: images/s, peak memory, activation memory (None where theirs is not > 0)."""
    def ratio(key: str) -> float | None:
        return round(ours[key] / official[key], 3) if official[key] > 0 else None

    return {"speed_vs_official": ratio("images_per_s"), "memory_vs_official": ratio("peak_mem_mb"),
            "activation_vs_official": ratio("activation_mb")}


def official_commands(args: argparse.Namespace, argv: list[str], kind: str, repo: str) -> tuple[list[str], list[str]]:
    """The two fresh processes: our step (the caller's flags, minus the official one, plus the
    method and the resolved shape) and the official step at the same shape."""
    base = _argv_without(_argv_without(argv, "--official-darts", True), "--official-mgas", True)
    base = [a for a in base if a != "--json"]
    shape = [x for key in SHAPE_FLAGS for x in (f"--{key}", str(getattr(args, key)))]
    stage = [str(args.stages), str(args.mgas_stage)] if kind == "mgas" else []
    method = ["--method", kind] + (["--stages", stage[0], "--mgas-stage", stage[1]] if stage else ["--order", "1"])
    ours = [sys.executable, "-m", "benchmarks.supernet", *base, *method, *shape, "--json"]
    official = [sys.executable, "-m", "benchmarks.official_step", "--repo", repo, "--kind", kind, *shape, "--json"]
    if stage:
        official += ["--lam", str(MGAS_BENCH_LAMBDA), "--stages", stage[0], "--stage", stage[1]]
    return ours, official


def _run_json(cmd: list[str]) -> dict[str, Any]:
    """Run one side in a fresh process (its stderr goes straight to ours); its last stdout line."""
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode < 0:
        raise SystemExit(f"error: `{' '.join(cmd[1:])}` was killed by signal {-done.returncode}"
                         + (" (the kernel's out-of-memory killer, most likely: try a smaller --batch)"
                            if done.returncode == -9 else ""))
    if done.returncode != 0:
        raise SystemExit(f"error: `{' '.join(cmd[1:])}` exited with status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def against_official(args: argparse.Namespace, argv: list[str], sources: OfficialSources) -> dict[str, Any]:
    """Ours, then the official step, each in a fresh process; both results and the ratios."""
    from benchmarks.official_step import default_shape

    ours_cmd, official_cmd = official_commands(args, argv, sources.kind, str(sources.repo))
    ours = _run_json(ours_cmd)
    official = _run_json(official_cmd)
    if ours["cells_run"] != official["cells_run"]:
        raise SystemExit(f"error: our step ran {ours['cells_run']} cells, the official one {official['cells_run']}: "
                         f"not the same step")
    return {"ours": ours, "official": official, **official_ratios(ours, official),
            "official_repo": str(sources.repo), "official_commit": sources.commit,
            "official_default_shape": default_shape(sources.folder)}


def _resolve_official(p: argparse.ArgumentParser, args: argparse.Namespace) -> OfficialSources | None:
    """Check the flags of a run against the official code and its checkout (before minutes are
    spent on our side); the shape left out is the paper's search shape (:data:`PAPER_SHAPE`)."""
    chosen = [(kind, getattr(args, f"official_{kind}")) for kind in OFFICIAL_KINDS
              if getattr(args, f"official_{kind}")]
    if not chosen:
        return None
    kind, repo = chosen[0]
    if args.method not in (None, kind):
        p.error(f"--official-{kind} measures --method {kind}, not {args.method}")
    if kind == "mgas":
        from benchmarks.official_mgas import stage_problem

        problem = stage_problem(args.stages, args.mgas_stage, args.layers, args.resolution)
        if problem:
            p.error(f"--official-mgas: {problem}")
    if kind == "darts" and args.order != 1:
        p.error("--official-darts compares the first-order step: use --order 1")
    from benchmarks.official_step import OfficialCheckoutError, locate

    try:
        sources = locate(repo, kind)
    except OfficialCheckoutError as e:
        raise SystemExit(f"error: {e}") from None
    args.method = kind
    return sources


def add_shape_arguments(p: argparse.ArgumentParser, note: str, defaults: tuple[int, int, int] | None) -> None:
    """The step's shape and run flags both benchmarks take (``SHAPE_FLAGS``); ``--layers``,
    ``--channels`` and ``--batch`` are left None for the caller to fill, ``note`` says how."""
    for flag, what, default in zip(("--layers", "--channels", "--batch"), ("cells", "initial channels", "batch size"),
                                   defaults or ("", "", "")):
        p.add_argument(flag, type=int, help=f"{what}: {note.format(default)}")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description="Supernet search-step throughput and peak memory")
    p.add_argument("--method", choices=method_names(), help="default darts")
    add_shape_arguments(p, "default {} (the paper's search shape)", PAPER_SHAPE)
    p.add_argument("--impl", default="fast", choices=("fast", "reference"))
    p.add_argument("--order", type=int, default=1, choices=(1, 2), help="DARTS order (default first order)")
    p.add_argument("--subgraphs", type=int, default=2, help="MSG-DAS K")
    p.add_argument("--stages", type=int, default=1, help="MGAS stage count")
    p.add_argument("--mgas-stage", type=int, default=1, help="MGAS stage to measure (1-based)")
    p.add_argument("--memory-format", default="auto", choices=("auto", "contiguous", "channels_last"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16 autocast (CUDA)")
    p.add_argument("--checkpoint-cells", action="store_true", help="gradient checkpointing per cell")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True)
    side = p.add_mutually_exclusive_group()
    side.add_argument("--compare", choices=("impl", "stages", "subgraphs"),
                      help="run the variants side by side, each in a fresh process, and print ratios")
    side.add_argument("--official-darts", metavar="PATH", help="also run the official DARTS step (quark0/darts)")
    side.add_argument("--official-mgas", metavar="PATH", help="also run the official MGAS step (lxy12357/MG_DARTS): "
                      "the whole network (--stages 1) or stage k of 3 (--stages 3 --mgas-stage k)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    official = _resolve_official(p, args)
    for key, value in {"method": "darts", **dict(zip(("layers", "channels", "batch"), PAPER_SHAPE))}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if official:
        result = against_official(args, argv, official)
    else:
        result = compare(args, argv) if args.compare else measure(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
