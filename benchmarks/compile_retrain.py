"""Whether ``torch.compile`` pays off for retraining: eager and compiled training steps of a found network.

    python -m benchmarks.compile_retrain [--channels 16] [--layers 8] [--batch 32] [--steps 10] [--json]
    python -m benchmarks.compile_retrain --modes eager --steps 1   # the eager side alone

Builds DARTS_V2 (``mgas_core.space.architecture``) as ``mgas retrain`` does (``build_eval_network``, no auxiliary
head), on synthetic 32x32 CIFAR-shaped data, and runs SGD training steps (momentum 0.9) with torch's
threads set by ``--threads`` (default 1), once per mode in ``--modes`` (default eager, compiled,
eager: the machine's drift cancels in the mean of the two eager runs), each from the same
initial weights and batch. For each mode: ``first_step_s`` (for ``compiled``, Inductor's compile of
forward and backward included), ``step_ms`` (the median of the ``--steps`` steps after it) and
the loss after every step. Prints ``speed_compiled_vs_eager`` (eager step time over compiled),
``compile_s`` (compiled first step minus eager first step), ``break_even_steps`` (the steps after
which the compiled run is ahead) and ``max_loss_gap`` (the largest difference of the two runs'
losses at the same step: compiled kernels reorder floating-point sums, so the runs drift apart).
Inductor compiles into a fresh cache folder, so ``compile_s`` is what a first run pays;
``--keep-cache`` uses Inductor's usual cache (a rerun of the same shapes then compiles in a fraction).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

from mgas_core.engine.compiled import compiled_forward
from mgas_core.evaluation_network import build_eval_network
from mgas_core.space.builtin_architectures import DARTS_V2

MODES = ("eager", "compiled")


def run_mode(mode: str, channels: int, layers: int, batch: int, steps: int, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    net = build_eval_network(DARTS_V2, 10, 3, channels=channels, layers=layers, auxiliary=False)
    net.train()
    images, labels = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    forward = compiled_forward(net, mode == "compiled", "inductor")  # what retrain.compile runs
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        logits = forward(images)
        logits = logits[0] if isinstance(logits, tuple) else logits
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    torch.manual_seed(seed + 1)  # drop_path and any other randomness of the steps: the same in each mode
    start = time.perf_counter()
    losses = [step()]
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
    return {"mode": mode, "first_step_s": round(first, 3), "step_ms": round(1000 * statistics.median(times), 1),
            "losses": [round(v, 6) for v in losses]}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ratios of the compiled run against the mean of the eager runs (None without both modes)."""
    eager = [r for r in runs if r["mode"] == "eager"]
    compiled = [r for r in runs if r["mode"] == "compiled"]
    if not eager or not compiled:
        return {}
    eager_ms = statistics.mean(r["step_ms"] for r in eager)
    eager_first = statistics.mean(r["first_step_s"] for r in eager)
    done = compiled[0]
    compile_s = done["first_step_s"] - eager_first
    saved_ms = eager_ms - done["step_ms"]
    gap = max(abs(a - b) for a, b in zip(done["losses"], eager[0]["losses"], strict=True))
    return {"speed_compiled_vs_eager": round(eager_ms / done["step_ms"], 3), "compile_s": round(compile_s, 1),
            "break_even_steps": math.ceil(1000 * compile_s / saved_ms) if saved_ms > 0 else None,
            "max_loss_gap": round(gap, 6)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the first of each mode")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="eager,compiled,eager",
                        help=f"comma-separated, run in this order, each of {', '.join(MODES)}")
    parser.add_argument("--keep-cache", action="store_true", help="Inductor's usual cache instead of a fresh one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: {args.modes!r}; allowed: {', '.join(MODES)}")
    if min(args.channels, args.layers, args.batch, args.steps, args.threads) < 1:
        parser.error("--channels, --layers, --batch, --steps and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        if not args.keep_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read when Inductor first compiles
        runs = [run_mode(m, args.channels, args.layers, args.batch, args.steps) for m in modes]
    result = {"torch": torch.__version__, "threads": args.threads, "fresh_cache": not args.keep_cache,
              "channels": args.channels, "layers": args.layers, "batch": args.batch, **summarize(runs), "runs": runs}
    if args.json:
        print(json.dumps(result))
        return
    for run in runs:
        print(f"{run['mode']:>8}: first step {run['first_step_s']:.1f} s, then {run['step_ms']:.0f} ms a step")
    for key, value in result.items():
        if key != "runs":
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
