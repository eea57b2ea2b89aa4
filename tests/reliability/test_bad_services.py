"""Bad-input suite, outside services: a Ray address, an MLflow tracking store, an object store, a
runtime env or a compiler that a sweep depends on and that cannot serve it is refused in one line,
within its bound, before anything is written or Ray starts (loopback addresses and local servers
only: a closed port, a port that accepts and never answers, a local HTTP server, moto's S3).
See bad_input.py."""

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

from tests.reliability.bad_input import assert_refused


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
