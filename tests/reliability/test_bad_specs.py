"""Bad-input suite, experiment specs: `mgas run SPEC --dry-run` on generated malformed YAML.

Each case is a spec (or raw YAML text) plus the names one of which the error line must contain
(the field, the setting path, or what is wrong with the file). Checked by
:func:`tests.reliability.bad_input.assert_refused`: exit 2, one line, no traceback, nothing
written, within the time limit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reliability.bad_input import assert_refused

VALID: dict[str, Any] = {
    "name": "fuzz",
    "dataset": "digits",
    "preset": "tiny",
    "sweep": {"method": ["darts", "mgas"], "seed": [0]},
    "resources": {"cpu": 1},
}
KEYWORDS = {"name", "description", "dataset", "preset", "sweep", "base", "methods", "include", "exclude",
            "resources", "device", "darts", "mgas", "digits", "tiny", "paper", "seed", "method", "stages",
            "synthetic", "imagenet", "output_dir", "storage_path", "cpu", "gpu", "epochs", "search"}

junk_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
word = st.from_regex(r"\A[a-z]{3,10}\Z").filter(lambda w: w not in KEYWORDS)
non_positive = st.one_of(st.integers(max_value=0), st.floats(max_value=0, allow_nan=False, allow_infinity=False))
not_finite = st.sampled_from([float("inf"), float("-inf"), float("nan")])
huge_int = st.integers(min_value=10, max_value=40).map(lambda k: 10**k)
wrong_type = st.one_of(st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2))


def _with(path: tuple[str, ...], value: Any, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = yaml.safe_load(yaml.safe_dump(spec or VALID))
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return spec


def _base(key: str, value: Any, **extra: Any) -> dict[str, Any]:
    return _with(("base",), {key: value, **extra})


def case(spec: Any, *names: str) -> tuple[str, tuple[str, ...]]:
    """A spec as YAML text (dicts are dumped; text is kept as it is) and the names to expect."""
    return (spec if isinstance(spec, str) else yaml.safe_dump(spec, allow_unicode=True)), names


NUMERIC_SETTINGS = ["search.epochs", "search.layers", "search.channels", "search.nodes", "search.batch_size",
                    "search.w_lr", "search.grad_clip", "retrain.epochs", "retrain.lr", "retrain.batch_size",
                    "data.val_fraction", "data.synthetic.samples", "search.mgas.regrow_fraction",
                    "search.mgas.stage_epochs", "search.gold_nas.n0", "search.msg_das.tau_max", "threads"]
INT_SETTINGS = ["search.epochs", "search.layers", "search.nodes", "search.batch_size", "retrain.epochs",
                "retrain.batch_size", "data.synthetic.samples", "search.mgas.stage_epochs", "search.gold_nas.n0",
                "threads", "data.workers", "retrain.cutout"]

SCHEMA_CASES = st.one_of(
    word.map(lambda k: case({**VALID, k: 1}, k)),                                             # unknown top-level key
    st.one_of(st.integers(), wrong_type, st.just(""), st.just("-x"), st.just("a" * 101)).map(
        lambda v: case(_with(("name",), v), "name")),
    word.map(lambda d: case(_with(("dataset",), d), "dataset")),
    word.map(lambda p: case(_with(("preset",), p), "preset")),
    word.map(lambda d: case(_with(("device",), d), "device")),
    word.map(lambda m: case(_with(("sweep", "method"), [m]), "sweep.method")),
    st.sampled_from(["method", "seed", "stages", "target_params"]).map(lambda a: case(_with(("sweep", a), []), a)),
    st.one_of(st.integers(), st.text(max_size=5)).map(lambda v: case(_with(("sweep", "seed"), v), "sweep.seed")),
    non_positive.map(lambda v: case(_with(("sweep", "target_params"), [v]), "search.target_params")),
    st.integers(max_value=0).map(lambda v: case({**VALID, "sweep": {"method": ["mgas"], "stages": [v]}},
                                                "search.mgas.stages")),
    st.one_of(st.just([]), st.lists(word, min_size=1, max_size=2)).map(
        lambda g: case({**VALID, "sweep": {"method": ["mgas"], "granularities": [g]}}, "granularities")),
    st.integers(max_value=-1).map(lambda v: case(_with(("sweep", "seed"), [v]), "seed")),
    word.map(lambda k: case(_base(f"search.{k}", 1), f"search.{k}")),                         # unknown setting
    word.map(lambda k: case(_with(("sweep",), {k: [1]}), k)),                                  # unknown axis
    word.map(lambda m: case(_with(("methods",), {m: {}}), "methods")),                         # unknown method
    non_positive.map(lambda v: case(_with(("resources", "cpu"), v), "resources.cpu")),
    st.one_of(st.integers(max_value=-1), st.floats(min_value=1.01, max_value=1.99)).map(
        lambda v: case(_with(("resources", "gpu"), v), "resources.gpu")),
    st.one_of(st.integers(max_value=0), junk_text).map(lambda v: case(_with(("max_concurrent_trials",), v),
                                                                      "max_concurrent_trials")),
    st.one_of(st.integers(max_value=-1), wrong_type).map(lambda v: case(_with(("max_failures",), v), "max_failures")),
    st.one_of(st.integers(max_value=0), junk_text, wrong_type).map(lambda v: case(_base("search.epochs", v),
                                                                                  "search.epochs")),
    st.sampled_from([0, -1, 7, 9, 4097]).map(lambda c: case(_base("search.channels", c), "search.channels")),
    st.one_of(st.integers(), junk_text, st.lists(st.integers(), max_size=3), st.none()).map(
        lambda v: case(v, "must be a mapping", "not valid YAML")),                             # not a mapping
)

NUMBER_CASES = st.one_of(
    # every number finite ...
    st.tuples(st.sampled_from(NUMERIC_SETTINGS), not_finite).map(lambda kv: case(_base(*kv), kv[0])),
    st.tuples(st.sampled_from(["cpu", "gpu"]), not_finite).map(
        lambda kv: case(_with(("resources", kv[0]), kv[1]), f"resources.{kv[0]}")),
    not_finite.map(lambda v: case(_with(("sweep", "target_params"), [v]), "search.target_params")),
    # ... never a boolean ...
    st.tuples(st.sampled_from(INT_SETTINGS), st.booleans()).map(lambda kv: case(_base(*kv), kv[0])),
    st.booleans().map(lambda v: case(_with(("max_failures",), v), "max_failures")),
    st.booleans().map(lambda v: case(_with(("resources", "cpu"), v), "resources.cpu")),
    # ... and in range
    st.tuples(st.sampled_from(INT_SETTINGS), huge_int).map(lambda kv: case(_base(*kv), kv[0])),
    huge_int.map(lambda v: case(_with(("max_concurrent_trials",), v), "max_concurrent_trials")),
    huge_int.map(lambda v: case(_with(("resources", "cpu"), v), "resources.cpu")),
    st.floats(min_value=1.5e5, max_value=1e300).map(lambda v: case(_base("search.target_params", v),
                                                                   "search.target_params")),
)

COMBINATION_CASES = st.one_of(
    st.sampled_from(["mgas", "msg_das"]).map(lambda m: case(
        {**VALID, "sweep": {"method": [m]}, "base": {"search.impl": "reference"}}, "search.impl")),
    st.just(case({**VALID, "base": {"search.impl": "reference", "search.checkpoint_cells": True},
                  "sweep": {"method": ["darts"]}}, "search.checkpoint_cells")),
    st.integers(min_value=5, max_value=50).map(lambda s: case(
        {**VALID, "sweep": {"method": ["mgas"], "stages": [s]}, "base": {"search.layers": 4}}, "search.mgas.stages")),
    st.integers(min_value=9, max_value=64).map(lambda k: case(
        {**VALID, "sweep": {"method": ["msg_das"], "search.msg_das.subgraphs": [k]}}, "search.msg_das.subgraphs")),
    st.just(case(_with(("device",), "cuda"), "device")),
    st.just(case({**VALID, "base": {"search.precision": "bf16"}}, "search.precision")),
    st.just(case({**VALID, "base": {"search.precision": "bf16"}, "device": "cpu"}, "search.precision")),
    st.just(case({**VALID, "sweep": {"method": ["gold_nas"]}, "base": {"search.gold_nas.eta_min": 0.5,
                                                                       "search.gold_nas.eta_max": 0.1}},
                 "search.gold_nas.eta_min")),
    st.integers(min_value=11, max_value=40).map(lambda n: case(
        {**VALID, "sweep": {axis: list(range(1, n + 1)) for axis in
                            ("search.epochs", "seed", "search.batch_size", "retrain.epochs")}}, "sweep")),
    st.sampled_from(["include", "exclude"]).map(lambda k: case({**VALID, k: [{"method": "nope", "seed": 0}]},
                                                               f"{k}.0.method")),
    st.sampled_from(["output_dir", "storage_path"]).map(lambda k: case(_with((k,), "a\x00b"), k)),
    st.just(case(_with(("dataset",), {"name": "cifar10", "root": "x\x00y"}), "dataset.root")),
)


def _alias_bomb(levels: int, fanout: int, where: str) -> str:
    lines = [f"a0: &a0 [{', '.join(['1'] * fanout)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]")
    body = "\n".join(f"  {line}" for line in lines)
    return (f"name: bomb\ndataset: digits\npreset: tiny\ndescription: x\n{where}:\n{body}\n"
            f"sweep:\n  method: [darts]\n  seed: *a{levels - 1}\n")


TEXT_CASES = st.one_of(
    st.sampled_from(["name", "dataset", "preset"]).map(
        lambda k: case(yaml.safe_dump(VALID) + f"{k}: {VALID[k]}\n", "duplicate key")),
    st.sampled_from(["cpu", "gpu"]).map(
        lambda k: case(yaml.safe_dump({k: v for k, v in VALID.items() if k != "resources"})
                       + f"resources:\n  {k}: 1\n  {k}: 2\n", "duplicate key")),
    st.tuples(st.integers(min_value=6, max_value=9), st.integers(min_value=8, max_value=12)).filter(
        lambda lf: lf[1] ** lf[0] > 100_000).map(lambda lf: case(_alias_bomb(*lf, "base"), "aliases")),
    st.integers(min_value=65, max_value=400).map(lambda d: case("name: x\ndataset: digits\nbase: " + "[" * d
                                                                + "]" * d + "\n", "nested")),
    st.sampled_from(["a: &x [*x]\n", "name: !!python/object/apply:os.system ['true']\n", "name: !!binary AAAA\n",
                     "name: [unclosed", "a: b: c", "- - -\n :", "{", "\t- x\n", "? [a]\n: 1\n"]).map(
        lambda t: case(t, "not valid YAML", "recursive alias", "must be a mapping", "name")),
    st.binary(min_size=1, max_size=64).map(lambda b: case(b.decode("latin-1"), "not valid YAML", "must be a mapping",
                                                          "experiment file", "name", "dataset")),
)


def _refused_spec(text: str, names: tuple[str, ...], kind: str = "run --dry-run (spec)") -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        path = folder / "experiment.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        assert_refused(["run", str(path), "--dry-run"], folder, names, kind, case=text[:300])


@pytest.mark.slow
@settings(max_examples=260)
@given(SCHEMA_CASES)
def test_malformed_spec_is_refused(spec_case):
    _refused_spec(*spec_case)


@settings(max_examples=160)
@given(NUMBER_CASES)
def test_non_finite_boolean_or_huge_number_in_a_spec_is_refused(spec_case):
    _refused_spec(*spec_case)


@settings(max_examples=80)
@given(COMBINATION_CASES)
def test_spec_that_cannot_run_is_refused_before_anything_starts(spec_case):
    _refused_spec(*spec_case)


@settings(max_examples=90)
@given(TEXT_CASES)
def test_yaml_with_duplicate_keys_aliases_or_deep_nesting_is_refused(spec_case):
    _refused_spec(*spec_case, kind="run --dry-run (YAML)")


def test_spec_over_the_size_limit_is_refused():
    _refused_spec("name: big\ndataset: digits\ndescription: '" + "x" * (5 * 2**20) + "'\n", ("MiB",))


def test_missing_spec_or_a_folder_is_refused():
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for target, name in ((folder / "missing.yaml", "does not exist"), (folder, "is a folder")):
            assert_refused(["run", str(target), "--dry-run"], folder, (name,), "run --dry-run (spec)")
