"""Pinned complexity, as pycls pins its models': every published genotype's parameters (auxiliary
head excluded, as the official DARTS counter) and multiply-adds (torch's FlopCounterMode / 2) at
the papers' evaluation settings. A change to an op, the cell wiring, the stem or the counters that
moves any of these numbers fails here, with the number it moved to."""

from __future__ import annotations

import pytest
import torch

from mgas_core.evaluation_network import build_eval_network
from mgas_core.metrics import count_flops, count_params
from mgas_core.space.architecture import BUILTIN_ARCHITECTURES

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
