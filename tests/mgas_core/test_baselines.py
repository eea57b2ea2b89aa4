from __future__ import annotations

import pytest
import torch

from mgas_common.errors import UserInputError
from mgas_core.data import load_splits
from mgas_core.engine.search import run_search
from mgas_core.methods import create_method
from mgas_core.methods.gold_nas import LambdaController
from mgas_core.methods.msg_das import DropBlockIdentity, gumbel_topk
from tests.conftest import tiny


def make(settings):
    splits = load_splits(settings.data)
    torch.manual_seed(0)
    return create_method(settings.search, splits.info, torch.device("cpu"), 0), splits


# --- MSG-DAS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_gumbel_topk_gives_distinct_ops_and_gradient_to_every_alpha(k):
    alpha = torch.randn(3, 5, 8, requires_grad=True)
    order, soft = gumbel_topk(alpha, k, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert order.shape == (3, 5, k)
    assert all(len(set(row)) == k for cell in order.tolist() for row in cell)
    hard = torch.nn.functional.one_hot(order, 8).float()
    straight = hard + hard * (soft.unsqueeze(2) - soft.unsqueeze(2).detach())
    assert torch.all(straight.sum(-1) == 1.0)  # exactly one-hot in the forward pass
    (straight * torch.randn_like(straight)).sum().backward()
    assert torch.all(alpha.grad != 0)  # every alpha of every edge gets gradient


def test_msg_das_subgraphs_are_mutually_exclusive_and_alphas_get_gradient():
    method, splits = make(tiny(search__method="msg_das", search__msg_das__subgraphs=3))
    subgraphs = method.sample_subgraphs()
    for ci in range(3):
        for e in range(method.model.net.topology.num_edges):
            ops = [active[ci][e][0] for _, active in subgraphs]
            assert len(set(ops)) == 3
    x, y = splits.train.tensors[0][:8], splits.train.tensors[1][:8]
    loss, _ = method.subgraph_loss(x, y)
    loss.backward()
    for a in method.model.arch_parameters():
        assert a.grad is not None and torch.count_nonzero(a.grad) > 0


def test_single_subgraph_runs_exactly_one_op_per_edge(monkeypatch):
    from mgas_core.nn.ops import Pool
    from mgas_core.supernet.fast import MixedEdge

    method, splits = make(tiny(search__method="msg_das", search__msg_das__subgraphs=1))
    calls = []
    for cell in method.model.net.cells:
        for edge in cell.edges:
            for op in edge.ops:
                op.register_forward_hook(lambda m, a, o, edge=edge: calls.append(id(edge)))
    original_normalize, original_edge = Pool.normalize, MixedEdge.forward

    def counting_normalize(self, pooled, scale=None):
        calls.append(id(self._edge_id))
        return original_normalize(self, pooled, scale)

    monkeypatch.setattr(Pool, "normalize", counting_normalize)
    for cell in method.model.net.cells:
        for edge in cell.edges:
            for op in edge.ops:
                if isinstance(op, Pool):
                    op._edge_id = edge
    lengths = []
    monkeypatch.setattr(MixedEdge, "forward", lambda self, state, w, active: (
        lengths.append(len(active)), original_edge(self, state, w, active))[1])
    x, y = splits.train.tensors[0][:8], splits.train.tensors[1][:8]
    method.train_step((x, y))
    edges = 3 * method.model.net.topology.num_edges
    assert lengths == [1] * edges  # one sub-graph, one op per edge
    assert len(calls) == edges and len(set(calls)) == edges  # exactly one op module ran on every edge


def test_dropblock_identity_rate_in_training_and_identity_in_eval():
    block = DropBlockIdentity(block_size=3)
    block.rate = 0.2
    torch.manual_seed(0)
    x = torch.ones(16, 8, 32, 32)
    out = block(x)
    dropped = float((out == 0).float().mean())
    assert 0.15 < dropped < 0.25
    kept = out[out != 0]
    assert torch.allclose(kept, kept[0].expand_as(kept))  # survivors rescaled uniformly
    block.eval()
    assert torch.equal(block(x), x)
    block.train()
    assert block(torch.ones(2, 2, 2, 2)).shape == (2, 2, 2, 2)  # tiny maps: block shrinks to fit


def test_dropblock_rate_decays_over_epochs():
    method, _ = make(tiny(search__method="msg_das", search__epochs=4, search__msg_das__dropblock_rate=0.2))
    rates, taus = [], []
    for epoch in range(4):
        method.begin_epoch(epoch)
        rates.append(method.dropblocks[0].rate)
        taus.append(method.tau)
    assert rates == sorted(rates, reverse=True) and rates[0] == 0.2 and rates[-1] > 0
    assert taus[0] == 10.0 and abs(taus[-1] - 0.1) < 1e-9


@pytest.mark.parametrize("k", [0, 9])
def test_bad_subgraph_count(k):
    settings = tiny(search__method="msg_das")
    if k == 0:
        with pytest.raises(ValueError, match="subgraphs"):
            tiny(search__method="msg_das", search__msg_das__subgraphs=k)
        return
    settings.search.msg_das.subgraphs = k
    with pytest.raises(UserInputError, match="between 1 and the number of ops"):
        make(settings)


# --- GOLD-NAS --------------------------------------------------------------------------------------


def test_lambda_controller_follows_the_rule():
    ctl = LambdaController(lambda0=1.0, c0=2.0)
    assert ctl.value == 0.0  # the reference starts without resource pressure (flops_lambda = 0)
    trace = []
    for pruned_enough in [False, False, True, False, True, True, False]:
        trace.append(ctl.update(pruned_enough))
    # not enough: delta *= 2, lambda += delta; enough: lambda /= 2, delta = lambda0
    assert trace == [2.0, 6.0, 3.0, 5.0, 2.5, 1.25, 3.25]


def test_gold_nas_prunes_an_op_on_the_last_edge_of_a_node():
    method, _ = make(tiny(search__method="gold_nas"))
    topo = method.model.net.topology
    last_edge = topo.node_edges[1].stop - 1  # edge from the previous node into the last node
    with torch.no_grad():
        method.model.alpha.fill_(2.0)
        method.model.alpha[0, last_edge, 3] = -9.0
    assert method.prune_pass() >= 1
    assert not bool(method.model.alive[0, last_edge, 3])
    arch = method.derive()
    assert all(not (o.input == topo.edges[last_edge].source and o.node == 1 and o.op == "sep_conv_3x3")
               for o in arch.cells[0].ops)


def test_gold_nas_cost_normalises_over_every_edge_of_the_node():
    method, _ = make(tiny(search__method="gold_nas"))
    norm = method.normalised_weights()
    for sl in method.model.net.topology.node_edges:
        assert torch.allclose(norm[:, sl].sum(dim=(1, 2)), torch.ones(3))
    cost = method.cost()
    cost.backward()
    assert torch.count_nonzero(method.model.alpha.grad) == method.model.alpha.numel()


def test_gold_nas_node_keeps_one_op():
    method, _ = make(tiny(search__method="gold_nas"))
    with torch.no_grad():
        method.model.alpha.fill_(-20.0)
        method.model.alpha[:, :, 0] = 20.0
    for _ in range(50):
        if method.prune_pass() == 0:
            break
    for sl in method.model.net.topology.node_edges:
        assert torch.all(method.model.alive[:, sl].sum(dim=(1, 2)) >= 1)


@pytest.mark.slow
def test_gold_nas_snapshots_strictly_decrease():
    settings = tiny(search__method="gold_nas", search__epochs=30, search__gold_nas__control__lambda0=0.1,
                    search__gold_nas__n0=4, search__gold_nas__stable_rounds=0)
    result = run_search(settings, load_splits(settings.data), torch.device("cpu"))
    snaps = result.summary["snapshots"]
    sizes = [s["params"] for s in snaps]
    assert len(snaps) >= 2 and sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert snaps[-1]["final"] and all(s["arch"].cells for s in snaps)


@pytest.mark.parametrize("stable_rounds,script,expected", [
    # the reference: a plateau is more than 3 epochs in a row without pruning (epochs 1-4 here)
    (3, [3, 0, 0, 0, 0, 2, 0, 0, 1, 0], [5]),
    (3, [3, 0, 0, 2, 0, 4, 1, 0, 0, 0], []),
    (1, [3, 0, 0, 2, 0, 4, 1, 0, 0, 0], [3]),
    (0, [3, 0, 0, 2, 0, 4, 1, 0, 0, 0], [3, 5]),
])
def test_gold_nas_snapshots_when_pruning_resumes_after_a_plateau(monkeypatch, stable_rounds, script, expected):
    method, _ = make(tiny(search__method="gold_nas", search__epochs=10, search__layers=3,
                          search__gold_nas__stable_rounds=stable_rounds))
    per_epoch = iter(script)  # ops pruned per epoch (one pass each)
    ops = [(ci, e, o) for ci in range(3) for e in range(5) for o in range(7)]

    def scripted_pass():
        n = next(per_epoch, 0)
        for _ in range(n):
            ci, e, o = ops.pop()
            method.model.alive[ci, e, o] = False
        return n

    monkeypatch.setattr(method, "prune_pass", scripted_pass)
    monkeypatch.setattr(method.cfg, "n0", 1)
    snapshots = []
    for epoch in range(10):
        method.begin_epoch(epoch)
        events = method.end_of_epoch(epoch)
        snapshots += [(e["epoch"], e["params"], method.derived_count()[0]) for e in events if e["type"] == "snapshot"]
    assert [epoch for epoch, _, _ in snapshots if epoch < 9] == expected
    # the architecture the search ends on is the final snapshot (a new one unless it is no smaller)
    assert method.snapshots[-1]["final"] and method.snapshots[-1]["params"] == method.derived_count()[0]
    # a snapshot is the architecture after that epoch's pruning, as the reference logs it
    assert all(params == after_pruning for _, params, after_pruning in snapshots)


def test_gold_nas_trains_its_weights_at_a_constant_learning_rate():
    method, _ = make(tiny(search__method="gold_nas", search__epochs=10))
    rates = []
    for epoch in range(10):
        method.begin_epoch(epoch)
        rates.append(method.w_opt.param_groups[0]["lr"])
    assert rates == [method.cfg.w_lr] * 10


@pytest.mark.slow
def test_gold_nas_stops_at_the_floor():
    settings = tiny(search__method="gold_nas", search__epochs=30, search__target_params=0.004,
                    search__gold_nas__control__lambda0=0.1, search__gold_nas__n0=8)
    result = run_search(settings, load_splits(settings.data), torch.device("cpu"))
    assert any(e["type"] == "floor_reached" for e in result.events)
    assert result.summary["snapshots"][-1]["params"] <= 4000
    assert len(result.history) < 30
    assert result.summary["target_reached"] is True and result.summary["target_gap"] <= 0


def test_gold_nas_that_cannot_reach_its_floor_in_its_budget_says_so():
    settings = tiny(search__method="gold_nas", search__epochs=2, search__target_params=0.0001)
    result = run_search(settings, load_splits(settings.data), torch.device("cpu"))
    final = result.summary["snapshots"][-1]["params"]
    assert result.summary["target_reached"] is False
    assert result.summary["target_gap"] == pytest.approx(final / 100 - 1)
    assert [e["type"] for e in result.events].count("floor_missed") == 1 and len(result.history) == 2


def test_gold_nas_yields_its_snapshots_for_retraining_evenly_spaced_with_the_final_last():
    method, _ = make(tiny(search__method="gold_nas"))
    method.snapshots = [{"index": i, "epoch": i, "params": 100 - i, "nonzero_params": 100 - i,
                         "final": i == 5, "arch": method.derive().to_json()} for i in range(6)]
    every = method.architectures_to_retrain()
    assert [c.snapshot_index for c in every] == [0, 1, 2, 3, 4, 5] and [c.final for c in every] == [False] * 5 + [True]
    method.cfg.retrain_snapshots = 3
    assert [c.snapshot_index for c in method.architectures_to_retrain()] == [0, 2, 5]
    method.cfg.retrain_snapshots = 1
    assert [(c.snapshot_index, c.final) for c in method.architectures_to_retrain()] == [(5, True)]
