"""``mgas latency build --address ...``: every node type of a Ray cluster times the same sampled
architectures on its own hardware, and each type gets its predictor folder under ``--out``.

A node type is what a latency depends on: for ``--device cpu`` the CPU model (read on the node by
a probe task pinned to it), for ``--device cuda`` the GPU's name. The samples are split into one
chunk per node of the type and each chunk is timed by a task pinned to that node
(``NodeAffinitySchedulingStrategy``, not soft), holding all of the node's CPUs (or one GPU) so
that no other task of the build runs beside it while it times. The chunks' samples and lookup
tables are merged and the type's predictors fitted and written to ``OUT/<device>-<name>``; a
trial given ``OUT`` as ``search.latency.predictor`` loads the folder of its own device
(:func:`mgas_core.latency.store.predictor_for`). ``--out`` is a folder every node and the trials
read (shared storage on a real cluster).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from mgas_common.errors import UserInputError
from mgas_core.latency.build import TimingPlan, fit_and_evaluate
from mgas_core.latency.encoding import EncodingSpace
from mgas_core.latency.lookup import LookupTable
from mgas_core.latency.sampling import SampleShape, sample_architectures
from mgas_core.latency.store import TimedSample, save_predictors
from mgas_core.space.architecture import architecture_from_json


def type_folder(device: str, name: str) -> str:
    """The folder name of a node type's predictor: ``cpu-amd-epyc``, ``cuda-nvidia-h100-80gb-hbm3``."""
    return f"{device}-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown")


def _probe(device: str) -> dict[str, Any]:
    import ray
    import torch

    from mgas_core.latency.measure import device_name

    return {"node_id": ray.get_runtime_context().get_node_id(), "torch": str(torch.__version__),
            "name": device_name(torch.device(device)) if device == "cpu" or torch.cuda.is_available() else None}


def _time_chunk(archs_json: list[dict[str, Any]], shape: SampleShape, plan: TimingPlan) -> dict[str, Any]:
    import ray

    from mgas_core.latency.build import time_samples

    archs = [architecture_from_json(a) for a in archs_json]
    samples, table = time_samples(archs, shape, plan)
    return {"node_id": ray.get_runtime_context().get_node_id(), "table": table.as_dict(),
            "samples": [{"latency_ms": s.latency_ms, "table_ms": s.table_ms} for s in samples]}


def node_types(device: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(device name, torch version) -> the alive nodes of that type that can run a timing task."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    key = "GPU" if device == "cuda" else "CPU"
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get(key, 0) >= 1]
    if not nodes:
        raise UserInputError(f"no node of the cluster has a {key} to time on (--device {device})")
    probe = ray.remote(_probe)
    refs = [probe.options(num_cpus=0, num_gpus=1 if device == "cuda" else 0,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(device)
            for n in nodes]
    types: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for node, seen in zip(nodes, ray.get(refs)):
        if seen["name"] is None:
            continue  # a node that advertises a GPU torch cannot see
        types.setdefault((seen["name"], seen["torch"]), []).append(node)
    if not types:
        raise UserInputError(f"no node of the cluster can time on --device {device}")
    return types


def build_on_cluster(shape: SampleShape, plan: TimingPlan, count: int, seed: int, out: Path) -> list[dict[str, Any]]:
    """Sample once, time on every node type, fit and write one predictor folder per type under
    ``out``; each type's summary (with the nodes that timed its samples)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    start = time.perf_counter()
    archs = sample_architectures(count, shape, seed)
    archs_json = [a.to_json() for a in archs]
    timer = ray.remote(_time_chunk)
    reports = []
    for (name, torch_version), nodes in sorted(node_types(plan.device).items()):
        chunks = [archs_json[i::len(nodes)] for i in range(len(nodes))]
        order = [list(range(i, count, len(nodes))) for i in range(len(nodes))]
        refs = []
        for node, chunk in zip(nodes, chunks):
            if not chunk:
                continue
            hold = {"num_gpus": 1} if plan.device == "cuda" else {"num_cpus": node["Resources"]["CPU"]}
            refs.append(timer.options(**hold, scheduling_strategy=NodeAffinitySchedulingStrategy(
                node["NodeID"], soft=False)).remote(chunk, shape, plan))
        results = ray.get(refs)
        timed: list[TimedSample | None] = [None] * count
        table = LookupTable.from_dict(results[0]["table"])
        for result, idx in zip(results, order):
            table.entries.update({k: v for k, v in LookupTable.from_dict(result["table"]).entries.items()
                                  if k not in table.entries})
            for i, sample in zip(idx, result["samples"]):
                channels, layers = shape.shape_of(str(archs[i].meta["sample_kind"]))
                timed[i] = TimedSample(archs[i], channels, layers, sample["latency_ms"], sample["table_ms"])
        samples = [s for s in timed if s is not None]
        space = EncodingSpace(max(shape.search_layers, shape.retrain_layers), shape.nodes, shape.primitives)
        predictors, errors = fit_and_evaluate(samples, space, table.conditions, seed)
        folder = out / type_folder(plan.device, name)
        report = {**errors, "seconds": round(time.perf_counter() - start, 1), "device": plan.device,
                  "device_name": name, "torch_version": torch_version, "threads": plan.threads, "batch": plan.batch,
                  "input_shape": list(plan.info.input_shape), "dataset": plan.info.name, "seed": seed,
                  "space": space.as_dict(), "nodes": sorted(r["node_id"] for r in results),
                  "sample_shape": {"search_channels": shape.search_channels, "search_layers": shape.search_layers,
                                   "retrain_channels": shape.retrain_channels,
                                   "retrain_layers": shape.retrain_layers},
                  "table_entries": len(table.entries), "warmup": plan.warmup, "runs": plan.runs,
                  "folder": str(folder)}
        save_predictors(folder, predictors, table, samples, report)
        reports.append(report)
    return reports
