"""Where a search step's time and memory go: the profiler's top ops, saved tensors, BN backward.

    python -m benchmarks.diagnostics.step_profile --method darts --batch 32 --threads 1 --json
    python -m benchmarks.diagnostics.step_profile --method darts --batch 16 --threads 1 --unfused --json

On synthetic data at the given shape (default: the paper's search shape, 8 cells, C=16, batch 64,
32x32) it reports, for the method's ``train_step`` (after one untimed step):

- ``step_s``: the median wall time of ``--steps`` steps, and ``profile``: the ``--top`` ops of one more step under
  ``torch.profiler`` by self CPU time (calls, seconds, share of the profiled step's self time);
  ``--top 0`` skips the profile (its event table takes seconds to build even for a tiny model);
- ``saved_mb``: the distinct tensor storages autograd keeps for backward in the forward of the
  weight step (architecture parameters frozen, as the step freezes them), counted with
  ``torch.autograd.graph.saved_tensors_hooks``; ``--unfused`` runs the ops one by one instead of
  through ``mgas_core/nn/fused_ops.py`` (what it keeps without the recomputing kernels);
- ``bn_backward_ms``: CPU ``native_batch_norm_backward`` on a channels-last ``batch x C x 32 x 32``
  map with a dense gradient and with a channel slice of a twice-as-wide gradient (what a cell's
  ``cat`` hands each node), the median of 20 calls each.

The method and its flags are those of ``benchmarks.supernet`` (any registered method, its own
flags, ``--stage``; ``benchmarks.measure``). The module needs only ``mgas_core``'s method registry
and ``benchmarks/measure.py``, so the two can be copied into an older checkout that has the
registry to measure that revision the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.measure import add_method_arguments, benchmark_settings, method_overrides
from mgas_common.errors import UserInputError
from mgas_core.data import DatasetInfo
from mgas_core.methods import create_method


def build(args: argparse.Namespace) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    info = DatasetInfo("synthetic", 10, 3, args.resolution, "cifar")
    settings = benchmark_settings({**method_overrides(args), "search.method": args.method,
                                   "search.layers": args.layers, "search.channels": args.channels,
                                   "search.batch_size": args.batch}).search
    try:
        method = create_method(settings, info, torch.device("cpu"), seed=0)
        method.prepare_benchmark(args.stage)
    except UserInputError as exc:
        raise SystemExit(f"error: {exc}") from None
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.resolution, args.resolution)
    batches = [(torch.randn(shape, generator=g), torch.randint(0, 10, (args.batch,), generator=g)) for _ in range(2)]
    method.begin_epoch(0)
    return method, batches


def saved_tensor_mb(method: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, int]:
    """MB and count of the distinct storages the weight step's forward keeps for backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    x, y = method.to_device(batch)
    arch = list(method.model.arch_parameters())
    flags = [p.requires_grad for p in arch]
    for p in arch:
        p.requires_grad_(False)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(method.model(x), y)
        loss.backward()
    finally:
        for p, flag in zip(arch, flags):
            p.requires_grad_(flag)
    method.model.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20, len(storages)


def top_ops(method: Any, batches: list, arch_batch: Any, top: int) -> tuple[float, list[dict[str, Any]]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        method.train_step(batches[0], arch_batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return total, [{"op": e.key, "calls": e.count, "self_s": round(e.self_cpu_time_total / 1e6, 4),
                    "share": round(e.self_cpu_time_total / 1e6 / total, 4)} for e in rows]


def bn_backward_ms(batch: int, channels: int, calls: int = 20) -> dict[str, float]:
    """Median ms of CPU BN backward with a dense gradient and with a channel slice of a wider one."""
    x = torch.randn(batch, channels, 32, 32).contiguous(memory_format=torch.channels_last)
    weight = torch.ones(channels)
    mean, invstd = x.mean(dim=(0, 2, 3)), 1 / (x.var(dim=(0, 2, 3)) + 1e-5).sqrt()
    wide = torch.randn(batch, 2 * channels, 32, 32).contiguous(memory_format=torch.channels_last)
    grads = {"dense": wide[:, :channels].contiguous(memory_format=torch.channels_last),
             "channel_slice": wide[:, :channels]}
    out = {}
    for name, grad in grads.items():
        times = []
        for _ in range(calls + 2):
            start = time.perf_counter()
            torch.ops.aten.native_batch_norm_backward(grad, x, weight, None, None, mean, invstd, True, 1e-5,
                                                      [True, True, True])
            times.append(time.perf_counter() - start)
        out[name] = round(statistics.median(times[2:]) * 1000, 3)
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if args.unfused:
        from mgas_core.nn.fused_ops import unfused

        ctx = unfused()
    with ctx:
        method, batches = build(args)
        arch_batch = batches[1] if method.bilevel else None
        method.train_step(batches[0], arch_batch)  # untimed: first kernels, lazy imports
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            method.train_step(batches[0], arch_batch)
            times.append(time.perf_counter() - start)
        profiled_s, ops = top_ops(method, batches, arch_batch, args.top) if args.top > 0 else (None, [])
        saved_mb, saved_count = saved_tensor_mb(method, batches[0])
    return {"method": args.method, "stage": args.stage, "layers": args.layers, "channels": args.channels,
            "batch": args.batch, "resolution": args.resolution, "threads": args.threads, "unfused": args.unfused,
            "step_s": round(statistics.median(times), 3), "steps": args.steps,
            "profiled_self_s": None if profiled_s is None else round(profiled_s, 3), "profile": ops,
            "saved_mb": round(saved_mb, 1), "saved_storages": saved_count,
            "bn_backward_ms": bn_backward_ms(args.batch, args.channels)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_method_arguments(p)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps (their median is step_s)")
    p.add_argument("--top", type=int, default=12, help="ops listed from the profile (0: no profile)")
    p.add_argument("--unfused", action="store_true", help="the ops one by one (mgas_core.nn.fused_ops.unfused)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = measure(args)
    if args.json:
        print(json.dumps(result))
        return
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=1))
    for row in result["profile"]:
        print(f"{row['share']:7.1%} {row['self_s']:9.4f} s {row['calls']:6d}  {row['op']}")


if __name__ == "__main__":
    main()
