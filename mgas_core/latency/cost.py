"""The latency of a search's current architecture distribution as a differentiable loss term.

For DARTS-style shared alphas (DARTS, MSG-DAS) the derived genotype keeps, per node, its two
strongest edges (strength: the largest softmax weight of an op other than ``none``), each with its
strongest op other than ``none``. The encoding fed to the predictor is that genotype's (forward),
with straight-through gradients (backward) of the soft choices: op ``o`` of edge ``e`` weighted
``w_e * q_e(o)``, ``q_e`` the edge's softmax renormalised over its ops other than ``none`` and
``w_e = 2 * s_e / sum of s over the node's edges``. So the term prices the architecture the alphas
stand for now, and its gradient says which way the alphas make it faster. Widths are whole.

The loss term is ``coefficient * log(latency / target_ms)`` floored at 0 with a target (only a
network slower than the target pays), and ``coefficient * log(latency / first)`` without one
(``first``: the prediction at the search's start, so the term starts at 0 and the trade-off does
not depend on the unit). The paper (Xu et al., arXiv 2001.06392) adds "a differentiable latency
loss term ... with a balancing coefficient"; its exact form could not be read here
(docs/fidelity.md, latency).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mgas_common.errors import UserInputError
from mgas_core.data import DatasetInfo
from mgas_core.latency.encoding import OP_FEATURES, assemble, cell_rows, encode
from mgas_core.latency.lookup import LookupTable
from mgas_core.latency.measure import HARDWARE_FIELDS, LatencyConditions
from mgas_core.latency.store import SUMMARY_FILE, TABLE_FILE, load_predictor, predictor_folder
from mgas_core.settings.run import SearchSettings
from mgas_core.space.architecture import Architecture, CellArch, OpSpec
from mgas_core.space.topology import CellTopology, reduction_cells


class LatencyCost:
    """A device's predictor applied to a supernet's alphas (see the module docstring)."""

    def __init__(self, predictor_dir: str, coefficient: float, target_ms: float | None, info: DatasetInfo,
                 device: torch.device, primitives: Sequence[str], nodes: int) -> None:
        here = LatencyConditions.current(device, 1, 1, info.input_shape)  # threads, batch: the predictor's
        folder = predictor_folder(predictor_dir, here)  # a build's root: the folder of this device
        self.predictor = load_predictor(folder, here, fields=HARDWARE_FIELDS)  # refused in one line elsewhere
        self.folder = folder
        self.hybrid = load_predictor(folder, here, kind="hybrid", fields=HARDWARE_FIELDS)
        self._table: LookupTable | None = None
        space = self.predictor.space
        if space.nodes != nodes:
            raise UserInputError(f"latency predictor {folder} describes cells of {space.nodes} nodes, this search's "
                                 f"have {nodes}")
        missing = [p for p in space.primitives if p not in primitives]
        if missing:
            raise UserInputError(f"latency predictor {folder} knows ops {', '.join(missing)} this search lacks")
        shape = json.loads((folder / SUMMARY_FILE).read_text())["sample_shape"]
        self.channels, self.layers = int(shape["retrain_channels"]), int(shape["retrain_layers"])
        self.columns = [list(primitives).index(p) for p in space.primitives]
        self.coefficient, self.target_ms = coefficient, target_ms
        self.device = device
        self.first_ms: float | None = None
        self.predictor.net.to(device)
        self.predictor.mean, self.predictor.std = self.predictor.mean.to(device), self.predictor.std.to(device)
        for p in self.predictor.net.parameters():
            p.requires_grad_(False)

    def _presence(self, alpha: Tensor) -> Tensor:
        """Presence [edges, predictor ops] of each op in the genotype ``alpha`` derives: the hard
        choice forward, the soft one's gradient backward (straight-through)."""
        probs = F.softmax(alpha, dim=-1)
        kept = probs[:, self.columns]  # the ops other than none, in the predictor's (= PRIMITIVES') order
        q_soft = kept / kept.sum(dim=1, keepdim=True).clamp_min(1e-12)
        q_hard = F.one_hot(kept.argmax(dim=1), kept.shape[1]).to(kept.dtype)  # ties: the first op, as derive
        strength = kept.max(dim=1).values  # derive_cell's edge strength
        hard = torch.zeros_like(strength)
        soft = torch.empty_like(strength)
        for node_slice in CellTopology(self.predictor.space.nodes).node_edges:
            s = strength[node_slice]
            k = min(2, s.numel())
            order = torch.sort(-s.detach(), stable=True).indices[:k]  # ties: the earlier edge, as derive
            hard[node_slice.start + order] = 1.0
            soft[node_slice] = k * s / s.sum().clamp_min(1e-12)
        weight = hard + soft - soft.detach()
        return (q_hard + q_soft - q_soft.detach()) * weight.unsqueeze(1)

    def expected_encoding(self, alpha_normal: Tensor, alpha_reduce: Tensor) -> Tensor:
        space = self.predictor.space
        normal, reduce = self._presence(alpha_normal), self._presence(alpha_reduce)
        reductions = set(reduction_cells(self.layers))
        rows = [reduce if i in reductions else normal for i in range(self.layers)]
        pad = [torch.zeros_like(normal)] * (space.layers - self.layers)
        presence = torch.stack(rows + pad)  # [space layers, edges, ops]
        ops = presence.unsqueeze(-1).expand(*presence.shape, OP_FEATURES)
        return assemble(ops, cell_rows(space, self.layers, ops.dtype).to(ops.device), self.channels, self.layers)

    def predicted_ms(self, alpha_normal: Tensor, alpha_reduce: Tensor) -> Tensor:
        enc = self.expected_encoding(alpha_normal, alpha_reduce).unsqueeze(0)
        return self.predictor.predict_log(enc.float()).exp().squeeze(0)

    def term(self, predicted: Tensor) -> Tensor:
        """The loss term of a predicted latency (see the module docstring)."""
        if self.target_ms is not None:
            return self.coefficient * torch.log(predicted / self.target_ms).clamp_min(0)
        if self.first_ms is None:
            self.first_ms = float(predicted.detach())
        return self.coefficient * torch.log(predicted / self.first_ms)

    @property
    def table(self) -> LookupTable:
        """The predictor's lookup table (parts it lacks are timed here, on the same device)."""
        if self._table is None:
            self._table = LookupTable.from_dict(json.loads((self.folder / TABLE_FILE).read_text()))
        return self._table

    def op_latencies(self, channels: int, layers: int, primitives: Sequence[str]) -> Tensor:
        """[cells, edges, ops] the table's time (ms) of every op of a per-cell supernet of
        ``layers`` cells at width ``channels``, each op at its cell's shape (GOLD-NAS's resource)."""
        topology = CellTopology(self.predictor.space.nodes)
        ops = [OpSpec(p, e.source, e.node) for e in topology.edges for p in primitives]
        cells = [CellArch(list(ops), list(range(2, 2 + topology.nodes))) for _ in range(layers)]
        supernet = Architecture("supernet", nodes=topology.nodes, cells=cells, channels=channels, layers=layers)
        out = torch.zeros(layers, topology.num_edges, len(primitives))
        for part in self.table.parts(supernet, channels, layers, self.device):
            if part.op is not None and part.cell is not None:
                out[part.cell, part.op // len(primitives), part.op % len(primitives)] = part.ms
        return out

    def architecture_ms(self, arch: Architecture) -> float:
        """The predicted latency of a derived architecture (a genotype at the predictor's retraining
        shape, a per-cell architecture at its own) by the hybrid predictor: the lookup table's sum
        of its parts times the learned correction (what the stop rules and summaries use; the
        alpha term of DARTS and MSG-DAS uses the MLP, whose encoding is differentiable)."""
        channels, layers = (self.channels, self.layers) if arch.is_genotype else (arch.channels, len(arch.cells or []))
        enc = encode(arch, self.predictor.space, channels, layers).unsqueeze(0)
        table_ms = torch.tensor([self.table.predict(arch, channels, layers, self.device)])
        with torch.no_grad():
            return float(self.hybrid.predict_ms(enc, table_ms))

    def state_dict(self) -> dict[str, float | None]:
        return {"first_ms": self.first_ms}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.first_ms = state.get("first_ms")


def add_latency_grads(cost: LatencyCost | None, alphas: Sequence[Tensor], grads: list[Tensor]) -> float | None:
    """Add the latency term's gradient to the alpha gradients ``grads`` (in place); the term's
    predicted latency (ms), or None without a cost."""
    if cost is None:
        return None
    with torch.enable_grad():
        predicted = cost.predicted_ms(alphas[0], alphas[1])
        extra = torch.autograd.grad(cost.term(predicted), list(alphas), allow_unused=True, materialize_grads=True)
    for i, g in enumerate(extra):
        grads[i] = grads[i] + g
    return float(predicted.detach())


def latency_cost(settings: SearchSettings, info: DatasetInfo, device: torch.device,
                 primitives: Sequence[str]) -> LatencyCost | None:
    """The search's latency cost (``search.latency``), or None when it has no predictor."""
    cfg = settings.latency
    if cfg.predictor is None:
        return None
    return LatencyCost(cfg.predictor, cfg.coefficient, cfg.target_ms, info, device, primitives, settings.nodes)


def latency_figures(cost: LatencyCost | None, predicted_ms: float | None, arch: Architecture | None = None,
                    ) -> dict[str, Any]:
    """What an epoch's metrics (the last prediction of the distribution) or a search's summary
    (with ``arch``: the derived architecture's predicted latency and the target) report."""
    if cost is None:
        return {}
    if arch is None:
        return {"latency_pred_ms": predicted_ms}
    return {"predicted_latency_ms": cost.architecture_ms(arch), "target_latency_ms": cost.target_ms,
            "latency_coefficient": cost.coefficient}
