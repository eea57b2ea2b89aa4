"""Our step against the official code's (issue 17): ``benchmarks.supernet --official-darts PATH``
(``quark0/darts``) and ``--official-mgas PATH`` (``lxy12357/MG_DARTS``).

Ours (``benchmarks.supernet``) and the official step (``benchmarks.official.step``) run each in a
fresh process, one after the other, at the same shape and with the same definition of a step:
DARTS first order; MGAS every granularity, lambda > 0, the whole network (``--stages 1``) or
stage ``k`` of the official three-stage search (``--stages 3 --stage k``). The result holds both
sides' figures and the ratios ours / theirs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks.measure import SHAPE_FLAGS, argv_without, benchmark_settings, method_overrides, run_json
from benchmarks.official.mgas import stage_problem
from benchmarks.official.step import OfficialCheckoutError, OfficialSources, default_shape, locate
from mgas_core.methods.mgas.method import BENCHMARK_LAMBDA

OFFICIAL_KINDS = ("darts", "mgas")  # --official-darts, --official-mgas: the method each compares


AGREEMENT = {"step_s": 0.10, "peak_mem_mb": 0.05}
"""How far the two definitions of the official MGAS step may differ (relative, against the
``train`` definition) and still be read as timing the same work: this machine's run-to-run noise."""


def add_official_arguments(p: argparse.ArgumentParser, side: argparse._MutuallyExclusiveGroup) -> None:
    side.add_argument("--official-darts", metavar="PATH", help="also run the official DARTS step (quark0/darts)")
    side.add_argument("--official-mgas", metavar="PATH", help="also run the official MGAS step (lxy12357/MG_DARTS): "
                      "the whole network (--stages 1) or stage k of 3 (--stages 3 --stage k)")
    p.add_argument("--cross-check", action="store_true",
                   help="with --official-mgas: after the official train() step, time the same step composed "
                        "without train() (--definition explicit) in a third fresh process, and say whether the two "
                        f"agree (step time within {AGREEMENT['step_s']:.0%}, "
                        f"peak within {AGREEMENT['peak_mem_mb']:.0%})")


def definitions_agreement(train: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """The two official definitions side by side: each figure's ratio explicit / train and whether
    every ratio is within :data:`AGREEMENT` of 1."""
    ratios = {key: round(explicit[key] / train[key], 3) for key in AGREEMENT}
    agree = all(abs(ratios[key] - 1) <= tolerance for key, tolerance in AGREEMENT.items())
    return {"explicit_over_train": ratios, "tolerance": AGREEMENT, "agree": agree}


def official_ratios(ours: dict[str, Any], official: dict[str, Any]) -> dict[str, float | None]:
    """Ours over official: images/s, peak memory, activation memory (None where theirs is not > 0)."""
    def ratio(key: str) -> float | None:
        return round(ours[key] / official[key], 3) if official[key] > 0 else None

    return {"speed_vs_official": ratio("images_per_s"), "memory_vs_official": ratio("peak_mem_mb"),
            "activation_vs_official": ratio("activation_mb")}


def official_commands(args: argparse.Namespace, argv: list[str], kind: str, repo: str) -> tuple[list[str], list[str]]:
    """The two fresh processes: our step (the caller's flags, minus the official one, plus the
    method and the resolved shape) and the official step at the same shape."""
    base = argv_without(argv_without(argv, "--official-darts", True), "--official-mgas", True)
    base = [a for a in base if a not in ("--json", "--cross-check")]
    shape = [x for key in SHAPE_FLAGS for x in (f"--{key}", str(getattr(args, key)))]
    stage = [str(args.stages), str(args.stage)] if kind == "mgas" else []
    method = ["--method", kind] + (["--stages", stage[0], "--stage", stage[1]] if stage else ["--order", "1"])
    ours = [sys.executable, "-m", "benchmarks.supernet", *base, *method, *shape, "--json"]
    official = [sys.executable, "-m", "benchmarks.official.step", "--repo", repo, "--kind", kind, *shape, "--json"]
    if stage:
        official += ["--lam", str(BENCHMARK_LAMBDA), "--stages", stage[0], "--stage", stage[1]]
    return ours, official


def against_official(args: argparse.Namespace, argv: list[str], sources: OfficialSources) -> dict[str, Any]:
    """Ours, then the official step, each in a fresh process; both results and the ratios."""
    ours_cmd, official_cmd = official_commands(args, argv, sources.kind, str(sources.repo))
    ours = run_json(ours_cmd)
    official = run_json(official_cmd)
    if ours["cells_run"] != official["cells_run"]:
        raise SystemExit(f"error: our step ran {ours['cells_run']} cells, the official one {official['cells_run']}: "
                         f"not the same step")
    checked: dict[str, Any] = {}
    if getattr(args, "cross_check", False):
        explicit = run_json([*official_cmd, "--definition", "explicit"])
        checked = {"official_explicit": explicit, "definitions": definitions_agreement(official, explicit)}
    return {"ours": ours, "official": official, **official_ratios(ours, official), **checked,
            "official_repo": str(sources.repo), "official_commit": sources.commit,
            "official_default_shape": default_shape(sources.folder)}


def resolve_official(p: argparse.ArgumentParser, args: argparse.Namespace) -> OfficialSources | None:
    """Check the flags of a run against the official code and its checkout (before minutes are
    spent on our side), with the shape already resolved; sets ``args.method`` (and, for MGAS,
    ``args.stages`` as our step resolves it)."""
    chosen = [(kind, getattr(args, f"official_{kind}")) for kind in OFFICIAL_KINDS
              if getattr(args, f"official_{kind}")]
    if not chosen:
        if args.cross_check:
            p.error("--cross-check times the official MGAS step two ways: use it with --official-mgas PATH")
        return None
    kind, repo = chosen[0]
    if args.method not in (None, kind):
        p.error(f"--official-{kind} measures --method {kind}, not {args.method}")
    args.method = kind
    search = benchmark_settings(method_overrides(args) | {"search.method": kind}).search
    if kind == "mgas":
        args.stages = search.mgas.stages
        problem = stage_problem(args.stages, args.stage, args.layers, args.resolution)
        if problem:
            p.error(f"--official-mgas: {problem}")
    if kind == "darts" and args.cross_check:
        p.error("--cross-check times the official MGAS step two ways: use it with --official-mgas")
    if kind == "darts" and search.darts.order != 1:
        p.error("--official-darts compares the first-order step: use --order 1")
    try:
        return locate(repo, kind)
    except OfficialCheckoutError as e:
        raise SystemExit(f"error: {e}") from None
