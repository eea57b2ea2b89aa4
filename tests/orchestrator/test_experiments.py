"""Every experiment YAML shipped in ``experiments/`` validates and dry-runs to a trial plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.published import load_published
from mgas_core.methods.registry import method_names
from orchestrator.cli import main
from orchestrator.spec import expand_trials, load_spec

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
YAMLS = sorted(EXPERIMENTS.glob("*.yaml")) + sorted((EXPERIMENTS.parent / "benchmarks").glob("*.yaml"))


def test_the_shipped_experiments_are_there():
    names = {p.stem for p in YAMLS}
    assert {"quickstart", "cifar10_paper", "cifar100_paper", "imagenet_mobile", "ablation_granularities",
            "ablation_stages", "ablation_targets"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_experiment_dry_run_prints_trial_count_and_resources(path, capsys, tmp_path):
    spec, _ = load_spec(path)
    trials = expand_trials(spec)
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(trials)} trials on {spec.dataset.name}" in out
    assert f"cpu={spec.resources.cpu:g} gpu={spec.resources.gpu:g}" in out
    for t in trials:
        assert t["trial_id"] in out
    assert not any(tmp_path.iterdir()), "a dry run must start nothing and write nothing"


def test_quickstart_covers_every_method_and_three_mgas_sizes():
    trials = expand_trials(load_spec(EXPERIMENTS / "quickstart.yaml")[0])
    methods = {t["settings"]["search"]["method"] for t in trials}
    assert methods == set(method_names(searching_only=True))  # every method with a search step
    sizes = {t["settings"]["search"]["target_params"] for t in trials if t["settings"]["search"]["method"] == "mgas"}
    assert len(sizes) == 3
    assert all(t["settings"]["data"]["name"] == "digits" for t in trials)


def test_ablations_vary_what_their_names_say():
    def values(name, key):
        trials = expand_trials(load_spec(EXPERIMENTS / f"{name}.yaml")[0])
        return {str(t["settings"]["search"]["mgas"][key]) for t in trials if t["axes"]["method"] == "mgas"}

    assert len(values("ablation_granularities", "granularities")) == 7
    assert values("ablation_stages", "stages") == {"1", "2", "3", "4"}
    targets = {t["axes"]["target_params"] for t in expand_trials(load_spec(EXPERIMENTS / "ablation_targets.yaml")[0])}
    assert len(targets) >= 5


def test_published_reference_numbers_load_with_sources():
    table = load_published(EXPERIMENTS / "reference" / "published.yaml")
    assert {"darts", "gold_nas"} <= set(table["method"])
    assert table["source"].str.len().gt(0).all()
    assert table["confirmed"].isin([True, False]).all()
