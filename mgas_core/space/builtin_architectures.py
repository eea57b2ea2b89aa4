"""The built-in architectures (DARTS's published genotypes) and the lookup of an architecture by
built-in name or file path."""

from __future__ import annotations

from pathlib import Path

from mgas_common.user_files import path_exists
from mgas_core.space.architecture import Architecture, ArchitectureError, CellArch, OpSpec, load_architecture


def _genotype(pairs: list[tuple[str, int]]) -> CellArch:
    ops = [OpSpec(op, inp, i // 2) for i, (op, inp) in enumerate(pairs)]
    return CellArch(ops, [2, 3, 4, 5])


DARTS_V1 = Architecture(
    name="DARTS_V1",
    normal=_genotype([("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                      ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)]),
    reduce=_genotype([("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                      ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)]),
    meta={"source": "Liu et al., DARTS (ICLR 2019), first order; official genotypes.py"},
)
DARTS_V2 = Architecture(
    name="DARTS_V2",
    normal=_genotype([("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                      ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)]),
    reduce=_genotype([("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                      ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]),
    meta={"source": "Liu et al., DARTS (ICLR 2019), second order; official genotypes.py"},
)

BUILTIN_ARCHITECTURES: dict[str, Architecture] = {"darts_v1": DARTS_V1, "darts_v2": DARTS_V2}


def resolve_architecture(name_or_path: str) -> Architecture:
    """A built-in name (``darts_v1``, ``darts_v2``; any case) or a path to an architecture JSON."""
    key = name_or_path.lower()
    if key in BUILTIN_ARCHITECTURES:
        return BUILTIN_ARCHITECTURES[key]
    if not name_or_path.endswith(".json") and not path_exists(Path(name_or_path)):
        builtins = ", ".join(BUILTIN_ARCHITECTURES)
        raise ArchitectureError(f"--arch {name_or_path!r} is neither a built-in ({builtins}) nor an existing file")
    return load_architecture(name_or_path)
