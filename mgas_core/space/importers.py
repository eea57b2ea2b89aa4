"""Published architectures brought in as data: a genotypes source file is parsed with :mod:`ast`,
never executed, and the literal arguments of the ``Genotype(...)`` call assigned to a name become an
:class:`~mgas_core.space.architecture.Architecture`; MG-DARTS's weight-mask files become its masks.

Formats (``mgas import-arch --format``):

* ``darts`` (quark0/darts ``cnn/genotypes.py``): ``Genotype(normal=[(op, input), ...],
  normal_concat=..., reduce=..., reduce_concat=...)``, two ops per node. Imported as a genotype
  (one normal and one reduction cell, replicated), recorded with its ``channels`` and ``layers``.
* ``gold_nas`` (sunsmarterjie/GOLD_NAS ``cifar_train/genotypes.py``): ``Genotype(gene=[per cell:
  [(op, from_state, to_state), ...]], concat=range(2, 6))``, any number of ops per edge.
* ``mg_darts`` (lxy12357/MG_DARTS ``cifar_train/genotypes``): the same with per-op widths,
  ``(op, from, to, [widths])``: ``[in, mid, out]`` for a sep conv, ``[in, out]`` for a dil conv,
  ``[width]`` for a pool or a skip. A state's width is the one every op reading or writing it gives
  (the official ``Cell`` builds the pre-processing at state 0's and 1's, ``C`` where no op reads
  one); the file must agree with itself, as the official network's forward pass needs.

Per-cell formats take as many cells as the gene lists, reductions at L//3 and 2L//3, each cell
concatenating the nodes its ops write (as the official ``Cell``; the ``concat`` argument is read but
unused there too). Each format's :class:`NetworkStyle` is what its ``model.py`` builds. A width
``w`` below the cell's ``C`` becomes the channel ids ``ids(w)``: the first ``ceil(w/2)`` ids of each
half of ``0 .. C-1`` (:func:`width_ids`), so a FactorizedReduce of width ``w`` splits as the
official one does (``w/2`` plain, ``w/2`` shifted).

Masks (``--masks``): a ``torch.save``d nested list, one list per cell, one list per op in the
gene's order, holding one tensor per masked conv of the op (a sep conv's depthwise, pointwise,
depthwise, pointwise; a dil conv's depthwise, pointwise; an empty list for no mask and for every
other op), read with ``torch.load(weights_only=True)`` and checked against the network's conv shapes.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mgas_common.errors import UserInputError
from mgas_common.user_files import read_input_bytes, read_input_text
from mgas_core.evaluation_network import build_eval_network
from mgas_core.nn.maskable_conv import MaskableConv2d
from mgas_core.nn.ops import KNOWN_OPS, OpWidths
from mgas_core.settings.strict import MAX_CHANNELS, MAX_LAYERS, MAX_NODES
from mgas_core.space.architecture import Architecture, ArchitectureError, CellArch, NetworkStyle, OpSpec
from mgas_core.space.topology import reduction_cells

FORMATS = ("darts", "gold_nas", "mg_darts")
FIELDS = {"darts": ("normal", "normal_concat", "reduce", "reduce_concat"), "gold_nas": ("gene", "concat"),
          "mg_darts": ("gene", "concat")}
STYLES = {
    "darts": NetworkStyle(unused_preprocess=True),
    "gold_nas": NetworkStyle(bn_affine=False, pool_bn=True, identity_bn=True, unused_preprocess=True),
    "mg_darts": NetworkStyle(pool_bn=True, unused_preprocess=True),
}
"""What each format's official ``model.py`` builds (see :class:`NetworkStyle`)."""
DEFAULT_DARTS_LAYERS = 20
"""``darts`` genotypes are replicated; without ``--layers`` they get the paper's CIFAR depth."""
OFFICIAL_NODES = 4  # the official per-cell Cells loop over range(4) nodes
OPS = tuple(op for op in KNOWN_OPS if op != "none")
MASKED_CONVS = {"sep": ("dw1", "pw1", "dw2", "pw2"), "dil": ("dw", "pw")}
MAX_MASK_BYTES = 512 * 2**20


class _Refused(Exception):
    """What is wrong, before the file and the name are put in front of it."""


# --- the genotypes file, read as data ------------------------------------------------------------

def read_genotype(path: Path, name: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """The literal arguments (by field) of the ``Genotype(...)`` call assigned to ``name`` at the top
    level of ``path``, following plain aliases (``DARTS = DARTS_V2``)."""
    text = read_input_text(path, "genotypes file")
    try:
        tree = ast.parse(text, str(path))
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ArchitectureError(f"{path}: not a Python source file ({exc.__class__.__name__}: "
                                f"{getattr(exc, 'msg', exc)})") from None
    assigned: dict[str, ast.expr] = {}
    for stmt in tree.body:  # top-level assignments only; the last one to a name wins, as when run
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                assigned[target.id] = value
    try:
        return _call_fields(_resolve(assigned, name), fields)
    except _Refused as exc:
        raise ArchitectureError(f"{path}: {name}: {exc}") from None


def _is_genotype_call(node: ast.expr) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return (isinstance(func, ast.Name) and func.id == "Genotype") or (
        isinstance(func, ast.Attribute) and func.attr == "Genotype")


def _resolve(assigned: dict[str, ast.expr], name: str) -> ast.Call:
    seen = [name]
    node = assigned.get(name)
    while isinstance(node, ast.Name) and node.id in assigned and node.id not in seen:
        seen.append(node.id)
        node = assigned[node.id]
    if node is None:
        found = sorted(n for n, v in assigned.items() if _is_genotype_call(v))
        shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")
        raise _Refused(f"no top-level assignment to this name; the file's genotypes: {shown or 'none'}")
    if not _is_genotype_call(node):
        raise _Refused(f"is not a Genotype(...) call: {_source(node)}")
    return node  # type: ignore[return-value]


def _source(node: ast.AST, limit: int = 60) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call_fields(call: ast.Call, fields: tuple[str, ...]) -> dict[str, Any]:
    if len(call.args) > len(fields) or any(isinstance(a, ast.Starred) for a in call.args):
        raise _Refused(f"Genotype(...) takes the fields {', '.join(fields)}; got {len(call.args)} positional "
                       "arguments")
    raw: dict[str, ast.expr] = dict(zip(fields, call.args))
    for kw in call.keywords:
        if kw.arg is None or kw.arg not in fields:
            raise _Refused(f"Genotype(...) has no field {kw.arg or '**'!s}; its fields: {', '.join(fields)}")
        if kw.arg in raw:
            raise _Refused(f"field {kw.arg!r} given twice")
        raw[kw.arg] = kw.value
    missing = [f for f in fields if f not in raw]
    if missing:
        raise _Refused(f"Genotype(...) lacks the field {missing[0]!r}")
    return {f: _literal(raw[f], f) for f in fields}


def _literal(node: ast.expr, where: str) -> Any:
    """``node``'s value when it is a literal or a ``range(...)`` of integer literals; nothing runs."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        if node.keywords or not 1 <= len(node.args) <= 3:
            raise _Refused(f"{where}: range(...) takes 1 to 3 integers: {_source(node)}")
        bounds = [_literal(a, where) for a in node.args]
        if not all(type(b) is int for b in bounds) or (len(bounds) == 3 and bounds[2] == 0):
            raise _Refused(f"{where}: range(...) takes non-zero-step integers: {_source(node)}")
        values = range(*bounds)
        if len(values) > MAX_NODES + 2:
            raise _Refused(f"{where}: {_source(node)} is longer than a cell ({MAX_NODES + 2} states)")
        return list(values)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise _Refused(f"{where} is not a literal: {_source(node)}") from None


# --- the three formats ---------------------------------------------------------------------------

def width_ids(width: int, channels: int) -> list[int] | None:
    """The channel ids of a ``width``-wide state in a ``channels``-wide cell (None: all of them):
    the first ``ceil(width/2)`` of the lower half, the first ``floor(width/2)`` of the upper one."""
    if width == channels:
        return None
    first = (width + 1) // 2
    return list(range(first)) + list(range(channels // 2, channels // 2 + width - first))


def _op_name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Refused(f"{where}: the operation must be a string, got {value!r:.40}")
    if value not in OPS:
        raise _Refused(f"{where}: unknown operation {value!r:.40}; known: {', '.join(OPS)}")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _Refused(f"{where} must be an integer between {low} and {high}, got {value!r:.40}")
    return value


def _items(value: Any, where: str, limit: int) -> list[Any]:
    if not isinstance(value, (list, tuple)) or not value or len(value) > limit:
        raise _Refused(f"{where} must be a non-empty list (at most {limit} entries), got {value!r:.60}")
    return list(value)


def _concat(value: Any, where: str, nodes: int) -> list[int]:
    return [_int(s, f"{where}[{k}]", 2, nodes + 1) for k, s in enumerate(_items(value, where, MAX_NODES))]


def _darts_cell(pairs: Any, concat: Any, field: str) -> CellArch:
    pairs = _items(pairs, field, 2 * MAX_NODES)
    if len(pairs) % 2:
        raise _Refused(f"{field} lists {len(pairs)} ops; a DARTS genotype has two per node")
    ops = []
    for k, pair in enumerate(pairs):
        where = f"{field}[{k}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise _Refused(f"{where} must be an (op, input) pair, got {pair!r:.60}")
        ops.append(OpSpec(_op_name(pair[0], where), _int(pair[1], f"{where} input", 0, k // 2 + 1), k // 2))
    return CellArch(ops, _concat(concat, f"{field}_concat", len(pairs) // 2))


def _gene_op(item: Any, where: str, with_widths: bool) -> tuple[str, int, int, list[int]]:
    arity = 4 if with_widths else 3
    shape = "(op, from, to, [widths])" if with_widths else "(op, from, to)"
    if not isinstance(item, (list, tuple)) or len(item) != arity:
        raise _Refused(f"{where} must be a tuple {shape}, got {item!r:.60}")
    op = _op_name(item[0], where)
    to = _int(item[2], f"{where} to", 2, OFFICIAL_NODES + 1)
    source = _int(item[1], f"{where} from", 0, to - 1)
    widths: list[int] = []
    if with_widths:
        need = 3 if op.startswith("sep_conv") else 2 if op.startswith("dil_conv") else 1
        raw = item[3]
        if not isinstance(raw, (list, tuple)) or len(raw) != need:
            raise _Refused(f"{where}: {op} takes {need} widths, got {raw!r:.40}")
        widths = [_int(w, f"{where} width", 1, 4 * MAX_CHANNELS) for w in raw]
    return op, source, to, widths


def _gene_cell(ops: list[tuple[str, int, int, list[int]]], channels: int, reduction: bool,
               where: str) -> CellArch:
    """One per-cell cell; ``widths`` empty: every state ``channels`` wide (GOLD-NAS)."""
    state: dict[int, tuple[int, int]] = {}  # state -> (width, the op that gave it)
    for k, (_, source, to, widths) in enumerate(ops):
        for s, w in ((source, widths[0]), (to, widths[-1])) if widths else ():
            if state.setdefault(s, (w, k))[0] != w:
                raise _Refused(f"{where}: state {s} is {state[s][0]} channels wide for op {state[s][1]} but {w} "
                               f"for op {k}; the official network cannot run that")
            if w > channels:
                raise _Refused(f"{where}: op {k} makes state {s} {w} channels wide; the cell has {channels}")
    specs = []
    for k, (op, source, to, widths) in enumerate(ops):
        spec: OpWidths = {}
        strided_skip = op == "skip_connect" and reduction and source < 2
        if widths and (op.startswith(("sep_conv", "dil_conv")) or strided_skip):
            if strided_skip and widths[0] % 2:
                raise _Refused(f"{where}: op {k} is a stride-2 skip (FactorizedReduce) of odd width {widths[0]}")
            if op.startswith("sep_conv") and widths[1] != channels:
                if widths[1] > channels:
                    raise _Refused(f"{where}: op {k}'s middle width {widths[1]} exceeds the cell's {channels}")
                spec["mid"] = widths[1]
            out = width_ids(widths[-1], channels)
            if out is not None:
                spec["out"] = out
        specs.append(OpSpec(op, source, to - 2, spec or None))
    pre: list[OpWidths | None] = []
    for s in (0, 1):
        ids = width_ids(state[s][0], channels) if s in state else None
        pre.append({"out": ids} if ids is not None else None)
    return CellArch(specs, sorted({to for _, _, to, _ in ops}), reduction, pre)


def _gene_cells(gene: Any, channels: int, with_widths: bool) -> list[CellArch]:
    cells_raw = _items(gene, "gene", MAX_LAYERS)
    reductions = set(reduction_cells(len(cells_raw)))
    cells, c = [], channels
    for i, raw in enumerate(cells_raw):
        if i in reductions:
            c *= 2
        items = _items(raw, f"gene[{i}]", OFFICIAL_NODES * (OFFICIAL_NODES + 3) // 2 * len(OPS))
        ops = [_gene_op(item, f"gene[{i}][{k}]", with_widths) for k, item in enumerate(items)]
        unwritten = sorted(set(range(2, OFFICIAL_NODES + 2)) - {to for _, _, to, _ in ops})
        if with_widths and unwritten:  # its width sums all four nodes' widths, written or not
            raise _Refused(f"cell {i}: no op writes state {unwritten[0]}; the official network cannot run that")
        cells.append(_gene_cell(ops, c, i in reductions, f"cell {i}"))
    return cells


def import_architecture(fmt: str, path: Path, name: str, channels: int, layers: int | None = None,
                        masks: Path | None = None) -> Architecture:
    """Genotype ``name`` of the ``fmt`` genotypes file ``path`` at ``channels`` initial channels
    (``layers``: darts only, default :data:`DEFAULT_DARTS_LAYERS`; per-cell formats have their
    own), with the MG-DARTS weight masks of ``masks``."""
    if fmt not in FORMATS:
        raise UserInputError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if not (2 <= channels <= MAX_CHANNELS and channels % 2 == 0):
        raise UserInputError(f"--channels must be an even number between 2 and {MAX_CHANNELS} (got {channels})")
    if layers is not None and not 1 <= layers <= MAX_LAYERS:
        raise UserInputError(f"--layers must be between 1 and {MAX_LAYERS} (got {layers})")
    if masks is not None and fmt != "mg_darts":
        raise UserInputError(f"--masks: only the mg_darts format has weight masks, not {fmt}")
    values = read_genotype(path, name, FIELDS[fmt])
    meta = {"source": f"{path.name}:{name}", "format": fmt}
    try:
        if fmt == "darts":
            normal = _darts_cell(values["normal"], values["normal_concat"], "normal")
            reduce = _darts_cell(values["reduce"], values["reduce_concat"], "reduce")
            if len(normal.ops) != len(reduce.ops):
                raise _Refused(f"normal has {len(normal.ops) // 2} nodes, reduce {len(reduce.ops) // 2}; "
                               "one node count per architecture")
            arch = Architecture(name, len(normal.ops) // 2, normal, reduce, channels=channels,
                                layers=layers or DEFAULT_DARTS_LAYERS, meta=meta, style=STYLES[fmt])
        else:
            cells = _gene_cells(values["gene"], channels, fmt == "mg_darts")
            if layers is not None and layers != len(cells):
                raise _Refused(f"--layers {layers}: the genotype lists {len(cells)} cells (its own depth)")
            arch = Architecture(name, OFFICIAL_NODES, cells=cells, channels=channels, meta=meta, style=STYLES[fmt])
    except (_Refused, ArchitectureError) as exc:
        raise ArchitectureError(f"{path}: {name}: {exc}") from None
    if masks is not None:
        arch.masks = read_masks(masks, arch)
        arch.meta["masks_source"] = masks.name
    return arch


# --- MG-DARTS weight masks -----------------------------------------------------------------------

def _conv_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        net = build_eval_network(arch, 10, auxiliary=False)
    return {name: tuple(m.weight.shape) for name, m in net.named_modules() if isinstance(m, MaskableConv2d)}


def read_masks(path: Path, arch: Architecture) -> dict[str, Tensor]:
    """The masks of an MG-DARTS masks file, keyed by conv path (``cells.3.ops.5.pw1``), checked
    against ``arch``'s convs; anything else is refused in one line naming the file and the place."""
    data = read_input_bytes(path, "masks file", MAX_MASK_BYTES)
    try:
        nested = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler and torch raise many types for a file that is not one
        raise ArchitectureError(f"{path}: not a torch.save'd list of masks ({exc.__class__.__name__}: "
                                f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    try:
        return _masks(nested, arch)
    except _Refused as exc:
        raise ArchitectureError(f"{path}: {exc}") from None


def _masks(nested: Any, arch: Architecture) -> dict[str, Tensor]:
    assert arch.cells is not None
    shapes = _conv_shapes(arch)
    if not isinstance(nested, (list, tuple)) or len(nested) != len(arch.cells):
        got = f"a list of {len(nested)}" if isinstance(nested, (list, tuple)) else type(nested).__name__
        raise _Refused(f"expected one list per cell ({len(arch.cells)}), got {got}")
    out: dict[str, Tensor] = {}
    for i, (cell, per_op) in enumerate(zip(arch.cells, nested)):
        if not isinstance(per_op, (list, tuple)) or len(per_op) != len(cell.ops):
            got = f"{len(per_op)} entries" if isinstance(per_op, (list, tuple)) else type(per_op).__name__
            raise _Refused(f"cell {i}: expected one entry per op ({len(cell.ops)}), got {got}")
        for k, (spec, tensors) in enumerate(zip(cell.ops, per_op)):
            names = MASKED_CONVS.get(spec.op[:3], ())
            if not isinstance(tensors, (list, tuple)) or len(tensors) not in {0, len(names)}:
                n = len(tensors) if isinstance(tensors, (list, tuple)) else type(tensors).__name__
                raise _Refused(f"cell {i}, op {k} ({spec.op}): expected {len(names)} masks (or none), got {n}")
            for conv, mask in zip(names, tensors):
                key, where = f"cells.{i}.ops.{k}.{conv}", f"cell {i}, op {k} ({spec.op}), conv {conv}"
                if not isinstance(mask, Tensor) or mask.dtype.is_complex:
                    raise _Refused(f"{where}: not a real tensor ({type(mask).__name__})")
                if tuple(mask.shape) != shapes[key]:
                    raise _Refused(f"{where}: mask shape {tuple(mask.shape)}, the conv's weight {shapes[key]}")
                if not bool(((mask == 0) | (mask == 1)).all()):
                    raise _Refused(f"{where}: holds values other than 0 and 1")
                out[key] = mask.to(torch.float32)
    return out
