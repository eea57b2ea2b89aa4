"""``benchmarks.supernet --official-darts/--official-mgas`` (issue 17): the plumbing without a
checkout (ratios, the two command lines, where MG-DARTS's deleted ``prune.py`` comes from, the
official defaults), and, when ``MGAS_OFFICIAL_DARTS`` / ``MGAS_OFFICIAL_MGAS`` name a checkout of
quark0/darts / lxy12357/MG_DARTS, the real thing at a tiny shape (both sides, fresh processes)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import supernet
from benchmarks.official_step import COMMON, OfficialCheckoutError, default_shape, locate, prune_source

ROOT = Path(__file__).resolve().parents[1]
PRUNE_TEXT = "class BinaryStep:\n    pass\n"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _last(cmd: list[str], flag: str) -> str:
    """The value argparse keeps for ``flag``: the one after its last occurrence."""
    return cmd[len(cmd) - cmd[::-1].index(flag)]


def _mgas_layout(root: Path, with_prune: bool) -> Path:
    folder = root / "cifar_search"
    folder.mkdir(parents=True)
    for name in COMMON:
        (folder / name).write_text("# placeholder\n")
    if with_prune:
        (folder / "prune.py").write_text(PRUNE_TEXT)
    return folder


def test_ratios_are_ours_over_official_and_none_without_a_denominator():
    ours = {"images_per_s": 6.0, "peak_mem_mb": 300.0, "activation_mb": 100.0}
    official = {"images_per_s": 2.0, "peak_mem_mb": 600.0, "activation_mb": 400.0}
    assert supernet.official_ratios(ours, official) == {
        "speed_vs_official": 3.0, "memory_vs_official": 0.5, "activation_vs_official": 0.25}
    assert supernet.official_ratios(ours, {**official, "activation_mb": 0.0})["activation_vs_official"] is None


def test_commands_run_our_method_and_the_official_kind_at_one_shape():
    shape = {"layers": 3, "channels": 4, "batch": 4, "resolution": 8, "steps": 1, "warmup": 0, "threads": 1,
             "device": "cpu"}
    args = argparse.Namespace(**shape)
    argv = ["--official-mgas=/x", "--impl", "reference", "--json", "--batch", "4", "--threads", "1"]
    ours, official = supernet.official_commands(args, argv, "mgas", "/x")
    assert ours[1:3] == ["-m", "benchmarks.supernet"] and ours[-1] == "--json"
    assert "/x" not in " ".join(ours) and "--official-mgas" not in " ".join(ours)
    assert ours.count("--json") == 1 and "reference" in ours
    assert " --method mgas --stages 1 --mgas-stage 1 " in " ".join(ours)
    assert official[1:7] == ["-m", "benchmarks.official_step", "--repo", "/x", "--kind", "mgas"]
    for side in (ours, official):  # argparse keeps the last value of a flag: the resolved shape
        assert {key: _last(side, f"--{key}") for key in shape} == {key: str(value) for key, value in shape.items()}
    assert _last(official, "--lam") == str(supernet.MGAS_BENCH_LAMBDA)
    ours_darts, official_darts = supernet.official_commands(args, ["--official-darts", "/d"], "darts", "/d")
    assert " --method darts --order 1 " in " ".join(ours_darts) and "/d" not in ours_darts
    assert "--lam" not in official_darts


def test_prune_py_is_read_from_the_commit_before_the_one_that_deleted_it(tmp_path):
    folder = _mgas_layout(tmp_path, with_prune=True)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "Add files via upload")
    (folder / "prune.py").write_text(PRUNE_TEXT + "CHANGED = 1\n")
    _git(tmp_path, "commit", "-q", "-am", "Update prune.py")
    with_file = _git(tmp_path, "rev-parse", "HEAD")
    _git(tmp_path, "rm", "-q", "cifar_search/prune.py")
    _git(tmp_path, "commit", "-q", "-m", "Delete cifar_search/prune.py")
    deleting = _git(tmp_path, "rev-parse", "HEAD")
    (folder / "utils.py").write_text("# later\n")
    _git(tmp_path, "commit", "-q", "-am", "Update utils.py")
    sources = locate(tmp_path, "mgas")
    assert sources.folder == folder.resolve()
    assert sources.commit == _git(tmp_path, "rev-parse", "HEAD")
    assert sources.prune_from == with_file
    assert sources.prune_deleted_in == f"{deleting} Delete cifar_search/prune.py"
    assert prune_source(sources) == PRUNE_TEXT + "CHANGED = 1\n"


def test_a_checkout_with_prune_py_needs_no_history(tmp_path):
    _mgas_layout(tmp_path, with_prune=True)
    sources = locate(tmp_path, "mgas")
    assert sources.prune_from is None and sources.commit is None


def test_missing_prune_py_outside_git_fails_with_one_line_saying_what_to_do(tmp_path):
    _mgas_layout(tmp_path, with_prune=False)
    with pytest.raises(OfficialCheckoutError) as err:
        locate(tmp_path, "mgas")
    message = str(err.value)
    assert "\n" not in message and "not a git checkout" in message and "git show 62248c5^" in message
    with pytest.raises(SystemExit) as stop:  # the CLI says it before running either side
        supernet.main(["--official-mgas", str(tmp_path), "--json"])
    assert str(stop.value) == f"error: {message}"


def test_a_folder_that_is_not_a_checkout_is_refused(tmp_path):
    with pytest.raises(OfficialCheckoutError, match=r"not a checkout of https://github\.com/quark0/darts"):
        locate(tmp_path, "darts")


def test_the_official_defaults_are_read_from_pre_37_sources(tmp_path):
    (tmp_path / "train_search.py").write_text(
        "parser.add_argument('--batch_size', type=int, default=96, help='batch size')\n"
        "parser.add_argument('--init_channels', type=int, default=16)\n"
        "parser.add_argument('--unrolled', action='store_true', default=False)\n"
        "target = target.cuda(async=True)\n")
    assert default_shape(tmp_path) == {"layers": 8, "channels": 16, "batch": 96}


def test_official_mgas_refuses_a_stage_of_a_multi_stage_search(tmp_path):
    with pytest.raises(SystemExit) as stop:
        supernet.main(["--official-mgas", str(tmp_path), "--stages", "3"])
    assert stop.value.code == 2


@pytest.mark.parametrize("kind", ["darts", "mgas"])
def test_against_the_official_checkout_at_a_tiny_shape(kind):
    repo = os.environ.get(f"MGAS_OFFICIAL_{kind.upper()}")
    if not repo:
        pytest.skip(f"MGAS_OFFICIAL_{kind.upper()} does not name a checkout of the official {kind} code")
    shape = {"layers": 3, "channels": 4, "batch": 4, "resolution": 8, "steps": 1}
    flags = [x for key, value in shape.items() for x in (f"--{key}", str(value))]
    done = subprocess.run([sys.executable, "-m", "benchmarks.supernet", f"--official-{kind}", repo, *flags,
                           "--warmup", "1", "--threads", "1", "--json"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ours, official = result["ours"], result["official"]
    assert ours["method"] == kind and official["kind"] == kind
    assert {k: ours[k] for k in shape} == {k: official[k] for k in shape} == shape
    for side in (ours, official):
        assert side["images_per_s"] > 0 and side["peak_mem_mb"] >= side["baseline_mem_mb"] > 0
    assert result["speed_vs_official"] == round(ours["images_per_s"] / official["images_per_s"], 3)
    assert result["memory_vs_official"] == round(ours["peak_mem_mb"] / official["peak_mem_mb"], 3)
    sources = locate(repo, kind)
    assert result["official_commit"] == sources.commit and result["official_repo"] == str(sources.repo)
    if kind == "mgas":
        assert ours["granularities"] == "op,filter,weight" and ours["cells_run"] == 3
        assert ("prune.py is missing" in done.stderr) == (sources.prune_from is not None)
