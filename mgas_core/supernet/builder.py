"""Build the supernet a method searches on: the optimised one or the reference (``impl``).

Which methods may use the reference supernet is declared by each method
(``SearchMethod.reference_impl``) and checked when the settings are validated."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mgas_core.data import DatasetInfo
from mgas_core.nn.ops import DARTS_SEARCH, OpStyle
from mgas_core.settings.run import SearchSettings
from mgas_core.supernet.fast import SuperNetwork
from mgas_core.supernet.reference import ReferenceSuperNetwork


def build_supernet(
    settings: SearchSettings,
    primitives: Sequence[str],
    info: DatasetInfo,
    exit_cells: Sequence[int] = (),
    style: OpStyle = DARTS_SEARCH,
) -> nn.Module:
    net: nn.Module
    if settings.impl == "reference":
        net = ReferenceSuperNetwork(primitives, settings.channels, settings.layers, info.num_classes,
                                    info.in_channels, settings.nodes, 3, exit_cells, info.variant)
    else:
        net = SuperNetwork(primitives, settings.channels, settings.layers, info.num_classes, info.in_channels,
                           settings.nodes, 3, exit_cells, info.variant, style, info.image_size)
    if settings.checkpoint_cells:
        net.checkpoint_cells = True
    return net
