"""Search-step throughput and peak memory of a supernet, one configuration per process.

    python -m benchmarks.supernet --method darts --layers 8 --channels 16 --batch 64 --resolution 32 \
        --steps 3 --threads 1 --device cpu --impl fast --json
    python -m benchmarks.supernet --compare impl ...        # fast vs reference, each in a fresh process
    python -m benchmarks.supernet --method mgas --stages 3 --stage 1 ...   # stage 1 of a 3-stage MGAS search
    python -m benchmarks.supernet --method msg_das --compare subgraphs=1 subgraphs=2 subgraphs=4 method=darts

``--method`` is any registered method, and each method's own flags are those ``mgas search``
offers (``--order``, ``--subgraphs``, ``--stages``, ``--granularities``, ...: the registry's
``cli_flags``). The settings are the ``paper`` preset's, then the method's
``benchmark_overrides`` (DARTS: first order; MGAS: one stage, the whole network), then the flags.
Before timing, the method is put in the state of stage ``--stage`` (alias ``--mgas-stage``;
``SearchMethod.prepare_benchmark``: MGAS runs the search phase of that stage, lambda > 0).

A step is the method's full ``train_step`` on synthetic data: forward, backward and optimiser
steps (bilevel methods also run their alpha step on a second batch). ``images_per_s`` counts the
images of the weight step. ``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` on CUDA and the
process's peak RSS on CPU; ``activation_mb`` is that peak minus the memory held before the first
step (model, optimiser, data), which isolates what the step itself needs.

``--compare`` runs variants side by side, each in a fresh process: ``impl`` (the reference
supernet, contiguous, against the fast one), or variants ``FLAG=VALUE[+FLAG=VALUE...]`` of any
flag of this command (``subgraphs=1``, ``method=darts``, ``stages=3+stage=2``); it prints each
variant's result, its images/s and memory, and ratios to the first variant (with two variants,
also ``throughput_ratio``, ``peak_mem_ratio`` and ``activation_mem_ratio`` of the second).

Against the official code (issue 17, ``benchmarks.official``), ours and the official step each in
a fresh process, one after the other, with the same shape and the same definition of a step:

    python -m benchmarks.supernet --official-darts PATH --threads 1 --steps 2 --json   # quark0/darts
    python -m benchmarks.supernet --official-mgas PATH --threads 1 --steps 2 --json    # lxy12357/MG_DARTS

    python -m benchmarks.supernet --official-mgas PATH --stages 3 --stage 2 --threads 1 --json

``PATH`` is a checkout of the official repository (nothing of it is vendored). DARTS: first order
(``--method darts --order 1``). MGAS: a search step, every granularity, lambda > 0, of the whole
network (``--stages 1``: the official final phase, ``train()``) or of stage ``k`` of the official
three-stage search (``--stages 3 --stage k``, k = 1, 2, 3: cells ``0 .. L//3 - 1``,
``0 .. 2L//3 - 1`` or all and the stage's head, ``train_local(..., stage_index=k)``; stages 1 and 2
need ``--resolution 32``, the input the official stage heads are built for;
``benchmarks.official.mgas``). Both sides must run the same cells. The shape defaults to the
paper's search shape, 8 cells, C=16, batch 64, for both methods (MG-DARTS's script searches at
batch 96, where its CPU step needs more than the 24 GB of this project's machines and is killed:
``--batch 96`` asks for it). It prints
``{"ours", "official", "speed_vs_official" (our images/s / theirs), "memory_vs_official" (our peak
/ theirs), "activation_vs_official", "official_repo", "official_commit"}``; each side records its
batch, threads, steps, the memory held before the first step (``baseline_mem_mb``) and seconds per
step. ``--cross-check`` (MGAS) also times the official step composed without ``train()``
(``benchmarks.official.step --definition explicit``) in a third fresh process, right after the
``train()`` one, and adds ``"official_explicit"`` and ``"definitions"`` (the ratios explicit /
train and whether they agree within 10 % time and 5 % peak memory).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from benchmarks.measure import (
    PAPER_SHAPE,
    add_method_arguments,
    add_shape_arguments,
    argv_without,
    benchmark_settings,
    current_rss_mb,
    method_figures,
    method_overrides,
    run_json,
    step_figures,
)
from benchmarks.official.compare import add_official_arguments, against_official, resolve_official
from mgas_common.errors import UserInputError
from mgas_core.data import DatasetInfo
from mgas_core.methods import create_method
from mgas_core.metrics import PeakMemory
from mgas_core.settings.run import DEFAULT_METHOD

NAMED_COMPARISONS = {"impl": [("reference", "impl=reference+memory-format=contiguous"), ("fast", "impl=fast")]}
NOT_COMPARED = ("compare", "official-darts", "official-mgas", "cross-check", "json")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    info = DatasetInfo("synthetic", 10, 3, args.resolution, "cifar")
    overrides: dict[str, Any] = {
        **method_overrides(args),
        "search.method": args.method, "search.layers": args.layers, "search.channels": args.channels,
        "search.batch_size": args.batch, "search.impl": args.impl,
        "search.memory_format": args.memory_format, "search.precision": args.precision,
        "search.checkpoint_cells": args.checkpoint_cells,
    }
    run_settings = benchmark_settings(overrides)
    torch.manual_seed(0)
    try:
        method = create_method(run_settings.search, info, device, seed=0)
        prepared = method.prepare_benchmark(args.stage)  # e.g. MGAS: the search phase of that stage
    except UserInputError as exc:
        raise SystemExit(f"error: {exc}") from None
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
        "precision": args.precision,
        **method_figures(run_settings),  # the method's result columns and flags (registry)
        "stage": args.stage, "cells_run": prepared.get("cells_run", args.layers),
        **step_figures(elapsed, args.steps, args.batch, peak, baseline),
    }


def comparison_variants(p: argparse.ArgumentParser, base: list[str], spec: list[str]) -> list[tuple[str, list[str]]]:
    """``--compare``'s variants: (name, the flags it adds), each checked by parsing it here."""
    named = NAMED_COMPARISONS.get(spec[0]) if len(spec) == 1 else None
    variants = []
    for name, item in named or [(item, item) for item in spec]:
        extra = []
        for part in item.split("+"):
            flag, sep, value = part.partition("=")
            action = p._option_string_actions.get(f"--{flag}")
            if not sep or action is None or flag in NOT_COMPARED or action.nargs == 0:
                p.error(f"--compare {item}: a variant is FLAG=VALUE[+FLAG=VALUE...] of a flag of this command "
                        f"that takes a value, or one of: {', '.join(NAMED_COMPARISONS)}")
            extra += [f"--{flag}", value]
        p.parse_args([*base, *extra])  # a bad value fails here, before any variant runs
        variants.append((name, extra))
    if len(variants) < 2:
        p.error("--compare needs at least two variants")
    return variants


def compare(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run each variant of ``args.compare`` in its own fresh process, in one run; report ratios."""
    base = [a for a in argv_without(argv, "--compare", "+") if a != "--json"]
    variants = comparison_variants(p, base, args.compare)
    results = {name: run_json([sys.executable, "-m", "benchmarks.supernet", *base, *extra, "--json"])
               for name, extra in variants}
    names = [n for n, _ in variants]
    first = results[names[0]]

    def ratios(result: dict[str, Any]) -> dict[str, float]:
        return {"throughput_ratio": round(result["images_per_s"] / first["images_per_s"], 3),
                "peak_mem_ratio": round(result["peak_mem_mb"] / first["peak_mem_mb"], 3),
                "activation_mem_ratio": round(result["activation_mb"] / max(1e-9, first["activation_mb"]), 3)}

    summary: dict[str, Any] = {"compare": " ".join(args.compare), "results": results,
                               **{key: {n: results[n][key] for n in names}
                                  for key in ("images_per_s", "peak_mem_mb", "activation_mb")},
                               "vs_first": {n: ratios(results[n]) for n in names[1:]}}
    if len(names) == 2:
        summary.update(summary["vs_first"][names[1]])
    return summary


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description="Supernet search-step throughput and peak memory")
    add_method_arguments(p, method_default=None)
    add_shape_arguments(p, "default {} (the paper's search shape)", PAPER_SHAPE)
    p.add_argument("--impl", default="fast", choices=("fast", "reference"))
    p.add_argument("--memory-format", default="auto", choices=("auto", "contiguous", "channels_last"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16 autocast (CUDA)")
    p.add_argument("--checkpoint-cells", action="store_true", help="gradient checkpointing per cell")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True)
    side = p.add_mutually_exclusive_group()
    side.add_argument("--compare", nargs="+", metavar="VARIANT",
                      help="run variants side by side, each in a fresh process, and print ratios: impl, or "
                           "FLAG=VALUE[+FLAG=VALUE...] each (e.g. subgraphs=1 subgraphs=2 method=darts)")
    add_official_arguments(p, side)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for key, value in zip(("layers", "channels", "batch"), PAPER_SHAPE):
        if getattr(args, key) is None:
            setattr(args, key, value)
    official = resolve_official(p, args)
    if args.method is None:
        args.method = DEFAULT_METHOD
    if official:
        result = against_official(args, argv, official)
    else:
        result = compare(p, args, argv) if args.compare else measure(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
