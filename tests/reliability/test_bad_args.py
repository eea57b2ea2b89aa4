"""Bad-input suite, command lines: generated bad arguments to `mgas search`, `train`, `info`,
`run` and `report` (values out of range, non-finite, of the wrong type, unknown names, settings
that cannot run together, paths that are files, folders or missing). See bad_input.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reliability.bad_input import assert_refused

SEARCH = ["search", "--method", "darts", "--dataset", "digits", "--preset", "tiny", "--no-progress"]
TRAIN = ["train", "--arch", "darts_v2", "--dataset", "digits", "--preset", "tiny", "--no-progress"]

FLAGS = {"method", "dataset", "preset", "seed", "device", "threads", "set", "out", "json", "epochs", "layers",
         "channels", "batch", "order", "stages", "granularities", "subgraphs", "cost", "impl", "resume", "download",
         "help", "arch", "experiment", "address", "published", "dashboard", "progress", "info", "search", "train",
         "run", "report"}
word = st.from_regex(r"\A[a-z]{3,10}\Z").filter(lambda w: w not in {"darts", "mgas", "digits", "tiny", "paper"} | FLAGS)


def _not_an_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return True
    return False
junk = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
               min_size=1, max_size=12)
not_finite = st.sampled_from(["inf", "-inf", "nan", "1e999", "-1e999"])
huge = st.integers(min_value=10, max_value=40).map(lambda k: str(10**k))

# flag -> (settings path, values that must be refused)
SEARCH_INT_FLAGS = {
    "--epochs": "search.epochs", "--layers": "search.layers", "--channels": "search.channels",
    "--batch": "search.batch_size", "--seed": "seed", "--threads": "threads",
}
TRAIN_INT_FLAGS = {"--epochs": "retrain.epochs", "--channels": "retrain.channels", "--layers": "retrain.layers",
                   "--batch": "retrain.batch_size", "--seed": "seed", "--threads": "threads"}
SET_NUMBERS = ["search.w_lr", "search.grad_clip", "search.w_momentum", "retrain.lr", "retrain.drop_path",
               "data.val_fraction", "search.darts.alpha_lr", "search.gold_nas.eta_min", "search.msg_das.tau_max",
               "search.mgas.regrow_fraction", "search.mgas.threshold_lr", "search.target_params"]
SET_INTS = ["search.epochs", "search.nodes", "search.layers", "retrain.epochs", "retrain.cutout",
            "data.synthetic.samples", "search.gold_nas.n0", "search.mgas.stages", "search.msg_das.subgraphs",
            "data.workers"]


def _int_flag_cases(base: list[str], flags: dict[str, str]) -> st.SearchStrategy:
    bad = st.one_of(st.integers(max_value=-1).map(str), huge, st.just("0"))
    return st.tuples(st.sampled_from(sorted(flags)), bad).filter(lambda fv: fv != ("--seed", "0")).map(
        lambda fv: ([*base, fv[0], fv[1]], (flags[fv[0]], fv[0])))  # seed 0 is the one valid value here


SEARCH_CASES = st.one_of(
    _int_flag_cases(SEARCH, SEARCH_INT_FLAGS),
    st.integers(min_value=-9, max_value=99).filter(lambda c: c < 2 or c % 2).map(
        lambda c: ([*SEARCH, "--channels", str(c)], ("search.channels",))),
    st.one_of(not_finite, st.sampled_from(["0", "-1", "-0.5", "1e9"])).map(
        lambda v: ([*SEARCH, "--target-params", v], ("search.target_params", "--target-params"))),
    st.sampled_from(["big", "1e", "--", "nan?", "0x10"]).map(lambda v: ([*SEARCH, "--target-params", v],
                                                                      ("--target-params",))),
    junk.filter(_not_an_int).map(lambda v: ([*SEARCH, "--epochs", v], ("--epochs",))),
    word.map(lambda m: (["search", "--method", m, "--dataset", "digits"], ("search.method", m))),
    word.map(lambda d: (["search", "--method", "darts", "--dataset", d], ("--dataset",))),
    st.tuples(st.sampled_from(SET_NUMBERS), not_finite).map(
        lambda kv: ([*SEARCH, "--set", f"{kv[0]}={kv[1].replace('inf', '.inf').replace('nan', '.nan')}"],
                    (kv[0],))),
    st.tuples(st.sampled_from(SET_INTS), st.sampled_from(["true", "false", "yes", "[1]", "{a: 1}", "x"])).map(
        lambda kv: ([*SEARCH, "--set", f"{kv[0]}={kv[1]}"], (kv[0],))),
    st.tuples(st.sampled_from(SET_INTS), huge).map(lambda kv: ([*SEARCH, "--set", f"{kv[0]}={kv[1]}"], (kv[0],))),
    word.map(lambda k: ([*SEARCH, "--set", f"search.{k}=1"], (f"search.{k}",))),
    junk.filter(lambda t: "=" not in t).map(lambda t: ([*SEARCH, "--set", t], ("--set",))),
    st.sampled_from(["search.epochs=[1, [2", "search.epochs={a: 1, a: 2}", "search.epochs=&a [*a]",
                     "search.epochs=" + "[" * 80 + "]" * 80]).map(lambda t: ([*SEARCH, "--set", t], ("--set",))),
    word.map(lambda f: ([*SEARCH, f"--{f}"], (f"--{f}",))),
    word.map(lambda c: ([c], ("invalid choice", c))),
    # combinations that cannot run, refused before anything is written
    st.sampled_from(["mgas", "msg_das"]).map(lambda m: (["search", "--method", m, "--dataset", "digits",
                                                         "--impl", "reference"], ("search.impl",))),
    st.integers(min_value=5, max_value=40).map(lambda s: (["search", "--method", "mgas", "--dataset", "digits",
                                                           "--preset", "tiny", "--stages", str(s)],
                                                          ("search.mgas.stages",))),
    st.integers(min_value=9, max_value=64).map(lambda k: (["search", "--method", "msg_das", "--dataset", "digits",
                                                           "--subgraphs", str(k)], ("search.msg_das.subgraphs",))),
    st.just(([*SEARCH, "--device", "cpu", "--set", "search.precision=bf16"], ("search.precision",))),
    st.just(([*SEARCH, "--set", "search.impl=reference", "--set", "search.checkpoint_cells=true"],
             ("search.checkpoint_cells",))),
    st.just((["search", "--method", "darts", "--dataset", "cifar10"], ("--data-root",))),
    st.just((["search", "--method", "darts", "--dataset", "cifar10", "--data-root", "/no/such/dir"],
             ("/no/such/dir",))),
)
if not torch.cuda.is_available():
    SEARCH_CASES = st.one_of(SEARCH_CASES, st.just(([*SEARCH, "--device", "cuda"], ("device",))))

TRAIN_CASES = st.one_of(
    _int_flag_cases(TRAIN, TRAIN_INT_FLAGS),
    st.one_of(not_finite, st.sampled_from(["0", "-3", "1e6", "1e300"])).map(
        lambda v: ([*TRAIN, "--target-params", v], ("retrain.target_params", "--target-params"))),
    st.sampled_from(["5000", "90000"]).map(lambda v: ([*TRAIN, "--target-params", v], ("retrain.target_params",))),
    word.map(lambda a: (["train", "--arch", f"{a}.json", "--dataset", "digits"], (f"{a}.json",))),
    word.map(lambda a: (["train", "--arch", a, "--dataset", "digits"], ("neither a built-in",))),
    st.tuples(st.sampled_from(["retrain.lr", "retrain.drop_path", "retrain.aux_weight"]), not_finite).map(
        lambda kv: ([*TRAIN, "--set", f"{kv[0]}={kv[1].replace('inf', '.inf').replace('nan', '.nan')}"],
                    (kv[0],))),
)

INFO_CASES = st.one_of(
    st.integers(max_value=0).map(lambda v: (["info", "--arch", "darts_v2", "--dataset", "cifar10", "--layers",
                                             str(v)], ("--layers",))),
    huge.map(lambda v: (["info", "--arch", "darts_v1", "--dataset", "imagenet", "--layers", v], ("--layers",))),
    st.integers(min_value=-99, max_value=9999).filter(lambda c: c < 2 or c % 2 or c > 2048).map(
        lambda v: (["info", "--arch", "darts_v2", "--dataset", "cifar100", "--channels", str(v)], ("--channels",))),
    word.map(lambda a: (["info", "--arch", a, "--dataset", "cifar10"], ("neither a built-in",))),
    word.map(lambda d: (["info", "--arch", "darts_v2", "--dataset", d], ("--dataset",))),
)


MEASURE = ["latency", "measure", "--arch", "darts_v2", "--dataset", "digits", "--channels", "8", "--layers", "4"]
BUILD = ["latency", "build", "--dataset", "digits", "--preset", "tiny"]
LATENCY_CASES = [
    ([*MEASURE, "--device", "tpu"], ("--device",)),
    ([*MEASURE[:-4], "--device", "cpu", "--channels", "7"], ("--channels",)),
    (["latency", "measure", "--arch", "darts_v2", "--device", "cpu"], ("--dataset",)),
    (["latency", "measure", "--arch", "no_such_arch", "--dataset", "digits", "--device", "cpu"],
     ("neither a built-in",)),
    ([*MEASURE, "--device", "cpu", "--batch", "0"], ("--batch",)),
    ([*MEASURE, "--device", "cpu", "--threads", "-1"], ("--threads",)),
    ([*MEASURE, "--device", "cpu", "--runs", "0"], ("--runs",)),
    ([*MEASURE, "--device", "cpu", "--warmup", "-2"], ("--warmup",)),
    ([*BUILD, "--device", "cpu", "--samples", "5", "--out", "p"], ("--samples",)),
    ([*BUILD, "--device", "cpu", "--samples", "1000000", "--out", "p"], ("--samples",)),
    ([*BUILD, "--device", "gpu", "--out", "p"], ("--device",)),
    ([*BUILD, "--device", "cpu", "--dataset", "mnist", "--out", "p"], ("--dataset",)),
    ([*BUILD, "--device", "cpu", "--preset", "huge", "--out", "p"], ("--preset",)),
    ([*SEARCH, "--latency-predictor", "no_such_dir"], ("not a latency predictor folder",)),
    ([*SEARCH, "--latency-predictor", "p", "--target-latency-ms", "-1"], ("search.latency.target_ms",)),
    ([*SEARCH, "--latency-predictor", "p", "--target-latency-ms", "nan"], ("search.latency.target_ms",)),
    ([*SEARCH, "--target-latency-ms", "5"], ("latency.target_ms needs latency.predictor",)),
    ([*SEARCH, "--cost", "latency"], ("--cost latency needs --latency-predictor",)),
    ([*SEARCH, "--cost", "speed", "--latency-predictor", "p"], ("search.gold_nas.cost",)),
    ([*SEARCH, "--latency-predictor", "p", "--latency-coefficient", "-0.5"], ("search.latency.coefficient",)),
]
if not torch.cuda.is_available():
    LATENCY_CASES += [([*MEASURE, "--device", "cuda"], ("--device cuda",)),
                      ([*BUILD, "--device", "cuda", "--out", "p"], ("--device cuda",))]


@pytest.mark.parametrize(("argv", "names"), LATENCY_CASES, ids=[" ".join(c[0][1:]) for c in LATENCY_CASES])
def test_bad_latency_arguments_are_refused(argv, names):
    _refused(argv, names, "latency")


def test_a_latency_build_never_replaces_a_file_or_a_folder_of_something_else():
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "a_file").write_text("x")
        (folder / "mine").mkdir()
        (folder / "mine" / "notes.txt").write_text("keep me")
        for out, names in [("a_file", ("is a file",)), ("mine", ("something other than a latency predictor",))]:
            assert_refused([*BUILD, "--device", "cpu", "--samples", "10", "--out", out], folder, names, "latency")


def _refused(argv: list[str], names: tuple[str, ...], kind: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        assert_refused(argv, Path(d), names, kind)


@pytest.mark.slow
@settings(max_examples=220)
@given(SEARCH_CASES)
def test_bad_search_arguments_are_refused(argv_names):
    _refused(*argv_names, "search")


@settings(max_examples=70)
@given(TRAIN_CASES)
def test_bad_train_arguments_are_refused(argv_names):
    _refused(*argv_names, "train")


@settings(max_examples=60)
@given(INFO_CASES)
def test_bad_info_arguments_are_refused(argv_names):
    _refused(*argv_names, "info")


def test_output_paths_that_are_files_or_missing_inputs_are_named():
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        a_file = folder / "a_file"
        a_file.write_text("x")
        spec = folder / "x.yaml"
        spec.write_text("name: x\ndataset: digits\npreset: tiny\n")
        cases = [
            ([*SEARCH, "--out", str(a_file)], "search"), ([*TRAIN, "--out", str(a_file)], "train"),
            ([*SEARCH, "--out", str(a_file / "below")], "search"), (["run", str(spec), "--out", str(a_file)], "run"),
            (["report", str(folder), "--out", str(a_file)], "report"), (["report", str(a_file)], "report"),
            (["report", str(folder / "missing")], "report"), (["report", str(folder)], "report"),
            (["run", str(folder / "missing.yaml")], "run"), (["run", str(folder)], "run"),
            (["info", "--arch", str(folder), "--dataset", "cifar10"], "info"),
            (["info", "--arch", str(folder / "missing.json"), "--dataset", "cifar10"], "info"),
            (["train", "--arch", str(a_file), "--dataset", "digits"], "train"),
        ]
        for argv, kind in cases:
            assert_refused(argv, folder, (str(a_file), str(folder)), kind)


def test_local_output_paths_that_are_uris_loops_or_over_long_names_are_refused_in_one_line():
    """search, train and report write to local folders: a URI (which ``Path`` would fold into a
    local folder named ``s3:``), a symlink loop, a broken symlink or a name longer than the
    filesystem allows is one line, and nothing is written."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        loop = folder / "loop"
        loop.symlink_to(loop)
        dangling = folder / "dangling"
        dangling.symlink_to(folder / "nowhere")
        long_name = str(folder / ("n" * 300))
        results = Path(__file__).resolve().parents[1] / "data" / "results_v1"
        for out, names in [("s3://bucket/x", ("not to a URI",)), ("gs://bucket/x", ("not to a URI",)),
                           ("file:///tmp/x", ("not to a URI",)), (str(loop), ("symlink loop",)),
                           (str(dangling), ("broken symlink",)), (long_name, ("too long",))]:
            for argv, kind in [([*SEARCH, "--out", out], "search"), ([*TRAIN, "--out", out], "train"),
                               (["report", str(results), "--out", out], "report")]:
                assert_refused(argv, folder, names, kind)
        spec = folder / "x.yaml"
        spec.write_text("name: x\ndataset: digits\npreset: tiny\n")
        a_file = folder / "a_file"
        a_file.write_text("x")
        for out, names in [("file://", ("names no folder",)), (f"file://{a_file}", ("is a file",)),
                           (f"file://{loop}", ("symlink loop",))]:  # mgas run: file:// is a local folder
            assert_refused(["run", str(spec), "--out", out], folder, names, "run")


def test_settings_that_contradict_each_other_are_refused():
    """Each value in bounds, together impossible: a minimum learning rate above the learning rate
    (search and retraining), two sweep axes for one setting."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        spec = folder / "two_axes.yaml"
        spec.write_text("name: x\ndataset: digits\npreset: tiny\nsweep:\n  method: [mgas]\n  stages: [1, 2]\n"
                        "  search.mgas.stages: [2, 3]\n")
        cases = [([*SEARCH, "--set", "search.w_lr_min=0.5"], ("search.w_lr_min",), "search"),
                 ([*TRAIN, "--set", "retrain.lr_min=0.5"], ("retrain.lr_min",), "train"),
                 (["run", str(spec), "--dry-run"], ("'stages' and 'search.mgas.stages' both sweep",), "run")]
        for argv, names, kind in cases:
            assert_refused(argv, folder, names, kind)


def test_synthetic_data_whose_sizes_multiply_past_the_memory_bound_is_refused():
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        argv = ["search", "--method", "darts", "--dataset", "synthetic", "--no-progress",
                "--set", "data.synthetic.samples=10000000", "--set", "data.synthetic.size=1024",
                "--set", "data.synthetic.channels=64"]
        assert_refused(argv, folder, ("data.synthetic", "GiB of float32"), "search")
