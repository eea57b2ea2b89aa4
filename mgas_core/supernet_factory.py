"""Build the supernet a method searches on: the optimised one or the reference (``impl``).

Which methods may use the reference supernet is declared by each method
(``SearchMethod.reference_impl``) and checked when the settings are validated."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mgas_core.config import SearchSettings
from mgas_core.data import DatasetInfo
from mgas_core.reference_supernet import ReferenceSuperNetwork
from mgas_core.supernet import SuperNetwork


def build_supernet(
    settings: SearchSettings,
    primitives: Sequence[str],
    info: DatasetInfo,
    exit_cells: Sequence[int] = (),
) -> nn.Module:
    cls: type[nn.Module] = ReferenceSuperNetwork if settings.impl == "reference" else SuperNetwork
    net = cls(primitives, settings.channels, settings.layers, info.num_classes, info.in_channels,
              settings.nodes, 3, exit_cells, info.variant)
    if settings.checkpoint_cells:
        net.checkpoint_cells = True
    return net
