"""``benchmarks.supernet`` reads the method registry: a method defined in one module outside
mgas_core (tests/plugins/random_alpha.py) is benchmarked with its own flag; a method's benchmarked
step comes from its ``benchmark_overrides`` and ``prepare_benchmark``; ``--compare`` runs variants
of any flag, each in a fresh process, and its ratios are to the first variant."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks import supernet
from benchmarks.measure import argv_without, benchmark_settings, method_overrides
from mgas_core.methods.protocol import SearchMethod
from mgas_core.methods.registry import method_names, register_method

pytestmark = [pytest.mark.benchmark]

TINY = ["--layers", "3", "--channels", "4", "--batch", "4", "--resolution", "8", "--steps", "1", "--warmup", "0"]


@pytest.fixture
def threads():
    """``supernet.main`` sets torch's threads (``--threads``): put them back for the next test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    supernet.main([*argv, "--json"])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_method_registered_elsewhere_is_benchmarked_with_its_own_flag(random_alpha, threads, capsys):
    result = run(capsys, "--method", random_alpha, "--alpha-std", "0.5", *TINY)
    assert result["method"] == random_alpha and result["alpha_std"] == 0.5  # its result column, from its flag
    assert result["stage"] == 1 and result["cells_run"] == 3 and result["images_per_s"] > 0
    assert result["steps"] == 1 and result["peak_mem_mb"] >= result["baseline_mem_mb"] > 0
    with pytest.raises(SystemExit, match=f"method '{random_alpha}' has one stage: --stage 2"):
        supernet.main(["--method", random_alpha, "--stage", "2", *TINY])


def test_the_benchmarked_step_is_the_methods_own(threads, capsys):
    args = argparse.Namespace(method="darts", order=None, stages=None)
    assert benchmark_settings(method_overrides(args)).search.darts.order == 1  # DARTS: first order here
    args.order = 2
    assert benchmark_settings(method_overrides(args)).search.darts.order == 2  # unless the flag says otherwise
    mgas = run(capsys, "--method", "mgas", "--stages", "3", "--mgas-stage", "2", *TINY)  # the old flag name
    assert mgas["stages"] == 3 and mgas["stage"] == 2 and mgas["cells_run"] == 2  # stage 2 of 3 at 3 cells
    assert mgas["granularities"] == "op,filter,weight"
    assert run(capsys, "--method", "mgas", *TINY)["stages"] == 1  # MGAS: the whole network unless --stages
    with pytest.raises(SystemExit, match="--stage 5 does not exist in a 3-stage MGAS search"):
        supernet.main(["--method", "mgas", "--stages", "3", "--stage", "5", *TINY])


def test_benchmark_overrides_stay_inside_the_methods_group():
    class Stray(SearchMethod):
        benchmark_overrides = {"search.layers": 2}

    with pytest.raises(ValueError, match=r"benchmark_overrides sets 'search\.layers', outside search\.stray\."):
        register_method("stray")(Stray)
    assert "stray" not in method_names()


def test_compare_variants_are_flags_and_bad_ones_are_refused_before_anything_runs(capsys):
    assert argv_without(["--a", "--compare", "x=1", "y=2", "--json", "--b=1"], "--compare", "+") == [
        "--a", "--json", "--b=1"]
    assert argv_without(["--compare=impl", "--x", "1"], "--compare", "+") == ["--x", "1"]
    assert argv_without(["--repo", "/x", "--y"], "--repo", True) == ["--y"]
    for variants, message in ((["nope=1", "subgraphs=2"], "--compare nope=1"),
                              (["subgraphs=x", "subgraphs=2"], "invalid int value: 'x'"),
                              (["json=1", "json=2"], "--compare json=1"),
                              (["subgraphs=1"], "at least two variants")):
        with pytest.raises(SystemExit) as stop:
            supernet.main(["--method", "msg_das", "--compare", *variants])
        assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.benchmark
def test_compare_runs_each_variant_in_a_fresh_process_and_ratios_are_to_the_first(capsys):
    summary = run(capsys, "--method", "msg_das", *TINY, "--compare", "subgraphs=1", "method=darts")
    results = summary["results"]
    assert list(results) == ["subgraphs=1", "method=darts"]
    assert (results["subgraphs=1"]["method"], results["subgraphs=1"]["subgraphs"]) == ("msg_das", 1)
    assert results["method=darts"]["method"] == "darts" and results["method=darts"]["order"] == 1
    first, second = results["subgraphs=1"], results["method=darts"]
    assert summary["images_per_s"] == {"subgraphs=1": first["images_per_s"], "method=darts": second["images_per_s"]}
    assert summary["vs_first"]["method=darts"]["peak_mem_ratio"] == summary["peak_mem_ratio"]
    assert summary["throughput_ratio"] == pytest.approx(second["images_per_s"] / first["images_per_s"], abs=1e-3)
    assert summary["peak_mem_ratio"] == pytest.approx(second["peak_mem_mb"] / first["peak_mem_mb"], abs=1e-3)
