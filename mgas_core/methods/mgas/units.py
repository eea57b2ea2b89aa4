"""MGAS's units, thresholds and masks on a :class:`~mgas_core.supernet.fast.SuperNetwork`.

Three levels, as in the official MG-DARTS code:

* **op**: ``sigmoid(alpha)`` per (cell, edge, op); live mask ``Step(sigmoid(alpha) - t_op)``;
* **filter**: ``sigmoid(beta)`` per output channel of every searchable pointwise stage (SepConv's
  two, DilConv's one) and of the cells' pre-processing convs; live mask
  ``Step(sigmoid(beta) - t_filter)``; the stride-2 skip (FactorizedReduce) has scores but no mask;
* **weight**: ``|w|`` of every SepConv/DilConv conv; live mask ``Step(|w| - t_weight)``.

Thresholds: one ``t_op``, ``t_filter`` and ``t_weight`` per (cell, edge, op), shared by that op's
units, and one filter threshold per pre-processing conv; all start at 0 and are reset to 0 when a
stage (and the final phase) begins. Each unit also has a *stored* mask (``alive`` for ops,
``FilterGate.stored``, ``MaskableConv2d.weight_mask``) that changes only at mask epochs and never
comes back; the live mask is the step times the stored mask, and it is what every forward uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mgas_core.nn.maskable_conv import MaskableConv2d
from mgas_core.nn.ops import ChannelOutput, DilConv, FactorizedReduce, SepConv
from mgas_core.nn.step import FilterGate, binary_step
from mgas_core.supernet.cell_alphas import PerCellAlphaModel
from mgas_core.supernet.fast import SuperNetwork

KEPT_OP_ORDER = ("none", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
                 "avg_pool_3x3", "max_pool_3x3")
"""The official ``PRIMITIVES`` order (``cifar_search/genotypes.py``; ``none`` first where a space has
it): the order in which a node's last alive op is found (:meth:`MgasModel.protected`)."""


class MgasModel(PerCellAlphaModel):
    """Supernet + alphas + every threshold (state_dict carries all of it)."""

    def __init__(self, net: SuperNetwork, granularities: Sequence[str]) -> None:
        super().__init__(net)
        layers, edges, ops = self.alpha.shape
        self.levels = tuple(granularities)
        self.t_op = nn.Parameter(torch.zeros(layers, edges, ops))
        self.t_filter = nn.Parameter(torch.zeros(layers, edges, ops))
        self.t_weight = nn.Parameter(torch.zeros(layers, edges, ops))
        self.t_pre = nn.Parameter(torch.zeros(layers, 2))
        conv_op = [isinstance(op, SepConv | DilConv) for cell in net.cells for edge in cell.edges for op in edge.ops]
        self.register_buffer("conv_op", torch.tensor(conv_op).view(layers, edges, ops))
        topo = net.topology
        incidence = torch.zeros(edges, topo.nodes)
        for e, edge in enumerate(topo.edges):
            incidence[e, edge.node] = 1.0
        self.register_buffer("incidence", incidence)  # [edges, nodes]
        # the ops each cell's channel plan was laid out for (alive ones, plus ops pruned since)
        self.register_buffer("planned", torch.ones(layers, edges, ops, dtype=torch.bool))
        self._protect: Tensor | None = None

    def reset_thresholds(self) -> None:
        with torch.no_grad():
            for t in (self.t_op, self.t_filter, self.t_weight, self.t_pre):
                t.zero_()

    def refresh_active(self) -> None:
        super().refresh_active()
        self._protect = None

    def protected(self) -> Tensor:
        """[cells, edges, ops]: 1 at the op every node keeps when all its alive ops' masks are off:
        the last alive one in (edge, official ``PRIMITIVES``) order, as the official forward keeps
        the op it reaches with every other alive op of the node off (``MixedOp.forward``'s
        ``node_sum - w`` test, ``model_search.py``): ``max_pool_3x3`` of the node's last edge while
        that op is alive."""
        if self._protect is None:
            _, edges, ops = self.alive.shape
            rank = torch.tensor([KEPT_OP_ORDER.index(p) for p in self.net.primitives], device=self.alive.device)
            key = torch.arange(edges, device=rank.device).view(edges, 1) * len(KEPT_OP_ORDER) + rank.view(1, ops)
            last = torch.zeros_like(self.alive, dtype=self.alpha.dtype)
            for sl in self.net.topology.node_edges:
                block = torch.where(self.alive[:, sl], key[sl], torch.full_like(key[sl], -1)).flatten(1)
                best, where = block.max(dim=1)
                for ci in torch.nonzero(best >= 0).flatten().tolist():
                    e, o = divmod(int(where[ci]), ops)
                    last[ci, sl.start + e, o] = 1.0
            self._protect = last
        return self._protect

    def op_masks(self) -> Tensor:
        """Live op masks ``Step(sigmoid(alpha) - t_op)`` within the stored (alive) ones; a node
        whose every alive op is off keeps its last one."""
        alive = self.alive.to(self.alpha.dtype)
        if "op" not in self.levels:
            return alive
        m = binary_step(torch.sigmoid(self.alpha) - self.t_op) * alive
        node_on = (m.detach().sum(dim=2) @ self.incidence) > 0  # [cells, nodes]
        empty_edge = (~node_on).to(m.dtype) @ self.incidence.t()  # [cells, edges]
        keep = (self.protected() * empty_edge.unsqueeze(-1)) > 0
        return torch.where(keep, torch.ones_like(m), m)

    def cell_weights(self, masks: Tensor | None = None) -> Tensor:
        """The factor each op's output is multiplied by: ``sigmoid(alpha) * mask`` (op level on),
        else the stored mask."""
        masks = self.op_masks() if masks is None else masks
        if "op" not in self.levels:
            return masks
        return torch.sigmoid(self.alpha) * masks

    def forward(self, x: Tensor, upto: int | None = None) -> Tensor:
        return self.net(x, list(self.cell_weights().unbind(0)), self.active, upto)

    # --- loss terms ---------------------------------------------------------------------------
    def log_cost(self, masks: Tensor, cells: range, op_weights: Tensor | None = None) -> Tensor:
        """The official size term: over alive ops whose live mask is on, of the cells ``cells``,
        ``log(1 + k_n sigmoid(alpha) / S_n)``; ``k_n`` counts the node's ops that are on, ``S_n``
        sums sigmoid(alpha) over its alive ops; each op's term times ``op_weights`` (those cells'
        [cells, edges, ops]) when given (the latency, ``methods/mgas/latency.py``)."""
        if "op" not in self.levels:
            return self.alpha.new_zeros(())
        sl = slice(cells.start, cells.stop)
        sigma = torch.sigmoid(self.alpha[sl]) * self.alive[sl].to(self.alpha.dtype)
        on = masks[sl].detach()
        s_node = sigma.sum(dim=2) @ self.incidence  # [cells, nodes]
        k_node = on.sum(dim=2) @ self.incidence
        s_edge = (s_node @ self.incidence.t()).unsqueeze(-1)
        k_edge = (k_node @ self.incidence.t()).unsqueeze(-1)
        terms = on * torch.log1p(k_edge * sigma / s_edge.clamp_min(1e-12))
        return (terms if op_weights is None else terms * op_weights).sum()

    def threshold_regulariser(self, cells: range) -> Tensor:
        """``sum exp(-t)`` over the thresholds of the alive units of ``cells`` (enabled levels)."""
        sl = slice(cells.start, cells.stop)
        alive = self.alive[sl].to(self.alpha.dtype)
        conv = self.conv_op[sl].to(alive.dtype)
        total = self.alpha.new_zeros(())
        if "op" in self.levels:
            total = total + (alive * torch.exp(-self.t_op[sl])).sum()
        if "filter" in self.levels:
            total = total + (alive * conv * torch.exp(-self.t_filter[sl])).sum() + torch.exp(-self.t_pre[sl]).sum()
        if "weight" in self.levels:
            total = total + (alive * conv * torch.exp(-self.t_weight[sl])).sum()
        return total


def attach_units(net: SuperNetwork, granularities: Sequence[str]) -> None:
    """Give every filter unit its scores (only when the filter level is on)."""
    if "filter" not in granularities:
        return
    for cell in net.cells:
        for pre in (cell.preprocess0, cell.preprocess1):
            pre.out_gate = FilterGate(len(pre.kept_out))  # masked whatever its type (official)
        for edge in cell.edges:
            for op in edge.ops:
                attach_op_units(op)


def attach_op_units(op: nn.Module) -> None:
    if isinstance(op, SepConv):
        op.mid_gate = FilterGate(op.pw1.out_channels)
    if isinstance(op, ChannelOutput):
        op.out_gate = FilterGate(len(op.kept_out), maskable=not isinstance(op, FactorizedReduce))


def gates_of(module: nn.Module) -> list[FilterGate]:
    out = []
    if isinstance(module, SepConv) and module.mid_gate is not None:
        out.append(module.mid_gate)
    if isinstance(module, ChannelOutput) and module.out_gate is not None:
        out.append(module.out_gate)
    return out


def weight_convs_of(module: nn.Module) -> list[MaskableConv2d]:
    return list(module.weight_convs().values()) if isinstance(module, SepConv | DilConv) else []


class LiveMasks:
    """Every filter gate's and weight conv's live mask, computed in a few batched ops per step and
    lent to the units for the duration of one forward/backward (they share them)."""

    def __init__(self, model: MgasModel, cells: range) -> None:
        self.model = model
        net = model.net
        layers, edges, ops = model.alpha.shape
        self.gates: list[FilterGate] = []
        gate_t: list[int] = []  # flat index into cat(t_filter, t_pre) per gate (-1: not maskable)
        self.convs: list[MaskableConv2d] = []
        conv_t: list[int] = []
        for ci in cells:
            cell = net.cells[ci]
            for j, pre in enumerate((cell.preprocess0, cell.preprocess1)):
                if pre.out_gate is not None:
                    self.gates.append(pre.out_gate)
                    gate_t.append(layers * edges * ops + ci * 2 + j if pre.out_gate.maskable else -1)
            for e, edge in enumerate(cell.edges):
                for o, op in enumerate(edge.ops):
                    if not bool(model.alive[ci, e, o]):
                        continue
                    flat = (ci * edges + e) * ops + o
                    for gate in gates_of(op):
                        self.gates.append(gate)
                        gate_t.append(flat if gate.maskable else -1)
                    if "weight" in model.levels:
                        for conv in weight_convs_of(op):
                            self.convs.append(conv)
                            conv_t.append(flat)
        device = model.alpha.device
        self.gate_t = torch.tensor(gate_t, dtype=torch.long, device=device)
        self.conv_t = torch.tensor(conv_t, dtype=torch.long, device=device)

    def gate_masks(self) -> tuple[list[Tensor], list[Tensor]]:
        """(scores, live masks) of every gate."""
        if not self.gates:
            return [], []
        sizes = [g.beta.numel() for g in self.gates]
        scores = torch.sigmoid(torch.cat([g.beta for g in self.gates]))
        stored = torch.cat([g.stored for g in self.gates])
        thresholds = torch.cat([self.model.t_filter.reshape(-1), self.model.t_pre.reshape(-1)])
        maskable = self.gate_t >= 0
        t = thresholds[self.gate_t.clamp_min(0)]
        t = torch.where(maskable, t, torch.full_like(t, -2.0))  # scores are > -1: step always on
        sizes_t = torch.tensor(sizes, device=t.device)
        masks = binary_step(scores - t.repeat_interleave(sizes_t)) * stored
        return list(scores.split(sizes)), list(masks.split(sizes))

    def conv_masks(self) -> list[Tensor]:
        """Live ``Step(|w| - t_weight)`` of every weight conv (the stored mask applies on top)."""
        if not self.convs:
            return []
        sizes = [c.weight.numel() for c in self.convs]
        flat = torch.cat([c.weight.reshape(-1) for c in self.convs]).abs()
        t = self.model.t_weight.reshape(-1)[self.conv_t]
        masks = binary_step(flat - t.repeat_interleave(torch.tensor(sizes, device=t.device)))
        return [m.view_as(c.weight) for m, c in zip(masks.split(sizes), self.convs)]

    @contextmanager
    def lent(self) -> Iterator[None]:
        try:
            for g, sc, m in zip(self.gates, *self.gate_masks()):
                g.cached = (sc, m)
            for c, m in zip(self.convs, self.conv_masks()):
                c.cached_mask = m
            yield
        finally:
            for g in self.gates:
                g.cached = None
            for c in self.convs:
                c.cached_mask = None


def store_live_masks(model: MgasModel, cells: range) -> list[tuple[int, int, int]]:
    """A mask epoch: the live filter and weight masks of ``cells`` become their stored masks (as
    they are: the width floor is :func:`apply_width_floor`'s, at filter removal, as the official
    ``prune_kernel``); returns the alive ops whose live op mask is off, in (cell, edge, op) order
    (the caller decides which of them die)."""
    with torch.no_grad():
        live = LiveMasks(model, cells)
        for gate, mask in zip(live.gates, live.gate_masks()[1]):
            if gate.maskable:
                gate.stored = mask.detach().clone()
        for conv, mask in zip(live.convs, live.conv_masks()):
            conv.weight_mask = mask * (conv.weight_mask if conv.weight_mask is not None else 1.0)
        op_masks = model.op_masks()
    sl = slice(cells.start, cells.stop)
    off = model.alive[sl] & (op_masks[sl] == 0)
    return [(cells.start + ci, e, o) for ci, e, o in torch.nonzero(off).tolist()]


def apply_width_floor(model: MgasModel, cells: range, min_width_fraction: float) -> int:
    """The official ``prune_kernel``'s floor, applied right before filters are removed: every filter
    unit of the alive ops and pre-processing convs of ``cells`` keeps at least
    ``min_width_fraction`` of its cell's initial width, topped up with its highest-scoring
    (``sigmoid(beta)``) filters; returns how many filters came back. Until then the stored masks
    are the live ones, and the stage size is measured on them (official ``current_flops``)."""
    restored = 0
    with torch.no_grad():
        for ci in cells:
            floor = max(1, int(min_width_fraction * model.net.cells[ci].channels))
            for gate in LiveMasks(model, range(ci, ci + 1)).gates:
                need = min(gate.stored.numel(), floor)
                have = int(gate.stored.sum())
                if not gate.maskable or have >= need:
                    continue
                top = torch.zeros_like(gate.stored)
                top[torch.sigmoid(gate.beta).argsort(descending=True)[:need]] = 1.0
                kept = torch.maximum(gate.stored, top)
                restored += int(kept.sum()) - have
                gate.stored = kept
    return restored


@contextmanager
def width_floor_applied(model: MgasModel, cells: range, min_width_fraction: float) -> Iterator[None]:
    """Within the block, the stored masks of ``cells`` as :func:`apply_width_floor` will leave them
    (what a derived architecture holds: the official genotype is read after ``prune_kernel``);
    restored after it."""
    saved = [(gate, gate.stored.clone()) for ci in cells for gate in LiveMasks(model, range(ci, ci + 1)).gates]
    try:
        apply_width_floor(model, cells, min_width_fraction)
        yield
    finally:
        for gate, stored in saved:
            gate.stored = stored


# --- sizes and ratios -----------------------------------------------------------------------------


def _kept(gate: FilterGate | None, n: int) -> float:
    return float(gate.stored.sum()) if gate is not None else float(n)


def op_size(op: nn.Module) -> float:
    """The size of one op as ``current_flops`` counts a SepConv or DilConv (``flops_computation``,
    ``model_search.py``): its conv weights through the stored filter masks; pools, identity and
    the stride-2 skip are free here (skips are charged by :func:`stage_size`)."""
    if isinstance(op, SepConv):
        mid = _kept(op.mid_gate, op.pw1.out_channels)
        out = _kept(op.out_gate, op.pw2.out_channels)
        k2 = op.dw2.weight[0].numel()
        return float(op.dw1.weight.numel()) + op.pw1.in_channels * mid + k2 * mid + op.pw2.in_channels * out
    if isinstance(op, DilConv):
        return float(op.dw.weight.numel()) + op.pw.in_channels * _kept(op.out_gate, op.pw.out_channels)
    return 0.0


def skip_charges(model: MgasModel) -> dict[int, int]:
    """The cells whose skips the official size charges, and the charge: ``current_flops`` flags
    the cell *before* each reduction as the reduction (``stage1_end``, ``stage2_end``: its width
    doubles there, one cell early), and a skip on an input edge of a flagged cell costs ``c^2``,
    ``c`` that doubled width (the reduction cell's); every other skip, the real stride-2 ones of
    the reduction cells included, costs 0."""
    cells = model.net.cells
    return {ci - 1: cells[ci].channels ** 2 for ci in range(1, len(cells)) if cells[ci].reduction}


def stage_size(model: MgasModel, cells: range) -> float:
    """The official stage size (``Network.current_flops``): :func:`op_size` over the alive ops of
    ``cells``, plus :func:`skip_charges` for the alive skips on input edges (state 0 or 1)."""
    net = model.net
    skip = net.primitives.index("skip_connect") if "skip_connect" in net.primitives else -1
    charges = skip_charges(model)
    total = 0.0
    for ci in cells:
        for e, edge in enumerate(net.cells[ci].edges):
            for o, op in enumerate(edge.ops):
                if not bool(model.alive[ci, e, o]):
                    continue
                if o == skip:
                    total += charges.get(ci, 0) if net.topology.edges[e].source < 2 else 0
                else:
                    total += op_size(op)
    return total


def remaining_ratios(model: MgasModel) -> dict[str, float]:
    """Per level, the fraction of its units still there: ops alive; filters kept (stored, against
    each unit's initial width) over the alive units; weights kept by the stored masks over the
    weights of the alive convs as they are now (so the three multiply to the overall keep)."""
    net = model.net
    out = {"op": float(model.alive.float().mean()) if "op" in model.levels else 1.0, "filter": 1.0, "weight": 1.0}
    kept_f = total_f = kept_w = total_w = 0.0
    for ci, cell in enumerate(net.cells):
        units = [g for pre in (cell.preprocess0, cell.preprocess1) for g in gates_of(pre) if g.maskable]
        convs: list[MaskableConv2d] = []
        for e, edge in enumerate(cell.edges):
            for o, op in enumerate(edge.ops):
                if bool(model.alive[ci, e, o]):
                    units += [g for g in gates_of(op) if g.maskable]
                    convs += weight_convs_of(op)
        kept_f += sum(float(g.stored.sum()) for g in units)
        total_f += cell.channels * len(units)
        kept_w += sum(c.stored_nonzero() for c in convs)
        total_w += sum(c.weight.numel() for c in convs)
    if "filter" in model.levels and total_f:
        out["filter"] = kept_f / total_f
    if "weight" in model.levels and total_w:
        out["weight"] = kept_w / total_w
    return out
