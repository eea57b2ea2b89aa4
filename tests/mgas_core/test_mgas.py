from __future__ import annotations

import pytest
import torch

from mgas_core.data import load_splits
from mgas_core.errors import UserInputError
from mgas_core.io import load_checkpoint, save_checkpoint
from mgas_core.methods import create_method
from mgas_core.methods.mgas_stages import stage_cuts
from mgas_core.methods.mgas_units import size_count
from mgas_core.metrics import count_params
from mgas_core.model import build_eval_network
from mgas_core.ops import SepConv
from mgas_core.space import network_cells
from mgas_core.train import run_search
from tests.conftest import tiny

GRANULARITY_SUBSETS = [["op"], ["filter"], ["weight"], ["op", "filter"], ["op", "weight"], ["filter", "weight"],
                       ["op", "filter", "weight"]]


def mgas_settings(**kw):
    base = dict(search__method="mgas", search__layers=4, search__epochs=4, search__mgas__stages=2,
                search__mgas__control__lambda0=0.5, search__mgas__threshold_lr=0.05,
                search__mgas__threshold_init_weight=0.05)
    base.update(kw)
    return tiny(**base)


def make(settings):
    splits = load_splits(settings.data)
    torch.manual_seed(settings.seed)
    return create_method(settings.search, splits.info, torch.device("cpu"), settings.seed), splits


def test_hard_size_count_equals_derived_network_count():
    method, _ = make(mgas_settings())
    with torch.no_grad():  # prune a few units at every level so the count is not trivial
        method.model.alpha[:, :, 2] = -5.0
        for cell in method.net.cells:
            cell.edges[0].ops[3].out_gate.beta[:2] = -5.0
            cell.preprocess1.out_gate.beta[0] = -5.0
            cell.edges[1].ops[4].dw1.weight[:, :, 0, 0] = 0.0
    arch = method.derive()
    net = build_eval_network(arch, method.info.num_classes, method.info.in_channels, auxiliary=False)
    exact = count_params(net)
    assert arch.masks and exact.nonzero < exact.dense
    assert int(method.estimated_size()) == exact.nonzero
    assert method.derived_count(arch) == (exact.dense, exact.nonzero)


def test_full_supernet_size_matches_unpruned_derivation():
    method, _ = make(mgas_settings(search__mgas__granularities=["op"]))
    dense, nonzero = method.derived_count()
    assert dense == nonzero == round(method.full_size)


def test_pruned_op_filter_and_weight_contribute_exactly_zero():
    method, splits = make(mgas_settings())
    x = splits.train.tensors[0][:4]
    model = method.model
    model.eval()
    ci, e, o = 0, 2, 3  # sep_conv_3x3 on an edge of cell 0
    op = method.net.cells[ci].edges[e].ops[o]
    assert isinstance(op, SepConv)
    h, _ = method.net.stem(x)
    s0 = method.net.cells[ci].preprocess0(h)
    with torch.no_grad():
        model.alpha[ci, e, o] = -10.0  # op level: sigmoid << threshold
    w = model.cell_weights()[ci, e, o]
    assert float(w.detach()) == 0.0
    out = op(s0, torch.relu(s0), w)
    assert torch.count_nonzero(out) == 0
    with torch.no_grad():  # filter level: channel 1 of the op output
        op.out_gate.beta[1] = -10.0
    out = op(s0, torch.relu(s0), torch.tensor(0.7))
    assert torch.count_nonzero(out[:, 1]) == 0 and torch.count_nonzero(out[:, 0]) > 0
    with torch.no_grad():  # weight level: every weight of pw2 below the threshold
        op.pw2.weight_threshold.t.fill_(10.0)
    assert torch.count_nonzero(op.pw2.effective_weight()) == 0


def test_thresholds_of_every_level_receive_gradient():
    method, splits = make(mgas_settings())
    x, y = splits.train.tensors[0][:16], splits.train.tensors[1][:16]
    method.train_step((x, y))
    assert method.model.op_threshold.t.grad.abs().sum() > 0
    op = method.net.cells[0].edges[0].ops[3]
    assert op.out_gate.threshold.t.grad is not None and op.out_gate.beta.grad.abs().sum() > 0
    assert op.pw1.weight_threshold.t.grad is not None and op.pw1.weight_threshold.t.grad != 0
    assert method.model.alpha.grad[0].abs().sum() > 0


def test_regrown_op_gets_fresh_weights_and_live_alpha():
    method, splits = make(mgas_settings())
    ci, e, o = 0, 1, 4
    old = method.net.cells[ci].edges[e].ops[o]
    old_weight = old.dw1.weight.detach().clone()
    with torch.no_grad():
        method.model.alive[ci, e, o] = False
        method.model.alpha[ci, e, o] = -8.0
        method.model.op_threshold.t[ci, 0, o] = 0.6
    method.regrow_op(ci, e, o)
    new = method.net.cells[ci].edges[e].ops[o]
    assert new is not old and not torch.equal(new.dw1.weight, old_weight)
    assert bool(method.model.alive[ci, e, o]) and o in method.model.active[ci][e]
    assert float(method.model.op_masks()[ci, e, o].detach()) == 1.0
    method._build_optimizers()
    x, y = splits.train.tensors[0][:16], splits.train.tensors[1][:16]
    method.train_step((x, y))
    assert method.model.alpha.grad[ci, e, o] != 0 and new.dw1.weight.grad is not None


def test_stage_cuts_balance_activation_memory():
    shapes = network_cells(16, 8, 4, 48)
    assert stage_cuts(shapes, 3, 32) == [1, 4, 8]
    assert stage_cuts(shapes, 1, 32) == [8]
    assert stage_cuts(shapes, 8, 32) == list(range(1, 9))
    for bad in (0, 9):
        with pytest.raises(UserInputError, match="stages must be between 1 and the number of cells"):
            stage_cuts(shapes, bad, 32)


def test_target_above_supernet_is_rejected():
    with pytest.raises(UserInputError, match="not below the supernet"):
        make(mgas_settings(search__target_params=100.0))


def _search(settings, stop_after=None, state=None):
    class Stop(Exception):
        pass

    captured = {}

    def on_epoch(record, state_fn):
        if stop_after is not None and record["epoch"] == stop_after:
            captured["state"] = state_fn()
            raise Stop

    splits = load_splits(settings.data)
    try:
        return run_search(settings, splits, torch.device("cpu"), state=state, on_epoch=on_epoch)
    except Stop:
        return captured["state"]


@pytest.mark.parametrize("granularities", GRANULARITY_SUBSETS, ids=lambda g: "+".join(g))
def test_every_granularity_subset_runs_and_derives(granularities):
    result = _search(mgas_settings(search__mgas__granularities=granularities, search__epochs=3,
                                   search__mgas__stages=1))
    arch = result.arch
    net = build_eval_network(arch, 4, 3, auxiliary=False)
    assert net(torch.randn(2, 3, 8, 8))[0].shape == (2, 4)
    ratios = result.summary["remaining_ratio"]
    assert set(ratios) == {"op", "filter", "weight"}
    for level in ("op", "filter", "weight"):
        if level not in granularities:
            assert ratios[level] == 1.0
    assert (arch.masks is not None) == ("weight" in granularities)
    assert all(f"remaining_ratio_{lv}" in result.history[-1] for lv in ("op", "filter", "weight"))


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_stage_counts_run_with_stage_events(stages):
    result = _search(mgas_settings(search__mgas__stages=stages, search__epochs=stages + 1,
                                   search__mgas__regrow_fraction=0.5))
    kinds = [e["type"] for e in result.events]
    assert kinds.count("stage") == stages
    assert result.summary["stage_cells"][-1] == 4 and len(result.summary["stage_cells"]) == stages
    assert result.method.stage == stages


def test_stage_one_never_runs_later_cells():
    method, splits = make(mgas_settings(search__mgas__stages=3))
    ran = []
    for i, cell in enumerate(method.net.cells):
        cell.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    x, y = splits.train.tensors[0][:16], splits.train.tensors[1][:16]
    method.train_step((x, y))
    assert method.upto < 4 and sorted(set(ran)) == list(range(method.upto))
    assert method.net.cells[3].edges[0].ops[3].dw1.weight.grad is None


def test_resume_mid_stage_is_bitwise_identical(tmp_path):
    settings = mgas_settings(search__epochs=7, search__mgas__stages=2, search__mgas__stage_epochs=2,
                             search__mgas__regrow_fraction=0.5)
    full = _search(settings)
    assert [e["type"] for e in full.events].count("stage") == 2
    state = _search(settings, stop_after=2)  # first epoch of stage 2: mid stage
    save_checkpoint(state, tmp_path / "ck.pt")
    resumed = _search(settings, state=load_checkpoint(tmp_path / "ck.pt"))
    a, b = full.method.model.state_dict(), resumed.method.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.arch.to_json() == resumed.arch.to_json()
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]


def test_larger_targets_give_larger_models():
    sizes = []
    for target in (0.012, 0.018, 0.024):
        s = mgas_settings(search__target_params=target, search__epochs=6, search__mgas__stages=1)
        result = _search(s)
        sizes.append(result.method.derived_count(result.arch)[1])
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_size_cost_is_differentiable_in_every_mask():
    method, _ = make(mgas_settings())
    total = size_count(method.net, method.model.op_masks())
    total.backward()
    op = method.net.cells[0].edges[0].ops[3]
    assert method.model.op_threshold.t.grad.abs().sum() > 0
    assert op.mid_gate.beta.grad.abs().sum() > 0 and op.pw1.weight_threshold.t.grad != 0
