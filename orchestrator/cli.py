"""The ``mgas`` command line: info, search, train (single process), run, collect, report (sweeps) and
import-arch (a published architecture into the project's format).

Every user error (unknown name, bad or non-finite value, missing or malformed file, settings
that cannot run together) is a :class:`~mgas_common.errors.UserInputError`, printed as one line
``mgas: error: ...`` naming the field or the path, with exit code 2, before anything is written
or started. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO

from pydantic import ValidationError

from mgas_common.errors import UserInputError, format_validation_error, one_line
from mgas_common.safe_yaml import load_yaml
from mgas_common.user_files import check_output_dir
from mgas_core.engine.runtime import DivergedError
from mgas_core.methods.registry import (
    build_settings,
    known_paths,
    method_flags,
    method_names,
    method_styles,
    preset_names,
)
from mgas_core.settings.run import DATASETS, RunSettings
from mgas_core.space.importers import DEFAULT_DARTS_LAYERS, FORMATS, import_architecture
from orchestrator.interrupts import InterruptWatch
from orchestrator.latency_cli import (
    LATENCY_SEARCH_FLAGS,
    add_latency_parser,
    add_latency_search_flags,
    run_latency,
    take_cost_latency,
)

EXIT_USAGE = 2
EXIT_FAILED = 1


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as a single line and exits 2; no abbreviated flags (``--epo``
    is an error, not ``--epochs``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"mgas: error: {message} (see `{self.prog} --help`)\n")


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a non-empty comma-separated list")
    return items


def _key_value(value: str) -> tuple[str, Any]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE with a dotted settings path, got {value!r}")
    key, raw = value.split("=", 1)
    try:
        return key.strip(), load_yaml(raw, f"--set {key.strip()} value")
    except UserInputError as exc:
        raise argparse.ArgumentTypeError(one_line(str(exc))) from exc


def _add_common(p: argparse.ArgumentParser, *, dataset_required: bool = True) -> None:
    p.add_argument("--dataset", required=dataset_required, choices=DATASETS, help="dataset to use")
    p.add_argument("--data-root", help="folder holding the dataset files (cifar/imagenet)")
    p.add_argument("--download", action="store_true", help="download cifar10/cifar100 into --data-root if missing")
    p.add_argument("--preset", default="paper", choices=sorted(preset_names()),
                   help="settings preset: paper (CIFAR defaults), tiny (CPU-sized, for digits), smoke (the smallest "
                        "shape that runs, on synthetic data), imagenet")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device (default auto: cuda if available)")
    p.add_argument("--threads", type=int, help="torch CPU threads for this process")
    p.add_argument("--set", dest="overrides", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="override any setting by dotted path, e.g. --set search.mgas.regrow_fraction=0.3")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--json", action="store_true", help="print one JSON summary object on stdout")
    p.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mgas", description="Multi-granularity architecture search and its baselines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    info = sub.add_parser("info", help="parameters and FLOPs of an evaluation network")
    info.add_argument("--arch", required=True, help="darts_v1, darts_v2 or a path to an architecture JSON")
    info.add_argument("--dataset", required=True, choices=DATASETS, help="dataset the network is built for")
    info.add_argument("--channels", type=int, help="initial channels C (genotypes; default 36, imagenet 48)")
    info.add_argument("--layers", type=int, help="number of cells L (genotypes; default 20, imagenet 14)")
    info.add_argument("--json", action="store_true", help="print one JSON object")

    search = sub.add_parser("search", help="run one architecture search in this process (no Ray)")
    search.add_argument("--method", required=True, help=f"search method: {', '.join(method_names())}")
    _add_common(search)
    search.add_argument("--epochs", type=int, help="search epochs (paper: 50)")
    search.add_argument("--layers", type=int, help="cells of the supernet (paper: 8)")
    search.add_argument("--channels", type=int, help="initial channels of the supernet (paper: 16)")
    search.add_argument("--batch", type=int, help="batch size (paper: 64)")
    search.add_argument("--target-params", type=float, metavar="M",
                        help="target size in millions of (nonzero) parameters of the derived model")
    add_latency_search_flags(search)
    add_method_flags(search)
    search.add_argument("--impl", choices=("fast", "reference"), help="supernet implementation (default fast)")
    search.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt if present")

    train = sub.add_parser("train", help="retrain an architecture from scratch and test it")
    train.add_argument("--arch", required=True, help="darts_v1, darts_v2 or a path to an architecture JSON")
    _add_common(train)
    train.add_argument("--epochs", type=int, help="training epochs (paper: 600)")
    train.add_argument("--channels", type=int, help="initial channels (genotypes; paper: 36)")
    train.add_argument("--layers", type=int, help="number of cells (genotypes; paper: 20)")
    train.add_argument("--batch", type=int, help="batch size (paper: 96)")
    train.add_argument("--target-params", type=float, metavar="M",
                       help="scale a genotype's width so the network has about M million parameters")

    run = sub.add_parser("run", help="run a sweep described by an experiment YAML on Ray Tune")
    run.add_argument("experiment", type=Path, help="experiment YAML file")
    run.add_argument("--out", help="results root, a folder or s3://... (default: the spec's storage_path, "
                                   "else its output_dir)")
    run.add_argument("--address", help="join an existing Ray cluster (default: $RAY_ADDRESS, else embedded Ray)")
    run.add_argument("--runtime-env", type=Path, metavar="FILE",
                     help="YAML/JSON with Ray runtime_env keys working_dir, pip, env_vars, excludes (replacing "
                          "the spec's runtime keys it names): the code and its requirements on every node")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted sweep: finished trials kept, the others from their newest "
                          "checkpoint (reads the folder's JSON and checkpoints, never a pickle)")
    run.add_argument("--dry-run", action="store_true", help="print the trial table and resources; start nothing")
    run.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    run.add_argument("--mlflow", nargs="?", const="", metavar="URI",
                     help="log every trial as an MLflow run, to URI (default: a SQLite store in the experiment's "
                          "folder, <experiment>/mlruns/mlflow.db)")
    run.add_argument("--dashboard", action="store_true",
                     help="start embedded Ray's dashboard (off by default; bound to 127.0.0.1)")
    run.add_argument("--dashboard-host", metavar="ADDR",
                     help="bind the dashboard to ADDR instead of 127.0.0.1 (e.g. 0.0.0.0: reachable by anyone "
                          "who can reach this machine, and the dashboard can submit jobs)")

    collect = sub.add_parser("collect", help="rebuild every trial's row from Tune's saved state on the storage")
    collect.add_argument("storage", help="an experiment's folder (<storage_path>/<name>, local or s3://...) or a "
                                         "folder of them")
    collect.add_argument("--json", action="store_true", help="print a JSON summary")

    report = sub.add_parser("report", help="plots, tables and an HTML report from a results folder")
    report.add_argument("results", help="results folder, local or s3://... (one experiment or a folder of them)")
    report.add_argument("--out", type=Path, help="where to write the report (default RESULTS/report)")
    report.add_argument("--published", type=Path,
                        help="published reference numbers (default experiments/reference/published.yaml)")

    imp = sub.add_parser("import-arch", help="bring in a published architecture: its genotypes file, read as data")
    imp.add_argument("--format", required=True, choices=FORMATS,
                     help="darts (quark0/darts cnn/genotypes.py), gold_nas (sunsmarterjie/GOLD_NAS "
                          "cifar_train/genotypes.py), mg_darts (lxy12357/MG_DARTS cifar_train/genotypes)")
    imp.add_argument("file", type=Path, help="the genotypes source file (parsed, never run)")
    imp.add_argument("name", help="the Genotype(...) assigned to this name in it, e.g. DARTS_V2, s1, MG_DARTS_small")
    imp.add_argument("--channels", type=int, required=True,
                     help="initial channels it was trained with (MG_DARTS 44, MG_DARTS_small 24, DARTS 36)")
    imp.add_argument("--layers", type=int, help=f"cells (darts: default {DEFAULT_DARTS_LAYERS}; gold_nas, mg_darts: "
                                               "the genotype's own count, the only one allowed)")
    imp.add_argument("--masks", type=Path, help="mg_darts weight masks (masks/*.npy: a torch.save'd nested list)")
    imp.add_argument("--out", type=Path, required=True, help="folder for arch.json (and arch.masks.safetensors)")
    imp.add_argument("--json", action="store_true", help="print one JSON summary object")
    add_latency_parser(sub, DATASETS, sorted(preset_names()))
    return parser


def _overrides(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr, path in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[path] = value
    for key, value in args.overrides:
        out[key] = value
    return out


SHARED_SEARCH_FLAGS = {
    "dataset": "data.name", "data_root": "data.root", "seed": "seed", "device": "device", "threads": "threads",
    "method": "search.method", "epochs": "search.epochs", "layers": "search.layers", "channels": "search.channels",
    "batch": "search.batch_size", "target_params": "search.target_params", "impl": "search.impl",
    **LATENCY_SEARCH_FLAGS,
}


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """The flags the registered methods offer (:attr:`SearchMethod.cli_flags`), e.g. ``--order``; a
    value outside a field's choices is refused by the settings, in one line naming the setting."""
    for dest, (_path, kind, _choices, help_text) in method_flags().items():  # the settings check the choices
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, type=_csv if kind is list else kind,
                            help=help_text)


def search_flags() -> dict[str, str]:
    """``mgas search``'s flags (argparse dest) -> the setting each sets: the shared ones and every
    registered method's."""
    return {**SHARED_SEARCH_FLAGS, **{dest: spec[0] for dest, spec in method_flags().items()}}
TRAIN_FLAGS = {
    "dataset": "data.name", "data_root": "data.root", "seed": "seed", "device": "device", "threads": "threads",
    "epochs": "retrain.epochs", "channels": "retrain.channels", "layers": "retrain.layers",
    "batch": "retrain.batch_size", "target_params": "retrain.target_params",
}


def settings_from_args(args: argparse.Namespace, mapping: dict[str, str]) -> RunSettings:
    overrides = _overrides(args, mapping)
    if args.download:
        overrides["data.download"] = True
    take_cost_latency(overrides)
    if "search.target_params" in overrides:  # genotype methods reach the target by width scaling
        overrides.setdefault("retrain.target_params", overrides["search.target_params"])
    paths = set(known_paths())
    for key in overrides:
        if key not in paths and not any(p.startswith(key + ".") for p in paths):
            raise UserInputError(f"unknown setting {key!r}; see `mgas search --help` or the settings reference")
    flags = {path: "--" + attr.replace("_", "-") for attr, path in mapping.items()}
    try:
        return build_settings(args.preset, overrides)
    except ValidationError as exc:
        raise UserInputError(format_validation_error(exc, names=flags)) from None


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[TextIO]:
    """While a ``--json`` command runs, everything else that would reach stdout (Ray's and Tune's
    banners, worker output forwarded to the driver, our own progress lines) goes to stderr, at the
    file-descriptor level where stdout has one; yields a stream on the real stdout for the JSON."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (an in-process test's capture)
        fd = None
    saved_fd = os.dup(fd) if fd is not None else None
    real = os.fdopen(saved_fd, "w", closefd=False) if saved_fd is not None else sys.stdout
    previous = sys.stdout
    try:
        if fd is not None:
            sys.stderr.flush()
            os.dup2(sys.stderr.fileno(), fd)
        sys.stdout = sys.stderr
        yield real
    finally:
        sys.stdout.flush()
        sys.stdout = previous
        if saved_fd is not None:
            real.flush()
            os.dup2(saved_fd, fd)
            os.close(saved_fd)


def _print_json(value: Any, stream: TextIO | None) -> None:
    print(json.dumps(value, default=str), file=stream or sys.stdout, flush=True)


def _emit(summary: dict[str, Any], as_json: bool, stream: TextIO | None = None) -> None:
    if as_json:
        _print_json(summary, stream)
        return
    for key, value in summary.items():
        if key in ("events", "snapshots"):
            print(f"{key}: {len(value)}")
        elif isinstance(value, float):
            print(f"{key}: {value:.6g}")
        else:
            print(f"{key}: {value}")


def _cmd_info(args: argparse.Namespace) -> None:
    from mgas_core.data import dataset_info
    from mgas_core.settings.run import DataSettings
    from mgas_core.space.builtin_architectures import resolve_architecture
    from orchestrator.local import info_command

    arch = resolve_architecture(args.arch)
    info = dataset_info(DataSettings(name=args.dataset))
    _emit(info_command(arch, info, args.channels, args.layers), args.json, args.json_stream)


def _cmd_search(args: argparse.Namespace) -> None:
    from orchestrator.local import search_command

    settings = settings_from_args(args, search_flags())
    s = settings.search
    out = args.out or Path("runs") / f"search-{s.method}-{settings.data.name}-seed{settings.seed}"
    _emit(search_command(settings, out, resume=args.resume, progress=not args.no_progress), args.json,
          args.json_stream)


def _cmd_train(args: argparse.Namespace) -> None:
    from mgas_core.space.builtin_architectures import resolve_architecture
    from orchestrator.local import train_command

    settings = settings_from_args(args, TRAIN_FLAGS)
    arch = resolve_architecture(args.arch)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", arch.name).lstrip(".") or "arch"  # the name comes from a file
    out = args.out or Path("runs") / f"train-{name}-{settings.data.name}-seed{settings.seed}"
    _emit(train_command(arch, settings, out, progress=not args.no_progress), args.json, args.json_stream)


def _cmd_run(args: argparse.Namespace) -> None:
    from orchestrator.sweep import run_command

    if args.out is not None and args.out.startswith("file://"):  # a local folder, checked as one
        if not args.out[len("file://"):].strip("/"):
            raise UserInputError(f"--out {args.out!r} names no folder; give file:///PATH or a path")
        args.out = args.out[len("file://"):]
    if args.out is not None and "://" not in args.out:  # an object store is checked when it is opened
        check_output_dir(Path(args.out), "--out")
    summary = run_command(args.experiment, out=args.out, address=args.address, resume=args.resume,
                          dry_run=args.dry_run, dashboard=args.dashboard, dashboard_host=args.dashboard_host,
                          runtime_env_file=args.runtime_env, mlflow=args.mlflow)
    if args.json and summary is not None:
        _print_json(summary, args.json_stream)


def _cmd_collect(args: argparse.Namespace) -> None:
    from orchestrator.collect import collect_command

    summaries = collect_command(args.storage)
    if args.json:
        _print_json(summaries, args.json_stream)


def _cmd_report(args: argparse.Namespace) -> None:
    from analysis.load import AnalysisError
    from analysis.report import default_report_folder, report_command

    check_output_dir(args.out or default_report_folder(args.results), "--out" if args.out else "report folder")
    try:
        styles = {name: (s.colour, s.marker, s.label) for name, s in method_styles().items()}
        report_command(args.results, args.out, args.published, styles)
    except AnalysisError as exc:
        raise UserInputError(str(exc)) from exc


def _cmd_import_arch(args: argparse.Namespace) -> None:
    from mgas_core.evaluation_network import count_architecture_params

    check_output_dir(args.out, "--out")
    arch = import_architecture(args.format, args.file, args.name, args.channels, args.layers, args.masks)
    path = arch.save(args.out / "arch.json")
    counted = count_architecture_params(arch, 10, channels=arch.channels, layers=arch.layers)
    cells = [arch.normal, arch.reduce] if arch.cells is None else arch.cells
    _emit({"arch": arch.name, "format": args.format, "out": str(path), "channels": arch.channels,
           "layers": arch.layers, "ops": sum(len(c.ops) for c in cells if c is not None),
           "masked_convs": len(arch.masks or {}), "style": arch.style.to_json(), "cifar10_params": counted.dense,
           "cifar10_nonzero_params": counted.nonzero}, args.json, args.json_stream)


def _cmd_latency(args: argparse.Namespace) -> None:
    _emit(run_latency(args), args.json, args.json_stream)


COMMANDS = {"info": _cmd_info, "search": _cmd_search, "train": _cmd_train, "run": _cmd_run, "collect": _cmd_collect,
            "report": _cmd_report, "import-arch": _cmd_import_arch, "latency": _cmd_latency}


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every registered method: seconds a Ctrl-C may fall into
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("mgas: interrupted", file=sys.stderr)
        return 130
    args.json_stream = None
    try:
        with InterruptWatch():  # a Ctrl-C Python drops (in an at-fork handler) is raised again later
            if getattr(args, "json", False):  # stdout holds the JSON object and nothing else
                with stdout_to_stderr() as args.json_stream:
                    COMMANDS[args.command](args)
            else:
                COMMANDS[args.command](args)
    except UserInputError as exc:  # only user errors; a bug keeps its traceback
        print(f"mgas: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except DivergedError as exc:  # the run's outcome, not a bug: say so in one line
        print(f"mgas: failed: {exc}; lower the learning rate (search.w_lr / retrain.lr)", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("mgas: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
