"""MGAS as the official MG-DARTS code runs it: schedule, masks, regrowth, filter removal, target."""

from __future__ import annotations

import math

import pytest
import torch

from mgas_common.errors import UserInputError
from mgas_core.data import load_splits
from mgas_core.evaluation_network import build_eval_network
from mgas_core.files.checkpoints import load_checkpoint, save_checkpoint
from mgas_core.methods import create_method
from mgas_core.methods.mgas import Mgas
from mgas_core.methods.mgas.channels import remove_filters
from mgas_core.methods.mgas.schedule import MgasLambda, scaled_counts, stage_cuts
from mgas_core.metrics import count_params
from mgas_core.nn.ops import ChannelOutput, SepConv
from mgas_core.nn.step import FilterGate
from tests.conftest import search_until, tiny

GRANULARITY_SUBSETS = [["op"], ["filter"], ["weight"], ["op", "filter"], ["op", "weight"], ["filter", "weight"],
                       ["op", "filter", "weight"]]

# aggressive constants so that a few steps on 8x8 synthetic data prune at every level
PRUNING = dict(search__mgas__control__lambda0=0.05, search__mgas__control__stage_cap_ratio=0,
               search__mgas__control__final_cap_ratio=0, search__mgas__op_threshold_lr=2.0,
               search__mgas__filter_threshold_lr=2.0, search__mgas__weight_threshold_lr=0.2)


def mgas_settings(**kw):
    base = dict(search__method="mgas", search__layers=3, search__channels=4, search__mgas__stages=3,
                search__mgas__warmup_epochs=1, search__mgas__mask_interval=1, search__mgas__stage_epochs=2,
                search__mgas__final_epochs=2, search__mgas__w_lr=0.05)
    base.update(kw)
    return tiny(**base)


def make(settings):
    splits = load_splits(settings.data)
    torch.manual_seed(settings.seed)
    return create_method(settings.search, splits.info, torch.device("cpu"), settings.seed), splits


def run(settings, probe=None, monkeypatch=None, state=None, stop_after=None):
    """Run a search; ``probe(method, epoch, events)`` sees the method after every epoch end."""
    if probe is not None:
        original = Mgas.end_of_epoch

        def wrapped(self, epoch):
            events = original(self, epoch)
            probe(self, epoch, events)
            return events

        monkeypatch.setattr(Mgas, "end_of_epoch", wrapped)

    return search_until(settings, stop_after, state)


def fingerprint(method):
    gates = [m for m in method.net.modules() if isinstance(m, FilterGate) and m.maskable]
    convs = [c for ci, cell in enumerate(method.net.cells) for e, edge in enumerate(cell.edges)
             for o, op in enumerate(edge.ops) if bool(method.model.alive[ci, e, o]) and isinstance(op, SepConv)
             for c in op.weight_convs().values()]
    return (method.model.alive.clone(), sum(float(g.stored.sum()) for g in gates),
            sum(c.stored_nonzero() for c in convs))


# --- schedule -------------------------------------------------------------------------------------


def test_official_stage_cuts_put_reduction_cells_at_stage_starts():
    assert stage_cuts(8, 3) == [2, 5, 8]  # official: stage1_end = L//3 - 1, stage2_end = 2L//3 - 1
    assert stage_cuts(20, 3) == [6, 13, 20]  # reduction cells 6 and 13 open stages 2 and 3
    assert stage_cuts(8, 1) == [8] and stage_cuts(8, 4) == [2, 4, 6, 8]
    for bad in (0, 9):
        with pytest.raises(UserInputError, match="stages must be between 1 and the number of cells"):
            stage_cuts(8, bad)


def test_official_lambda_controller():
    lam = MgasLambda(lambda0=1e-5, c0=2.0, high=48, low=24, max_lambda=100.0)
    assert lam.value == 0.0
    assert lam.update(0, ce=1.0, cost=0.0, cap_ratio=1.0) == pytest.approx(4e-5)  # few pruned: increment x4
    assert lam.update(30, ce=1.0, cost=0.0, cap_ratio=1.0) == pytest.approx(4e-5)  # in between: unchanged
    assert lam.update(10, ce=1.0, cost=0.0, cap_ratio=1.0) == pytest.approx(4e-5 + 1.6e-4)
    assert lam.update(48, ce=1.0, cost=0.0, cap_ratio=1.0) == pytest.approx(1e-4)  # many pruned: halve, reset
    assert lam.delta == 1e-5
    before = lam.value
    assert lam.update(0, ce=0.1, cost=1.0, cap_ratio=1.0) == before  # CE below the size term: capped
    assert lam.update(0, ce=0.1, cost=1.0, cap_ratio=0.0) > before  # ratio 0: no cap
    assert scaled_counts(48, 24, 784, 784) == (48, 24)
    assert scaled_counts(48, 24, 784, 392) == (24, 12)


@pytest.mark.slow
@pytest.mark.parametrize("stages", [1, 2, 3])
def test_phase_table_lambda_zero_in_warmup_and_masks_fixed_between_mask_epochs(stages, monkeypatch):
    seen = []
    settings = mgas_settings(search__mgas__stages=stages, **PRUNING)
    result = run(settings, lambda m, e, ev: seen.append((e, fingerprint(m), [x["type"] for x in ev])), monkeypatch)
    kinds = [(p["stage"], p["kind"]) for p in result.summary["schedule"]]
    expected = []
    for s in range(1, stages + 1):
        expected += [(s, "warmup"), (s, "search")] + ([(s, "regrow")] if s >= 2 else [])
    expected += [("final", "warmup"), ("final", "search")]
    assert kinds == expected
    table = result.summary["schedule"]
    assert [p["first_epoch"] for p in table] == [sum(q["epochs"] for q in table[:i]) for i in range(len(table))]
    assert sum(p["epochs"] for p in table) == len(result.history)
    for rec in result.history:
        if "warmup" in rec["search_phase"]:
            assert rec["lambda"] == 0.0 and not rec["mask_epoch"]
    changed = 0
    for (_, prev, _), (epoch, now, events), rec in zip(seen, seen[1:], result.history[1:]):
        same = torch.equal(prev[0], now[0]) and prev[1:] == now[1:]
        structural = {"mask", "regrow", "filters_removed"} & set(events)
        if not structural:
            assert same, f"stored masks changed at epoch {epoch}, which is no mask epoch"
        assert rec["mask_epoch"] == ("mask" in events)
        changed += not same
    assert changed > 0  # masks did change at mask epochs, so the check above can fail


@pytest.mark.slow
def test_thresholds_start_at_zero_in_every_stage(monkeypatch):
    seen = []
    run(mgas_settings(**PRUNING), lambda m, e, ev: seen.append(
        ([x["type"] for x in ev], [t.detach().abs().sum().item() for t in (m.model.t_op, m.model.t_filter,
                                                                         m.model.t_weight, m.model.t_pre)])),
        monkeypatch)
    openings = [i for i, (events, _) in enumerate(seen) if "phase" in events]
    assert len(openings) == 3  # stages 2, 3 and the final phase
    for i in openings:
        assert seen[i][1] == [0.0, 0.0, 0.0, 0.0]
        assert sum(seen[i - 1][1]) > 0  # they had moved during the stage before


# --- regrowth -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_regrowth_brings_back_int_fraction_of_pruned_ops_and_only_dead_ones(monkeypatch):
    seen = []
    settings = mgas_settings(search__layers=4, search__mgas__stages=2, **PRUNING)
    run(settings, lambda m, e, ev: seen.append((m.model.alive.clone(), ev)), monkeypatch)
    regrows = [(i, x) for i, (_, events) in enumerate(seen) for x in events if x["type"] == "regrow"]
    assert regrows
    for i, event in regrows:
        assert len(event["ops"]) == int(0.2 * event["pruned_in_stage"])
        before, after = seen[i - 1][0], seen[i][0]
        names = Mgas.primitives
        for ci, e, name in event["ops"]:
            o = names.index(name)
            assert not bool(before[ci, e, o]) and bool(after[ci, e, o])
    assert any(event["ops"] for _, event in regrows)


# --- filter removal ---------------------------------------------------------------------------------


def _zero_input_channels(method, x):
    """Input channels of ops and pre-processing convs that are all-zero over the batch."""
    found = []

    def hook(module, args, _out):
        inp = args[0]
        found.append(int((inp.abs().sum(dim=(0, 2, 3)) == 0).sum()))

    handles = [m.register_forward_hook(hook) for m in method.net.modules() if isinstance(m, ChannelOutput)]
    with torch.no_grad():
        out = method.model(x)
    for h in handles:
        h.remove()
    return out, sum(found)


def test_filter_removal_is_exact_and_leaves_no_zero_input_column():
    method, splits = make(mgas_settings(search__layers=4, search__channels=8, search__nodes=3))
    g = torch.Generator().manual_seed(3)
    for gate in method.net.modules():
        if isinstance(gate, FilterGate) and gate.maskable:  # random stored masks, at least half kept
            n = gate.stored.numel()
            keep = torch.randperm(n, generator=g)[: n // 2 + int(torch.randint(0, n // 2 + 1, (1,), generator=g))]
            gate.stored.zero_()
            gate.stored[keep] = 1.0
    with torch.no_grad():
        method.model.alive[1, :, 4] = False  # some ops die too
        method.model.alive[0, 3, :2] = False
    method.model.refresh_active()
    method.model.eval()
    x = splits.train.tensors[0][:16]
    before, zeros_before = _zero_input_channels(method, x)
    arch_before = method.derive()
    removed = remove_filters(method.net, method.model.alive, method.model.planned, range(4))
    method.model.refresh_active()
    after, zeros_after = _zero_input_channels(method, x)
    assert removed > 0 and zeros_before > 0
    assert zeros_after == 0
    assert torch.allclose(before, after, atol=1e-5)
    arch = method.derive()
    assert arch.to_json() == arch_before.to_json()  # the derived architecture anticipated the removal
    net = build_eval_network(arch, method.info.num_classes, method.info.in_channels, auxiliary=False)
    counted = count_params(net)
    assert method.derived_count(arch) == (counted.dense, counted.nonzero)
    assert counted.dense == counted.nonzero  # no weight masks: what is dense is what runs


def test_an_op_that_lost_filters_in_a_node_that_kept_every_channel_is_placed_not_summed():
    """A node keeps all its channels when another op still writes each of them; the op that lost
    filters writes fewer and must be added at its channels (it used to be summed as it was and
    the search crashed: "size of tensor a (8) must match the size of tensor b (4)")."""
    method, splits = make(mgas_settings(search__layers=4, search__channels=8, search__nodes=3))
    cell = method.net.cells[0]
    sep = method.net.primitives.index("sep_conv_3x3")
    cell.edges[0].ops[sep].out_gate.stored[:4] = 0.0  # one op of node 0 loses half its filters
    method.model.eval()
    x = splits.train.tensors[0][:16]
    before = method.model(x).detach()
    remove_filters(method.net, method.model.alive, method.model.planned, range(1))
    method.model.refresh_active()
    assert cell.edges[0].ops[sep].pw2.out_channels == 4
    assert torch.allclose(before, method.model(x).detach(), atol=1e-5)


# --- target ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_search_stops_at_first_final_mask_epoch_within_target(monkeypatch):
    probe = []
    full = make(mgas_settings())[0].full_size
    settings = mgas_settings(search__target_params=round(0.6 * full) / 1e6, search__mgas__final_epochs=8, **PRUNING)
    result = run(settings, lambda m, e, ev: probe.append(
        (m.schedule.in_final and "mask" in [x["type"] for x in ev], m.derived_count()[1], m.finished)), monkeypatch)
    assert result.summary["target_reached"] is True
    final_masks = [(count, done) for is_mask, count, done in probe if is_mask]
    target = settings.search.target_params * 1e6
    assert final_masks[-1][0] <= target and final_masks[-1][1]
    assert all(count > target and not done for count, done in final_masks[:-1])
    assert result.summary["target_gap"] <= 0


@pytest.mark.slow
def test_unreachable_target_ends_with_target_reached_false_and_the_gap():
    method = make(mgas_settings())[0]
    fixed = sum(p.numel() for p in method.net.stem.parameters()) + sum(
        p.numel() for p in method.net.classifier.parameters())
    settings = mgas_settings(search__target_params=(fixed + 50) / 1e6)
    result = run(settings)
    summary = result.summary
    assert summary["target_reached"] is False
    nonzero = result.method.derived_count()[1]
    assert summary["target_gap"] == pytest.approx(nonzero / settings.search.target_params / 1e6 - 1)
    assert any(e["type"] == "target_not_reached" for e in result.events)
    assert len(result.history) == result.method.max_epochs  # every phase spent its budget, then it stopped
    planned, text = type(result.method).epoch_plan(settings.search)  # what `mgas run --dry-run` prints
    assert planned == len(result.history) and text.startswith(f"{planned} ep max: ")


def test_target_above_supernet_is_rejected():
    with pytest.raises(UserInputError, match="not below the supernet"):
        make(mgas_settings(search__target_params=100.0))


# --- units and granularities -------------------------------------------------------------------------


def test_every_level_threshold_and_score_gets_gradient_in_a_step():
    method, splits = make(mgas_settings())
    method.schedule.phase.kind = "search"
    method.lam.value = 0.1
    x, y = splits.train.tensors[0][:16], splits.train.tensors[1][:16]
    method.train_step((x, y))
    model = method.model
    for t in (model.t_op, model.t_filter, model.t_weight, model.t_pre, model.alpha):
        assert t.grad is not None and t.grad.abs().sum() > 0
    op = method.net.cells[0].edges[0].ops[3]
    assert op.out_gate.beta.grad.abs().sum() > 0 and op.mid_gate.beta.grad.abs().sum() > 0


def test_warmup_steps_train_weights_only():
    method, splits = make(mgas_settings())
    assert method.schedule.phase.kind == "warmup"
    op = method.net.cells[0].edges[0].ops[3]
    alpha, beta, w = (t.detach().clone() for t in (method.model.alpha, op.out_gate.beta, op.pw1.weight))
    method.train_step((splits.train.tensors[0][:16], splits.train.tensors[1][:16]))
    assert torch.equal(alpha, method.model.alpha) and torch.equal(beta, op.out_gate.beta)
    assert not torch.equal(w, op.pw1.weight)


@pytest.mark.slow
@pytest.mark.parametrize("granularities", GRANULARITY_SUBSETS, ids=lambda g: "+".join(g))
def test_every_granularity_subset_runs_and_derives(granularities):
    result = run(mgas_settings(search__mgas__granularities=granularities, search__mgas__stages=1, **PRUNING))
    arch = result.arch
    net = build_eval_network(arch, 4, 3, auxiliary=False)
    assert net(torch.randn(2, 3, 8, 8))[0].shape == (2, 4)
    ratios = result.summary["remaining_ratio"]
    for level in ("op", "filter", "weight"):
        if level not in granularities:
            assert ratios[level] == 1.0
    assert (arch.masks is not None) == ("weight" in granularities)
    counted = count_params(net)
    assert result.method.derived_count(arch) == (counted.dense, counted.nonzero)
    assert all(f"remaining_ratio_{lv}" in result.history[-1] for lv in ("op", "filter", "weight"))


@pytest.mark.slow
def test_resume_across_regrowth_and_filter_removal_is_bitwise_identical(tmp_path):
    settings = mgas_settings(search__layers=4, search__mgas__stages=2, **PRUNING)
    full = run(settings)
    assert {"regrow", "filters_removed"} <= {e["type"] for e in full.events}
    stop = next(i for i, h in enumerate(full.history) if "regrow" in h["search_phase"]) + 1
    state = run(settings, stop_after=stop)  # after regrowth and removal, mid way through the schedule
    save_checkpoint(state, tmp_path / "ck.pt")
    resumed = run(settings, state=load_checkpoint(tmp_path / "ck.pt"))
    a, b = full.method.model.state_dict(), resumed.method.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.arch.to_json() == resumed.arch.to_json()
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]


def test_the_stage_goal_follows_the_target_through_the_official_pair():
    from mgas_core.methods.mgas.settings import OFFICIAL_MIN_FLOPS, OFFICIAL_SUPERNET_SIZE, MgasSettings
    from mgas_core.methods.mgas.target import stage_goal

    official = OFFICIAL_MIN_FLOPS / OFFICIAL_SUPERNET_SIZE
    assert stage_goal(MgasSettings(), 0.2) == 0.3  # off by default: the official constant whatever the target
    assert stage_goal(MgasSettings(stage_goal=0.4), 0.2) == 0.4
    scaled = MgasSettings(stage_goal_from_target=True)
    assert stage_goal(scaled, official) == pytest.approx(0.3, abs=1e-12)  # the official target gives 0.3
    goals = [stage_goal(scaled, f) for f in (0.05, 0.21, 0.34, 0.51, 0.9)]
    assert goals == sorted(goals) and len(set(goals)) == 5 and 0 < goals[0] < 0.3 < goals[-1] < 1
    assert goals[1] == pytest.approx(0.52, abs=0.01) and goals[3] == pytest.approx(0.76, abs=0.01)


def test_a_search_whose_stage_goal_follows_the_target_ends_its_stages_at_that_goal(monkeypatch):
    full = make(mgas_settings())[0].full_size
    exits = []
    for fraction in (0.3, 0.6):
        settings = mgas_settings(search__target_params=round(fraction * full) / 1e6,
                                 search__mgas__stage_goal_from_target=True, **PRUNING)
        method = make(settings)[0]
        assert method.stage_goal == pytest.approx(fraction ** (math.log(0.3) / math.log(0.1 / 1.831168)), rel=1e-3)
        starts: dict[int, float] = {}
        result = run(settings, lambda m, e, ev, starts=starts: starts.setdefault(m.stage, m.stage_start_size),
                     monkeypatch)
        stage_exits = [e for e in result.events if e["type"] in ("stage_goal_met", "stage_goal_missed")]
        assert stage_exits and all(e["goal"] == pytest.approx(method.stage_goal * starts[e["stage"]])
                                   for e in stage_exits)
        assert all((e["size"] < e["goal"]) == (e["type"] == "stage_goal_met") for e in stage_exits)
        exits.append(method.stage_goal)
        monkeypatch.undo()
    assert exits[0] < exits[1]
