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
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import torch

from mgas_core.config import build_settings
from mgas_core.data import DatasetInfo
from mgas_core.methods import create_method
from mgas_core.methods.base import method_names, result_values
from mgas_core.metrics import PeakMemory, process_peak_rss_mb


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
        method.start_search_phase(args.mgas_stage, lam=1e-3)
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
        "step_s": round(elapsed / args.steps, 4),
        "images_per_s": round(args.batch * args.steps / elapsed, 2),
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


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description="Supernet search-step throughput and peak memory")
    p.add_argument("--method", default="darts", choices=method_names())
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--impl", default="fast", choices=("fast", "reference"))
    p.add_argument("--order", type=int, default=1, choices=(1, 2), help="DARTS order (default first order)")
    p.add_argument("--subgraphs", type=int, default=2, help="MSG-DAS K")
    p.add_argument("--stages", type=int, default=1, help="MGAS stage count")
    p.add_argument("--mgas-stage", type=int, default=1, help="MGAS stage to measure (1-based)")
    p.add_argument("--memory-format", default="auto", choices=("auto", "contiguous", "channels_last"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16 autocast (CUDA)")
    p.add_argument("--checkpoint-cells", action="store_true", help="gradient checkpointing per cell")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compare", choices=("impl", "stages", "subgraphs"),
                   help="run the variants side by side, each in a fresh process, and print ratios")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = compare(args, argv) if args.compare else measure(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
