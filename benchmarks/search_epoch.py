"""Wall time of whole search epochs on CIFAR-10-shaped synthetic data, through the real search loop.

    python -m benchmarks.search_epoch --method darts --device cuda --json
    python -m benchmarks.search_epoch --method darts --device cuda --images 9000 --epochs 2 --json

The data is the ``synthetic`` dataset sized like this project's CIFAR-10 search: 45,000 training
images (which a bilevel method halves into weight and alpha batches, as on CIFAR-10) and 5,000
validation images of 3x32x32, 10 classes, held in memory (no decoding or augmentation: the
figure is the search's own cost). ``--method`` is any registered method (default DARTS) with its
own flags (those of ``mgas search``); the settings are the paper preset's (8 cells, C=16, batch
64) with the method's ``benchmark_overrides`` (DARTS: first order unless ``--order 2``), so an
epoch is what ``mgas search --dataset cifar10`` runs: every training step, then the validation
pass and the method's end of epoch.

An epoch's time is the wall time from one epoch's end to the next (``run_search``'s callback).
The first epoch also pays one-off costs (cuDNN's autotuning, the first kernels), so ``epoch_s``
is the median of the later epochs when there are any. With ``--images N`` below the full 45,000
(to fit a short lease), ``cifar10_epoch_s`` scales the measured epoch by ``45000 / N``: linear in
the images, since every step and the validation pass are. ``search_hours`` is that epoch times
the search's epochs (``--search-epochs``, the paper's 50): on a GPU, issue 17's goal is at most 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from typing import Any

import torch

from benchmarks.measure import add_method_arguments, benchmark_settings, method_figures, method_overrides
from mgas_core.data import load_splits, split_in_half, synthetic_split_sizes
from mgas_core.engine.search import run_search

CIFAR10_SEARCH_IMAGES = 45_000
"""Images of this project's CIFAR-10 search split (50,000 training images less the validation 10 %)."""
CIFAR10_VAL_IMAGES = 5_000
VAL_FRACTION = 0.1
PAPER_SEARCH_EPOCHS = 50
GOAL_HOURS = 2.0


def synthetic_samples(images: int) -> int:
    """The ``synthetic`` dataset size whose training split holds ``images`` images (or the nearest
    size above) with a validation split of a tenth of the train-plus-validation images, as
    CIFAR-10's (45,000 : 5,000)."""
    if images < 10:
        raise ValueError("--images must be at least 10")
    estimate = round(images / (1 - VAL_FRACTION) * 1.25)  # the dataset keeps a fifth for testing
    return next(n for n in range(max(8, estimate - 4), estimate + 8)
                if synthetic_split_sizes(n, VAL_FRACTION)[0] >= images)


def settings_for(args: argparse.Namespace) -> Any:
    overrides: dict[str, Any] = {
        **method_overrides(args),
        "data.name": "synthetic", "data.workers": 0, "data.val_fraction": VAL_FRACTION,
        "data.synthetic.samples": synthetic_samples(args.images),
        "data.synthetic.size": 32, "data.synthetic.channels": 3, "data.synthetic.classes": 10,
        "search.method": args.method, "search.epochs": args.epochs,
        "search.precision": args.precision, "search.memory_format": args.memory_format,
        "device": args.device, "threads": args.threads, "seed": 0,
    }
    for key, value in (("search.layers", args.layers), ("search.channels", args.channels),
                       ("search.batch_size", args.batch)):
        if value is not None:
            overrides[key] = value
    return benchmark_settings(overrides)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_for(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is available")
        torch.backends.cudnn.benchmark = True
    splits = load_splits(settings.data)
    marks: list[float] = []

    def on_epoch(record: dict[str, Any], state_fn: Any) -> None:
        marks.append(time.perf_counter())  # the validation pass has synchronised the device

    result = run_search(settings, splits, device, on_epoch=on_epoch, on_start=lambda: marks.append(time.perf_counter()))
    each = [b - a for a, b in itertools.pairwise(marks)]
    epoch_s = statistics.median(each[1:]) if len(each) > 1 else each[0]
    train_images = len(splits.train)  # type: ignore[arg-type]
    search = settings.search
    weight_images = len(split_in_half(splits.train)[0]) if result.method.bilevel else train_images
    steps = -(-weight_images // search.batch_size)
    scale = CIFAR10_SEARCH_IMAGES / train_images
    cifar10_epoch_s = epoch_s * scale
    hours = cifar10_epoch_s * args.search_epochs / 3600
    return {
        "method": args.method, **method_figures(settings),
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": search.precision, "memory_format": args.memory_format,
        "layers": search.layers, "channels": search.channels, "batch": search.batch_size,
        "train_images": train_images, "val_images": len(splits.val),  # type: ignore[arg-type]
        "steps_per_epoch": steps, "epochs_run": len(each),
        "epoch_s_each": [round(s, 3) for s in each], "epoch_s": round(epoch_s, 3),
        "images_scale": round(scale, 4), "cifar10_epoch_s": round(cifar10_epoch_s, 2),
        "search_epochs": args.search_epochs, "search_hours": round(hours, 3),
        "goal_hours": GOAL_HOURS, "within_goal": hours <= GOAL_HOURS,
        "peak_mem_mb": round(result.peak_mem_mb, 1), "peak_mem_kind": result.peak_mem_kind,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_method_arguments(p, stage=False)  # --method and every method's own flags (the registry's)
    p.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    p.add_argument("--images", type=int, default=CIFAR10_SEARCH_IMAGES,
                   help=f"training images per epoch (default {CIFAR10_SEARCH_IMAGES}, CIFAR-10's search split); "
                        "fewer are scaled up linearly")
    p.add_argument("--epochs", type=int, default=2, help="epochs measured (the first pays one-off costs)")
    p.add_argument("--search-epochs", type=int, default=PAPER_SEARCH_EPOCHS,
                   help="epochs of the whole search the figure extrapolates to (the paper's 50)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--memory-format", default="auto", choices=("auto", "contiguous", "channels_last"))
    p.add_argument("--layers", type=int, help="cells (default: the paper preset's 8)")
    p.add_argument("--channels", type=int, help="initial channels (default 16)")
    p.add_argument("--batch", type=int, help="batch size (default 64)")
    p.add_argument("--threads", type=int, help="CPU threads (default torch's)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.search_epochs < 1:
        p.error("--epochs and --search-epochs must be >= 1")
    if args.images < 10:
        p.error("--images must be at least 10")
    if args.precision == "bf16" and args.device != "cuda":
        p.error("--precision bf16 needs --device cuda")
    result = measure(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
