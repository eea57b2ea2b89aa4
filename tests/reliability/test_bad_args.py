"""Bad-input suite, command lines: generated bad arguments to `mgas search`, `train`, `info`,
`run` and `report` (values out of range, non-finite, of the wrong type, unknown names, settings
that cannot run together, paths that are files, folders or missing). See bad_input.py."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import os
import tempfile
import threading
from collections.abc import Iterator
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


def _closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_outside_services_that_do_not_answer_are_refused_within_seconds():
    """A Ray address or an MLflow server where nothing listens (loopback only), an out-of-range
    port, an empty address: one line within the bound (5 s to connect), before anything is
    written and before Ray starts (the run would otherwise retry for minutes)."""
    import ray

    port = _closed_port()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        spec = folder / "x.yaml"
        spec.write_text("name: x\ndataset: digits\npreset: tiny\n")
        run = ["run", str(spec)]
        cases = [([*run, "--address", f"127.0.0.1:{port}"], ("nothing answers at 127.0.0.1",)),
                 ([*run, "--address", f"ray://127.0.0.1:{port}"], ("nothing answers at 127.0.0.1",)),
                 ([*run, "--address", "127.0.0.1:99999"], ("port in 1..65535",)),
                 ([*run, "--address", "nohost"], ("expected HOST:PORT",)),
                 ([*run, "--address", ""], ("--address is empty",)),
                 ([*run, "--mlflow", f"http://127.0.0.1:{port}"], ("no MLflow server answers at 127.0.0.1",))]
        for argv, names in cases:
            assert_refused(argv, folder, names, "run")
            assert not ray.is_initialized()
        saved = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"  # the address from the environment, as Ray reads it
        try:
            assert_refused(run, folder, ("nothing answers at 127.0.0.1",), "run")
        finally:
            os.environ.pop("RAY_ADDRESS")
            if saved is not None:
                os.environ["RAY_ADDRESS"] = saved


@contextlib.contextmanager
def http_server(status: int, body: bytes) -> Iterator[str]:
    """A loopback HTTP server answering every GET with ``status`` and ``body``; its base URL."""
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_mlflow_stores_it_could_not_log_to_are_refused_before_ray_starts():
    """An unknown scheme, a plain folder (MLflow 3's refused file store), SQLite in memory, in a
    folder, under a file or not a database, a database without its driver, a server that is not
    MLflow or refuses the user: one line naming tracking.mlflow.uri, nothing written, no Ray."""
    import ray

    missing = {driver: importlib.util.find_spec(module) is None for driver, module in [("mysqldb", "MySQLdb")]}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        spec = folder / "x.yaml"
        spec.write_text("name: x\ndataset: digits\npreset: tiny\n")
        run = ["run", str(spec), "--mlflow"]
        cases = [("ftp://x", "cannot store runs at a ftp://"), (str(folder / "store"), "MLflow's file store"),
                 ((folder / "store").as_uri(), "MLflow's file store"), ("mlruns", "MLflow's file store"),
                 ("sqlite://", "in memory"), (f"sqlite:///{folder}", "is a folder"),
                 (f"sqlite:///{spec}/m.db", "is a file, so"), (f"sqlite:///{spec}", "is not a SQLite database"),
                 ("postgresql+nosuchdriver://127.0.0.1/db", "tracking.mlflow.uri"),
                 ("databricksx://h", "cannot store runs at")]
        if missing["mysqldb"]:
            cases.append(("mysql://127.0.0.1/db", "driver 'mysqldb' is not installed"))
        for uri, said in cases:
            assert_refused([*run, uri], folder, (said,), "run")
            assert not ray.is_initialized()
        for status, body, said in [(404, b"<html>not here</html>", "not an MLflow tracking server (HTTP 404"),
                                   (401, b"{}", "refuses this user (HTTP 401)"),
                                   (200, b"<html>a web page</html>", "not an MLflow tracking server")]:
            with http_server(status, body) as url:
                assert_refused([*run, url], folder, (said,), "run")


def test_an_mlflow_server_without_the_experiment_yet_passes_the_check():
    from orchestrator.tracking_store import check_tracking_store

    missing = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no experiment"}).encode()
    with http_server(404, missing) as url:
        check_tracking_store(url, "x")
    with http_server(200, json.dumps({"experiment": {"experiment_id": "1"}}).encode()) as url:
        check_tracking_store(url, "x")


@pytest.mark.slow
def test_object_stores_without_credentials_or_answer_are_refused_within_the_bound(monkeypatch):
    """A gs:// results root on a machine without Google credentials (its metadata server a loopback
    port that accepts and never answers) and an s3:// endpoint where nothing listens: one line
    within the store bound (10 s), before anything is written or Ray starts."""
    import socket

    import ray

    with tempfile.TemporaryDirectory() as d, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)  # connections queue, nothing is ever read or answered
        folder = Path(d)
        monkeypatch.setenv("HOME", str(folder))  # no gcloud configuration
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv("GCE_METADATA_ROOT", f"127.0.0.1:{silent.getsockname()[1]}")
        for name, value in [("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"), ("AWS_REGION", "us-east-1")]:
            monkeypatch.setenv(name, value)
        spec = folder / "x.yaml"
        spec.write_text("name: x\ndataset: digits\npreset: tiny\n")
        closed = f"s3://bucket/x?endpoint_override=127.0.0.1:{_closed_port()}&scheme=http"
        for argv in (["run", str(spec), "--out", "gs://bucket/sweeps"], ["collect", closed]):
            outcome = assert_refused(argv, folder, ("results location",), argv[0])
            assert "check " in outcome.err and outcome.seconds < 15
            assert not ray.is_initialized()


def test_a_compiler_that_exists_but_does_not_work_is_refused_before_ray_starts():
    """`retrain.compile: true` with a C++ compiler on PATH that fails: one line within seconds, before
    anything is written or Ray starts (it used to fail the first retraining, 110 s in)."""
    import ray
    import torch._inductor.config as inductor_config

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        broken = folder / "bin" / "c++"
        broken.parent.mkdir()
        broken.write_text("#!/bin/sh\necho 'cannot find crt1.o' >&2\nexit 1\n")
        broken.chmod(0o755)
        spec = folder / "x.yaml"
        spec.write_text("name: x\ndataset: digits\npreset: tiny\nbase: {retrain.compile: true}\n")
        with inductor_config.patch({"cpp.cxx": (None, str(broken))}):
            outcome = assert_refused(["run", str(spec)], folder, ("retrain.compile: the C++ compiler",), "run")
        assert "cannot find crt1.o" in outcome.err and outcome.seconds < 15
        assert not ray.is_initialized()


@pytest.mark.slow
def test_storage_paths_on_a_local_s3_are_refused_in_one_line(monkeypatch):
    """Against a local S3 (moto, loopback): no bucket, a bucket that does not exist, an experiment
    folder with no sweep or no results; `run`, `collect` and `report` each refuse in one line,
    before anything is written and with no Ray left running."""
    from tests.orchestrator.multinode import BUCKET, LocalS3

    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as server:
        folder = Path(d)
        s3 = LocalS3(Path(server)).start()  # its log outside the cases' folder
        try:
            for name, value in s3.env().items():
                monkeypatch.setenv(name, value)
            spec = folder / "x.yaml"
            spec.write_text("name: x\ndataset: digits\npreset: tiny\n")
            missing = ("bucket 'no-such-bucket' does not exist",)
            cases = [
                (["run", str(spec), "--out", "s3://"], ("no bucket named",)),
                (["collect", "s3:///x"], ("no bucket named",)),
                (["report", "s3://"], ("no bucket named",)),
                (["run", str(spec), "--out", "s3://no-such-bucket/sweeps"], missing),
                (["collect", "s3://no-such-bucket/x"], missing),
                (["report", "s3://no-such-bucket/x"], missing),
                (["collect", f"s3://{BUCKET}/nothing"], ("holds no sweep",)),
                (["report", f"s3://{BUCKET}/nothing"], ("does not exist", "holds no results")),
            ]
            for argv, names in cases:
                assert_refused(argv, folder, names, argv[0])
        finally:
            s3.stop()


def test_runtime_envs_a_worker_would_die_on_are_refused_before_ray_starts():
    """An env var name with ``=`` or a NUL, a NUL in a value, a pip entry that is not a requirement:
    a worker given them dies at start and its trial waits forever, so they are refused up front."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        spec = folder / "x.yaml"
        spec.write_text("name: x\ndataset: digits\npreset: tiny\n")
        for text, names in [('env_vars: {"A=B": "1"}', ("env_vars name 'A=B'",)),
                            ('env_vars: {"A\\0B": "1"}', ("env_vars name",)),
                            ('env_vars: {"A": "x\\0y"}', ("NUL",)),
                            ('env_vars: {"1A": "1"}', ("env_vars name '1A'",)),
                            ('pip: ["!!!junk"]', ("pip entry '!!!junk'",)),
                            ('pip: ["torch>=2.4", "==1.0"]', ("pip entry '==1.0'",))]:
            runtime = folder / "runtime.yaml"
            runtime.write_text(text + "\n")
            assert_refused(["run", str(spec), "--runtime-env", str(runtime), "--dry-run"], folder, names, "run")
            runtime.unlink()


def test_synthetic_data_whose_sizes_multiply_past_the_memory_bound_is_refused():
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        argv = ["search", "--method", "darts", "--dataset", "synthetic", "--no-progress",
                "--set", "data.synthetic.samples=10000000", "--set", "data.synthetic.size=1024",
                "--set", "data.synthetic.channels=64"]
        assert_refused(argv, folder, ("data.synthetic", "GiB of float32"), "search")
