"""Latency measurement, the sampled space, its encoding, the lookup table and the predictors
(``mgas_core/latency``), at the smallest shapes."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from mgas_core.data import DatasetInfo
from mgas_core.evaluation_network import build_eval_network
from mgas_core.latency.build import TimingPlan, build_predictors
from mgas_core.latency.encoding import OP_FEATURES, EncodingSpace, encode
from mgas_core.latency.lookup import LookupTable
from mgas_core.latency.measure import LatencyConditions, fixed_threads, measure_latency
from mgas_core.latency.predictor import LatencyPredictor, fit_predictor, relative_errors
from mgas_core.latency.sampling import KINDS, WIDTH_LEVELS, SampleShape, cell_widths, sample_architectures
from mgas_core.latency.store import (
    PREDICTOR_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    TABLE_FILE,
    load_predictor,
    load_samples,
)
from mgas_core.space.architecture import Architecture, architecture_from_json
from mgas_core.space.topology import NO_NONE_PRIMITIVES, CellTopology

INFO = DatasetInfo("synthetic", 4, 3, 8, "cifar")
SHAPE = SampleShape(nodes=2, search_channels=4, search_layers=3, retrain_channels=6, retrain_layers=3,
                    primitives=NO_NONE_PRIMITIVES)
CPU = torch.device("cpu")


def _conditions(batch: int = 1) -> LatencyConditions:
    return LatencyConditions.current(CPU, 1, batch, INFO.input_shape)


def test_a_measurement_is_a_median_under_fixed_threads_and_leaves_the_model_as_it_was():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).train()
    before = torch.get_num_threads()
    m = measure_latency(net, (3, 16, 16), batch=2, device=CPU, threads=1, warmup=1, runs=7)
    assert torch.get_num_threads() == before and net.training  # both restored
    assert 0 < m.p10_ms <= m.median_ms <= m.p90_ms and m.runs == 7 and m.warmup == 1
    c = m.conditions
    assert (c.device, c.threads, c.batch, c.input_shape, c.torch_version) == ("cpu", 1, 2, (3, 16, 16),
                                                                             torch.__version__)
    assert c.device_name and m.row_fields()["latency_batch"] == 2
    with fixed_threads(1):
        assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="batch"):
        measure_latency(net, (3, 16, 16), batch=0, device=CPU, threads=1)


def test_conditions_say_in_one_line_which_one_differs():
    a = _conditions()
    assert a.mismatch(a) is None and LatencyConditions.from_dict(json.loads(json.dumps(a.as_dict()))) == a
    other = LatencyConditions(a.device, a.device_name, "0.1.0", a.threads, a.batch, a.input_shape)
    assert a.mismatch(other) == f"torch_version is {a.torch_version!r} here, '0.1.0' where it was measured"
    shape = LatencyConditions(a.device, a.device_name, a.torch_version, a.threads, a.batch, (3, 32, 32))
    assert "input_shape is 3x8x8 here, 3x32x32" in (a.mismatch(shape) or "")


def test_samples_are_reproducible_of_every_kind_and_build_and_run():
    archs = sample_architectures(9, SHAPE, seed=3)
    again = sample_architectures(9, SHAPE, seed=3)
    assert [a.to_json() for a in archs] == [a.to_json() for a in again]
    assert [a.meta["sample_kind"] for a in archs] == list(KINDS) * 3
    assert [a.to_json() for a in sample_architectures(9, SHAPE, seed=4)] != [a.to_json() for a in archs]
    for arch in archs:
        kind = arch.meta["sample_kind"]
        channels, layers = SHAPE.shape_of(kind)
        arch = architecture_from_json(json.loads(json.dumps(arch.to_json())))  # the file format takes it
        net = build_eval_network(arch, INFO.num_classes, 3, channels, layers, auxiliary=False)
        logits, _ = net.eval()(torch.randn(1, 3, 8, 8))
        assert logits.shape == (1, INFO.num_classes)
        for cell in arch.cells_for(layers):
            assert {o.node for o in cell.ops} == set(range(SHAPE.nodes))  # every node keeps an op
            if kind == "genotype":
                assert all(len({o.input for o in cell.ops if o.node == n}) == 2 for n in range(SHAPE.nodes))
        if kind == "widths":
            for cell, width in zip(arch.cells or [], cell_widths(channels, layers)):
                fractions = {len(o.widths["out"]) / width for o in cell.ops if o.widths}
                assert fractions <= {max(1, round(level * width)) / width for level in WIDTH_LEVELS}
        else:
            assert not any(o.widths for cell in arch.cells_for(layers) for o in cell.ops)


def test_one_encoding_for_every_kind_with_presence_and_kept_fractions():
    space = EncodingSpace(3, SHAPE.nodes, NO_NONE_PRIMITIVES)
    archs = sample_architectures(6, SHAPE, seed=0)
    edges, ops = CellTopology(SHAPE.nodes).num_edges, len(NO_NONE_PRIMITIVES)
    for arch in archs:
        channels, layers = SHAPE.shape_of(arch.meta["sample_kind"])
        x = encode(arch, space, channels, layers)
        assert x.shape == (space.size,)
        op_part = x[: space.size - 2].view(space.layers, -1)[:, : edges * ops * OP_FEATURES].reshape(
            space.layers, edges, ops, OP_FEATURES)
        assert int(op_part[..., 0].sum()) == sum(len(c.ops) for c in arch.cells_for(layers))
        assert float(x[-1]) == layers and float(x[-2]) == pytest.approx(torch.log2(torch.tensor(channels)).item())
        widths = op_part[..., 1][op_part[..., 0] > 0]
        assert bool(((widths > 0) & (widths <= 1)).all())
        if arch.meta["sample_kind"] != "widths":
            assert bool((widths == 1).all())
    genotype = archs[0]
    per_cell = Architecture("same", nodes=genotype.nodes, cells=genotype.cells_for(3), channels=6, layers=3)
    assert torch.equal(encode(genotype, space, 6, 3), encode(per_cell, space, 6, 3))
    with pytest.raises(ValueError, match="at most 3"):
        encode(genotype, space, 6, 4)
    small = EncodingSpace(3, SHAPE.nodes, ("skip_connect",))
    with pytest.raises(ValueError, match="not among the predictor's skip_connect"):
        encode(genotype, small, 6, 3)


def test_the_lookup_table_times_each_part_once_and_sums_them():
    table = LookupTable(_conditions(), INFO.num_classes, INFO.variant, warmup=0, runs=2)
    arch = sample_architectures(3, SHAPE, seed=1)[2]  # widths
    parts = list(table.parts(arch, 4, 3, CPU))
    keys = [p.key for p in parts]
    assert keys[0][0] == "stem" and keys[-1][0] == "classifier"
    n_ops = sum(len(c.ops) for c in arch.cells or [])
    assert sum(k[0] == "op" for k in keys) == n_ops
    ops = [(p.cell, p.op) for p in parts if p.op is not None]
    assert ops == [(i, k) for i, cell in enumerate(arch.cells or []) for k in range(len(cell.ops))]
    assert table.timed == len(set(keys)) and all(p.ms > 0 for p in parts)
    timed = table.timed
    assert table.predict(arch, 4, 3, CPU) == pytest.approx(sum(p.ms for p in parts))
    assert table.timed == timed  # every part was in the table already
    again = LookupTable.from_dict(json.loads(json.dumps(table.as_dict())))
    assert again.predict(arch, 4, 3, CPU) == pytest.approx(sum(p.ms for p in parts)) and again.timed == 0


def test_a_fitted_predictor_learns_a_known_cost_and_survives_saving(tmp_path):
    space = EncodingSpace(3, SHAPE.nodes, NO_NONE_PRIMITIVES)
    rng = random.Random(0)
    archs = sample_architectures(120, SHAPE, seed=5)
    enc = torch.stack([encode(a, space, *SHAPE.shape_of(a.meta["sample_kind"])) for a in archs])
    weights = torch.tensor([rng.uniform(0.1, 1.0) for _ in range(space.size)])
    latency = 1.0 + enc @ weights  # a known additive cost of every feature
    table = latency * 0.8  # a table that misses a fifth
    for kind in ("mlp", "hybrid"):
        p = fit_predictor(kind, space, _conditions(), enc[:100], latency[:100], table[:100], seed=0, epochs=600)
        with torch.no_grad():
            err = relative_errors(p.predict_ms(enc[100:], table[100:]), latency[100:])
        assert float(err.median()) < 0.1, kind
        torch.save(p.state(), tmp_path / f"{kind}.pt")
        loaded = LatencyPredictor.from_state(torch.load(tmp_path / f"{kind}.pt", weights_only=True))
        with torch.no_grad():
            assert torch.allclose(loaded.predict_ms(enc[100:], table[100:]), p.predict_ms(enc[100:], table[100:]))
    encodings = enc[:2].clone().requires_grad_(True)  # differentiable in the encoding
    p.predict_ms(encodings, table[:2]).sum().backward()
    assert encodings.grad is not None and bool(encodings.grad.abs().sum() > 0)


def test_a_build_writes_its_folder_whole_with_the_errors_of_every_predictor(tmp_path):
    plan = TimingPlan(INFO, "cpu", threads=1, batch=1, warmup=0, runs=3)
    out = tmp_path / "cpu"
    report = build_predictors(SHAPE, plan, count=30, seed=0, out=out)
    assert {p.name for p in out.iterdir()} == {PREDICTOR_FILE, SUMMARY_FILE, TABLE_FILE, SAMPLES_FILE}
    assert json.loads((out / SUMMARY_FILE).read_text()) == report
    for key in ("median_rel_error", "p90_rel_error", "lut_median_rel_error", "lut_p90_rel_error",
                "hybrid_median_rel_error", "samples", "seconds", "device", "device_name", "torch_version",
                "threads", "batch", "input_shape"):
        assert key in report, key
    assert report["samples"] == 30 and report["held_out"] == 6 and report["device"] == "cpu"
    assert 0 <= report["median_rel_error"] <= report["p90_rel_error"]
    samples = load_samples(out)
    assert len(samples) == 30 and all(s.latency_ms > 0 and s.table_ms > 0 for s in samples)
    states = torch.load(out / PREDICTOR_FILE, weights_only=True)
    assert set(states) == {"mlp", "hybrid"}
    assert LatencyPredictor.from_state(states["mlp"]).conditions == _conditions()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_predictor_is_refused_in_one_line_where_it_does_not_hold(tmp_path):
    from mgas_common.errors import UserInputError

    plan = TimingPlan(INFO, "cpu", threads=1, batch=1, warmup=0, runs=2)
    out = tmp_path / "cpu"
    build_predictors(SHAPE, plan, count=12, seed=0, out=out)
    here = _conditions()
    assert load_predictor(out, here).conditions == here
    assert load_predictor(out, here, kind="hybrid").kind == "hybrid"
    cases = {
        "torch_version": LatencyConditions(here.device, here.device_name, "2.0.0", 1, 1, here.input_shape),
        "input_shape": LatencyConditions(here.device, here.device_name, here.torch_version, 1, 1, (3, 32, 32)),
        "batch": LatencyConditions(here.device, here.device_name, here.torch_version, 1, 8, here.input_shape),
        "device": LatencyConditions("cuda", "NVIDIA H100", here.torch_version, 1, 1, here.input_shape),
    }
    for field_name, elsewhere in cases.items():
        with pytest.raises(UserInputError) as err:
            load_predictor(out, elsewhere)
        assert "\n" not in str(err.value) and f"{field_name} is " in str(err.value)
    with pytest.raises(UserInputError, match="not a latency predictor folder"):
        load_predictor(tmp_path / "nothing", here)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / PREDICTOR_FILE).write_bytes(b"not a torch file")
    with pytest.raises(UserInputError, match="cannot be read as a latency predictor"):
        load_predictor(tmp_path / "bad", here)
    with pytest.raises(UserInputError, match="kind must be one of mlp, hybrid"):
        load_predictor(out, here, kind="lut")


def test_a_retrained_network_carries_its_measured_latency(tmp_path):
    from mgas_core.data import load_splits
    from mgas_core.engine.retrain import run_retrain
    from mgas_core.space.builtin_architectures import resolve_architecture
    from tests.conftest import tiny

    settings = tiny(retrain__epochs=1, retrain__latency_runs=4, retrain__latency_batch=2)
    splits = load_splits(settings.data)
    result = run_retrain(resolve_architecture("darts_v2"), settings, splits, CPU)
    m = result.latency
    assert m is not None and m.runs == 4 and m.median_ms > 0
    assert (m.conditions.batch, m.conditions.threads, m.conditions.input_shape) == (
        2, torch.get_num_threads(), splits.info.input_shape)
    row = m.row_fields()
    assert set(row) == {"latency_ms", "latency_device", "latency_batch", "latency_threads"}
    assert row["latency_device"].startswith("cpu: ")
    off = run_retrain(resolve_architecture("darts_v2"), tiny(retrain__epochs=1, retrain__latency_runs=0), splits, CPU)
    assert off.latency is None


def test_mgas_latency_measure_prints_the_latency_and_what_it_holds_for(capsys):
    from orchestrator.cli import main

    rc = main(["latency", "measure", "--arch", "darts_v2", "--dataset", "digits", "--channels", "8", "--layers", "4",
               "--device", "cpu", "--batch", "2", "--runs", "5", "--warmup", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["latency_ms"] > 0 and out["runs"] == 5 and out["warmup"] == 1
    assert (out["batch"], out["threads"], out["input_shape"], out["device"]) == (2, 1, [1, 8, 8], "cpu")
    assert (out["channels"], out["layers"], out["dataset"]) == (8, 4, "digits")
    assert "median of 5 forward passes" in out["measured"]


def _smoke_predictor(tmp_path, count: int = 40):
    """A predictor for the smoke preset's shape (synthetic 3x8x8, 2-node cells), built here."""
    from tests.conftest import tiny

    s = tiny()
    info = DatasetInfo("synthetic", s.data.synthetic.classes, s.data.synthetic.channels, s.data.synthetic.size,
                       "cifar")
    shape = SampleShape(s.search.nodes, s.search.channels, s.search.layers, s.retrain.channels or 4,
                        s.retrain.layers or 3, NO_NONE_PRIMITIVES)
    out = tmp_path / "predictor"
    build_predictors(shape, TimingPlan(info, "cpu", 1, 1, warmup=0, runs=3), count=count, seed=0, out=out)
    return out, info


def test_the_expected_encoding_of_decided_alphas_is_the_derived_genotypes(tmp_path):
    from mgas_core.latency.cost import LatencyCost
    from mgas_core.space.genotype import derive_genotype
    from mgas_core.space.topology import DARTS_PRIMITIVES

    folder, info = _smoke_predictor(tmp_path)
    cost = LatencyCost(str(folder), 1.0, None, info, CPU, DARTS_PRIMITIVES, nodes=2)
    topology = CellTopology(2)
    g = torch.Generator().manual_seed(0)
    alphas = []
    for _ in range(2):  # per node two edges far ahead of the rest, each with one op far ahead of the others
        a = torch.full((topology.num_edges, len(DARTS_PRIMITIVES)), -30.0)
        for node_slice in topology.node_edges:
            edges = list(range(node_slice.start, node_slice.stop))
            for e in [edges[i] for i in torch.randperm(len(edges), generator=g)[:2].tolist()]:
                a[e, 1 + int(torch.randint(0, 7, (1,), generator=g))] = 30.0
        alphas.append(a)
    weights = [torch.softmax(a, -1) for a in alphas]
    genotype = derive_genotype(weights[0], weights[1], DARTS_PRIMITIVES, topology, "g")
    expected = cost.expected_encoding(*alphas)
    exact = encode(genotype, cost.predictor.space, cost.channels, cost.layers)
    assert torch.allclose(expected, exact, atol=1e-6)
    with torch.no_grad():
        assert float(cost.predictor.predict_ms(exact.unsqueeze(0))) == pytest.approx(float(cost.predicted_ms(*alphas)),
                                                                                    rel=1e-4)
        table_ms = torch.tensor([cost.table.predict(genotype, cost.channels, cost.layers, CPU)])
        hybrid = float(cost.hybrid.predict_ms(exact.unsqueeze(0), table_ms))
    assert cost.architecture_ms(genotype) == pytest.approx(hybrid, rel=1e-5)  # stop rules use the hybrid
    soft = [torch.zeros_like(alphas[0]).requires_grad_(True), torch.zeros_like(alphas[1]).requires_grad_(True)]
    cost.term(cost.predicted_ms(*soft)).backward()  # the first call sets the reference: term 0, gradient not
    assert soft[0].grad is not None and bool(soft[0].grad.abs().sum() > 0)


def test_a_darts_search_with_a_latency_cost_moves_toward_faster_architectures(tmp_path):
    from mgas_core.methods import create_method
    from tests.conftest import search_until, tiny

    folder, _ = _smoke_predictor(tmp_path)
    predicted = {}
    for coefficient in (0.0, 20.0):
        settings = tiny(search__method="darts", search__epochs=3, search__latency__predictor=str(folder),
                        search__latency__coefficient=coefficient, search__darts__alpha_lr=0.05)
        result = search_until(settings)
        summary = result.summary
        assert summary["latency_coefficient"] == coefficient and summary["target_latency_ms"] is None
        assert all(r["latency_pred_ms"] > 0 for r in result.history)
        predicted[coefficient] = result.history[-1]["latency_pred_ms"]
    assert predicted[20.0] < predicted[0.0]
    with pytest.raises(Exception, match=r"latency\.target_ms needs latency\.predictor"):
        tiny(search__method="darts", search__latency__target_ms=3.0)
    with pytest.raises(Exception, match="greater than 0"):
        tiny(search__method="darts", search__latency__predictor=str(folder), search__latency__target_ms=-1.0)
    elsewhere = tiny(search__method="darts", search__latency__predictor=str(folder),
                     data__synthetic__size=16)  # another input shape than the predictor's
    from mgas_common.errors import UserInputError
    from mgas_core.data import load_splits

    with pytest.raises(UserInputError, match="input_shape is 3x16x16 here, 3x8x8 where it was measured"):
        create_method(elsewhere.search, load_splits(elsewhere.data).info, CPU, 0)


def test_gold_nas_prices_its_ops_by_their_latency_and_stops_at_a_latency_floor(tmp_path):
    from mgas_core.data import load_splits
    from mgas_core.latency.cost import LatencyCost
    from mgas_core.methods import create_method
    from tests.conftest import search_until, tiny

    folder, info = _smoke_predictor(tmp_path)
    settings = tiny(search__method="gold_nas", search__latency__predictor=str(folder))
    splits = load_splits(settings.data)
    method = create_method(settings.search, splits.info, CPU, 0)
    cost = LatencyCost(str(folder), 1.0, None, info, CPU, method.primitives, nodes=settings.search.nodes)
    raw = cost.op_latencies(settings.search.channels, settings.search.layers, method.primitives)
    assert torch.allclose(method.op_cost, raw / raw.max()) and bool((raw > 0).all())
    names = list(method.primitives)
    conv, pool = names.index("sep_conv_5x5"), names.index("max_pool_3x3")
    assert bool((raw[..., conv] > raw[..., pool]).all())  # a 5x5 separable conv costs more than a pool
    assert method.summary()["cost"] == "latency"

    full_ms = cost.architecture_ms(method.derive())  # every op alive: the slowest architecture there is
    reached = search_until(tiny(search__method="gold_nas", search__epochs=6, search__latency__predictor=str(folder),
                                search__latency__target_ms=full_ms * 10))
    assert [e["type"] for e in reached.events if e["type"].startswith("latency_")] == ["latency_reached"]
    assert len(reached.history) == 1 and reached.summary["predicted_latency_ms"] <= full_ms * 10  # stops at once
    missed = search_until(tiny(search__method="gold_nas", search__epochs=2, search__latency__predictor=str(folder),
                               search__latency__target_ms=1e-6))
    kinds = [e["type"] for e in missed.events if e["type"].startswith("latency_")]
    assert kinds == ["latency_missed"] and len(missed.history) == 2


def test_a_method_that_does_not_declare_the_latency_cost_refuses_it_in_one_line(tmp_path, random_alpha):
    from tests.conftest import tiny

    with pytest.raises(Exception, match="method 'random_alpha' cannot take a latency cost yet; the methods that "
                                        "can: darts, gold_nas, mgas, msg_das"):
        tiny(search__method=random_alpha, search__latency__predictor=str(tmp_path))


def test_mgas_weighs_its_size_term_by_latency_and_its_target_joins_the_predicted_latency(tmp_path):
    from mgas_core.data import load_splits
    from mgas_core.methods import create_method
    from tests.mgas_core.test_mgas import PRUNING, mgas_settings

    folder, _ = _smoke_predictor(tmp_path)
    plain = mgas_settings(**PRUNING)
    splits = load_splits(plain.data)
    full = create_method(plain.search, splits.info, CPU, 0).full_size
    settings = mgas_settings(search__target_params=round(0.6 * full) / 1e6, search__latency__predictor=str(folder),
                             **PRUNING)
    method = create_method(settings.search, splits.info, CPU, 0)
    w = method.latency.op_weights
    assert w.shape == method.model.alpha.shape and float(w.max()) == 1.0 and bool((w > 0).all())
    names = list(method.primitives)
    assert bool((w[..., names.index("sep_conv_5x5")] > w[..., names.index("avg_pool_3x3")]).all())
    masks = method.model.op_masks()
    cells = range(len(method.net.cells))
    weighted, unweighted = method.model.log_cost(masks, cells, w), method.model.log_cost(masks, cells)
    assert float(weighted.detach()) < float(unweighted.detach())  # every weight is at most 1, the pools' far below
    full_ms = method.latency.cost.architecture_ms(method.derive())
    assert method.summary()["predicted_latency_ms"] == pytest.approx(full_ms)
    # the target joins: the size alone would do; a latency target below what any architecture reaches never is
    assert not create_method(mgas_settings(search__target_params=(full - 1) / 1e6,
                                           search__latency__predictor=str(folder),
                                           search__latency__target_ms=1e-6, **PRUNING).search,
                             splits.info, CPU, 0).within_target()
    alone = create_method(mgas_settings(search__latency__predictor=str(folder), search__latency__target_ms=full_ms * 2,
                                        **PRUNING).search, splits.info, CPU, 0)
    assert alone.latency.latency_only and alone.within_target()  # no target_params: the latency alone decides


def test_a_masked_network_is_timed_as_deployed_with_its_masks_folded_in():
    from mgas_core.latency.measure import deployed
    from mgas_core.nn.maskable_conv import MaskableConv2d

    net = nn.Sequential(MaskableConv2d(3, 4, 3, padding=1), nn.ReLU())
    assert deployed(net) is net  # no stored mask: nothing to fold
    mask = (torch.rand(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    net[0].set_fixed_mask(mask)
    folded = deployed(net)
    assert folded is not net and net[0].weight_mask is not None and folded[0].weight_mask is None
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x))  # the same network, the multiply done once
