"""Per-method resources, the runtime environment and the results location: spec to Tune, no Ray."""

from __future__ import annotations

import json

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.runtime_env import load_runtime_env
from orchestrator.spec import expand_trials, load_spec
from orchestrator.sweep import experiment_uri, trial_placement
from tests.orchestrator.helpers import write_spec


def _no_ray(monkeypatch):
    import orchestrator.ray_runtime as runtime

    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(runtime, "init_ray", refuse)


def test_resources_per_method_reach_tune_as_placement_bundles(tmp_path):
    spec, _ = load_spec(write_spec(tmp_path, sweep={"method": ["darts", "msg_das", "mgas"], "seed": [0]},
                                   resources={"default": {"cpu": 2}, "mgas": {"gpu": 1, "accelerator_type": "A100"},
                                              "msg_das": {"gpu": 0.5}}))
    trials = {t["axes"]["method"]: t for t in expand_trials(spec)}
    bundles = {m: trial_placement({"trial": t}).bundles for m, t in trials.items()}
    assert bundles["darts"] == [{"CPU": 2.0}]
    assert bundles["msg_das"] == [{"CPU": 2.0, "GPU": 0.5}]
    assert bundles["mgas"] == [{"CPU": 2.0, "GPU": 1.0, "accelerator_type:A100": 0.001}]
    assert all(t["settings"]["threads"] == 2 for t in trials.values())  # torch threads from the method's CPUs


def test_dry_run_names_each_methods_request(tmp_path, capsys, monkeypatch):
    _no_ray(monkeypatch)
    path = write_spec(tmp_path, resources={"cpu": 1, "mgas": {"gpu": 0.5, "accelerator_type": "T4"}})
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "resources per trial: cpu=1 gpu=0; mgas: cpu=1 gpu=0.5 accelerator_type=T4" in out


@pytest.mark.parametrize("resources,fragment", [
    ({"mgas": {"gpu": 2}}, "resources.mgas.gpu: gpu 2: a trial uses one device"),
    ({"gpu": 4}, "resources.gpu"),
    ({"nas": {"gpu": 1}}, "unknown key 'nas' in resources; allowed: default, darts"),
    ({"cpu": 1, "default": {"cpu": 2}}, "either at the top of resources or under default"),
    ({"mgas": {"tpu": 1}}, "resources.mgas.tpu"),
])
def test_bad_resources_are_one_line_before_ray(tmp_path, capsys, monkeypatch, resources, fragment):
    _no_ray(monkeypatch)
    assert main(["run", str(write_spec(tmp_path, resources=resources))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


def test_runtime_block_and_runtime_env_file(tmp_path):
    project = tmp_path / "project"
    (project / "experiments").mkdir(parents=True)
    spec, folder = load_spec(write_spec(project / "experiments", runtime={
        "working_dir": "..", "pip": ["safetensors"], "env_vars": {"OMP_NUM_THREADS": 1}, "excludes": [".git"]}))
    assert spec.runtime.to_ray(folder) == {"working_dir": str(project), "pip": ["safetensors"],
                                           "env_vars": {"OMP_NUM_THREADS": "1"}, "excludes": [".git"]}
    env_file = tmp_path / "runtime.yaml"
    env_file.write_text(yaml.safe_dump({"working_dir": "project", "env_vars": {"A": "b"}}))
    assert load_runtime_env(env_file) == {"working_dir": str(project), "env_vars": {"A": "b"}}


@pytest.mark.parametrize("content,fragment", [
    ({"workdir": "."}, "workdir"),
    ({"working_dir": "no/such/folder"}, "is not a folder"),
    ({"pip": "torch"}, "pip"),
])
def test_bad_runtime_env_is_one_line_before_ray(tmp_path, capsys, monkeypatch, content, fragment):
    _no_ray(monkeypatch)
    env_file = tmp_path / "runtime.json"
    env_file.write_text(json.dumps(content))
    assert main(["run", str(write_spec(tmp_path)), "--runtime-env", str(env_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


def test_results_location_is_out_else_storage_path_else_output_dir(tmp_path):
    spec, folder = load_spec(write_spec(tmp_path))
    assert experiment_uri(spec, folder, None) == str(tmp_path / "out" / "tiny")
    assert experiment_uri(spec, folder, "s3://bucket/sweeps/") == "s3://bucket/sweeps/tiny"
    spec, folder = load_spec(write_spec(tmp_path, storage_path="gs://b/x"))
    assert experiment_uri(spec, folder, None) == "gs://b/x/tiny"
    spec, folder = load_spec(write_spec(tmp_path, storage_path="shared"))
    assert experiment_uri(spec, folder, None) == str(tmp_path / "shared" / "tiny")


def test_deterministic_and_loader_workers_reach_every_trial(tmp_path):
    spec, _ = load_spec(write_spec(tmp_path, deterministic=True, dataset={"name": "synthetic", "workers": 3}))
    settings = expand_trials(spec)[0]["settings"]
    assert settings["deterministic"] is True and settings["data"]["workers"] == 3
    settings = expand_trials(load_spec(write_spec(tmp_path))[0])[0]["settings"]
    assert settings["deterministic"] is False and settings["data"]["workers"] is None  # derived on the worker


def test_local_storage_is_refused_for_ray_client_and_submitted_jobs(tmp_path, monkeypatch):
    from mgas_common.errors import UserInputError
    from orchestrator.ray_runtime import check_cluster_storage

    with pytest.raises(UserInputError, match=r"a Ray Client sweep \(ray://\) runs on the cluster's head"):
        check_cluster_storage(str(tmp_path / "out"), declared_shared=False, client=True)
    check_cluster_storage("s3://bucket/sweeps", declared_shared=False, client=True)  # shared: fine
    check_cluster_storage(str(tmp_path / "out"), declared_shared=True, client=True)  # declared shared: fine
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what a `ray job submit` driver sees
    with pytest.raises(UserInputError, match="inside the job's temporary working directory"):
        check_cluster_storage(str(tmp_path / "results" / "x"), declared_shared=False)


@pytest.mark.parametrize("argv,fragment", [
    (["collect", "nosuch://bucket/x"], "results location nosuch://bucket/x: cannot be read"),
    (["collect", "{tmp}/empty"], "holds no sweep"),
    (["report", "nosuch://bucket/x"], "results location nosuch://bucket/x: cannot be read"),
    (["run", "{spec}", "--out", "nosuch://bucket"], "results location nosuch://bucket/tiny"),
])
def test_bad_storage_locations_are_one_line(tmp_path, capsys, monkeypatch, argv, fragment):
    _no_ray(monkeypatch)
    (tmp_path / "empty").mkdir()
    spec = write_spec(tmp_path)
    assert main([a.format(tmp=tmp_path, spec=spec) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


# --- what embedded Ray and Tune start (benchmarks.orchestration) -----------------------------------

TRIAL_WORKERS = """
import json, os, psutil, ray
from ray.tune.execution.class_cache import _ActorClassCache
from orchestrator.ray_runtime import init_ray, trials_in_driver_environment
os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"  # one of the variables Tune hands its trial actors
assert init_ray(None)

class Trial:
    def probe(self):
        return {"pid": os.getpid(), "runtime_env": ray.get_runtime_context().get_runtime_env_string(),
                "env": {k: os.environ.get(k) for k in ("PL_DISABLE_FORK", "RAY_CHDIR_TO_TRIAL_DIR")}}

tunes_own = _ActorClassCache().get(Trial).__ray_metadata__.runtime_env  # Tune's actor class as it is
with trials_in_driver_environment(embedded=True):
    actor_class = _ActorClassCache().get(Trial)  # as Tuner.fit gets it from mgas
with trials_in_driver_environment(embedded=False):
    on_a_cluster = _ActorClassCache().get(Trial).__ray_metadata__.runtime_env
seen = ray.get(actor_class.options(num_cpus=1).remote().probe.remote())
raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
names = {p.pid: p.name() for p in psutil.Process(raylet).children()}
seen.update(workers={p: n for p, n in names.items() if not n.endswith("Agent")}, tunes_own=tunes_own,
            on_a_cluster=on_a_cluster)
print(json.dumps(seen, default=dict))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.ray
def test_embedded_trials_run_in_the_drivers_environment_on_the_only_worker():
    """Embedded, a Tune trial actor gets no runtime env of its own (whose every worker Ray would
    start through one more Python process, setup_worker.py) and still sees the variables Tune would
    have set (inherited from the driver); on a cluster Tune's env stays. The trial's worker is
    embedded Ray's only worker (none prestarted)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", TRIAL_WORKERS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["tunes_own"]["env_vars"]["PL_DISABLE_FORK"] == "1", "Tune no longer sets a runtime env: " \
        "trials_in_driver_environment can go"
    assert seen["on_a_cluster"] == seen["tunes_own"], seen
    assert json.loads(seen["runtime_env"]).get("env_vars") in (None, {}), seen
    assert seen["env"] == {"PL_DISABLE_FORK": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0"}, seen
    assert [int(p) for p in seen["workers"]] == [seen["pid"]], seen


HEAD_PROCESSES = """
import json, os, sys, ray
from ray._private import node
from orchestrator.ray_runtime import init_ray
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
start_monitor = node.Node.start_monitor
assert init_ray(None, dashboard=sys.argv[1] == "dashboard")
assert node.Node.start_monitor is start_monitor, "Ray's head node is left patched"
started = sorted(ray._private.worker._global_node.all_processes)
answer = ray.get(ray.remote(num_cpus=1)(lambda: 42).remote())
ray.shutdown()
print(json.dumps({"started": started, "answer": answer}))
"""


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("mode", ["plain", "dashboard"])
def test_embedded_ray_starts_head_processes_only_for_their_readers(mode):
    """Without its dashboard, embedded Ray starts no autoscaler monitor, log monitor or API server
    (orchestrator.ray_runtime.skipped_head_processes) and still runs tasks; with it, all of them."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", HEAD_PROCESSES, mode], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["answer"] == 42
    assert {"gcs_server", "raylet"} <= set(seen["started"]), seen
    readers = {"monitor", "log_monitor", "dashboard"}
    assert (readers & set(seen["started"])) == (readers if mode == "dashboard" else set()), seen


def test_skipped_head_processes_follow_dashboard_and_usage_stats(monkeypatch):
    from orchestrator.ray_runtime import skipped_head_processes

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    assert set(skipped_head_processes(False)) == {"start_monitor", "start_log_monitor", "start_api_server"}
    assert skipped_head_processes(True) == ()
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")  # the usage reporter lives in the API server
    assert set(skipped_head_processes(False)) == {"start_monitor", "start_log_monitor"}


UNTAGGED = """
import os, sys
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
from ray.tune import Callback, tune
from orchestrator.ray_runtime import callbacks_untagged
with callbacks_untagged():
    tune.air_usage.tag_callbacks([Callback()])
assert "mlflow" not in sys.modules, "imported within"
tune.air_usage.tag_callbacks([Callback()])  # Tune's own tagging: the import callbacks_untagged saves
assert "mlflow" in sys.modules, "Tune no longer imports MLflow to tag callbacks: callbacks_untagged can go"
"""


@pytest.mark.slow
def test_sweep_start_does_not_import_mlflow_for_usage_tags():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", UNTAGGED], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_embedded_ray_collects_metrics_only_for_its_dashboard():
    from orchestrator.ray_runtime import embedded_init_kwargs

    assert embedded_init_kwargs()["_system_config"]["enable_metrics_collection"] is False
    assert embedded_init_kwargs(dashboard=True)["_system_config"]["enable_metrics_collection"] is True
