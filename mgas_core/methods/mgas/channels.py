"""Real filter removal and regrowth in the MGAS supernet, and the architecture it derives.

Both follow :mod:`mgas_core.space.channels`: a cell's states keep the channels some alive op writes;
an op reads only the channels its state has. *Removing* filters (after every stage and at every
final-phase mask epoch, as the official ``prune_kernel`` runs) drops the output channels whose
stored filter mask is 0, then every reader of a state that lost channels loses those input
columns — exact, since a removed channel was always zero. *Regrowing* an op may add channels to a
node (an identity or pool writes every channel of its input); the readers then get new input
columns with zero weights, so nothing they compute changes until training moves them.

:func:`derive_cells` applies the same rule to the stored masks without touching the supernet, so
the derived architecture is what the supernet would be after removal (and exactly the supernet
once removal ran): the network retrained from it has no weight that can only read zeros.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mgas_core.nn.maskable_conv import MaskableConv2d
from mgas_core.nn.ops import ChannelOutput, DilConv, FactorizedReduce, OpStyle, SepConv, build_op
from mgas_core.nn.step import FilterGate
from mgas_core.space.architecture import CellArch, OpSpec
from mgas_core.space.channels import CellChannels, OpChannels, keep_positions, plan_cell, positions_of
from mgas_core.supernet.fast import SearchCell, SuperNetwork

OpKey = tuple[int, int]


def _stored_positions(gate: FilterGate | None, n: int) -> Tensor:
    if gate is None or not gate.maskable:
        return torch.arange(n)
    return torch.nonzero(gate.stored.detach().cpu() > 0).flatten()


def _out_ids(op: nn.Module, pending: bool) -> tuple[int, ...] | None:
    if not isinstance(op, ChannelOutput):
        return None  # identity, pools: the channels they read
    kept = op.kept_out
    if not pending:
        return tuple(kept)
    return tuple(kept[i] for i in _stored_positions(op.out_gate, len(kept)).tolist())


def cell_plan(net: SuperNetwork, alive: Tensor, ci: int, pending: bool = False) -> tuple[CellChannels, list[OpKey]]:
    """The channel plan of cell ``ci`` over its alive ops, as the modules are now, or
    (``pending``) as they will be once the stored filter masks' zeros are removed."""
    cell: SearchCell = net.cells[ci]
    inputs = [_out_ids(pre, pending) for pre in (cell.preprocess0, cell.preprocess1)]
    ops, keys = [], []
    for e, edge in enumerate(cell.edges):
        source, node = net.topology.edges[e].source, net.topology.edges[e].node
        for o, op in enumerate(edge.ops):
            if bool(alive[ci, e, o]):
                ops.append(OpChannels(source, node, _out_ids(op, pending)))
                keys.append((e, o))
    return plan_cell(cell.channels, inputs, ops, net.topology.nodes), keys


def relayout(net: SuperNetwork, alive: Tensor, planned: Tensor, ci: int, old: CellChannels) -> None:
    """After cell ``ci``'s op outputs changed (``old`` was the plan its modules were laid out
    for), lay it out for its alive ops: every reader of a changed state gets its new input columns
    (a state that lost channels loses them everywhere), the new plan is installed, and
    ``planned[ci]`` (the ops the installed plan covers) becomes ``alive[ci]``."""
    new, keys = cell_plan(net, alive, ci)
    cell = net.cells[ci]
    for e, o in keys:
        src = net.topology.edges[e].source
        before, after = old.states[src], new.states[src]
        op = cell.edges[e].ops[o]
        if before != after and isinstance(op, ChannelOutput):
            source, target = keep_positions(before, after)
            op.remap_in(source, target, len(after))
    before, after = old.output_ids(), new.output_ids()
    if before != after:
        source, target = keep_positions(before, after)
        net.remap_cell_output(ci, source, target, len(after))
    cell.set_channels(new, keys)
    planned[ci] = alive[ci]


def remove_filters(net: SuperNetwork, alive: Tensor, planned: Tensor, cells: range) -> int:
    """Physically remove every filter whose stored mask is 0 in ``cells`` (and the channels only
    ops pruned since the last layout wrote); returns how many filters."""
    removed = 0
    with torch.no_grad():
        for ci in cells:
            old, _ = cell_plan(net, planned, ci)
            cell = net.cells[ci]
            units: list[tuple[nn.Module, str]] = [(cell.preprocess0, "out"), (cell.preprocess1, "out")]
            for e, o in cell_plan(net, alive, ci)[1]:
                op = cell.edges[e].ops[o]
                if isinstance(op, SepConv):
                    units.append((op, "mid"))
                if isinstance(op, ChannelOutput):
                    units.append((op, "out"))
            for module, unit in units:
                gate = module.mid_gate if unit == "mid" else module.out_gate
                n = gate.beta.numel() if gate is not None else 0
                keep = _stored_positions(gate, n)
                if gate is None or len(keep) == n:
                    continue
                (module.keep_mid if unit == "mid" else module.keep_out)(keep)
                removed += n - len(keep)
            relayout(net, alive, planned, ci, old)
    return removed


def reset_batch_norms(net: SuperNetwork, alive: Tensor, cells: range) -> int:
    """The official ``prune_kernel``'s side effect, reproduced on request (``search.mgas.bn_reset``):
    it rebuilds every alive op and pre-processing module of the cells it covers and copies only the
    conv and BN weights, so every BN's bias and running statistics restart (0; mean 0, variance 1).
    Returns how many BN layers were reset."""
    count = 0
    with torch.no_grad():
        for ci in cells:
            cell = net.cells[ci]
            modules: list[nn.Module] = [cell.preprocess0, cell.preprocess1]
            modules += [cell.edges[e].ops[o] for e, o in cell_plan(net, alive, ci)[1]]
            for bn in (m for module in modules for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
                if bn.bias is not None:
                    bn.bias.zero_()
                if bn.running_mean is not None:
                    bn.running_mean.zero_()
                    bn.running_var.fill_(1.0)
                count += 1
    return count


def install_plans(net: SuperNetwork, planned: Tensor) -> None:
    """Install every cell's plan over the ops it was laid out for (after loading a saved supernet)."""
    for ci, cell in enumerate(net.cells):
        plan, keys = cell_plan(net, planned, ci)
        cell.set_channels(plan, keys)


def regrow_op(net: SuperNetwork, alive: Tensor, planned: Tensor, ci: int, e: int, o: int, style: OpStyle,
              with_filter_units: bool) -> nn.Module:
    """Bring op (ci, e, o) back with fresh weights, reading its state's channels and (conv ops)
    writing its node's; marks it alive. Returns the new module."""
    from mgas_core.methods.mgas.units import attach_op_units

    old, _ = cell_plan(net, planned, ci)
    cell: SearchCell = net.cells[ci]
    edge = net.topology.edges[e]
    in_ids, node_ids = old.states[edge.source], old.states[edge.node + 2]
    name = net.primitives[o]
    widths: dict[str, object] = {}
    if name.startswith(("sep_conv", "dil_conv")) or (name == "skip_connect" and cell.edge_stride(e) == 2):
        widths["out"] = list(node_ids)
    if name.startswith("sep_conv"):
        widths["mid"] = len(in_ids)  # official: a regrown SepConv is (in, in, out) wide
    fresh = build_op(name, cell.channels, cell.edge_stride(e), style, widths, in_channels=len(in_ids))
    if with_filter_units:
        attach_op_units(fresh)
    reference = next(net.parameters())
    fresh = fresh.to(reference.device).train(net.training)
    cell.edges[e].ops[o] = fresh
    alive[ci, e, o] = True
    with torch.no_grad():
        relayout(net, alive, planned, ci, old)
    return fresh


# --- the derived architecture ---------------------------------------------------------------


def derive_cells(net: SuperNetwork, alive: Tensor, planned: Tensor,
                 weight_masks: bool) -> tuple[list[CellArch], dict[str, Tensor]]:
    """Per-cell architectures of the alive ops after removing the stored masks' zeros, and their
    stored weight masks (keys ``cells.{i}.ops.{k}.{conv}``, shaped as the derived network's).
    Widths are recorded where they differ from the full width."""
    cells: list[CellArch] = []
    masks: dict[str, Tensor] = {}
    for ci, cell in enumerate(net.cells):
        current, _ = cell_plan(net, planned, ci)
        pending, keys = cell_plan(net, alive, ci, pending=True)
        full = tuple(range(cell.channels))
        specs = []
        for k, (e, o) in enumerate(keys):
            edge = net.topology.edges[e]
            op = cell.edges[e].ops[o]
            widths: dict[str, object] = {}
            if isinstance(op, ChannelOutput) and pending.op_out[k] != full:
                widths["out"] = list(pending.op_out[k])
            mid = _stored_positions(op.mid_gate, op.pw1.out_channels) if isinstance(op, SepConv) else None
            if mid is not None and len(mid) != cell.channels:
                widths["mid"] = len(mid)
            specs.append(OpSpec(net.primitives[o], edge.source, edge.node, widths or None))
            if weight_masks:
                in_keep = positions_of(pending.states[edge.source], current.states[edge.source])
                for conv_name, mask in _sliced_masks(op, in_keep, mid).items():
                    masks[f"cells.{ci}.ops.{k}.{conv_name}"] = mask
        pre = [list(pending.states[j]) if pending.states[j] != full else None for j in (0, 1)]
        cells.append(CellArch(specs, list(range(2, 2 + net.topology.nodes)), cell.reduction,
                              [{"out": p} if p is not None else None for p in pre]))
    return cells, masks


def _sliced_masks(op: nn.Module, in_keep: Tensor | None, mid: Tensor | None) -> dict[str, Tensor]:
    """The op's stored weight masks restricted to the input, mid and output channels it keeps."""
    def rows(mask: Tensor, keep: Tensor | None) -> Tensor:
        return mask if keep is None else mask[keep]

    def cols(mask: Tensor, keep: Tensor | None) -> Tensor:
        return mask if keep is None else mask[:, keep]

    out: dict[str, Tensor] = {}
    if isinstance(op, SepConv):
        out_keep = _stored_positions(op.out_gate, op.pw2.out_channels)
        plan = {"dw1": (op.dw1, in_keep, None), "pw1": (op.pw1, mid, in_keep),
                "dw2": (op.dw2, mid, None), "pw2": (op.pw2, out_keep, mid)}
    elif isinstance(op, DilConv):
        out_keep = _stored_positions(op.out_gate, op.pw.out_channels)
        plan = {"dw": (op.dw, in_keep, None), "pw": (op.pw, out_keep, in_keep)}
    else:
        return out
    for name, (conv, row_keep, col_keep) in plan.items():
        if conv.weight_mask is not None:
            out[name] = cols(rows(conv.weight_mask, row_keep), col_keep).detach().cpu().clone()
    return out


# --- resuming: shape a freshly built supernet like a saved one ---------------------------------


def reshape_like_saved(net: SuperNetwork, saved: Mapping[str, Tensor], prefix: str) -> None:
    """Give every module of ``net`` the shapes of the saved state (removed filters, narrowed
    inputs, regrown ops, stored weight masks) so ``load_state_dict`` can fill it."""
    def get(name: str) -> Tensor | None:
        return saved.get(f"{prefix}{name}")

    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, ChannelOutput):
                _reshape_op(module, name, get)
        for name, module in net.named_modules():
            if isinstance(module, MaskableConv2d):
                mask = get(f"{name}.weight_mask")
                if mask is not None:
                    module.weight_mask = torch.ones_like(module.weight)
        for name, head in net.exit_heads.items():
            width = get(f"exit_heads.{name}.reduce.weight").shape[1]  # type: ignore[union-attr]
            if width != head.reduce.in_channels:
                head.remap_in(torch.arange(width), torch.arange(width), width)
        width = get("classifier.weight").shape[1]  # type: ignore[union-attr]
        if width != net.classifier.in_features:
            net.classifier = nn.Linear(width, net.classifier.out_features).to(net.classifier.weight.device)


def _reshape_op(op: ChannelOutput, name: str, get) -> None:
    first = "dw1" if isinstance(op, SepConv) else "dw" if isinstance(op, DilConv) else None
    if isinstance(op, FactorizedReduce):
        conv = next(n for n in ("conv_1", "conv_2") if get(f"{name}.{n}.weight") is not None)
        width = get(f"{name}.{conv}.weight").shape[1]
    elif first is not None:
        width = get(f"{name}.{first}.weight").shape[0]
    else:
        width = get(f"{name}.conv.weight").shape[1]
    if width != op.in_width:
        op.remap_in(torch.arange(width), torch.arange(width), width)
    if isinstance(op, SepConv):
        mid = get(f"{name}.pw1.weight").shape[0]
        if mid != op.pw1.out_channels:
            if mid > op.pw1.out_channels:
                raise ValueError(f"{name}: saved mid width {mid} exceeds the supernet's {op.pw1.out_channels}")
            op.keep_mid(torch.arange(mid))
    index = get(f"{name}.out_index")
    if index is not None:
        op.keep_out(index.clone().cpu())
