"""MGAS / MG-DARTS (Liu, Saxena, Cao et al., arXiv 2310.15074): multi-granularity search.

Scores: ``sigmoid(alpha)`` per (cell, edge, op) over the 7 ops without ``none``; ``sigmoid(beta)``
per output channel of every searchable conv stage; ``|w|`` per weight of every SepConv/DilConv
conv. Each level is discretised by ``Step(score - t)`` with learned thresholds (op level: one per
cell and op type; filter level: one per filter unit; weight level: one per conv) and the
long-tailed surrogate gradient, so every level's remaining ratio is decided by training.

Loss = CE(head of the current stage) + lambda * (derived size / supernet size
+ sum over levels of mean exp(-t)); lambda follows the GOLD-NAS controller, judged every epoch
against the pace needed to reach the target by the end of the search. One-level optimisation:
SGD on weights, Adam on alphas, betas and thresholds.

Multi-stage: the supernet is cut into ``stages`` consecutive sub-nets of about equal activation
memory; stage s trains cells of sub-nets 1..s with a head after sub-net s (later cells never run).
After each stage, ops whose mask stayed off are removed for good, a fraction of the ops pruned in
that stage (stage >= 2) regrows with fresh weights (sampled by importance: mean sigmoid(alpha) and
mean |alpha gradient momentum| of the op type in its cell), and pruned filters are physically cut
away. A final whole-net phase stops as soon as the derived network's nonzero parameter count is
within ``tolerance`` of the target.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.arch import Architecture
from mgas_core.config import MgasSettings, SearchSettings, SettingConflict
from mgas_core.data import Batch, DatasetInfo
from mgas_core.errors import UserInputError
from mgas_core.masks import FilterGate, LearnedThreshold
from mgas_core.methods.base import SearchMethod, accuracy, clone_tensors, cosine_lr, register_method, set_lr
from mgas_core.methods.cell_alphas import PerCellAlphaModel
from mgas_core.methods.lambda_control import LambdaController
from mgas_core.methods.mgas_stages import make_plan
from mgas_core.methods.mgas_units import (
    LevelInit,
    UnitMasks,
    attach_op,
    attach_units,
    cell_count,
    derive_cells,
    fixed_count,
    gates_of,
    record_original_sizes,
    remaining_ratios,
    size_count,
    weight_convs_of,
)
from mgas_core.model import count_architecture_params
from mgas_core.ops import ChannelOutput, SepConv, build_op
from mgas_core.space import NO_NONE_PRIMITIVES, network_cells
from mgas_core.stem import Stem
from mgas_core.supernet import SuperNetwork
from mgas_core.supernet_factory import build_supernet


class MgasModel(PerCellAlphaModel):
    """Supernet + per-cell op scores, op thresholds and the alive mask of permanently pruned ops."""

    def __init__(self, net: SuperNetwork, op_threshold_init: float, use_op_level: bool) -> None:
        super().__init__(net)
        layers, ops = len(net.cells), len(net.primitives)
        self.op_threshold = LearnedThreshold(op_threshold_init)
        self.op_threshold.t = nn.Parameter(torch.full((layers, 1, ops), float(op_threshold_init)))
        self.use_op_level = use_op_level

    def op_masks(self) -> Tensor:
        alive = self.alive.to(self.alpha.dtype)
        if not self.use_op_level:
            return alive
        return self.op_threshold.mask(torch.sigmoid(self.alpha)) * alive

    def cell_weights(self) -> Tensor:
        if not self.use_op_level:
            return self.alive.to(self.alpha.dtype)
        score = torch.sigmoid(self.alpha)
        return score * self.op_threshold.mask(score) * self.alive.to(score.dtype)

    def forward(self, x: Tensor, upto: int | None = None) -> Tensor:
        return self.net(x, list(self.cell_weights().unbind(0)), self.active, upto)


@register_method("mgas")
class Mgas(SearchMethod):
    primitives = NO_NONE_PRIMITIVES
    settings_model = MgasSettings
    result_fields = ("granularities", "stages")
    sweep_axes = ("granularities", "stages")

    @classmethod
    def check_settings(cls, settings: SearchSettings) -> None:
        if settings.mgas.stages > settings.layers:
            raise SettingConflict("mgas.stages", f"stages must be between 1 and the number of cells "
                                                 f"({settings.layers}), got {settings.mgas.stages}")

    def __init__(self, settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> None:
        super().__init__(settings, info, device, seed)
        cfg = settings.mgas
        self.cfg = cfg
        self.granularities = list(cfg.granularities)
        stem = Stem(info.in_channels, settings.channels, info.variant)
        shapes = network_cells(settings.channels, settings.layers, settings.nodes, stem.out_channels,
                               stem.reduces_first_input)
        self.plan = make_plan(shapes, cfg.stages, stem.resolution(info.image_size), settings.epochs,
                              cfg.stage_epochs, cfg.final_epochs)
        net = build_supernet(settings, self.primitives, info, exit_cells=[c - 1 for c in self.plan.cuts[:-1]])
        self.init = LevelInit(cfg.threshold_init_op, cfg.threshold_init_filter, cfg.threshold_init_weight)
        attach_units(net, self.granularities, self.init)
        record_original_sizes(net)
        self.model = MgasModel(net, cfg.threshold_init_op, "op" in self.granularities).to(device)
        with torch.no_grad():
            masks = self.model.op_masks()
            self.full_cell_size = [float(cell_count(net, ci, masks[ci])) for ci in range(len(net.cells))]
        self.full_size = float(fixed_count(net)) + sum(self.full_cell_size)
        target = settings.target_params * 1e6 if settings.target_params else cfg.default_target_ratio * self.full_size
        if target >= self.full_size:
            raise UserInputError(f"target_params={target / 1e6:.4g} M is not below the supernet's size "
                                 f"({self.full_size / 1e6:.4g} M params); choose a smaller target")
        if target <= fixed_count(net):
            raise UserInputError(f"target_params={target / 1e6:.4g} M is below the unprunable stem + classifier "
                                 f"({fixed_count(net) / 1e6:.4g} M)")
        self.target = target
        self.controller = LambdaController(cfg.control.lambda0, cfg.control.c0)
        self.stage = 0
        self.prune_history: list[dict[str, Any]] = []
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.scope_size_start = self._scope_size()
        self.reached: dict[str, Any] | None = None
        self.ratios = remaining_ratios(net, self.model.op_masks(), self.model.alive, self.granularities)
        self.lr = settings.w_lr
        self.backtracks = 0
        self._build_optimizers()

    # --- structure ------------------------------------------------------------------------------
    @property
    def net(self) -> SuperNetwork:
        return self.model.net

    @property
    def upto(self) -> int:
        return self.plan.cuts[min(self.stage, self.plan.stages - 1)]

    @property
    def in_final_phase(self) -> bool:
        return self.stage >= self.plan.stages

    @property
    def max_epochs(self) -> int:
        return self.plan.total_epochs

    @property
    def finished(self) -> bool:
        return self.reached is not None

    def _unit_params(self, cells: range, alive: Tensor) -> tuple[list[nn.Parameter], list[nn.Parameter],
                                                               list[nn.Parameter]]:
        """(weights, betas, thresholds) of the pre-processing and alive ops of ``cells``."""
        weights: list[nn.Parameter] = []
        betas: list[nn.Parameter] = []
        thresholds: list[nn.Parameter] = []
        modules: list[nn.Module] = []
        for ci in cells:
            cell = self.net.cells[ci]
            modules += [cell.preprocess0, cell.preprocess1]
            modules += [op for e, edge in enumerate(cell.edges) for o, op in enumerate(edge.ops)
                        if bool(alive[ci, e, o])]
        for module in modules:
            for sub in module.modules():
                if isinstance(sub, FilterGate):
                    betas.append(sub.beta)
                elif isinstance(sub, LearnedThreshold):
                    thresholds.append(sub.t)
            special = {id(p) for p in betas + thresholds}
            weights += [p for p in module.parameters() if id(p) not in special]
        return weights, betas, thresholds

    def _build_optimizers(self, alive: Tensor | None = None) -> None:
        """Optimisers over every unit of the current stage's cells (earlier cells included).

        Membership is fixed from one build to the next (ops that die mid-stage simply stop getting
        gradient); ``alive`` restores the membership of a saved build on resume.
        """
        s = self.settings
        cells = range(self.upto)
        self.unit_masks = UnitMasks([self.net.cells[ci] for ci in cells])
        alive = self.model.alive.clone() if alive is None else alive
        self.optimizer_alive = alive
        weights, betas, thresholds = self._unit_params(cells, alive)
        head = self.net.classifier if self.upto == len(self.net.cells) else self.net.exit_heads[str(self.upto - 1)]
        weights = list(self.net.stem.parameters()) + weights + list(head.parameters())
        self.weight_params = weights
        self.reg_thresholds = {"filter": [], "weight": []}
        for ci in cells:
            cell = self.net.cells[ci]
            for pre in (cell.preprocess0, cell.preprocess1):
                if pre.out_gate is not None:
                    self.reg_thresholds["filter"].append(pre.out_gate.threshold.t)
            for e, edge in enumerate(cell.edges):
                for o, op in enumerate(edge.ops):
                    if not bool(alive[ci, e, o]):
                        continue
                    self.reg_thresholds["filter"] += [g.threshold.t for g in gates_of(op)]
                    self.reg_thresholds["weight"] += [c.weight_threshold.t for c in weight_convs_of(op).values()
                                                      if c.weight_threshold is not None]
        self.opts: dict[str, torch.optim.Optimizer] = {
            "weights": torch.optim.SGD(weights, lr=self.lr, momentum=s.w_momentum, weight_decay=s.w_weight_decay)
        }
        if "op" in self.granularities:
            self.opts["alpha"] = torch.optim.Adam([self.model.alpha], lr=self.cfg.alpha_lr)
            thresholds = [self.model.op_threshold.t, *thresholds]
        if betas:
            self.opts["beta"] = torch.optim.Adam(betas, lr=self.cfg.beta_lr)
        if thresholds:
            self.opts["threshold"] = torch.optim.Adam(thresholds, lr=self.cfg.threshold_lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.opts

    # --- training -------------------------------------------------------------------------------
    def threshold_regulariser(self) -> Tensor:
        terms = []
        if "op" in self.granularities:
            terms.append(torch.exp(-self.model.op_threshold.t[: self.upto]).mean())
        for level in ("filter", "weight"):
            ts = self.reg_thresholds[level]
            if level in self.granularities and ts:
                terms.append(torch.exp(-torch.stack(ts)).mean())
        return torch.stack(terms).sum()

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        s = self.settings
        self.lr = cosine_lr(s.w_lr, s.w_lr_min, epoch, self.max_epochs)
        set_lr(self.opts["weights"], self.lr)
        self.scope_size_start = self._scope_size()

    def train_step(self, batch: Batch, arch_batch: Batch | None = None) -> dict[str, float]:
        x, y = self.to_device(batch)
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)
        with self.unit_masks.lent():
            masks = self.model.op_masks()
            with self.autocast():
                logits = self.net(x, list(self.model.cell_weights().unbind(0)), self.model.active, self.upto)
                ce = F.cross_entropy(logits, y)
            size = size_count(self.net, masks, range(self.upto)).to(ce.device)
            cost = size / self.full_size
            # no pruning pressure once the scope is at its share of the target (the forward value
            # of the size count is exact), so no stage can overshoot the target by itself
            size_before, goal = float(size.detach()), self.scope_goal()
            pressure = self.controller.value if size_before > goal else 0.0
            loss = ce + pressure * (cost + self.threshold_regulariser())
            loss.backward()
        nn.utils.clip_grad_norm_(self.weight_params, self.settings.grad_clip)
        near = size_before <= 1.5 * goal
        saved = self._arch_snapshot() if near else None
        for opt in self.opts.values():
            opt.step()
        if saved is not None and fixed_count(self.net) + self._scope_size() < goal * (1 - self.cfg.undershoot):
            self._backtrack(saved)
        if self.in_final_phase:
            self._check_target()
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), "acc": accuracy(logits.detach(), y)}

    def predict(self, x: Tensor) -> Tensor:
        return self.model(x, self.upto)

    # --- overshoot guard ------------------------------------------------------------------------
    ARCH_OPTIMIZERS = ("alpha", "beta", "threshold")

    def _arch_snapshot(self) -> dict[str, Any]:
        params = [p for k in self.ARCH_OPTIMIZERS if k in self.opts
                  for group in self.opts[k].param_groups for p in group["params"]]
        return {"params": [(p, p.detach().clone()) for p in params],
                "opts": {k: clone_tensors(self.opts[k].state_dict()) for k in self.ARCH_OPTIMIZERS if k in self.opts}}

    def _backtrack(self, saved: dict[str, Any]) -> None:
        """An architecture step that pruned the scope below its goal (minus ``undershoot``) is
        undone and the architecture learning rates halve, so the size approaches the target from
        above in ever smaller steps instead of jumping past it."""
        with torch.no_grad():
            for p, value in saved["params"]:
                p.copy_(value)
        for k, state in saved["opts"].items():
            self.opts[k].load_state_dict(state)
            for group in self.opts[k].param_groups:
                group["lr"] *= 0.5
        self.backtracks += 1

    # --- size and target --------------------------------------------------------------------------
    def _scope_size(self) -> float:
        with torch.no_grad():
            masks = self.model.op_masks()
            return sum(float(cell_count(self.net, ci, masks[ci])) for ci in range(self.upto))

    def scope_goal(self) -> float:
        """Target share of the cells trained now (stem and classifier included)."""
        fixed = fixed_count(self.net)
        ratio = (self.target - fixed) / (self.full_size - fixed)
        return fixed + ratio * sum(self.full_cell_size[: self.upto])

    def estimated_size(self) -> float:
        with torch.no_grad():
            return float(size_count(self.net, self.model.op_masks()))

    def derived_count(self, arch: Architecture | None = None) -> tuple[int, int]:
        arch = arch or self.derive()
        count = count_architecture_params(arch, self.info.num_classes, self.info.in_channels, self.info.variant)
        return count.dense, count.nonzero

    def _check_target(self, epoch_end: bool = False) -> None:
        goal = self.target * (1 + self.cfg.tolerance)
        if self.estimated_size() > 1.25 * goal and not epoch_end:
            return
        dense, nonzero = self.derived_count()
        if nonzero <= goal:
            self.reached = {"type": "target_reached", "epoch": self.epoch, "params": dense,
                            "nonzero_params": nonzero, "target_params": round(self.target)}
            self.events.append(self.reached)

    # --- epoch end: prune, control, stage change ----------------------------------------------------
    def end_of_epoch(self, epoch: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        pruned = self._prune_dead_ops(epoch)
        if pruned:
            events.append({"type": "prune", "epoch": epoch, "stage": self.stage + 1, "ops": pruned})
        size_now = self._scope_size()
        goal = self.scope_goal() - fixed_count(self.net)
        remaining = max(1, self.max_epochs - epoch - 1)
        needed = (size_now - goal) / remaining
        enough = size_now <= goal or (self.scope_size_start - size_now) >= needed
        self.controller.update(enough)
        if not self.finished and self.plan.phase(epoch + 1) != self.stage and not self.in_final_phase:
            events += self._end_stage(epoch)
        if self.in_final_phase and not self.finished:
            self._check_target(epoch_end=True)
            if self.reached is not None:
                events.append(self.reached)
        if epoch + 1 >= self.max_epochs and not self.finished:
            dense, nonzero = self.derived_count()
            events.append({"type": "target_not_reached", "epoch": epoch, "params": dense,
                           "nonzero_params": nonzero, "target_params": round(self.target)})
        self.ratios = remaining_ratios(self.net, self.model.op_masks(), self.model.alive, self.granularities)
        self.events += [e for e in events if e is not self.reached]
        return events

    def _prune_dead_ops(self, epoch: int) -> int:
        """Remove for good the alive ops whose op mask is off (every node keeps one alive op)."""
        if "op" not in self.granularities:
            return 0
        with torch.no_grad():
            masks = self.model.op_masks()
            scores = torch.sigmoid(self.model.alpha)
        count = 0
        topo = self.net.topology
        for ci in range(self.upto):
            for sl in topo.node_edges:
                alive_node = self.model.alive[ci, sl]
                off = alive_node & (masks[ci, sl] == 0)
                if not off.any():
                    continue
                if not (alive_node & ~off).any():  # keep the node's best op alive
                    flat = torch.where(alive_node, scores[ci, sl], torch.full_like(scores[ci, sl], -1.0))
                    best = divmod(int(flat.argmax()), flat.shape[1])
                    off[best] = False
                for e_rel, o in torch.nonzero(off).tolist():
                    e = sl.start + e_rel
                    self.model.alive[ci, e, o] = False
                    self.prune_history.append({"cell": ci, "edge": e, "op": o, "stage": self.stage, "epoch": epoch})
                    count += 1
        if count:
            self.model.refresh_active()
        return count

    def _end_stage(self, epoch: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self.stage >= 1 and self.cfg.regrow_fraction > 0:
            regrown = self._regrow()
            events.append({"type": "regrow", "epoch": epoch, "stage": self.stage + 1, "ops": regrown})
        removed = self._shrink_filters()
        self.stage += 1
        self.model.refresh_active()
        self._build_optimizers()
        events.append({"type": "shrink", "epoch": epoch, "filters_removed": removed})
        events.append({"type": "stage", "epoch": epoch, "stage": self.stage + 1 if not self.in_final_phase else "final",
                       "cells": self.upto})
        return events

    def op_importance(self) -> Tensor:
        """[cells, ops]: mean sigmoid(alpha) + mean |alpha gradient momentum| of each op type."""
        with torch.no_grad():
            score = torch.sigmoid(self.model.alpha).mean(dim=1)
            opt = self.opts.get("alpha")
            state = opt.state.get(self.model.alpha, {}) if opt is not None else {}
            momentum = state.get("exp_avg")
            mom = momentum.abs().mean(dim=1) if momentum is not None else torch.zeros_like(score)
            return score / score.max().clamp_min(1e-12) + mom / mom.max().clamp_min(1e-12)

    def _regrow(self) -> list[list[Any]]:
        candidates = [r for r in self.prune_history if r["stage"] == self.stage
                      and not bool(self.model.alive[r["cell"], r["edge"], r["op"]])]
        n = round(self.cfg.regrow_fraction * len(candidates))
        if n == 0:
            return []
        importance = self.op_importance()
        weights = torch.tensor([float(importance[r["cell"], r["op"]]) for r in candidates]).clamp_min(1e-6)
        picks = torch.multinomial(weights, n, replacement=False, generator=self.generator).tolist()
        regrown = []
        for i in sorted(picks):
            r = candidates[i]
            self.regrow_op(r["cell"], r["edge"], r["op"])
            regrown.append([r["cell"], r["edge"], self.primitives[r["op"]]])
        return regrown

    def regrow_op(self, ci: int, e: int, o: int) -> None:
        """Bring op (ci, e, o) back with fresh weights and an alpha just above its threshold."""
        cell = self.net.cells[ci]
        stride = 2 if cell.reduction and self.net.topology.edges[e].source < 2 else 1
        fresh = build_op(self.primitives[o], cell.channels, stride, search=True)
        attach_op(fresh, self.granularities, self.init)
        for gate in gates_of(fresh):
            gate.original = gate.beta.numel()
        for conv in weight_convs_of(fresh).values():
            conv.original_numel = conv.weight.numel()
        cell.edges[e].ops[o] = fresh.to(self.device, memory_format=self.memory_format)
        with torch.no_grad():
            self.model.alive[ci, e, o] = True
            t = float(self.model.op_threshold.t[ci, 0, o])
            p = min(0.99, max(0.01, t + 0.1))
            self.model.alpha[ci, e, o] = math.log(p / (1 - p))
        self.model.refresh_active()

    def _shrink_filters(self) -> int:
        """Physically cut every filter whose mask is off (ops whose unit lost every filter die)."""
        if "filter" not in self.granularities:
            return 0
        removed = 0
        with torch.no_grad():
            for ci in range(self.upto):
                cell = self.net.cells[ci]
                for pre in (cell.preprocess0, cell.preprocess1):
                    removed += _shrink_unit(pre, "out", keep_one=True)
                for e, edge in enumerate(cell.edges):
                    for o, op in enumerate(edge.ops):
                        if not bool(self.model.alive[ci, e, o]) or not isinstance(op, ChannelOutput):
                            continue
                        units = (["mid"] if isinstance(op, SepConv) else []) + ["out"]
                        if any(_unit_off(op, u) for u in units):
                            self.model.alive[ci, e, o] = False
                            self.prune_history.append({"cell": ci, "edge": e, "op": o, "stage": self.stage,
                                                       "epoch": self.epoch, "reason": "filters"})
                            continue
                        for u in units:
                            removed += _shrink_unit(op, u, keep_one=False)
        return removed

    # --- results ----------------------------------------------------------------------------------
    def derive(self) -> Architecture:
        with torch.no_grad():
            masks = self.model.op_masks()
            scores = torch.sigmoid(self.model.alpha)
            cells, weight_masks = derive_cells(self.net, masks, self.model.alive, scores,
                                               record_widths="filter" in self.granularities)
        return Architecture(
            name=f"mgas_seed{self.seed}", nodes=self.net.topology.nodes, cells=cells, channels=self.net.channels,
            masks=weight_masks or None,
            meta={"granularities": self.granularities, "stages": self.plan.stages,
                  "target_params": round(self.target)},
        )

    def log_metrics(self) -> dict[str, Any]:
        return {"lambda": self.controller.value, "stage": self.stage + 1, "backtracks": self.backtracks,
                "w_lr": self.lr, "size_estimate_m": self.estimated_size() / 1e6,
                **{f"remaining_ratio_{k}": v for k, v in self.ratios.items()}}

    def summary(self) -> dict[str, Any]:
        return {"supernet_params": round(self.full_size), "target_params": round(self.target),
                "target_reached": self.finished, "remaining_ratio": dict(self.ratios),
                "granularities": self.granularities, "stages": self.plan.stages, "stage_cells": self.plan.cuts}

    # --- state ------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "stage": self.stage,
                "prune_history": [dict(r) for r in self.prune_history], "generator": self.generator.get_state(),
                "scope_size_start": self.scope_size_start, "reached": self.reached, "ratios": dict(self.ratios),
                "optimizer_alive": self.optimizer_alive.clone(), "backtracks": self.backtracks}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.prune_history = [dict(r) for r in state["prune_history"]]
        self.generator.set_state(state["generator"])
        self.scope_size_start = float(state["scope_size_start"])
        self.reached = state["reached"]
        self.ratios = dict(state["ratios"])
        self.backtracks = int(state["backtracks"])

    def prepare_load(self, state: dict[str, Any]) -> None:
        """Shrink freshly built modules to the saved widths, then rebuild the saved stage's optimisers."""
        saved = state["model"]
        with torch.no_grad():
            for name, module in self.model.named_modules():
                if not isinstance(module, ChannelOutput):
                    continue
                if isinstance(module, SepConv):
                    mid = saved[f"{name}.pw1.weight"].shape[0]
                    if mid != module.pw1.out_channels:
                        module.keep_mid(torch.arange(mid))
                index = saved.get(f"{name}.out_index")
                if index is not None:
                    module.keep_out(index.clone())
        self.model.load_state_dict(saved)
        self.model.refresh_active()
        self.stage = int(state["extra"]["stage"])
        self._build_optimizers(alive=state["extra"]["optimizer_alive"].to(self.model.alive.device))


def _unit_off(op: nn.Module, unit: str) -> bool:
    gate = op.mid_gate if unit == "mid" else op.out_gate
    return gate is not None and not bool((gate.mask() > 0).any())


def _shrink_unit(op: nn.Module, unit: str, keep_one: bool) -> int:
    gate: FilterGate | None = op.mid_gate if unit == "mid" else op.out_gate
    if gate is None:
        return 0
    on = torch.nonzero(gate.mask() > 0).flatten()
    if len(on) == 0:
        if not keep_one:
            return 0
        on = gate.score().argmax().reshape(1)
    n = gate.beta.numel()
    if len(on) == n:
        return 0
    on = on.cpu()
    (op.keep_mid if unit == "mid" else op.keep_out)(on)
    return n - len(on)

