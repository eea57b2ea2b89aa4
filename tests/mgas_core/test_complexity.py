"""Pinned complexity, as pycls pins its models': every published genotype's parameters (auxiliary
head excluded, as the official DARTS counter) and multiply-adds (torch's FlopCounterMode / 2) at
the papers' evaluation settings. A change to an op, the cell wiring, the stem or the counters that
moves any of these numbers fails here, with the number it moved to.

The published per-cell architectures (``mgas import-arch``: MG-DARTS's and GOLD-NAS's) are pinned
too, at their official CIFAR-10 parameter counts. Their genotypes files are not in this repository:
when ``MGAS_OFFICIAL_MGAS`` / ``MGAS_OFFICIAL_GOLD_NAS`` / ``MGAS_OFFICIAL_DARTS`` name a checkout of
lxy12357/MG_DARTS / sunsmarterjie/GOLD_NAS / quark0/darts, each is imported from it and checked
against its pin, and the official code itself is run (``benchmarks.official.counts``) and must give
the same count, and the same logits on shared weights; otherwise those tests are skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.official.counts import code_folder, genotypes_file
from mgas_core.evaluation_network import build_eval_network, count_architecture_params
from mgas_core.metrics import count_flops, count_params
from mgas_core.space.architecture import load_architecture
from mgas_core.space.builtin_architectures import BUILTIN_ARCHITECTURES
from mgas_core.space.importers import import_architecture

ROOT = Path(__file__).resolve().parents[2]

# (genotype, dataset): (classes, C, L, variant, input size) and (params, multiply-adds)
SETTINGS = {
    "cifar10": (10, 36, 20, "cifar", 32),
    "cifar100": (100, 36, 20, "cifar", 32),
    "imagenet": (1000, 48, 14, "imagenet", 224),
}
PINNED = {
    ("darts_v1", "cifar10"): (3_169_414, 500_987_520),
    ("darts_v1", "cifar100"): (3_221_344, 501_039_360),
    ("darts_v1", "imagenet"): (4_510_432, 505_864_704),
    ("darts_v2", "cifar10"): (3_349_342, 528_359_040),   # the paper: 3.3 M params
    ("darts_v2", "cifar100"): (3_401_272, 528_410_880),
    ("darts_v2", "imagenet"): (4_718_752, 529_911_552),  # the paper: 4.7 M (574 M mult-adds, docs/cli.md)
}


def test_every_published_genotype_is_pinned_on_every_paper_dataset():
    assert set(PINNED) == {(name, dataset) for name in BUILTIN_ARCHITECTURES for dataset in SETTINGS}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dataset"), sorted(PINNED))
def test_published_genotype_params_and_flops_are_pinned(name, dataset):
    classes, channels, layers, variant, size = SETTINGS[dataset]
    with torch.device("meta"):  # counted without allocating a weight
        net = build_eval_network(BUILTIN_ARCHITECTURES[name], classes, 3, channels, layers, True, variant)
    params, flops = PINNED[(name, dataset)]
    assert (count_params(net).dense, count_flops(net, (3, size, size))) == (params, flops)


# (format, genotype, C) -> official CIFAR-10 parameters (auxiliary head excluded) and, with the published
# weight masks (a file of the checkout), nonzero ones; obtained with `python -m benchmarks.official.counts`
CHECKOUTS = {"mg_darts": "MGAS_OFFICIAL_MGAS", "gold_nas": "MGAS_OFFICIAL_GOLD_NAS", "darts": "MGAS_OFFICIAL_DARTS"}
PUBLISHED = {
    ("mg_darts", "MG_DARTS", 44): 2_290_716,        # 14 cells; train.py --init_channels 44 (its default)
    ("mg_darts", "MG_DARTS_small", 24): 704_082,    # 8 cells; README: --init_channels 24
    ("gold_nas", "s1", 36): 3_442_006,              # 14 cells; train.py --init_channels 36 (its default)
    ("darts", "DARTS_V2", 36): 3_349_342,           # 20 cells; the builtin's pin above
}
PUBLISHED_MASKS = {("mg_darts", "MG_DARTS_small", 24): ("masks/mask_cifar10_darts_small.npy", 697_142),
                   ("mg_darts", "MG_DARTS", 44): ("masks/mask_cifar10_darts.npy", None)}  # absent from our copy


def _checkout(fmt: str) -> Path:
    repo = os.environ.get(CHECKOUTS[fmt])
    if not repo:
        pytest.skip(f"{CHECKOUTS[fmt]} does not name a checkout of the official {fmt} code")
    return Path(repo)


def _masks(repo: Path, key: tuple) -> tuple[Path | None, int | None]:
    name, nonzero = PUBLISHED_MASKS.get(key, (None, None))
    path = repo / name if name else None
    return (path, nonzero) if path is not None and path.is_file() and path.stat().st_size > 1 else (None, None)


# `mgas import-arch` output (README there); experiments/published_cifar10.yaml retrains them
IMPORTED = Path(__file__).resolve().parents[2] / "experiments" / "reference" / "architectures"


@pytest.mark.parametrize("key", [k for k in sorted(PUBLISHED) if k[0] != "darts"])
def test_published_architectures_as_imported_are_pinned(key):
    """Always, without a checkout: the imported architectures (experiments/reference/architectures) count as the
    official network does (the checkout tests below re-import them and run the official code)."""
    _, name, channels = key
    arch = load_architecture(IMPORTED / name / "arch.json")
    assert (arch.channels, arch.name) == (channels, name)
    assert count_architecture_params(arch, 10, channels=channels, layers=arch.layers).dense == PUBLISHED[key]


def test_the_published_darts_genotype_is_the_pinned_builtin():
    assert PUBLISHED[("darts", "DARTS_V2", 36)] == PINNED[("darts_v2", "cifar10")][0]


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_published_architectures_imported_from_the_checkout_are_pinned(key):
    fmt, name, channels = key
    repo = _checkout(fmt)
    masks, nonzero = _masks(repo, key)
    arch = import_architecture(fmt, genotypes_file(code_folder(repo, fmt)), name, channels, masks=masks)
    counted = count_architecture_params(arch, 10, channels=channels, layers=arch.layers)
    assert counted.dense == PUBLISHED[key]
    if nonzero is not None:
        assert counted.nonzero == nonzero


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_published_counts_match_the_official_code(key):
    fmt, name, channels = key
    repo = _checkout(fmt)
    masks, nonzero = _masks(repo, key)
    argv = ["--repo", str(repo), "--kind", fmt, "--arch", name, "--channels", str(channels), "--ours", "--json"]
    done = subprocess.run([sys.executable, "-m", "benchmarks.official.counts", *argv,
                           *(["--masks", str(masks)] if masks else [])],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["params"] == result["ours"]["params"] == PUBLISHED[key]
    if masks is not None:
        assert result["nonzero"] == result["ours"]["nonzero"]
        assert nonzero is None or result["nonzero"] == nonzero
    assert result["ours"]["max_abs_diff"] <= 1e-4  # the same function: 0.0 on the CPU this was written on
