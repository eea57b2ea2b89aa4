"""The method registry is the one source of method names: a fifth method, defined in one module
outside mgas_core (tests/plugins/random_alpha.py), runs through `mgas search` and a one-trial Ray
sweep, with its own settings group, result column and sweep axis, and no other file names it."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mgas_core.config import build_settings, known_paths
from mgas_core.methods.base import get_method, method_names, unregister_method
from orchestrator.cli import main
from orchestrator.results import read_rows, result_schema
from orchestrator.spec import expand_trials, load_spec
from orchestrator.sweep import run_command
from tests.orchestrator.helpers import write_spec
from tests.orchestrator.test_cli import TINY_SEARCH

PLUGIN = "tests.plugins.random_alpha"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def random_alpha():
    """Register the throwaway method for one test, and remove it again afterwards."""
    module = importlib.import_module(PLUGIN)
    if module.NAME not in method_names():  # an earlier test unregistered it: register anew
        module = importlib.reload(module)
    yield module.NAME
    unregister_method(module.NAME)
    sys.modules.pop(PLUGIN, None)


def test_no_file_outside_the_plugin_names_the_fifth_method():
    sources = [p for p in ROOT.glob("**/*") if p.suffix in (".py", ".yaml", ".md", ".toml", ".cfg")
               and not {".venv", ".git"} & set(p.parts) and p.is_file()]
    named = [p.relative_to(ROOT) for p in sources if "random_alpha" in p.read_text(errors="replace")]
    assert sorted(map(str, named)) == ["tests/orchestrator/test_method_plugin.py", "tests/plugins/random_alpha.py"]


def test_registered_method_is_everywhere_a_method_name_is_read(random_alpha):
    assert random_alpha in method_names()
    assert "search.random_alpha.alpha_std" in known_paths()
    assert "alpha_std" in result_schema().names
    settings = build_settings("tiny", {"search.method": random_alpha, "search.random_alpha.alpha_std": 0.5})
    assert settings.search.random_alpha.alpha_std == 0.5
    assert settings.model_dump(mode="json")["search"]["random_alpha"] == {"alpha_std": 0.5}
    with pytest.raises(Exception, match="random_alpha runs in fp32 only"):
        build_settings("tiny", {"search.method": random_alpha, "search.precision": "bf16", "device": "cuda"})


def test_unregistered_method_is_unknown_again(random_alpha, capsys):
    unregister_method(random_alpha)
    assert random_alpha not in method_names() and "search.random_alpha.alpha_std" not in known_paths()
    assert main(["search", "--method", random_alpha, "--dataset", "synthetic", "--no-progress"]) == 2
    assert "unknown method 'random_alpha'" in capsys.readouterr().err
    sys.modules.pop(PLUGIN)  # as in a fresh Ray worker: importing where it was defined registers it
    assert get_method(random_alpha, PLUGIN).name == random_alpha


def test_fifth_method_runs_through_mgas_search(random_alpha, tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["search", "--method", random_alpha, "--dataset", "synthetic", "--epochs", "2", "--out", str(out),
                 "--json", "--no-progress", "--set", "search.random_alpha.alpha_std=0.5", *TINY_SEARCH]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == random_alpha and summary["epochs_run"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["search"]["random_alpha"] == {"alpha_std": 0.5}
    assert json.loads((out / "arch.json").read_text())["meta"]["method"] == random_alpha
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_fifth_method_runs_through_a_one_trial_sweep(random_alpha, tmp_path, capsys):
    path = write_spec(tmp_path, name="plugin", sweep={"method": [random_alpha], "alpha_std": [0.5]},
                      base={"search.epochs": 1, "retrain.epochs": 1})
    trials = expand_trials(load_spec(path)[0])
    assert len(trials) == 1 and trials[0]["method_module"] == PLUGIN
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "alpha_std=0.5" in capsys.readouterr().out
    summary = run_command(path)  # embedded Ray: its workers import the plugin where it was registered
    assert summary["ok"] == 1
    [row] = read_rows(tmp_path / "out" / "plugin")
    assert row["method"] == random_alpha and row["status"] == "ok" and row["alpha_std"] == 0.5
    assert json.loads(row["config_json"])["search"]["random_alpha"] == {"alpha_std": 0.5}
    [result_file] = (tmp_path / "out" / "plugin" / "results").glob(f"method={random_alpha}/*.parquet")
    assert pq.read_table(result_file).schema.equals(result_schema())
