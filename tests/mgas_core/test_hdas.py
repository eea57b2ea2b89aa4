"""H-DAS: the stage-level architecture format, its evaluation network pinned to the official code's
parameter count, the stage-level losses and derivation, and the method end to end (phases, resume,
--cells-from)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mgas_common.errors import UserInputError
from mgas_core.evaluation_network import build_eval_network, count_architecture_params
from mgas_core.methods.hdas.method import cells_of, staged_architecture
from mgas_core.methods.hdas.stage_search import StageSearchNetwork, window_sources
from mgas_core.metrics import count_params
from mgas_core.space.architecture import Architecture, ArchitectureError, NetworkStyle, architecture_from_json
from mgas_core.space.builtin_architectures import DARTS_V2
from mgas_core.space.stages import StageArch
from tests.conftest import search_until, tiny

# Hs-DAS's CIFAR-10 stage-level architecture, Figure 8 (a) of the paper / the official README's
# HS_DAS_CIFAR: 6 cells per stage, a cell's inputs within the sliding window, output = last two cells
HS_DAS_STAGE = [[("skip_connect", 0), ("skip_connect", 1)], [("skip_connect", 0), ("skip_connect", 1)],
                [("skip_connect", 1), ("max_pool_3x3", 2)], [("max_pool_3x3", 2), ("skip_connect", 4)],
                [("max_pool_3x3", 3), ("skip_connect", 5)], [("max_pool_3x3", 4), ("skip_connect", 6)]]
OFFICIAL_STYLE = NetworkStyle(pool_bn=True, unused_preprocess=True)  # the official pt.darts ops: PoolBN


def hs_das(style: NetworkStyle = OFFICIAL_STYLE) -> Architecture:
    stages = [StageArch(6, [list(n) for n in HS_DAS_STAGE], [6, 7]) for _ in range(3)]
    return Architecture(name="hs_das_darts_v2", normal=DARTS_V2.normal, reduce=DARTS_V2.reduce, stages=stages,
                        style=style)


def test_the_paper_shape_has_the_official_parameter_count():
    # msight-tech/research-hdas at 230b175: AugmentStage(32, 3, 36, 10, 20, auxiliary=True, DARTS_V2 genotype,
    # the DAG above) has 4,877,148 parameters, 476,426 of them in the auxiliary head; built and counted with
    # that code's own modules on this machine (its ops: PoolBN after every pool, both pre-processings)
    arch = hs_das()
    assert arch.layers == 20 and arch.reductions(20) == (6, 13)
    net = build_eval_network(arch, 10, channels=36)
    assert count_params(net).dense == 4_400_722
    assert count_architecture_params(arch, 10, channels=36).dense == 4_400_722
    assert sum(p.numel() for p in net.auxiliary_head.parameters()) == 476_426
    net.train()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    # the project's own style (bare pools, as DARTS's NetworkCIFAR) differs by the pools' BNs only
    assert count_architecture_params(hs_das(NetworkStyle()), 10, channels=36).dense < 4_400_722


def test_stage_architectures_round_trip_and_refuse_what_cannot_be_built():
    arch = hs_das()
    again = architecture_from_json(json.loads(json.dumps(arch.to_json())))
    assert again.to_json() == arch.to_json() and again.has_dag_stages
    data = arch.to_json()
    bad = [
        ({"op": "sep_conv_3x3", "input": 0}, "not a stage-level operation"),
        ({"op": "skip_connect", "input": 5}, "must be an earlier state"),
    ]
    for edge, message in bad:
        broken = json.loads(json.dumps(data))
        broken["stages"][0]["edges"][0][0] = edge
        with pytest.raises(ArchitectureError, match=message):
            architecture_from_json(broken)
    broken = json.loads(json.dumps(data))
    broken["stages"][1]["concat"] = [9]
    with pytest.raises(ArchitectureError, match=r"stages\[1\]\.concat names state 9"):
        architecture_from_json(broken)
    broken = json.loads(json.dumps(data))
    broken["stages"][2]["cells"] = 5
    with pytest.raises(ArchitectureError, match=r"stages\[2\]\.edges lists 6 cells, but cells=5"):
        architecture_from_json(broken)


def test_chained_stages_place_the_reductions_between_stages():
    arch = Architecture(name="x", normal=DARTS_V2.normal, reduce=DARTS_V2.reduce,
                        stages=[StageArch(1), StageArch(3), StageArch(2)])
    assert arch.layers == 8 and arch.reductions(8) == (1, 5)
    net = build_eval_network(arch, 10, channels=8)
    assert [c.reduction for c in net.cells] == [False, True, False, False, False, True, False, False]
    assert count_params(net).dense == count_architecture_params(arch, 10, channels=8).dense
    with pytest.raises(ArchitectureError, match="has 8 cells in its stages; cannot build 20 layers"):
        build_eval_network(arch, 10, channels=8, layers=20)


def _network(min_cells: int = 1, max_cells: int = 3) -> StageSearchNetwork:
    torch.manual_seed(0)
    return StageSearchNetwork([DARTS_V2.normal] * 3, [DARTS_V2.reduce] * 2, 4, 10, 3, min_cells, max_cells, 3, 1e-3)


def test_the_stage_level_derivation_keeps_two_window_edges_per_cell_and_the_argmax_length():
    net = _network()
    assert window_sources(0, 3) == [0, 1] and window_sources(3, 3) == [2, 3, 4]  # official states[-3:]
    with torch.no_grad():
        for a in net.alphas:
            a.zero_()
        stage0 = net.stage_alphas(0)
        stage0[1][0, 2] = 5.0   # cell 1 <- state 0 by avg_pool (column 2 of none, max, avg, skip)
        stage0[1][2, 3] = 4.0   # cell 1 <- state 2 by skip
        stage0[1][1, 0] = 9.0   # 'none' is never chosen, however strong
        stage0[2][0, 1] = 3.0   # cell 2 <- state 1 (its window's first) by max_pool
        stage0[2][2, 3] = 2.0   # cell 2 <- state 3 by skip
        for b in net.betas:
            b.zero_()
        net.betas[0][2] = 1.0   # stage 1: three cells
        net.betas[1][0] = 1.0   # stage 2: one cell
        net.betas[2][1] = 1.0   # stage 3: two cells
    stages = net.derive_stages()
    assert [s.cells for s in stages] == [3, 1, 2]
    assert stages[0].edges[1] == [("avg_pool_3x3", 0), ("skip_connect", 2)]
    assert stages[0].edges[2] == [("max_pool_3x3", 1), ("skip_connect", 3)]
    assert stages[0].concat == [3, 4] and stages[1].concat == [1, 2] and stages[2].concat == [2, 3]
    assert all(src in window_sources(k, 3) for s in stages for k, node in enumerate(s.edges) for _, src in node)
    arch = staged_architecture("x", 4, [DARTS_V2.normal] * 3, [DARTS_V2.reduce] * 2, stages, {})
    assert arch.is_genotype and arch.layers == 3 + 1 + 1 + 1 + 2
    net_eval = build_eval_network(arch, 10, channels=8)
    assert net_eval(torch.randn(2, 3, 8, 8))[0].shape == (2, 10)


def test_the_depth_loss_is_the_expected_depth_of_each_stage():
    net = _network(min_cells=2, max_cells=3)
    with torch.no_grad():
        for a in net.alphas:
            a.zero_()
        for b in net.betas:
            b.zero_()
    # equal alphas: every edge weighs 1/|window|; cell 0 reads states 0, 1 (depth 0): d0 = (1 + 1) / 2 / 2
    d0 = 0.5
    d1 = (1 + 1 + (d0 + 1)) / 3 / 3                        # window 0, 1, 2
    d1 *= 1 + 1 * 0.5                                      # cell 1 may end the stage (length 2, beta 1/2)
    d2 = ((0 + 1) + (d0 + 1) + (d1 + 1)) / 3 / 3           # window 1, 2, 3
    d2 *= 1 + 2 * 0.5                                      # length 3
    expected = (d0 + d1 + d2) / 3
    assert float(net.stage_depth(0).detach()) == pytest.approx(expected, rel=1e-6)
    assert float(net.depth_loss().detach()) == pytest.approx(-3 * expected, rel=1e-6)
    assert float(net.length_loss().detach()) == pytest.approx(3 * 2.5, rel=1e-6)  # uniform over lengths 2 and 3


def test_cells_from_takes_a_genotype_or_width_free_cells_and_refuses_widths():
    normals, reduces = cells_of(DARTS_V2)
    assert len(normals) == 3 and len(reduces) == 2
    staged = staged_architecture("x", 4, normals, reduces, [StageArch(2, [[("skip_connect", 1)]] * 2, [2, 3])] * 3,
                                 {})
    per_stage = cells_of(Architecture(name="y", cells=staged.cells_for(staged.layers)))
    assert [c.to_json() for c in per_stage[0]] == [DARTS_V2.normal.to_json()] * 3
    cells = copy.deepcopy(DARTS_V2.cells_for(5))
    cells[0].ops[0].widths = {"out": [0, 1]}
    widths = Architecture(name="z", channels=8, cells=cells)
    with pytest.raises(UserInputError, match="channel widths"):
        cells_of(widths)


@pytest.mark.slow
def test_hdas_searches_cells_then_stages_and_resumes_across_the_phase_change():
    settings = tiny(search__method="hdas")
    result = search_until(settings)
    arch = result.arch
    assert arch.has_dag_stages and len(arch.stages) == 3
    assert all(1 <= s.cells <= 2 for s in arch.stages)  # smoke preset: min_cells 1, max_cells 2
    assert [e["type"] for e in result.events] == ["phase"]
    assert result.summary["cells_per_stage"] == [s.cells for s in arch.stages]
    assert len(result.history) == 2 and result.history[1]["hdas_phase"] == "stage"
    # stopped after the cell level (the model is the stage supernet then), resumed: the same architecture
    state = search_until(settings, stop_after=0)
    resumed = search_until(settings, state=state)
    assert resumed.arch.to_json() == arch.to_json()
    built = build_eval_network(arch, 4, channels=4)
    assert built(torch.randn(2, 3, 8, 8))[0].shape == (2, 4)


@pytest.mark.slow
def test_cells_from_searches_only_the_stage_level(tmp_path):
    path = tmp_path / "darts.json"
    DARTS_V2.save(path)
    settings = tiny(search__method="hdas", search__hdas__cells_from=str(path))
    result = search_until(settings)
    assert len(result.history) == 1  # no cell level
    assert result.arch.is_genotype and result.arch.normal.to_json() == DARTS_V2.normal.to_json()
    assert result.arch.meta["cells_from"] == "DARTS_V2" and result.arch.has_dag_stages
    with pytest.raises(Exception, match="cells_from"):
        tiny(search__method="hdas", search__hdas__cells_from=str(tmp_path / "missing.json"))
