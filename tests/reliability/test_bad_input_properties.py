"""Property tests: malformed experiment specs and CLI arguments always give exit code 2 and one
clear line on stderr (``mgas: error: ...``), never a traceback; nothing starts. 600 generated
cases (400 specs, 200 argument lists)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main

VALID: dict[str, Any] = {
    "name": "fuzz",
    "dataset": "digits",
    "preset": "tiny",
    "sweep": {"method": ["darts", "mgas"], "seed": [0]},
    "resources": {"cpu": 1},
}

junk_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
not_a_list = st.one_of(st.integers(), st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                            max_size=2))
non_positive = st.one_of(st.integers(max_value=0), st.floats(max_value=0, allow_nan=False))
wrong_type = st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                            min_size=1, max_size=2))
unknown_word = st.from_regex(r"\A[a-z]{3,10}\Z").filter(
    lambda w: w not in {"name", "description", "dataset", "preset", "sweep", "base", "methods", "include",
                        "exclude", "resources", "device", "darts", "mgas", "digits", "tiny", "paper", "seed",
                        "method", "stages", "synthetic", "imagenet"})


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    spec = yaml.safe_load(yaml.safe_dump(VALID))
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return spec


MALFORMED_SPECS = st.one_of(
    unknown_word.map(lambda k: {**VALID, k: 1}),                                      # unknown top-level key
    st.one_of(st.integers(), wrong_type, st.just("")).map(lambda v: _with(("name",), v)),   # bad name
    unknown_word.map(lambda d: _with(("dataset",), d)),                                # unknown dataset
    unknown_word.map(lambda p: _with(("preset",), p)),                                 # unknown preset
    unknown_word.map(lambda m: _with(("sweep", "method"), [m])),                       # unknown method
    st.sampled_from(["method", "seed", "stages", "target_params"]).map(lambda a: _with(("sweep", a), [])),
    not_a_list.map(lambda v: _with(("sweep", "seed"), v)),                            # axis not a list
    non_positive.map(lambda v: _with(("sweep", "target_params"), [v])),               # size out of range
    st.integers(max_value=0).map(lambda v: {**_with(("sweep", "method"), ["mgas"]), "sweep": {
        "method": ["mgas"], "stages": [v]}}),                                         # stage count out of range
    st.one_of(st.just([]), st.lists(unknown_word, min_size=1, max_size=2)).map(
        lambda g: {**VALID, "sweep": {"method": ["mgas"], "granularities": [g]}}),    # bad granularity set
    st.integers(max_value=-1).map(lambda v: _with(("sweep", "seed"), [v])),            # negative seed
    unknown_word.map(lambda k: _with(("base",), {f"search.{k}": 1})),                 # unknown setting
    unknown_word.map(lambda k: _with(("sweep",), {k: [1]})),                          # unknown axis
    non_positive.map(lambda v: _with(("resources", "cpu"), v)),                       # resources out of range
    st.one_of(st.integers(max_value=0), junk_text).map(lambda v: _with(("max_concurrent_trials",), v)),
    st.one_of(st.integers(max_value=-1), wrong_type).map(lambda v: _with(("search_epochs_typo",), v)),
    st.one_of(st.integers(max_value=0), junk_text, wrong_type).map(lambda v: _with(("base",), {"search.epochs": v})),
    st.sampled_from([0, -1, 7, 9]).map(lambda c: _with(("base",), {"search.channels": c})),
    st.one_of(st.integers(), junk_text, st.lists(st.integers(), max_size=3), st.none()),  # not a mapping
)


def _run_quietly(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, err.getvalue()


def _assert_one_line_usage_error(rc: int, err: str, case: Any) -> None:
    assert rc == 2, f"exit {rc} for {case!r}: {err}"
    assert err.startswith("mgas: error: ") and err.count("\n") == 1, f"not one line for {case!r}: {err!r}"
    assert "Traceback" not in err


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MALFORMED_SPECS)
def test_malformed_spec_is_one_line_exit_2(spec):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "experiment.yaml"
        path.write_text(yaml.safe_dump(spec))
        rc, err = _run_quietly(["run", str(path), "--dry-run"])
    _assert_one_line_usage_error(rc, err, spec)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(min_size=1, max_size=64), junk_text.map(str.encode),
                 st.sampled_from([b"name: [unclosed", b"\xff\xfe\x00bad", b"a: b: c", b"{", b"- - -\n :"])))
def test_non_yaml_or_unreadable_file_is_one_line_exit_2(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "experiment.yaml"
        path.write_bytes(content)
        rc, err = _run_quietly(["run", str(path), "--dry-run"])
        _assert_one_line_usage_error(rc, err, content)
        for target in (Path(d) / "missing.yaml", Path(d)):  # absent file, a folder
            rc, err = _run_quietly(["run", str(target), "--dry-run"])
            _assert_one_line_usage_error(rc, err, target)


BASE_ARGS = ["search", "--method", "darts", "--dataset", "digits"]
MALFORMED_ARGS = st.one_of(
    st.one_of(st.integers(max_value=0).map(str), junk_text.filter(lambda t: not t.strip().isdigit())).map(
        lambda v: [*BASE_ARGS, "--epochs", v]),
    st.integers(min_value=-9, max_value=99).filter(lambda c: c < 2 or c % 2).map(
        lambda c: [*BASE_ARGS, "--channels", str(c)]),
    st.one_of(non_positive.map(str), st.sampled_from(["big", "1e", "--", "nan?"])).map(
        lambda v: [*BASE_ARGS, "--target-params", v]),
    unknown_word.map(lambda m: ["search", "--method", m, "--dataset", "digits"]),
    unknown_word.map(lambda d: ["search", "--method", "darts", "--dataset", d]),
    unknown_word.map(lambda k: [*BASE_ARGS, "--set", f"search.{k}=1"]),
    junk_text.filter(lambda t: "=" not in t).map(lambda t: [*BASE_ARGS, "--set", t]),
    unknown_word.map(lambda f: [*BASE_ARGS, f"--{f}"]),
    unknown_word.map(lambda c: [c]),
    unknown_word.map(lambda a: ["info", "--arch", a, "--dataset", "cifar10"]),
    unknown_word.map(lambda a: ["train", "--arch", f"{a}.json", "--dataset", "digits"]),
)


@settings(max_examples=200, deadline=None)
@given(MALFORMED_ARGS)
def test_malformed_arguments_are_one_line_exit_2(argv):
    rc, err = _run_quietly(argv)
    _assert_one_line_usage_error(rc, err, argv)
