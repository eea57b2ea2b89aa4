"""Building a device's latency predictors: sample architectures, time them, fit, hold out, save.

``build_predictors`` draws ``samples`` architectures (:mod:`~mgas_core.latency.sampling`), times
each one's evaluation network (:func:`~mgas_core.latency.measure.measure_latency`) and sums its
parts in the lookup table (:mod:`~mgas_core.latency.lookup`), holds out a fifth of them, fits the
``mlp`` and the ``hybrid`` predictors on the rest, and reports every predictor's held-out median
and 90th-percentile relative error beside the table's. The samples can be timed here or, on a
cluster, elsewhere (``time_samples`` is what a remote task runs) and handed in.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mgas_core.data import DatasetInfo
from mgas_core.evaluation_network import build_eval_network
from mgas_core.latency.encoding import EncodingSpace, encode
from mgas_core.latency.lookup import LookupTable
from mgas_core.latency.measure import LatencyConditions, measure_latency
from mgas_core.latency.predictor import LatencyPredictor, error_summary, fit_predictor, relative_errors
from mgas_core.latency.sampling import SampleShape, sample_architectures
from mgas_core.latency.store import TimedSample, save_predictors
from mgas_core.space.architecture import Architecture

HOLDOUT = 0.2


@dataclass(frozen=True)
class TimingPlan:
    """What every sample is timed under."""

    info: DatasetInfo
    device: str
    threads: int
    batch: int
    warmup: int = 3
    runs: int = 15


def time_samples(archs: Sequence[Architecture], shape: SampleShape, plan: TimingPlan,
                 table: LookupTable | None = None) -> tuple[list[TimedSample], LookupTable]:
    """Time each architecture's evaluation network and its lookup-table sum on this machine."""
    device = torch.device(plan.device)
    info = plan.info
    conditions = LatencyConditions.current(device, plan.threads, plan.batch, info.input_shape)
    table = table or LookupTable(conditions, info.num_classes, info.variant)
    out = []
    for arch in archs:
        channels, layers = shape.shape_of(str(arch.meta["sample_kind"]))
        torch.manual_seed(0)
        net = build_eval_network(arch, info.num_classes, info.in_channels, channels, layers, auxiliary=False,
                                 variant=info.variant).to(device)
        measured = measure_latency(net, info.input_shape, plan.batch, device, plan.threads, plan.warmup, plan.runs)
        out.append(TimedSample(arch, channels, layers, measured.median_ms,
                               table.predict(arch, channels, layers, device)))
    return out, table


def fit_and_evaluate(samples: Sequence[TimedSample], space: EncodingSpace, conditions: LatencyConditions,
                     seed: int) -> tuple[dict[str, LatencyPredictor], dict[str, Any]]:
    """Fit both predictors on all but a held-out fifth (drawn from ``seed``); their held-out errors
    and the table's."""
    if len(samples) < 10:
        raise ValueError(f"at least 10 samples are needed to hold some out, got {len(samples)}")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    held = max(2, round(HOLDOUT * len(samples)))
    test_idx, train_idx = order[:held], order[held:]
    enc = torch.stack([encode(s.arch, space, s.channels, s.layers) for s in samples])
    lat = torch.tensor([s.latency_ms for s in samples], dtype=torch.float64)
    tab = torch.tensor([s.table_ms for s in samples], dtype=torch.float64)
    train, test = torch.tensor(train_idx), torch.tensor(test_idx)
    predictors = {kind: fit_predictor(kind, space, conditions, enc[train], lat[train],
                                      tab[train] if kind == "hybrid" else None, seed)
                  for kind in ("mlp", "hybrid")}
    with torch.no_grad():
        errors = {kind: relative_errors(p.predict_ms(enc[test], tab[test].float()).double(), lat[test])
                  for kind, p in predictors.items()}
    table_errors = relative_errors(tab[test], lat[test])
    report = {"samples": len(samples), "train": len(train_idx), "held_out": held,
              **error_summary(errors["mlp"]),
              **{f"hybrid_{k}": v for k, v in error_summary(errors["hybrid"]).items()},
              **{f"lut_{k}": v for k, v in error_summary(table_errors).items()},
              "latency_ms_range": [round(float(lat.min()), 4), round(float(lat.max()), 4)]}
    return predictors, report


def fit_with_report(samples: Sequence[TimedSample], table: LookupTable, shape: SampleShape, plan: TimingPlan,
                    seed: int, start: float) -> tuple[dict[str, LatencyPredictor], dict[str, Any]]:
    """Fit and evaluate (:func:`fit_and_evaluate`) the timed samples; the predictors and the summary
    a predictor folder stores: the errors, what they hold for and how the samples were drawn
    (``start``: ``time.perf_counter()`` when the build began)."""
    space = EncodingSpace(max(shape.search_layers, shape.retrain_layers), shape.nodes, shape.primitives)
    predictors, errors = fit_and_evaluate(samples, space, table.conditions, seed)
    c = table.conditions
    report = {**errors, "seconds": round(time.perf_counter() - start, 1), "device": c.device,
              "device_name": c.device_name, "torch_version": c.torch_version, "threads": c.threads,
              "batch": c.batch, "input_shape": list(c.input_shape), "dataset": plan.info.name, "seed": seed,
              "space": space.as_dict(),
              "sample_shape": {"search_channels": shape.search_channels, "search_layers": shape.search_layers,
                               "retrain_channels": shape.retrain_channels, "retrain_layers": shape.retrain_layers},
              "table_entries": len(table.entries), "warmup": plan.warmup, "runs": plan.runs}
    return predictors, report


def build_predictors(shape: SampleShape, plan: TimingPlan, count: int, seed: int, out: Path) -> dict[str, Any]:
    """Sample ``count`` architectures, time them here, fit, evaluate and save to ``out``; the
    summary (also ``out/predictor.json``)."""
    start = time.perf_counter()
    samples, table = time_samples(sample_architectures(count, shape, seed), shape, plan)
    timed_s = time.perf_counter() - start
    predictors, report = fit_with_report(samples, table, shape, plan, seed, start)
    report["timing_seconds"] = round(timed_s, 1)
    save_predictors(out, predictors, table, samples, report)
    return report
