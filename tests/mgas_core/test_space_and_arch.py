from __future__ import annotations

import json

import pytest
import torch

from mgas_core.evaluation_network import build_eval_network
from mgas_core.metrics import count_params
from mgas_core.space.architecture import Architecture, ArchitectureError, CellArch, OpSpec, load_architecture
from mgas_core.space.builtin_architectures import DARTS_V1, DARTS_V2, resolve_architecture
from mgas_core.space.topology import DARTS_PRIMITIVES, NO_NONE_PRIMITIVES, CellTopology, reduction_cells


def test_topology_has_explicit_node_edge_map():
    topo = CellTopology(4)
    assert topo.num_edges == 14
    assert [(s.start, s.stop) for s in topo.node_edges] == [(0, 2), (2, 5), (5, 9), (9, 14)]
    for node, sl in enumerate(topo.node_edges):
        assert [topo.edges[e].source for e in range(sl.start, sl.stop)] == list(range(node + 2))
        assert all(topo.edges[e].node == node for e in range(sl.start, sl.stop))
    assert topo.edges_from_state[0] == (0, 2, 5, 9)
    assert topo.edge_index(3, 2) == 8
    with pytest.raises(ValueError):
        topo.edge_index(4, 2)


def test_primitive_sets():
    assert DARTS_PRIMITIVES[0] == "none" and len(DARTS_PRIMITIVES) == 8
    assert "none" not in NO_NONE_PRIMITIVES and len(NO_NONE_PRIMITIVES) == 7


@pytest.mark.parametrize("layers,expected", [(8, (2, 5)), (20, (6, 13)), (14, (4, 9)), (5, (1, 3)), (2, (0, 1))])
def test_reduction_positions_follow_official_rule(layers, expected):
    assert reduction_cells(layers) == expected


# Counts produced by the official DARTS code (quark0/darts cnn/model.py, utils.count_parameters_in_MB
# without the /1e6), auxiliary head excluded.
OFFICIAL = [
    ("darts_v1", 10, 36, 20, "cifar", 3169414),
    ("darts_v2", 10, 36, 20, "cifar", 3349342),
    ("darts_v1", 100, 36, 20, "cifar", 3221344),
    ("darts_v2", 100, 36, 20, "cifar", 3401272),
    ("darts_v1", 1000, 48, 14, "imagenet", 4510432),
    ("darts_v2", 1000, 48, 14, "imagenet", 4718752),
    ("darts_v1", 10, 16, 8, "cifar", 232890),
    ("darts_v2", 10, 16, 8, "cifar", 246106),
]


@pytest.mark.parametrize("name,classes,channels,layers,variant,expected", OFFICIAL)
def test_eval_network_matches_official_parameter_count(name, classes, channels, layers, variant, expected):
    with torch.device("meta"):
        net = build_eval_network(resolve_architecture(name), classes, 3, channels, layers, True, variant)
    assert count_params(net).dense == expected
    assert any("auxiliary" in n for n, _ in net.named_parameters())  # present, just not counted


def test_eval_network_forward_cifar_and_imagenet():
    net = build_eval_network(DARTS_V2, 10, 3, 8, 5, auxiliary=True)
    net.drop_path_prob = 0.2
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux is not None and aux.shape == (2, 10)
    net.eval()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert aux is None
    inet = build_eval_network(DARTS_V1, 7, 3, 8, 3, auxiliary=True, variant="imagenet")
    logits, aux = inet(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7) and aux.shape == (2, 7)


def test_json_round_trip(tmp_path):
    for arch in (DARTS_V1, DARTS_V2):
        path = arch.save(tmp_path / f"{arch.name}.json")
        back = load_architecture(path)
        assert back.to_json() == arch.to_json()


def test_per_cell_arch_with_widths_and_masks_round_trips(tmp_path):
    cells = []
    for i in range(3):
        ops = [OpSpec("sep_conv_3x3", 0, 0, {"mid": 3, "out": [0, 2, 3]}), OpSpec("skip_connect", 1, 0),
               OpSpec("dil_conv_3x3", 2, 1, {"out": [1, 2]})]
        pre = [{"out": [0, 1, 3]}, None] if i == 0 else [None, None]
        cells.append(CellArch(ops, [2, 3], reduction=i in (1, 2), preprocess=pre))
    # cell 0's input 0 keeps 3 of 4 channels, so the sep conv reading it has 3 input columns
    masks = {"cells.0.ops.0.pw1": (torch.rand(3, 3, 1, 1) > 0.5).float()}
    arch = Architecture("custom", nodes=2, cells=cells, channels=4, masks=masks)
    path = arch.save(tmp_path / "a.json")
    assert (tmp_path / "a.masks.safetensors").exists()
    back = load_architecture(path)
    assert back.to_json() == arch.to_json()
    assert torch.equal(back.masks["cells.0.ops.0.pw1"], masks["cells.0.ops.0.pw1"])
    net = build_eval_network(back, 10, 3)
    assert net.cells[0].ops[0].dw1.in_channels == 3 and net.cells[1].ops[0].dw1.in_channels == 8  # cell 1 reduces
    # node 0 of cell 0: sep conv writes {0, 2, 3}, the skip writes all 4 -> 4; node 1 writes {1, 2}
    assert net.cells[0].out_channels == 4 + 2
    assert net.cells[1].preprocess1.conv.in_channels == 6
    count = count_params(net)
    assert count.nonzero == count.dense - int((masks["cells.0.ops.0.pw1"] == 0).sum())
    assert net(torch.randn(2, 3, 8, 8))[0].shape == (2, 10)


@pytest.mark.parametrize("text,fragment", [
    ("{", "not valid JSON"),
    ('{"format": "other"}', "not an architecture file"),
    ('{"format": "mgas-architecture", "version": 1, "normal": {"ops": [{"op": "conv9", "input": 0, "node": 0}],'
     ' "concat": [2]}, "reduce": {"ops": [], "concat": [2]}}', "is not an operation"),
    ('{"format": "mgas-architecture", "version": 1, "normal": {"ops": [{"op": "skip_connect", "input": 5,'
     ' "node": 0}], "concat": [2]}, "reduce": {"ops": [], "concat": [2]}}', "earlier state"),
])
def test_bad_architecture_files_name_the_problem(tmp_path, text, fragment):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ArchitectureError, match=fragment):
        load_architecture(path)


def test_impossible_widths_are_an_architecture_error():
    ops = [OpSpec("skip_connect", 0, 0), OpSpec("skip_connect", 1, 0)]
    cells = [CellArch(ops, [2], reduction=i in (1, 2), preprocess=[{"out": [99]}, None] if i == 2 else [None, None])
             for i in range(3)]
    arch = Architecture("bad-widths", nodes=1, cells=cells, channels=4)
    with pytest.raises(ArchitectureError, match="cell 2"):
        build_eval_network(arch, 10, 3)


def test_genotype_json_is_plain_data():
    data = json.loads(json.dumps(DARTS_V2.to_json()))
    assert data["normal"]["ops"][0] == {"op": "sep_conv_3x3", "input": 0, "node": 0}


def test_imagenet_supernet_and_derived_mgas_count():
    from mgas_core.data import DatasetInfo
    from mgas_core.methods import create_method
    from mgas_core.methods.registry import build_settings

    info = DatasetInfo("imagenet", 7, 3, 64, "imagenet")
    s = build_settings("paper", {"search.method": "mgas", "search.layers": 3, "search.channels": 4,
                                 "search.nodes": 2, "search.mgas.stages": 1})
    method = create_method(s.search, info, torch.device("cpu"), 0)
    logits = method.predict(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    assert method.net.cells[0].preprocess0.__class__.__name__ == "FactorizedReduce"  # stem0 is at 1/4
    dense, nonzero = method.derived_count()
    arch = method.derive()
    counted = count_params(build_eval_network(arch, 7, 3, auxiliary=False, variant="imagenet"))
    assert nonzero == dense == counted.dense == round(method.full_size)
    s3 = build_settings("paper", {"search.method": "mgas", "search.layers": 3, "search.channels": 4,
                                  "search.nodes": 2, "search.mgas.stages": 3})
    staged = create_method(s3.search, info, torch.device("cpu"), 0)  # conv stage heads at 1/8 and 1/16
    assert staged.predict(torch.randn(2, 3, 64, 64)).shape == (2, 7)
