"""``mgas import-arch`` (issue 28): published genotypes files read as data (``ast``, never run) in the
three formats, into the architecture format whose evaluation network has the official parameter
count; MG-DARTS weight masks in the official nested-list layout; every bad input refused in one line
naming the file. The published architectures themselves are pinned in test_complexity.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mgas_common.errors import UserInputError
from mgas_core.evaluation_network import build_eval_network, count_architecture_params
from mgas_core.metrics import ParamCount, count_params
from mgas_core.space.architecture import DEFAULT_STYLE, ArchitectureError, load_architecture
from mgas_core.space.builtin_architectures import DARTS_V2
from mgas_core.space.importers import import_architecture, width_ids
from orchestrator.cli import main

HEADER = "from collections import namedtuple\nGenotype = namedtuple('Genotype', 'gene concat')\n"

# DARTS_V2 as quark0/darts cnn/genotypes.py writes it (transcribed literal; the alias as there too)
DARTS_FILE = """from collections import namedtuple
Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')
PRIMITIVES = ['none', 'max_pool_3x3']
DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), \
('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], \
reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), \
('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))
DARTS = DARTS_V2
"""

# Three cells (reductions at 1 and 2), C=4: cell 1 reads only input 1, cell 2 only input 0 (the official
# network has their unread inputs' pre-processings all the same)
GOLD_GENE = [
    [("sep_conv_3x3", 0, 2), ("skip_connect", 1, 2), ("max_pool_3x3", 2, 3), ("sep_conv_3x3", 1, 4),
     ("skip_connect", 4, 5)],
    [("skip_connect", 1, 2), ("dil_conv_3x3", 1, 3), ("avg_pool_3x3", 2, 4), ("skip_connect", 3, 5)],
    [("sep_conv_5x5", 0, 2), ("skip_connect", 2, 3), ("skip_connect", 3, 4), ("skip_connect", 4, 5)],
]
# The official GOLD-NAS code's network at C=4 for CIFAR-10 (its BN in cells are affine-free: no parameters):
GOLD_PARAMS = (
    3 * 12 * 9 + 2 * 12                                # stem: 3x3 conv to 3C, BN
    + 2 * 12 * 4 + 2 * (4 * 9 + 4 * 4 + 4 * 9 + 4 * 4)  # cell 0 (C 4): two 1x1 pre-processings, two sep 3x3
    + 12 * 8 + 16 * 8 + 2 * 8 * 4 + (8 * 9 + 8 * 8)     # cell 1 (C 8): pre-processings (input 0's unread), FR, dil 3x3
    + 2 * 16 * 8 + 32 * 16 + 2 * (16 * 25 + 16 * 16)    # cell 2 (C 16): FR pre-processing, 1x1 (unread), sep 5x5
    + 64 * 10 + 10                                     # classifier on 4 nodes x 16 channels
)
# Three cells, C=8, per-op widths (cell 0 six of 8 channels with a 7-wide sep conv middle; cell 1 ten of 16, its
# input 0 unread; cell 2 twelve of 32)
MG_GENE = [
    [("sep_conv_3x3", 0, 2, [6, 7, 6]), ("max_pool_3x3", 1, 2, [6]), ("dil_conv_5x5", 2, 3, [6, 6]),
     ("skip_connect", 0, 4, [6]), ("avg_pool_3x3", 3, 5, [6])],
    [("skip_connect", 1, 2, [10]), ("sep_conv_3x3", 1, 3, [10, 12, 10]), ("max_pool_3x3", 2, 4, [10]),
     ("dil_conv_3x3", 3, 5, [10, 10])],
    [("sep_conv_5x5", 0, 2, [12, 12, 12]), ("max_pool_3x3", 1, 3, [12]), ("avg_pool_3x3", 3, 4, [12]),
     ("skip_connect", 4, 5, [12])],
]
# The official MG-DARTS network (cifar_train/model.py) at C=8 for CIFAR-10: affine BN, pools followed by BN
MG_PARAMS = (
    3 * 24 * 9 + 2 * 24                                              # stem
    + 2 * (24 * 6 + 12) + (6 * 9 + 6 * 7 + 14 + 7 * 9 + 7 * 6 + 12)  # cell 0: pre-processings, sep 3x3 6-7-6
    + 12 + (6 * 25 + 6 * 6 + 12) + 12                                # max pool BN, dil 5x5, avg pool BN
    + (24 * 16 + 32) + (24 * 10 + 20)                                # cell 1: input 0's (unread, full C), input 1's
    + (2 * 10 * 5 + 20) + (10 * 9 + 10 * 12 + 24 + 12 * 9 + 12 * 10 + 20)  # FR of width 10, sep 3x3 10-12-10
    + 20 + (10 * 9 + 10 * 10 + 20)                                   # max pool BN, dil 3x3
    + (2 * 24 * 6 + 24) + (40 * 12 + 24)                             # cell 2: FR pre-processing, 1x1 (out 4 x 10)
    + (12 * 25 + 12 * 12 + 24 + 12 * 25 + 12 * 12 + 24) + 24 + 24    # sep 5x5, two pool BNs
    + 48 * 10 + 10                                                   # classifier on 4 x 12 channels
)


TAIL = "('skip_connect', 2, 3, [4]), ('skip_connect', 3, 4, [4]), ('skip_connect', 4, 5, [4])"  # nodes 3-5


def write_gene(path: Path, name: str, gene: list, extra: str = "") -> Path:
    path.write_text(HEADER + extra + f"{name} = Genotype(gene={gene!r}, concat=range(2, 6))\n")
    return path


def mg_file(tmp_path: Path) -> Path:
    return write_gene(tmp_path / "genotypes", "MG_TINY", MG_GENE)


def official_masks(gene: list, seed: int = 0) -> list:
    """Masks in the official layout: per cell, per op, one 0/1 tensor per conv (sep: dw, pw, dw, pw)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.rand(shape, generator=g) > 0.3).float()

    out = []
    for cell in gene:
        ops = []
        for op, _, _, w in cell:
            k = int(op[-1]) if op[-1].isdigit() else 0
            if op.startswith("sep_conv"):
                ops.append([rand(w[0], 1, k, k), rand(w[1], w[0], 1, 1), rand(w[1], 1, k, k), rand(w[2], w[1], 1, 1)])
            elif op.startswith("dil_conv"):
                ops.append([rand(w[0], 1, k, k), rand(w[1], w[0], 1, 1)])
            else:
                ops.append([])
        out.append(ops)
    return out


def save_masks(path: Path, nested) -> Path:
    torch.save(nested, path)
    return path


def refused(exc_info, *fragments: str) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- the three formats ---------------------------------------------------------------------------

def test_a_darts_genotype_through_an_alias_is_the_builtin_with_its_official_count(tmp_path):
    path = tmp_path / "genotypes.py"
    path.write_text(DARTS_FILE)
    arch = import_architecture("darts", path, "DARTS", 36)
    assert arch.is_genotype and arch.name == "DARTS" and (arch.channels, arch.layers, arch.nodes) == (36, 20, 4)
    for ours, builtin in ((arch.normal, DARTS_V2.normal), (arch.reduce, DARTS_V2.reduce)):
        assert [(o.op, o.input, o.node) for o in ours.ops] == [(o.op, o.input, o.node) for o in builtin.ops]
        assert ours.concat == [2, 3, 4, 5]
    assert arch.style.unused_preprocess and arch.meta == {"source": "genotypes.py:DARTS", "format": "darts"}
    assert count_architecture_params(arch, 10, channels=36, layers=20).dense == 3_349_342  # official, pinned
    assert import_architecture("darts", path, "DARTS_V2", 16, layers=8).layers == 8


def test_a_gold_nas_genotype_has_the_official_structure_and_count(tmp_path):
    arch = import_architecture("gold_nas", write_gene(tmp_path / "genotypes.py", "s9", GOLD_GENE), "s9", 4)
    assert arch.layers == 3 and [c.reduction for c in arch.cells] == [False, True, True]
    assert [len(c.ops) for c in arch.cells] == [5, 4, 4] and arch.cells[0].concat == [2, 3, 4, 5]
    assert arch.cells[0].ops[3].node == 2 and all(o.widths is None for c in arch.cells for o in c.ops)
    assert arch.style.to_json() == {"bn_affine": False, "pool_bn": True, "identity_bn": True,
                                    "unused_preprocess": True}
    assert count_architecture_params(arch, 10).dense == GOLD_PARAMS
    net = build_eval_network(arch, 10, auxiliary=False)
    assert count_params(net).dense == GOLD_PARAMS
    logits, _ = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    without = replace(arch, style=replace(arch.style, unused_preprocess=False))
    assert count_architecture_params(without, 10).dense == GOLD_PARAMS - 12 * 8 - 32 * 16  # the unread 1x1s
    assert count_architecture_params(replace(arch, style=DEFAULT_STYLE), 10).dense == 3390  # affine BN, bare pools


def test_an_mg_darts_genotype_keeps_per_op_widths_and_has_the_official_count(tmp_path):
    arch = import_architecture("mg_darts", mg_file(tmp_path), "MG_TINY", 8)
    c0, c1, c2 = arch.cells
    assert c0.ops[0].widths == {"mid": 7, "out": width_ids(6, 8)} and width_ids(6, 8) == [0, 1, 2, 4, 5, 6]
    assert c0.ops[1].widths is None and c0.preprocess == [{"out": width_ids(6, 8)}] * 2
    assert c1.preprocess[0] is None and c1.ops[0].widths == {"out": [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]}  # FR split 5+5
    assert c2.ops[0].widths == {"mid": 12, "out": width_ids(12, 32)} and arch.style.to_json() == {"pool_bn": True,
                                                                                       "unused_preprocess": True}
    assert count_architecture_params(arch, 10).dense == MG_PARAMS
    net = build_eval_network(arch, 10, auxiliary=False)
    assert count_params(net).dense == MG_PARAMS and [c.out_channels for c in net.cells] == [24, 40, 48]
    logits, _ = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)


def test_the_file_is_read_as_data_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = write_gene(tmp_path / "genotypes.py", "s9", GOLD_GENE,
                      extra=f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n")
    assert import_architecture("gold_nas", path, "s9", 4).layers == 3
    assert not marker.exists()


def test_the_json_round_trips_with_its_style(tmp_path):
    arch = import_architecture("mg_darts", mg_file(tmp_path), "MG_TINY", 8)
    back = load_architecture(arch.save(tmp_path / "out" / "arch.json"))
    assert back.to_json() == arch.to_json() and back.style == arch.style
    assert count_architecture_params(back, 10).dense == MG_PARAMS



@pytest.mark.parametrize(("style", "fragment"), [({"pool_bn": "yes"}, "style.pool_bn"), ({"bn": True}, "style.bn"),
                                                 (3, "style")])
def test_a_bad_style_in_an_architecture_file_is_refused_in_one_line(tmp_path, style, fragment):
    data = import_architecture("mg_darts", mg_file(tmp_path), "MG_TINY", 8).to_json()
    (tmp_path / "arch.json").write_text(json.dumps({**data, "style": style}))
    with pytest.raises(ArchitectureError) as info:
        load_architecture(tmp_path / "arch.json")
    refused(info, str(tmp_path / "arch.json"), fragment)


# --- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "fmt", "fragments"), [
    ("x = 1\n", "gold_nas", ["no top-level assignment", "genotypes: none"]),
    ("s9 = [1, 2]\n", "gold_nas", ["is not a Genotype(...) call"]),
    ("s9 = Genotype(gene=make(), concat=range(2, 6))\n", "gold_nas", ["gene is not a literal", "make()"]),
    ("s9 = Genotype(gene=[[('conv_7x1_1x7', 0, 2)]], concat=range(2, 6))\n", "gold_nas",
     ["gene[0][0]", "unknown operation 'conv_7x1_1x7'"]),
    ("s9 = Genotype(gene=[[('sep_conv_3x3', 0)]], concat=range(2, 6))\n", "gold_nas",
     ["gene[0][0] must be a tuple (op, from, to)"]),
    ("s9 = Genotype(gene=[[('sep_conv_3x3', 3, 3)]], concat=range(2, 6))\n", "gold_nas", ["gene[0][0] from"]),
    ("s9 = Genotype(gene=[[('sep_conv_3x3', 0, 2)]], order=1, concat=range(2, 6))\n", "gold_nas", ["no field order"]),
    ("s9 = Genotype(gene=[[('sep_conv_3x3', 0, 2)]])\n", "gold_nas", ["lacks the field 'concat'"]),
    ("s9 = Genotype(gene=[[('sep_conv_3x3', 0, 2)]], concat=range(2, x))\n", "gold_nas", ["concat is not a literal"]),
    ("s9 = Genotype(gene=[[('sep_conv_3x3', 0, 2, [4, 4])]], concat=range(2, 6))\n", "mg_darts",
     ["sep_conv_3x3 takes 3 widths"]),
    ("s9 = Genotype(gene=[[('sep_conv_3x3', 0, 2, [4, 4, 4]), ('max_pool_3x3', 1, 2, [6])]], concat=[2])\n",
     "mg_darts", ["no op writes state 3"]),
    (f"s9 = Genotype(gene=[[('sep_conv_3x3', 0, 2, [4, 4, 4]), ('max_pool_3x3', 1, 2, [6]), {TAIL}]], concat=[2])\n",
     "mg_darts", ["cell 0: state 2 is 4 channels wide for op 0 but 6 for op 1"]),
    (f"s9 = Genotype(gene=[[('sep_conv_3x3', 0, 2, [20, 20, 20]), {TAIL}]], concat=[2])\n", "mg_darts",
     ["state 0 20 channels wide; the cell has 16"]),  # one cell: a reduction cell, 2 x 8 channels
    ("s9 = Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[], reduce_concat=[2])\n", "darts",
     ["normal lists 1 ops"]),
    ("s9 = Genotype(gene=[[('sep_conv_3x3', 0, 2)\n", "gold_nas", ["not a Python source file"]),
])
def test_bad_genotype_files_are_refused_in_one_line_naming_the_file(tmp_path, text, fmt, fragments):
    path = tmp_path / "genotypes.py"
    path.write_text(HEADER + text)
    with pytest.raises(ArchitectureError) as info:
        import_architecture(fmt, path, "s9", 8)
    refused(info, str(path), *fragments)


def test_other_bad_requests_are_refused_in_one_line(tmp_path):
    path = write_gene(tmp_path / "genotypes.py", "s9", GOLD_GENE)
    for kwargs, fragment in (({"layers": 5}, "--layers 5: the genotype lists 3 cells"),
                             ({"channels": 7}, "--channels must be an even number"),
                             ({"masks": tmp_path / "m.npy"}, "only the mg_darts format has weight masks")):
        with pytest.raises(UserInputError) as info:
            import_architecture("gold_nas", path, "s9", **{"channels": 4, **kwargs})
        refused(info, fragment)
    with pytest.raises(UserInputError) as info:
        import_architecture("gold_nas", tmp_path / "absent.py", "s9", 4)
    refused(info, "absent.py", "does not exist")


# --- MG-DARTS weight masks -----------------------------------------------------------------------

def test_masks_in_the_official_layout_round_trip_and_count(tmp_path):
    nested = official_masks(MG_GENE)
    zeros = sum(int((t == 0).sum()) for cell in nested for op in cell for t in op)
    arch = import_architecture("mg_darts", mg_file(tmp_path), "MG_TINY", 8,
                               masks=save_masks(tmp_path / "mask.npy", nested))
    assert len(arch.masks) == 3 * 4 + 2 * 2 and arch.meta["masks_source"] == "mask.npy"  # 3 sep, 2 dil convs
    assert torch.equal(arch.masks["cells.1.ops.1.pw1"], nested[1][1][1]) and "cells.0.ops.1.pw" not in arch.masks
    assert count_architecture_params(arch, 10) == ParamCount(MG_PARAMS, MG_PARAMS - zeros)
    back = load_architecture(arch.save(tmp_path / "out" / "arch.json"))
    assert (tmp_path / "out" / "arch.masks.safetensors").is_file()
    assert back.masks.keys() == arch.masks.keys() and all(torch.equal(back.masks[k], arch.masks[k]) for k in arch.masks)
    net = build_eval_network(back, 10, auxiliary=False)
    assert count_params(net).nonzero == MG_PARAMS - zeros


def _bad_masks() -> list:
    good = official_masks(MG_GENE)

    def edit(fn):
        nested = official_masks(MG_GENE)
        fn(nested)
        return nested

    return [
        (good[:2], "expected one list per cell (3), got a list of 2"),
        ({"cells": good}, "expected one list per cell (3), got dict"),
        (edit(lambda n: n[1].pop()), "cell 1: expected one entry per op (4), got 3 entries"),
        (edit(lambda n: n[0][0].pop()), "cell 0, op 0 (sep_conv_3x3): expected 4 masks (or none), got 3"),
        (edit(lambda n: n[0][1].append(torch.ones(6, 1, 3, 3))), "cell 0, op 1 (max_pool_3x3): expected 0 masks"),
        (edit(lambda n: n[2][0].__setitem__(1, torch.ones(12, 11, 1, 1))),
         "cell 2, op 0 (sep_conv_5x5), conv pw1: mask shape (12, 11, 1, 1), the conv's weight (12, 12, 1, 1)"),
        (edit(lambda n: n[1][3].__setitem__(0, torch.full((10, 1, 3, 3), 0.5))),
         "cell 1, op 3 (dil_conv_3x3), conv dw: holds values other than 0 and 1"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_masks_that_do_not_fit_the_architecture_are_refused_in_one_line(tmp_path, case):
    nested, fragment = _bad_masks()[case]
    masks = save_masks(tmp_path / "mask.npy", nested)
    with pytest.raises(ArchitectureError) as info:
        import_architecture("mg_darts", mg_file(tmp_path), "MG_TINY", 8, masks=masks)
    refused(info, str(masks), fragment)


def test_a_masks_file_that_is_not_a_tensor_list_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "mask.npy"
    bad.write_bytes(b"not a pickle at all\n\x00\x01")
    with pytest.raises(ArchitectureError) as info:
        import_architecture("mg_darts", mg_file(tmp_path), "MG_TINY", 8, masks=bad)
    refused(info, str(bad), "not a torch.save'd list of masks")


# --- the command line ----------------------------------------------------------------------------

def test_import_arch_then_info_gives_the_official_counts(tmp_path, capsys):
    nested = official_masks(MG_GENE, seed=3)
    zeros = sum(int((t == 0).sum()) for cell in nested for op in cell for t in op)
    out = tmp_path / "imported"
    assert main(["import-arch", "--format", "mg_darts", str(mg_file(tmp_path)), "MG_TINY", "--channels", "8",
                 "--masks", str(save_masks(tmp_path / "mask.npy", nested)), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out / "arch.json") and summary["cifar10_params"] == MG_PARAMS
    assert summary["masked_convs"] == 16 and summary["layers"] == 3 and summary["ops"] == 13
    assert main(["info", "--arch", str(out / "arch.json"), "--dataset", "cifar10", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["params"], info["nonzero_params"], info["channels"], info["layers"]) == (
        MG_PARAMS, MG_PARAMS - zeros, 8, 3)


def test_import_arch_of_a_darts_genotype_records_its_width_and_depth(tmp_path, capsys):
    path = tmp_path / "genotypes.py"
    path.write_text(DARTS_FILE)
    assert main(["import-arch", "--format", "darts", str(path), "DARTS_V2", "--channels", "16", "--layers", "8",
                 "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    assert main(["info", "--arch", str(tmp_path / "d" / "arch.json"), "--dataset", "cifar10", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["channels"], info["layers"]) == (16, 8)


def test_import_arch_refuses_in_one_line_with_exit_2(tmp_path, capsys):
    path = write_gene(tmp_path / "genotypes.py", "s9", GOLD_GENE)
    rc = main(["import-arch", "--format", "gold_nas", str(path), "nope", "--channels", "4", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("mgas: error:") and "genotypes: s9" in err
    assert not (tmp_path / "arch.json").exists()


def test_an_imported_architecture_with_masks_retrains(tmp_path, capsys):
    out = tmp_path / "imported"
    main(["import-arch", "--format", "mg_darts", str(mg_file(tmp_path)), "MG_TINY", "--channels", "8",
          "--masks", str(save_masks(tmp_path / "mask.npy", official_masks(MG_GENE))), "--out", str(out)])
    capsys.readouterr()
    assert main(["train", "--arch", str(out / "arch.json"), "--dataset", "synthetic", "--out", str(tmp_path / "t"),
                 "--json", "--no-progress", "--set", "data.synthetic.size=8", "--set", "data.synthetic.samples=64",
                 "--set", "retrain.epochs=1", "--set", "retrain.batch_size=16", "--set", "retrain.cutout=0"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["channels"] == 8 and trained["layers"] == 3 and trained["nonzero_params"] < trained["params"]
