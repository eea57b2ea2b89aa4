"""The discrete architecture: one JSON format for every method, with optional weight masks.

Two forms share one schema:

* **genotype** (DARTS, MSG-DAS): one ``normal`` and one ``reduce`` cell, replicated over any
  number of layers and any width;
* **cells** (GOLD-NAS, MGAS): an explicit list of cells, each with its own ops, per-op channel
  widths (``{"mid": int, "out": [kept channel ids]}``) and pre-processing widths, at a fixed
  ``channels`` and ``layers``. Weight masks live beside the JSON in a safetensors file, keyed by
  the module path in the evaluation network (``cells.3.ops.5.pw1``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from mgas_core.errors import UserInputError
from mgas_core.io import atomic_write_text, load_tensor_file, save_tensor_file
from mgas_core.ops import KNOWN_OPS, OpWidths
from mgas_core.space import reduction_cells

FORMAT = "mgas-architecture"
FORMAT_VERSION = 1


class ArchitectureError(UserInputError):
    """An architecture description that cannot be built."""


@dataclass
class OpSpec:
    """One surviving op: ``op`` applied to state ``input`` and summed into intermediate ``node``."""

    op: str
    input: int
    node: int
    widths: OpWidths | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "input": self.input, "node": self.node}
        if self.widths:
            out["widths"] = self.widths
        return out


@dataclass
class CellArch:
    ops: list[OpSpec]
    concat: list[int]
    reduction: bool | None = None
    preprocess: list[OpWidths | None] = field(default_factory=lambda: [None, None])

    def uses_input(self, state: int) -> bool:
        return any(o.input == state for o in self.ops)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ops": [o.to_json() for o in self.ops], "concat": list(self.concat)}
        if self.reduction is not None:
            out["reduction"] = self.reduction
        if any(p for p in self.preprocess):
            out["preprocess"] = self.preprocess
        return out


@dataclass
class Architecture:
    """A discrete network description; see the module docstring for the two forms."""

    name: str
    nodes: int = 4
    normal: CellArch | None = None
    reduce: CellArch | None = None
    cells: list[CellArch] | None = None
    channels: int | None = None
    layers: int | None = None
    masks: dict[str, Tensor] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)
        if self.cells is not None:
            self.layers = len(self.cells)

    @property
    def is_genotype(self) -> bool:
        return self.cells is None

    def cells_for(self, layers: int) -> list[CellArch]:
        """The per-cell list of a network with ``layers`` cells."""
        if self.cells is not None:
            if layers != len(self.cells):
                raise ArchitectureError(
                    f"architecture {self.name!r} has {len(self.cells)} cells; cannot build {layers} layers"
                )
            return self.cells
        reductions = set(reduction_cells(layers))
        assert self.normal is not None and self.reduce is not None
        return [self.reduce if i in reductions else self.normal for i in range(layers)]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "name": self.name, "nodes": self.nodes}
        if self.cells is None:
            assert self.normal is not None and self.reduce is not None
            out["normal"] = self.normal.to_json()
            out["reduce"] = self.reduce.to_json()
        else:
            out["cells"] = [c.to_json() for c in self.cells]
        if self.channels is not None:
            out["channels"] = self.channels
        if self.layers is not None:
            out["layers"] = self.layers
        if self.meta:
            out["meta"] = self.meta
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (JSON) and, when there are weight masks, ``<stem>.masks.safetensors``."""
        path = Path(path)
        data = self.to_json()
        if self.masks:
            mask_path = path.with_name(path.stem + ".masks.safetensors")
            save_tensor_file(self.masks, mask_path)
            data["masks"] = mask_path.name
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")
        return path


def _parse_cell(raw: Any, where: str) -> CellArch:
    if not isinstance(raw, dict):
        raise ArchitectureError(f"{where}: expected an object, got {type(raw).__name__}")
    ops_raw = raw.get("ops")
    if not isinstance(ops_raw, list):
        raise ArchitectureError(f"{where}.ops: expected a list of ops")
    ops = []
    for k, o in enumerate(ops_raw):
        if not isinstance(o, dict) or not {"op", "input", "node"} <= set(o):
            raise ArchitectureError(f"{where}.ops[{k}]: expected {{op, input, node[, widths]}}, got {o!r}")
        ops.append(OpSpec(str(o["op"]), int(o["input"]), int(o["node"]), o.get("widths")))
    concat = raw.get("concat")
    if not isinstance(concat, list):
        raise ArchitectureError(f"{where}.concat: expected a list of state indices")
    pre = raw.get("preprocess", [None, None])
    if not isinstance(pre, list) or len(pre) != 2:
        raise ArchitectureError(f"{where}.preprocess: expected a list of two width objects (or nulls)")
    return CellArch(ops, [int(c) for c in concat], raw.get("reduction"), pre)


def architecture_from_json(data: Any, base_dir: Path | None = None) -> Architecture:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArchitectureError(f"not an architecture file: expected \"format\": \"{FORMAT}\"")
    if data.get("version") != FORMAT_VERSION:
        raise ArchitectureError(f"unsupported architecture version {data.get('version')!r}; supported: 1")
    masks = None
    if data.get("masks"):
        mask_path = (base_dir or Path(".")) / str(data["masks"])
        if not mask_path.is_file():
            raise ArchitectureError(f"weight-mask file {mask_path} named by the architecture does not exist")
        masks = load_tensor_file(mask_path)
    if "cells" in data:
        cells = [_parse_cell(c, f"cells[{i}]") for i, c in enumerate(data["cells"])]
        return Architecture(
            name=str(data.get("name", "arch")),
            nodes=int(data.get("nodes", 4)),
            cells=cells,
            channels=data.get("channels"),
            layers=data.get("layers", len(cells)),
            masks=masks,
            meta=data.get("meta", {}),
        )
    if "normal" not in data or "reduce" not in data:
        raise ArchitectureError("an architecture needs either 'cells' or both 'normal' and 'reduce'")
    return Architecture(
        name=str(data.get("name", "arch")),
        nodes=int(data.get("nodes", 4)),
        normal=_parse_cell(data["normal"], "normal"),
        reduce=_parse_cell(data["reduce"], "reduce"),
        channels=data.get("channels"),
        layers=data.get("layers"),
        masks=masks,
        meta=data.get("meta", {}),
    )


def load_architecture(path: str | os.PathLike[str]) -> Architecture:
    path = Path(path)
    if not path.is_file():
        raise ArchitectureError(f"architecture file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchitectureError(f"architecture file {path} is not valid JSON: {exc}") from exc
    return architecture_from_json(data, base_dir=path.parent)


def validate(arch: Architecture) -> None:
    if arch.nodes < 1:
        raise ArchitectureError(f"nodes must be >= 1, got {arch.nodes}")
    if arch.cells is None:
        if arch.normal is None or arch.reduce is None:
            raise ArchitectureError("a genotype needs a 'normal' and a 'reduce' cell")
        cells = [("normal", arch.normal), ("reduce", arch.reduce)]
    else:
        if not arch.cells:
            raise ArchitectureError("'cells' is empty")
        if arch.channels is None:
            raise ArchitectureError("a per-cell architecture must record 'channels'")
        expected = set(reduction_cells(len(arch.cells)))
        for i, c in enumerate(arch.cells):
            if c.reduction is not None and c.reduction != (i in expected):
                raise ArchitectureError(f"cells[{i}].reduction={c.reduction} but cell {i} of {len(arch.cells)} "
                                        f"{'is' if i in expected else 'is not'} a reduction cell")
        cells = [(f"cells[{i}]", c) for i, c in enumerate(arch.cells)]
    for where, cell in cells:
        for k, o in enumerate(cell.ops):
            if o.op not in KNOWN_OPS or o.op == "none":
                allowed = ", ".join(x for x in KNOWN_OPS if x != "none")
                raise ArchitectureError(f"{where}.ops[{k}].op={o.op!r} is not an operation; allowed: {allowed}")
            if not 0 <= o.node < arch.nodes:
                raise ArchitectureError(f"{where}.ops[{k}].node={o.node} outside 0..{arch.nodes - 1}")
            if not 0 <= o.input < o.node + 2:
                raise ArchitectureError(f"{where}.ops[{k}].input={o.input} must be an earlier state (< {o.node + 2})")
        live = {o.node + 2 for o in cell.ops}
        if not cell.concat:
            raise ArchitectureError(f"{where}.concat is empty")
        for s in cell.concat:
            if s not in live:
                raise ArchitectureError(f"{where}.concat names state {s}, which has no incoming op")
        for k, o in enumerate(cell.ops):
            if o.input >= 2 and o.input not in live:
                raise ArchitectureError(f"{where}.ops[{k}] reads state {o.input}, which has no incoming op")


def prune_dead_ops(ops: list[OpSpec]) -> tuple[list[OpSpec], list[int]]:
    """Drop ops that read from nodes without inputs (repeatedly); return live ops and concat."""
    ops = list(ops)
    while True:
        live = {o.node + 2 for o in ops}
        kept = [o for o in ops if o.input < 2 or o.input in live]
        if len(kept) == len(ops):
            break
        ops = kept
    concat = sorted({o.node + 2 for o in ops})
    if not concat:
        raise ArchitectureError("every operation of a cell was pruned; the cell has no output")
    return ops, concat


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
    if not name_or_path.endswith(".json") and not Path(name_or_path).exists():
        builtins = ", ".join(BUILTIN_ARCHITECTURES)
        raise ArchitectureError(f"--arch {name_or_path!r} is neither a built-in ({builtins}) nor an existing file")
    return load_architecture(name_or_path)
