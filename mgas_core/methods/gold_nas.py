"""GOLD-NAS (Bi, Xie et al., arXiv 2007.03331): gradual one-level pruning in an enlarged space.

Per-cell alphas (no normal/reduce sharing) over the 7 ops without ``none``, op weight
``sigmoid(alpha)`` (init 0), any subset of ops may survive per edge. Weights (SGD, constant
learning rate) and alphas are stepped on the same training batch (one level). Loss = CE +
lambda * cost with

    cost = sum over active ops o entering node n of log(1 + k_n * sigma(a_o) / S_n) * (c + mu * F_o)

where S_n sums sigma over all active ops entering node n (every edge of the node, via the
explicit node -> edge map, so the last edge of a node is prunable too), k_n counts them and F_o
is the op's parameters or FLOPs (``cost``), normalised by the largest op's. After every epoch up
to ``n0`` passes prune every op with ``sigma(a_o) <= eta_min``, else the weakest one if it is
``<= eta_max``; then the lambda controller (lambda starts at 0). As in the reference code
(``train_search.py:main``), an epoch that prunes after more than ``stable_rounds`` (3) epochs in a
row without pruning ends a plateau, and the architecture after that epoch's pruning is
snapshotted, so one search yields a series of Pareto points; the architecture the search ends
on is the final snapshot (``snapshot: epoch`` instead snapshots after every epoch that pruned, for
short searches that never plateau). ``target_params`` is the resource floor (dense parameters of
the derived network): the search prunes until it is reached or ``search.epochs`` are spent, and
says which (``target_reached``, ``target_gap``). Every snapshot is retrained
(:meth:`GoldNas.architectures_to_retrain`; ``retrain_snapshots`` keeps an evenly spaced subset).

Pruning thresholds apply to the op weight ``sigma(a_o)`` itself, as in the paper's algorithm.
(Applying them to ``sigma / S_n`` instead, as one reading suggests, cannot work: that share starts
at ``1 / k_n``, below ``eta_max`` for any node with more than 20 candidate ops, so the weakest op
would be pruned every pass from the first epoch on and pruning would never plateau.) The node
normalisation ``S_n`` is used where the paper uses it, inside the cost.

Deviation: the paper adds a 0.4-weighted auxiliary CE during search; the supernet here has no
auxiliary head during search (identical for all methods), so that term is left out.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from mgas_core.data import Batch, DatasetInfo
from mgas_core.evaluation_network import build_eval_network
from mgas_core.latency.cost import latency_cost, latency_figures
from mgas_core.methods.protocol import MethodStyle, RetrainCandidate, SearchMethod, accuracy, clip_and_step, set_lr
from mgas_core.methods.registry import register_method
from mgas_core.metrics import count_params
from mgas_core.nn.ops import EVALUATION, build_op
from mgas_core.settings.run import SearchSettings
from mgas_core.settings.strict import MAX_EPOCHS, SettingConflict, Strict
from mgas_core.space.architecture import Architecture, CellArch, OpSpec, architecture_from_json
from mgas_core.space.genotype import prune_dead_ops
from mgas_core.space.topology import NO_NONE_PRIMITIVES
from mgas_core.supernet.builder import build_supernet
from mgas_core.supernet.cell_alphas import PerCellAlphaModel


@cache
def op_resource(name: str, channels: int, stride: int, resolution: int, kind: str) -> float:
    """Parameters or multiply-adds of one evaluation-network op on a ``resolution`` input."""
    op = build_op(name, channels, stride, EVALUATION)
    if kind == "params":
        return float(sum(p.numel() for p in op.parameters()))
    x = torch.zeros(1, channels, resolution, resolution)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        op(x)
    return counter.get_total_flops() / 2


class LambdaControl(Strict):
    """GOLD-NAS lambda controller constants (shared by GOLD-NAS and MGAS)."""

    lambda0: float = Field(1e-5, gt=0)
    c0: float = Field(2.0, gt=1)


class GoldNasSettings(Strict):
    alpha_lr: float = Field(1.0, gt=0)
    alpha_momentum: float = Field(0.9, ge=0, lt=1)
    w_lr: float = Field(0.01, gt=0)
    cost: Literal["params", "flops"] = "params"
    cost_c: float = Field(1.0, ge=0, description="constant part of each op's cost")
    cost_mu: float = Field(1.0, ge=0, description="weight of the op's normalised params/FLOPs")
    eta_min: float = Field(0.01, ge=0, lt=1)
    eta_max: float = Field(0.05, ge=0, lt=1)
    n0: int = Field(4, ge=1, le=10_000)
    control: LambdaControl = LambdaControl()
    warmup_epochs: int = Field(0, ge=0)
    snapshot: Literal["plateau", "epoch"] = Field(
        "plateau", description="Pareto snapshot when pruning resumes after a plateau, or after every pruning epoch")
    stable_rounds: int = Field(3, ge=0, le=MAX_EPOCHS,
                               description="a plateau is more than this many epochs in a row without pruning")
    retrain_snapshots: int | None = Field(
        None, ge=1, le=1000, description="retrain this many snapshots of the series (evenly spaced, the final one "
                                          "always); None: every snapshot")


class LambdaController:
    """The GOLD-NAS lambda controller (``train_search.py:main`` of the reference code).

    lambda starts at 0 with the increment at ``lambda0``: the first epoch trains without resource
    pressure. After every pruning check: if enough was pruned (at least ``n0`` ops), the pressure was
    too strong, so ``lambda /= c0`` and the increment resets to ``lambda0``; otherwise the increment
    grows, ``dlambda *= c0``, and ``lambda += dlambda``. Pruning therefore never stalls for long, and
    never runs away. (MGAS has its own controller, :mod:`mgas_core.methods.mgas.schedule`.)
    """

    def __init__(self, lambda0: float, c0: float) -> None:
        if lambda0 <= 0 or c0 <= 1:
            raise ValueError(f"lambda0 must be > 0 and c0 > 1, got lambda0={lambda0}, c0={c0}")
        self.lambda0 = lambda0
        self.c0 = c0
        self.value = 0.0
        self.delta = lambda0

    def update(self, enough_pruned: bool) -> float:
        if enough_pruned:
            self.value /= self.c0
            self.delta = self.lambda0
        else:
            self.delta *= self.c0
            self.value += self.delta
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "delta": self.delta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.delta = float(state["delta"])


@register_method("gold_nas")
class GoldNas(SearchMethod):
    primitives = NO_NONE_PRIMITIVES
    settings_model = GoldNasSettings
    presets = {"tiny": {"search.gold_nas.w_lr": 0.05, "search.gold_nas.control.lambda0": 0.05,
                        "search.gold_nas.snapshot": "epoch"}}
    cli_flags = {"cost": "resource the cost term measures: params or flops (GOLD-NAS), or latency (any method, "
                         "with --latency-predictor)"}
    style = MethodStyle("GOLD-NAS", "#ff7f0e", "s")
    reference_impl = True
    takes_latency_cost = True

    @classmethod
    def check_settings(cls, settings: SearchSettings) -> None:
        cfg = settings.gold_nas
        if cfg.eta_min > cfg.eta_max:
            raise SettingConflict("gold_nas.eta_min", f"eta_min={cfg.eta_min} must not exceed "
                                                      f"eta_max={cfg.eta_max}")

    def __init__(self, settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> None:
        super().__init__(settings, info, device, seed)
        cfg = settings.gold_nas
        self.cfg = cfg
        net = build_supernet(settings, self.primitives, info)
        self.model = PerCellAlphaModel(net).to(device)
        # with a latency predictor the resource is each op's latency on this device (its lookup table)
        self.latency = latency_cost(settings, info, device, self.primitives)
        self.op_cost = (self._op_latencies() if self.latency else self._op_costs(cfg.cost)).to(device)
        self.w_opt = torch.optim.SGD(list(net.parameters()), lr=cfg.w_lr, momentum=settings.w_momentum,
                                     weight_decay=settings.w_weight_decay)
        self.a_opt = torch.optim.SGD([self.model.alpha], lr=cfg.alpha_lr, momentum=cfg.alpha_momentum)
        self.controller = LambdaController(cfg.control.lambda0, cfg.control.c0)
        self.last_pruned: int | None = None
        self.unpruned_epochs = 0  # epochs in a row without pruning (the reference's plateau counter)
        self.snapshots: list[dict[str, Any]] = []
        self.stopped = False
        self.lr = cfg.w_lr

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"weights": self.w_opt, "alpha": self.a_opt}

    def _op_costs(self, kind: str) -> Tensor:
        net = self.model.net
        costs = torch.zeros_like(self.model.alpha)
        res = net.stem.resolution(self.info.image_size)
        for ci, cell in enumerate(net.cells):
            for e, edge in enumerate(net.topology.edges):
                stride = 2 if cell.reduction and edge.source < 2 else 1
                for o, name in enumerate(self.primitives):
                    costs[ci, e, o] = op_resource(name, cell.channels, stride, res, kind)
            if cell.reduction:
                res = max(1, res // 2)
        return costs / costs.max().clamp_min(1e-12)

    def _op_latencies(self) -> Tensor:
        assert self.latency is not None
        costs = self.latency.op_latencies(self.settings.channels, self.settings.layers, self.primitives)
        return costs / costs.max().clamp_min(1e-12)

    # --- training -----------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.lr = self.cfg.w_lr  # constant, as the reference
        set_lr(self.w_opt, self.lr)

    def cost(self) -> Tensor:
        sigma = torch.sigmoid(self.model.alpha)
        alive = self.model.alive.to(sigma.dtype)
        total = sigma.new_zeros(())
        for sl in self.model.net.topology.node_edges:
            s_node = (sigma[:, sl] * alive[:, sl]).sum(dim=(1, 2), keepdim=True)
            k_node = alive[:, sl].sum(dim=(1, 2), keepdim=True)
            term = torch.log1p(k_node * sigma[:, sl] / s_node.clamp_min(1e-12))
            total = total + (term * (self.cfg.cost_c + self.cfg.cost_mu * self.op_cost[:, sl]) * alive[:, sl]).sum()
        return total

    def train_step(self, batch: Batch, arch_batch: Batch | None = None) -> dict[str, float]:
        x, y = self.to_device(batch)
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.model(x)
            ce = F.cross_entropy(logits, y)
        loss = ce + self.controller.value * self.cost()
        loss.backward()
        clip_and_step(self.w_opt, list(self.model.net.parameters()), self.settings.grad_clip)
        self.a_opt.step()
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), "acc": accuracy(logits.detach(), y)}

    # --- pruning ------------------------------------------------------------------------------
    def normalised_weights(self) -> Tensor:
        """sigma(a_o) / S_n for every alive op (0 for pruned ops): each op's share of its node."""
        with torch.no_grad():
            sigma = torch.sigmoid(self.model.alpha) * self.model.alive
            out = torch.zeros_like(sigma)
            for sl in self.model.net.topology.node_edges:
                out[:, sl] = sigma[:, sl] / sigma[:, sl].sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
            return out

    def prune_pass(self) -> int:
        """One pass: prune all ops with sigma(a) <= eta_min, else the weakest if <= eta_max.
        A node never loses its last op."""
        with torch.no_grad():
            norm = torch.sigmoid(self.model.alpha)
        alive = self.model.alive
        candidates = alive & (norm <= self.cfg.eta_min)
        if not candidates.any():
            masked = torch.where(alive, norm, torch.full_like(norm, float("inf")))
            weakest = int(masked.argmin())
            if float(masked.flatten()[weakest]) > self.cfg.eta_max:
                return 0
            candidates = torch.zeros_like(alive)
            candidates.view(-1)[weakest] = True
        pruned = 0
        for ci, e, o in torch.nonzero(candidates).tolist():
            node_slice = self.model.net.topology.node_edges[self.model.net.topology.edges[e].node]
            if int(alive[ci, node_slice].sum()) <= 1:
                continue
            alive[ci, e, o] = False
            pruned += 1
        return pruned

    def end_of_epoch(self, epoch: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if epoch < self.cfg.warmup_epochs:
            return events
        pruned = 0
        for _ in range(self.cfg.n0):
            n = self.prune_pass()
            if n == 0:
                break
            pruned += n
        plateau_ends = False
        if pruned:
            self.model.refresh_active()
            plateau_ends = self.unpruned_epochs > self.cfg.stable_rounds
            self.unpruned_epochs = 0
            events.append({"type": "prune", "epoch": epoch, "ops": pruned,
                           "ops_left": int(self.model.alive.sum())})
        else:
            self.unpruned_epochs += 1
        self.last_pruned = pruned
        self.controller.update(pruned >= self.cfg.n0)
        all_reached, floor_events = self._floors(epoch)
        events += floor_events
        self.stopped = self.stopped or all_reached
        if self.stopped or epoch + 1 >= self.max_epochs:
            events.append(self._snapshot(self.derive(), epoch, final=True))
        elif pruned and (plateau_ends or self.cfg.snapshot == "epoch"):
            events.append(self._snapshot(self.derive(), epoch))
        self.events += events
        return events

    def _floors(self, epoch: int) -> tuple[bool, list[dict[str, Any]]]:
        """Whether the derived architecture is at or below every floor given (``target_params``:
        its dense params; ``search.latency.target_ms``: its predicted latency on this device; they
        join: the search stops once all are reached), and the events to record: each floor reached,
        and at the last epoch each floor still above."""
        reached, events = [], []
        last = epoch + 1 >= self.max_epochs
        floor = self.settings.target_params
        if floor is not None:
            dense, _ = self.derived_count()
            reached.append(dense <= floor * 1e6)
            if reached[-1]:
                events.append({"type": "floor_reached", "epoch": epoch, "params": dense})
            elif last:
                events.append({"type": "floor_missed", "epoch": epoch, "params": dense,
                               "detail": f"search.epochs={self.max_epochs} spent at {dense} params, above the "
                                         f"floor of {floor * 1e6:.0f}"})
        target_ms = self.latency.target_ms if self.latency is not None else None
        if self.latency is not None and target_ms is not None:
            predicted = self.latency.architecture_ms(self.derive())
            reached.append(predicted <= target_ms)
            if reached[-1] or last:
                events.append({"type": "latency_reached" if reached[-1] else "latency_missed", "epoch": epoch,
                               "predicted_ms": predicted, "target_ms": target_ms})
        return bool(reached) and all(reached), events

    def _snapshot(self, arch: Architecture, epoch: int, final: bool = False) -> dict[str, Any]:
        dense, nonzero = self.derived_count(arch)
        if self.snapshots and self.snapshots[-1]["params"] <= dense:
            if final:  # the search ends on the architecture already snapshotted
                self.snapshots[-1]["final"] = True
            return {"type": "snapshot_skipped", "epoch": epoch, "params": dense}
        snap = {"index": len(self.snapshots), "epoch": epoch, "params": dense, "nonzero_params": nonzero,
                "final": final, "arch": arch.to_json()}
        self.snapshots.append(snap)
        return {"type": "snapshot", "epoch": epoch, "index": snap["index"], "params": dense}

    @property
    def finished(self) -> bool:
        return self.stopped

    def derived_count(self, arch: Architecture | None = None) -> tuple[int, int]:
        arch = arch or self.derive()
        with torch.device("meta"):
            net = build_eval_network(arch, self.info.num_classes, self.info.in_channels, auxiliary=False,
                                     variant=self.info.variant)
        count = count_params(net)
        return count.dense, count.nonzero

    # --- results ------------------------------------------------------------------------------
    def derive(self) -> Architecture:
        net = self.model.net
        cells = []
        for ci, cell in enumerate(net.cells):
            ops = [OpSpec(self.primitives[o], net.topology.edges[e].source, net.topology.edges[e].node)
                   for e, o in torch.nonzero(self.model.alive[ci]).tolist()]
            live, concat = prune_dead_ops(ops)
            cells.append(CellArch(live, concat, cell.reduction))
        return Architecture(name=f"gold_nas_seed{self.seed}", nodes=net.topology.nodes, cells=cells,
                            channels=net.channels)

    def log_metrics(self) -> dict[str, Any]:
        return {"lambda": self.controller.value, "w_lr": self.lr, "ops_left": int(self.model.alive.sum()),
                "snapshots": len(self.snapshots)}

    def summary(self) -> dict[str, Any]:
        snaps = [{**{k: v for k, v in s.items() if k != "arch"}, "arch": architecture_from_json(s["arch"])}
                 for s in self.snapshots]
        out: dict[str, Any] = {"snapshots": snaps, "ops_left": int(self.model.alive.sum()),
                               "cost": "latency" if self.latency else self.cfg.cost}
        if self.latency is not None:
            out.update(latency_figures(self.latency, None, self.derive()))
        floor = self.settings.target_params
        if floor is not None and snaps:
            dense = snaps[-1]["params"]
            out.update({"target_reached": dense <= floor * 1e6, "target_gap": dense / (floor * 1e6) - 1})
        return out

    def architectures_to_retrain(self) -> list[RetrainCandidate]:
        """The snapshot series, largest first and the final architecture last (``retrain_snapshots``:
        that many, evenly spaced along the series, the final one always among them)."""
        series = self.snapshots
        keep = self.cfg.retrain_snapshots
        indices = list(range(len(series)))
        if keep is not None and keep < len(series):
            step = (len(series) - 1) / max(1, keep - 1)
            indices = sorted({round(len(series) - 1 - i * step) for i in range(keep)})
        return [RetrainCandidate(architecture_from_json(series[i]["arch"]), snapshot_index=series[i]["index"],
                                 final=i == len(series) - 1, search_epoch=series[i]["epoch"]) for i in indices]

    # --- state --------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "last_pruned": self.last_pruned,
                "unpruned_epochs": self.unpruned_epochs, "snapshots": list(self.snapshots), "stopped": self.stopped}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.last_pruned = state["last_pruned"]
        self.unpruned_epochs = int(state["unpruned_epochs"])
        self.snapshots = list(state["snapshots"])
        self.stopped = bool(state["stopped"])
        self.model.refresh_active()
