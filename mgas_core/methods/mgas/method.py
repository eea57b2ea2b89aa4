"""MGAS / MG-DARTS (Liu, Saxena, Cao et al., arXiv 2310.15074) as its official code runs it.

Ground truth: ``lxy12357/MG_DARTS`` (``cifar_search/train_search.py``, ``model_search.py``,
``operations.py``, ``prune.py`` from the repository's history); ``docs/fidelity.md`` compares
every mechanism with it. Units, thresholds and masks: :mod:`mgas_core.methods.mgas.units`;
schedule and lambda controller: :mod:`mgas_core.methods.mgas.schedule`; filter removal and the
derived architecture: :mod:`mgas_core.methods.mgas.channels`; regrowth:
:mod:`mgas_core.methods.mgas.regrow`.

One step (one level: weights, alphas, betas and thresholds on the same batch, all SGD with
momentum): loss = CE(head of the current stage) + lambda * (log size term of the stage's own
cells + sum exp(-t) over the thresholds of the trained cells). Stored masks change only at mask
epochs; pruned ops never come back except by regrowth. The search stops at the first final-phase
mask epoch whose derived network has at most ``target_params`` nonzero parameters (without it: whose
official size is below the official ``--min_flops`` fraction, ``default_target_size``); every phase
has an epoch budget, and a search that spends the final one reports ``target_reached: false``
with the gap instead of running forever.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_common.errors import UserInputError
from mgas_core.data import Batch, DatasetInfo, SearchAugment
from mgas_core.evaluation_network import count_architecture_params
from mgas_core.methods.mgas.channels import (
    derive_cells,
    install_plans,
    regrow_op,
    remove_filters,
    reset_batch_norms,
    reshape_like_saved,
)
from mgas_core.methods.mgas.latency import MgasLatency
from mgas_core.methods.mgas.optimizers import build_optimizers
from mgas_core.methods.mgas.regrow import draw_regrowth, regrow_importance
from mgas_core.methods.mgas.schedule import (
    REGROW,
    SEARCH,
    WARMUP,
    MgasLambda,
    MgasSchedule,
    Phase,
    scaled_counts,
    stage_cuts,
)
from mgas_core.methods.mgas.settings import MGAS_PRESETS, MgasSettings
from mgas_core.methods.mgas.target import (
    official_prune_count,
    resolve_target,
    stage_goal,
    target_fields,
    target_measure,
    target_met,
)
from mgas_core.methods.mgas.units import (
    LiveMasks,
    MgasModel,
    apply_width_floor,
    attach_units,
    remaining_ratios,
    stage_size,
    store_live_masks,
    width_floor_applied,
)
from mgas_core.methods.protocol import MethodStyle, SearchMethod, accuracy, frozen
from mgas_core.methods.registry import register_method
from mgas_core.nn.ops import EVALUATION
from mgas_core.settings.run import SearchSettings
from mgas_core.settings.strict import SettingConflict
from mgas_core.space.architecture import Architecture
from mgas_core.space.topology import NO_NONE_PRIMITIVES
from mgas_core.supernet.builder import build_supernet
from mgas_core.supernet.fast import SuperNetwork

BENCHMARK_LAMBDA = 1e-3
"""The size-term weight of a benchmarked step (``prepare_benchmark``; the official step is run with
the same ``flops_lambda``): > 0, so the step computes every loss term."""

@register_method("mgas")
class Mgas(SearchMethod):
    primitives = NO_NONE_PRIMITIVES
    settings_model = MgasSettings
    result_fields = ("granularities", "stages")
    sweep_axes = ("granularities", "stages")
    presets = MGAS_PRESETS
    cli_flags = {"stages": "number of search stages (paper: 3)",
                 "granularities": "subset of op,filter,weight (comma separated)"}
    style = MethodStyle("MGAS", "#d62728", "D")
    takes_latency_cost = True
    benchmark_overrides = {"search.mgas.stages": 1}  # a benchmarked step: the whole network (--stages 3: a stage)

    @classmethod
    def check_settings(cls, settings: SearchSettings) -> None:
        if settings.mgas.stages > settings.layers:
            raise SettingConflict("mgas.stages", f"stages must be between 1 and the number of cells "
                                                 f"({settings.layers}), got {settings.mgas.stages}")

    def __init__(self, settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> None:
        super().__init__(settings, info, device, seed)
        cfg = self.cfg = settings.mgas
        self.levels = list(cfg.granularities)
        self.cuts = stage_cuts(settings.layers, cfg.stages)
        net = build_supernet(settings, self.primitives, info, exit_cells=[c - 1 for c in self.cuts[:-1]],
                             style=EVALUATION)
        attach_units(net, self.levels)
        self.model = MgasModel(net, self.levels).to(device)
        self.full_size = float(self.derived_count()[0])
        # the target: target_params, else the official --min_flops (docs/fidelity.md "default target")
        self.target_kind, self.target = resolve_target(settings, self.model, self.full_size)
        whole = self.full_size if self.target_kind == "params" else stage_size(self.model, range(len(net.cells)))
        self.stage_goal = stage_goal(cfg, self.target / whole)
        self.latency = MgasLatency.create(settings, info, device, self.primitives)  # search.latency
        control = cfg.control
        high, low = scaled_counts(control.high, control.low, control.reference_ops, self.model.alpha.numel())
        self.lam = MgasLambda(control.lambda0, control.c0, high, low, control.max_lambda)
        self.schedule = MgasSchedule.from_settings(settings)
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.result: dict[str, Any] | None = None
        self.ratios = remaining_ratios(self.model)
        self._epoch_stats = {"ce": 0.0, "cost": 0.0, "steps": 0}
        self._begin_stage()

    @classmethod
    def search_augment(cls, settings: SearchSettings) -> SearchAugment:
        """Official: crop, flip, the AutoAugment CIFAR policy and cutout 16 (CIFAR only)."""
        return SearchAugment(autoaugment=settings.mgas.augment == "autoaugment", cutout=settings.mgas.cutout)

    # --- structure --------------------------------------------------------------------------------
    @property
    def net(self) -> SuperNetwork:
        return self.model.net

    @property
    def stage(self) -> int:
        """1..S for the stages, S + 1 for the final phase."""
        return self.schedule.phase.stage

    @property
    def upto(self) -> int:
        """Cells trained now: ``0 .. upto - 1``."""
        return self.cuts[min(self.stage, len(self.cuts)) - 1]

    @property
    def own_cells(self) -> range:
        """The cells the size term covers: the stage's own (official: flops1, flops2 - flops1, ...)."""
        if self.schedule.in_final:
            return range(self.upto)
        return range(self.cuts[self.stage - 2] if self.stage >= 2 else 0, self.upto)

    @property
    def max_epochs(self) -> int:
        return self.schedule.max_epochs

    @classmethod
    def epoch_plan(cls, settings: SearchSettings) -> tuple[int, str]:
        schedule = MgasSchedule.from_settings(settings)
        return schedule.max_epochs, schedule.plan_text()

    @property
    def finished(self) -> bool:
        return self.result is not None

    def _begin_stage(self) -> None:
        """A stage (or the final phase) begins: thresholds 0, lambda 0, fresh optimisers."""
        self.model.reset_thresholds()
        self.lam.reset()
        self.stage_start_size = stage_size(self.model, range(self.upto))
        self.pruned_in_stage = 0
        self._structure_changed()

    def _structure_changed(self) -> None:
        """Modules were replaced (filters removed, ops regrown) or a phase began: fresh optimisers."""
        self.net.to(memory_format=self.memory_format)
        self._refresh_units()
        self._build_optimizers()

    def _refresh_units(self) -> None:
        """Ops died: recompute the active lists and the live-mask index (optimisers keep their
        momentum; a dead op's parameters just stop receiving gradient)."""
        self.model.refresh_active()
        self.live = LiveMasks(self.model, range(self.upto))

    def _build_optimizers(self, alive: Tensor | None = None) -> None:
        """The official optimiser set of the phase (:func:`optimizers.build_optimizers`), over the
        trained cells' units; ``alive`` restores a saved membership on resume."""
        self.optimizer_alive = self.model.alive.clone() if alive is None else alive
        self.weight_params, self.opts = build_optimizers(self.settings, self.model, self.levels, self.upto, self.head,
                                                         self.optimizer_alive)

    @property
    def head(self) -> nn.Module:
        """The classifier of the current stage (a stage head, or the network's classifier)."""
        return self.net.classifier if self.upto == len(self.net.cells) else self.net.exit_heads[str(self.upto - 1)]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.opts

    def _arch_params(self) -> list[nn.Parameter]:
        return [p for k, opt in self.opts.items() if k != "weights" for g in opt.param_groups for p in g["params"]]

    def prepare_benchmark(self, stage: int) -> dict[str, Any]:
        """A fresh search in the search phase of ``stage`` (``stages + 1``: the final phase), nothing
        pruned, lambda :data:`BENCHMARK_LAMBDA` (> 0: every loss term): one stage's step."""
        if not 1 <= stage <= self.cfg.stages + 1:
            raise UserInputError(f"--stage {stage} does not exist in a {self.cfg.stages}-stage MGAS search; "
                                 f"allowed: 1 to {self.cfg.stages + 1} (the final phase)")
        self.schedule.phase = Phase(stage, SEARCH, 0)
        self._begin_stage()
        self.lam.value = BENCHMARK_LAMBDA
        return {"cells_run": self.upto}

    # --- training ---------------------------------------------------------------------------------
    def train_step(self, batch: Batch, arch_batch: Batch | None = None) -> dict[str, float]:
        x, y = self.to_device(batch)
        warm = self.schedule.phase.kind == WARMUP
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)
        with frozen(self._arch_params() if warm else []), self.live.lent():
            masks = self.model.op_masks()
            with self.autocast():
                logits = self.net(x, list(self.model.cell_weights(masks).unbind(0)), self.model.active, self.upto)
                ce = F.cross_entropy(logits, y)
            cost = torch.zeros(())
            loss = ce
            if not warm and self.lam.value > 0:
                cost = self.model.log_cost(masks, self.own_cells,
                                           self.latency.weights(self.own_cells) if self.latency else None)
                loss = ce + self.lam.value * (cost + self.model.threshold_regulariser(range(self.upto)))
            loss.backward()
        nn.utils.clip_grad_norm_(self.weight_params, self.settings.grad_clip)
        for name, opt in self.opts.items():
            if name == "weights" or not warm:
                opt.step()
        self._epoch_stats["ce"] += float(ce.detach())
        self._epoch_stats["cost"] += self.lam.value * float(cost.detach())
        self._epoch_stats["steps"] += 1
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), "acc": accuracy(logits.detach(), y)}

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        # what the epoch runs under (log_metrics reports it after end_of_epoch moved on)
        self._running = {"phase": self.schedule.record()["phase"], "lambda": self.lam.value,
                         "stage": self.stage, "mask_epoch": self.schedule.is_mask_epoch()}

    def predict(self, x: Tensor) -> Tensor:
        with self.live.lent():
            return self.model(x, self.upto)

    # --- epoch end --------------------------------------------------------------------------------
    def end_of_epoch(self, epoch: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        phase, stage = self.schedule.phase, self.stage
        if phase.kind == WARMUP:
            self.schedule.finish_epoch()
        elif phase.kind == REGROW:
            self.schedule.finish_epoch()
            events.append(self._regrow(epoch))
            self.schedule.end_regrow()
            events += self._close_stage(epoch, stage)
        else:
            mask_epoch, budget = self.schedule.is_mask_epoch(), self.schedule.budget_spent()
            goal_met = False
            if mask_epoch:
                if self.schedule.in_final:
                    events += self._final_mask_epoch(epoch)
                else:
                    events += self._stage_mask_epoch(epoch)
                    goal_met = stage_size(self.model, range(self.upto)) < self.stage_goal * self.stage_start_size
            self.schedule.finish_epoch()
            if self.schedule.in_final:
                if self.result is None and budget:
                    self.result = self._outcome(epoch, reached=False)
                if self.result is not None:
                    events.append(dict(self.result))
            elif goal_met or budget:
                events.append({"type": "stage_goal_met" if goal_met else "stage_goal_missed", "epoch": epoch,
                               "stage": stage, "size": stage_size(self.model, range(self.upto)),
                               "goal": self.stage_goal * self.stage_start_size})
                self.schedule.end_search()
                if self.schedule.phase.kind != REGROW:
                    events += self._close_stage(epoch, stage)
        self._epoch_stats = {"ce": 0.0, "cost": 0.0, "steps": 0}
        self.ratios = remaining_ratios(self.model)
        self.events += events
        return events

    def _close_stage(self, epoch: int, stage: int) -> list[dict[str, Any]]:
        """Remove the stage's pruned filters (official ``prune_kernel``) and open the next phase."""
        covered = range(self.cuts[stage - 1])
        apply_width_floor(self.model, covered, self.cfg.min_width_fraction)
        removed = remove_filters(self.net, self.model.alive, self.model.planned, covered)
        if self.cfg.bn_reset:
            reset_batch_norms(self.net, self.model.alive, covered)
        self._begin_stage()
        return [{"type": "filters_removed", "epoch": epoch, "stage": stage, "filters": removed},
                {"type": "phase", "epoch": epoch + 1, "phase": self.schedule.record()["phase"], "cells": self.upto}]

    def _means(self) -> tuple[float, float]:
        n = max(1, self._epoch_stats["steps"])
        return self._epoch_stats["ce"] / n, self._epoch_stats["cost"] / n

    def _stage_mask_epoch(self, epoch: int) -> list[dict[str, Any]]:
        pruned = store_live_masks(self.model, range(self.upto))  # the exit is measured on these (no floor)
        for ci, e, o in pruned:
            self.model.alive[ci, e, o] = False
        self.pruned_in_stage += len(pruned)
        ce, cost = self._means()
        self.lam.update(len(pruned), ce, cost, self.cfg.control.stage_cap_ratio)
        self._refresh_units()
        return [{"type": "mask", "epoch": epoch, "stage": self.stage, "pruned_ops": len(pruned),
                 "lambda": self.lam.value}]

    def _final_mask_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """Store the masks, then prune the ops whose mask is off one at a time until the target is
        met, the op furthest below its threshold first; the stop is decided on the stored masks
        as they are (official: ``current_flops < min_flops`` before ``prune_kernel``), then the width
        floor and the filter removal follow. The lambda controller gets the official count
        (:func:`target.official_prune_count`). (The official loop removes either one op, once below the
        target, or every masked op still standing: a masked op already costs nothing in its size,
        so its order decides nothing. docs/fidelity.md, "final phase".) A ``target_params`` target
        is counted on the derived network, which reads the masks with the floor applied."""
        everything = range(len(self.net.cells))
        off = store_live_masks(self.model, everything)
        with torch.no_grad():
            margin = torch.sigmoid(self.model.alpha) - self.model.t_op
        off.sort(key=lambda k: float(margin[k]))
        counted = official_prune_count(self.model.alive, off, self.within_target)
        pruned = 0
        for ci, e, o in off:
            if self.within_target():
                break
            self.model.alive[ci, e, o] = False
            pruned += 1
        ce, cost = self._means()
        self.lam.update(counted, ce, cost, self.cfg.control.final_cap_ratio)
        outcome = self._outcome(epoch, reached=True) if self.within_target() else None
        apply_width_floor(self.model, everything, self.cfg.min_width_fraction)
        removed = remove_filters(self.net, self.model.alive, self.model.planned, everything)
        if self.cfg.bn_reset:
            reset_batch_norms(self.net, self.model.alive, everything)
        self._structure_changed()
        events = [{"type": "mask", "epoch": epoch, "stage": "final", "pruned_ops": pruned,
                   "filters_removed": removed, "lambda": self.lam.value}]
        if outcome is not None:
            self.result = outcome
        return events

    def _regrow(self, epoch: int) -> dict[str, Any]:
        """After the masks-frozen epoch: ``int(regrow_fraction x ops pruned in the stage)`` dead
        ops of the stage's cells come back with fresh weights (official ``regrow``)."""
        cells = range(self.upto)
        count = int(self.cfg.regrow_fraction * self.pruned_in_stage)
        opt = self.opts.get("alpha")
        state = opt.state.get(self.model.alpha, {}) if opt is not None else {}
        momentum = state.get("momentum_buffer")
        alpha, alive = self.model.alpha.detach()[: self.upto], self.model.alive[: self.upto]
        cell_imp, type_imp = regrow_importance(alpha, None if momentum is None else momentum[: self.upto], alive)
        picks = draw_regrowth(cell_imp, type_imp, ~alive, count, self.generator)
        for ci, e, o in picks:
            regrow_op(self.net, self.model.alive, self.model.planned, ci, e, o, EVALUATION, "filter" in self.levels)
        return {"type": "regrow", "epoch": epoch, "stage": self.stage, "pruned_in_stage": self.pruned_in_stage,
                "ops": [[ci, e, self.primitives[o]] for ci, e, o in picks], "cells": len(cells)}

    # --- results ----------------------------------------------------------------------------------
    def derive(self) -> Architecture:
        with torch.no_grad(), width_floor_applied(self.model, range(len(self.net.cells)), self.cfg.min_width_fraction):
            cells, masks = derive_cells(self.net, self.model.alive, self.model.planned, "weight" in self.levels)
        return Architecture(name=f"mgas_seed{self.seed}", nodes=self.net.topology.nodes, cells=cells,
                            channels=self.net.channels, masks=masks or None,
                            meta={"granularities": self.levels, "stages": len(self.cuts),
                                  "target_kind": getattr(self, "target_kind", None),
                                  "target": round(getattr(self, "target", 0))})

    def derived_count(self, arch: Architecture | None = None) -> tuple[int, int]:
        arch = arch or self.derive()
        count = count_architecture_params(arch, self.info.num_classes, self.info.in_channels, self.info.variant)
        return count.dense, count.nonzero

    def measured(self) -> float:
        return target_measure(self.target_kind, self.model, lambda: self.derived_count()[1])

    def within_target(self) -> bool:
        """The size target (unless a latency target stands alone) and the latency target (if any)."""
        size = (self.latency is not None and self.latency.latency_only) or target_met(
            self.target_kind, self.target, self.measured())
        return size and (self.latency is None or self.latency.met(self.derive))

    def _target_fields(self) -> dict[str, Any]:
        return target_fields(self.target_kind, self.target, self.measured())

    def _outcome(self, epoch: int, reached: bool) -> dict[str, Any]:
        dense, nonzero = self.derived_count()
        return {"type": "target_reached" if reached else "target_not_reached", "epoch": epoch,
                "params": dense, "nonzero_params": nonzero, **self._target_fields()}

    def log_metrics(self) -> dict[str, Any]:
        """The epoch's phase, stage, lambda and whether it ended with a mask update (as it ran),
        then the lambda and remaining ratios after its end."""
        running = getattr(self, "_running", {})
        return {"search_phase": running.get("phase"), "stage": running.get("stage"),
                "mask_epoch": running.get("mask_epoch"), "lambda": running.get("lambda"),
                "lambda_next": self.lam.value, "w_lr": self.cfg.w_lr,
                "stage_size_m": stage_size(self.model, range(self.upto)) / 1e6,
                **{f"remaining_ratio_{k}": v for k, v in self.ratios.items()}}

    def summary(self) -> dict[str, Any]:
        reached = self.result is not None and self.result["type"] == "target_reached"
        return {"supernet_params": round(self.full_size), **self._target_fields(), "target_reached": reached,
                "remaining_ratio": dict(self.ratios), "granularities": self.levels, "stages": len(self.cuts),
                "stage_cells": list(self.cuts), "schedule": self.schedule.table(),
                **(self.latency.fields(self.derive()) if self.latency else {})}

    # --- state ------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(), "lambda": self.lam.state_dict(),
                "generator": self.generator.get_state(), "stage_start_size": self.stage_start_size,
                "pruned_in_stage": self.pruned_in_stage, "epoch_stats": dict(self._epoch_stats),
                "result": self.result, "ratios": dict(self.ratios), "optimizer_alive": self.optimizer_alive.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.lam.load_state_dict(state["lambda"])
        self.generator.set_state(state["generator"])
        self.stage_start_size = float(state["stage_start_size"])
        self.pruned_in_stage = int(state["pruned_in_stage"])
        self.result = state["result"]
        self.ratios = dict(state["ratios"])
        install_plans(self.net, self.model.planned)
        self.model.refresh_active()
        self.live = LiveMasks(self.model, range(self.upto))
        self._epoch_stats = dict(state["epoch_stats"])

    def prepare_load(self, state: dict[str, Any]) -> None:
        """Shape the fresh supernet like the saved one, then build the saved phase's optimisers."""
        reshape_like_saved(self.net, state["model"], "net.")
        self.schedule.load_state_dict(state["extra"]["schedule"])
        self._build_optimizers(state["extra"]["optimizer_alive"].to(self.model.alive.device))
