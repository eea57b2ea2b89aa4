"""MGAS mechanisms read against the official MG-DARTS code (``lxy12357/MG_DARTS``,
``cifar_search/model_search.py`` and ``train_search.py``), each pinned where ours used to differ
(docs/fidelity.md, "MGAS")."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.mgas_core.test_mgas import make, mgas_settings


def kept_ops(model, cell: int) -> list[tuple[int, str]]:
    """(edge, op) of the ops whose live mask is on in ``cell``."""
    masks = model.op_masks()
    return [(e, model.net.primitives[o]) for e, o in torch.nonzero(masks[cell]).tolist()]


def test_a_node_whose_ops_are_all_off_keeps_the_last_alive_op_in_the_official_order():
    """Official ``MixedOp.forward``: an op is kept when every other alive op of its node is off and
    it is the last alive one in (edge, PRIMITIVES) order — skip, sep3, sep5, dil3, dil5, avg, max:
    a parameter-free max pool of the node's last edge, then the avg pool once that one is dead."""
    model = make(mgas_settings())[0].model
    with torch.no_grad():
        model.t_op.fill_(2.0)  # sigmoid(alpha) <= 1 < 2: every op's step is off
    nodes = model.net.topology.node_edges
    last_edges = [sl.stop - 1 for sl in nodes]
    assert kept_ops(model, 0) == [(e, "max_pool_3x3") for e in last_edges]
    model.alive[0, last_edges[0], model.net.primitives.index("max_pool_3x3")] = False
    model.refresh_active()
    assert kept_ops(model, 0)[0] == (last_edges[0], "avg_pool_3x3")
    for name in ("avg_pool_3x3", "max_pool_3x3"):  # the node's last edge has no pool left: its dil_conv_5x5
        model.alive[0, last_edges[0], model.net.primitives.index(name)] = False
    model.refresh_active()
    assert kept_ops(model, 0)[0] == (last_edges[0], "dil_conv_5x5")
    model.alive[0, nodes[0]] = False  # every op of the node's edges dead but one of its first edge
    model.alive[0, nodes[0].start, model.net.primitives.index("skip_connect")] = True
    model.refresh_active()
    assert kept_ops(model, 0)[0] == (nodes[0].start, "skip_connect")


def test_the_final_phase_hands_the_lambda_controller_the_official_count(monkeypatch):
    """Official final loop (``prune_op(..., max=1)`` until ``current_flops < min_flops``): a masked
    op is already out of the official size, so the loop removes one op when the size without the
    masked ops is within the target, else every masked op; that count is ``pruning_epoch``. Ours
    used to hand over the ops it actually removed to reach the target."""
    method = make(mgas_settings(search__target_params=0.02))[0]
    model, primitives = method.model, method.model.net.primitives
    convs = [(0, e, primitives.index("sep_conv_3x3")) for e in range(3)]
    with torch.no_grad():
        for k in convs:
            model.t_op[k] = 2.0  # these three ops' live masks are off at the mask epoch
    alive = model.alive.clone()
    for k in convs:
        model.alive[k] = False
    without_all = method.derived_count()[1]
    model.alive.copy_(alive)
    method.target = without_all + 1  # within the target once all three are gone, not before
    seen = []
    monkeypatch.setattr(method.lam, "update", lambda count, *rest: seen.append(count))
    method._final_mask_epoch(epoch=0)
    assert sum(not bool(model.alive[k]) for k in convs) == 3  # ours removed all three to reach the target
    assert seen == [1]  # the official loop: the size without them was within already, so one removal
    method = make(mgas_settings(search__target_params=0.02))[0]
    with torch.no_grad():
        for k in convs:
            method.model.t_op[k] = 2.0
    method.target = without_all - 1  # not even without them: the official loop removes every one
    seen.clear()
    monkeypatch.setattr(method.lam, "update", lambda count, *rest: seen.append(count))
    method._final_mask_epoch(epoch=0)
    assert seen == [3]


def first_sep_conv(model):
    sep = model.net.primitives.index("sep_conv_3x3")
    return next(edge.ops[sep] for edge in model.net.cells[0].edges)


def test_the_stage_exit_is_measured_on_the_stored_masks_before_the_width_floor():
    """Official: ``current_flops`` reads the stored filter masks as the mask epoch left them; the
    half-width floor exists only in ``prune_kernel``, at the stage's end. A stage whose filters all
    switch off measures that size (ours used to measure the floored masks, so a stage had to prune
    more ops before it could exit); the floor then holds at filter removal."""
    from mgas_core.methods.mgas.units import apply_width_floor, stage_size

    method = make(mgas_settings(search__mgas__granularities=["filter"]))[0]
    model = method.model
    before = stage_size(model, range(method.upto))
    with torch.no_grad():
        model.t_filter.fill_(2.0)  # every op's filters off at this mask epoch
        model.t_pre.fill_(2.0)
    method._stage_mask_epoch(epoch=0)
    after = stage_size(model, range(method.upto))
    sep = first_sep_conv(model)
    assert float(sep.mid_gate.stored.sum()) == 0 and float(sep.out_gate.stored.sum()) == 0
    floored = copy.deepcopy(model)
    apply_width_floor(floored, range(method.upto), method.cfg.min_width_fraction)
    assert after < stage_size(floored, range(method.upto)) < before  # the exit sees the masks, not the floor
    floor = int(method.cfg.min_width_fraction * model.net.cells[0].channels)
    method._close_stage(epoch=0, stage=method.stage)
    sep = first_sep_conv(model)
    assert sep.mid_gate.stored.numel() == floor and float(sep.mid_gate.stored.sum()) == floor  # the floor held


def test_the_stage_size_charges_skips_as_the_official_current_flops():
    """``Network.current_flops``: the cell before each reduction is flagged as the reduction (its
    width doubles there), a skip on one of its input edges costs ``c^2`` (c: the doubled width),
    and every other skip costs 0 — the real stride-2 skips of the reduction cells too (ours used to
    charge those their two convs and nothing to the cell before)."""
    from mgas_core.methods.mgas.units import op_size, stage_size

    model = make(mgas_settings())[0].model  # 3 cells: reductions at 1 and 2
    net, skip = model.net, model.net.primitives.index("skip_connect")
    assert [c.reduction for c in net.cells] == [False, True, True]
    inputs = [e.index for e in net.topology.edges if e.source < 2]

    def convs(ci):
        return sum(op_size(op) for edge in net.cells[ci].edges for o, op in enumerate(edge.ops) if o != skip)

    assert stage_size(model, range(1)) == convs(0) + len(inputs) * net.cells[1].channels ** 2
    assert stage_size(model, range(1, 2)) == convs(1) + len(inputs) * net.cells[2].channels ** 2
    assert stage_size(model, range(2, 3)) == convs(2)  # its stride-2 skips are free; no reduction after it
    for e in inputs:
        model.alive[0, e, skip] = False  # a dead skip costs nothing
    assert stage_size(model, range(1)) == convs(0)


def test_without_target_params_the_target_is_the_official_min_flops():
    """``--min_flops 0.1`` of ``train_search.py``, in ``current_flops`` units: on the official
    8-cell, C=16 CIFAR-10 supernet (whose official size is 1.831168 M: 1.790208 M of SepConv/DilConv
    weights and 0.04096 M charged to skips) the default target is 0.1 M of that measure. Ours used
    to be 0.5 x the supernet's parameters, so the final phase pruned nothing."""
    from mgas_core.data import DatasetInfo
    from mgas_core.methods import create_method
    from mgas_core.methods.mgas.units import stage_size
    from mgas_core.methods.registry import build_settings

    settings = build_settings("paper", {"search.method": "mgas", "data.name": "cifar10"})
    assert (settings.search.layers, settings.search.channels, settings.search.target_params) == (8, 16, None)
    method = create_method(settings.search, DatasetInfo("cifar10", 10, 3, 32, "cifar"), torch.device("cpu"), 0)
    assert stage_size(method.model, range(8)) == 1_831_168
    assert method.target_kind == "size" and method.target == pytest.approx(100_000)
    assert method.within_target() is False


def test_a_search_without_a_target_ends_below_the_official_fraction_of_the_size():
    from tests.mgas_core.test_mgas import PRUNING, run

    settings = mgas_settings(search__mgas__final_epochs=12, search__mgas__default_target_size=0.6, **PRUNING)
    result = run(settings)
    method = result.method
    full = method.target / 0.6
    assert result.summary["target_kind"] == "size" and result.summary["target_params"] is None
    assert result.summary["target_reached"] is True
    assert method.measured() < 0.6 * full and result.summary["target_gap"] < 0


def test_bn_reset_restarts_bn_biases_and_statistics_at_filter_removal_as_the_official_rebuild():
    import torch.nn as nn

    for reset in (False, True):
        method = make(mgas_settings(search__mgas__bn_reset=reset))[0]
        bns = [m for m in method.net.cells[0].modules() if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            for bn in bns:
                bn.bias.fill_(0.5)
                bn.running_mean.fill_(0.25)
                bn.running_var.fill_(4.0)
        method._close_stage(epoch=0, stage=1)
        bns = [m for m in method.net.cells[0].modules() if isinstance(m, nn.BatchNorm2d)]
        restarted = [float(bn.bias.abs().sum() + bn.running_mean.abs().sum()) == 0 and bool((bn.running_var == 1).all())
                     for bn in bns]
        assert bns and all(restarted) == reset and any(restarted) == reset
