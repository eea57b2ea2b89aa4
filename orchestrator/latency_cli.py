"""``mgas latency measure`` and ``mgas latency build``: a network's measured latency, and a
device's latency predictors (``mgas_core/latency``).

    mgas latency measure --arch A.json --device cpu --batch 1 --threads 1 --json
    mgas latency build --device cpu --dataset digits --preset tiny --samples 2000 --out predictors/cpu --json

Bad input (an unknown device, CUDA without a GPU, a count out of range, an architecture the
dataset cannot build) is one line and exit status 2, before anything is timed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from mgas_common.errors import UserInputError
from mgas_core.latency.measure import DEFAULT_RUNS, DEFAULT_WARMUP, LATENCY_DEVICES
from orchestrator.storage import is_uri, reach

MAX_SAMPLES = 100_000


LATENCY_SEARCH_FLAGS = {"latency_predictor": "search.latency.predictor",
                        "target_latency_ms": "search.latency.target_ms",
                        "latency_coefficient": "search.latency.coefficient"}
"""``mgas search``'s latency flags (argparse dest) -> the setting each sets."""


def add_latency_search_flags(search: argparse.ArgumentParser) -> None:
    search.add_argument("--latency-predictor", metavar="DIR",
                        help="make the search latency-aware with this device's predictor (a folder or object "
                             "store written by `mgas latency build`)")
    search.add_argument("--target-latency-ms", type=float, metavar="MS",
                        help="with --latency-predictor: the latency target (ms)")
    search.add_argument("--latency-coefficient", type=float, metavar="C",
                        help="balancing coefficient of the latency term of DARTS and MSG-DAS (default 0.1)")


def take_cost_latency(overrides: dict[str, Any]) -> None:
    """``--cost latency`` (GOLD-NAS's flag, for any method here): latency-aware with the predictor
    given, which is what enables it; without one, one line."""
    if overrides.get("search.gold_nas.cost") == "latency":
        del overrides["search.gold_nas.cost"]
        if "search.latency.predictor" not in overrides:
            raise UserInputError("--cost latency needs --latency-predictor DIR (a folder written by "
                                 "`mgas latency build`)")


def add_latency_parser(sub: argparse._SubParsersAction, datasets: tuple[str, ...], presets: list[str]) -> None:
    latency = sub.add_parser("latency", help="measure a network's latency, or build a device's latency predictors")
    cmds = latency.add_subparsers(dest="latency_command", required=True, parser_class=type(latency))

    def timing_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", required=True, choices=LATENCY_DEVICES, help="where to time: cpu or cuda")
        p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads while timing (default 1)")
        p.add_argument("--warmup", type=int, default=None, help="untimed forward passes first")
        p.add_argument("--runs", type=int, default=None, help="timed forward passes; the median is the latency")
        p.add_argument("--json", action="store_true", help="print one JSON object")

    measure = cmds.add_parser("measure", help="time the evaluation network of an architecture")
    measure.add_argument("--arch", required=True, help="darts_v1, darts_v2 or a path to an architecture JSON")
    measure.add_argument("--dataset", choices=datasets,
                         help="the input it is built for (default: the dataset the architecture was searched on)")
    measure.add_argument("--channels", type=int, help="initial channels C (genotypes; default 36, imagenet 48)")
    measure.add_argument("--layers", type=int, help="number of cells L (genotypes; default 20, imagenet 14)")
    timing_flags(measure)

    build = cmds.add_parser("build", help="sample architectures, time them, fit latency predictors")
    build.add_argument("--dataset", required=True, choices=datasets, help="the input shape the networks take")
    build.add_argument("--preset", default="tiny", choices=presets,
                       help="the search and retraining shape sampled architectures are built at (default tiny)")
    build.add_argument("--samples", type=int, default=2000, help="architectures to time (default 2000)")
    build.add_argument("--seed", type=int, default=0, help="sampling and fitting seed (default 0)")
    build.add_argument("--out", required=True, help="folder for the predictors, table and samples (with "
                       "--address: one folder per node type below it, on storage every node reads)")
    build.add_argument("--address", help="a Ray cluster: every node type times the samples on its own hardware")
    timing_flags(build)


def _check_timing(args: argparse.Namespace, here: bool = True) -> None:
    """The counts in range; with ``here`` (timing in this process), a CUDA device to time on."""
    for flag, value, low in (("--batch", args.batch, 1), ("--threads", args.threads, 1),
                             ("--runs", args.runs, 1), ("--warmup", args.warmup, 0)):
        if value is not None and value < low:
            raise UserInputError(f"{flag} must be at least {low}, got {value}")
    if here and args.device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: no CUDA device is visible to this process (allowed: cpu, cuda)")


def check_predictor_out(out: Path) -> None:
    """``--out`` of a build is replaced whole: it must be new, or a predictor folder an earlier
    build wrote (never a file, or a folder of something else)."""
    from mgas_core.latency.store import SUMMARY_FILE

    if out.is_symlink() and not out.exists():
        raise UserInputError(f"--out {out} is a broken symlink")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SUMMARY_FILE).is_file():
        raise UserInputError(f"--out {out} is a folder that holds something other than a latency predictor "
                             f"(no {SUMMARY_FILE}); a build replaces its folder whole: choose a new one")


def measure_command(args: argparse.Namespace) -> dict[str, Any]:
    from mgas_core.data import dataset_info
    from mgas_core.evaluation_network import build_eval_network
    from mgas_core.latency.measure import measure_latency
    from mgas_core.settings.run import DataSettings
    from mgas_core.space.builtin_architectures import resolve_architecture
    from orchestrator.local import eval_shape

    _check_timing(args)
    arch = resolve_architecture(args.arch)
    dataset = args.dataset or arch.meta.get("dataset")
    if not dataset:
        raise UserInputError(f"architecture {arch.name!r} does not say which dataset it was searched on: "
                             f"give --dataset")
    info = dataset_info(DataSettings(name=dataset))
    channels, layers = eval_shape(arch, info, args.channels, args.layers)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_eval_network(arch, info.num_classes, info.in_channels, channels, layers, auxiliary=False,
                             variant=info.variant).to(device)
    warmup = DEFAULT_WARMUP if args.warmup is None else args.warmup
    runs = DEFAULT_RUNS if args.runs is None else args.runs
    measured = measure_latency(net, info.input_shape, args.batch, device, args.threads, warmup, runs)
    return {"arch": arch.name, "dataset": info.name, "channels": channels, "layers": layers,
            **measured.as_dict(), "memory_format": "contiguous",
            "measured": f"median of {runs} forward passes after {warmup} untimed, evaluation mode, no autograd, "
                        f"{args.threads} thread(s)" + (", CUDA synchronised" if device.type == "cuda" else "")}


def build_command(args: argparse.Namespace) -> dict[str, Any]:
    from mgas_core.data import dataset_info
    from mgas_core.latency.build import TimingPlan, build_predictors
    from mgas_core.latency.sampling import SampleShape
    from mgas_core.methods.registry import build_settings
    from mgas_core.space.topology import NO_NONE_PRIMITIVES

    if not 10 <= args.samples <= MAX_SAMPLES:
        raise UserInputError(f"--samples must be between 10 and {MAX_SAMPLES}, got {args.samples}")
    _check_timing(args, here=args.address is None)
    if is_uri(args.out):
        reach(args.out, "--out")  # an object store answers within seconds, or one line
    elif args.address is None:
        check_predictor_out(Path(args.out))
    elif Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserInputError(f"--out {args.out} is a file, not a folder")
    settings = build_settings(args.preset, {"data.name": args.dataset})
    s, r = settings.search, settings.retrain
    shape = SampleShape(s.nodes, s.channels, s.layers, r.channels or s.channels, r.layers or s.layers,
                        NO_NONE_PRIMITIVES)
    plan = TimingPlan(dataset_info(settings.data), args.device, args.threads, args.batch,
                      3 if args.warmup is None else args.warmup, 15 if args.runs is None else args.runs)
    if args.address is not None:
        from orchestrator.latency_cluster import build_on_cluster
        from orchestrator.ray_runtime import init_ray
        from orchestrator.reachability import check_ray_address

        init_ray(check_ray_address(args.address))  # an address that does not answer: one line within seconds
        reports = build_on_cluster(shape, plan, args.samples, args.seed, args.out)
        return {"out": str(args.out), "types": reports}
    from orchestrator.latency_cluster import save_to

    reports: list[dict[str, Any]] = []
    where = save_to(args.out, "", lambda folder: reports.append(
        build_predictors(shape, plan, args.samples, args.seed, folder)))
    return {**reports[0], "out": where}


def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    return {"measure": measure_command, "build": build_command}[args.latency_command](args)
