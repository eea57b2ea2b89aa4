"""Bad-input suite, file formats: architecture JSON (through `mgas info` and `mgas train`), search
checkpoints (through `mgas search --resume`), result Parquet files and published-number YAML
(through `mgas report`). Each case starts from a valid file and breaks one thing in it; the error
line must name that thing. See bad_input.py for what every case checks."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mgas_core.files.atomic import atomic_write_bytes
from mgas_core.files.checkpoints import load_checkpoint, save_checkpoint, save_tensor_file
from mgas_core.space.architecture import Architecture, CellArch, OpSpec
from mgas_core.space.builtin_architectures import DARTS_V2
from orchestrator.results import table_bytes, table_from_rows
from tests.reliability.bad_input import assert_refused

word = st.from_regex(r"\A[a-z]{3,10}\Z")
not_int = st.one_of(st.text(max_size=4), st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda f: f != int(f)), st.booleans(), st.lists(st.integers(), max_size=2), st.none())

# --- architecture JSON -------------------------------------------------------------------------------

GENOTYPE = DARTS_V2.to_json()


def _per_cell(folder: Path) -> dict[str, Any]:
    """A 3-cell per-cell architecture with widths and a weight-mask file beside it."""
    cells = []
    for i in range(3):
        ops = [OpSpec("sep_conv_3x3", 0, 0, {"mid": 3, "out": [0, 2, 3]}), OpSpec("skip_connect", 1, 0),
               OpSpec("dil_conv_3x3", 2, 1, {"out": [1, 2]})]
        cells.append(CellArch(ops, [2, 3], reduction=i in (1, 2), preprocess=[{"out": [0, 1, 3]}, None]))
    masks = {"cells.0.ops.0.pw1": torch.ones(3, 4, 1, 1)}
    arch = Architecture("cells", nodes=2, cells=cells, channels=4, masks=masks)
    return json.loads(arch.save(folder / "valid.json").read_text())


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


DELETE = object()
OP = ("normal", "ops", 0)


def _genotype_case(path: tuple[Any, ...], value: Any, *names: str) -> tuple[str, Any, tuple[Any, ...], Any]:
    return ("genotype", path, value, names)


def _cells_case(path: tuple[Any, ...], value: Any, *names: str) -> tuple[str, Any, tuple[Any, ...], Any]:
    return ("cells", path, value, names)


ARCH_CASES = st.one_of(
    st.one_of(word, st.integers()).map(lambda v: _genotype_case(("format",), v, "format")),
    st.one_of(st.integers(min_value=2), st.text(max_size=3)).map(lambda v: _genotype_case(("version",), v, "version")),
    st.one_of(st.integers(max_value=0), st.integers(min_value=17), not_int).map(
        lambda v: _genotype_case(("nodes",), v, "nodes")),
    st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.just("n" * 201)).map(
        lambda v: _genotype_case(("name",), v, "name")),
    st.one_of(st.integers(max_value=1), st.integers(min_value=2049), not_int.filter(lambda v: v is not None),
              st.just("eight")).map(lambda v: _genotype_case(("channels",), v, "channels")),
    st.one_of(st.integers(max_value=0), st.integers(min_value=101), st.text(min_size=1, max_size=3)).map(
        lambda v: _genotype_case(("layers",), v, "layers")),
    st.sampled_from(["normal", "reduce"]).map(lambda k: _genotype_case((k,), DELETE, "'normal' and 'reduce'")),
    st.tuples(st.sampled_from(["normal", "reduce"]), st.one_of(st.integers(), st.text(max_size=3),
                                                               st.lists(st.integers(), max_size=2))).map(
        lambda kv: _genotype_case((kv[0],), kv[1], kv[0])),
    st.sampled_from(["op", "input", "node"]).map(lambda k: _genotype_case((*OP, k), DELETE, k)),
    st.one_of(word, st.just("none"), st.just("conv_9x9")).map(
        lambda v: _genotype_case((*OP, "op"), v, "is not an operation", "op")),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=2, max_value=10**6), not_int).map(
        lambda v: _genotype_case((*OP, "input"), v, "input")),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=4, max_value=10**6), not_int).map(
        lambda v: _genotype_case((*OP, "node"), v, "node")),
    word.filter(lambda w: w not in ("op", "input", "node", "widths")).map(
        lambda k: _genotype_case((*OP, k), 1, k)),
    st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)).map(
        lambda v: _genotype_case(("normal", "ops"), v, "ops", "concat")),
    st.one_of(st.just([]), st.lists(st.integers(min_value=6, max_value=17), min_size=1, max_size=3),
              st.lists(st.integers(max_value=-1), min_size=1, max_size=2), st.text(max_size=3)).map(
        lambda v: _genotype_case(("normal", "concat"), v, "concat")),
    st.one_of(st.text(min_size=1, max_size=3), st.integers(min_value=2)).map(
        lambda v: _genotype_case(("normal", "reduction"), v, "reduction")),
    st.one_of(st.just([None]), st.just([None, None, None]), st.integers()).map(
        lambda v: _genotype_case(("normal", "preprocess"), v, "preprocess")),
    st.one_of(st.just({"mid": 0}), st.just({"mid": "x"}), st.just({"out": []}), st.just({"out": [-1]}),
              st.just({"out": [0, 0]}), st.just({"zzz": 1}), st.just({"mid": 10**9})).map(
        lambda v: _genotype_case((*OP, "widths"), v, "mid", "out", "zzz", "kept channels")),
    st.one_of(st.just("../outside.safetensors"), st.just("/etc/passwd"), st.just("a/../../b.safetensors"),
              st.just("missing.safetensors"), st.just(""), st.integers()).map(
        lambda v: _genotype_case(("masks",), v, "masks")),
    st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)).map(
        lambda v: _genotype_case(("meta",), v, "meta")),
    word.filter(lambda w: w not in GENOTYPE and w not in ("cells", "masks", "channels", "layers")).map(
        lambda k: _genotype_case((k,), 1, k)),
    # per-cell architectures: their own width, depth, widths and weight masks
    st.one_of(st.just([]), st.integers(), st.text(max_size=3)).map(lambda v: _cells_case(("cells",), v, "cells")),
    st.just(_cells_case(("channels",), DELETE, "channels")),
    st.integers(min_value=1, max_value=100).filter(lambda n: n != 3).map(
        lambda n: _cells_case(("layers",), n, "layers")),
    st.sampled_from([0, 1, 2]).map(lambda i: _cells_case(("cells", i, "reduction"), i == 0, "reduction")),
    st.integers(min_value=5, max_value=8000).map(
        lambda m: _cells_case(("cells", 0, "ops", 0, "widths", "mid"), m, "mid")),
    st.lists(st.integers(min_value=4, max_value=8000), min_size=1, max_size=3, unique=True).map(
        lambda out: _cells_case(("cells", 0, "ops", 0, "widths", "out"), out, "kept channels", "out")),
    st.lists(st.integers(min_value=4, max_value=8000), min_size=1, max_size=3, unique=True).map(
        lambda out: _cells_case(("cells", 0, "preprocess", 0), {"out": out}, "kept channels", "out")),
    st.just(_cells_case(("cells", 0, "ops"), [], "concat")),
)

RAW_ARCH_TEXT = st.one_of(
    st.sampled_from(["{", "", "[]", "null", "42", '"x"', '{"format": "mgas-architecture", "version": 1, '
                     '"nodes": NaN}', '{"format": "mgas-architecture", "format": "mgas-architecture"}',
                     "[" * 5000 + "]" * 5000]),
    st.binary(min_size=1, max_size=64).map(lambda b: b.decode("latin-1")),
).map(lambda text: ("text", (), text, ("architecture", "JSON", "format", "duplicate key", "nested", "NaN")))

ARCH_COMMANDS = {
    "info": ["info", "--dataset", "synthetic"],
    "train": ["train", "--dataset", "synthetic", "--no-progress", "--epochs", "1", "--set", "retrain.channels=4",
              "--set", "retrain.layers=3", "--set", "data.synthetic.size=8", "--set", "data.synthetic.samples=32"],
}


def _write_arch(folder: Path, kind: str, path: tuple[Any, ...], value: Any) -> Path:
    target = folder / "arch.json"
    if kind == "text":
        target.write_text(value, encoding="utf-8", errors="surrogateescape")
        return target
    base = GENOTYPE if kind == "genotype" else _per_cell(folder)
    data = _set(base, path, value)
    if kind == "cells" and "masks" in data:
        data["masks"] = "valid.masks.safetensors"
    target.write_text(json.dumps(data))
    return target


@settings(max_examples=220)
@given(st.one_of(ARCH_CASES, RAW_ARCH_TEXT), st.sampled_from(sorted(ARCH_COMMANDS)))
def test_malformed_architecture_file_is_refused(arch_case, command):
    kind, path, value, names = arch_case
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        arch = _write_arch(folder, kind, path, value)
        argv = [ARCH_COMMANDS[command][0], "--arch", str(arch), *ARCH_COMMANDS[command][1:]]
        assert_refused(argv, folder, names, f"{command} (architecture JSON)", case=(kind, path, value))


@pytest.mark.parametrize("problem,names", [
    ("not safetensors", ("safetensors",)), ("names no module", ("weight mask",)), ("wrong shape", ("weight mask",)),
    ("not 0 or 1", ("weight mask",)), ("link outside", ("masks",)),
])
@pytest.mark.parametrize("command", sorted(ARCH_COMMANDS))
def test_bad_weight_mask_file_is_refused(problem, names, command):
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as elsewhere:
        folder = Path(d)
        arch = folder / "valid.json"
        _per_cell(folder)
        masks = folder / "valid.masks.safetensors"
        if problem == "not safetensors":
            masks.write_bytes(b"\x00" * 64)
        elif problem == "link outside":
            outside = Path(elsewhere) / "m.safetensors"
            save_tensor_file({"cells.0.ops.0.pw1": torch.ones(3, 4, 1, 1)}, outside)
            masks.unlink()
            masks.symlink_to(outside)
        else:
            key, mask = {"names no module": ("cells.9.ops.0.pw1", torch.ones(3, 4, 1, 1)),
                         "wrong shape": ("cells.0.ops.0.pw1", torch.ones(5, 4, 1, 1)),
                         "not 0 or 1": ("cells.0.ops.0.pw1", torch.full((3, 4, 1, 1), 0.5))}[problem]
            save_tensor_file({key: mask}, masks)
        argv = [ARCH_COMMANDS[command][0], "--arch", str(arch), *ARCH_COMMANDS[command][1:]]
        assert_refused(argv, folder, names, f"{command} (architecture JSON)")


# --- search checkpoints --------------------------------------------------------------------------------

SEARCH_ARGS = ["search", "--method", "darts", "--dataset", "synthetic", "--epochs", "2", "--no-progress",
               "--set", "search.layers=1", "--set", "search.channels=2", "--set", "search.nodes=1",
               "--set", "search.batch_size=16", "--set", "data.synthetic.size=8", "--set", "data.synthetic.samples=48",
               "--set", "search.darts.order=1", "--device", "cpu", "--resume"]


@pytest.fixture(scope="module")
def good_checkpoint() -> dict[str, Any]:
    """The payload of a real one-epoch search's checkpoint.pt (searched once per module)."""
    from orchestrator.cli import main

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        argv = [a if a != "2" else "1" for a in SEARCH_ARGS if a != "--resume"]
        assert main([*argv, "--out", str(out)]) == 0
        return load_checkpoint(out / "checkpoint.pt")


def _search_keys(state: dict[str, Any]) -> list[str]:
    return sorted(state["search"])


CHECKPOINT_CASES = st.one_of(
    st.just((("search",), DELETE, ("search",))),
    st.sampled_from(["method", "rng", "history", "next_epoch", "elapsed"]).map(
        lambda k: (("search", k), DELETE, (f"search.{k}",))),
    st.sampled_from(["model", "optimizers", "events", "epoch", "extra"]).map(
        lambda k: (("search", "method", k), DELETE, (f"search.method.{k}",))),
    st.tuples(st.sampled_from(["model", "optimizers", "events", "extra", "epoch"]),
              st.one_of(st.text(max_size=3), st.floats(allow_nan=False), st.none())).map(
        lambda kv: (("search", "method", kv[0]), kv[1], (f"search.method.{kv[0]}",))),
    st.one_of(st.integers(max_value=-1), st.booleans(), st.text(max_size=2), st.floats(allow_nan=False)).map(
        lambda v: (("search", "next_epoch"), v, ("search.next_epoch", "search.history"))),
    st.integers(min_value=2, max_value=50).map(lambda v: (("search", "next_epoch"), v, ("search.history",))),
    st.one_of(st.sampled_from([float("nan"), float("inf"), -1.0]), st.text(max_size=2), st.booleans()).map(
        lambda v: (("search", "elapsed"), v, ("search.elapsed",))),
    st.one_of(st.text(max_size=2), st.integers(), st.lists(st.integers(), min_size=1, max_size=2)).map(
        lambda v: (("search", "history"), v, ("search.history",))),
    st.sampled_from(["torch", "python", "numpy"]).map(lambda k: (("search", "rng", k), DELETE, (f"search.rng.{k}",))),
    st.one_of(st.integers(), st.text(max_size=3)).map(lambda v: (("search", "rng", "torch"), v, ("search.rng.torch",))),
    st.one_of(st.text(max_size=3), st.lists(st.integers(), max_size=2)).map(lambda v: (("search",), v, ("search",))),
    st.one_of(st.text(max_size=3), st.integers()).map(lambda v: (("format",), v, ("format",))),
    st.integers(min_value=2).map(lambda v: (("version",), v, ("format", "version"))),
    st.tuples(st.sampled_from(["layers", "channels", "nodes", "batch_size"]), st.integers(min_value=2, max_value=8))
    .map(lambda kv: (("settings", "search", kv[0]), kv[1] * 2 + 1, (f"search.{kv[0]}",))),
    st.sampled_from([("seed", 7), ("data", {"name": "digits"})]).map(
        lambda kv: (("settings", kv[0]), kv[1], (kv[0],))),
    st.sampled_from(["gold_nas", "msg_das"]).map(lambda m: (("settings", "search", "method"), m, ("search.method",))),
    st.one_of(st.text(max_size=3), st.integers()).map(lambda v: (("settings",), v, ("settings",))),
    # a structurally whole state that belongs to another model
    st.sampled_from(["shape", "missing tensor", "extra tensor", "optimizer"]).map(
        lambda how: (("state", how), None, ("does not fit", "checkpoint"))),
)


def _break_state(payload: dict[str, Any], how: str) -> dict[str, Any]:
    payload = copy.deepcopy(payload)
    model = payload["search"]["method"]["model"]
    name = next(k for k, v in model.items() if v.ndim >= 1)
    if how == "shape":
        model[name] = torch.zeros(model[name].numel() + 1)
    elif how == "missing tensor":
        del model[name]
    elif how == "extra tensor":
        model["net.unexpected.weight"] = torch.zeros(3)
    else:
        payload["search"]["method"]["optimizers"].popitem()
    return payload


@pytest.mark.slow
@settings(max_examples=150)
@given(CHECKPOINT_CASES)
def test_malformed_search_checkpoint_is_refused(good_checkpoint, checkpoint_case):
    path, value, names = checkpoint_case
    payload = _break_state(good_checkpoint, path[1]) if path[0] == "state" else _set(good_checkpoint, path, value)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        save_checkpoint(payload, folder / "run" / "checkpoint.pt")
        assert_refused([*SEARCH_ARGS, "--out", str(folder / "run")], folder, names, "search --resume (checkpoint)",
                       case=(path, value))


def test_checkpoint_that_is_not_a_mapping_is_refused():
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        save_checkpoint([1, 2], folder / "run" / "checkpoint.pt")  # type: ignore[arg-type]
        assert_refused([*SEARCH_ARGS, "--out", str(folder / "run")], folder, ("checkpoint",),
                       "search --resume (checkpoint)")


# --- result Parquet files and published numbers ---------------------------------------------------------

GOOD_ROW = {
    "schema_version": 1, "experiment": "exp", "trial_id": "darts_seed0", "method": "darts", "dataset": "digits",
    "seed": 0, "status": "ok", "test_acc": 0.9, "val_acc": 0.9, "params_m": 0.05, "nonzero_params_m": 0.05,
    "flops_m": 3.0, "search_time_s": 10.0, "retrain_time_s": 5.0, "search_peak_mem_mb": 300.0,
    "axes_json": json.dumps({"method": "darts", "seed": 0}), "device": "cpu",
}


def _result_table() -> pa.Table:
    from orchestrator.results import result_schema

    return table_from_rows([GOOD_ROW], result_schema())


def _write_results(folder: Path, table: pa.Table | bytes, name: str = "darts_seed0.parquet") -> Path:
    path = folder / "exp" / "results" / "method=darts" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, bytes):
        path.write_bytes(table)
    else:
        atomic_write_bytes(path, table_bytes(table))
    return path


REQUIRED = ["schema_version", "experiment", "trial_id", "method", "dataset", "status", "test_acc", "val_acc",
            "params_m", "nonzero_params_m", "flops_m", "search_time_s", "retrain_time_s", "search_peak_mem_mb"]
NUMBERS = ["test_acc", "nonzero_params_m", "flops_m", "search_time_s", "search_peak_mem_mb"]


def _replace(table: pa.Table, column: str, array: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(column), column, array)


PARQUET_CASES = st.one_of(
    # (a file without ``method`` takes it from its partition folder, as version 2 files are written)
    st.sampled_from([c for c in REQUIRED if c != "method"]).map(lambda c: ("drop", c, (c, "schema version"))),
    st.sampled_from(["experiment", "method", "status", "dataset", "trial_id"]).map(lambda c: ("int", c, (c,))),
    st.sampled_from([*NUMBERS, "schema_version"]).map(lambda c: ("text", c, (c,))),
    st.tuples(st.sampled_from(NUMBERS), st.sampled_from([float("nan"), float("inf"), float("-inf"), None])).map(
        lambda cv: ("value", cv, (cv[0],))),
    st.sampled_from(["experiment", "method", "status", "dataset", "trial_id"]).map(lambda c: ("null", c, (c,))),
    st.sampled_from([0, 3, 99]).map(lambda v: ("version", v, ("schema version",))),
    st.just(("empty", None, ("no rows",))),
    st.just(("failed", None, ("none finished successfully",))),
    st.binary(min_size=0, max_size=64).map(lambda b: ("bytes", b, ("darts_seed0.parquet",))),
    st.integers(min_value=1, max_value=200).map(lambda n: ("truncated", n, ("darts_seed0.parquet",))),
    st.just(("folder", None, ("not a file",))),
)


def _parquet_case(folder: Path, kind: str, arg: Any) -> None:
    table = _result_table()
    if kind == "drop":
        _write_results(folder, table.drop_columns([arg]))
    elif kind == "int":
        _write_results(folder, _replace(table, arg, pa.array([7], pa.int64())))
    elif kind == "text":
        _write_results(folder, _replace(table, arg, pa.array(["x"], pa.string())))
    elif kind == "value":
        _write_results(folder, _replace(table, arg[0], pa.array([arg[1]], pa.float64())))
    elif kind == "null":
        _write_results(folder, _replace(table, arg, pa.array([None], pa.string())))
    elif kind == "version":
        _write_results(folder, _replace(table, "schema_version", pa.array([arg], pa.int32())))
    elif kind == "empty":
        _write_results(folder, table.slice(0, 0))
    elif kind == "failed":
        _write_results(folder, _replace(table, "status", pa.array(["failed"], pa.string())))
    elif kind == "bytes":
        _write_results(folder, arg)
    elif kind == "truncated":
        path = _write_results(folder, table)
        path.write_bytes(path.read_bytes()[:arg])
    else:
        (folder / "exp" / "results" / "method=darts" / "darts_seed0.parquet").mkdir(parents=True)


@pytest.mark.slow
@settings(max_examples=110)
@given(PARQUET_CASES)
def test_unusable_results_folder_is_refused(parquet_case):
    kind, arg, names = parquet_case
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        _parquet_case(folder, kind, arg)
        assert_refused(["report", str(folder)], folder, names, "report (Parquet)", case=(kind, arg))


def test_mixed_schema_versions_are_refused():
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        _write_results(folder, _result_table())
        _write_results(folder, _replace(_result_table(), "schema_version", pa.array([3], pa.int32())), "b.parquet")
        assert_refused(["report", str(folder)], folder, ("schema versions",), "report (Parquet)")


ENTRY = {"method": "darts", "dataset": "digits", "variant": "v", "source": "s", "confirmed": True,
         "space": "s8", "protocol": "p600", "test_error_pct": 3.0}
NAMED = {"spaces": {"s8": {"search.layers": 8}}, "protocols": {"p600": {"retrain.epochs": 600}}}

PUBLISHED_CASES = st.one_of(
    st.sampled_from(["method", "dataset", "variant", "source", "confirmed", "space", "protocol"]).map(
        lambda k: ({**NAMED, "entries": [{x: v for x, v in ENTRY.items() if x != k}]}, (k,))),
    st.tuples(st.sampled_from(["space", "protocol"]), st.sampled_from(["nope", 3, ["s8"]])).map(
        lambda kv: ({**NAMED, "entries": [{**ENTRY, kv[0]: kv[1]}]}, (kv[0],))),
    st.sampled_from([{"a..b": 1}, {"search.layers": [1]}, {"": 2}, [1], "x", {"search.layers": {"x": 1}}]).map(
        lambda m: ({**NAMED, "entries": [{**ENTRY, "match": m}]}, ("match",))),
    st.tuples(st.sampled_from(["spaces", "protocols"]), st.sampled_from([[1], "x", {"n": [1]}, {"n": {"a": {}}}])).map(
        lambda kv: ({**NAMED, kv[0]: kv[1], "entries": [ENTRY]}, (kv[0],))),
    st.tuples(st.sampled_from(["test_error_pct", "params_m", "flops_m", "search_cost_gpu_days"]),
              st.sampled_from([float("nan"), float("inf"), "x", True, [1]])).map(
        lambda kv: ({**NAMED, "entries": [{**ENTRY, kv[0]: kv[1]}]}, (kv[0],))),
    st.sampled_from(["method", "source"]).map(lambda k: ({**NAMED, "entries": [{**ENTRY, k: 5}]}, (k,))),
    st.one_of(st.integers(), st.text(min_size=1, max_size=4), st.lists(st.integers(), min_size=1, max_size=2)).map(
        lambda v: ({"entries": v}, ("entries",))),
    st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=2)).map(lambda v: (v, ("entries",))),
    st.sampled_from(["entries: []\nentries: []\n", "entries: &a [*a]\n", "entries: [\n"]).map(
        lambda t: (t, ("published numbers",))),
)


@settings(max_examples=60)
@given(PUBLISHED_CASES)
def test_malformed_published_numbers_are_refused(published_case):
    content, names = published_case
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        _write_results(folder, _result_table())
        published = folder / "published.yaml"
        published.write_text(content if isinstance(content, str) else json.dumps(content))
        assert_refused(["report", str(folder), "--published", str(published)], folder, names,
                       "report --published (YAML)", case=content)
