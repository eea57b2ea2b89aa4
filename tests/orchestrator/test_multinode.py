"""The cluster commands of the README and docs/cluster.md on a real cluster: a head and two worker nodes started with
`ray start` on this machine (fake GPUs and accelerator types), results on a local S3 (moto).

Proves: `ray job submit` of a sweep with the code shipped as its working_dir puts one row per
trial in S3; per-method resources place the trials; a killed driver plus `--resume` from another
directory ends with exactly one row per trial; `mgas collect` rebuilds the same bytes after the
results are deleted; `mgas report s3://...` writes the report; a node that cannot import the
code, and node-local storage on a multi-node cluster, are refused with one line.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from orchestrator.results import read_rows
from orchestrator.storage import resolve
from tests.orchestrator.helpers import TINY_BASE, write_spec
from tests.orchestrator.multinode import BUCKET, RAY_CLI, LocalCluster, LocalS3, cluster_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.cluster]  # one after another with the Ray tests (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
WORKERS = {"127.0.0.3": {"accelerator_type:FAKE_A": 1}, "127.0.0.4": {}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    s3 = LocalS3(folder).start()
    env = cluster_env(s3)
    ray_cluster = LocalCluster(folder, env)
    try:
        ray_cluster.start_head()
        for ip, resources in WORKERS.items():
            ray_cluster.add_worker(ip, cpus=2, gpus=1, resources=resources)
        ray_cluster.nodes_info = ray_cluster.wait_for_nodes(3)
        yield ray_cluster
    finally:
        ray_cluster.stop()
        s3.stop()


def mgas(env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@contextmanager
def aws_env(env: dict[str, str]) -> Iterator[None]:
    """The S3 endpoint and credentials for reads from this test process, for the block only."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def s3_rows(env: dict[str, str], uri: str) -> list[dict]:
    with aws_env(env):
        return read_rows(uri)


def s3_files(env: dict[str, str], uri: str) -> dict[str, bytes]:
    """Every file of the experiment but Tune's own state, by path below ``uri``."""
    with aws_env(env):
        root = resolve(uri)
        return {f.path[len(root.path):]: f.read_bytes() for f in root.files() if "/tune/" not in f.path}


def s3_delete(env: dict[str, str], uri: str) -> None:
    with aws_env(env):
        resolve(uri).delete_dir()


def _checkout(folder: Path) -> Path:
    """A copy of the code, as on the machine a user submits from, with the test's experiment in it."""
    for package in ("mgas_common", "mgas_core", "orchestrator", "analysis"):
        shutil.copytree(REPO / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    spec = {
        "name": "placed", "dataset": "synthetic", "preset": "smoke", "storage_path": f"s3://{BUCKET}/sweeps",
        "base": {**TINY_BASE, "search.epochs": 2, "retrain.epochs": 1},
        "methods": {"mgas": {"search.layers": 4, "retrain.layers": 4, "search.mgas.stages": 2,
                             "search.mgas.control.lambda0": 0.5}},
        "sweep": {"method": ["darts"], "seed": [0, 1]},
        "include": [{"method": "mgas", "seed": 0}],
        "resources": {"default": {"cpu": 1, "gpu": 0.5}, "mgas": {"accelerator_type": "FAKE_A"}},
        "max_concurrent_trials": 3, "max_failures": 1,
    }
    (folder / "experiments").mkdir()
    path = folder / "experiments" / "placed.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_killed_driver_job_submit_resume_collect_and_report_from_s3(cluster, tmp_path):
    checkout, first_dir, other_dir = (tmp_path / name for name in ("checkout", "a", "c"))
    for d in (checkout, first_dir, other_dir):
        d.mkdir()
    spec = _checkout(checkout)
    uri = f"s3://{BUCKET}/sweeps/placed"
    trial_ids = ["darts_seed0", "darts_seed1", "mgas_seed0"]

    # 1. a driver on a node (`mgas run --address`), killed once the first trial's row is in S3
    command = [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--address", cluster.address]
    driver = subprocess.Popen(command, cwd=first_dir, env=cluster.env, stdout=(tmp_path / "driver.log").open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: s3_rows(cluster.env, uri) or driver.poll() is not None, 240, "the first row in S3", poll=0.3)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver's own session: its trials die with its job
        driver.wait(timeout=30)
    assert 1 <= len(s3_rows(cluster.env, uri)) < 3, (tmp_path / "driver.log").read_text()[-2000:]

    # 2. the README's `ray job submit` (docs/cluster.md) from the checkout (code shipped as the job's working_dir)
    # resumes it
    runtime = {"excludes": [".git", ".venv", "results", "runs"], "env_vars": {"MGAS_GIT_SHA": "unused-here"}}
    def submit() -> subprocess.CompletedProcess:
        return subprocess.run([*RAY_CLI, "job", "submit", "--address", cluster.dashboard, "--working-dir", ".",
                               "--runtime-env-json", json.dumps(runtime), "--",
                               "python", "-m", "orchestrator.cli", "run", "experiments/placed.yaml", "--resume"],
                              cwd=checkout, env=cluster.env, capture_output=True, text=True, timeout=300)

    # the head's job agent can still be starting on a loaded machine: the server then refuses the job
    # ("No available agent"), nothing was submitted, and the same submission is tried again
    deadline = time.monotonic() + 120
    job = submit()
    while job.returncode != 0 and "No available agent" in job.stderr and time.monotonic() < deadline:
        job = submit()
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert "resuming sweep" in job.stdout and "sweep placed: 3/3 trials ok" in job.stdout
    rows = s3_rows(cluster.env, uri)
    assert sorted(r["trial_id"] for r in rows) == trial_ids  # exactly one row per trial
    assert all(r["status"] == "ok" and r["gpu_ids"] and r["node_ip"] in WORKERS for r in rows)
    fake_a = next(n["id"] for n in cluster.nodes_info if "accelerator_type:FAKE_A" in n["resources"])
    assert next(r for r in rows if r["method"] == "mgas")["node_id"] == fake_a  # per-method placement
    assert not (checkout / "results").exists()  # nothing landed in the job's working directory

    # 3. every file rebuilt byte for byte from Tune's saved state, from another directory
    before = s3_files(cluster.env, uri)
    assert sum(name.startswith("/curves/") for name in before) == 3 and "/archs/mgas_seed0/arch.json" in before
    for folder in ("results", "curves", "archs"):
        s3_delete(cluster.env, f"{uri}/{folder}")
    assert s3_rows(cluster.env, uri) == []
    collected = mgas(cluster.env, other_dir, "collect", uri, "--json")
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert json.loads(collected.stdout.splitlines()[-1])[0]["trial_ids"] == trial_ids
    after = s3_files(cluster.env, uri)
    assert sorted(after) == sorted(before)
    assert after == before  # byte-identical rows (same values, same trial ids), curves and architectures

    # 4. the report straight from S3
    report = mgas(cluster.env, other_dir, "report", uri)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "3 trials (3 ok, 0 failed)" in (other_dir / "placed-report" / "report.html").read_text()


def test_unimportable_code_local_storage_and_impossible_resources_are_refused_in_one_line(cluster, tmp_path):
    broken = tmp_path / "broken"
    (broken / "mgas_core").mkdir(parents=True)
    (broken / "mgas_core" / "__init__.py").write_text("raise ImportError('a stale copy of mgas_core')\n")
    runtime = tmp_path / "runtime.yaml"
    runtime.write_text(yaml.safe_dump({"working_dir": str(broken)}))
    spec = _checkout(tmp_path)
    refused = mgas(cluster.env, tmp_path, "run", str(spec), "--address", cluster.address, "--runtime-env", str(runtime))
    assert refused.returncode == 2, refused.stderr[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("mgas: error: node 127.0.0.") and "cannot import the mgas package" in line
    assert "a stale copy of mgas_core" in line and refused.stderr.count("mgas: error") == 1

    local = mgas(cluster.env, tmp_path, "run", str(spec), "--address", cluster.address, "--out", str(tmp_path / "o"))
    assert local.returncode == 2 and "shared storage" in local.stderr.strip().splitlines()[-1]

    # trials no node can ever run (Tune would wait forever) are refused before Tune starts
    for resources, fragment in [
        ({"cpu": 4}, "resources.cpu=4 per trial, but the largest node of the Ray cluster"),
        ({"default": {"cpu": 1}, "darts": {"gpu": 1, "accelerator_type": "FAKE_B"}},
         "resources.darts.accelerator_type=FAKE_B, but no node of the Ray cluster"),
    ]:
        too_big = write_spec(tmp_path, name="too-big", sweep={"method": ["darts"], "seed": [0]},
                             resources=resources, shared_storage=True)
        refused = mgas(cluster.env, tmp_path, "run", str(too_big), "--address", cluster.address)
        assert refused.returncode == 2, refused.stderr[-2000:]
        line = refused.stderr.strip().splitlines()[-1]
        assert fragment in line and refused.stderr.count("mgas: error") == 1, refused.stderr[-2000:]
        assert not (tmp_path / "out" / "too-big").exists()  # nothing written



def test_auto_resolves_to_this_users_cluster_and_says_which(cluster, tmp_path):
    # the address file of the last `ray start` (others may run beside it: the suite's embedded Rays)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(cluster.address)
    env = {**{k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(tmp_path)}
    code = "from orchestrator.reachability import check_ray_address; print(check_ray_address('auto'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == cluster.address  # the cluster Ray's own `auto` finds, its owner this user
    assert f"--address auto: the Ray cluster at {cluster.address}" in done.stderr


def test_latency_predictors_timed_on_every_worker_and_loaded_by_a_trial_for_its_device(cluster, tmp_path):
    """`mgas latency build --address ... --out s3://...`: the samples are split over both worker
    nodes (one node type: one CPU model on this machine), one predictor folder per type lands in
    the object store, and a trial on the cluster given that root loads its device's predictor
    (copied to its node) and searches with the latency term; another input shape is refused."""
    out = f"s3://{BUCKET}/predictors"
    built = mgas(cluster.env, tmp_path, "latency", "build", "--address", cluster.address, "--device", "cpu",
                 "--dataset", "synthetic", "--preset", "smoke", "--samples", "12", "--runs", "2", "--warmup", "0",
                 "--out", out, "--json")
    assert built.returncode == 0, built.stderr[-3000:]
    (only,) = json.loads(built.stdout.strip().splitlines()[-1])["types"]
    workers = {n["id"] for n in cluster.nodes_info if n["resources"].get("CPU")}
    assert set(only["nodes"]) == workers and len(workers) == 2  # both workers timed (the head has no CPU)
    assert only["folder"].startswith(f"{out}/cpu-") and only["samples"] == 12
    assert only["device"] == "cpu" and only["input_shape"] == [3, 8, 8]
    with aws_env(cluster.env):
        folder = resolve(only["folder"])
        names = sorted(posixpath.basename(f.path) for f in folder.files())
        assert names == ["lookup.json", "predictor.json", "predictor.pt", "samples.jsonl"]
        assert len(folder.child("samples.jsonl").read_bytes().decode().splitlines()) == 12

    spec = write_spec(tmp_path, name="latency", sweep={"method": ["darts"], "seed": [0]}, shared_storage=True,
                      base={"search.latency.predictor": out, "search.latency.coefficient": 0.5})
    run = mgas(cluster.env, tmp_path, "run", str(spec), "--address", cluster.address)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    (row,) = read_rows(tmp_path / "out" / "latency")
    assert row["status"] == "ok" and row["latency_ms"] > 0 and row["latency_device"].startswith("cpu: ")
    epochs = [json.loads(line) for f in (tmp_path / "out" / "latency" / "tune").glob("*/result.json")
              for line in f.read_text().splitlines()]
    predicted = [e["latency_pred_ms"] for e in epochs if e.get("phase") == "search"]
    assert predicted and all(v > 0 for v in predicted)  # the search priced its architecture every epoch

    elsewhere = write_spec(tmp_path, name="latency-elsewhere", sweep={"method": ["darts"], "seed": [0]},
                           shared_storage=True, base={"search.latency.predictor": out, "data.synthetic.size": 16})
    failed = mgas(cluster.env, tmp_path, "run", str(elsewhere), "--address", cluster.address)
    (row,) = read_rows(tmp_path / "out" / "latency-elsewhere")
    assert row["status"] != "ok" and "no latency predictor in" in row["error"] and "input 3x16x16" in row["error"], \
        (failed.stdout + failed.stderr)[-2000:]
