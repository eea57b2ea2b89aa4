"""Checks a sweep passes before Tune starts: can any node of the cluster ever run one trial?

Tune waits forever for resources no node has (a trial asking a GPU on a machine without one),
so a request no node can satisfy is refused up front, naming the setting and what exists; so is,
with embedded Ray, a ``retrain.compile`` this machine has no compiler for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mgas_common.errors import UserInputError


def local_node() -> dict[str, float]:
    """What embedded Ray will offer on this machine (all CPUs, every visible CUDA GPU)."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of every alive node of the Ray cluster this process is connected to."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def _field(resources: Any, method: str, key: str) -> str:
    """The setting a method's value of ``key`` comes from: ``resources.<method>.<key>`` or the default's."""
    own = resources.root.get(method)
    if own is not None and getattr(own, key) is not None:
        return f"resources.{method}.{key}"
    return f"resources.{key}"


def check_capacity(resources: Any, methods: list[str], nodes: list[dict[str, float]], where: str) -> None:
    """Refuse a method's per-trial request (cpu, gpu, GPU model; ``resources`` is the spec's
    ``ResourcesSpec``) that no single node in ``nodes`` can ever satisfy: Tune would wait forever."""
    if not nodes:
        raise UserInputError(f"{where} has no alive node")
    for method in dict.fromkeys(methods):
        request = resources.for_method(method)
        most_cpu = max(n.get("CPU", 0.0) for n in nodes)
        if request["cpu"] > most_cpu:
            name = _field(resources, method, "cpu")
            raise UserInputError(f"{name}={request['cpu']:g} per trial, but the largest node of {where} has "
                                 f"{most_cpu:g} CPUs; lower {name}")
        if request["gpu"] > 0:
            name = _field(resources, method, "gpu")
            most_gpu = max(n.get("GPU", 0.0) for n in nodes)
            if most_gpu == 0:
                raise UserInputError(f"{name}={request['gpu']:g} per trial, but {where} has no GPU; set "
                                     f"{name}: 0 or run on a GPU cluster with --address")
            if request["gpu"] > most_gpu:
                raise UserInputError(f"{name}={request['gpu']:g} per trial, but the largest node of {where} has "
                                     f"{most_gpu:g} GPUs")
        model = request.get("accelerator_type")
        if model and not any(n.get(f"accelerator_type:{model}", 0.0) > 0 for n in nodes):
            models = sorted({k.split(":", 1)[1] for n in nodes for k in n if k.startswith("accelerator_type:")})
            raise UserInputError(f"{_field(resources, method, 'accelerator_type')}={model}, but no node of {where} "
                                 f"has that GPU model; there: {', '.join(models) or 'none'}")


def check_local_compile(trials: list[dict[str, Any]]) -> None:
    """Refuse, before embedded Ray starts, a trial whose ``retrain.compile`` this machine cannot
    build (on a cluster each trial checks its own node before its search: a failed trial)."""
    import torch

    from mgas_core.engine.compiled import check_compile

    for trial in trials:
        retrain = trial["settings"]["retrain"]
        named = trial["settings"]["device"]  # as resolve_device: auto is CUDA where the trial gets a GPU
        gpu = named == "cuda" or (named == "auto" and bool(trial["resources"].get("gpu")))
        device = torch.device("cuda" if gpu else "cpu")
        try:
            check_compile(retrain["compile"], retrain["compile_backend"], device)
        except UserInputError as exc:
            raise UserInputError(f"trial {trial['trial_id']}: {exc}") from None


def check_local_latency(trials: list[dict[str, Any]]) -> None:
    """Refuse, before embedded Ray starts, a trial whose latency predictor is missing, unreadable
    or built for another device, torch, input shape or cell (each trial on a cluster checks its
    own node when its search starts: a failed trial)."""
    import torch

    from mgas_core.data import dataset_info
    from mgas_core.latency.cost import LatencyCost
    from mgas_core.methods.registry import get_method
    from mgas_core.settings.run import DataSettings
    from orchestrator.latency_cluster import local_predictors

    for trial in trials:
        search = trial["settings"]["search"]
        cfg = search.get("latency") or {}
        if not cfg.get("predictor"):
            continue
        named = trial["settings"]["device"]
        gpu = named == "cuda" or (named == "auto" and bool(trial["resources"].get("gpu")))
        info = dataset_info(DataSettings.model_validate(trial["settings"]["data"]))
        try:
            LatencyCost(local_predictors(cfg["predictor"], Path.cwd()), cfg["coefficient"], cfg.get("target_ms"),
                        info, torch.device("cuda" if gpu else "cpu"), get_method(search["method"]).primitives,
                        search["nodes"])
        except UserInputError as exc:
            raise UserInputError(f"trial {trial['trial_id']}: {exc}") from None
