"""The method registry is the one source of method names: a fifth method, defined in one module
outside mgas_core (tests/plugins/random_alpha.py), runs through `mgas search` (here) and a one-trial
Ray sweep (test_sweep.py, on that module's Ray), with its own settings group, result column and
sweep axis, and no other file names it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mgas_core.methods.registry import build_settings, get_method, known_paths, method_names, unregister_method
from orchestrator.cli import main
from orchestrator.results import result_schema
from tests.conftest import PLUGIN
from tests.orchestrator.test_cli import TINY_SEARCH

ROOT = Path(__file__).resolve().parents[2]


def test_no_project_file_names_the_fifth_method():
    """Only the plugin module and the tests that use it say `random_alpha`: no file of the
    project (packages, experiments, benchmarks, docs, build files) had to be edited for it."""
    sources = [p for p in ROOT.glob("**/*") if p.suffix in (".py", ".yaml", ".md", ".toml", ".cfg", ".txt")
               and not {".venv", ".git"} & set(p.parts) and p.is_file()]
    named = {str(p.relative_to(ROOT)) for p in sources if "random_alpha" in p.read_text(errors="replace")}
    assert "tests/plugins/random_alpha.py" in named
    assert {path for path in named if not path.startswith("tests/")} == set()


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
