"""MGAS's searchable units on a :class:`~mgas_core.supernet.SuperNetwork`.

* **filter** units: every pointwise stage of SepConv (``mid``, ``out``) and DilConv (``out``), the
  FactorizedReduce skip (``out``, both halves) and the two pre-processing convs of every cell carry
  a :class:`~mgas_core.masks.FilterGate` (``sigmoid(beta)`` scores, learned threshold);
* **weight** units: every depthwise/pointwise conv of SepConv/DilConv carries a
  :class:`~mgas_core.masks.LearnedThreshold` on ``|w|``.

:func:`size_count` is the number of parameters of the derived evaluation network (surviving
weights after op, filter and weight masks, affine BN included, stem and classifier included). It
is differentiable through the masks' surrogate gradients (the search's size cost) and exact in its
forward value; the only thing it does not model is a node that loses every input (the derived
network then drops it), so it is an upper bound of the derived count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mgas_core.arch import CellArch, OpSpec, prune_dead_ops
from mgas_core.maskable_conv import MaskableConv2d
from mgas_core.masks import FilterGate, LearnedThreshold, binary_step
from mgas_core.ops import ChannelOutput, DilConv, FactorizedReduce, SepConv
from mgas_core.supernet import SuperNetwork


@dataclass(frozen=True)
class LevelInit:
    op: float
    filter: float
    weight: float


def iter_ops(net: SuperNetwork, cells: Sequence[int] | None = None) -> Iterator[tuple[int, int, int, nn.Module]]:
    for ci in range(len(net.cells)) if cells is None else cells:
        for e, edge in enumerate(net.cells[ci].edges):
            for o, op in enumerate(edge.ops):
                yield ci, e, o, op


def gates_of(module: nn.Module) -> list[FilterGate]:
    out = []
    if isinstance(module, SepConv) and module.mid_gate is not None:
        out.append(module.mid_gate)
    if isinstance(module, ChannelOutput) and module.out_gate is not None:
        out.append(module.out_gate)
    return out


def weight_convs_of(module: nn.Module) -> dict[str, MaskableConv2d]:
    return module.weight_convs() if isinstance(module, SepConv | DilConv) else {}


def attach_units(net: SuperNetwork, granularities: Sequence[str], init: LevelInit) -> None:
    """Give every searchable unit its score and threshold (only for the enabled levels)."""
    for cell in net.cells:
        if "filter" in granularities:
            for pre in (cell.preprocess0, cell.preprocess1):
                pre.out_gate = FilterGate(pre.channels, init.filter)
        for edge in cell.edges:
            for op in edge.ops:
                attach_op(op, granularities, init)


def attach_op(op: nn.Module, granularities: Sequence[str], init: LevelInit) -> None:
    if "filter" in granularities:
        if isinstance(op, SepConv):
            op.mid_gate = FilterGate(op.pw1.out_channels, init.filter)
        if isinstance(op, ChannelOutput):
            op.out_gate = FilterGate(len(op.kept_out), init.filter)
    if "weight" in granularities:
        for conv in weight_convs_of(op).values():
            conv.weight_threshold = LearnedThreshold(init.weight)


# --- batched masks --------------------------------------------------------------------------------


class UnitMasks:
    """Computes every filter gate's and weight threshold's mask of a network in two batched ops
    (instead of one small op per unit) and lends them to the units for the duration of one step,
    so the forward pass and the size cost share them.
    """

    def __init__(self, scope: Sequence[nn.Module]) -> None:
        """``scope``: the modules that run this stage (units outside it get no gradient at all)."""
        modules = [m for part in scope for m in part.modules()]
        self.gates = [m for m in modules if isinstance(m, FilterGate)]
        self.convs = [m for m in modules if isinstance(m, MaskableConv2d) and m.weight_threshold is not None]

    @contextmanager
    def lent(self) -> Iterator[None]:
        try:
            if self.gates:
                betas = torch.cat([g.beta for g in self.gates])
                sizes = [g.beta.numel() for g in self.gates]
                ts = torch.cat([g.threshold.t.expand(n) for g, n in zip(self.gates, sizes)])
                scores = torch.sigmoid(betas)
                masks = binary_step(scores - ts)
                for g, sc, m in zip(self.gates, scores.split(sizes), masks.split(sizes)):
                    g.cached = (sc, m)
            if self.convs:
                sizes = [c.weight.numel() for c in self.convs]
                flat = torch.cat([c.weight.reshape(-1) for c in self.convs]).abs()
                ts = torch.cat([c.weight_threshold.t.expand(n) for c, n in zip(self.convs, sizes)])
                masks = binary_step(flat - ts)
                for c, m in zip(self.convs, masks.split(sizes)):
                    c.cached_mask = m.view_as(c.weight)
            yield
        finally:
            for g in self.gates:
                g.cached = None
            for c in self.convs:
                c.cached_mask = None


# --- size ---------------------------------------------------------------------------------------


def _conv_count(conv: MaskableConv2d | None, out_mask: Tensor | None = None, in_mask: Tensor | None = None) -> Tensor:
    """Surviving weights of ``conv`` given 0/1 masks over its output and input channels."""
    if conv is None:
        return torch.zeros(())
    mask = conv.learned_weight_mask()
    w = conv.weight
    if conv.groups > 1:  # depthwise: output channel o reads input channel o only
        per = mask.sum((1, 2, 3)) if mask is not None else w.new_full((w.shape[0],), float(w[0].numel()))
        return (per * out_mask).sum() if out_mask is not None else per.sum()
    per = mask.sum((2, 3)) if mask is not None else w.new_full(w.shape[:2], float(w.shape[2] * w.shape[3]))
    if out_mask is not None:
        per = per * out_mask[:, None]
    if in_mask is not None:
        per = per * in_mask[None, :]
    return per.sum()


def _any(mask: Tensor | None) -> Tensor:
    """1 if any unit of ``mask`` is on (differentiable through the masks' surrogate)."""
    if mask is None:
        return torch.ones(())
    total = mask.sum()  # exactly 0 or 1 forward; gradient 1 / (number of units on)
    return total / total.detach().clamp_min(1.0)


def _gate_mask(gate: FilterGate | None) -> Tensor | None:
    return None if gate is None else gate.mask()


def _bn(mask: Tensor | None, n: int) -> Tensor:
    return 2 * (mask.sum() if mask is not None else torch.tensor(float(n)))


def unit_count(module: nn.Module) -> tuple[Tensor, Tensor]:
    """(parameter count in the derived network, 1 if the unit still produces output)."""
    if isinstance(module, SepConv):
        f1, f2 = _gate_mask(module.mid_gate), _gate_mask(module.out_gate)
        count = (_conv_count(module.dw1) + _conv_count(module.pw1, f1) + _bn(f1, module.pw1.out_channels)
                 + _conv_count(module.dw2, f1) + _conv_count(module.pw2, f2, f1) + _bn(f2, module.pw2.out_channels))
        return count, _any(f1) * _any(f2)
    if isinstance(module, DilConv):
        f = _gate_mask(module.out_gate)
        return _conv_count(module.dw) + _conv_count(module.pw, f) + _bn(f, module.pw.out_channels), _any(f)
    if isinstance(module, FactorizedReduce):
        f = _gate_mask(module.out_gate)
        n1, n2 = module.half_sizes
        f1, f2 = (f[:n1], f[n1:]) if f is not None else (None, None)
        count = _conv_count(module.conv_1, f1) + _conv_count(module.conv_2, f2) + _bn(f, n1 + n2)
        return count, _any(f)
    if isinstance(module, ChannelOutput):  # ReLUConvBN
        f = _gate_mask(module.out_gate)
        return _conv_count(module.conv, f) + _bn(f, module.conv.out_channels), _any(f)
    return torch.zeros(()), torch.ones(())  # pools, identity: no parameters in the evaluation network


def fixed_count(net: SuperNetwork) -> int:
    """Stem and classifier of the evaluation network (never pruned)."""
    return sum(p.numel() for p in net.stem.parameters()) + sum(p.numel() for p in net.classifier.parameters())


def cell_count(net: SuperNetwork, ci: int, op_mask: Tensor) -> Tensor:
    """Derived parameter count of cell ``ci`` given its ``[edges, ops]`` op mask."""
    cell = net.cells[ci]
    pre = [unit_count(cell.preprocess0), unit_count(cell.preprocess1)]
    total = torch.zeros(())
    users: list[list[Tensor]] = [[], []]
    for e, edge in enumerate(cell.edges):
        src = net.topology.edges[e].source
        for o, op in enumerate(edge.ops):
            m = op_mask[e, o]
            if not m.requires_grad and float(m) == 0.0:
                continue
            count, live = unit_count(op)
            m = m * live * (pre[src][1] if src < 2 else 1.0)
            total = total + m * count
            if src < 2:
                users[src].append(m)
    for j in (0, 1):
        if users[j]:
            used = 1 - torch.prod(1 - torch.stack(users[j]))
            total = total + used * pre[j][0]
    return total


def size_count(net: SuperNetwork, op_masks: Sequence[Tensor], cells: Sequence[int] | None = None) -> Tensor:
    """Derived-network parameter count (fixed part plus the given cells)."""
    cells = range(len(net.cells)) if cells is None else cells
    total = torch.tensor(float(fixed_count(net)))
    for ci in cells:
        total = total + cell_count(net, ci, op_masks[ci])
    return total


# --- remaining ratios ---------------------------------------------------------------------------


def filter_units(net: SuperNetwork, alive: Tensor) -> Iterator[tuple[FilterGate, int]]:
    """(gate, original channel count) of every filter unit of the pre-processing and alive ops."""
    for cell in net.cells:
        for pre in (cell.preprocess0, cell.preprocess1):
            if pre.out_gate is not None:
                yield pre.out_gate, pre.channels
    for ci, e, o, op in iter_ops(net):
        if not bool(alive[ci, e, o]):
            continue
        for gate in gates_of(op):
            yield gate, int(getattr(gate, "original", gate.beta.numel()))


def remaining_ratios(
    net: SuperNetwork, op_mask: Tensor, alive: Tensor, granularities: Sequence[str]
) -> dict[str, float]:
    """Fraction of each level's units kept by its own mask (physically removed units count as 0)."""
    out: dict[str, float] = {}
    with torch.no_grad():
        out["op"] = float(op_mask.sum() / op_mask.numel()) if "op" in granularities else 1.0
        if "filter" in granularities:
            kept = total = 0.0
            for gate, original in filter_units(net, alive):
                kept += float(gate.mask().sum())
                total += original
            out["filter"] = kept / max(1.0, total)
        else:
            out["filter"] = 1.0
        if "weight" in granularities:
            kept = total = 0.0
            for ci, e, o, op in iter_ops(net):
                if not bool(alive[ci, e, o]):
                    continue
                for conv in weight_convs_of(op).values():
                    m = conv.learned_weight_mask()
                    kept += float(m.sum()) if m is not None else conv.weight.numel()
                    total += float(getattr(conv, "original_numel", conv.weight.numel()))
            out["weight"] = kept / max(1.0, total)
        else:
            out["weight"] = 1.0
    return out


def record_original_sizes(net: SuperNetwork) -> None:
    """Remember full-width unit sizes (plain attributes) so ratios are relative to the supernet."""
    for _, _, _, op in iter_ops(net):
        for gate in gates_of(op):
            gate.original = gate.beta.numel()
        for conv in weight_convs_of(op).values():
            conv.original_numel = conv.weight.numel()


# --- derivation ---------------------------------------------------------------------------------


def _on(gate: FilterGate | None, n: int) -> Tensor:
    if gate is None:
        return torch.arange(n)
    return torch.nonzero(gate.mask().detach() > 0).flatten()


def _best_one(gate: FilterGate | None, n: int) -> Tensor:
    if gate is None:
        return torch.arange(n)
    return gate.score().detach().argmax().reshape(1).cpu()


def derive_op(op: nn.Module, name: str, force: bool = False) -> tuple[dict | None, dict[str, Tensor], bool]:
    """(widths, weight masks by conv name, live) of one op as the derived network will build it.

    ``force`` keeps at least one channel in every unit (used when a node would lose every input).
    """
    del name
    masks: dict[str, Tensor] = {}

    def pick(gate: FilterGate | None, n: int) -> Tensor:
        on = _on(gate, n)
        return _best_one(gate, n) if force and len(on) == 0 else on

    def wmask(conv: MaskableConv2d) -> Tensor | None:
        m = conv.learned_weight_mask()
        return None if m is None else m.detach().cpu()

    if isinstance(op, SepConv):
        mid = pick(op.mid_gate, op.pw1.out_channels)
        out = pick(op.out_gate, op.pw2.out_channels)
        if len(mid) == 0 or len(out) == 0:
            return None, {}, False
        kept = op.kept_out
        widths = {"mid": len(mid), "out": [kept[i] for i in out.tolist()]}
        for key, m in (("dw1", wmask(op.dw1)), ("pw1", wmask(op.pw1)), ("dw2", wmask(op.dw2)), ("pw2", wmask(op.pw2))):
            if m is None:
                continue
            if key in ("pw1", "dw2"):
                m = m[mid]
            elif key == "pw2":
                m = m[out][:, mid]
            masks[key] = m
        return widths, masks, True
    if isinstance(op, DilConv):
        out = pick(op.out_gate, op.pw.out_channels)
        if len(out) == 0:
            return None, {}, False
        kept = op.kept_out
        for key, conv in (("dw", op.dw), ("pw", op.pw)):
            m = wmask(conv)
            if m is not None:
                masks[key] = m[out] if key == "pw" else m
        return {"out": [kept[i] for i in out.tolist()]}, masks, True
    if isinstance(op, ChannelOutput):  # FactorizedReduce skip or ReLUConvBN
        n = len(op.kept_out)
        out = pick(op.out_gate, n)
        if len(out) == 0:
            return None, {}, False
        kept = op.kept_out
        return {"out": [kept[i] for i in out.tolist()]}, {}, True
    return None, {}, True


def derive_cells(
    net: SuperNetwork,
    op_masks: Sequence[Tensor],
    alive: Tensor,
    scores: Tensor,
    record_widths: bool,
) -> tuple[list[CellArch], dict[str, Tensor]]:
    """Per-cell architectures and weight masks (keys ``cells.{i}.ops.{k}.{conv}``)."""
    cells: list[CellArch] = []
    all_masks: dict[str, Tensor] = {}
    topo = net.topology
    for ci, cell in enumerate(net.cells):
        pres = (cell.preprocess0, cell.preprocess1)
        pre_info = [derive_op(pre, "preprocess")[::2] for pre in pres]  # (widths, live)
        chosen: list[tuple[OpSpec, dict[str, Tensor]]] = []
        for node, sl in enumerate(topo.node_edges):
            node_ops = []
            for e in range(sl.start, sl.stop):
                src = topo.edges[e].source
                if src < 2 and not pre_info[src][1]:
                    continue
                for o, op in enumerate(cell.edges[e].ops):
                    if not (bool(alive[ci, e, o]) and float(op_masks[ci][e, o]) > 0):
                        continue
                    widths, masks, live = derive_op(op, net.primitives[o])
                    if live:
                        node_ops.append((OpSpec(net.primitives[o], src, node, widths if record_widths else None),
                                         masks))
            if not node_ops:  # keep the node: its best alive op, at >= 1 channel
                spec, masks = _fallback_op(net, ci, node, alive, scores, record_widths)
                if spec.input < 2 and not pre_info[spec.input][1]:
                    pre_info[spec.input] = (derive_op(pres[spec.input], "preprocess", force=True)[0], True)
                node_ops.append((spec, masks))
            chosen.extend(node_ops)
        ops_only, concat = prune_dead_ops([spec for spec, _ in chosen])
        kept_ids = {id(spec) for spec in ops_only}
        final = [(spec, masks) for spec, masks in chosen if id(spec) in kept_ids]
        for k, (_, masks) in enumerate(final):
            for conv_name, m in masks.items():
                all_masks[f"cells.{ci}.ops.{k}.{conv_name}"] = m
        used = [any(spec.input == j for spec in ops_only) for j in (0, 1)]
        pre = [pre_info[j][0] if used[j] and record_widths else None for j in (0, 1)]
        cells.append(CellArch([spec for spec, _ in final], concat, cell.reduction, pre))
    return cells, all_masks


def _fallback_op(net: SuperNetwork, ci: int, node: int, alive: Tensor, scores: Tensor,
                 record_widths: bool) -> tuple[OpSpec, dict[str, Tensor]]:
    topo = net.topology
    best: tuple[int, int] | None = None
    # earlier nodes always have an op (this fallback runs node by node), so any incoming edge works
    for e in range(topo.node_edges[node].start, topo.node_edges[node].stop):
        for o in range(len(net.primitives)):
            if bool(alive[ci, e, o]) and (best is None or scores[ci, e, o] > scores[ci, best[0], best[1]]):
                best = (e, o)
    if best is None:
        raise RuntimeError(f"cell {ci} node {node} has no alive op (pruning keeps one per node)")
    e, o = best
    widths, masks, _ = derive_op(net.cells[ci].edges[e].ops[o], net.primitives[o], force=True)
    return OpSpec(net.primitives[o], topo.edges[e].source, node, widths if record_widths else None), masks
