"""Experiment specs: expansion rules and validation errors that stop a sweep before Ray starts."""

from __future__ import annotations

import time

import pytest
import torch
import yaml

from mgas_common.errors import UserInputError
from orchestrator.cli import main
from orchestrator.spec import expand_trials, load_spec
from tests.orchestrator.helpers import write_spec


def test_grid_drops_method_only_axes_and_applies_rules(tmp_path):
    path = write_spec(tmp_path, sweep={"method": ["darts", "mgas"], "stages": [1, 2], "seed": [0, 1],
                                       "search.msg_das.subgraphs": [1, 2]},
                      exclude=[{"method": "mgas", "stages": 2, "seed": 1}],
                      include=[{"method": "gold_nas", "seed": 5}])
    spec, _ = load_spec(path)
    trials = expand_trials(spec)
    ids = [t["trial_id"] for t in trials]
    assert len(ids) == len(set(ids))
    darts = [t for t in trials if t["axes"]["method"] == "darts"]
    mgas = [t for t in trials if t["axes"]["method"] == "mgas"]
    assert len(darts) == 2 and all("stages" not in t["axes"] for t in darts)  # stages is mgas-only
    assert len(mgas) == 3  # 2 stages x 2 seeds minus one excluded
    assert any(t["axes"] == {"method": "gold_nas", "seed": 5} for t in trials)
    stage_two = next(t for t in mgas if t["axes"]["stages"] == 2)
    assert stage_two["settings"]["search"]["mgas"]["stages"] == 2
    assert stage_two["settings"]["threads"] == 1


def test_target_axis_sets_search_target_and_genotype_width(tmp_path):
    spec, _ = load_spec(write_spec(tmp_path, sweep={"method": ["darts"], "target_params": [0.5]}))
    settings = expand_trials(spec)[0]["settings"]
    assert settings["search"]["target_params"] == 0.5 and settings["retrain"]["target_params"] == 0.5


@pytest.mark.parametrize("fields,fragment", [
    ({"sweep": {"method": ["darts", "nas_bench"]}}, "sweep.method: unknown method 'nas_bench'; allowed: darts"),
    ({"sweep": {"method": ["mgas"], "stages": ["three"]}}, "search.mgas.stages"),
    ({"sweep": {"method": ["darts"], "search.darts.alpha_rate": [0.1]}}, "unknown sweep axis"),
    ({"base": {"search.epoch": 3}}, "unknown setting 'search.epoch'"),
    ({"resources": {"cpu": -1}}, "resources.cpu"),
    ({"resources": {"cpu": 1, "gpu": -0.5}}, "resources.gpu"),
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"sweep": {"method": []}}, "non-empty list"),
    ({"max_failures": "many"}, "max_failures"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_specs_fail_before_ray_with_one_line(tmp_path, capsys, monkeypatch, fields, fragment):
    import orchestrator.ray_runtime as runtime

    def no_ray(*a, **k):
        raise AssertionError("Ray must not start for an invalid spec")

    monkeypatch.setattr(runtime, "init_ray", no_ray)
    path = write_spec(tmp_path, **fields)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mgas: error:") and fragment in err, err


def test_unreadable_or_non_yaml_spec(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\ndataset: digits\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        load_spec(evil)


def test_dry_run_prints_plan_without_ray(tmp_path, capsys, monkeypatch):
    import orchestrator.ray_runtime as runtime

    monkeypatch.setattr(runtime, "init_ray", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no Ray")))
    path = write_spec(tmp_path, resources={"cpu": 1, "gpu": 0.5})
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and "cpu=1 gpu=0.5" in out and "mgas_seed1" in out
    # each trial's real epoch plan: MGAS's phases (2 stages of 0 warm-up + 1 search epoch, a regrow
    # epoch, a final epoch), DARTS's search.epochs
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "search 4 ep max: 2 stages x (0 warm-up + <= 1), 1 regrow, final 0 + <= 1, retrain 2 ep" \
        in lines["mgas_seed1"]
    assert "search 2 ep, retrain 2 ep" in lines["darts_seed0"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trials_on_a_machine_without_gpu_are_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    import orchestrator.ray_runtime as runtime

    monkeypatch.setattr(runtime, "init_ray", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no Ray")))
    path = write_spec(tmp_path, resources={"cpu": 1, "gpu": 0.5})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "resources.gpu=0.5 per trial, but this machine (embedded Ray) has no GPU" in err
    assert not (tmp_path / "out").exists()


def test_a_compiled_retraining_this_machine_cannot_build_is_refused_before_ray_starts(tmp_path, capsys,
                                                                                    monkeypatch, no_such_cxx):
    import orchestrator.ray_runtime as runtime
    from orchestrator.preflight import check_local_compile

    monkeypatch.setattr(runtime, "init_ray", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no Ray")))
    path = write_spec(tmp_path, base={"retrain.compile": True}, sweep={"method": ["darts"], "seed": [3]})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "trial darts_seed3: retrain.compile: Inductor on CPU builds C++ kernels with no-such-compiler" in err
    assert not (tmp_path / "out").exists()
    # the debugging backends need no compiler; a trial given a GPU but set to device cpu needs one
    spec, _ = load_spec(write_spec(tmp_path, base={"retrain.compile": True, "retrain.compile_backend": "eager"}))
    check_local_compile(expand_trials(spec))
    spec, _ = load_spec(write_spec(tmp_path, base={"retrain.compile": True, "device": "cpu"},
                                   resources={"cpu": 1, "gpu": 1}))
    with pytest.raises(UserInputError, match="no-such-compiler"):  # the device, not the GPU, decides
        check_local_compile(expand_trials(spec))


def test_exclude_rules_match_as_python_equality_does():
    from orchestrator.exclude_rules import RuleIndex

    index = RuleIndex([{"seed": 1}, {"method": "mgas", "granularities": ["op", "filter"]}])
    assert index.matches({"method": "darts", "seed": 1.0}) and index.matches({"method": "darts", "seed": True})
    assert not index.matches({"method": "darts", "seed": 2})
    assert index.matches({"method": "mgas", "granularities": ["op", "filter"], "seed": 0})
    assert not index.matches({"method": "mgas", "granularities": ["op"], "seed": 0})
    assert not index.matches({"method": "mgas", "seed": 0})  # a rule naming an axis the trial lacks


@pytest.mark.slow
def test_a_thousand_seeds_and_ten_thousand_exclude_rules_dry_run_in_seconds(tmp_path, capsys):
    rules = [{"method": "darts", "seed": 10_000 + i} for i in range(9_990)] + [{"seed": i} for i in range(10)]
    spec = {"name": "big", "dataset": "digits", "preset": "tiny",
            "sweep": {"method": ["darts"], "seed": list(range(1000))}, "exclude": rules}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(spec))
    start = time.monotonic()
    assert main(["run", str(path), "--dry-run"]) == 0
    assert time.monotonic() - start < 60  # was minutes: every rule against every trial
    assert "990 trials" in capsys.readouterr().out
