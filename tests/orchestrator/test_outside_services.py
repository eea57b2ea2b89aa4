"""Outside services a sweep depends on are checked before a trial starts: `--address auto` joins
only a cluster of this user's, and a runtime env is set up on a worker (a probe task) before the
trials get it, embedded Ray included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.reachability import auto_address_problem
from tests.orchestrator.helpers import write_spec
from tests.processes import private_ray_env


def test_auto_does_not_join_a_cluster_another_user_started():
    assert auto_address_problem("10.0.0.5:6379", {"alice"}, "bob") == (
        "--address auto found the Ray cluster at 10.0.0.5:6379, started by alice, not by you (bob); give "
        "--address 10.0.0.5:6379 to join it on purpose, or start your own (ray start --head)")
    assert auto_address_problem("10.0.0.5:6379", {"alice", "bob"}, "bob") is None  # a node of it is yours
    assert auto_address_problem("10.0.0.5:6379", set(), "bob") is None  # no raylet here: it must answer instead


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    with private_ray_env():  # a Ray temp folder of its own: no other Ray of this machine is seen
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=300)


@pytest.mark.slow
@pytest.mark.ray  # one after another with the tests that start clusters
def test_auto_without_a_cluster_of_this_machine_is_one_line(tmp_path):
    # private_ray_env: a temp folder of its own, without the address file of a `ray start`; Rays that
    # run beside it (the user's, the suite's embedded ones) are not joined
    spec = write_spec(tmp_path, sweep={"method": ["darts"], "seed": [0]})
    done = run(["run", str(spec), "--address", "auto"], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("mgas: error: --address auto: no `ray start` on this machine left a cluster address (")
    assert line.endswith("ray_current_cluster); start one (ray start --head) or give HOST:PORT")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_a_runtime_env_the_workers_cannot_use_is_refused_before_a_trial_starts(tmp_path):
    """Embedded Ray too: a probe task runs under the runtime env before any trial (here its
    PYTHONPATH puts a stale copy of the package first), and the sweep stops in one line."""
    stale = tmp_path / "stale" / "mgas_core"
    stale.mkdir(parents=True)
    (stale / "__init__.py").write_text("raise ImportError('a stale copy of mgas_core')\n")
    runtime = tmp_path / "runtime.yaml"
    runtime.write_text(yaml.safe_dump({"env_vars": {"PYTHONPATH": str(stale.parent)}}))
    spec = write_spec(tmp_path, sweep={"method": ["darts"], "seed": [0]})
    done = run(["run", str(spec), "--runtime-env", str(runtime)], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("mgas: error: node ") and "cannot import the mgas package" in line, done.stderr[-3000:]
    assert "a stale copy of mgas_core" in line and "Traceback" not in done.stderr
    assert not list((tmp_path / "out").rglob("*.parquet"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_a_working_dir_with_a_file_ray_cannot_pack_is_one_line(tmp_path):
    code = tmp_path / "code"
    (code / "data").mkdir(parents=True)
    (code / "data" / "secret.bin").write_bytes(b"x")
    (code / "data" / "secret.bin").chmod(0)
    runtime = tmp_path / "runtime.yaml"
    runtime.write_text(yaml.safe_dump({"working_dir": str(code)}))
    spec = write_spec(tmp_path, sweep={"method": ["darts"], "seed": [0]})
    done = run(["run", str(spec), "--runtime-env", str(runtime), "--dry-run"], tmp_path)
    assert done.returncode == 2 and "secret.bin cannot be read by this user" in done.stderr, done.stderr[-2000:]
    runtime.write_text(yaml.safe_dump({"working_dir": str(code), "excludes": ["data/"]}))
    assert run(["run", str(spec), "--runtime-env", str(runtime), "--dry-run"], tmp_path).returncode == 0
