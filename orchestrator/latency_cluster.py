"""``mgas latency build --address ...``: every node type of a Ray cluster times the same sampled
architectures on its own hardware, and each type gets its predictor folder under ``--out``.

A node type is what a latency depends on: for ``--device cpu`` the CPU model (read on the node by
a probe task pinned to it), for ``--device cuda`` the GPU's name. The samples are split into one
chunk per node of the type and each chunk is timed by a task pinned to that node
(``NodeAffinitySchedulingStrategy``, not soft), holding all of the node's CPUs (or one GPU) so
that no other task of the build runs beside it while it times. The chunks' samples and lookup
tables are merged and the type's predictors fitted and written to ``OUT/<device>-<name>``; a
trial given ``OUT`` as ``search.latency.predictor`` loads the folder of its own device
(:func:`mgas_core.latency.store.predictor_folder`). ``--out`` is a folder every node and the trials
read (shared storage on a real cluster) or an object store (``s3://``, ``gs://``: uploaded there,
and copied to a local cache where a search reads it, :func:`fetch_predictors`).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mgas_common.errors import UserInputError
from mgas_core.files.atomic import atomic_write_bytes
from mgas_core.latency.build import TimingPlan, fit_with_report
from mgas_core.latency.lookup import LookupTable
from mgas_core.latency.sampling import SampleShape, sample_architectures
from mgas_core.latency.store import SUMMARY_FILE, TimedSample, resolve_predictor_dir, save_predictors
from mgas_core.space.architecture import architecture_from_json
from orchestrator.storage import is_uri, reach, resolve


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


def save_to(out: str, name: str, save: Callable[[Path], None]) -> str:
    """Write a predictor folder ``out/name`` with ``save(folder)``: in place (atomically) on a local
    or mounted folder, else into a temporary folder uploaded file by file with ``predictor.json``
    last (a reader takes a folder as complete only once that file is there). Its location."""
    target = resolve(out).child(name) if name else resolve(out)
    if target.local:
        save(Path(target.path))
        return target.uri
    with tempfile.TemporaryDirectory(prefix="mgas-predictor-") as tmp:
        folder = Path(tmp) / "predictor"
        save(folder)
        for f in sorted(folder.iterdir(), key=lambda f: f.name == SUMMARY_FILE):
            target.child(f.name).write_bytes(f.read_bytes())
    return target.uri


def fetch_predictors(location: str, cache: Path) -> str:
    """A predictor root (or folder) on an object store copied to a local folder under ``cache``
    (every complete predictor folder: the ones with ``predictor.json``); local paths as they are."""
    if not is_uri(location):
        return location
    source = reach(location, "latency predictor location")
    local = cache / hashlib.sha256(source.uri.encode()).hexdigest()[:16]
    files = source.files()
    complete = {posixpath.dirname(f.path) for f in files if posixpath.basename(f.path) == SUMMARY_FILE}
    if not complete:
        raise UserInputError(f"{location} holds no latency predictor (no {SUMMARY_FILE}): build one with "
                             f"`mgas latency build --out {location} ...`")
    for f in files:
        folder = posixpath.dirname(f.path)
        if folder not in complete:
            continue
        rel = posixpath.relpath(f.path, source.path)
        dest = local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, f.read_bytes())
    return str(local)


def local_predictors(location: str, base_dir: Path) -> str:
    """Where a search reads ``search.latency.predictor``: an object store's copied to this
    machine's cache (the system temp folder), a relative folder taken from ``base_dir``."""
    if is_uri(location):
        return fetch_predictors(location, Path(tempfile.gettempdir()) / "mgas-predictors")
    return resolve_predictor_dir(location, base_dir)


def with_local_predictors(settings: Any, base_dir: Path) -> Any:
    """``settings`` (run settings) with their latency predictor where this machine reads it."""
    latency = settings.search.latency
    if latency.predictor:
        settings.search.latency = latency.model_copy(update={"predictor": local_predictors(latency.predictor,
                                                                                             base_dir)})
    return settings


def build_on_cluster(shape: SampleShape, plan: TimingPlan, count: int, seed: int, out: str) -> list[dict[str, Any]]:
    """Sample once, time on every node type, fit and write one predictor folder per type under
    ``out``; each type's summary (with the nodes that timed its samples)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    start = time.perf_counter()
    archs = sample_architectures(count, shape, seed)
    archs_json = [a.to_json() for a in archs]
    timer = ray.remote(_time_chunk)
    reports = []
    for (name, _torch), nodes in sorted(node_types(plan.device).items()):
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
        predictors, report = fit_with_report(samples, table, shape, plan, seed, start)
        report["nodes"] = sorted(r["node_id"] for r in results)
        where = save_to(out, type_folder(plan.device, name), lambda f, p=predictors, t=table, s=samples,
                        r=report: save_predictors(f, p, t, s, r))
        reports.append({**report, "folder": where})
    return reports
