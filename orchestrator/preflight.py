"""Checks a sweep passes before Tune starts: can any node of the cluster ever run one trial?

Tune waits forever for resources no node has (a trial asking a GPU on a machine without one),
so a request no node can satisfy is refused up front, naming the setting and what exists.
"""

from __future__ import annotations

import os
from typing import Any

from mgas_core.errors import UserInputError


def local_node() -> dict[str, float]:
    """What embedded Ray will offer on this machine (all CPUs, every visible CUDA GPU)."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of every alive node of the Ray cluster this process is connected to."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def check_capacity(resources: Any, nodes: list[dict[str, float]], where: str) -> None:
    """Refuse per-trial ``resources`` (cpu, gpu) that no single node in ``nodes`` has."""
    if not nodes:
        raise UserInputError(f"{where} has no alive node")
    most_cpu = max(n.get("CPU", 0.0) for n in nodes)
    if resources.cpu > most_cpu:
        raise UserInputError(f"resources.cpu={resources.cpu:g} per trial, but the largest node of {where} has "
                             f"{most_cpu:g} CPUs; lower resources.cpu")
    if resources.gpu > 0:
        most_gpu = max(n.get("GPU", 0.0) for n in nodes)
        if most_gpu == 0:
            raise UserInputError(f"resources.gpu={resources.gpu:g} per trial, but {where} has no GPU; set "
                                 "resources.gpu: 0 or run on a GPU cluster with --address")
        if resources.gpu > most_gpu:
            raise UserInputError(f"resources.gpu={resources.gpu:g} per trial, but the largest node of {where} has "
                                 f"{most_gpu:g} GPUs")
