"""The discrete architecture: one JSON format for every method, with optional weight masks.

Two forms share one schema:

* **genotype** (DARTS, MSG-DAS): one ``normal`` and one ``reduce`` cell, replicated over any
  number of layers and any width;
* **cells** (GOLD-NAS, MGAS, H-DAS): an explicit list of cells, each with its own ops, per-op channel
  widths (``{"mid": int, "out": [kept channel ids]}``) and pre-processing widths, at a fixed
  ``channels`` and ``layers`` (cells without widths, as H-DAS's stage-specific cells, may leave
  ``channels`` unset: they build at any width). Weight masks live beside the JSON in a safetensors file, keyed by
  the module path in the evaluation network (``cells.3.ops.5.pw1``).

An optional ``stages`` (:mod:`mgas_core.space.stages`) sets the stage level: the normal cells of each
stage (a reduction cell between two stages) and, for H-DAS, the DAG that connects them; without
it the network has reduction cells at L//3 and 2L//3 and each cell reads the two before it.

An optional ``style`` (:class:`NetworkStyle`) records where a published architecture's own
``model.py`` builds the evaluation network differently from DARTS's (``mgas import-arch``,
:mod:`mgas_core.space.importers`); the project's own architectures use the defaults.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from mgas_common.errors import UserInputError, format_validation_error
from mgas_common.user_files import load_json, read_input_text
from mgas_core.files.atomic import atomic_write_text
from mgas_core.files.checkpoints import load_tensor_file, save_tensor_file
from mgas_core.nn.ops import KNOWN_OPS, OpStyle, OpWidths
from mgas_core.settings.strict import MAX_CHANNELS, MAX_LAYERS, MAX_NODES
from mgas_core.space.stages import StageArch, StageError, StageFile, stage_from_file, stage_layout, validate_stages
from mgas_core.space.topology import reduction_cells

FORMAT = "mgas-architecture"
FORMAT_VERSION = 1


class ArchitectureError(UserInputError):
    """An architecture description that cannot be built."""


@dataclass(frozen=True)
class NetworkStyle:
    """How the evaluation network builds what a published ``model.py`` builds differently from
    DARTS's ``NetworkCIFAR`` (the defaults, used by every architecture the project derives)."""

    bn_affine: bool = True
    """BN of the pre-processing and of the ops has a weight and a bias (the GOLD-NAS code's: not)."""
    pool_bn: bool = False
    """A pool is followed by a BN (MG-DARTS's and the GOLD-NAS code's ``cifar_train/model.py``)."""
    identity_bn: bool = False
    """The stride-1 skip is a BN of its input (the GOLD-NAS code's ``Identity``)."""
    unused_preprocess: bool = False
    """Both pre-processing convs exist even where the cell reads only one input (every official
    ``Cell``; the project drops an unused one). Unread, they change the parameter count only."""

    @property
    def op_style(self) -> OpStyle:
        return OpStyle(affine=self.bn_affine, pool_bn=self.pool_bn, identity_bn=self.identity_bn)

    def to_json(self) -> dict[str, bool]:
        """The fields that differ from the defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


DEFAULT_STYLE = NetworkStyle()


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
    style: NetworkStyle = DEFAULT_STYLE
    stages: list[StageArch] | None = None

    def __post_init__(self) -> None:
        validate(self)
        if self.cells is not None:
            self.layers = len(self.cells)
        elif self.stages is not None:
            self.layers = stage_layout(self.stages)[0]

    @property
    def has_dag_stages(self) -> bool:
        """True for an H-DAS stage-level architecture (cells connected by a DAG in each stage)."""
        return self.stages is not None and self.stages[0].is_dag

    def reductions(self, layers: int) -> tuple[int, ...]:
        """Indices of the reduction cells of this architecture's ``layers``-cell network."""
        if self.stages is None:
            return reduction_cells(layers)
        count, reductions = stage_layout(self.stages)
        if layers != count:
            raise ArchitectureError(f"architecture {self.name!r} has {count} cells in its stages; cannot build "
                                    f"{layers} layers")
        return reductions

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
        reductions = set(self.reductions(layers))
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
        if self.stages is not None:
            out["stages"] = [s.to_json() for s in self.stages]
        if self.style != DEFAULT_STYLE:
            out["style"] = self.style.to_json()
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


# --- the JSON file format, validated field by field ----------------------------------------------

MAX_CELL_OPS = 1_000
MAX_WIDTH = 4 * MAX_CHANNELS  # a cell's width after two reductions


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _WidthsFile(_FileModel):
    mid: int | None = Field(None, ge=1, le=MAX_WIDTH)
    out: list[Annotated[int, Field(ge=0, lt=MAX_WIDTH)]] | None = Field(None, min_length=1, max_length=MAX_WIDTH)


class _OpFile(_FileModel):
    op: str = Field(max_length=64)
    input: int = Field(ge=0, le=MAX_NODES + 1)
    node: int = Field(ge=0, lt=MAX_NODES)
    widths: _WidthsFile | None = None


class _StyleFile(_FileModel):
    bn_affine: bool = True
    pool_bn: bool = False
    identity_bn: bool = False
    unused_preprocess: bool = False


class _CellFile(_FileModel):
    ops: list[_OpFile] = Field(max_length=MAX_CELL_OPS)
    concat: list[Annotated[int, Field(ge=0, le=MAX_NODES + 1)]] = Field(max_length=MAX_NODES)
    reduction: bool | None = None
    preprocess: list[_WidthsFile | None] = Field([None, None], min_length=2, max_length=2)


class _ArchFile(_FileModel):
    format: str
    version: int
    name: str = Field("arch", max_length=200)
    nodes: int = Field(4, ge=1, le=MAX_NODES)
    normal: _CellFile | None = None
    reduce: _CellFile | None = None
    cells: list[_CellFile] | None = Field(None, min_length=1, max_length=MAX_LAYERS)
    channels: int | None = Field(None, ge=2, le=MAX_CHANNELS)
    layers: int | None = Field(None, ge=1, le=MAX_LAYERS)
    masks: str | None = Field(None, min_length=1, max_length=255)
    meta: dict[str, Any] = {}
    style: _StyleFile | None = None
    stages: list[StageFile] | None = Field(None, min_length=1)


def _widths(raw: _WidthsFile | None) -> OpWidths | None:
    return raw.model_dump(exclude_none=True) if raw is not None else None


def _cell(raw: _CellFile) -> CellArch:
    ops = [OpSpec(o.op, o.input, o.node, _widths(o.widths)) for o in raw.ops]
    return CellArch(ops, list(raw.concat), raw.reduction, [_widths(w) for w in raw.preprocess])


def mask_file_path(base_dir: Path | None, name: str) -> Path:
    """The weight-mask file ``name`` inside the architecture's own folder ``base_dir``: a
    relative path that, symbolic links followed, stays inside that folder; anything else is refused."""
    if base_dir is None:
        raise ArchitectureError("masks: a weight-mask file is named, but the architecture was not read from a folder")
    relative = Path(name)
    if "\x00" in name or relative.is_absolute() or ".." in relative.parts:
        raise ArchitectureError(f"masks: {name!r} must be a file name inside the architecture's folder {base_dir}")
    folder = base_dir.resolve()
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder):
        raise ArchitectureError(f"masks: {name!r} leads outside the architecture's folder {base_dir}")
    if not path.is_file():
        raise ArchitectureError(f"masks: weight-mask file {base_dir / relative} named by the architecture "
                                "does not exist")
    return path


def architecture_from_json(data: Any, base_dir: Path | None = None, where: str = "architecture") -> Architecture:
    """An :class:`Architecture` from its JSON form; ``base_dir`` is the folder its mask file lives in."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArchitectureError(f"{where}: not an architecture file: expected \"format\": \"{FORMAT}\"")
    if data.get("version") != FORMAT_VERSION:
        raise ArchitectureError(f"{where}: unsupported architecture version {data.get('version')!r}; supported: 1")
    try:
        raw = _ArchFile.model_validate(data)
    except ValidationError as exc:
        raise ArchitectureError(f"{where}: {format_validation_error(exc)}") from None
    masks = load_tensor_file(mask_file_path(base_dir, raw.masks)) if raw.masks else None
    try:
        return _architecture(raw, masks)
    except ArchitectureError as exc:
        raise ArchitectureError(f"{where}: {exc}") from None


def _architecture(raw: _ArchFile, masks: dict[str, Tensor] | None) -> Architecture:
    style = NetworkStyle(**raw.style.model_dump()) if raw.style is not None else DEFAULT_STYLE
    stages = [stage_from_file(s) for s in raw.stages] if raw.stages is not None else None
    if raw.cells is not None:
        if raw.normal is not None or raw.reduce is not None:
            raise ArchitectureError("give either 'cells' or 'normal' and 'reduce', not both")
        if raw.layers is not None and raw.layers != len(raw.cells):
            raise ArchitectureError(f"layers={raw.layers} but 'cells' lists {len(raw.cells)} cells")
        return Architecture(name=raw.name, nodes=raw.nodes, cells=[_cell(c) for c in raw.cells],
                            channels=raw.channels, layers=len(raw.cells), masks=masks, meta=raw.meta, style=style,
                            stages=stages)
    if raw.normal is None or raw.reduce is None:
        raise ArchitectureError("an architecture needs either 'cells' or both 'normal' and 'reduce'")
    if stages is not None:
        try:
            validate_stages(stages)
        except StageError as exc:
            raise ArchitectureError(str(exc)) from None
    if stages is not None and raw.layers is not None and raw.layers != stage_layout(stages)[0]:
        raise ArchitectureError(f"layers={raw.layers} but 'stages' lay out {stage_layout(stages)[0]} cells")
    return Architecture(name=raw.name, nodes=raw.nodes, normal=_cell(raw.normal), reduce=_cell(raw.reduce),
                        channels=raw.channels, layers=raw.layers, masks=masks, meta=raw.meta, style=style,
                        stages=stages)


def load_architecture(path: str | os.PathLike[str]) -> Architecture:
    path = Path(path)
    try:
        text = read_input_text(path, "architecture file")
    except UserInputError as exc:
        raise ArchitectureError(str(exc)) from None
    try:
        data = load_json(text, f"architecture file {path}")
    except UserInputError as exc:
        raise ArchitectureError(str(exc)) from None
    return architecture_from_json(data, base_dir=path.parent, where=str(path))


def validate(arch: Architecture) -> None:
    if arch.nodes < 1:
        raise ArchitectureError(f"nodes must be >= 1, got {arch.nodes}")
    if arch.stages is not None:
        try:
            validate_stages(arch.stages)
        except StageError as exc:
            raise ArchitectureError(str(exc)) from None
        _check_staged_cells(arch)
    if arch.cells is None:
        if arch.normal is None or arch.reduce is None:
            raise ArchitectureError("a genotype needs a 'normal' and a 'reduce' cell")
        cells = [("normal", arch.normal), ("reduce", arch.reduce)]
    else:
        if not arch.cells:
            raise ArchitectureError("'cells' is empty")
        if arch.channels is None and (arch.masks or any(_has_widths(c) for c in arch.cells)):
            raise ArchitectureError("a per-cell architecture with channel widths or weight masks must record "
                                    "'channels'")
        expected = set(arch.reductions(len(arch.cells)))
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


def _has_widths(cell: CellArch) -> bool:
    return any(o.widths for o in cell.ops) or any(p for p in cell.preprocess)


def _check_staged_cells(arch: Architecture) -> None:
    """A DAG of cells sums cell outputs: every normal cell of a stage writes the same number of
    nodes, and no cell carries removed filters (the DAG's states have one width per stage)."""
    assert arch.stages is not None
    count, _ = stage_layout(arch.stages)
    if arch.cells is not None and len(arch.cells) != count:
        raise ArchitectureError(f"'stages' lay out {count} cells but 'cells' lists {len(arch.cells)}")
    if not arch.has_dag_stages:
        return
    cells = arch.cells if arch.cells is not None else [c for c in (arch.normal, arch.reduce) if c is not None]
    if any(_has_widths(c) for c in cells) or arch.masks:
        raise ArchitectureError("a stage-level DAG takes cells without channel widths or weight masks")
    widths = {len(c.concat) for c in cells}
    if len(widths) > 1:
        raise ArchitectureError("a stage-level DAG needs cells that all concatenate the same number of nodes, "
                                f"got {sorted(widths)}")
