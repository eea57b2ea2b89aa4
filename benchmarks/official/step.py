"""The official code's search step, timed and measured like ``benchmarks.supernet`` times ours.

    python -m benchmarks.official.step --repo PATH --kind darts --layers 8 --channels 16 --batch 64 --json
    python -m benchmarks.official.step --repo PATH --kind mgas --json    # shape: the checkout's defaults
    python -m benchmarks.official.step --repo PATH --kind mgas --stages 3 --stage 2 --json   # stage 2 of 3

``PATH`` is a checkout the user supplies of ``quark0/darts`` (``--kind darts``; code in ``cnn/``)
or ``lxy12357/MG_DARTS`` (``--kind mgas``; code in ``cifar_search/``). Nothing of it is vendored:
its folder goes on ``sys.path`` and its own modules run. ``python -m benchmarks.supernet
--official-darts PATH`` / ``--official-mgas PATH`` runs this beside our step, each in a fresh process.

A step, the same on both sides, on synthetic data (fixed seed 0, the same two batches as ours),
``--warmup`` untimed steps then ``--steps`` timed ones, ``torch.set_num_threads(--threads)``:

- DARTS, first order: the per-batch work of the official ``cnn/train_search.py`` ``train()``:
  ``model.train()``; ``architect.step(..., unrolled=False)`` (the alpha Adam step on the second,
  "search", batch); zero grad, forward, cross-entropy, backward, ``clip_grad_norm_`` (``grad_clip``)
  and the SGD step on the first batch; the loss and top-1 read back. That ``train()`` cannot be
  imported (``.cuda(async=True)`` is a syntax error since Python 3.7), so this module calls the
  official ``Network``, ``Architect`` and ``utils.accuracy`` in that order; hyperparameters are the
  argparse defaults of the checkout's ``train_search.py``, read with ``ast``.
- MGAS: the official ``cifar_search/train_search.py`` step itself, fed the fixed batch: with
  ``--stages 3 --stage k`` (k = 1, 2, 3) stage ``k`` of the official three-stage search
  (``train_local(..., stage_index=k)``: cells ``0 .. L//3 - 1``, ``0 .. 2L//3 - 1`` or all, the
  stage's head), with ``--stages 1`` (or ``--stages 3 --stage 4``) the final, whole-network phase
  (``train()``); all three granularities (ops, filters, weights), ``only_train=False`` (every
  optimiser steps), ``flops_lambda = --lam > 0`` (every loss term), ``freeze_mask=True`` (no mask
  is stored: that happens once an epoch, at its last batch). The network (fresh, all masks on) and
  the phase's four SGD optimisers are built once before timing, as ``main()`` builds them for
  that phase: ``benchmarks.official.mgas`` says how. Hyperparameters: the checkout's argparse
  defaults. ``--definition explicit`` runs the same step without calling ``train()``: the
  official network's forward, the head's cross-entropy + ``flops_lambda`` x (size term + threshold
  term), backward, ``clip_grad_norm_`` and the four SGD steps, composed here (a second, independent
  reading of what a step costs; ``benchmarks.supernet --official-mgas PATH --cross-check`` runs both).
  Its ``prune.py`` (imported by ``model_search``) was deleted upstream; when the
  checkout lacks it, it is read from the git history (the commit before the one that deleted it)
  into a temporary folder, with a line on stderr saying so.

Runtime patches, in this process only (the checkout is never edited): on CPU,
``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return ``self``; the official
``train_search.py`` is imported with ``sys.argv = [train_search.py]`` from a temporary working
directory (its import creates an experiment folder and a log file there) with its stdout captured;
the ``logging`` stream it configures then goes to stderr at level WARNING and its file handler is
removed; ``UserWarning``s raised in the official modules are silenced. The DARTS step reads the loss with
``.item()`` for ``loss.data[0]`` and asks ``utils.accuracy`` for top-1 only (its top-5 path fails on
a non-contiguous ``view`` in current PyTorch); the data loader is replaced by the fixed batches.
A log line from one of the official ``except Exception`` fallbacks (``Error ...``, ``cell: ...``,
``batch: ...``) fails the run, since the step would then not be the one measured.

Memory, as ``benchmarks.supernet`` measures ours: ``peak_mem_mb`` is the process's peak RSS on CPU
(``torch.cuda.max_memory_allocated`` on CUDA) and ``activation_mb`` that peak minus the memory held
just before the first step.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.measure import add_shape_arguments, current_rss_mb, step_figures
from benchmarks.official.mgas import DEFINITIONS, mgas_setup, stage_problem
from mgas_core.methods.mgas.method import BENCHMARK_LAMBDA
from mgas_core.metrics import PeakMemory

COMMON = ("train_search.py", "model_search.py", "operations.py", "genotypes.py", "utils.py")
LAYOUT = {"darts": ("cnn", (*COMMON, "architect.py")), "mgas": ("cifar_search", COMMON)}  # code folder, files
UPSTREAM = {"darts": "https://github.com/quark0/darts", "mgas": "https://github.com/lxy12357/MG_DARTS"}
FALLBACK_MARKERS = ("Error", "cell: ", "batch: ")


class OfficialCheckoutError(Exception):
    """The path is not a usable checkout of the official code; the message says what to do."""


@dataclass(frozen=True)
class OfficialSources:
    kind: str
    repo: Path
    folder: Path
    commit: str | None  # HEAD of the checkout when it is a git checkout
    prune_deleted_in: str | None = None  # "<sha> <subject>" of the commit that deleted prune.py
    prune_from: str | None = None  # the commit whose prune.py is used (None: the checkout has it)


def git(folder: Path, *args: str) -> str | None:
    """``git -C folder args`` stdout, or None when it fails (not a checkout, no git)."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def locate(repo: str | Path, kind: str) -> OfficialSources:
    """The official code folder under ``repo`` and, for MGAS, where its ``prune.py`` comes from."""
    repo = Path(repo).expanduser().resolve()
    sub, needed = LAYOUT[kind]
    folder = repo / sub if (repo / sub / needed[0]).is_file() else repo
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise OfficialCheckoutError(f"{repo} is not a checkout of {UPSTREAM[kind]}: no {sub}/{missing[0]} "
                                    f"(pass the repository's root)")
    top = git(folder, "rev-parse", "--show-toplevel")  # a git checkout of the official repository itself?
    commit = git(folder, "rev-parse", "HEAD") if top and (Path(top) / sub / needed[0]).is_file() else None
    if kind != "mgas" or (folder / "prune.py").is_file():
        return OfficialSources(kind, repo, folder, commit)
    if commit is None:
        raise OfficialCheckoutError(
            f"{folder / 'prune.py'} is missing (upstream deleted it in 62248c5) and {repo} is not a git checkout "
            f"to take it from: pass a git clone of {UPSTREAM[kind]}, or put the file back (in a clone: "
            f"git show 62248c5^:cifar_search/prune.py > {folder / 'prune.py'})")
    deleted = git(folder, "log", "--diff-filter=D", "--format=%H %s", "-1", "--", "prune.py")
    if not deleted:
        raise OfficialCheckoutError(f"{folder / 'prune.py'} is missing and no commit in {repo}'s history deleted it: "
                                    f"fetch its full history (git fetch --unshallow)")
    source = git(folder, "rev-parse", f"{deleted.split()[0]}^")
    if source is None or git(folder, "cat-file", "-e", f"{source}:./prune.py") is None:
        raise OfficialCheckoutError(f"prune.py cannot be read from the commit before {deleted.split()[0][:7]}: "
                                    f"fetch the full history of {UPSTREAM[kind]}")
    return OfficialSources(kind, repo, folder, commit, prune_deleted_in=deleted, prune_from=source)


def prune_source(sources: OfficialSources) -> str:
    """The text of ``prune.py`` at ``sources.prune_from``."""
    assert sources.prune_from is not None
    text = git(sources.folder, "show", f"{sources.prune_from}:./prune.py")
    if text is None:
        raise OfficialCheckoutError(f"git show {sources.prune_from}:prune.py failed in {sources.folder}")
    return text + "\n"


def official_defaults(folder: Path) -> dict[str, Any]:
    """The argparse defaults of ``folder/train_search.py``, read without running it."""
    source = (folder / "train_search.py").read_text()
    try:
        tree = ast.parse(source, "train_search.py")
    except SyntaxError:  # DARTS: `.cuda(async=True)`, valid only before Python 3.7
        tree = ast.parse(source, "train_search.py", feature_version=(3, 6))
    defaults: dict[str, Any] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument" and node.args and isinstance(node.args[0], ast.Constant)):
            continue
        name = str(node.args[0].value).lstrip("-").replace("-", "_")
        keywords = {kw.arg: kw.value for kw in node.keywords}
        if "default" in keywords:
            with contextlib.suppress(ValueError, TypeError, SyntaxError):
                defaults[name] = ast.literal_eval(keywords["default"])
        elif isinstance(keywords.get("action"), ast.Constant) and keywords["action"].value == "store_true":
            defaults[name] = False
    return defaults


def default_shape(folder: Path) -> dict[str, int]:
    """The search shape the official script runs by default: cells, initial channels, batch."""
    d = official_defaults(folder)
    return {"layers": int(d.get("layers", 8)), "channels": int(d.get("init_channels", 16)),
            "batch": int(d.get("batch_size", 64))}


class TimedBatches:
    """The official loop's data queue: the same batch ``n`` times, time-stamped when each batch is
    asked for (the previous step's work, bookkeeping included, is done by then) and at the end."""

    def __init__(self, batch: tuple[Tensor, Tensor], n: int, sync: Callable[[], None]) -> None:
        self.batch, self.n, self.sync = batch, n, sync
        self.stamps: list[float] = []

    def __len__(self) -> int:
        return self.n

    def _stamp(self) -> None:
        self.sync()
        self.stamps.append(time.perf_counter())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(self.n):
            self._stamp()
            yield self.batch
        self._stamp()


class FallbackWatch(logging.Handler):
    """Collects the official code's log lines that mean one of its ``except`` fallbacks ran."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(FALLBACK_MARKERS):
            self.hits.append(message)

    @classmethod
    def install(cls) -> FallbackWatch:
        """A watch on the root logger that sees the official code's INFO lines. The official scripts
        call ``logging.basicConfig(level=INFO)`` on import, which does nothing once the root logger
        has a handler (this one), so the root's level is set to INFO here: at the default WARNING,
        the fallbacks' ``logging.info`` lines were dropped before any handler saw them."""
        watch = cls()
        root = logging.getLogger()
        root.addHandler(watch)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        return watch


def patch_for_cpu() -> None:
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]


def import_official(sources: OfficialSources, scratch: Path) -> dict[str, ModuleType]:
    """Import the official modules from the checkout (``prune.py`` from history where needed)."""
    paths = [str(sources.folder)]
    if sources.prune_from is not None:
        (scratch / "prune").mkdir()
        (scratch / "prune" / "prune.py").write_text(prune_source(sources))
        paths.append(str(scratch / "prune"))
        sha, _, subject = (sources.prune_deleted_in or "").partition(" ")
        print(f"official_step: {sources.folder / 'prune.py'} is missing (deleted upstream in {sha[:7]} "
              f"'{subject}'); using it from the commit before, {sources.prune_from[:7]}", file=sys.stderr)
    sys.path[:0] = paths
    for module in ("model_search", "operations", "architect", "utils", "train_search", "genotypes", "prune"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    names = ("model_search", "architect", "utils") if sources.kind == "darts" else ("train_search", "utils")
    cwd, argv = os.getcwd(), sys.argv
    os.chdir(scratch)
    sys.argv = ["train_search.py"]
    printed = io.StringIO()  # train_search.py prints its experiment folder and logs to stdout
    try:
        with contextlib.redirect_stdout(printed):
            modules = {name: __import__(name) for name in names}
    finally:
        os.chdir(cwd)
        sys.argv = argv
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
        elif isinstance(handler, logging.StreamHandler) and handler.stream is printed:
            handler.setStream(sys.stderr)
            handler.setLevel(logging.WARNING)
    return modules


def darts_setup(mods: dict[str, ModuleType], folder: Path, args: argparse.Namespace,
                batches: list[tuple[Tensor, Tensor]]) -> tuple[Callable[[TimedBatches], None], dict[str, Any]]:
    d = official_defaults(folder)
    hp = argparse.Namespace(**d)
    criterion = nn.CrossEntropyLoss().cuda()
    model = mods["model_search"].Network(args.channels, 10, args.layers, criterion).cuda()
    optimizer = torch.optim.SGD(model.parameters(), hp.learning_rate, momentum=hp.momentum,
                                weight_decay=hp.weight_decay)
    architect = mods["architect"].Architect(model, hp)
    accuracy = mods["utils"].accuracy
    search_input, search_target = batches[1]

    def run(queue: TimedBatches) -> None:  # the per-batch work of the official train(), in its order
        for inputs, target in queue:
            model.train()
            inputs, target = inputs.cuda(), target.cuda(non_blocking=True)
            input_search, target_search = search_input.cuda(), search_target.cuda(non_blocking=True)
            architect.step(inputs, target, input_search, target_search, hp.learning_rate, optimizer, unrolled=False)
            optimizer.zero_grad()
            logits = model(inputs)
            loss = criterion(logits, target)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            optimizer.step()
            (prec1,) = accuracy(logits, target, topk=(1,))
            _ = (loss.item(), prec1.item())

    used = {k: d.get(k) for k in ("learning_rate", "momentum", "weight_decay", "arch_learning_rate",
                                  "arch_weight_decay", "grad_clip")}
    return run, {**used, "order": 1}


def measure(args: argparse.Namespace, sources: OfficialSources) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is available")
        torch.backends.cudnn.benchmark = True  # as the official main()
    else:
        patch_for_cpu()
    watch = FallbackWatch.install()
    with tempfile.TemporaryDirectory(prefix="official_step_") as scratch:
        mods = import_official(sources, Path(scratch))
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        shape = (args.batch, 3, args.resolution, args.resolution)
        batches = [(torch.randn(shape, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
                   for _ in range(2)]
        if sources.kind == "darts":
            run, used = darts_setup(mods, sources.folder, args, batches)
        else:
            run, used = mgas_setup(mods, args)
        cells_run = used.pop("cells_run", args.layers)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        sync()
        baseline = current_rss_mb() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
        memory = PeakMemory(device)
        queue = TimedBatches(batches[0], args.warmup + args.steps, sync)
        run(queue)
        peak = memory.peak_mb()
    if watch.hits:
        raise SystemExit(f"error: the official code fell back from an exception during the steps: {watch.hits[:3]}")
    elapsed = queue.stamps[-1] - queue.stamps[args.warmup]
    return {
        "side": "official", "kind": sources.kind, "repo": str(sources.repo), "folder": str(sources.folder),
        "commit": sources.commit, "prune_py_from": sources.prune_from,
        "layers": args.layers, "channels": args.channels, "batch": args.batch, "resolution": args.resolution,
        "steps": args.steps, "warmup": args.warmup, "threads": args.threads, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "stages": args.stages if sources.kind == "mgas" else None,
        "stage": args.stage if sources.kind == "mgas" else None,
        "hyperparameters": used, "cells_run": cells_run,
        **step_figures(elapsed, args.steps, args.batch, peak, baseline),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="The official DARTS / MG-DARTS search step: throughput and peak memory")
    p.add_argument("--repo", required=True, help="checkout of quark0/darts (darts) or lxy12357/MG_DARTS (mgas)")
    p.add_argument("--kind", required=True, choices=sorted(LAYOUT))
    add_shape_arguments(p, "default: the official script's default", None)
    p.add_argument("--lam", type=float, default=BENCHMARK_LAMBDA,
                   help=f"MGAS flops_lambda (> 0: every loss term; default {BENCHMARK_LAMBDA}, as our step's)")
    p.add_argument("--stages", type=int, default=1, help="MGAS: 3 for a stage of the official search, "
                                                        "1 for the whole network (the final phase)")
    p.add_argument("--stage", type=int, default=1, help="MGAS: the stage, 1-based (stages + 1: the final phase)")
    p.add_argument("--definition", default="train", choices=sorted(DEFINITIONS),
                   help="MGAS: how the step is run: " + "; ".join(f"{k}: {v}" for k, v in DEFINITIONS.items()))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    try:
        sources = locate(args.repo, args.kind)
    except OfficialCheckoutError as e:
        raise SystemExit(f"error: {e}") from None
    for key, value in default_shape(sources.folder).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.kind == "darts" and ((args.stages, args.stage) != (1, 1) or args.definition != "train"):
        p.error("--stages/--stage/--definition are for --kind mgas")
    problem = stage_problem(args.stages, args.stage, args.layers, args.resolution, "--stage")
    if args.kind == "mgas" and problem:
        p.error(problem)
    result = measure(args, sources)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
